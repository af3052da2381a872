// The engine's only view of a guest. kvm-backend implements it for QEMU domains reached through
// libvirt and the gdbstub; tests/fakes/fake_guest_vm.h implements it in memory.
//
// Contract for implementations:
// - Every call returns an error value for anything a guest or a peer can cause (unmapped
//   address, lost connection, domain gone); none throws or aborts.
// - Virtual addresses are translated with the given vCPU's page tables.
// - Writes must be visible to the guest's instruction fetch at once (under TCG this means they go
//   through the gdbstub, which invalidates translated code).
// - Memory and register access require the guest to be stopped (Stop() returned OK); calls made
//   while it runs fail with FAILED_PRECONDITION.
#ifndef TPRD_DAEMON_ENGINE_GUEST_VM_H_
#define TPRD_DAEMON_ENGINE_GUEST_VM_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"

namespace tprd::engine {

// 32-bit general purpose registers, in x86 encoding order (ModRM reg field).
enum class Gpr : uint8_t { kEax = 0, kEcx, kEdx, kEbx, kEsp, kEbp, kEsi, kEdi };
inline constexpr int kGprCount = 8;
// The ACPI PM timer's rate and width (ACPI spec; QEMU's acpi-tmr).
inline constexpr uint64_t kAcpiPmTimerHz = 3579545;
inline constexpr uint32_t kAcpiPmTimerMask = 0xFFFFFF;

struct VcpuRegisters {
  uint32_t gpr[kGprCount] = {};  // indexed by Gpr
  uint32_t eip = 0;
  uint32_t eflags = 0;
  uint32_t cs = 0, ss = 0, ds = 0, es = 0, fs = 0, gs = 0;
  uint32_t fs_base = 0;
  uint32_t cr0 = 0, cr2 = 0, cr3 = 0, cr4 = 0;
  uint64_t efer = 0;

  uint32_t& reg(Gpr r) { return gpr[static_cast<int>(r)]; }
  uint32_t reg(Gpr r) const { return gpr[static_cast<int>(r)]; }
};

// Registers the engine may write (fix-ups after a trap). kEax..kEdi share Gpr's order.
enum class WritableRegister : uint8_t {
  kEax,
  kEcx,
  kEdx,
  kEbx,
  kEsp,
  kEbp,
  kEsi,
  kEdi,
  kEip,
  kEflags,  // the whole register; cr8 fixes the arithmetic flags of a cmp/test of the TPR
};

enum class WatchKind : uint8_t { kWrite, kRead, kAccess };

struct StopEvent {
  enum class Kind : uint8_t {
    kBreakpoint,    // execution breakpoint: pc is the breakpoint address, not yet executed
    kWatchpoint,    // data watchpoint: pc is the instruction AFTER the access
    kInterrupted,   // we asked it to stop
    kPausedByHost,  // libvirt (or someone else) paused the domain
    kGone,          // the domain is gone (destroyed, shut down, connection lost)
  };
  Kind kind = Kind::kInterrupted;
  int vcpu = 0;
  uint32_t pc = 0;
  uint32_t data_address = 0;  // watchpoints only
  WatchKind watch = WatchKind::kAccess;
};

// What StepVcpu did.
struct StepResult {
  // The vCPU executed its one instruction and stopped by itself. False when the step had to be
  // interrupted (e.g. the instruction was `hlt` and the masked interrupts never woke it) or the
  // stop that ended it was not the step's (then that stop comes from WaitForStop after Resume).
  bool completed = false;
  // The hypervisor reported a watchpoint hit of this vCPU at this stop. For QEMU this reports,
  // and clears, the vCPU's pending hit, which would otherwise be reported at a later stop.
  bool watchpoint_reported = false;
  uint32_t pc = 0;  // the vCPU's eip after the step, read back
};

struct MemoryRegion {
  uint64_t start = 0;  // first byte
  uint64_t end = 0;    // last byte (inclusive), as `info mtree -f` prints it
  bool ram = false;    // RAM (writable), not ROM / MMIO
  // RAM-backed but read-only for the guest (`info mtree -f` "rom"/"romd", e.g. the chipset's
  // shadowed 0xC0000-0xFFFFF window): guest stores are dropped, debug writes land.
  bool rom = false;
  std::string name;
};

// Who runs the guest's instructions. It matters for execution breakpoints: QEMU keeps TCG's
// outside guest memory, and implements KVM's by writing int3 into it.
enum class Accelerator : uint8_t { kUnknown, kTcg, kKvm };

struct CpuFeatures {
  bool cr8legacy = false;          // AMD AltMovCr8: lock mov cr0 reaches CR8
  bool qemu_vapic_active = false;  // QEMU's own TPR patcher is on for this domain
  Accelerator accelerator = Accelerator::kUnknown;
};

// One write of guest memory, whole: for code, one instruction's bytes (or one site's).
struct MemoryWrite {
  uint64_t address = 0;  // virtual (32 bits) or physical, as the call says
  absl::Span<const uint8_t> data;
};

class GuestVm {
 public:
  virtual ~GuestVm() = default;

  // Stops every vCPU (idempotent). After OK, memory and registers may be accessed.
  virtual absl::Status Stop() = 0;
  // Lets every vCPU run again. Must not resume a guest the host (libvirt) paused: then it
  // returns FAILED_PRECONDITION and leaves it paused.
  virtual absl::Status Resume() = 0;
  // While running: waits up to `timeout` for the next stop. nullopt on timeout (still running).
  virtual absl::StatusOr<std::optional<StopEvent>> WaitForStop(absl::Duration timeout) = 0;
  // While stopped: a watchpoint stop that raced with the last Stop() and is kept for
  // WaitForStop, taken now (it is then not delivered again). nullopt when there is none (other
  // raced stops stay for WaitForStop).
  virtual std::optional<StopEvent> TakeRacedWatchpointStop() { return std::nullopt; }
  // The same for a breakpoint or watchpoint stop (a host pause stays for WaitForStop). While
  // one is kept, nothing can run one vCPU alone (StepVcpu, RunVcpuAlone: FAILED_PRECONDITION).
  virtual std::optional<StopEvent> TakeRacedTrapStop() { return std::nullopt; }

  virtual absl::StatusOr<int> VcpuCount() = 0;
  virtual absl::StatusOr<VcpuRegisters> ReadRegisters(int vcpu) = 0;
  virtual absl::Status WriteRegister(int vcpu, WritableRegister reg, uint32_t value) = 0;

  virtual absl::Status ReadVirtual(int vcpu, uint32_t va, absl::Span<uint8_t> out) = 0;
  virtual absl::Status WriteVirtual(int vcpu, uint32_t va, absl::Span<const uint8_t> data) = 0;
  // Several whole writes through `vcpu`'s paging, in one exchange where the backend has one (the
  // gdbstub: pipelined, one round trip for all). Each write's own status, in order. An error of
  // the call itself means the exchange broke: a write may or may not have happened (read back).
  virtual absl::StatusOr<std::vector<absl::Status>> WriteVirtualMany(
      int vcpu, absl::Span<const MemoryWrite> writes) {
    std::vector<absl::Status> out;
    out.reserve(writes.size());
    for (const MemoryWrite& w : writes) {
      out.push_back(WriteVirtual(vcpu, static_cast<uint32_t>(w.address), w.data));
    }
    return out;
  }
  virtual absl::Status ReadPhysical(uint64_t pa, absl::Span<uint8_t> out) = 0;
  virtual absl::Status WritePhysical(uint64_t pa, absl::Span<const uint8_t> data) = 0;
  // A data read that does not stop the guest (QEMU: process_vm_readv). Bytes the guest writes
  // meanwhile may be old or new; fine for counters and words the engine only watches.
  // UNIMPLEMENTED where the backend has no such path.
  virtual absl::Status ReadPhysicalLive(uint64_t pa, absl::Span<uint8_t> out) {
    (void)pa;
    (void)out;
    return absl::UnimplementedError("no live reads on this backend");
  }

  virtual absl::StatusOr<std::vector<MemoryRegion>> MemoryMap() = 0;
  // The full 8-bit TPR of one vCPU, as the APIC holds it.
  virtual absl::StatusOr<uint8_t> ReadTpr(int vcpu) = 0;
  virtual absl::StatusOr<CpuFeatures> Features() = 0;
  // The machine's ACPI PM timer: 24 bits at kAcpiPmTimerHz. QEMU derives it from its virtual
  // clock, which stands still while the VM is stopped, so its differences are the time the guest
  // ran: the one guest clock tprd can read (docs/design.md "Rates and metrics"). NOT_FOUND when
  // the machine has no ACPI.
  virtual absl::StatusOr<uint32_t> ReadAcpiPmTimer() {
    return absl::UnimplementedError("no guest clock on this backend");
  }

  // Single-steps one vCPU while every other vCPU stays stopped. Requires the guest stopped
  // (FAILED_PRECONDITION otherwise). Only `vcpu` runs, for one instruction, with interrupts masked
  // (QEMU's default sstep flags; a host kernel without KVM_GUESTDBG_BLOCKIRQ cannot mask them).
  // Waits at most `timeout` for the step, then interrupts it (completed = false). On OK the guest
  // is stopped again. DEADLINE_EXCEEDED if not even the interrupt stopped it (then the guest may
  // run: Stop() it). UNIMPLEMENTED where the backend cannot step.
  virtual absl::StatusOr<StepResult> StepVcpu(int vcpu, absl::Duration timeout) {
    (void)vcpu;
    (void)timeout;
    return absl::UnimplementedError("no single-step on this backend");
  }

  // Lets `vcpu` alone run (every other vCPU stays stopped), with its interrupts and timers, until
  // its next stop (a breakpoint or watchpoint it meets), at most `timeout`; then interrupts it.
  // Requires the guest stopped; on OK it is stopped again and that stop is returned (kInterrupted
  // when the timeout ended it). Leaving cr8 wakes a halted CPU this way: only an interrupt ends a
  // `hlt`, and no other CPU may run meanwhile. UNIMPLEMENTED where the backend cannot.
  virtual absl::StatusOr<StopEvent> RunVcpuAlone(int vcpu, absl::Duration timeout) {
    (void)vcpu;
    (void)timeout;
    return absl::UnimplementedError("no single-vCPU run on this backend");
  }

  // Execution breakpoints stop a vCPU before the instruction at `va` runs.
  virtual absl::Status SetBreakpoint(uint32_t va) = 0;
  virtual absl::Status RemoveBreakpoint(uint32_t va) = 0;
  // SetBreakpoint for each address, in one exchange where the backend has one. Each one's
  // status, in order; an error of the call itself means the exchange broke.
  virtual absl::StatusOr<std::vector<absl::Status>> SetBreakpoints(absl::Span<const uint32_t> vas) {
    std::vector<absl::Status> out;
    out.reserve(vas.size());
    for (uint32_t va : vas) out.push_back(SetBreakpoint(va));
    return out;
  }
  // Data watchpoints stop a vCPU after the access; the stop's pc is the next instruction.
  virtual absl::Status SetWatchpoint(uint32_t va, uint32_t length, WatchKind kind) = 0;
  virtual absl::Status RemoveWatchpoint(uint32_t va, uint32_t length, WatchKind kind) = 0;
};

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_GUEST_VM_H_

// An in-memory GuestVm for engine tests: sparse physical memory, vCPUs with registers and a full
// 8-bit TPR, a running/stopped state with Stop()/Resume() counts, virtual addresses translated by
// the engine's page walker, recorded breakpoints and watchpoints, queued stop events, scripted
// single-steps (eip advance or a hook, pending watchpoint hits reported once), and fault
// injection (fail the Nth operation of a kind, partial writes, hooks that change guest state
// behind the engine's back) plus a log of every write.
//
// Test-side helpers whose names start with Backdoor bypass the running check, fault injection and
// the write log: they are how a test builds and inspects the guest.
#ifndef TPRD_TESTS_FAKES_FAKE_GUEST_VM_H_
#define TPRD_TESTS_FAKES_FAKE_GUEST_VM_H_

#include <array>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "daemon/engine/guest_vm.h"
#include "daemon/engine/page_walker.h"

namespace tprd::testing {

using engine::CpuFeatures;
using engine::GuestVm;
using engine::MemoryRegion;
using engine::StepResult;
using engine::StopEvent;
using engine::VcpuRegisters;
using engine::WatchKind;
using engine::WritableRegister;

class FakeGuestVm : public GuestVm {
 public:
  struct Options {
    uint64_t ram_bytes = 32u << 20;
    int vcpu_count = 1;
    bool start_running = true;
  };

  // Operations that fault injection counts, each kind on its own.
  enum class Op : uint8_t {
    kStop,
    kResume,
    kReadRegisters,
    kWriteRegister,
    kReadMemory,   // ReadVirtual and ReadPhysical
    kWriteMemory,  // WriteVirtual and WritePhysical
    kStep,         // StepVcpu
  };

  struct WriteRecord {
    bool is_virtual = false;
    int vcpu = -1;         // virtual writes only
    uint64_t address = 0;  // virtual or physical, as called
    // Physical address of each byte written (what actually changed).
    std::vector<uint64_t> physical;
    std::vector<uint8_t> bytes;
  };

  // Page number -> contents, for comparing whole memory before and after. Pages never written
  // and all-zero pages are left out, so the two compare equal.
  using MemorySnapshot = std::map<uint64_t, std::array<uint8_t, 4096>>;

  FakeGuestVm() : FakeGuestVm(Options{}) {}
  explicit FakeGuestVm(const Options& options);

  // GuestVm.
  absl::Status Stop() override;
  absl::Status Resume() override;
  absl::StatusOr<std::optional<StopEvent>> WaitForStop(absl::Duration timeout) override;
  absl::StatusOr<int> VcpuCount() override;
  absl::StatusOr<VcpuRegisters> ReadRegisters(int vcpu) override;
  absl::Status WriteRegister(int vcpu, WritableRegister reg, uint32_t value) override;
  absl::Status ReadVirtual(int vcpu, uint32_t va, absl::Span<uint8_t> out) override;
  absl::Status WriteVirtual(int vcpu, uint32_t va, absl::Span<const uint8_t> data) override;
  // One WriteVirtual per write, unless BreakNthWriteMany says otherwise.
  absl::StatusOr<std::vector<absl::Status>> WriteVirtualMany(
      int vcpu, absl::Span<const engine::MemoryWrite> writes) override;
  absl::Status ReadPhysical(uint64_t pa, absl::Span<uint8_t> out) override;
  absl::Status WritePhysical(uint64_t pa, absl::Span<const uint8_t> data) override;
  // Any run state, like QEMU's process_vm_readv path.
  absl::Status ReadPhysicalLive(uint64_t pa, absl::Span<uint8_t> out) override;
  absl::StatusOr<std::vector<MemoryRegion>> MemoryMap() override;
  absl::StatusOr<uint8_t> ReadTpr(int vcpu) override;
  absl::StatusOr<CpuFeatures> Features() override;
  // NOT_FOUND (no ACPI) until SetAcpiPmTimer; then the timer's value, masked to 24 bits.
  absl::StatusOr<uint32_t> ReadAcpiPmTimer() override;
  absl::Status SetBreakpoint(uint32_t va) override;
  absl::Status RemoveBreakpoint(uint32_t va) override;
  absl::Status SetWatchpoint(uint32_t va, uint32_t length, WatchKind kind) override;
  absl::Status RemoveWatchpoint(uint32_t va, uint32_t length, WatchKind kind) override;
  // Stopped guest only. Runs the step hook if one is set, else adds the step length to the
  // vCPU's eip (completed). A completed step reports and clears the vCPU's pending watchpoint
  // hit; an incomplete one leaves it pending (as QEMU does when the step is interrupted).
  absl::StatusOr<StepResult> StepVcpu(int vcpu, absl::Duration timeout) override;
  // Stopped guest only. Runs the run-alone hook if one is set; without one nothing wakes the
  // vCPU: an interrupted stop at its eip. The guest is stopped afterwards.
  absl::StatusOr<StopEvent> RunVcpuAlone(int vcpu, absl::Duration timeout) override;
  std::optional<StopEvent> TakeRacedWatchpointStop() override;
  std::optional<StopEvent> TakeRacedTrapStop() override;

  // --- State a test sets up or inspects (no fault injection, no log, any run state). ---
  absl::Status BackdoorWritePhysical(uint64_t pa, absl::Span<const uint8_t> data);
  absl::Status BackdoorReadPhysical(uint64_t pa, absl::Span<uint8_t> out) const;
  std::vector<uint8_t> BackdoorPhysicalBytes(uint64_t pa, size_t size) const;  // empty on error
  absl::Status BackdoorWriteVirtual(int vcpu, uint32_t va, absl::Span<const uint8_t> data);
  absl::StatusOr<std::vector<uint8_t>> BackdoorVirtualBytes(int vcpu, uint32_t va, size_t size);
  void BackdoorWrite32(uint64_t pa, uint32_t value);
  void BackdoorWrite64(uint64_t pa, uint64_t value);
  uint64_t BackdoorRead64(uint64_t pa) const;
  VcpuRegisters& Registers(int vcpu) { return vcpus_.at(vcpu).regs; }
  void SetEip(int vcpu, uint32_t eip) { vcpus_.at(vcpu).regs.eip = eip; }
  void SetTpr(int vcpu, uint8_t tpr) { vcpus_.at(vcpu).tpr = tpr; }
  // Applies the same paging registers to every vCPU.
  void SetPagingAll(uint32_t cr0, uint32_t cr3, uint32_t cr4, uint64_t efer = 0);
  void SetMemoryMap(std::vector<MemoryRegion> regions) { memory_map_ = std::move(regions); }
  void AddMemoryRegion(MemoryRegion region) { memory_map_.push_back(std::move(region)); }
  void SetFeatures(CpuFeatures features) { features_ = features; }
  // Gives the machine an ACPI PM timer at `start` that advances `ticks_per_resume` at each
  // Resume() (the guest's time runs only while it runs, as QEMU's virtual clock does).
  void SetAcpiPmTimer(uint32_t start, uint32_t ticks_per_resume) {
    pm_timer_ = start;
    pm_ticks_per_resume_ = ticks_per_resume;
  }
  MemorySnapshot Snapshot() const;

  bool running() const { return running_; }
  void SetRunning(bool running) { running_ = running; }
  // Without a live path ReadPhysicalLive is UNIMPLEMENTED (a remote libvirtd, not root).
  void SetLiveReadsAvailable(bool available) { live_reads_available_ = available; }
  // ReadPhysicalLive calls that read while the guest ran.
  int live_reads_while_running() const { return live_reads_while_running_; }
  // ReadAcpiPmTimer calls made while the guest was stopped.
  int pm_timer_reads_while_stopped() const { return pm_timer_reads_while_stopped_; }
  // MemoryMap calls made while the guest was stopped.
  int memory_map_reads_while_stopped() const { return memory_map_reads_while_stopped_; }
  // libvirt paused the domain: it is stopped, and Resume() refuses to run it.
  void SetHostPaused(bool paused);
  bool host_paused() const { return host_paused_; }
  int stop_calls() const { return stop_calls_; }
  int resume_calls() const { return resume_calls_; }
  // Counts of successful operations of a kind since construction.
  int op_count(Op op) const { return op_counts_[static_cast<size_t>(op)]; }

  const std::set<uint32_t>& breakpoints() const { return breakpoints_; }
  // Every SetBreakpoint call, in order (also those removed since).
  const std::vector<uint32_t>& breakpoint_log() const { return breakpoint_log_; }
  // As QEMU under KVM: a breakpoint is an int3 (0xCC) written into guest memory at its address
  // (translated with vCPU 0's page tables) while it stands, and its removal writes the byte
  // saved at insertion back. Not in write_log(): tprd did not write it.
  void set_breakpoints_in_memory(bool on) { breakpoints_in_memory_ = on; }
  const std::set<std::tuple<uint32_t, uint32_t, WatchKind>>& watchpoints() const {
    return watchpoints_;
  }
  // Stop events WaitForStop returns, in order; each one stops the guest.
  void QueueStopEvent(StopEvent event) { stop_events_.push_back(event); }
  // The next Stop() of a running guest races with `event` (a trap QEMU reports instead of the
  // interrupt): it is kept, as QemuGuestVm keeps it, until TakeRaced*Stop takes it or the next
  // WaitForStop returns it; meanwhile StepVcpu and RunVcpuAlone refuse.
  void RaceNextStop(StopEvent event) { race_next_stop_ = event; }
  bool raced_stop_kept() const { return raced_stop_.has_value(); }

  // --- Single-step script. ---
  // Bytes a step without a hook adds to eip (the stepped instruction's length); 1 by default.
  void SetStepLength(uint32_t bytes) { step_length_ = bytes; }
  // Replaces the eip advance: `hook` plays the vCPU's one instruction (moves eip, changes state
  // through Registers()/Backdoor*) and returns whether the step completed; false plays a step
  // that had to be interrupted (e.g. `hlt` with interrupts masked). Until cleared (nullptr).
  void OnStep(std::function<bool(FakeGuestVm&, int vcpu)> hook) { on_step_ = std::move(hook); }
  // The vCPU has a watchpoint hit the hypervisor has not reported yet: the next completed step
  // of that vCPU reports it (watchpoint_reported) and clears it.
  void SetPendingWatchpointHit(int vcpu, bool pending = true) {
    vcpus_.at(vcpu).pending_watchpoint_hit = pending;
  }
  bool pending_watchpoint_hit(int vcpu) const { return vcpus_.at(vcpu).pending_watchpoint_hit; }
  // Plays RunVcpuAlone: the hook moves the vCPU (Registers()/Backdoor*) and returns its stop.
  void OnRunAlone(std::function<StopEvent(FakeGuestVm&, int vcpu)> hook) {
    on_run_alone_ = std::move(hook);
  }
  // The vCPU of every RunVcpuAlone, in call order.
  const std::vector<int>& run_alone_calls() const { return run_alone_calls_; }
  // The vCPU of every successful StepVcpu, in call order.
  const std::vector<int>& step_calls() const { return step_calls_; }

  const std::vector<WriteRecord>& write_log() const { return write_log_; }
  void ClearWriteLog() { write_log_.clear(); }

  // --- Fault injection. N counts calls of that kind from now, starting at 1. ---
  // The Nth call of `op` fails with `status`. For kWriteMemory, `partial_bytes` bytes are written
  // before the failure (a torn write).
  void FailNth(Op op, int n, absl::Status status, size_t partial_bytes = 0);
  void FailNthRead(int n) { FailNth(Op::kReadMemory, n, absl::UnavailableError("injected")); }
  void FailNthWrite(int n, size_t partial_bytes = 0) {
    FailNth(Op::kWriteMemory, n, absl::UnavailableError("injected"), partial_bytes);
  }
  // The Nth WriteVirtualMany from now makes only its first `landed` writes, then fails as a
  // gdbstub exchange that broke (which writes landed is not said).
  void BreakNthWriteMany(int n, size_t landed) {
    break_write_many_at_ = n;
    break_write_many_landed_ = landed;
  }
  // Runs `hook` just before the Nth memory write from now does anything.
  void BeforeNthWrite(int n, std::function<void(FakeGuestVm&)> hook);
  // Runs `hook` just after the Nth memory write from now stored its bytes (a guest vCPU or
  // device racing the engine, seen only by the read-back).
  void AfterNthWrite(int n, std::function<void(FakeGuestVm&)> hook);
  // Runs `hook` inside every later successful Stop() (e.g. to move a vCPU's EIP) until cleared.
  void OnStop(std::function<void(FakeGuestVm&)> hook) { on_stop_ = std::move(hook); }
  void ClearFaults();

 private:
  struct Vcpu {
    VcpuRegisters regs;
    uint8_t tpr = 0;
    bool pending_watchpoint_hit = false;
  };
  int break_write_many_at_ = 0;  // 0: never
  size_t break_write_many_landed_ = 0;
  struct Injection {
    Op op;
    int remaining;  // calls of `op` still to pass before it fires
    absl::Status status;
    size_t partial_bytes = 0;
  };
  struct WriteHook {
    int remaining;
    bool after;
    std::function<void(FakeGuestVm&)> hook;
  };
  using Page = std::array<uint8_t, 4096>;

  std::optional<StopEvent> race_next_stop_;
  std::optional<StopEvent> raced_stop_;
  absl::Status RequireNoRacedStop() const;

  // Counts one call of `op`; returns the injected failure if one is due.
  std::optional<Injection> Count(Op op);
  void RunWriteHooks(bool after);
  absl::Status RequireStopped(const char* what) const;
  absl::Status CheckVcpu(int vcpu) const;
  bool Accessible(uint64_t pa, size_t size) const;
  // Physical address of each byte of [va, va+size), or the translation fault.
  absl::StatusOr<std::vector<uint64_t>> TranslateRange(int vcpu, uint32_t va, size_t size);
  void StoreByte(uint64_t pa, uint8_t value);
  uint8_t LoadByte(uint64_t pa) const;
  absl::Status WriteBytes(std::vector<uint64_t> physical, absl::Span<const uint8_t> data,
                          bool is_virtual, int vcpu, uint64_t address);

  uint64_t ram_bytes_;
  std::vector<Vcpu> vcpus_;
  absl::flat_hash_map<uint64_t, Page> pages_;
  std::vector<MemoryRegion> memory_map_;
  CpuFeatures features_;
  bool running_;
  bool host_paused_ = false;
  std::optional<uint32_t> pm_timer_;
  uint32_t pm_ticks_per_resume_ = 0;
  int stop_calls_ = 0;
  bool live_reads_available_ = true;
  int live_reads_while_running_ = 0;
  int memory_map_reads_while_stopped_ = 0;
  int pm_timer_reads_while_stopped_ = 0;
  int resume_calls_ = 0;
  std::array<int, 7> op_counts_ = {};  // indexed by Op
  std::set<uint32_t> breakpoints_;
  std::vector<uint32_t> breakpoint_log_;
  bool breakpoints_in_memory_ = false;
  std::map<uint32_t, std::pair<uint64_t, uint8_t>> int3_saved_;  // va -> (pa, byte)
  std::set<std::tuple<uint32_t, uint32_t, WatchKind>> watchpoints_;
  std::deque<StopEvent> stop_events_;
  std::vector<WriteRecord> write_log_;
  std::vector<Injection> injections_;
  std::vector<WriteHook> write_hooks_;
  std::function<void(FakeGuestVm&)> on_stop_;
  uint32_t step_length_ = 1;
  std::function<bool(FakeGuestVm&, int)> on_step_;
  std::vector<int> step_calls_;
  std::function<StopEvent(FakeGuestVm&, int)> on_run_alone_;
  std::vector<int> run_alone_calls_;
};

// Reads a FakeGuestVm's physical memory through its backdoor: page-table walks by the
// "hypervisor" and tests, neither counted nor failed by fault injection.
class FakeGuestVmBackdoorReader : public engine::PhysicalMemoryReader {
 public:
  explicit FakeGuestVmBackdoorReader(const FakeGuestVm& vm) : vm_(vm) {}
  absl::Status ReadPhysical(uint64_t pa, absl::Span<uint8_t> out) override {
    return vm_.BackdoorReadPhysical(pa, out);
  }

 private:
  const FakeGuestVm& vm_;
};

}  // namespace tprd::testing

#endif  // TPRD_TESTS_FAKES_FAKE_GUEST_VM_H_

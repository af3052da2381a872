// engine::GuestVm for one running libvirt/QEMU domain: the gdbstub (GdbClient over a
// socketpair whose other end tprd handed to QEMU) for control, registers and every write;
// process_vm_readv for bulk physical reads; the QEMU monitor for the TPR, memory map and CPU flags;
// libvirt for the domain's state (never resume what libvirt paused) and lifecycle events (a
// destroyed domain ends the session with kGone / UNAVAILABLE instead of a hang).
//
// Threading: one owner (the domain's actor) calls the GuestVm methods; only the libvirt event
// callback runs elsewhere, and it touches nothing but events_mu_'s fields.
#ifndef TPRD_KVM_BACKEND_QEMU_GUEST_VM_H_
#define TPRD_KVM_BACKEND_QEMU_GUEST_VM_H_

#include <functional>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "daemon/engine/guest_vm.h"
#include "kvm-backend/core/byte_stream.h"
#include "kvm-backend/core/gdb_client.h"
#include "kvm-backend/core/libvirt_pause_tracker.h"
#include "kvm-backend/libvirt_connection.h"
#include "kvm-backend/process_memory.h"
#include "kvm-backend/qemu_monitor.h"

namespace tprd::backend {

// Starts the domain's gdbstub and returns tprd's end of its byte stream (Detach stops the stub
// through the monitor). The seam lets unit tests run QemuGuestVm over a scripted gdbstub.
using GdbStreamOpener = std::function<absl::StatusOr<std::unique_ptr<ByteStream>>(QemuMonitor&)>;

// The real opener: QemuMonitor::StartGdbServer (a socketpair whose other end QEMU gets).
absl::StatusOr<std::unique_ptr<ByteStream>> StartGdbServerOnSocketpair(QemuMonitor& monitor);

struct QemuGuestVmOptions {
  GdbClientOptions gdb;
  GdbStreamOpener open_gdb_stream = StartGdbServerOnSocketpair;
  // ReadPhysical's fast path and ReadPhysicalLive's only one; a seam like open_gdb_stream.
  LiveMemoryOpener open_live_memory = OpenProcessMemory;
  // While waiting for a stop, how often to look whether the domain still exists.
  absl::Duration liveness_check_interval = absl::Milliseconds(200);
  // How long Stop() waits for the stop that follows an interrupt.
  absl::Duration stop_timeout = absl::Seconds(5);
  // How long a resume waits for libvirt to report the stop it ends (LibvirtPauseTracker) before
  // it reads libvirt's state; then it goes on with what libvirt says.
  absl::Duration libvirt_catch_up = absl::Milliseconds(250);
};

class QemuGuestVm : public engine::GuestVm, private LibvirtEventSubscriber {
 public:
  // Starts the gdbstub and attaches, which stops every vCPU. The VM stays stopped on return
  // (call Resume to let it run). `connection` must outlive the QemuGuestVm.
  static absl::StatusOr<std::unique_ptr<QemuGuestVm>> Attach(LibvirtConnection* connection,
                                                             const std::string& uuid,
                                                             QemuGuestVmOptions options = {});
  ~QemuGuestVm() override;  // Detach() if not done yet, ignoring errors

  // Leaves no trace: removes every breakpoint and watchpoint, detaches (`D;1`, which resumes)
  // when the VM should run, or just disconnects when libvirt holds it paused, then stops the
  // gdbstub (`gdbserver none`). Idempotent.
  absl::Status Detach();

  absl::Status Stop() override;
  std::optional<engine::StopEvent> TakeRacedWatchpointStop() override;
  std::optional<engine::StopEvent> TakeRacedTrapStop() override;
  absl::Status Resume() override;
  absl::StatusOr<std::optional<engine::StopEvent>> WaitForStop(absl::Duration timeout) override;
  absl::StatusOr<int> VcpuCount() override;
  absl::StatusOr<engine::VcpuRegisters> ReadRegisters(int vcpu) override;
  absl::Status WriteRegister(int vcpu, engine::WritableRegister reg, uint32_t value) override;
  absl::Status ReadVirtual(int vcpu, uint32_t va, absl::Span<uint8_t> out) override;
  absl::Status WriteVirtual(int vcpu, uint32_t va, absl::Span<const uint8_t> data) override;
  absl::StatusOr<std::vector<absl::Status>> WriteVirtualMany(
      int vcpu, absl::Span<const engine::MemoryWrite> writes) override;
  absl::Status ReadPhysical(uint64_t pa, absl::Span<uint8_t> out) override;
  absl::Status WritePhysical(uint64_t pa, absl::Span<const uint8_t> data) override;
  absl::Status ReadPhysicalLive(uint64_t pa, absl::Span<uint8_t> out) override;
  absl::StatusOr<std::vector<engine::MemoryRegion>> MemoryMap() override;
  absl::StatusOr<uint8_t> ReadTpr(int vcpu) override;
  absl::StatusOr<uint32_t> ReadAcpiPmTimer() override;
  absl::StatusOr<engine::CpuFeatures> Features() override;
  absl::Status SetBreakpoint(uint32_t va) override;
  absl::StatusOr<std::vector<absl::Status>> SetBreakpoints(absl::Span<const uint32_t> vas) override;
  absl::Status RemoveBreakpoint(uint32_t va) override;
  absl::Status SetWatchpoint(uint32_t va, uint32_t length, engine::WatchKind kind) override;
  absl::Status RemoveWatchpoint(uint32_t va, uint32_t length, engine::WatchKind kind) override;
  // GdbClient::StepThread on the vCPU's thread. A stop that ends the step but is not the step's
  // (another vCPU's trap, a host pause) is kept for WaitForStop like Stop() keeps a raced one;
  // the interrupt's own stop is dropped. FAILED_PRECONDITION while such a kept stop is pending.
  absl::StatusOr<engine::StepResult> StepVcpu(int vcpu, absl::Duration timeout) override;
  absl::StatusOr<engine::StopEvent> RunVcpuAlone(int vcpu, absl::Duration timeout) override;

  const std::string& uuid() const { return uuid_; }
  // Reads of physical memory served by process_vm_readv (the rest went through the gdbstub).
  uint64_t fast_physical_reads() const { return fast_physical_reads_; }

 private:
  QemuGuestVm(LibvirtConnection* connection, std::string uuid, QemuGuestVmOptions options);

  void OnDomainEvent(const LibvirtDomainEvent& event) override;
  void OnConnectionLost() override;
  // ABORTED once libvirt reported a reset or reboot of the guest in this session: what tprd
  // would write (a patch, a shadow, a register fix-up) was decided for the old boot, and a patch
  // calling a handler of the old boot's blob crashed a new one (2026-12-07, third session).
  absl::Status NotRebooted() const;
  absl::Status Gone() const;
  absl::Status CheckUsable(bool require_stopped);
  absl::Status SelectVcpu(int vcpu);
  absl::Status SetPhysicalMode(bool physical);
  // libvirt (not us) holds the domain paused: FAILED_PRECONDITION naming the reason. Reads
  // libvirt's state once libvirt has caught up with our latest stop (HostStateOfOurStop).
  absl::Status CheckNotPausedByHost();
  absl::StatusOr<LibvirtDomainInfo> HostStateOfOurStop();
  // StepVcpu's and RunVcpuAlone's preconditions: stopped, a known vCPU, no stop pending.
  absl::Status CheckCanRunAlone(int vcpu);
  // After a step that reported a watchpoint hit: takes the debug interrupt QEMU left pending on
  // that vCPU, with no instruction run (see the .cc).
  absl::Status ConsumeStaleDebugInterrupt(int vcpu, uint32_t pc, absl::Duration timeout);
  // Puts back the EFLAGS.IF that ConsumeStaleDebugInterrupt cleared, if it is still cleared
  // (read back); a no-op otherwise.
  absl::Status RestoreClearedEflags();
  engine::StopEvent ToStopEvent(const GdbStopReply& reply);
  // A stop QEMU reported with SIGTRAP (breakpoint, watchpoint, step) leaves its run state
  // "debug"; our interrupt and the host's `stop` leave it "paused".
  void NoteRunState(const GdbStopReply& reply);
  // Detach from a domain libvirt holds paused: takes QEMU from "debug" to "paused" without
  // resuming it for more than a moment. QEMU 7.2 cannot restore a saved or migrated state taken
  // in "debug" (the target aborts: "invalid runstate transition: 'inmigrate' -> 'debug'").
  absl::Status LeaveDebugRunState();

  LibvirtConnection* connection_;
  const std::string uuid_;
  const QemuGuestVmOptions options_;
  QemuMonitor monitor_;
  std::unique_ptr<GdbClient> gdb_;
  std::unique_ptr<LiveMemoryReader> process_memory_;  // ProcessMemory; null if it did not open
  std::vector<GdbThreadId> threads_;
  int selected_vcpu_ = -1;
  std::optional<bool> physical_mode_;
  bool detached_ = false;
  bool debug_run_state_ = false;                   // QEMU's run state is "debug" (see NoteRunState)
  std::optional<engine::StopEvent> pending_stop_;  // a stop that arrived during Stop()/StepVcpu()
  std::set<uint32_t> breakpoints_;
  // The vCPU and eflags ConsumeStaleDebugInterrupt cleared IF in, until they are restored.
  std::optional<std::pair<int, uint64_t>> eflags_to_restore_;
  std::set<std::tuple<uint32_t, uint32_t, engine::WatchKind>> watchpoints_;
  uint64_t fast_physical_reads_ = 0;
  bool gdbstub_monitor_ = true;  // the stub answers qRcmd (ReadTpr); false once it did not

  LibvirtPauseTracker libvirt_pauses_;
  mutable absl::Mutex events_mu_;
  std::string gone_reason_ ABSL_GUARDED_BY(events_mu_);  // empty while the domain exists
  // Set by libvirt's reboot event: the memory now holds a new boot, which tprd never writes
  // (NotRebooted).
  bool rebooted_ ABSL_GUARDED_BY(events_mu_) = false;
};

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_QEMU_GUEST_VM_H_

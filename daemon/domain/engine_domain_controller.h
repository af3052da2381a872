// The real DomainController: the engine's PatchManager driving a QEMU domain through
// kvm-backend's QemuGuestVm. The gdbstub is attached only while there is something to do
// (enable, scan, rollback, a patched guest to keep correct); adopting at daemon start first
// looks for tprd's blob through bulk memory reads, so unpatched domains are never stopped.
#ifndef TPRD_DAEMON_DOMAIN_ENGINE_DOMAIN_CONTROLLER_H_
#define TPRD_DAEMON_DOMAIN_ENGINE_DOMAIN_CONTROLLER_H_

#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "daemon/domain/domain_controller.h"
#include "daemon/domain/hypervisor.h"
#include "daemon/engine/clock.h"
#include "daemon/engine/patch_manager.h"
#include "kvm-backend/apic_trace_sampler.h"
#include "kvm-backend/libvirt_connection.h"
#include "kvm-backend/live_memory_reader.h"
#include "kvm-backend/process_memory.h"
#include "kvm-backend/qemu_guest_vm.h"

namespace tprd::daemon {

struct EngineControllerOptions {
  // Poll waits for guest stops in slices this long so Interrupt() is seen promptly.
  absl::Duration poll_slice = absl::Milliseconds(50);
  // engine::EnableRequest::proving_window (config proving_window_s).
  absl::Duration proving_window = absl::Seconds(60);
  // engine::EnableRequest::unpatched_write_stops_per_second_limit (config
  // mmio_write_stops_per_second).
  int mmio_write_stops_per_second = engine::EnableRequest{}.unpatched_write_stops_per_second_limit;
  // engine::EnableRequest::discovery (config discovery); nullopt: auto, by the domain's
  // accelerator (breakpoints only where QEMU reports TCG).
  std::optional<engine::Discovery> discovery;
  // How long an enable that places the blob first traces QEMU's APIC (config before_trace_ms;
  // zero: not at all), and where libvirt keeps each domain's directory (the trace file's place).
  absl::Duration before_trace = absl::Milliseconds(500);
  std::string libvirt_qemu_dir = "/var/lib/libvirt/qemu";
  // Opens a reader of the domain's guest memory that does not stop the guest: for Adopt's look
  // for tprd's blob, and the session's own (QemuGuestVmOptions::open_live_memory). A seam: the
  // daemon's tests hand in a fake reader. Default: process_vm_readv of the domain's QEMU process.
  backend::LiveMemoryOpener open_live_memory = backend::OpenProcessMemory;
};

// What an engine event is to the domain's actor. The host's pause (kHostPaused) that is not a
// copy's or a revert's is a notice: an operator's suspend, or a pause libvirt already ended.
ControllerEvent::Kind ControllerEventKindOf(engine::ManagerEvent::Kind kind);

class EngineDomainController : public DomainController {
 public:
  EngineDomainController(backend::LibvirtConnection* connection, DomainInfo domain,
                         engine::PatchRecorder* recorder, EngineControllerOptions options);
  ~EngineDomainController() override;

  absl::StatusOr<bool> Adopt(std::optional<RequestedStrategy> strategy_hint) override;
  absl::StatusOr<std::vector<engine::ManagedSite>> Enable(const EnableOptions& options) override;
  absl::StatusOr<RollbackResult> Rollback(const std::vector<uint32_t>& site_ids,
                                          bool force) override;
  absl::StatusOr<std::vector<engine::ManagedSite>> ListSites() override;
  absl::StatusOr<std::vector<engine::ManagedSite>> Scan() override;
  ControllerStatus Status() override;
  absl::StatusOr<std::vector<ControllerEvent>> Poll(absl::Duration timeout) override;
  void Interrupt() override;
  absl::Status Detach(const std::string& reason) override;
  void Abandon(const std::string& reason) override;

  // Whether a page of the legacy window starts with tprd's blob magic, read through
  // options.open_live_memory without stopping the guest (Adopt attaches only if so).
  absl::StatusOr<bool> BlobPresentWithoutStopping();

 private:
  absl::Status EnsureAttached();
  // The engine's settings from the config, discovery resolved for this domain's accelerator
  // (auto: breakpoints only where QEMU reports TCG). Requires EnsureAttached.
  absl::StatusOr<engine::EnableRequest> SessionSettings();
  backend::ApicTraceSampler TraceSampler();
  // Counts the TPR accesses reaching QEMU's APIC for options_.before_trace, into before_trace_.
  void TraceBefore();
  // Waits until `timeout` passes or Interrupt() is called.
  void IdleWait(absl::Duration timeout);
  // A kHostCopiesState event when libvirt holds the domain paused to copy its state, a
  // kHostReplacesState event when it holds it paused to load a snapshot's memory into it.
  std::optional<ControllerEvent> HostChangesState();

  backend::LibvirtConnection* connection_;
  const DomainInfo domain_;
  engine::PatchRecorder* recorder_;
  engine::NullPatchRecorder no_journal_;
  const EngineControllerOptions options_;
  engine::RealClock clock_;
  bool discovery_logged_ = false;
  std::unique_ptr<backend::QemuGuestVm> vm_;
  std::unique_ptr<engine::PatchManager> manager_;
  std::vector<ControllerEvent> pending_events_;
  AccessRateMeter rates_;
  // The APIC trace taken before this session's first patch, or why there is none; unset when
  // none was tried.
  std::optional<absl::StatusOr<backend::ApicTraceSample>> before_trace_;
  PauseHistogram enable_pauses_;
  // Set once libvirt was seen holding the domain paused to copy its state: the detach (the
  // let-go) then runs no vCPU.
  bool host_copies_state_ = false;

  absl::Mutex interrupt_mu_;
  bool interrupted_ ABSL_GUARDED_BY(interrupt_mu_) = false;
  bool blob_seen_ = false;  // Adopt found tprd's blob in the guest
};

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_DOMAIN_ENGINE_DOMAIN_CONTROLLER_H_

#include "daemon/domain/engine_domain_controller.h"

#include <algorithm>
#include <atomic>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/engine/blob.h"
#include "daemon/engine/placement.h"
#include "daemon/log.h"

namespace tprd::daemon {
namespace {

// The learning window is part of the discovery budget, capped so an enable stays short.
constexpr absl::Duration kMaxLearningWindow = absl::Milliseconds(500);

// Whether libvirt reports a reset or a stop of one domain while it is subscribed: the "before"
// trace runs with nothing attached, so nothing else would notice a reset under it.
class ResetWatch : public backend::LibvirtEventSubscriber {
 public:
  ResetWatch(backend::LibvirtConnection* connection, std::string uuid)
      : connection_(connection), uuid_(std::move(uuid)) {
    connection_->Subscribe(this);
  }
  ~ResetWatch() override { connection_->Unsubscribe(this); }
  void OnDomainEvent(const backend::LibvirtDomainEvent& event) override {
    if (event.uuid != uuid_) return;
    if (event.kind == backend::LibvirtDomainEvent::Kind::kRebooted ||
        event.kind == backend::LibvirtDomainEvent::Kind::kStopped ||
        event.kind == backend::LibvirtDomainEvent::Kind::kCrashed) {
      seen_ = true;
    }
  }
  bool seen() const { return seen_.load(); }

 private:
  backend::LibvirtConnection* connection_;
  const std::string uuid_;
  std::atomic<bool> seen_{false};
};

}  // namespace

ControllerEvent::Kind ControllerEventKindOf(engine::ManagerEvent::Kind kind) {
  switch (kind) {
    case engine::ManagerEvent::Kind::kSitePatched:
      return ControllerEvent::Kind::kSiteChanged;
    case engine::ManagerEvent::Kind::kStrategyChanged:
      return ControllerEvent::Kind::kStrategyChanged;
    case engine::ManagerEvent::Kind::kWarning:
      return ControllerEvent::Kind::kError;
    case engine::ManagerEvent::Kind::kHostPaused:
      // An operator's suspend, or a copy's pause already over when tprd looked: the host's doing,
      // not tprd's failure (as an error it outlived the pause in the status's last_error).
    case engine::ManagerEvent::Kind::kNotice:
      return ControllerEvent::Kind::kNotice;
  }
  return ControllerEvent::Kind::kError;
}

EngineDomainController::EngineDomainController(backend::LibvirtConnection* connection,
                                               DomainInfo domain, engine::PatchRecorder* recorder,
                                               EngineControllerOptions options)
    : connection_(connection),
      domain_(std::move(domain)),
      recorder_(recorder),
      options_(std::move(options)) {}

EngineDomainController::~EngineDomainController() = default;

absl::Status EngineDomainController::EnsureAttached() {
  if (vm_ != nullptr) return absl::OkStatus();
  backend::QemuGuestVmOptions vm_options;
  vm_options.open_live_memory = options_.open_live_memory;
  absl::StatusOr<std::unique_ptr<backend::QemuGuestVm>> vm =
      backend::QemuGuestVm::Attach(connection_, domain_.uuid, vm_options);
  if (!vm.ok()) return vm.status();
  vm_ = *std::move(vm);
  manager_ = std::make_unique<engine::PatchManager>(
      *vm_, recorder_ != nullptr ? *recorder_ : static_cast<engine::PatchRecorder&>(no_journal_),
      clock_);
  return absl::OkStatus();
}

absl::StatusOr<engine::EnableRequest> EngineDomainController::SessionSettings() {
  engine::EnableRequest settings;
  settings.proving_window = options_.proving_window;
  settings.unpatched_write_stops_per_second_limit = options_.mmio_write_stops_per_second;
  if (options_.discovery) {
    settings.discovery = *options_.discovery;
  } else {
    absl::StatusOr<engine::CpuFeatures> features = vm_->Features();
    if (!features.ok()) return features.status();
    // Unknown counts as KVM: the watchpoint is correct under either accelerator.
    settings.discovery = features->accelerator == engine::Accelerator::kTcg
                             ? engine::Discovery::kBreakpoints
                             : engine::Discovery::kWatchpoint;
  }
  if (!discovery_logged_) {
    discovery_logged_ = true;
    LogInfo(absl::StrCat("domain ", domain_.name, ": discovery ",
                         std::string(engine::DiscoveryName(settings.discovery)),
                         options_.discovery ? " (config)" : " (auto, by the accelerator)"));
  }
  return settings;
}

absl::StatusOr<bool> EngineDomainController::BlobPresentWithoutStopping() {
  absl::StatusOr<std::unique_ptr<backend::LiveMemoryReader>> memory =
      options_.open_live_memory(connection_, domain_.uuid);
  if (!memory.ok()) return memory.status();
  std::vector<uint8_t> window(engine::kLegacyWindowEnd - engine::kLegacyWindowFirst);
  if (absl::Status s = (*memory)->Read(engine::kLegacyWindowFirst, absl::MakeSpan(window));
      !s.ok()) {
    return s;
  }
  return !engine::PagesWithBlobMagic(window).empty();
}

backend::ApicTraceSampler EngineDomainController::TraceSampler() {
  backend::ApicTraceSamplerOptions trace_options;
  trace_options.libvirt_qemu_dir = options_.libvirt_qemu_dir;
  return backend::ApicTraceSampler(connection_, domain_.uuid, &clock_, trace_options);
}

void EngineDomainController::TraceBefore() {
  before_trace_ = TraceSampler().Sample(options_.before_trace);
  if (!before_trace_->ok()) {
    LogInfo(absl::StrCat("domain ", domain_.name, ": no APIC trace before the first patch (",
                         before_trace_->status().message(), "); \"before\" comes from the ",
                         "learning window, a lower bound"));
    return;
  }
  const backend::ApicTraceSample& sample = **before_trace_;
  if (!sample.leftover_file_error.empty()) {
    LogWarning(
        absl::StrCat("domain ", domain_.name, ": ", sample.leftover_file_error,
                     " (QEMU no longer writes it; libvirt removes it when the domain stops)"));
  }
  LogInfo(absl::StrFormat(
      "domain %s: before the first patch, QEMU's APIC trace counted %u TPR reads and %u TPR "
      "writes in %.0f ms (%.0f/s)",
      domain_.name, sample.count.tpr_reads, sample.count.tpr_writes,
      absl::ToDoubleMilliseconds(sample.window),
      static_cast<double>(sample.count.tpr_reads + sample.count.tpr_writes) /
          absl::ToDoubleSeconds(sample.window)));
}

absl::StatusOr<bool> EngineDomainController::Adopt(std::optional<RequestedStrategy> strategy_hint) {
  // A tprd killed during its APIC trace left QEMU tracing into a file: stop it.
  if (absl::Status s = TraceSampler().CleanUpLeftover(); !s.ok()) {
    LogWarning(
        absl::StrCat("domain ", domain_.name,
                     ": could not stop an APIC trace a previous tprd left running: ", s.message()));
  }
  absl::StatusOr<bool> present = BlobPresentWithoutStopping();
  if (!present.ok()) return present.status();
  blob_seen_ = *present;
  if (!*present) {
    // A tprd killed while it held the guest stopped, before its blob went in, left it stopped:
    // the gdbstub keeps a VM stopped when its client vanishes. Attaching here and the detach
    // that follows let it run; a VM libvirt paused (any other reason) stays paused.
    absl::StatusOr<backend::LibvirtDomainInfo> info = connection_->GetDomain(domain_.uuid);
    if (info.ok() && info->state == backend::LibvirtDomainState::kPaused &&
        info->reason == backend::kPausedReasonUnknown) {
      LogInfo(absl::StrCat(domain_.name, ": stopped by a gdbstub nobody holds; letting it run"));
      if (absl::Status s = EnsureAttached(); !s.ok()) return s;
    }
    return false;
  }
  if (absl::Status s = EnsureAttached(); !s.ok()) return s;
  absl::StatusOr<engine::EnableRequest> settings = SessionSettings();
  if (!settings.ok()) return settings.status();
  std::optional<engine::Strategy> hint;
  if (strategy_hint) hint = ResolveRequestedStrategy(*strategy_hint);
  return manager_->Adopt(hint, *settings);
}

absl::StatusOr<std::vector<engine::ManagedSite>> EngineDomainController::Enable(
    const EnableOptions& options) {
  // "before" for the status: only while nothing of tprd's is in this boot of the guest, and
  // before the gdbstub attaches (attaching stops the guest until the engine resumes it).
  if (!options.dry_run && options_.before_trace > absl::ZeroDuration() &&
      (manager_ == nullptr || !manager_->Status().installed)) {
    // A reset under the trace would make this enable patch the new boot while the actor still
    // has that reset's reboot event to handle (it would drop the fresh session as the old
    // boot's): the enable stops here instead, as one a reboot interrupted.
    ResetWatch reset(connection_, domain_.uuid);
    TraceBefore();
    if (reset.seen()) {
      return absl::UnavailableError(absl::StrCat(
          "domain ", domain_.name, " was reset or stopped while tprd measured its TPR accesses"));
    }
  }
  if (absl::Status s = EnsureAttached(); !s.ok()) return s;
  absl::StatusOr<engine::EnableRequest> settings = SessionSettings();
  if (!settings.ok()) return settings.status();
  engine::EnableRequest request = *settings;
  request.strategy = ResolveRequestedStrategy(options.strategy);
  request.dry_run = options.dry_run;
  if (options.discovery_budget <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("the discovery budget must be positive");
  }
  request.learning_window = std::min(options.discovery_budget, kMaxLearningWindow);
  absl::StatusOr<engine::EnableReport> report = manager_->Enable(request);
  if (!report.ok()) return report.status();
  if (!request.dry_run && report->changed) {
    enable_pauses_.Add(report->pause);
    // One line per enable, for operators and bench/ (the enable's pause is nowhere else).
    LogInfo(absl::StrCat(
        "domain ", domain_.name, ": enabled, pause_us=", absl::ToInt64Microseconds(report->pause),
        " stop_us=", absl::ToInt64Microseconds(report->stop),
        " applied_at_enable=", report->applied_at_enable, " armed=", report->armed,
        " candidates=", report->candidates, " learning_hits=", report->learning_hits, " discovery=",
        std::string(engine::DiscoveryName(request.discovery)), " ", report->pause_parts));
  }
  return manager_->Sites();
}

absl::StatusOr<RollbackResult> EngineDomainController::Rollback(
    const std::vector<uint32_t>& site_ids, bool force) {
  if (manager_ == nullptr) {
    if (!site_ids.empty()) {
      return absl::NotFoundError(absl::StrCat("no site ", site_ids.front(), " in domain ",
                                              domain_.name, ": it holds no patches of tprd's"));
    }
    return RollbackResult{};
  }
  absl::StatusOr<engine::RollbackReport> report = manager_->Rollback(site_ids, force);
  if (!report.ok()) return report.status();
  RollbackResult result;
  result.rolled_back = report->rolled_back;
  for (const auto& [id, reason] : report->refused) result.refused.push_back({id, reason});
  return result;
}

absl::StatusOr<std::vector<engine::ManagedSite>> EngineDomainController::ListSites() {
  if (manager_ == nullptr) return std::vector<engine::ManagedSite>{};
  return manager_->Sites();
}

absl::StatusOr<std::vector<engine::ManagedSite>> EngineDomainController::Scan() {
  if (absl::Status s = EnsureAttached(); !s.ok()) return s;
  return manager_->Scan();
}

ControllerStatus EngineDomainController::Status() {
  ControllerStatus status;
  status.holds_blob = blob_seen_;
  if (manager_ == nullptr) return status;
  const engine::ManagerStatus m = manager_->Status();
  status.holds_blob |= m.installed;
  for (const engine::ManagedSite& s : manager_->Sites()) {
    status.patched |= s.site.state == engine::SiteState::kApplied;
  }
  status.patched |= m.installed && m.requested_strategy != engine::Strategy::kExact;
  status.strategy = m.strategy;
  status.requested_strategy = m.requested_strategy;
  status.traps_handled = m.traps_handled;
  status.proving_window_open = m.proving_window_open;
  if (m.installed) status.discovery = std::string(engine::DiscoveryName(m.discovery));
  status.candidate_breakpoints = m.candidate_breakpoints;
  status.guard_mismatches = m.guard_mismatches;
  status.last_error = m.last_error;
  status.handler_accesses_without_apic = m.handler_accesses_without_apic;
  status.handler_accesses_to_apic = m.handler_accesses_to_apic;
  status.unpatched_accesses_seen = m.unpatched_accesses_seen;
  status.learning_hits = m.learning_hits;
  status.learning_run = m.learning_run;
  status.learning_run_guest_clock = m.learning_run_guest_clock;
  if (m.learning_run > absl::ZeroDuration()) {
    status.tpr_accesses_per_second_before =
        static_cast<double>(m.learning_hits) / absl::ToDoubleSeconds(m.learning_run);
  }
  if (before_trace_ && before_trace_->ok() && (*before_trace_)->window > absl::ZeroDuration()) {
    const backend::ApicTraceSample& sample = **before_trace_;
    status.before_trace_tpr_reads = sample.count.tpr_reads;
    status.before_trace_tpr_writes = sample.count.tpr_writes;
    status.before_trace_window = sample.window;
    status.tpr_accesses_per_second_before =
        static_cast<double>(sample.count.tpr_reads + sample.count.tpr_writes) /
        absl::ToDoubleSeconds(sample.window);
  } else if (before_trace_ && !before_trace_->ok()) {
    status.before_trace_error = std::string(before_trace_->status().message());
  }
  if (m.counters_read_at != absl::InfinitePast()) {
    rates_.Add({m.counters_read_at, m.handler_accesses_without_apic,
                m.handler_accesses_to_apic + m.unpatched_accesses_seen, m.traps_handled});
  }
  status.rates = rates_.rates();
  if (status.rates) status.tpr_accesses_per_second_after = status.rates->to_apic_per_second;
  status.enable_pauses = enable_pauses_;
  return status;
}

void EngineDomainController::IdleWait(absl::Duration timeout) {
  absl::MutexLock lock(&interrupt_mu_);
  interrupt_mu_.AwaitWithTimeout(absl::Condition(&interrupted_), timeout);
  interrupted_ = false;
}

absl::StatusOr<std::vector<ControllerEvent>> EngineDomainController::Poll(absl::Duration timeout) {
  std::vector<ControllerEvent> events;
  if (manager_ == nullptr) {
    IdleWait(timeout);
    return events;
  }
  const absl::Time deadline = absl::Now() + timeout;
  while (events.empty()) {
    {
      absl::MutexLock lock(&interrupt_mu_);
      if (interrupted_) {
        interrupted_ = false;
        break;
      }
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) break;
    absl::StatusOr<std::vector<engine::ManagerEvent>> got =
        manager_->Poll(std::min(left, options_.poll_slice));
    if (!got.ok()) {
      // Stopped by the host (libvirt paused it): nothing to handle until it runs again, unless
      // the pause is for a copy or a replacement of the guest's state.
      if (absl::IsFailedPrecondition(got.status())) {
        if (std::optional<ControllerEvent> change = HostChangesState()) {
          events.push_back(*std::move(change));
          break;
        }
        IdleWait(std::min(left, options_.poll_slice));
        continue;
      }
      return got.status();
    }
    for (const engine::ManagerEvent& e : *got) {
      if (e.kind == engine::ManagerEvent::Kind::kHostPaused) {
        if (std::optional<ControllerEvent> change = HostChangesState()) {
          events.push_back(*std::move(change));
          continue;
        }
      }
      ControllerEvent event;
      event.kind = ControllerEventKindOf(e.kind);
      event.message = e.message;
      if (e.site_id) {
        for (const engine::ManagedSite& s : manager_->Sites()) {
          if (s.site.id == *e.site_id) event.site = s;
        }
      }
      events.push_back(std::move(event));
    }
  }
  return events;
}

std::optional<ControllerEvent> EngineDomainController::HostChangesState() {
  absl::StatusOr<backend::LibvirtDomainInfo> info = connection_->GetDomain(domain_.uuid);
  if (!info.ok() || info->state != backend::LibvirtDomainState::kPaused) return std::nullopt;
  if (backend::PausedToReplaceState(info->reason)) {
    ControllerEvent event;
    event.kind = ControllerEvent::Kind::kHostReplacesState;
    event.message =
        "libvirt paused the domain to revert it to a snapshot: its memory is being replaced, so "
        "tprd lets go without writing into it, and looks for its blob when the domain runs again";
    return event;
  }
  if (!backend::PausedToCopyState(info->reason)) return std::nullopt;
  host_copies_state_ = true;  // the let-go that follows runs no vCPU (PatchManager::Detach)
  ControllerEvent event;
  event.kind = ControllerEvent::Kind::kHostCopiesState;
  event.message = absl::StrCat(
      "libvirt paused the domain to copy its state (save, migration, snapshot or dump; reason ",
      info->reason,
      "): tprd switches it to exact, removes its traps and lets go, so that the copy runs "
      "correctly without tprd");
  return event;
}

void EngineDomainController::Interrupt() {
  absl::MutexLock lock(&interrupt_mu_);
  interrupted_ = true;
}

absl::Status EngineDomainController::Detach(const std::string& reason) {
  (void)reason;
  absl::Status status = absl::OkStatus();
  if (manager_ != nullptr) {
    status = manager_->Detach({.host_copies_state = host_copies_state_});
  }
  if (vm_ != nullptr) {
    absl::Status detached = vm_->Detach();
    if (status.ok()) status = detached;
  }
  manager_.reset();
  vm_.reset();
  return status;
}

void EngineDomainController::Abandon(const std::string& reason) {
  (void)reason;
  // The guest's memory is gone: never write into it. Dropping the gdbstub session removes the
  // traps, which would otherwise fire at stale addresses in whatever runs next.
  manager_.reset();
  if (vm_ != nullptr) (void)vm_->Detach();
  vm_.reset();
}

}  // namespace tprd::daemon

#include "daemon/actor/domain_actor.h"

#include <atomic>
#include <chrono>
#include <future>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "daemon/log.h"

namespace tprd::daemon {
namespace {
// How long a lost session's guest is retried while libvirtd is away, and how often.
constexpr absl::Duration kRetakeWindow = absl::Seconds(120);
constexpr absl::Duration kRetakeInterval = absl::Milliseconds(500);
// The backend's answer while its libvirt connection is down and reconnecting
// (kvm-backend/libvirt_connection.cc, AcquireConnection): worth another try, unlike a gdbstub
// or QEMU that refused.
bool LibvirtReconnecting(const absl::Status& status) {
  return absl::IsUnavailable(status) &&
         absl::StrContains(status.message(), "not connected to libvirtd") &&
         absl::StrContains(status.message(), "(reconnecting)");
}

bool SessionLost(const absl::Status& status) {
  return absl::IsUnavailable(status) || absl::IsNotFound(status) || absl::IsAborted(status);
}

absl::Status CancelledBeforeStart() {
  return absl::CancelledError(
      "command cancelled before it started: the caller gave up or tprd is stopping");
}

}  // namespace

DomainActor::DomainActor(DomainInfo domain, Hypervisor* hypervisor, Journal* journal, EventBus* bus,
                         DomainActorOptions options)
    : hypervisor_(hypervisor), journal_(journal), bus_(bus), options_(options) {
  if (journal_ != nullptr) recorder_ = journal_->RecorderFor(domain);
  if (recorder_ == nullptr) recorder_ = std::make_unique<engine::NullPatchRecorder>();
  snapshot_.domain = std::move(domain);
  snapshot_.state = snapshot_.domain.running ? DomainState::kUnpatched : DomainState::kGone;
  thread_ = std::thread([this] { Run(); });
}

DomainActor::~DomainActor() {
  {
    absl::MutexLock lock(&mu_);
    phase_ = ActorPhase::kStopping;
    if (interruptible_ != nullptr) interruptible_->Interrupt();
  }
  thread_.join();
  // Queued commands were cancelled by Run(); their callers see CANCELLED through `run`.
}

DomainSnapshot DomainActor::Snapshot() {
  absl::MutexLock lock(&mu_);
  return snapshot_;
}

template <typename T>
absl::StatusOr<T> DomainActor::Call(ActorCommand kind, absl::Time deadline,
                                    std::function<absl::StatusOr<T>()> body) {
  {
    absl::MutexLock lock(&mu_);
    absl::Status admitted = Admit(kind);
    if (!admitted.ok()) return admitted;
  }
  auto reply = std::make_shared<std::promise<absl::StatusOr<T>>>();
  std::future<absl::StatusOr<T>> result = reply->get_future();
  Command command;
  command.kind = kind;
  command.cancelled = std::make_shared<std::atomic<bool>>(false);
  command.run = [this, reply, body = std::move(body),
                 claims = RuleFor(kind).claims_domain](const absl::Status& gate) {
    absl::StatusOr<T> result = gate.ok() ? body() : absl::StatusOr<T>(gate);
    // Not busy any more before the caller hears back, so its next command is accepted.
    if (claims) {
      absl::MutexLock lock(&mu_);
      snapshot_.busy_with.clear();
    }
    reply->set_value(std::move(result));
  };
  std::shared_ptr<std::atomic<bool>> cancelled = command.cancelled;
  Enqueue(std::move(command));

  const absl::Duration wait = deadline - absl::Now();
  const auto status =
      wait == absl::InfiniteDuration()
          ? (result.wait(), std::future_status::ready)
          : result.wait_for(absl::ToChronoNanoseconds(std::max(wait, absl::ZeroDuration())));
  if (status != std::future_status::ready) {
    cancelled->store(true);
    return absl::DeadlineExceededError(
        absl::StrCat("domain ", Snapshot().domain.name, " did not finish ", ActorCommandName(kind),
                     " before the deadline; it may still complete: check tprctl status"));
  }
  return result.get();
}

absl::Status DomainActor::Admit(ActorCommand kind) {
  if (!AcceptedIn(kind, phase_)) {
    return absl::UnavailableError(absl::StrCat("tprd is stopping and has let go of ",
                                               snapshot_.domain.name, "; retry after it restarts"));
  }
  const ActorCommandRule& rule = RuleFor(kind);
  if (!rule.claims_domain) return absl::OkStatus();
  if (!snapshot_.busy_with.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("domain ", snapshot_.domain.name, " is busy with ", snapshot_.busy_with,
                     "; wait for it to finish (tprctl status ", snapshot_.domain.name, ")"));
  }
  snapshot_.busy_with = rule.name;
  return absl::OkStatus();
}

absl::Status DomainActor::StartGate(const Command& command) {
  if (command.cancelled->load()) return CancelledBeforeStart();
  const DomainState state = Snapshot().state;
  if (!RunsIn(command.kind, state)) return NotLegalIn(command.kind, state);
  return absl::OkStatus();
}

void DomainActor::Enqueue(Command command) {
  {
    absl::MutexLock lock(&mu_);
    if (phase_ != ActorPhase::kStopping) {
      queue_.push_back(std::move(command));
      if (interruptible_ != nullptr) interruptible_->Interrupt();
      return;
    }
  }
  // The thread is gone or going: answer at once rather than leave the caller waiting.
  command.run(CancelledBeforeStart());
}

void DomainActor::Run() {
  while (true) {
    std::optional<Command> command;
    std::deque<Command> remaining;  // cancelled on stop
    bool poll = false;
    bool stop = false;
    bool retake = false;
    {
      absl::MutexLock lock(&mu_);
      const bool patched = snapshot_.state == DomainState::kPatched && controller_ != nullptr;
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return phase_ == ActorPhase::kStopping || !queue_.empty();
      };
      // While patched the controller must poll; otherwise sleep until a command arrives (or a
      // deferred retake is due).
      if (!patched) {
        if (retake_at_) {
          mu_.AwaitWithDeadline(absl::Condition(&ready), *retake_at_);
        } else {
          mu_.Await(absl::Condition(&ready));
        }
      }
      stop = phase_ == ActorPhase::kStopping;
      if (stop) {
        remaining.swap(queue_);
      } else if (!queue_.empty()) {
        command = std::move(queue_.front());
        queue_.pop_front();
      } else if (retake_at_ && absl::Now() >= *retake_at_) {
        retake = true;
      } else {
        poll = patched;
      }
    }
    if (retake) {
      RetakeGuest();
      continue;
    }
    if (stop) {
      for (Command& queued : remaining) queued.run(CancelledBeforeStart());
      return;
    }
    if (command) {
      command->run(StartGate(*command));
    } else if (poll) {
      PollOnce();
    }
  }
}

void DomainActor::RetakeGuest() {
  {
    absl::MutexLock lock(&mu_);
    retake_at_.reset();
  }
  if (controller_ != nullptr) return;  // an operator's command took it back meanwhile
  absl::Status again = EnsureController(/*adopt=*/true);
  if (!again.ok()) {
    // libvirtd restarting (the connection reconnects by itself): try again shortly.
    bool retry = false;
    if (LibvirtReconnecting(again)) {
      absl::MutexLock lock(&mu_);
      if (absl::Now() < retake_deadline_) {
        retake_at_ = absl::Now() + kRetakeInterval;
        retry = true;
      }
    }
    if (!retry) {
      LogWarning(absl::StrCat(Snapshot().domain.name, ": cannot take it back: ", again.message(),
                              "; tprctl enable retries"));
    }
  } else if (controller_->Status().patched) {
    RecordOperation("adopt", "took the guest back after a lost session");
    SetState(DomainState::kPatched, "adopted again after a lost session");
    RefreshSnapshot(/*with_sites=*/true);
  } else {
    DropController(/*detach=*/true, "nothing to adopt");
  }
}

void DomainActor::PollOnce() {
  auto events = controller_->Poll(options_.poll_interval);
  if (!events.ok()) {
    const std::string message = absl::StrCat("lost the session to ", Snapshot().domain.name, ": ",
                                             events.status().message(), "; taking the guest back");
    LogWarning(message);
    PublishError(message);
    DropController(/*detach=*/false, message);
    const bool lost = SessionLost(events.status());
    SetState(lost ? DomainState::kExactWhileAway : DomainState::kPatched, message);
    {
      absl::MutexLock lock(&mu_);
      snapshot_.last_error = message;
    }
    // A session that broke without a detach leaves tprd's traps armed in QEMU: the guest would
    // stop at the next one with nobody to resume it. Adopt at once (a fresh gdbstub clears the
    // old traps, handles a vCPU stopped at one and arms new ones). A gone domain just fails here.
    if (lost) {
      {
        absl::MutexLock lock(&mu_);
        retake_deadline_ = absl::Now() + kRetakeWindow;
      }
      RetakeGuest();
    }
    return;
  }
  bool sites_changed = false;
  for (const ControllerEvent& event : *events) {
    switch (event.kind) {
      case ControllerEvent::Kind::kSiteChanged:
        sites_changed = true;
        if (event.site) PublishSite(*event.site);
        break;
      case ControllerEvent::Kind::kStrategyChanged:
        RecordOperation("strategy", event.message);
        LogInfo(absl::StrCat(Snapshot().domain.name, ": ", event.message));
        break;
      case ControllerEvent::Kind::kNotice:
        RecordOperation("notice", event.message);
        LogInfo(absl::StrCat(Snapshot().domain.name, ": ", event.message));
        break;
      case ControllerEvent::Kind::kError:
        PublishError(event.message);
        {
          absl::MutexLock lock(&mu_);
          snapshot_.last_error = event.message;
        }
        break;
    }
  }
  RefreshSnapshot(sites_changed);
}

absl::Status DomainActor::EnsureController(bool adopt) {
  if (controller_ != nullptr) return absl::OkStatus();
  const DomainInfo domain = Snapshot().domain;
  auto controller = hypervisor_->OpenController(domain, recorder_.get());
  if (!controller.ok()) return controller.status();
  controller_ = *std::move(controller);
  {
    absl::MutexLock lock(&mu_);
    interruptible_ = controller_.get();
  }
  if (adopt) {
    auto adopted = controller_->Adopt(journal_ != nullptr ? journal_->LastStrategy(domain.uuid)
                                                          : std::nullopt);
    if (!adopted.ok()) {
      DropController(/*detach=*/false, "adopt failed");
      return adopted.status();
    }
  }
  return absl::OkStatus();
}

void DomainActor::DropController(bool detach, const std::string& reason) {
  if (controller_ == nullptr) return;
  if (detach) {
    absl::Status detached = controller_->Detach(reason);
    if (!detached.ok()) {
      LogWarning(absl::StrCat(Snapshot().domain.name, ": detach failed: ", detached.message()));
    }
  } else {
    controller_->Abandon(reason);
  }
  {
    absl::MutexLock lock(&mu_);
    interruptible_ = nullptr;
  }
  controller_.reset();
}

void DomainActor::SetState(DomainState state, const std::string& message) {
  DomainEvent event;
  {
    absl::MutexLock lock(&mu_);
    if (snapshot_.state == state) return;
    snapshot_.state = state;
    event.domain = snapshot_.domain;
  }
  event.kind = DomainEvent::Kind::kState;
  event.time = absl::Now();
  event.state = state;
  event.message = message;
  bus_->Publish(event);
  LogInfo(absl::StrCat(event.domain.name, ": ", DomainStateName(state), message.empty() ? "" : ": ",
                       message));
}

void DomainActor::RefreshSnapshot(bool with_sites) {
  ControllerStatus status;
  std::vector<SiteReport> sites;
  bool have_sites = false;
  if (controller_ != nullptr) {
    status = controller_->Status();
    if (with_sites) {
      auto listed = controller_->ListSites();
      if (listed.ok()) {
        sites = *std::move(listed);
        have_sites = true;
      }
    }
  } else {
    have_sites = with_sites;  // no session: no sites to show
  }
  absl::MutexLock lock(&mu_);
  if (controller_ != nullptr || snapshot_.state != DomainState::kExactWhileAway) {
    snapshot_.status = status;
  }
  if (have_sites) snapshot_.sites = std::move(sites);
}

void DomainActor::RecordOperation(const std::string& what, const std::string& message,
                                  std::optional<engine::Strategy> strategy) {
  if (journal_ == nullptr) return;
  const DomainInfo domain = Snapshot().domain;
  JournalEntry entry;
  entry.time = absl::Now();
  entry.domain_name = domain.name;
  entry.domain_uuid = domain.uuid;
  entry.event = what;
  entry.message = message;
  entry.strategy = strategy;
  absl::Status status = journal_->Append(entry);
  if (!status.ok()) LogWarning(std::string(status.message()));
}

void DomainActor::PublishSite(const SiteReport& site) {
  DomainEvent event;
  event.kind = DomainEvent::Kind::kSite;
  event.time = absl::Now();
  {
    absl::MutexLock lock(&mu_);
    event.domain = snapshot_.domain;
    event.state = snapshot_.state;
  }
  event.site = site;
  event.message =
      absl::StrCat("site ", site.site.id, " ", std::string(engine::SiteStateName(site.site.state)));
  bus_->Publish(event);
}

void DomainActor::PublishError(const std::string& message) {
  DomainEvent event;
  event.kind = DomainEvent::Kind::kError;
  event.time = absl::Now();
  {
    absl::MutexLock lock(&mu_);
    event.domain = snapshot_.domain;
    event.state = snapshot_.state;
  }
  event.message = message;
  bus_->Publish(event);
}

absl::Status DomainActor::GoneError() {
  const std::string name = Snapshot().domain.name;
  return absl::FailedPreconditionError(absl::StrCat(
      "domain ", name, " is not running; start it (virsh start ", name, "), then retry"));
}

absl::Status DomainActor::NotLegalIn(ActorCommand kind, DomainState state) {
  if (state == DomainState::kGone) return GoneError();
  // No command is refused in another state today; kActorCommandRules may come to refuse one.
  return absl::FailedPreconditionError(absl::StrCat("domain ", Snapshot().domain.name, " is ",
                                                    DomainStateName(state), "; ",
                                                    ActorCommandName(kind), " cannot run now"));
}

uint64_t DomainActor::RebootsSeen() {
  absl::MutexLock lock(&mu_);
  return reboots_seen_;
}

absl::Status DomainActor::StoppedDuring(const absl::Status& status, const std::string& what,
                                        uint64_t reboots_before) {
  // A session that broke because the domain went away or rebooted is the domain's state, not
  // tprd's or libvirt's being unreachable (UNAVAILABLE tells tprctl) nor an unknown name
  // (NOT_FOUND: a rebooting guest has no paging, so our addresses are "not mapped").
  const bool guest_access_failed = absl::IsUnavailable(status) || absl::IsNotFound(status) ||
                                   absl::IsInternal(status) || absl::IsDataLoss(status);
  const DomainInfo domain = Snapshot().domain;
  {
    absl::MutexLock lock(&mu_);
    const auto rebooted = [this, reboots_before]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return reboots_seen_ != reboots_before;
    };
    if (guest_access_failed) {
      mu_.AwaitWithTimeout(absl::Condition(&rebooted), options_.reboot_event_grace);
    }
    if (rebooted()) {
      return absl::FailedPreconditionError(
          absl::StrCat("domain ", domain.name, " rebooted during the ", what,
                       "; its patches went with its memory (", status.message(),
                       "); enable again once it has booted"));
    }
  }
  if (!absl::IsUnavailable(status) && !absl::IsNotFound(status)) return status;
  absl::StatusOr<DomainInfo> now = hypervisor_->LookupDomain(domain.uuid);
  if (now.ok() && now->running) return status;
  if (!now.ok() && !absl::IsNotFound(now.status())) return status;
  return absl::FailedPreconditionError(
      absl::StrCat("domain ", domain.name, " stopped during the ", what,
                   " (destroyed, shut down or crashed): ", status.message()));
}

absl::StatusOr<DomainActor::EnableResult> DomainActor::Enable(const EnableOptions& options,
                                                              absl::Time deadline) {
  return Call<EnableResult>(
      ActorCommand::kEnable, deadline, [this, options]() -> absl::StatusOr<EnableResult> {
        const DomainState before = Snapshot().state;
        const bool had_session = controller_ != nullptr;
        // A guest we are away from may already hold our blob: take it back before enabling.
        absl::Status opened = EnsureController(before == DomainState::kExactWhileAway);
        if (!opened.ok()) return opened;
        const uint64_t reboots_before = RebootsSeen();
        if (!options.dry_run) SetState(DomainState::kPatching, "enable started");
        RecordOperation("enable", options.dry_run ? "dry run" : "started");
        auto sites = controller_->Enable(options);
        if (!sites.ok()) sites = StoppedDuring(sites.status(), "enable", reboots_before);
        if (!sites.ok()) {
          const std::string message = std::string(sites.status().message());
          {
            absl::MutexLock lock(&mu_);
            snapshot_.last_error = message;
          }
          RecordOperation("enable", absl::StrCat("failed: ", message));
          PublishError(message);
          const bool patched = controller_->Status().patched;
          if (!patched && !had_session) DropController(/*detach=*/true, "enable failed");
          SetState(patched ? DomainState::kPatched : DomainState::kUnpatched, "enable failed");
          RefreshSnapshot(/*with_sites=*/true);
          return sites.status();
        }
        if (options.dry_run) {
          if (!had_session && !controller_->Status().patched) {
            DropController(/*detach=*/true, "dry run done");
          }
        } else {
          for (const SiteReport& site : *sites) PublishSite(site);
          RecordOperation("enable", absl::StrCat("done: ", sites->size(), " sites"),
                          controller_->Status().requested_strategy);
          SetState(controller_->Status().patched ? DomainState::kPatched : DomainState::kUnpatched,
                   absl::StrCat("enable done, ", sites->size(), " sites"));
          absl::MutexLock lock(&mu_);
          snapshot_.last_error.clear();
        }
        RefreshSnapshot(/*with_sites=*/true);
        EnableResult result;
        result.sites = *std::move(sites);
        result.after = Snapshot();
        return result;
      });
}

absl::StatusOr<DomainActor::RollbackOutcome> DomainActor::Rollback(
    const std::vector<uint32_t>& site_ids, bool force, absl::Time deadline) {
  return Call<RollbackOutcome>(
      ActorCommand::kRollback, deadline,
      [this, site_ids, force]() -> absl::StatusOr<RollbackOutcome> {
        const DomainSnapshot before = Snapshot();
        // Not a refusal for the table: with nothing patched, rolling everything back is an answer.
        if (before.state == DomainState::kUnpatched && controller_ == nullptr) {
          if (!site_ids.empty()) {
            return absl::NotFoundError(
                absl::StrCat("site ", site_ids.front(), ": domain ", before.domain.name,
                             " has no patched sites (tprctl sites ", before.domain.name, ")"));
          }
          RollbackOutcome nothing;
          nothing.after = before;
          return nothing;  // nothing patched: rolling back everything is already true
        }
        const uint64_t reboots_before = RebootsSeen();
        absl::Status opened = EnsureController(/*adopt=*/true);
        if (!opened.ok()) return opened;
        // An unknown id is the caller's mistake, not the domain's: refused as a whole before
        // anything is journaled, and not recorded as the domain's last error.
        if (!site_ids.empty()) {
          auto known = controller_->ListSites();
          if (!known.ok()) return known.status();
          std::set<uint32_t> ids;
          for (const SiteReport& site : *known) ids.insert(site.site.id);
          for (uint32_t id : site_ids) {
            if (ids.count(id) == 0) {
              return absl::NotFoundError(absl::StrCat("no site ", id, " in domain ",
                                                      before.domain.name, "; see tprctl sites ",
                                                      before.domain.name));
            }
          }
        }
        // Rolling back everything ends the operator's choice: a guest adopted later stays exact.
        RecordOperation("rollback", site_ids.empty() ? "all sites" : "selected sites",
                        site_ids.empty() ? std::optional(engine::Strategy::kExact) : std::nullopt);
        auto result = controller_->Rollback(site_ids, force);
        if (!result.ok()) result = StoppedDuring(result.status(), "rollback", reboots_before);
        if (!result.ok()) {
          absl::MutexLock lock(&mu_);
          snapshot_.last_error = std::string(result.status().message());
          return result.status();
        }
        RefreshSnapshot(/*with_sites=*/true);
        for (const SiteReport& site : Snapshot().sites) {
          for (uint32_t id : result->rolled_back) {
            if (site.site.id == id) PublishSite(site);
          }
        }
        RecordOperation("rollback",
                        absl::StrCat("done: ", result->rolled_back.size(), " restored, ",
                                     result->refused.size(), " refused"));
        if (!controller_->Status().patched) {
          // Nothing of ours is live any more: leave no traps behind.
          DropController(/*detach=*/true, "rolled back");
          SetState(DomainState::kUnpatched, "every site rolled back");
        }
        RollbackOutcome outcome;
        outcome.result = *std::move(result);
        outcome.after = Snapshot();
        return outcome;
      });
}

absl::StatusOr<std::vector<ScanCandidateReport>> DomainActor::Scan(absl::Time deadline) {
  return Call<std::vector<ScanCandidateReport>>(
      ActorCommand::kScan, deadline, [this]() -> absl::StatusOr<std::vector<ScanCandidateReport>> {
        const bool had_session = controller_ != nullptr;
        absl::Status opened = EnsureController(/*adopt=*/false);
        if (!opened.ok()) return opened;
        auto candidates = controller_->Scan();
        if (!had_session) DropController(/*detach=*/true, "scan done");
        return candidates;
      });
}

absl::StatusOr<bool> DomainActor::Adopt(absl::Time deadline) {
  // Not a claim on the domain (kActorCommandRules): an operator's enable or rollback arriving
  // meanwhile queues behind it. The actor runs one command at a time either way.
  return Call<bool>(ActorCommand::kAdopt, deadline, [this]() -> absl::StatusOr<bool> {
    absl::Status opened = EnsureController(/*adopt=*/true);
    if (!opened.ok()) return opened;
    const bool patched = controller_->Status().patched;
    if (patched) {
      RecordOperation("adopt", "took back a patched guest");
      SetState(DomainState::kPatched, "adopted");
      RefreshSnapshot(/*with_sites=*/true);
    } else {
      // E.g. a corrupt or forged blob, refused: say so where an operator looks.
      const std::string why = controller_->Status().last_error;
      if (!why.empty()) {
        const std::string message =
            absl::StrCat(Snapshot().domain.name, ": nothing adopted: ", why);
        LogWarning(message);
        absl::MutexLock lock(&mu_);
        snapshot_.last_error = message;
      }
      DropController(/*detach=*/true, "nothing to adopt");
    }
    return patched;
  });
}

absl::Status DomainActor::Detach(const std::string& reason, absl::Time deadline) {
  {
    // No new work after this: whatever is queued runs, then the detach.
    absl::MutexLock lock(&mu_);
    if (phase_ == ActorPhase::kOpen) phase_ = ActorPhase::kClosing;
  }
  auto done = Call<bool>(ActorCommand::kDetach, deadline, [this, reason]() -> absl::StatusOr<bool> {
    if (controller_ == nullptr) return false;
    const ControllerStatus status = controller_->Status();
    const bool patched = status.patched;
    // The guest runs on exact from here; the adopt that follows restores this.
    RecordOperation("detach", reason,
                    patched ? std::optional(status.requested_strategy) : std::nullopt);
    DropController(/*detach=*/true, reason);
    if (patched) SetState(DomainState::kExactWhileAway, reason);
    return patched;
  });
  return done.status();
}

void DomainActor::OnLifecycle(const LifecycleEvent& event) {
  {
    absl::MutexLock lock(&mu_);
    // A failing operation may be waiting for this (StoppedDuring), even while stopping.
    if (event.kind == LifecycleKind::kRebooted) ++reboots_seen_;
    // Refused only while stopping: nobody waits for the answer, and the state dies with the actor.
    if (!Admit(ActorCommand::kLifecycle).ok()) return;
  }
  Command command;
  command.kind = ActorCommand::kLifecycle;
  command.cancelled = std::make_shared<std::atomic<bool>>(false);
  command.run = [this, event](const absl::Status& gate) {
    if (gate.ok()) HandleLifecycle(event);
  };
  Enqueue(std::move(command));
}

void DomainActor::HandleLifecycle(const LifecycleEvent& event) {
  const std::string kind = LifecycleName(event.kind);
  DomainEvent published;
  published.kind = DomainEvent::Kind::kLifecycle;
  published.time = absl::Now();
  published.lifecycle = kind;
  {
    absl::MutexLock lock(&mu_);
    // Keep the name/UUID we know; the ID changes with every start.
    snapshot_.domain.id = event.domain.id;
    snapshot_.domain.running = event.domain.running;
    published.domain = snapshot_.domain;
    published.state = snapshot_.state;
  }
  published.message = absl::StrCat("domain ", published.domain.name, " ", kind);
  bus_->Publish(published);
  RecordOperation("lifecycle", kind);
  switch (event.kind) {
    case LifecycleKind::kStarted:
      if (Snapshot().state == DomainState::kGone) SetState(DomainState::kUnpatched, "started");
      break;
    case LifecycleKind::kRebooted:
      DropController(/*detach=*/false, "guest rebooted");
      {
        // A fresh guest: errors about the old one stay in the journal and the event stream.
        absl::MutexLock lock(&mu_);
        snapshot_.last_error.clear();
      }
      SetState(DomainState::kUnpatched, "guest rebooted: its patches went with its memory");
      break;
    case LifecycleKind::kShutdown:
    case LifecycleKind::kDestroyed:
    case LifecycleKind::kCrashed:
    case LifecycleKind::kMigrated:
      DropController(/*detach=*/false, kind);
      SetState(DomainState::kGone, absl::StrCat(kind, ": patches gone with the guest's memory"));
      break;
  }
  RefreshSnapshot(/*with_sites=*/true);
}

}  // namespace tprd::daemon

// DomainActor's commands: the typed call that queues each one (Call) and the operator's
// commands themselves (enable, rollback, scan, adopt, detach), each run on the actor's thread.
// The actor's loop, its session and its snapshot are in domain_actor.cc.
#include <atomic>
#include <chrono>
#include <future>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "daemon/actor/domain_actor.h"
#include "daemon/log.h"

namespace tprd::daemon {

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

absl::Status DomainActor::StoppedDuring(const absl::Status& status, const std::string& what,
                                        EndingsSeen before) {
  // A session that broke because the domain went away or rebooted is the domain's state, not
  // tprd's or libvirt's being unreachable (UNAVAILABLE tells tprctl) nor an unknown name
  // (NOT_FOUND: a rebooting guest has no paging, so our addresses are "not mapped").
  // ABORTED: the backend refused to write into a guest libvirt reported rebooted.
  const bool guest_access_failed = absl::IsUnavailable(status) || absl::IsNotFound(status) ||
                                   absl::IsInternal(status) || absl::IsDataLoss(status) ||
                                   absl::IsAborted(status);
  const DomainInfo domain = Snapshot().domain;
  bool stopped = false;
  {
    absl::MutexLock lock(&mu_);
    const auto rebooted = [this, before]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return endings_seen_.reboots != before.reboots;
    };
    // A destroy breaks the gdbstub (QEMU closes it as it exits) before libvirt reports the
    // domain shut off (ciQ 2026-12-07: "Broken pipe" with the domain still "running").
    const auto ended = [this, before]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return endings_seen_.reboots != before.reboots || endings_seen_.stops != before.stops;
    };
    if (guest_access_failed) {
      mu_.AwaitWithTimeout(absl::Condition(&ended), options_.reboot_event_grace);
    }
    if (rebooted()) {
      return absl::FailedPreconditionError(
          absl::StrCat("domain ", domain.name, " rebooted during the ", what,
                       "; its patches went with its memory (", status.message(),
                       "); enable again once it has booted"));
    }
    stopped = endings_seen_.stops != before.stops;
  }
  // FAILED_PRECONDITION too: an attach that finds the domain already being destroyed says
  // "is shutdown, not running or paused" before libvirt's stop event comes (race test, by hand).
  const bool may_have_stopped =
      absl::IsUnavailable(status) || absl::IsNotFound(status) || absl::IsFailedPrecondition(status);
  if (!stopped && !may_have_stopped) return status;
  absl::StatusOr<DomainInfo> now = hypervisor_->LookupDomain(domain.uuid);
  if (!stopped && now.ok() && now->running) return status;
  if (!stopped && !now.ok() && !absl::IsNotFound(now.status())) return status;
  return absl::FailedPreconditionError(
      absl::StrCat("domain ", domain.name, " stopped during the ", what,
                   " (destroyed, shut down, crashed, saved or migrated away): ", status.message()));
}

absl::StatusOr<DomainActor::EnableResult> DomainActor::Enable(const EnableOptions& options,
                                                              absl::Time deadline,
                                                              std::optional<Intent> record) {
  return Call<EnableResult>(ActorCommand::kEnable, deadline,
                            [this, options, record]() -> absl::StatusOr<EnableResult> {
                              // The operator's hand takes over from the actor's own attempts.
                              if (!options.dry_run) StopIntent("an operator's enable");
                              return RunEnable(options, record);
                            });
}

absl::StatusOr<DomainActor::EnableResult> DomainActor::RunEnable(
    const EnableOptions& options, const std::optional<Intent>& record) {
  const DomainState before = Snapshot().state;
  const bool had_session = controller_ != nullptr;
  const EndingsSeen endings_before = Endings();
  // A guest we are away from may already hold our blob: take it back before enabling. A domain
  // destroyed while its session opens fails there (ciF 2026-12-07: libvirt's raw "Domain not
  // found", exit 3): said as the stop it is.
  absl::Status opened = EnsureController(before == DomainState::kExactWhileAway);
  if (!opened.ok()) return StoppedDuring(opened, "enable", endings_before);
  if (!options.dry_run) SetState(DomainState::kPatching, "enable started");
  RecordOperation("enable", options.dry_run ? "dry run" : "started");
  auto sites = controller_->Enable(options);
  if (!sites.ok()) sites = StoppedDuring(sites.status(), "enable", endings_before);
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
    for (const engine::ManagedSite& site : *sites) PublishSite(site);
    RecordOperation("enable", absl::StrCat("done: ", sites->size(), " sites"),
                    controller_->Status().requested_strategy);
    SetState(controller_->Status().patched ? DomainState::kPatched : DomainState::kUnpatched,
             absl::StrCat("enable done, ", sites->size(), " sites"));
    {
      absl::MutexLock lock(&mu_);
      snapshot_.last_error.clear();
    }
    if (record) RecordIntent(*record);
  }
  RefreshSnapshot(/*with_sites=*/true);
  EnableResult result;
  result.sites = *std::move(sites);
  result.after = Snapshot();
  return result;
}

absl::StatusOr<DomainActor::RollbackOutcome> DomainActor::Rollback(
    const std::vector<uint32_t>& site_ids, bool force, absl::Time deadline) {
  return Call<RollbackOutcome>(ActorCommand::kRollback, deadline,
                               [this, site_ids, force]() -> absl::StatusOr<RollbackOutcome> {
                                 // Keeps the intent; ends the actor's own attempts to apply it.
                                 StopIntent("an operator's rollback");
                                 return RunRollback(site_ids, force);
                               });
}

absl::StatusOr<DomainActor::RollbackOutcome> DomainActor::RunRollback(
    const std::vector<uint32_t>& site_ids, bool force) {
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
  const EndingsSeen endings_before = Endings();
  absl::Status opened = EnsureController(/*adopt=*/true);
  if (!opened.ok()) return opened;
  // An unknown id is the caller's mistake, not the domain's: refused as a whole before
  // anything is journaled, and not recorded as the domain's last error.
  if (!site_ids.empty()) {
    auto known = controller_->ListSites();
    if (!known.ok()) return known.status();
    std::set<uint32_t> ids;
    for (const engine::ManagedSite& site : *known) ids.insert(site.site.id);
    for (uint32_t id : site_ids) {
      if (ids.count(id) == 0) {
        return absl::NotFoundError(absl::StrCat("no site ", id, " in domain ", before.domain.name,
                                                "; see tprctl sites ", before.domain.name));
      }
    }
  }
  // Rolling back everything ends the operator's choice: a guest adopted later stays exact.
  RecordOperation("rollback", site_ids.empty() ? "all sites" : "selected sites",
                  site_ids.empty() ? std::optional(engine::Strategy::kExact) : std::nullopt);
  auto result = controller_->Rollback(site_ids, force);
  if (!result.ok()) result = StoppedDuring(result.status(), "rollback", endings_before);
  if (!result.ok()) {
    absl::MutexLock lock(&mu_);
    snapshot_.last_error = std::string(result.status().message());
    return result.status();
  }
  RefreshSnapshot(/*with_sites=*/true);
  for (const engine::ManagedSite& site : Snapshot().sites) {
    for (uint32_t id : result->rolled_back) {
      if (site.site.id == id) PublishSite(site);
    }
  }
  RecordOperation("rollback", absl::StrCat("done: ", result->rolled_back.size(), " restored, ",
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
}

absl::StatusOr<DomainActor::DisableOutcome> DomainActor::Disable(bool force, absl::Time deadline) {
  return Call<DisableOutcome>(
      ActorCommand::kDisable, deadline, [this, force]() -> absl::StatusOr<DisableOutcome> {
        StopIntent("an operator's disable");
        // Forget first: a guest that reboots while (or after) its sites are rolled back must
        // not be patched again. Nothing else happens when libvirt cannot be told.
        DisableOutcome outcome;
        auto removed = ForgetIntent();
        if (!removed.ok()) return removed.status();
        outcome.intent_removed = *removed;
        if (Snapshot().state != DomainState::kGone) {
          auto rolled_back = RunRollback({}, force);
          if (!rolled_back.ok()) {
            return absl::Status(
                rolled_back.status().code(),
                absl::StrCat(rolled_back.status().message(),
                             outcome.intent_removed ? " (the intent is removed)" : ""));
          }
          outcome.result = std::move(rolled_back->result);
        }
        outcome.after = Snapshot();
        return outcome;
      });
}

absl::StatusOr<std::vector<engine::ManagedSite>> DomainActor::Scan(absl::Time deadline) {
  return Call<std::vector<engine::ManagedSite>>(
      ActorCommand::kScan, deadline, [this]() -> absl::StatusOr<std::vector<engine::ManagedSite>> {
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
    // No blob: the guest booted while tprd was away (a blob with nothing patched is an
    // operator's rollback, which keeps the guest as it is).
    if (!patched && !controller_->Status().holds_blob) ApplyIntent("tprd started");
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
    StopIntent(reason);
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

}  // namespace tprd::daemon

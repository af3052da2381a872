// DomainActor and the operator's intent (daemon/domain/intent.h): recording it at enable,
// forgetting it at disable, and applying it when the guest starts or reboots, or tprd starts.
//
// A guest that just started or rebooted has no kernel yet: its scan finds nothing, and an
// enable then would place the blob with nothing to patch (a later enable with the same options
// changes nothing). So each attempt scans first and enables only once the scan finds a site it
// can patch, retrying every intent_retry_interval for intent_retry_window. The intent is read
// again at every attempt: the metadata is the truth, and an operator may edit it meanwhile.
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/actor/domain_actor.h"
#include "daemon/log.h"

namespace tprd::daemon {

void DomainActor::RecordIntent(const Intent& intent) {
  const DomainInfo domain = Snapshot().domain;
  const std::string xml = IntentToXml(intent);
  absl::Status written = hypervisor_->WriteIntentXml(domain.uuid, xml);
  if (written.ok()) {
    RecordOperation("intent", absl::StrCat("recorded ", xml));
    return;
  }
  const std::string message = absl::StrCat(
      "patched, but the intent was not recorded in the domain's metadata (", written.message(),
      "): a reboot will not patch ", domain.name, " again; run tprctl enable again to record it");
  LogWarning(absl::StrCat(domain.name, ": ", message));
  RecordOperation("intent", message);
  PublishError(message);
  absl::MutexLock lock(&mu_);
  snapshot_.last_error = message;
}

absl::StatusOr<bool> DomainActor::ForgetIntent() {
  const DomainInfo domain = Snapshot().domain;
  auto present = hypervisor_->ReadIntentXml(domain.uuid);
  if (!present.ok()) return present.status();
  if (!present->has_value()) return false;
  absl::Status removed = hypervisor_->WriteIntentXml(domain.uuid, std::nullopt);
  if (!removed.ok()) return removed;
  RecordOperation("intent", "removed by disable");
  return true;
}

void DomainActor::ApplyIntent(const std::string& why) {
  absl::MutexLock lock(&mu_);
  if (phase_ != ActorPhase::kOpen) return;  // tprd is letting go of the domain
  intent_at_ = absl::Now();
  intent_deadline_ = absl::Now() + options_.intent_retry_window;
  intent_attempts_ = 0;
  snapshot_.intent_progress = absl::StrCat("checking for an intent (", why, ")");
}

void DomainActor::StopIntent(const std::string& why) {
  bool was_active = false;
  int attempts = 0;
  {
    absl::MutexLock lock(&mu_);
    was_active = intent_attempts_ > 0;  // attempts under way, not only scheduled
    attempts = intent_attempts_;
    intent_at_.reset();
    intent_attempts_ = 0;
    snapshot_.intent_progress.clear();
  }
  if (was_active) {
    RecordOperation("intent",
                    absl::StrCat("stopped applying it after ", attempts, " attempts: ", why));
  }
}

void DomainActor::RetryIntent(int attempt, const std::string& outcome) {
  const std::string name = Snapshot().domain.name;
  bool again = false;
  std::string message;
  {
    absl::MutexLock lock(&mu_);
    const absl::Time next = absl::Now() + options_.intent_retry_interval;
    again = phase_ == ActorPhase::kOpen && next <= intent_deadline_;
    if (again) {
      intent_at_ = next;
      message = absl::StrCat("attempt ", attempt, ": ", outcome, "; next in ",
                             absl::FormatDuration(options_.intent_retry_interval));
      snapshot_.intent_progress = message;
    } else {
      intent_at_.reset();
      intent_attempts_ = 0;
      snapshot_.intent_progress.clear();
      message = absl::StrCat("gave up applying the intent after ", attempt, " attempts over ",
                             absl::FormatDuration(options_.intent_retry_window), ": ", outcome,
                             "; run tprctl enable ", name, " once the guest has booted");
      snapshot_.last_error = message;
    }
  }
  RecordOperation("intent", message);
  if (!again) {
    LogWarning(absl::StrCat(name, ": ", message));
    PublishError(message);
  }
}

void DomainActor::TryIntent() {
  int attempt = 0;
  {
    absl::MutexLock lock(&mu_);
    intent_at_.reset();
    attempt = ++intent_attempts_;
  }
  const DomainSnapshot now = Snapshot();
  if (now.state == DomainState::kGone) return StopIntent("the domain is not running");
  if (controller_ != nullptr && controller_->Status().patched) {
    return StopIntent("the guest is patched already");
  }
  auto xml = hypervisor_->ReadIntentXml(now.domain.uuid);
  if (!xml.ok())
    return RetryIntent(attempt, absl::StrCat("cannot read it: ", xml.status().message()));
  if (!xml->has_value()) {
    // Most domains have none: nothing to say, unless it vanished while we were trying.
    if (attempt > 1) {
      RecordOperation("intent", "stopped applying it: the domain's metadata no longer holds one");
    }
    absl::MutexLock lock(&mu_);
    intent_at_.reset();
    intent_attempts_ = 0;
    snapshot_.intent_progress.clear();
    return;
  }
  absl::StatusOr<Intent> intent = ParseIntentXml(**xml);
  if (!intent.ok()) {
    // Refused for good: retrying would read the same text.
    const std::string message = std::string(intent.status().message());
    LogWarning(absl::StrCat(now.domain.name, ": ", message));
    RecordOperation("intent", message);
    PublishError(message);
    absl::MutexLock lock(&mu_);
    intent_at_.reset();
    intent_attempts_ = 0;
    snapshot_.intent_progress.clear();
    snapshot_.last_error = message;
    return;
  }
  const bool had_session = controller_ != nullptr;
  if (absl::Status opened = EnsureController(/*adopt=*/false); !opened.ok()) {
    return RetryIntent(attempt, absl::StrCat("cannot open the guest: ", opened.message()));
  }
  auto scanned = controller_->Scan();
  int patchable = 0;
  if (scanned.ok()) {
    for (const engine::ManagedSite& candidate : *scanned) {
      if (candidate.note.empty()) ++patchable;  // the note says why one cannot be patched
    }
  }
  if (!scanned.ok() || patchable == 0) {
    if (!had_session) DropController(/*detach=*/true, "intent: nothing to patch yet");
    return RetryIntent(attempt, scanned.ok() ? "nothing to patch yet (the guest is booting)"
                                             : absl::StrCat("the scan failed (the guest is "
                                                            "booting?): ",
                                                            scanned.status().message()));
  }
  EnableOptions options;
  options.strategy = intent->strategy;
  options.discovery_budget = intent->discovery_budget > absl::ZeroDuration()
                                 ? intent->discovery_budget
                                 : options_.default_discovery_budget;
  RecordOperation("intent", absl::StrCat("attempt ", attempt, ": ", patchable,
                                         " patchable sites found; enabling with strategy ",
                                         RequestedStrategyWord(intent->strategy)));
  // The intent is in the metadata already: nothing to record again.
  auto enabled = RunEnable(options, std::nullopt);
  if (!enabled.ok()) {
    return RetryIntent(attempt, absl::StrCat("enable failed: ", enabled.status().message()));
  }
  if (controller_ == nullptr || !controller_->Status().patched) {
    return RetryIntent(attempt, "the enable left nothing patched");
  }
  {
    absl::MutexLock lock(&mu_);
    intent_attempts_ = 0;
    snapshot_.intent_progress.clear();
  }
  const std::string message =
      absl::StrCat("applied the intent (strategy ", RequestedStrategyWord(intent->strategy),
                   ") at attempt ", attempt, ": ", enabled->sites.size(), " sites");
  RecordOperation("intent", message);
  LogInfo(absl::StrCat(now.domain.name, ": ", message));
}

}  // namespace tprd::daemon

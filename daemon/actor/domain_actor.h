// One actor per domain (shared/design/style.md, Firecracker): a thread that owns the domain's
// DomainController and is the only code that touches that guest. Callers (gRPC handlers,
// lifecycle callbacks, the stop path) send typed commands (ActorCommand) and wait, bounded by
// their deadline, for a typed result. Which command is legal when is one table
// (actor_command.h); the actor checks it before a command's body runs.
//
// The loop: take the next command if one is queued, else, while the domain is patched, let the
// controller handle guest stops for up to `poll_interval` (Poll); a new command interrupts Poll
// so commands never wait for a poll slice. Reads (status, sites) come from a snapshot the
// actor refreshes after every command and poll, so they answer at once even while the actor is
// busy with a long enable.
#ifndef TPRD_DAEMON_ACTOR_DOMAIN_ACTOR_H_
#define TPRD_DAEMON_ACTOR_DOMAIN_ACTOR_H_

#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/actor/actor_command.h"
#include "daemon/domain/domain_controller.h"
#include "daemon/domain/domain_state.h"
#include "daemon/domain/hypervisor.h"
#include "daemon/domain/intent.h"
#include "daemon/events/event_bus.h"
#include "daemon/journal/journal.h"

namespace tprd::daemon {

// What readers see without waiting for the actor.
struct DomainSnapshot {
  DomainInfo domain;
  DomainState state = DomainState::kUnpatched;
  ControllerStatus status;  // zero values while no session exists
  std::vector<engine::ManagedSite> sites;
  std::string busy_with;  // the command running or queued that changes the guest; empty if none
  std::string last_error;
  // The operator's intent as the domain's metadata holds it (the registry reads it for
  // ListDomains and Describe), or why it could not be read or was refused.
  std::optional<Intent> intent;
  std::string intent_error;
  // While the actor applies the intent after a start or reboot: what its last attempt found.
  std::string intent_progress;
};

struct DomainActorOptions {
  absl::Duration poll_interval = absl::Seconds(1);
  // How long an operation whose guest access failed waits for a reboot event to explain it:
  // a reset makes the next gdbstub read fail (no paging yet) a moment before libvirt's event
  // arrives.
  absl::Duration reboot_event_grace = absl::Seconds(2);
  // Applying the operator's intent after the guest starts or reboots (and at tprd's start): a
  // fresh guest has no kernel to patch yet, so the actor tries every `intent_retry_interval`
  // until the scan finds sites, for at most `intent_retry_window` (config intent_retry_s).
  absl::Duration intent_retry_interval = absl::Seconds(2);
  absl::Duration intent_retry_window = absl::Minutes(5);
  // The discovery budget of an intent that names none (the service's default).
  absl::Duration default_discovery_budget = absl::Seconds(10);
};

class DomainActor {
 public:
  // `journal` may be null (no journal kept). Hypervisor, journal and bus outlive the actor.
  DomainActor(DomainInfo domain, Hypervisor* hypervisor, Journal* journal, EventBus* bus,
              DomainActorOptions options);
  // Stops the thread after the running command; queued commands fail with CANCELLED. Does not
  // touch the guest: call Detach() first for an orderly stop.
  ~DomainActor();
  DomainActor(const DomainActor&) = delete;
  DomainActor& operator=(const DomainActor&) = delete;

  DomainSnapshot Snapshot();

  // Commands. Each fails with DEADLINE_EXCEEDED if the actor has not finished it by `deadline`
  // (a command not yet started is then skipped; one already running completes). Where
  // kActorCommandRules says a command is not legal, it is refused and its body does not run.
  struct EnableResult {
    std::vector<engine::ManagedSite> sites;
    DomainSnapshot after;
  };
  // `record`: the intent a successful enable records in the domain's metadata (none for a dry
  // run or a transient enable). Ends the actor's own attempts to apply the intent.
  absl::StatusOr<EnableResult> Enable(const EnableOptions& options, absl::Time deadline,
                                      std::optional<Intent> record = std::nullopt);
  struct RollbackOutcome {
    RollbackResult result;
    DomainSnapshot after;
  };
  absl::StatusOr<RollbackOutcome> Rollback(const std::vector<uint32_t>& site_ids, bool force,
                                           absl::Time deadline);
  // Forgets the operator's intent (removes it from the domain's metadata; nothing else changes
  // when that fails), then rolls back every site as Rollback does (nothing to roll back when the
  // domain is gone).
  struct DisableOutcome {
    RollbackResult result;
    bool intent_removed = false;  // an intent was recorded
    DomainSnapshot after;
  };
  absl::StatusOr<DisableOutcome> Disable(bool force, absl::Time deadline);
  absl::StatusOr<std::vector<engine::ManagedSite>> Scan(absl::Time deadline);
  // Looks for tprd's blob and takes a patched guest back; returns whether it holds patches. A
  // guest without the blob (booted while tprd was away) then gets the domain's intent, if it
  // has one, as after a start (ApplyIntent); one holding the blob unpatched was rolled back by
  // an operator and is left so.
  absl::StatusOr<bool> Adopt(absl::Time deadline);
  // Orderly stop: leave the guest correct without tprd (exact, no traps), drop the session.
  // The actor accepts no further commands (UNAVAILABLE) afterwards.
  absl::Status Detach(const std::string& reason, absl::Time deadline);
  // From the hypervisor's event thread: never blocks on the actor. With `apply_intent`, a start
  // or reboot makes the actor apply the domain's intent, if it has one.
  void OnLifecycle(const LifecycleEvent& event, bool apply_intent);

 private:
  struct Command {
    ActorCommand kind;
    // Answers the caller: runs the body when `gate` is OK, else answers `gate` without it.
    std::function<void(const absl::Status& gate)> run;
    std::shared_ptr<std::atomic<bool>> cancelled;  // the caller gave up waiting
  };

  template <typename T>
  absl::StatusOr<T> Call(ActorCommand kind, absl::Time deadline,
                         std::function<absl::StatusOr<T>()> body);
  // Whether `kind` may be queued in the actor's phase and, for a claim, while no other claim is
  // pending; claims the domain (busy_with) when it does.
  absl::Status Admit(ActorCommand kind) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Actor thread, for a dequeued command: whether its body may run now (not cancelled, legal in
  // the domain's current state).
  absl::Status StartGate(const Command& command);
  void Enqueue(Command command);
  void Run();
  void PollOnce();
  // Takes the guest back after a lost session (adopt on a fresh gdbstub). When libvirtd is
  // away (restarting), schedules another try instead of giving up: the guest's traps are still
  // armed in QEMU and would hold it stopped with nobody to resume it.
  void RetakeGuest();
  // RetakeGuest with a fresh retry window, unless a controller is already there.
  void TakeBackAfterLettingGo();
  // The strategy an adopt restores on a guest tprd let go on exact: this host's journal, else
  // the domain's intent (docs/design.md "A migration's end").
  std::optional<RequestedStrategy> AdoptHint(const std::string& uuid);
  // kHostCopiesState (detach to exact) or kHostReplacesState (a snapshot revert: drop the
  // session without a write), then wait for the domain to run again (RetakeGuest).
  void LetGoUntilHostResumes(const std::string& message, bool memory_replaced);

  // The bodies of Enable and Rollback, also run by the actor itself (ApplyIntent, Disable).
  absl::StatusOr<EnableResult> RunEnable(const EnableOptions& options,
                                         const std::optional<Intent>& record);
  absl::StatusOr<RollbackOutcome> RunRollback(const std::vector<uint32_t>& site_ids, bool force);
  // Applying the intent: (re)starts the attempts (`why`: "started", "rebooted", ...), makes one,
  // ends them (`why` journaled when attempts were under way).
  void ApplyIntent(const std::string& why);
  void TryIntent();
  void StopIntent(const std::string& why);
  // Schedules the next attempt, or gives up when the window is over.
  void RetryIntent(int attempt, const std::string& outcome);
  // Writes `intent` to the domain's metadata after a successful enable; a failure leaves the
  // guest patched and says so in last_error.
  void RecordIntent(const Intent& intent);
  // Removes the intent from the domain's metadata; returns whether one was there.
  absl::StatusOr<bool> ForgetIntent();

  // Actor thread only.
  absl::Status EnsureController(bool adopt);
  void DropController(bool detach, const std::string& reason);
  void SetState(DomainState state, const std::string& message);
  // kGone with `message`; when already gone, the message is still logged.
  void SayGone(const std::string& message);
  void RefreshSnapshot(bool with_sites);
  // `status` of an operation whose session broke: FAILED_PRECONDITION naming the domain when
  // it is no longer running, or rebooted or stopped since `before` (EndingsSeen()), else
  // unchanged.
  struct EndingsSeen {
    uint64_t reboots = 0;
    uint64_t stops = 0;
  };
  absl::Status StoppedDuring(const absl::Status& status, const std::string& what,
                             EndingsSeen before);
  EndingsSeen Endings();
  // After the session broke with `status`: whether the domain itself ended (a save, a destroy,
  // a migration away: QEMU closes the gdbstub as it exits, before libvirt's event): libvirt's
  // stop event since `before`, waited for up to reboot_event_grace.
  bool SessionEndedWithTheDomain(const absl::Status& status, EndingsSeen before);
  void RecordOperation(const std::string& what, const std::string& message,
                       std::optional<engine::Strategy> strategy = std::nullopt);
  void PublishSite(const engine::ManagedSite& site);
  void PublishError(const std::string& message);
  // `restore_resume`: a kReverted that is the first resume of a start from a saved state.
  void HandleLifecycle(const LifecycleEvent& event, bool apply_intent, bool restore_resume);
  absl::Status GoneError();
  absl::Status NotLegalIn(ActorCommand kind, DomainState state);

  Hypervisor* const hypervisor_;
  Journal* const journal_;
  EventBus* const bus_;
  const DomainActorOptions options_;

  // Owned by the actor thread.
  std::unique_ptr<engine::PatchRecorder> recorder_;
  std::unique_ptr<DomainController> controller_;

  absl::Mutex mu_;
  DomainSnapshot snapshot_ ABSL_GUARDED_BY(mu_);
  std::deque<Command> queue_ ABSL_GUARDED_BY(mu_);
  ActorPhase phase_ ABSL_GUARDED_BY(mu_) = ActorPhase::kOpen;
  // A RetakeGuest that libvirtd's absence deferred: when to try again, and until when.
  std::optional<absl::Time> retake_at_ ABSL_GUARDED_BY(mu_);
  absl::Time retake_deadline_ ABSL_GUARDED_BY(mu_);
  // Let go while libvirt copied the guest's state (kHostCopiesState): the next resume of the
  // domain takes it back. Other resumes (tprd's own stops, about a hundred a second) are
  // dropped before they reach the queue.
  bool awaiting_host_resume_ ABSL_GUARDED_BY(mu_) = false;
  // The last lifecycle event libvirt sent was a start from a saved state (set and read in
  // OnLifecycle, in libvirt's order, before any event is filtered).
  bool restored_not_resumed_ ABSL_GUARDED_BY(mu_) = false;
  // Looks for tprd's blob left after a start (kProbesAfterStart in domain_actor.cc).
  int probes_after_start_ ABSL_GUARDED_BY(mu_) = 0;
  // Applying the intent: when the next attempt is due, until when to try, attempts made.
  std::optional<absl::Time> intent_at_ ABSL_GUARDED_BY(mu_);
  absl::Time intent_deadline_ ABSL_GUARDED_BY(mu_);
  int intent_attempts_ ABSL_GUARDED_BY(mu_) = 0;
  // Reboot and stop (shutdown, destroy, crash) events received, counted on the
  // event thread before the actor handles them: a failing operation waits for them.
  EndingsSeen endings_seen_ ABSL_GUARDED_BY(mu_);
  // endings_seen_ when the actor last chose to poll (no lifecycle command queued then).
  EndingsSeen endings_at_poll_ ABSL_GUARDED_BY(mu_);
  // The controller to Interrupt() when a command arrives; set by the actor thread.
  DomainController* interruptible_ ABSL_GUARDED_BY(mu_) = nullptr;

  std::thread thread_;
};

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_ACTOR_DOMAIN_ACTOR_H_

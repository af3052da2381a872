// DomainActor's thread: its queue and the one place a command is admitted and gated, its
// polling of a patched guest, its session (EnsureController, DropController), its snapshot and
// events, and lifecycle events. The commands themselves are in domain_actor_commands.cc.
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
// After a start, how often the blob is looked for: libvirt reports a restore started before
// QEMU has loaded the guest's memory. A fresh boot costs that many reads of 128 KiB.
constexpr int kProbesAfterStart = 10;
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
    bool intent = false;
    {
      absl::MutexLock lock(&mu_);
      const bool patched = snapshot_.state == DomainState::kPatched && controller_ != nullptr;
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return phase_ == ActorPhase::kStopping || !queue_.empty();
      };
      // While patched the controller must poll; otherwise sleep until a command arrives (or a
      // deferred retake or intent attempt is due). Both are scheduled on this thread only.
      if (!patched) {
        std::optional<absl::Time> wake = retake_at_;
        if (intent_at_ && (!wake || *intent_at_ < *wake)) wake = intent_at_;
        if (wake) {
          mu_.AwaitWithDeadline(absl::Condition(&ready), *wake);
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
      } else if (intent_at_ && absl::Now() >= *intent_at_) {
        intent = true;
      } else {
        poll = patched;
        // No lifecycle command is queued at this moment: an ending counted after it is one the
        // poll's failure may be waiting for (SessionEndedWithTheDomain).
        endings_at_poll_ = endings_seen_;
      }
    }
    if (retake) {
      RetakeGuest();
      continue;
    }
    if (intent) {
      TryIntent();
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

void DomainActor::TakeBackAfterLettingGo() {
  if (controller_ != nullptr) return;
  {
    absl::MutexLock lock(&mu_);
    retake_deadline_ = absl::Now() + kRetakeWindow;
  }
  RetakeGuest();
}

void DomainActor::RetakeGuest() {
  {
    absl::MutexLock lock(&mu_);
    retake_at_.reset();
  }
  if (controller_ != nullptr) {
    // An operator's command took it back meanwhile: no probe of an earlier start is left.
    absl::MutexLock lock(&mu_);
    probes_after_start_ = 0;
    return;
  }
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
    RecordOperation("adopt", "took the guest back (a lost session, a restore, a resume)");
    SetState(DomainState::kPatched, "adopted again");
    RefreshSnapshot(/*with_sites=*/true);
  } else {
    DropController(/*detach=*/true, "nothing to adopt");
    bool final_probe = false;
    {
      absl::MutexLock lock(&mu_);
      if (probes_after_start_ > 0) {
        --probes_after_start_;
        retake_at_ = absl::Now() + kRetakeInterval;
      } else {
        final_probe = true;
      }
    }
    // No blob in the guest's memory (a snapshot from before the enable, a restore of a guest
    // saved unpatched): that is what the guest runs, whatever tprd said before.
    if (final_probe && Snapshot().state == DomainState::kExactWhileAway) {
      SetState(DomainState::kUnpatched, "no tprd blob in the guest's memory after it ran again");
      RefreshSnapshot(/*with_sites=*/true);
    }
  }
}

void DomainActor::PollOnce() {
  EndingsSeen endings_before;
  {
    absl::MutexLock lock(&mu_);
    endings_before = endings_at_poll_;
  }
  auto events = controller_->Poll(options_.poll_interval);
  if (!events.ok() && SessionEndedWithTheDomain(events.status(), endings_before)) {
    // Not a lost session: there is no guest to take back, and the domain's lifecycle event
    // (queued or due) says how it ended; a save's restore brings tprd's blob back.
    LogInfo(absl::StrCat(Snapshot().domain.name, ": the gdbstub session ended with the domain (",
                         events.status().message(), ")"));
    DropController(/*detach=*/false, "the domain stopped");
    SetState(DomainState::kGone, "the domain stopped; libvirt's event says how");
    return;
  }
  if (!events.ok()) {
    const std::string message = absl::StrCat("lost the session to ", Snapshot().domain.name, ": ",
                                             events.status().message(), "; taking the guest back");
    LogWarning(message);
    PublishError(message);
    // libvirtd restarting broke the poll, not the gdbstub: leave the guest correct without tprd
    // (exact, traps removed) before letting it run. An abandoned session resumes it with its mmio
    // word and without the write watchpoint until the take-back, which waits for libvirtd
    // (ciD 2026-12-07: stale shadows read on both CPUs). A broken gdbstub can only be abandoned.
    DropController(/*detach=*/LibvirtReconnecting(events.status()), message);
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
      case ControllerEvent::Kind::kHostCopiesState:
      case ControllerEvent::Kind::kHostReplacesState:
        LetGoUntilHostResumes(event.message,
                              event.kind == ControllerEvent::Kind::kHostReplacesState);
        return;
    }
  }
  RefreshSnapshot(sites_changed);
}

void DomainActor::LetGoUntilHostResumes(const std::string& message, bool memory_replaced) {
  // A copy (a save file, a migration target, a snapshot) must run correctly without tprd:
  // exact, no traps, and QEMU not left in the gdbstub's debug run state (QemuGuestVm::Detach).
  // A replacement (a snapshot revert) gets no write at all: whatever tprd wrote now could land
  // in the snapshot's memory (a strategy word where there is no blob), so it is dropped as at a
  // reboot. Either way the guest does not run until libvirt resumes it, and that resume takes
  // it back from what its memory then holds.
  RecordOperation("let go", message);
  LogInfo(absl::StrCat(Snapshot().domain.name, ": ", message));
  DropController(/*detach=*/!memory_replaced, message);
  {
    absl::MutexLock lock(&mu_);
    awaiting_host_resume_ = true;
    // Only that resume takes the guest back: a probe left from an earlier start must not adopt
    // it again while libvirt still copies or loads its memory.
    probes_after_start_ = 0;
    retake_at_.reset();
    if (memory_replaced) snapshot_.last_error.clear();  // about memory that is no longer there
  }
  SetState(memory_replaced ? DomainState::kUnpatched : DomainState::kExactWhileAway, message);
  // libvirt may have resumed the domain while the let-go ran (a snapshot's copy of a small guest
  // takes milliseconds, the let-go longer): its resume event came before the mark above and was
  // filtered as one of tprd's own. What libvirt says now decides. Still held paused: its resume
  // event is yet to come. Running, or paused only by a stop of QEMU's own, which nobody would
  // resume: take it back now (measured 2026-12-07: 1 of 3 snapshots of a patched guest in a row
  // left it on exact, let go for good).
  absl::StatusOr<DomainInfo> now = hypervisor_->LookupDomain(Snapshot().domain.uuid);
  if (now.ok() && now->running && !now->held_paused) {
    {
      absl::MutexLock lock(&mu_);
      awaiting_host_resume_ = false;
    }
    LogInfo(absl::StrCat(Snapshot().domain.name,
                         ": libvirt let the domain run again during the let-go: taking it back"));
    TakeBackAfterLettingGo();
  }
  RefreshSnapshot(/*with_sites=*/true);
}

std::optional<RequestedStrategy> DomainActor::AdoptHint(const std::string& uuid) {
  if (journal_ != nullptr) {
    if (std::optional<engine::Strategy> last = journal_->LastStrategy(uuid)) {
      switch (*last) {
        case engine::Strategy::kMmio:
          return RequestedStrategy::kMmio;
        case engine::Strategy::kCr8:
          return RequestedStrategy::kCr8;
        case engine::Strategy::kExact:
          return RequestedStrategy::kExact;
      }
    }
  }
  // Nothing in this host's journal (a guest that arrived by migration after the source's tprd
  // let it go on exact; a new state directory): the operator's intent, which travels with the
  // domain.
  absl::StatusOr<std::optional<std::string>> xml = hypervisor_->ReadIntentXml(uuid);
  if (!xml.ok() || !xml->has_value()) return std::nullopt;
  absl::StatusOr<Intent> intent = ParseIntentXml(**xml);
  if (!intent.ok()) return std::nullopt;
  return intent->strategy;
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
    auto adopted = controller_->Adopt(AdoptHint(domain.uuid));
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
    if (absl::IsFailedPrecondition(detached)) {
      LogInfo(absl::StrCat(Snapshot().domain.name, ": detached: ", detached.message()));
    } else if (absl::IsDataLoss(detached)) {
      LogWarning(absl::StrCat(Snapshot().domain.name, ": detached, ", detached.message()));
    } else if (!detached.ok()) {
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

void DomainActor::SayGone(const std::string& message) {
  bool already = false;
  {
    absl::MutexLock lock(&mu_);
    already = snapshot_.state == DomainState::kGone;
  }
  // The session's end may have said "gone" before libvirt's event said how: say how too.
  if (already) {
    LogInfo(absl::StrCat(Snapshot().domain.name, ": ", DomainStateName(DomainState::kGone), ": ",
                         message));
    return;
  }
  SetState(DomainState::kGone, message);
}

void DomainActor::RefreshSnapshot(bool with_sites) {
  ControllerStatus status;
  std::vector<engine::ManagedSite> sites;
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

void DomainActor::PublishSite(const engine::ManagedSite& site) {
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

DomainActor::EndingsSeen DomainActor::Endings() {
  absl::MutexLock lock(&mu_);
  return endings_seen_;
}

bool DomainActor::SessionEndedWithTheDomain(const absl::Status& status, EndingsSeen before) {
  // Only libvirt's stop event decides: a session dropped on a guest that still runs would leave
  // it without tprd's traps (mmio's write watchpoint) and without a take-back, and a lookup is
  // not authoritative (a libvirtd that restarts or reconnects may answer anything for a moment).
  // libvirtd reconnecting is not an ending.
  if (!SessionLost(status) || LibvirtReconnecting(status)) return false;
  absl::MutexLock lock(&mu_);
  const auto stopped = [this, before]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return endings_seen_.stops != before.stops;
  };
  mu_.AwaitWithTimeout(absl::Condition(&stopped), options_.reboot_event_grace);
  return stopped();
}

void DomainActor::OnLifecycle(const LifecycleEvent& event, bool apply_intent) {
  bool restore_resume = false;
  {
    absl::MutexLock lock(&mu_);
    // A failing operation may be waiting for this (StoppedDuring), even while stopping.
    if (event.kind == LifecycleKind::kRebooted) ++endings_seen_.reboots;
    if (event.kind == LifecycleKind::kShutdown || event.kind == LifecycleKind::kDestroyed ||
        event.kind == LifecycleKind::kCrashed || event.kind == LifecycleKind::kSaved ||
        event.kind == LifecycleKind::kMigrated) {
      ++endings_seen_.stops;
    }
    // Marked here, in libvirt's order, before any event is filtered out: a restore's start
    // makes the next event, if it is a FROM_SNAPSHOT resume, that start's own resume (below).
    if (event.kind == LifecycleKind::kReverted) restore_resume = restored_not_resumed_;
    restored_not_resumed_ = event.kind == LifecycleKind::kStarted && event.from_saved_state;
    if (event.kind == LifecycleKind::kResumed && !awaiting_host_resume_) return;
    // Refused only while stopping: nobody waits for the answer, and the state dies with the actor.
    if (!Admit(ActorCommand::kLifecycle).ok()) return;
  }
  Command command;
  command.kind = ActorCommand::kLifecycle;
  command.cancelled = std::make_shared<std::atomic<bool>>(false);
  command.run = [this, event, apply_intent, restore_resume](const absl::Status& gate) {
    if (gate.ok()) HandleLifecycle(event, apply_intent, restore_resume);
  };
  Enqueue(std::move(command));
}

void DomainActor::HandleLifecycle(const LifecycleEvent& event, bool apply_intent,
                                  bool restore_resume) {
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
  if (event.kind != LifecycleKind::kResumed) {
    absl::MutexLock lock(&mu_);
    awaiting_host_resume_ = false;
    probes_after_start_ = 0;
  }
  // A restore's start is followed by libvirt's "resumed from snapshot" for its first resume
  // (libvirt maps the RESTORED running reason to that event detail): nothing was loaded after
  // the start, and the session the start made is true (ciZ, 2026-12-07: dropping it there left
  // the guest on mmio without its write watchpoint, and an unpatched writer staled a shadow).
  if (restore_resume) {
    TakeBackAfterLettingGo();  // a start that found it still paused may not have taken it yet
    RefreshSnapshot(/*with_sites=*/true);
    return;
  }
  switch (event.kind) {
    case LifecycleKind::kReverted:
      // The memory is a snapshot's: whatever the session knew is untrue, and nothing may be
      // written from it (the pause before the load may have gone unseen). Dropped as at a
      // reboot; then what the snapshot holds is taken as a start's (below).
      DropController(/*detach=*/false, "reverted to a snapshot");
      {
        absl::MutexLock lock(&mu_);
        snapshot_.last_error.clear();
      }
      SetState(DomainState::kUnpatched, "reverted to a snapshot: looking for tprd's blob in it");
      [[fallthrough]];
    case LifecycleKind::kArrived:
      // A migration ended with the domain running here: on the target its memory (and tprd's
      // blob, if it was patched) just arrived; on a source whose migration failed, a session
      // tprd still holds stays (TakeBackAfterLettingGo does nothing then). As a start.
    case LifecycleKind::kStarted:
      if (Snapshot().state == DomainState::kGone) SetState(DomainState::kUnpatched, "started");
      // A restore, a managedsave start or a snapshot revert brings tprd's blob back with the
      // guest: adopted as at daemon start (nothing is attached when no blob is there). libvirt
      // may still hold it paused (starting up): then its first resume tries again. A fresh boot
      // has no blob: the operator's intent applies to it.
      {
        absl::MutexLock lock(&mu_);
        probes_after_start_ = kProbesAfterStart;
      }
      TakeBackAfterLettingGo();
      if (controller_ == nullptr) {
        absl::MutexLock lock(&mu_);
        awaiting_host_resume_ = true;
      }
      if (apply_intent && controller_ == nullptr) ApplyIntent("started");
      break;
    case LifecycleKind::kResumed: {
      bool waiting = false;
      {
        absl::MutexLock lock(&mu_);
        waiting = awaiting_host_resume_;
        awaiting_host_resume_ = false;
      }
      if (waiting) TakeBackAfterLettingGo();
      // Let go and back with no blob (a snapshot from before the enable): the operator's intent
      // applies to it as to a fresh boot. Not while a take-back is still to be retried.
      bool retake_pending = false;
      {
        absl::MutexLock lock(&mu_);
        retake_pending = retake_at_.has_value();
      }
      if (waiting && apply_intent && controller_ == nullptr && !retake_pending) {
        ApplyIntent("resumed without tprd's blob in its memory");
      }
      break;
    }
    case LifecycleKind::kRebooted:
      DropController(/*detach=*/false, "guest rebooted");
      {
        // A fresh guest: errors about the old one stay in the journal and the event stream.
        absl::MutexLock lock(&mu_);
        snapshot_.last_error.clear();
      }
      SetState(DomainState::kUnpatched, "guest rebooted: its patches went with its memory");
      if (apply_intent) ApplyIntent("rebooted");
      break;
    case LifecycleKind::kSaved:
      // Its memory, tprd's blob and journal-described sites in it, went into the image; the
      // restore's start (or managedsave's) takes it back as at a daemon start.
      StopIntent("the domain saved");
      DropController(/*detach=*/false, kind);
      SayGone(
          "saved: the guest's memory (tprd's blob in it) is in the saved image; tprd takes it "
          "back when it is restored");
      break;
    case LifecycleKind::kShutdown:
    case LifecycleKind::kDestroyed:
    case LifecycleKind::kCrashed:
    case LifecycleKind::kMigrated:
      StopIntent(absl::StrCat("the domain ", kind));
      DropController(/*detach=*/false, kind);
      SayGone(absl::StrCat(kind, ": patches gone with the guest's memory"));
      break;
  }
  RefreshSnapshot(/*with_sites=*/true);
}

}  // namespace tprd::daemon

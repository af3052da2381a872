// The actors and the registry against FakeHypervisor / FakeDomainController, without gRPC.
#include "daemon/actor/domain_actor.h"

#include <iterator>
#include <string>
#include <vector>

#include "daemon/actor/actor_command.h"
#include "daemon/actor/domain_registry.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/daemon/registry_fixture.h"
#include "tests/daemon/test_dir.h"
#include "tests/fakes/fake_domain_controller.h"

namespace tprd::daemon {
namespace {

using fakes::FakeGuest;
using fakes::FakeHypervisor;
using ::testing::HasSubstr;

absl::Time Soon() { return absl::Now() + absl::Seconds(10); }

class DomainActorTest : public RegistryFixture {
 protected:
  DomainActorTest() {
    DomainActorOptions options;
    options.poll_interval = absl::Milliseconds(50);
    options.reboot_event_grace = absl::Milliseconds(300);
    MakeRegistry(options);
  }

  // Waits (bounded) for the actor's snapshot to satisfy `condition`.
  bool WaitForSnapshot(DomainActor& actor,
                       const std::function<bool(const DomainSnapshot&)>& condition) {
    const absl::Time deadline = absl::Now() + absl::Seconds(10);
    while (absl::Now() < deadline) {
      if (condition(actor.Snapshot())) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }
  bool WaitForState(DomainActor& actor, DomainState state) {
    return WaitForSnapshot(actor, [state](const DomainSnapshot& s) { return s.state == state; });
  }
  // The poll reports that libvirt paused the domain to copy its state, or to replace it.
  // libvirt pauses winxp-01 to copy or replace its state; its next running event ends that.
  void PushHostChange(ControllerEvent::Kind kind) {
    hypervisor_.SetHeldPaused("winxp-01", true);
    ControllerEvent change;
    change.kind = kind;
    change.message = "libvirt paused the domain";
    guest_->PushPollEvent(change);
  }
  // The actor's next poll fails with `error` (the session broke).
  void FailNextPoll(absl::Status error) {
    std::lock_guard<std::mutex> lock(guest_->mu);
    guest_->poll_error = std::move(error);
    guest_->changed.notify_all();
  }
  // The guest's memory holds no blob (a snapshot from before the enable).
  void ForgetBlob() {
    std::lock_guard<std::mutex> lock(guest_->mu);
    guest_->blob_present = false;
  }

  // What each command that works on the guest answers, in table order.
  static std::vector<absl::Status> EveryGuestCommand(DomainActor& actor) {
    return {actor.Enable(EnableOptions{}, Soon()).status(),
            actor.Rollback({}, false, Soon()).status(), actor.Scan(Soon()).status(),
            actor.Adopt(Soon()).status()};
  }
};

TEST_F(DomainActorTest, EnablePatchesJournalsAndKeepsPolling) {
  auto actor = Actor("winxp-01");
  auto result = actor->Enable(EnableOptions{}, Soon());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->sites.size(), 3u);
  EXPECT_EQ(result->after.state, DomainState::kPatched);
  EXPECT_EQ(result->after.status.strategy, engine::Strategy::kMmio);  // no cr8legacy
  EXPECT_EQ(result->after.sites.size(), 3u);
  EXPECT_TRUE(guest_->WaitUntil([&] { return guest_->polls > 0; }))
      << "a patched domain's actor must poll its controller";

  auto entries = Journal::ReadAll(journal_->path(), nullptr);
  ASSERT_TRUE(entries.ok());
  int pending = 0, applied = 0;
  for (const JournalEntry& entry : *entries) {
    if (!entry.site) continue;
    pending += entry.site->state == engine::SiteState::kPending;
    applied += entry.site->state == engine::SiteState::kApplied;
  }
  EXPECT_EQ(pending, 3) << "every site is journaled before its guest write";
  EXPECT_EQ(applied, 3);
}

TEST_F(DomainActorTest, DryRunWritesNothingAndLeavesNoSession) {
  auto actor = Actor("winxp-01");
  EnableOptions options;
  options.dry_run = true;
  auto result = actor->Enable(options, Soon());
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->sites.size(), 3u);
  EXPECT_EQ(result->after.state, DomainState::kUnpatched);
  std::lock_guard<std::mutex> lock(guest_->mu);
  EXPECT_FALSE(guest_->blob_present);
  EXPECT_EQ(guest_->detaches, 1);
}

TEST_F(DomainActorTest, BusyActorAnswersReadsAndRefusesASecondEnable) {
  auto actor = Actor("winxp-01");
  guest_->hold_enable = true;
  std::thread first([&] { EXPECT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok()); });
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->enable_entered; }));

  const DomainSnapshot during = actor->Snapshot();  // must not wait for the enable
  EXPECT_EQ(during.state, DomainState::kPatching);
  EXPECT_EQ(during.busy_with, "enable");
  auto second = actor->Enable(EnableOptions{}, Soon());
  EXPECT_TRUE(absl::IsFailedPrecondition(second.status())) << second.status();
  EXPECT_THAT(std::string(second.status().message()), HasSubstr("busy with enable"));

  guest_->ReleaseEnable();
  first.join();
  EXPECT_EQ(actor->Snapshot().state, DomainState::kPatched);
  EXPECT_TRUE(actor->Snapshot().busy_with.empty());
}

// The session breaks because the domain was destroyed mid-enable: that is the domain's state
// (FAILED_PRECONDITION, tprctl exit 1), not tprd or libvirt being unreachable (UNAVAILABLE).
TEST_F(DomainActorTest, EnableBrokenByTheDomainStoppingSaysSoInsteadOfUnavailable) {
  auto actor = Actor("winxp-01");
  guest_->hold_enable = true;
  guest_->enable_error = absl::UnavailableError("gdbstub session lost: broken pipe");
  absl::Status status;
  std::thread enable([&] { status = actor->Enable(EnableOptions{}, Soon()).status(); });
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->enable_entered; }));
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kDestroyed);
  guest_->ReleaseEnable();
  enable.join();
  EXPECT_TRUE(absl::IsFailedPrecondition(status)) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("winxp-01 stopped during the enable"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("broken pipe"));
}

// The gdbstub breaks as QEMU exits, before libvirt reports the domain shut off (ciQ,
// 2026-12-07): the lookup still says running, and the destroy event decides.
TEST_F(DomainActorTest, EnableBrokenByADestroyLibvirtHasNotReportedYetSaysStopped) {
  auto actor = Actor("winxp-01");
  guest_->hold_enable = true;
  guest_->enable_error = absl::UnavailableError("gdbstub session lost: Broken pipe");
  absl::Status status;
  std::thread enable([&] { status = actor->Enable(EnableOptions{}, Soon()).status(); });
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->enable_entered; }));
  hypervisor_.DeliverLifecycleOnly("winxp-01", LifecycleKind::kDestroyed);
  ASSERT_TRUE(hypervisor_.LookupDomain("winxp-01")->running);
  guest_->ReleaseEnable();
  enable.join();
  EXPECT_TRUE(absl::IsFailedPrecondition(status)) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("winxp-01 stopped during the enable"));
}

// A reset mid-enable: the guest has no paging for a moment, so the next read fails as "not
// mapped" (NOT_FOUND, which tprctl would show as an unknown domain). The reboot explains it.
TEST_F(DomainActorTest, EnableBrokenByARebootSaysSoAndTheRebootStillClearsTheState) {
  auto actor = Actor("winxp-01");
  guest_->hold_enable = true;
  guest_->enable_error = absl::NotFoundError("gdbstub refused m800e8000 E14 (address not mapped)");
  absl::Status status;
  std::thread enable([&] { status = actor->Enable(EnableOptions{}, Soon()).status(); });
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->enable_entered; }));
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kRebooted);
  guest_->ReleaseEnable();
  enable.join();
  EXPECT_TRUE(absl::IsFailedPrecondition(status)) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("winxp-01 rebooted during the enable"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("E14"));
  // The reboot event, handled after the enable, leaves a fresh guest: no error about the old.
  ASSERT_TRUE(WaitForSnapshot(*actor, [](const DomainSnapshot& s) {
    return s.state == DomainState::kUnpatched && s.last_error.empty();
  })) << actor->Snapshot().last_error;
}

TEST_F(DomainActorTest, EnableFailingWithoutARebootKeepsItsOwnError) {
  auto actor = Actor("winxp-01");
  guest_->enable_error = absl::NotFoundError("gdbstub refused m800e8000 E14 (address not mapped)");
  absl::Status status = actor->Enable(EnableOptions{}, Soon()).status();
  EXPECT_TRUE(absl::IsNotFound(status)) << status;
  EXPECT_THAT(std::string(status.message()), ::testing::Not(HasSubstr("rebooted")));
}

TEST_F(DomainActorTest, EnableBrokenWhileTheDomainRunsKeepsItsCode) {
  auto actor = Actor("winxp-01");
  guest_->enable_error = absl::UnavailableError("cannot reach libvirt");
  EXPECT_TRUE(absl::IsUnavailable(actor->Enable(EnableOptions{}, Soon()).status()));
}

TEST_F(DomainActorTest, EnableDuringTheStartUpAdoptQueuesBehindItInsteadOfBeingRefused) {
  auto actor = Actor("winxp-01");
  guest_->hold_adopt = true;
  std::thread adopt([&] { EXPECT_TRUE(actor->Adopt(Soon()).ok()); });
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->adopt_entered; }));
  EXPECT_TRUE(actor->Snapshot().busy_with.empty()) << "adopt is tprd's own, not a claim";

  absl::StatusOr<DomainActor::EnableResult> enabled;
  std::thread enable([&] { enabled = actor->Enable(EnableOptions{}, Soon()); });
  // busy_with is set when the enable is accepted and queued, before it can run.
  ASSERT_TRUE(
      WaitForSnapshot(*actor, [](const DomainSnapshot& s) { return s.busy_with == "enable"; }));
  guest_->ReleaseAdopt();
  adopt.join();
  enable.join();
  ASSERT_TRUE(enabled.ok()) << enabled.status();
  EXPECT_EQ(enabled->after.state, DomainState::kPatched);
}

TEST_F(DomainActorTest, CommandPastItsDeadlineIsReportedAndSkipped) {
  auto actor = Actor("winxp-01");
  guest_->hold_enable = true;
  std::thread first([&] { EXPECT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok()); });
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->enable_entered; }));
  auto scan = actor->Scan(absl::Now() + absl::Milliseconds(50));
  EXPECT_TRUE(absl::IsDeadlineExceeded(scan.status())) << scan.status();
  guest_->ReleaseEnable();
  first.join();
  // The next command still works: the abandoned scan did not jam the queue.
  auto again = actor->Scan(Soon());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->size(), 3u);
}

TEST_F(DomainActorTest, CommandsInterruptPollingInsteadOfWaitingForIt) {
  registry_.reset();
  registry_ = std::make_unique<DomainRegistry>(&hypervisor_, journal_.get(), &bus_,
                                               DomainActorOptions{absl::Hours(1)});
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->polls > 0; }));
  // With an hour-long poll slice, only Interrupt() lets this finish within its deadline.
  auto scan = actor->Scan(Soon());
  EXPECT_TRUE(scan.ok()) << scan.status();
  std::lock_guard<std::mutex> lock(guest_->mu);
  EXPECT_GE(guest_->interrupts, 1);
}

TEST_F(DomainActorTest, SitePatchedOnFirstExecutionIsPublished) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  auto events = bus_.Subscribe("");
  ControllerEvent late;
  late.kind = ControllerEvent::Kind::kSiteChanged;
  late.site = engine::ManagedSite{};
  late.site->site.id = 42;
  late.site->site.address = 0x80600000;
  late.site->site.state = engine::SiteState::kApplied;
  guest_->PushPollEvent(late);

  std::optional<DomainEvent> seen;
  for (int i = 0; i < 100 && !seen; ++i) {
    auto event = events->Next(absl::Milliseconds(100));
    if (event && event->kind == DomainEvent::Kind::kSite) seen = event;
  }
  ASSERT_TRUE(seen.has_value()) << "no site event within 10 s";
  EXPECT_EQ(seen->site->site.id, 42u);
  EXPECT_TRUE(WaitForSnapshot(*actor, [](const DomainSnapshot& s) {
    return s.sites.size() == 4 && s.status.traps_handled == 1;
  }));
}

TEST_F(DomainActorTest, RollbackAllReturnsToUnpatchedAndDetaches) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  auto one = actor->Rollback({1}, false, Soon());
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_THAT(one->result.rolled_back, ::testing::ElementsAre(1u));
  EXPECT_EQ(one->after.state, DomainState::kPatched);

  auto unknown = actor->Rollback({99}, false, Soon());
  EXPECT_TRUE(absl::IsNotFound(unknown.status())) << unknown.status();

  {
    std::lock_guard<std::mutex> lock(guest_->mu);
    guest_->tampered.insert(2);
  }
  auto rest = actor->Rollback({}, false, Soon());
  ASSERT_TRUE(rest.ok());
  EXPECT_THAT(rest->result.rolled_back, ::testing::ElementsAre(0u));
  ASSERT_EQ(rest->result.refused.size(), 1u);
  EXPECT_THAT(rest->result.refused[0].reason, HasSubstr("--force"));
  EXPECT_EQ(rest->after.state, DomainState::kPatched) << "site 2 is still patched";

  auto forced = actor->Rollback({2}, true, Soon());
  ASSERT_TRUE(forced.ok());
  EXPECT_EQ(forced->after.state, DomainState::kUnpatched);
  std::lock_guard<std::mutex> lock(guest_->mu);
  EXPECT_FALSE(guest_->traps_armed) << "no traps left once nothing is patched";
}

TEST_F(DomainActorTest, RollbackOnAnUnpatchedDomainIsANoOp) {
  auto actor = Actor("winxp-01");
  auto all = actor->Rollback({}, false, Soon());
  ASSERT_TRUE(all.ok());
  EXPECT_TRUE(all->result.rolled_back.empty());
  EXPECT_TRUE(absl::IsNotFound(actor->Rollback({3}, false, Soon()).status()));
}

TEST_F(DomainActorTest, RollbackNamingAnUnknownSiteIsRefusedAndLeavesTheDomainAlone) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  auto entries_before = Journal::ReadAll(journal_->path(), nullptr);
  ASSERT_TRUE(entries_before.ok());
  auto refused = actor->Rollback({0, 4000000000u}, false, Soon());
  EXPECT_TRUE(absl::IsNotFound(refused.status())) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("4000000000"));
  const DomainSnapshot after = actor->Snapshot();
  EXPECT_EQ(after.state, DomainState::kPatched);
  EXPECT_EQ(after.last_error, "") << "a caller's unknown id is not the domain's error";
  for (const engine::ManagedSite& site : after.sites) {
    EXPECT_EQ(site.site.state, engine::SiteState::kApplied) << "site " << site.site.id;
  }
  auto entries_after = Journal::ReadAll(journal_->path(), nullptr);
  ASSERT_TRUE(entries_after.ok());
  EXPECT_EQ(entries_after->size(), entries_before->size()) << "a refused rollback is not journaled";
}

TEST_F(DomainActorTest, EnableFailureKeepsTheDomainUnpatchedWithTheReason) {
  guest_->enable_error = absl::FailedPreconditionError(
      "QEMU's own vapic is active on winxp-01; set apic.vapic=off and restart the domain");
  auto actor = Actor("winxp-01");
  auto result = actor->Enable(EnableOptions{}, Soon());
  EXPECT_TRUE(absl::IsFailedPrecondition(result.status()));
  const DomainSnapshot after = actor->Snapshot();
  EXPECT_EQ(after.state, DomainState::kUnpatched);
  EXPECT_THAT(after.last_error, HasSubstr("vapic"));
}

TEST_F(DomainActorTest, RebootForgetsPatchesAndEnableWorksAgain) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kRebooted);
  ASSERT_TRUE(WaitForSnapshot(*actor, [](const DomainSnapshot& s) {
    return s.state == DomainState::kUnpatched && s.sites.empty();
  }));
  EXPECT_GE(guest_->abandons, 1) << "the session is dropped, not detached";
  auto again = actor->Enable(EnableOptions{}, Soon());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->after.state, DomainState::kPatched);
}

TEST_F(DomainActorTest, DestroyedDomainIsGoneAndRefusesCommandsUntilStarted) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kDestroyed);
  ASSERT_TRUE(WaitForSnapshot(
      *actor, [](const DomainSnapshot& s) { return s.state == DomainState::kGone; }));
  auto refused = actor->Enable(EnableOptions{}, Soon());
  EXPECT_TRUE(absl::IsFailedPrecondition(refused.status()));
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("not running"));

  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kStarted);
  ASSERT_TRUE(WaitForSnapshot(
      *actor, [](const DomainSnapshot& s) { return s.state == DomainState::kUnpatched; }));
  EXPECT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());

  auto entries = Journal::ReadAll(journal_->path(), nullptr);
  ASSERT_TRUE(entries.ok());
  bool destroyed_recorded = false;
  for (const JournalEntry& entry : *entries) {
    destroyed_recorded |= entry.event == "lifecycle" && entry.message == "destroyed";
  }
  EXPECT_TRUE(destroyed_recorded);
}

TEST_F(DomainActorTest, DetachAllLeavesPatchedGuestsExactAndAdoptTakesThemBack) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  ASSERT_TRUE(registry_->DetachAll("tprd stopping", Soon()).ok());
  {
    std::lock_guard<std::mutex> lock(guest_->mu);
    EXPECT_EQ(guest_->strategy_word, engine::Strategy::kExact);
    EXPECT_FALSE(guest_->traps_armed);
    EXPECT_TRUE(guest_->blob_present) << "patches stay; exact keeps them correct";
    EXPECT_EQ(guest_->last_detach_reason, "tprd stopping");
  }
  EXPECT_EQ(actor->Snapshot().state, DomainState::kExactWhileAway);

  // A new daemon: a fresh registry adopts what it finds.
  actor.reset();
  registry_.reset();
  registry_ = std::make_unique<DomainRegistry>(&hypervisor_, journal_.get(), &bus_,
                                               DomainActorOptions{absl::Milliseconds(50)});
  auto adopted = registry_->AdoptRunning(Soon());
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  EXPECT_EQ(*adopted, 1);
  std::lock_guard<std::mutex> lock(guest_->mu);
  EXPECT_EQ(guest_->strategy_word, engine::Strategy::kMmio);
  EXPECT_TRUE(guest_->traps_armed);
}

// The guest's word says exact after a clean detach: the operator's choice comes from the
// journal's detach entry, also for a daemon that opens the journal afresh.
TEST_F(DomainActorTest, DetachJournalsTheStrategyAndTheNextAdoptIsGivenIt) {
  {
    std::lock_guard<std::mutex> lock(guest_->mu);
    guest_->cr8legacy = true;
  }
  auto actor = Actor("winxp-01");
  EnableOptions options;
  options.strategy = RequestedStrategy::kCr8;
  ASSERT_TRUE(actor->Enable(options, Soon()).ok());
  ASSERT_TRUE(registry_->DetachAll("tprd stopping", Soon()).ok());
  actor.reset();
  registry_.reset();
  journal_.reset();
  auto reopened = Journal::Open(dir_.File(Journal::kFileName));
  ASSERT_TRUE(reopened.ok());
  journal_ = *std::move(reopened);
  EXPECT_EQ(journal_->LastStrategy("aaaaaaaa-0000-0000-0000-000000000001"), engine::Strategy::kCr8);
  registry_ = std::make_unique<DomainRegistry>(&hypervisor_, journal_.get(), &bus_,
                                               DomainActorOptions{absl::Milliseconds(50)});
  ASSERT_TRUE(registry_->AdoptRunning(Soon()).ok());
  std::lock_guard<std::mutex> lock(guest_->mu);
  EXPECT_EQ(guest_->last_adopt_hint, engine::Strategy::kCr8);
}

// Rolling back every site ends the operator's choice: a later adopt is told exact.
TEST_F(DomainActorTest, RollbackOfEverySiteJournalsExactForLaterAdopts) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  EXPECT_EQ(journal_->LastStrategy("aaaaaaaa-0000-0000-0000-000000000001"),
            engine::Strategy::kMmio);
  ASSERT_TRUE(actor->Rollback({}, false, Soon()).ok());
  EXPECT_EQ(journal_->LastStrategy("aaaaaaaa-0000-0000-0000-000000000001"),
            engine::Strategy::kExact);
}

TEST_F(DomainActorTest, AdoptRunningLooksOnlyAtDomainsMatchingTheGlob) {
  auto none = registry_->AdoptRunning(Soon(), "other-*");
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, 0);
  EXPECT_EQ(guest_->opens, 0) << "a domain outside the glob is never probed";
  auto all = registry_->AdoptRunning(Soon(), "winxp-*");
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_EQ(guest_->adopts, 1);
}

TEST_F(DomainActorTest, LostSessionIsReportedAndTheGuestIsTakenBackAtOnce) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  const int adopts_before = guest_->adopts;
  const int abandons_before = guest_->abandons;
  FailNextPoll(absl::UnavailableError("gdbstub connection reset"));
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->adopts == adopts_before + 1; }))
      << "a lost session must be followed by an adopt, not by waiting for an operator";
  ASSERT_TRUE(WaitForSnapshot(
      *actor, [](const DomainSnapshot& s) { return s.state == DomainState::kPatched; }));
  EXPECT_EQ(guest_->abandons, abandons_before + 1) << "the broken session is dropped first";
  EXPECT_THAT(actor->Snapshot().last_error, HasSubstr("gdbstub connection reset"));
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok()) << "and it serves commands again";
}

TEST_F(DomainActorTest, APauseToCopyTheStateLetsGoAndTheNextResumeTakesTheGuestBack) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  const int detaches_before = guest_->detaches;
  const int adopts_before = guest_->adopts;
  ControllerEvent copy;
  copy.kind = ControllerEvent::Kind::kHostCopiesState;
  copy.message = "libvirt paused the domain to copy its state";
  hypervisor_.SetHeldPaused("winxp-01", true);
  guest_->PushPollEvent(copy);
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->detaches == detaches_before + 1; }))
      << "a save or migration must find the guest let go (exact, no traps)";
  ASSERT_TRUE(WaitForSnapshot(
      *actor, [](const DomainSnapshot& s) { return s.state == DomainState::kExactWhileAway; }));
  // tprd's own stops resume the domain too; those must not take it back early, and a resume
  // while nothing is let go must not adopt.
  EXPECT_EQ(guest_->adopts, adopts_before);
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kResumed);
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->adopts == adopts_before + 1; }))
      << "the resume after the copy (a snapshot done, a failed migration) takes it back";
  ASSERT_TRUE(WaitForSnapshot(
      *actor, [](const DomainSnapshot& s) { return s.state == DomainState::kPatched; }));
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kResumed);
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());  // the queue has run past it
  EXPECT_EQ(guest_->adopts, adopts_before + 1) << "a later resume adopts nothing";
}

// libvirt resumed the domain while the let-go ran: its resume event came before the actor waited
// for one and was filtered as one of tprd's own stops' resumes. The let-go's end sees the domain
// running and takes it back; one held paused waits for its event (the test above).
TEST_F(DomainActorTest, AResumeDuringTheLetGoStillTakesTheGuestBack) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  const int adopts_before = guest_->adopts;
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kResumed);  // filtered: nothing let go
  ControllerEvent copy;
  copy.kind = ControllerEvent::Kind::kHostCopiesState;
  copy.message = "libvirt paused the domain to copy its state";
  guest_->PushPollEvent(copy);  // the lookup after the let-go finds it running
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->adopts == adopts_before + 1; }))
      << "a guest whose resume was missed stays let go for good";
  ASSERT_TRUE(WaitForState(*actor, DomainState::kPatched));
}

// A migration: the source's memory, tprd's blob in it, runs on the target (libvirt's RESUMED,
// MIGRATED there). The target's tprd adopts it as at a start; here one fake guest stands for the
// memory on both sides, the source's session having gone with the migration.
TEST_F(DomainActorTest, AGuestThatArrivesByMigrationWithTheBlobIsAdopted) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kMigrated);
  ASSERT_TRUE(WaitForState(*actor, DomainState::kGone));
  const int adopts_before = guest_->adopts;
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kArrived);
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->adopts == adopts_before + 1; }))
      << "the arrival looks for tprd's blob";
  ASSERT_TRUE(WaitForState(*actor, DomainState::kPatched));
}

// A migration that failed after tprd let the guest go for its copy: the source runs on (RESUMED,
// MIGRATED) and tprd takes it back.
TEST_F(DomainActorTest, AFailedMigrationTakesTheLetGoGuestBack) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  const int adopts_before = guest_->adopts;
  PushHostChange(ControllerEvent::Kind::kHostCopiesState);
  ASSERT_TRUE(WaitForState(*actor, DomainState::kExactWhileAway));
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kArrived);
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->adopts == adopts_before + 1; }));
  ASSERT_TRUE(WaitForState(*actor, DomainState::kPatched));
}

// A snapshot revert loads other memory into the running domain: tprd must not write into it
// (a strategy word where the snapshot has no blob), so it drops the session as at a reboot, and
// the resume adopts whatever the memory then holds.
TEST_F(DomainActorTest, APauseToRevertToASnapshotLetsGoWithoutAWriteAndTheResumeAdopts) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  const int detaches_before = guest_->detaches, abandons_before = guest_->abandons;
  const int adopts_before = guest_->adopts;
  PushHostChange(ControllerEvent::Kind::kHostReplacesState);
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->abandons == abandons_before + 1; }))
      << "the session is dropped";
  ASSERT_TRUE(WaitForState(*actor, DomainState::kUnpatched));
  EXPECT_EQ(guest_->detaches, detaches_before) << "a detach writes the strategy word";
  EXPECT_EQ(guest_->adopts, adopts_before);
  // The snapshot was taken while patched: its memory holds the blob.
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kResumed);
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->adopts == adopts_before + 1; }));
  ASSERT_TRUE(WaitForState(*actor, DomainState::kPatched));
}

// libvirt says the domain runs again on a snapshot's memory (RESUMED, FROM_SNAPSHOT), also when
// tprd never saw the pause before the load: the session is dropped without a write, and the blob
// the snapshot holds, if any, is adopted.
TEST_F(DomainActorTest, ARevertSeenOnlyByItsResumeDropsTheSessionWithoutAWriteAndAdopts) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  const int detaches_before = guest_->detaches, abandons_before = guest_->abandons;
  const int adopts_before = guest_->adopts;
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kReverted);
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->adopts == adopts_before + 1; }));
  EXPECT_EQ(guest_->abandons, abandons_before + 1) << "the old session is dropped first";
  EXPECT_EQ(guest_->detaches, detaches_before) << "a detach writes the strategy word";
  ASSERT_TRUE(WaitForState(*actor, DomainState::kPatched));
}

// libvirt reports a restore's first resume as FROM_SNAPSHOT (its RESTORED running reason maps to
// that detail), right after the start that loaded the memory: the session the start made is
// kept (ciZ: dropping it without a detach left mmio without its write watchpoint).
TEST_F(DomainActorTest, ARestoresFirstResumeIsNotTakenForASnapshotRevert) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  const int abandons_before = guest_->abandons;
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kStarted, /*from_saved_state=*/true);
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kReverted);
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());  // the queue has run past both
  EXPECT_EQ(guest_->abandons, abandons_before) << "the session was dropped as at a revert";
  EXPECT_EQ(actor->Snapshot().state, DomainState::kPatched);

  // A revert later on, with no restore before it, still drops the session.
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kReverted);
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->abandons == abandons_before + 1; }));
  ASSERT_TRUE(WaitForState(*actor, DomainState::kPatched));  // its memory held the blob

  // Restored paused, resumed by an operator (a resume the actor filters out), then reverted:
  // that revert is one, and drops the session.
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kStarted, /*from_saved_state=*/true);
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kResumed);
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kReverted);
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->abandons == abandons_before + 2; }));
}

// No blob in the memory the guest runs on after a revert (by its pause, or by its resume alone)
// or after a copy's resume: the status says unpatched, lists no site of the old memory, and
// does not claim "exact while away".
TEST_F(DomainActorTest, MemoryWithoutTheBlobAfterARevertOrACopyShowsTheGuestUnpatched) {
  auto actor = Actor("winxp-01");
  const std::string name = "winxp-01";
  for (const char* how : {"revert's pause", "revert's resume", "copy"}) {
    SCOPED_TRACE(how);
    ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());  // the blob is back in
    ASSERT_TRUE(WaitForState(*actor, DomainState::kPatched));
    const int adopts_before = guest_->adopts;
    if (std::string(how) == "revert's resume") {
      ForgetBlob();
      hypervisor_.EmitLifecycle(name, LifecycleKind::kReverted);
    } else {
      const bool copy = std::string(how) == "copy";
      PushHostChange(copy ? ControllerEvent::Kind::kHostCopiesState
                          : ControllerEvent::Kind::kHostReplacesState);
      ASSERT_TRUE(
          WaitForState(*actor, copy ? DomainState::kExactWhileAway : DomainState::kUnpatched));
      ForgetBlob();
      hypervisor_.EmitLifecycle(name, LifecycleKind::kResumed);
    }
    ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->adopts == adopts_before + 1; }))
        << "the resume looks for the blob";
    // The snapshot is refreshed after the look: wait for it, bounded.
    EXPECT_TRUE(WaitForSnapshot(*actor,
                                [](const DomainSnapshot& s) {
                                  return s.state == DomainState::kUnpatched && s.sites.empty();
                                }))
        << "unpatched, and no site of the old memory listed: "
        << DomainStateName(actor->Snapshot().state) << ", " << actor->Snapshot().sites.size()
        << " sites";
  }
}

// A save (or a destroy) ends QEMU, and with it the gdbstub, before libvirt reports the stop:
// that is the domain ending, not a lost session. No warning, no attempt to take back a guest that
// is not there; the save's own event says where the guest went, and its restore (a start from a
// saved state) takes it back from the blob in its memory.
TEST_F(DomainActorTest, ASessionThatEndsWithASavedDomainIsNotALostSession) {
  DomainActorOptions options;
  options.poll_interval = absl::Milliseconds(50);
  options.reboot_event_grace = absl::Seconds(10);  // the event below ends the wait
  MakeRegistry(options);
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  const int adopts_before = guest_->adopts;
  const int opens_before = guest_->opens;
  FailNextPoll(absl::UnavailableError("gdbstub session lost: Broken pipe"));
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kSaved);
  ASSERT_TRUE(WaitForState(*actor, DomainState::kGone))
      << DomainStateName(actor->Snapshot().state) << ": " << actor->Snapshot().last_error;
  EXPECT_EQ(actor->Snapshot().last_error, "") << "the domain's end is not an error";
  EXPECT_EQ(guest_->opens, opens_before) << "nothing to take back while the domain is saved";
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kStarted, /*from_saved_state=*/true);
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->adopts == adopts_before + 1; }))
      << "the restore takes the guest back";
  ASSERT_TRUE(WaitForState(*actor, DomainState::kPatched));
}

// libvirt's answer alone is not an ending: during a libvirtd restart a running domain may look
// gone. Without a stop event the broken session is a lost one, and the guest is taken back (else
// it would run on mmio without tprd's write watchpoint; ciD 2026-12-07).
TEST_F(DomainActorTest, ALostSessionWithoutAStopEventIsTakenBackWhateverALookupSays) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  const int opens_before = guest_->opens;
  hypervisor_.SetRunningWithoutEvent("winxp-01", false);
  FailNextPoll(absl::UnavailableError("gdbstub session lost: Broken pipe"));
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->opens == opens_before + 1; }))
      << "no take-back was tried";
}

// An enable whose attach finds the domain already being destroyed, before libvirt's stop event:
// the answer says the domain stopped (race test by hand: the raw "is shutdown" was exit 3).
TEST_F(DomainActorTest, EnableWhoseAttachFindsTheDomainShuttingDownSaysItStopped) {
  auto actor = Actor("winxp-01");
  {
    std::lock_guard<std::mutex> lock(guest_->mu);
    guest_->open_error =
        absl::FailedPreconditionError("domain winxp-01 is shutdown, not running or paused");
  }
  hypervisor_.SetRunningWithoutEvent("winxp-01", false);
  auto result = actor->Enable(EnableOptions{}, Soon());
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("stopped during the enable"));
}

// A refusal on a running domain is passed through as it is: not every FAILED_PRECONDITION is a
// stop.
TEST_F(DomainActorTest, EnableRefusedOnARunningDomainIsNotCalledAStop) {
  auto actor = Actor("winxp-01");
  {
    std::lock_guard<std::mutex> lock(guest_->mu);
    guest_->open_error = absl::FailedPreconditionError("QEMU's own vapic is active");
  }
  auto result = actor->Enable(EnableOptions{}, Soon());
  ASSERT_FALSE(result.ok());
  EXPECT_THAT(std::string(result.status().message()), ::testing::Not(HasSubstr("stopped during")));
  EXPECT_THAT(std::string(result.status().message()), HasSubstr("vapic"));
}

TEST_F(DomainActorTest, LostSessionOfAGuestThatCannotBeTakenBackWaitsForTheOperator) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  {
    std::lock_guard<std::mutex> lock(guest_->mu);
    guest_->open_error = absl::UnavailableError("gdbserver refused");
    guest_->poll_error = absl::UnavailableError("gdbstub connection reset");
    guest_->changed.notify_all();
  }
  ASSERT_TRUE(WaitForSnapshot(
      *actor, [](const DomainSnapshot& s) { return s.state == DomainState::kExactWhileAway; }));
  {
    std::lock_guard<std::mutex> lock(guest_->mu);
    guest_->open_error = absl::OkStatus();
  }
  const int adopts_before = guest_->adopts;
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  EXPECT_EQ(guest_->adopts, adopts_before + 1);
  EXPECT_EQ(actor->Snapshot().state, DomainState::kPatched);
}

// libvirtd restarting under a patched guest: the lost session's adopt fails while the
// connection reconnects, and is tried again (the guest's traps are still armed in QEMU).
TEST_F(DomainActorTest, LostSessionWhileLibvirtdReconnectsIsTakenBackWhenItIsBack) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  const int adopts_before = guest_->adopts;
  const int detaches_before = guest_->detaches;
  const int abandons_before = guest_->abandons;
  {
    std::lock_guard<std::mutex> lock(guest_->mu);
    guest_->open_error =
        absl::UnavailableError("not connected to libvirtd at qemu:///system (reconnecting)");
    guest_->poll_error = guest_->open_error;
    guest_->changed.notify_all();
  }
  ASSERT_TRUE(WaitForSnapshot(
      *actor, [](const DomainSnapshot& s) { return s.state == DomainState::kExactWhileAway; }));
  // The gdbstub still works: the guest is left on exact with its traps removed, not abandoned
  // on its strategy without them until libvirtd returns.
  EXPECT_EQ(guest_->detaches, detaches_before + 1);
  EXPECT_EQ(guest_->abandons, abandons_before);
  {
    std::lock_guard<std::mutex> lock(guest_->mu);
    guest_->open_error = absl::OkStatus();  // libvirtd is back
  }
  ASSERT_TRUE(WaitForSnapshot(*actor, [](const DomainSnapshot& s) {
    return s.state == DomainState::kPatched;
  })) << "nobody took the guest back after libvirtd returned";
  EXPECT_EQ(guest_->adopts, adopts_before + 1);
}

TEST_F(DomainActorTest, AfterDetachOnlyAnotherDetachIsAcceptedAndEventsStillCount) {
  auto actor = Actor("winxp-01");
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon()).ok());
  ASSERT_TRUE(actor->Detach("tprd stopping", Soon()).ok());
  const std::string let_go = "tprd is stopping and has let go of winxp-01; retry after it restarts";
  for (const absl::Status& status : EveryGuestCommand(*actor)) {
    EXPECT_TRUE(absl::IsUnavailable(status)) << status;
    EXPECT_EQ(status.message(), let_go);
  }
  EXPECT_TRUE(actor->Snapshot().busy_with.empty()) << "a refused claim claims nothing";
  EXPECT_TRUE(actor->Detach("again", Soon()).ok());
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kDestroyed);
  EXPECT_TRUE(WaitForSnapshot(
      *actor, [](const DomainSnapshot& s) { return s.state == DomainState::kGone; }));
}

TEST_F(DomainActorTest, GoneDomainRefusesEveryGuestCommandButDetach) {
  auto actor = Actor("winxp-01");
  hypervisor_.EmitLifecycle("winxp-01", LifecycleKind::kDestroyed);
  ASSERT_TRUE(WaitForSnapshot(
      *actor, [](const DomainSnapshot& s) { return s.state == DomainState::kGone; }));
  const std::string not_running =
      "domain winxp-01 is not running; start it (virsh start winxp-01), then retry";
  for (const absl::Status& status : EveryGuestCommand(*actor)) {
    EXPECT_TRUE(absl::IsFailedPrecondition(status)) << status;
    EXPECT_EQ(status.message(), not_running);
  }
  EXPECT_EQ(guest_->opens, 0) << "a refused command never reaches the guest";
  EXPECT_TRUE(actor->Snapshot().busy_with.empty());
  EXPECT_TRUE(actor->Detach("tprd stopping", Soon()).ok());
}

// The legality table itself (actor_command.h), every command against every phase and state.
constexpr ActorCommand kEveryCommand[] = {
    ActorCommand::kEnable, ActorCommand::kRollback, ActorCommand::kScan,     ActorCommand::kAdopt,
    ActorCommand::kDetach, ActorCommand::kDisable,  ActorCommand::kLifecycle};
constexpr DomainState kEveryState[] = {DomainState::kUnpatched, DomainState::kPatching,
                                       DomainState::kPatched, DomainState::kExactWhileAway,
                                       DomainState::kGone};
static_assert(std::size(kEveryCommand) == kActorCommandCount);
static_assert(std::size(kEveryState) == kDomainStateCount);

TEST(ActorCommandTableTest, OpenTakesEverythingClosingOnlyDetachAndEventsStoppingNothing) {
  for (ActorCommand command : kEveryCommand) {
    const bool detach_or_event =
        command == ActorCommand::kDetach || command == ActorCommand::kLifecycle;
    EXPECT_TRUE(AcceptedIn(command, ActorPhase::kOpen)) << ActorCommandName(command);
    EXPECT_EQ(AcceptedIn(command, ActorPhase::kClosing), detach_or_event)
        << ActorCommandName(command);
    EXPECT_FALSE(AcceptedIn(command, ActorPhase::kStopping)) << ActorCommandName(command);
  }
}

TEST(ActorCommandTableTest, OnlyAGoneDomainRefusesAndOnlyWhatNeedsTheGuest) {
  for (ActorCommand command : kEveryCommand) {
    // Disable on a gone domain still forgets its intent.
    const bool needs_guest = command != ActorCommand::kDetach &&
                             command != ActorCommand::kLifecycle &&
                             command != ActorCommand::kDisable;
    for (DomainState state : kEveryState) {
      EXPECT_EQ(RunsIn(command, state), !(needs_guest && state == DomainState::kGone))
          << ActorCommandName(command) << " in " << DomainStateName(state);
    }
  }
}

TEST(ActorCommandTableTest, OnlyTheOperatorsChangesClaimTheDomainUnderTheNamesCallersSee) {
  std::vector<std::string> names;
  for (ActorCommand command : kEveryCommand) {
    names.push_back(ActorCommandName(command));
    EXPECT_EQ(RuleFor(command).claims_domain, command == ActorCommand::kEnable ||
                                                  command == ActorCommand::kRollback ||
                                                  command == ActorCommand::kDisable)
        << ActorCommandName(command);
  }
  EXPECT_THAT(names, ::testing::ElementsAre("enable", "rollback", "scan", "adopt", "detach",
                                            "disable", "lifecycle"));
}

TEST_F(DomainActorTest, RegistryResolvesByNameUuidAndIdAndRefusesStoppedDomains) {
  auto by_name = registry_->ActorFor("winxp-01");
  auto by_uuid = registry_->ActorFor("aaaaaaaa-0000-0000-0000-000000000001");
  auto by_id = registry_->ActorFor("1");
  ASSERT_TRUE(by_name.ok() && by_uuid.ok() && by_id.ok());
  EXPECT_EQ(by_name->get(), by_uuid->get());
  EXPECT_EQ(by_name->get(), by_id->get());

  EXPECT_TRUE(absl::IsNotFound(registry_->ActorFor("nope").status()));
  EXPECT_TRUE(absl::IsInvalidArgument(registry_->ActorFor("").status()));
  auto stopped = registry_->ActorFor("winxp-off");
  EXPECT_TRUE(absl::IsFailedPrecondition(stopped.status()));
  EXPECT_THAT(std::string(stopped.status().message()), HasSubstr("virsh start winxp-off"));

  auto listed = registry_->ListDomains();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_EQ((*listed)[0].domain.name, "winxp-01");
  EXPECT_EQ((*listed)[1].state, DomainState::kGone);

  hypervisor_.SetUnavailable(true);
  EXPECT_TRUE(absl::IsUnavailable(registry_->ListDomains().status()));
}

}  // namespace
}  // namespace tprd::daemon

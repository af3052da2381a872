// The operator's intent through the actors and the registry, over FakeHypervisor: recorded by
// enable, kept by rollback, removed by disable, shown by ListDomains, and applied (with retries
// while the guest boots) when a domain starts or reboots and when tprd starts.
#include <memory>
#include <string>

#include "daemon/actor/domain_actor.h"
#include "daemon/actor/domain_registry.h"
#include "daemon/domain/intent.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/daemon/registry_fixture.h"
#include "tests/fakes/fake_domain_controller.h"

namespace tprd::daemon {
namespace {

using fakes::FakeGuest;
using fakes::FakeHypervisor;
using ::testing::HasSubstr;
using ::testing::Optional;

absl::Time Soon() { return absl::Now() + absl::Seconds(10); }

constexpr char kRunning[] = "winxp-01";
constexpr char kStopped[] = "winxp-off";
const Intent kMmio{RequestedStrategy::kMmio, absl::ZeroDuration()};

// winxp-01 and winxp-off (RegistryFixture); attempts every 20 ms.
class IntentTest : public RegistryFixture {
 protected:
  void MakeRegistry(absl::Duration retry_window = absl::Seconds(10)) {
    DomainActorOptions options;
    options.poll_interval = absl::Milliseconds(50);
    options.reboot_event_grace = absl::Milliseconds(300);
    options.intent_retry_interval = absl::Milliseconds(20);
    options.intent_retry_window = retry_window;
    RegistryFixture::MakeRegistry(options);
  }

  // Waits (bounded) for the registry's view of `name` to satisfy `condition`.
  bool WaitFor(const std::string& name, const std::function<bool(const DomainSnapshot&)>& condition,
               absl::Duration timeout = absl::Seconds(10)) {
    const absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {
      auto snapshot = registry_->Describe(name);
      if (snapshot.ok() && condition(*snapshot)) return true;
      absl::SleepFor(absl::Milliseconds(5));
    }
    return false;
  }

  // The guest is booting: a scan finds nothing yet.
  void Booting(FakeGuest& guest, bool booting) {
    std::lock_guard<std::mutex> lock(guest.mu);
    guest.candidates.clear();
    if (!booting) fakes::AddFakeCandidates(guest, 3);
  }

  int IntentEntries(const std::string& containing) {
    auto entries = Journal::ReadAll(journal_->path(), nullptr);
    EXPECT_TRUE(entries.ok());
    int count = 0;
    for (const JournalEntry& entry : *entries) {
      count += entry.event == "intent" && entry.message.find(containing) != std::string::npos;
    }
    return count;
  }
};

TEST_F(IntentTest, EnableRecordsTheIntentAndListDomainsShowsIt) {
  MakeRegistry();
  auto enabled = Actor(kRunning)->Enable(EnableOptions{RequestedStrategy::kMmio}, Soon(), kMmio);
  ASSERT_TRUE(enabled.ok()) << enabled.status();
  EXPECT_THAT(hypervisor_.IntentXml(kRunning),
              Optional(std::string("<intent strategy=\"mmio\"/>")));
  EXPECT_EQ(IntentEntries("recorded"), 1);

  auto listed = registry_->ListDomains();
  ASSERT_TRUE(listed.ok()) << listed.status();
  EXPECT_THAT((*listed)[0].intent, Optional(kMmio));
  EXPECT_EQ((*listed)[1].intent, std::nullopt) << "winxp-off has none";
  EXPECT_EQ((*listed)[1].intent_error, "");
}

TEST_F(IntentTest, FailedOrUnrecordedEnablesRecordNothing) {
  MakeRegistry();
  auto actor = Actor(kRunning);
  EnableOptions dry_run;
  dry_run.dry_run = true;
  ASSERT_TRUE(actor->Enable(dry_run, Soon()).ok());  // the service passes no intent for these
  EXPECT_EQ(hypervisor_.IntentXml(kRunning), std::nullopt);
  {
    std::lock_guard<std::mutex> lock(guest_->mu);
    guest_->enable_error = absl::FailedPreconditionError("no KPCR yet");
  }
  EXPECT_FALSE(actor->Enable(EnableOptions{}, Soon(), kMmio).ok());
  EXPECT_EQ(hypervisor_.IntentXml(kRunning), std::nullopt) << "only a successful enable records";
}

TEST_F(IntentTest, AnIntentLibvirtRefusesLeavesTheGuestPatchedAndSaysSo) {
  MakeRegistry();
  hypervisor_.SetIntentError(absl::UnavailableError("libvirtd went away"));
  auto enabled = Actor(kRunning)->Enable(EnableOptions{}, Soon(), kMmio);
  ASSERT_TRUE(enabled.ok()) << enabled.status();
  EXPECT_EQ(enabled->after.state, DomainState::kPatched);
  EXPECT_THAT(enabled->after.last_error, HasSubstr("intent was not recorded"));
  EXPECT_THAT(enabled->after.last_error, HasSubstr("libvirtd went away"));
}

TEST_F(IntentTest, RollbackKeepsTheIntent) {
  MakeRegistry();
  auto actor = Actor(kRunning);
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon(), kMmio).ok());
  auto rolled_back = actor->Rollback({}, false, Soon());
  ASSERT_TRUE(rolled_back.ok()) << rolled_back.status();
  EXPECT_EQ(rolled_back->after.state, DomainState::kUnpatched);
  EXPECT_TRUE(hypervisor_.IntentXml(kRunning).has_value());
}

TEST_F(IntentTest, DisableRemovesTheIntentAndRollsEverySiteBack) {
  MakeRegistry();
  ASSERT_TRUE(Actor(kRunning)->Enable(EnableOptions{}, Soon(), kMmio).ok());
  auto disabled = registry_->Disable(kRunning, /*force=*/false, Soon());
  ASSERT_TRUE(disabled.ok()) << disabled.status();
  EXPECT_TRUE(disabled->intent_removed);
  EXPECT_EQ(disabled->result.rolled_back.size(), 3u);
  EXPECT_EQ(disabled->after.state, DomainState::kUnpatched);
  EXPECT_EQ(hypervisor_.IntentXml(kRunning), std::nullopt);
  EXPECT_EQ(IntentEntries("removed by disable"), 1);

  // Again: nothing to remove, nothing to roll back, still fine.
  auto again = registry_->Disable(kRunning, false, Soon());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_FALSE(again->intent_removed);
  EXPECT_TRUE(again->result.rolled_back.empty());
}

TEST_F(IntentTest, DisableThatCannotTellLibvirtChangesNothing) {
  MakeRegistry();
  ASSERT_TRUE(Actor(kRunning)->Enable(EnableOptions{}, Soon(), kMmio).ok());
  hypervisor_.SetIntentError(absl::UnavailableError("libvirtd went away"));
  auto disabled = registry_->Disable(kRunning, false, Soon());
  EXPECT_TRUE(absl::IsUnavailable(disabled.status())) << disabled.status();
  EXPECT_EQ(Actor(kRunning)->Snapshot().state, DomainState::kPatched);
}

TEST_F(IntentTest, DisableOfADomainThatIsNotRunningForgetsItsIntent) {
  MakeRegistry();
  hypervisor_.SetIntentXml(kStopped, "<intent strategy=\"cr8\"/>");
  auto disabled = registry_->Disable(kStopped, false, Soon());
  ASSERT_TRUE(disabled.ok()) << disabled.status();
  EXPECT_TRUE(disabled->intent_removed);
  EXPECT_EQ(disabled->after.state, DomainState::kGone);
  EXPECT_EQ(hypervisor_.IntentXml(kStopped), std::nullopt);
}

// The guest reboots: its kernel needs a while before the scan finds anything. The actor keeps
// trying (journaling each attempt) and patches it once there are sites.
TEST_F(IntentTest, RebootAppliesTheIntentOnceTheScanFindsSites) {
  MakeRegistry();
  auto actor = Actor(kRunning);
  ASSERT_TRUE(actor->Enable(EnableOptions{RequestedStrategy::kMmio}, Soon(), kMmio).ok());
  Booting(*guest_, true);
  hypervisor_.EmitLifecycle(kRunning, LifecycleKind::kRebooted);
  ASSERT_TRUE(WaitFor(kRunning, [](const DomainSnapshot& s) {
    return s.intent_progress.find("attempt 3:") != std::string::npos;
  })) << actor->Snapshot().intent_progress;
  EXPECT_EQ(actor->Snapshot().state, DomainState::kUnpatched);
  EXPECT_THAT(actor->Snapshot().intent_progress, HasSubstr("nothing to patch yet"));
  {
    std::lock_guard<std::mutex> lock(guest_->mu);
    EXPECT_EQ(guest_->enables, 1) << "no enable while the scan finds nothing";
  }

  Booting(*guest_, false);
  ASSERT_TRUE(WaitFor(kRunning, [](const DomainSnapshot& s) {
    return s.state == DomainState::kPatched && s.intent_progress.empty();
  })) << actor->Snapshot().intent_progress;
  EXPECT_EQ(actor->Snapshot().status.strategy, engine::Strategy::kMmio);
  EXPECT_EQ(actor->Snapshot().last_error, "");
  EXPECT_GE(IntentEntries("nothing to patch yet"), 3);
  EXPECT_EQ(IntentEntries("applied the intent (strategy mmio)"), 1);
  EXPECT_TRUE(hypervisor_.IntentXml(kRunning).has_value());
}

// A guest that arrives by migration was let go on exact at the copy's start, and this host's
// journal knows nothing of it: the adopt restores the strategy of the intent the domain carried.
TEST_F(IntentTest, AnArrivingGuestIsAdoptedWithTheIntentsStrategyWhenTheJournalHasNone) {
  MakeRegistry();
  hypervisor_.SetIntentXml(kRunning, "<intent strategy=\"cr8\"/>");
  auto actor = Actor(kRunning);
  hypervisor_.EmitLifecycle(kRunning, LifecycleKind::kArrived);
  ASSERT_TRUE(guest_->WaitUntil([&] { return guest_->adopts >= 1; }));
  std::lock_guard<std::mutex> lock(guest_->mu);
  EXPECT_EQ(guest_->last_adopt_hint, std::optional<engine::Strategy>(engine::Strategy::kCr8));
}

TEST_F(IntentTest, AttemptsEndAfterTheBoundWithAnErrorAnOperatorCanActOn) {
  MakeRegistry(/*retry_window=*/absl::Milliseconds(150));
  hypervisor_.SetIntentXml(kRunning, "<intent strategy=\"auto\"/>");
  Booting(*guest_, true);
  auto actor = Actor(kRunning);
  hypervisor_.EmitLifecycle(kRunning, LifecycleKind::kRebooted);
  ASSERT_TRUE(WaitFor(kRunning, [](const DomainSnapshot& s) {
    return s.last_error.find("gave up applying the intent") != std::string::npos;
  })) << actor->Snapshot().last_error;
  EXPECT_THAT(actor->Snapshot().last_error, HasSubstr("tprctl enable winxp-01"));
  EXPECT_EQ(actor->Snapshot().intent_progress, "");
  int opens = 0;
  {
    std::lock_guard<std::mutex> lock(guest_->mu);
    opens = guest_->opens;
  }
  absl::SleepFor(absl::Milliseconds(100));
  std::lock_guard<std::mutex> lock(guest_->mu);
  EXPECT_EQ(guest_->opens, opens) << "no attempt after giving up";
  EXPECT_EQ(guest_->enables, 0);
}

TEST_F(IntentTest, AnOperatorsRollbackEndsTheAttempts) {
  MakeRegistry();
  hypervisor_.SetIntentXml(kRunning, "<intent strategy=\"mmio\"/>");
  Booting(*guest_, true);
  auto actor = Actor(kRunning);
  hypervisor_.EmitLifecycle(kRunning, LifecycleKind::kRebooted);
  ASSERT_TRUE(WaitFor(kRunning, [](const DomainSnapshot& s) {
    return s.intent_progress.find("attempt 2:") != std::string::npos;
  }));
  ASSERT_TRUE(actor->Rollback({}, false, Soon()).ok());
  EXPECT_EQ(actor->Snapshot().intent_progress, "");
  Booting(*guest_, false);
  absl::SleepFor(absl::Milliseconds(150));
  EXPECT_EQ(actor->Snapshot().state, DomainState::kUnpatched);
  EXPECT_EQ(IntentEntries("stopped applying it"), 1);
  EXPECT_TRUE(hypervisor_.IntentXml(kRunning).has_value()) << "rollback keeps the intent";
}

TEST_F(IntentTest, ADomainGoingAwayEndsTheAttempts) {
  MakeRegistry();
  hypervisor_.SetIntentXml(kRunning, "<intent strategy=\"mmio\"/>");
  Booting(*guest_, true);
  auto actor = Actor(kRunning);
  hypervisor_.EmitLifecycle(kRunning, LifecycleKind::kRebooted);
  ASSERT_TRUE(
      WaitFor(kRunning, [](const DomainSnapshot& s) { return !s.intent_progress.empty(); }));
  hypervisor_.EmitLifecycle(kRunning, LifecycleKind::kDestroyed);
  ASSERT_TRUE(WaitFor(kRunning, [](const DomainSnapshot& s) {
    return s.state == DomainState::kGone && s.intent_progress.empty();
  }));
}

TEST_F(IntentTest, StartOfADomainTprdHasNotMetAppliesItsIntent) {
  MakeRegistry();
  hypervisor_.SetIntentXml(kStopped, "<intent strategy=\"exact\" discovery_budget_ms=\"2000\"/>");
  fakes::AddFakeCandidates(*stopped_, 2);
  hypervisor_.EmitLifecycle(kStopped, LifecycleKind::kStarted);
  ASSERT_TRUE(
      WaitFor(kStopped, [](const DomainSnapshot& s) { return s.state == DomainState::kPatched; }));
  std::lock_guard<std::mutex> lock(stopped_->mu);
  EXPECT_EQ(stopped_->chosen_strategy, engine::Strategy::kExact);
}

TEST_F(IntentTest, StartOfADomainWithoutAnIntentChangesNothing) {
  MakeRegistry();
  hypervisor_.EmitLifecycle(kStopped, LifecycleKind::kStarted);
  ASSERT_TRUE(WaitFor(kStopped, [](const DomainSnapshot& s) {
    return s.domain.running && s.intent_progress.empty();
  }));
  absl::SleepFor(absl::Milliseconds(50));
  std::lock_guard<std::mutex> lock(stopped_->mu);
  // The start looks for a blob a restore may have brought (an adopt that finds none); it never
  // enables.
  EXPECT_EQ(stopped_->enables, 0);
  EXPECT_EQ(IntentEntries(""), 0);
}

TEST_F(IntentTest, StartsAndRebootsOutsideTheAdoptGlobAreLeftToAnotherTprd) {
  MakeRegistry();
  ASSERT_TRUE(registry_->AdoptRunning(Soon(), "test-*").ok());
  hypervisor_.SetIntentXml(kStopped, "<intent strategy=\"mmio\"/>");
  fakes::AddFakeCandidates(*stopped_, 2);
  hypervisor_.EmitLifecycle(kStopped, LifecycleKind::kStarted);
  // Also a domain this tprd has an actor for (an operator's command made it).
  auto actor = Actor(kRunning);
  ASSERT_TRUE(actor->Enable(EnableOptions{}, Soon(), kMmio).ok());
  hypervisor_.EmitLifecycle(kRunning, LifecycleKind::kRebooted);
  ASSERT_TRUE(WaitFor(kRunning,
                      [](const DomainSnapshot& s) { return s.state == DomainState::kUnpatched; }));
  absl::SleepFor(absl::Milliseconds(150));
  EXPECT_EQ(actor->Snapshot().state, DomainState::kUnpatched);
  {
    std::lock_guard<std::mutex> lock(guest_->mu);
    EXPECT_EQ(guest_->enables, 1) << "only the operator's";
  }
  std::lock_guard<std::mutex> lock(stopped_->mu);
  EXPECT_EQ(stopped_->enables, 0);
}

// What tprd finds at its start: a guest without the blob (it booted while tprd was away) gets
// its intent; one holding the blob with nothing patched was rolled back, and stays so.
TEST_F(IntentTest, TprdStartAppliesTheIntentOnlyToGuestsWithoutTheBlob) {
  auto rolled_back =
      hypervisor_.AddDomain("winxp-02", "aaaaaaaa-0000-0000-0000-000000000003", true);
  fakes::AddFakeCandidates(*rolled_back, 2);
  {
    std::lock_guard<std::mutex> lock(rolled_back->mu);
    rolled_back->blob_present = true;
  }
  hypervisor_.SetIntentXml(kRunning, "<intent strategy=\"mmio\"/>");
  hypervisor_.SetIntentXml("winxp-02", "<intent strategy=\"mmio\"/>");
  MakeRegistry();
  auto adopted = registry_->AdoptRunning(Soon());
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  EXPECT_EQ(*adopted, 0);
  ASSERT_TRUE(
      WaitFor(kRunning, [](const DomainSnapshot& s) { return s.state == DomainState::kPatched; }));
  absl::SleepFor(absl::Milliseconds(100));
  std::lock_guard<std::mutex> lock(rolled_back->mu);
  EXPECT_EQ(rolled_back->enables, 0);
}

TEST_F(IntentTest, GarbledOrHostileIntentIsRefusedWithAClearErrorAndNothingIsPatched) {
  MakeRegistry();
  const std::string garbled[] = {
      "<intent strategy=\"warp\"/>",
      "<intent strategy=\"mmio\"><script/></intent>",
      std::string("<intent strategy=\"\0\xff\x1b[2J\"/>", 24),
      std::string(100000, '<'),
      "",
  };
  auto actor = Actor(kRunning);
  for (const std::string& xml : garbled) {
    hypervisor_.SetIntentXml(kRunning, xml);
    hypervisor_.EmitLifecycle(kRunning, LifecycleKind::kRebooted);
    ASSERT_TRUE(WaitFor(kRunning, [](const DomainSnapshot& s) {
      return s.last_error.find("intent metadata") != std::string::npos;
    })) << actor->Snapshot().last_error;
    EXPECT_THAT(actor->Snapshot().last_error, HasSubstr("is not valid"));
    EXPECT_EQ(actor->Snapshot().state, DomainState::kUnpatched);

    auto described = registry_->Describe(kRunning);
    ASSERT_TRUE(described.ok());
    EXPECT_EQ(described->intent, std::nullopt);
    EXPECT_THAT(described->intent_error, HasSubstr("is not valid"));
    EXPECT_LT(described->intent_error.size(), 600u);
    // Clear it for the next round: the next reboot's error must be its own.
    hypervisor_.SetIntentXml(kRunning, std::nullopt);
    hypervisor_.EmitLifecycle(kRunning, LifecycleKind::kRebooted);
    ASSERT_TRUE(WaitFor(kRunning, [](const DomainSnapshot& s) { return s.last_error.empty(); }));
  }
  std::lock_guard<std::mutex> lock(guest_->mu);
  EXPECT_EQ(guest_->enables, 0);
}

}  // namespace
}  // namespace tprd::daemon

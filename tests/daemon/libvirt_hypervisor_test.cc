// LibvirtHypervisor over FakeLibvirtConnection: which domains count as running, lookups, which
// libvirt events become lifecycle events for the daemon (and which do not), and the refusal to
// open a session on a domain that is not running. No QEMU: OpenController is only asked to
// refuse.
#include "daemon/domain/libvirt_hypervisor.h"

#include <libvirt/libvirt.h>

#include <memory>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_libvirt_connection.h"

namespace tprd::daemon {
namespace {

using backend::LibvirtDomainEvent;
using backend::LibvirtDomainState;
using ::testing::HasSubstr;

constexpr char kUuid[] = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";

class LibvirtHypervisorTest : public ::testing::Test {
 protected:
  LibvirtHypervisorTest() {
    auto connection = std::make_unique<backend::FakeLibvirtConnection>();
    fake_ = connection.get();
    fake_->AddDomain({"xp", kUuid, 3, LibvirtDomainState::kRunning, 0});
    fake_->AddDomain(
        {"off", "11111111-2222-3333-4444-555555555555", -1, LibvirtDomainState::kShutoff, 0});
    hypervisor_ =
        std::make_unique<LibvirtHypervisor>(std::move(connection), EngineControllerOptions{});
    hypervisor_->SetLifecycleHandler(
        [this](const LifecycleEvent& event) { events_.push_back(event); });
  }

  LibvirtDomainEvent Event(LibvirtDomainEvent::Kind kind) {
    LibvirtDomainEvent event;
    event.kind = kind;
    event.uuid = kUuid;
    event.name = "xp";
    return event;
  }

  backend::FakeLibvirtConnection* fake_ = nullptr;
  std::unique_ptr<LibvirtHypervisor> hypervisor_;
  std::vector<LifecycleEvent> events_;
};

TEST_F(LibvirtHypervisorTest, ListsDomainsWithWhetherTheyRun) {
  fake_->SetState(kUuid, LibvirtDomainState::kPaused, backend::kPausedReasonUnknown);
  absl::StatusOr<std::vector<DomainInfo>> domains = hypervisor_->ListDomains();
  ASSERT_TRUE(domains.ok()) << domains.status();
  ASSERT_EQ(domains->size(), 2u);
  for (const DomainInfo& d : *domains) {
    // A paused domain (a gdbstub stop looks like one) still runs for tprd: it has a guest.
    EXPECT_EQ(d.running, d.name == "xp") << d.name;
  }
  absl::StatusOr<DomainInfo> found = hypervisor_->LookupDomain("xp");
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_EQ(found->uuid, kUuid);
  EXPECT_EQ(found->id, 3);
  EXPECT_FALSE(hypervisor_->LookupDomain("nosuch").ok());
}

TEST_F(LibvirtHypervisorTest, TurnsLibvirtEventsIntoLifecycleEvents) {
  const std::vector<std::pair<LibvirtDomainEvent::Kind, LifecycleKind>> mapped = {
      {LibvirtDomainEvent::Kind::kStarted, LifecycleKind::kStarted},
      {LibvirtDomainEvent::Kind::kShutdown, LifecycleKind::kShutdown},
      {LibvirtDomainEvent::Kind::kStopped, LifecycleKind::kDestroyed},
      {LibvirtDomainEvent::Kind::kCrashed, LifecycleKind::kCrashed},
      {LibvirtDomainEvent::Kind::kRebooted, LifecycleKind::kRebooted},
      {LibvirtDomainEvent::Kind::kMigratedAway, LifecycleKind::kMigrated},
      {LibvirtDomainEvent::Kind::kResumedAfterMigration, LifecycleKind::kArrived},
  };
  for (const auto& [in, out] : mapped) {
    events_.clear();
    fake_->EmitEvent(Event(in));
    ASSERT_EQ(events_.size(), 1u) << static_cast<int>(in);
    EXPECT_EQ(events_[0].kind, out);
    EXPECT_EQ(events_[0].domain.uuid, kUuid);
    EXPECT_EQ(events_[0].domain.name, "xp");
    // After a start, a reboot or an arrival there is a guest to work on; after the others none.
    EXPECT_EQ(events_[0].domain.running, out == LifecycleKind::kStarted ||
                                             out == LifecycleKind::kRebooted ||
                                             out == LifecycleKind::kArrived);
  }
}

TEST_F(LibvirtHypervisorTest, SuspendAndMigrationStepsAreNotLifecycleChanges) {
  for (LibvirtDomainEvent::Kind kind :
       {LibvirtDomainEvent::Kind::kSuspended, LibvirtDomainEvent::Kind::kMigrating,
        LibvirtDomainEvent::Kind::kOther}) {
    fake_->EmitEvent(Event(kind));
  }
  EXPECT_TRUE(events_.empty());
}

// A save's stop (virsh save, managedsave, libvirt-guests at host shutdown) is not a destroy: the
// guest's memory, tprd's blob in it, comes back at the restore.
TEST_F(LibvirtHypervisorTest, AStopForASaveIsASaveNotADestroy) {
  LibvirtDomainEvent saved = Event(LibvirtDomainEvent::Kind::kStopped);
  saved.libvirt_detail = VIR_DOMAIN_EVENT_STOPPED_SAVED;
  fake_->EmitEvent(saved);
  LibvirtDomainEvent destroyed = Event(LibvirtDomainEvent::Kind::kStopped);
  destroyed.libvirt_detail = VIR_DOMAIN_EVENT_STOPPED_DESTROYED;
  fake_->EmitEvent(destroyed);
  ASSERT_EQ(events_.size(), 2u);
  EXPECT_EQ(events_[0].kind, LifecycleKind::kSaved);
  EXPECT_FALSE(events_[0].domain.running);
  EXPECT_EQ(events_[1].kind, LifecycleKind::kDestroyed);
}

// A resume ends a pause tprd let go for (a save, a snapshot): the actor filters the others.
TEST_F(LibvirtHypervisorTest, AResumeIsPassedOnAsARunningDomain) {
  fake_->EmitEvent(Event(LibvirtDomainEvent::Kind::kResumed));
  ASSERT_EQ(events_.size(), 1u);
  EXPECT_EQ(events_[0].kind, LifecycleKind::kResumed);
  EXPECT_TRUE(events_[0].domain.running);
}

TEST_F(LibvirtHypervisorTest, RefusesASessionOnADomainThatDoesNotRun) {
  DomainInfo off;
  off.name = "off";
  off.running = false;
  absl::StatusOr<std::unique_ptr<DomainController>> controller =
      hypervisor_->OpenController(off, nullptr);
  ASSERT_FALSE(controller.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(controller.status())) << controller.status();
  EXPECT_THAT(std::string(controller.status().message()), HasSubstr("off is not running"));
}

// The intent goes to libvirt under tprd's namespace and prefix, and comes back as libvirt holds it.
TEST_F(LibvirtHypervisorTest, IntentIsTheMetadataElementInTprdsNamespace) {
  auto none = hypervisor_->ReadIntentXml(kUuid);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, std::nullopt);
  ASSERT_TRUE(hypervisor_->WriteIntentXml(kUuid, "<intent strategy=\"cr8\"/>").ok());
  EXPECT_EQ(fake_->metadata_prefix(kUuid, "https://github.com/tprd/tprd/intent/1"), "tprd");
  auto read = hypervisor_->ReadIntentXml(kUuid);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, "<intent strategy=\"cr8\"/>");
  ASSERT_TRUE(hypervisor_->WriteIntentXml(kUuid, std::nullopt).ok());
  EXPECT_EQ(*hypervisor_->ReadIntentXml(kUuid), std::nullopt);

  fake_->FailNextMetadataCall(absl::UnavailableError("libvirtd restarting"));
  EXPECT_TRUE(absl::IsUnavailable(hypervisor_->ReadIntentXml(kUuid).status()));
  EXPECT_TRUE(absl::IsNotFound(
      hypervisor_->ReadIntentXml("99999999-9999-9999-9999-999999999999").status()));
}

}  // namespace
}  // namespace tprd::daemon

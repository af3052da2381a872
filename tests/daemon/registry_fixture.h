// The world of the actor and registry tests: FakeHypervisor with two domains (winxp-01 running,
// with three patchable candidates; winxp-off shut off), a journal in a test directory, an event
// bus, and a DomainRegistry over them made with the test's actor options.
#ifndef TPRD_TESTS_DAEMON_REGISTRY_FIXTURE_H_
#define TPRD_TESTS_DAEMON_REGISTRY_FIXTURE_H_

#include <memory>
#include <string>

#include "daemon/actor/domain_actor.h"
#include "daemon/actor/domain_registry.h"
#include "gtest/gtest.h"
#include "tests/daemon/test_dir.h"
#include "tests/fakes/fake_domain_controller.h"

namespace tprd::daemon {

class RegistryFixture : public ::testing::Test {
 protected:
  RegistryFixture() {
    guest_ = hypervisor_.AddDomain("winxp-01", "aaaaaaaa-0000-0000-0000-000000000001", true);
    fakes::AddFakeCandidates(*guest_, 3);
    stopped_ = hypervisor_.AddDomain("winxp-off", "aaaaaaaa-0000-0000-0000-000000000002", false);
    auto journal = Journal::Open(dir_.File(Journal::kFileName));
    EXPECT_TRUE(journal.ok()) << journal.status();
    if (journal.ok()) journal_ = *std::move(journal);
  }

  void MakeRegistry(const DomainActorOptions& options) {
    // The old registry first: its end clears the hypervisor's lifecycle handler.
    registry_.reset();
    registry_ = std::make_unique<DomainRegistry>(&hypervisor_, journal_.get(), &bus_, options);
  }

  std::shared_ptr<DomainActor> Actor(const std::string& name) {
    auto actor = registry_->ActorFor(name);
    EXPECT_TRUE(actor.ok()) << actor.status();
    return actor.ok() ? *actor : nullptr;
  }

  TestDir dir_;
  fakes::FakeHypervisor hypervisor_;
  EventBus bus_;
  std::unique_ptr<Journal> journal_;
  std::shared_ptr<fakes::FakeGuest> guest_;
  std::shared_ptr<fakes::FakeGuest> stopped_;
  std::unique_ptr<DomainRegistry> registry_;
};

}  // namespace tprd::daemon

#endif  // TPRD_TESTS_DAEMON_REGISTRY_FIXTURE_H_

// tprd's daemon stack in this process, over FakeHypervisor / FakeDomainController: journal, event
// bus, the registry of domain actors, the gRPC service and the API server on a unix socket in a
// test directory. The tests of tprctl and of the service talk to it through a real socket.
#ifndef TPRD_TESTS_DAEMON_IN_PROCESS_TPRD_H_
#define TPRD_TESTS_DAEMON_IN_PROCESS_TPRD_H_

#include <memory>
#include <string>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "daemon/actor/domain_registry.h"
#include "daemon/events/event_bus.h"
#include "daemon/journal/journal.h"
#include "daemon/server/api_server.h"
#include "daemon/service/tprd_service.h"
#include "gtest/gtest.h"
#include "tests/daemon/test_dir.h"
#include "tests/fakes/fake_domain_controller.h"

namespace tprd::daemon {

class InProcessTprd {
 public:
  // Two domains: winxp-01 (running, three fake candidates and one look-alike tprd cannot patch)
  // and winxp-off (shut off). Uses ASSERT: call from SetUp.
  void Start() {
    guest = hypervisor.AddDomain("winxp-01", "aaaaaaaa-0000-0000-0000-000000000001", true);
    fakes::AddFakeCandidates(*guest, 3);
    guest->unpatchable.push_back(LookAlike());
    hypervisor.AddDomain("winxp-off", "aaaaaaaa-0000-0000-0000-000000000002", false);
    auto opened = Journal::Open(dir.File(Journal::kFileName));
    ASSERT_TRUE(opened.ok()) << opened.status();
    journal = *std::move(opened);
    registry = std::make_unique<DomainRegistry>(&hypervisor, journal.get(), &bus,
                                                DomainActorOptions{absl::Milliseconds(50)});
    TprdServiceOptions options;
    options.watch_check_interval = absl::Milliseconds(20);
    service = std::make_unique<TprdService>(registry.get(), &bus, options);
    ApiServerOptions server_options;
    server_options.socket_path = dir.File("run/tprd.sock");
    auto started = ApiServer::Start(server_options, service.get());
    ASSERT_TRUE(started.ok()) << started.status();
    server = *std::move(started);
  }

  void Stop() {
    if (service) service->StopStreams();
    if (server) server->Shutdown(absl::Now() + absl::Seconds(5));
  }

  // `mov eax, [0xFFFE0080+eiz*1]`: reads the TPR, but through SIB addressing tprd does not patch.
  static engine::ManagedSite LookAlike() {
    engine::ManagedSite report;
    report.site.id = 100;
    report.site.address = 0x80700010;
    report.site.form = engine::Form::kMovRegFromMem;
    report.site.original = {0x8B, 0x04, 0x25, 0x80, 0x00, 0xFE, 0xFF};
    report.disassembly = "mov eax, dword ptr [0xFFFE0080+eiz*1]";
    report.note = "SIB addressing";
    return report;
  }

  TestDir dir;
  fakes::FakeHypervisor hypervisor;
  std::shared_ptr<fakes::FakeGuest> guest;
  EventBus bus;
  std::unique_ptr<Journal> journal;
  std::unique_ptr<DomainRegistry> registry;
  std::unique_ptr<TprdService> service;
  std::unique_ptr<ApiServer> server;
};

}  // namespace tprd::daemon

#endif  // TPRD_TESTS_DAEMON_IN_PROCESS_TPRD_H_

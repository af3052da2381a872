// The gRPC service over a real channel on a unix socket in a temp dir, against
// FakeHypervisor / FakeDomainController.
#include "daemon/service/tprd_service.h"

#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <sys/stat.h>

#include <thread>

#include "absl/synchronization/notification.h"
#include "daemon/actor/domain_registry.h"
#include "daemon/server/api_server.h"
#include "daemon/service/grpc_status.h"
#include "daemon/service/proto_convert.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/daemon/in_process_tprd.h"
#include "tests/daemon/test_dir.h"
#include "tests/fakes/fake_domain_controller.h"
#include "tprd/v1/tprd.grpc.pb.h"

namespace tprd::daemon {
namespace {

using ::testing::HasSubstr;

class TprdServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tprd_.Start();
    if (::testing::Test::HasFatalFailure()) return;
    channel_ = grpc::CreateChannel(tprd_.server->address(), grpc::InsecureChannelCredentials());
    stub_ = tprd::v1::Tprd::NewStub(channel_);
  }

  void TearDown() override { tprd_.Stop(); }

  // Every client call carries a deadline.
  static void Deadline(grpc::ClientContext* context, int seconds = 10) {
    context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
  }

  grpc::Status Enable(const std::string& domain, tprd::v1::EnablePatchingResponse* response,
                      tprd::v1::Strategy strategy = tprd::v1::STRATEGY_AUTO) {
    grpc::ClientContext context;
    Deadline(&context);
    tprd::v1::EnablePatchingRequest request;
    request.set_domain(domain);
    request.set_strategy(strategy);
    return stub_->EnablePatching(&context, request, response);
  }

  using Stub = tprd::v1::Tprd::Stub;
  // One unary call with a deadline.
  template <typename Request, typename Response>
  grpc::Status Call(grpc::Status (Stub::*method)(grpc::ClientContext*, const Request&, Response*),
                    const Request& request, Response* response) {
    grpc::ClientContext context;
    Deadline(&context);
    return (stub_.get()->*method)(&context, request, response);
  }

  InProcessTprd tprd_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<tprd::v1::Tprd::Stub> stub_;
};

TEST_F(TprdServiceTest, SocketIsGroupOnlyInAPrivateDirectory) {
  struct stat info;
  ASSERT_EQ(::stat(tprd_.server->socket_path().c_str(), &info), 0);
  EXPECT_TRUE(S_ISSOCK(info.st_mode));
  EXPECT_EQ(info.st_mode & 0777, 0660u);
  ASSERT_EQ(::stat(tprd_.dir.File("run").c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0777, 0750u);
}

TEST_F(TprdServiceTest, ListDomainsShowsEveryDomainWithItsState) {
  grpc::ClientContext context;
  Deadline(&context);
  tprd::v1::ListDomainsResponse response;
  ASSERT_TRUE(stub_->ListDomains(&context, {}, &response).ok());
  ASSERT_EQ(response.domains_size(), 2);
  EXPECT_EQ(response.domains(0).domain().name(), "winxp-01");
  EXPECT_TRUE(response.domains(0).running());
  EXPECT_EQ(response.domains(0).state(), tprd::v1::DOMAIN_STATE_UNPATCHED);
  EXPECT_EQ(response.domains(1).domain().name(), "winxp-off");
  EXPECT_EQ(response.domains(1).domain().id(), -1);
  EXPECT_EQ(response.domains(1).state(), tprd::v1::DOMAIN_STATE_GONE);
}

TEST_F(TprdServiceTest, EnableThenStatusSitesAndRollback) {
  tprd::v1::EnablePatchingResponse enabled;
  ASSERT_TRUE(Enable("winxp-01", &enabled).ok());
  EXPECT_EQ(enabled.sites_size(), 3);
  EXPECT_EQ(enabled.status().state(), tprd::v1::DOMAIN_STATE_PATCHED);
  EXPECT_EQ(enabled.status().strategy(), tprd::v1::STRATEGY_MMIO);

  {
    grpc::ClientContext context;
    Deadline(&context);
    tprd::v1::GetDomainRequest request;
    request.set_domain("aaaaaaaa-0000-0000-0000-000000000001");  // by UUID
    tprd::v1::DomainStatus status;
    ASSERT_TRUE(stub_->GetDomain(&context, request, &status).ok());
    EXPECT_EQ(status.domain().name(), "winxp-01");
    EXPECT_EQ(status.sites_applied(), 3u);
    EXPECT_GT(status.tpr_accesses_per_second_before(), status.tpr_accesses_per_second_after());
    // The counts and rates behind them (the fake's).
    EXPECT_TRUE(status.rates_sampled());
    EXPECT_EQ(status.tpr_accesses_per_second_before(), 25000);
    EXPECT_EQ(status.tpr_accesses_per_second_after(), 120);
    EXPECT_EQ(status.tpr_accesses_per_second_without_apic(), 30000);
    EXPECT_EQ(status.trap_stops_per_second(), 2);
    EXPECT_EQ(status.handler_accesses_without_apic(), 90000u);
    EXPECT_EQ(status.handler_accesses_to_apic(), 300u);
    EXPECT_EQ(status.unpatched_accesses_seen(), 60u);
    EXPECT_EQ(status.learning_window_hits(), 400u);
    EXPECT_DOUBLE_EQ(status.learning_window_run_seconds(), 0.016);
  }
  {
    grpc::ClientContext context;
    Deadline(&context);
    tprd::v1::ListSitesRequest request;
    request.set_domain("1");  // by ID
    tprd::v1::ListSitesResponse sites;
    ASSERT_TRUE(stub_->ListSites(&context, request, &sites).ok());
    ASSERT_EQ(sites.sites_size(), 3);
    const tprd::v1::Site& site = sites.sites(1);
    EXPECT_EQ(site.id(), 1u);
    EXPECT_EQ(site.form(), tprd::v1::FORM_MOV_MEM_FROM_REG);
    EXPECT_EQ(site.register_(), "ecx");
    EXPECT_EQ(site.original(), std::string("\x89\x0D\x80\x00\xFE\xFF", 6));
    EXPECT_EQ(site.patched().size(), site.original().size());
    EXPECT_EQ(site.state(), tprd::v1::SITE_STATE_APPLIED);
    EXPECT_THAT(site.disassembly(), HasSubstr("ecx"));
  }
  {
    grpc::ClientContext context;
    Deadline(&context);
    tprd::v1::RollbackRequest request;
    request.set_domain("winxp-01");
    tprd::v1::RollbackResponse rolled;
    ASSERT_TRUE(stub_->Rollback(&context, request, &rolled).ok());
    EXPECT_EQ(rolled.rolled_back_size(), 3);
    EXPECT_EQ(rolled.status().state(), tprd::v1::DOMAIN_STATE_UNPATCHED);
  }
}

// The intent: recorded by an enable that writes (not a dry run, not a transient one), kept by
// rollback, shown by GetDomain and ListDomains, forgotten by DisablePatching.
TEST_F(TprdServiceTest, EnableRecordsTheIntentRollbackKeepsItDisableRemovesIt) {
  const auto enable = [&](bool dry_run, bool transient, uint32_t budget_ms) {
    tprd::v1::EnablePatchingRequest request;
    request.set_domain("winxp-01");
    request.set_strategy(tprd::v1::STRATEGY_MMIO);
    request.set_dry_run(dry_run);
    request.set_transient(transient);
    request.set_discovery_budget_ms(budget_ms);
    tprd::v1::EnablePatchingResponse response;
    return Call(&Stub::EnablePatching, request, &response);
  };
  ASSERT_TRUE(enable(/*dry_run=*/true, false, 0).ok());
  ASSERT_TRUE(enable(false, /*transient=*/true, 0).ok());
  EXPECT_EQ(tprd_.hypervisor.IntentXml("winxp-01"), std::nullopt);
  ASSERT_TRUE(enable(false, false, 4000).ok());
  EXPECT_EQ(tprd_.hypervisor.IntentXml("winxp-01"),
            "<intent strategy=\"mmio\" discovery_budget_ms=\"4000\"/>");

  tprd::v1::GetDomainRequest get;
  get.set_domain("winxp-01");
  tprd::v1::DomainStatus status;
  ASSERT_TRUE(Call(&Stub::GetDomain, get, &status).ok());
  EXPECT_TRUE(status.has_intent());
  EXPECT_EQ(status.intent().strategy(), tprd::v1::STRATEGY_MMIO);
  EXPECT_EQ(status.intent().discovery_budget_ms(), 4000u);

  tprd::v1::RollbackRequest rollback;
  rollback.set_domain("winxp-01");
  tprd::v1::RollbackResponse rolled;
  ASSERT_TRUE(Call(&Stub::Rollback, rollback, &rolled).ok());
  EXPECT_TRUE(rolled.status().has_intent()) << "rollback keeps the intent";

  ASSERT_TRUE(enable(false, false, 0).ok());
  tprd::v1::DisablePatchingRequest disable;
  disable.set_domain("winxp-01");
  tprd::v1::DisablePatchingResponse disabled;
  ASSERT_TRUE(Call(&Stub::DisablePatching, disable, &disabled).ok());
  EXPECT_TRUE(disabled.intent_removed());
  EXPECT_EQ(disabled.rollback().rolled_back_size(), 3);
  EXPECT_EQ(disabled.rollback().status().state(), tprd::v1::DOMAIN_STATE_UNPATCHED);
  EXPECT_FALSE(disabled.rollback().status().has_intent());
  EXPECT_EQ(tprd_.hypervisor.IntentXml("winxp-01"), std::nullopt);

  disable.set_domain("no-such-domain");
  EXPECT_EQ(Call(&Stub::DisablePatching, disable, &disabled).error_code(),
            grpc::StatusCode::NOT_FOUND);
}

TEST_F(TprdServiceTest, ListDomainsShowsARefusedIntentAsAnError) {
  tprd_.hypervisor.SetIntentXml("winxp-off", "<intent strategy=\"turbo\"/>");
  tprd::v1::ListDomainsResponse response;
  ASSERT_TRUE(Call(&Stub::ListDomains, tprd::v1::ListDomainsRequest(), &response).ok());
  ASSERT_EQ(response.domains_size(), 2);
  EXPECT_FALSE(response.domains(0).has_intent());
  EXPECT_EQ(response.domains(0).intent_error(), "");
  EXPECT_FALSE(response.domains(1).has_intent());
  EXPECT_THAT(response.domains(1).intent_error(), HasSubstr("'turbo'"));
}

TEST_F(TprdServiceTest, ScanReportsCandidatesAndLookAlikesWithoutWriting) {
  grpc::ClientContext context;
  Deadline(&context);
  tprd::v1::ScanRequest request;
  request.set_domain("winxp-01");
  tprd::v1::ScanResponse response;
  ASSERT_TRUE(stub_->Scan(&context, request, &response).ok());
  ASSERT_EQ(response.candidates_size(), 4);
  EXPECT_TRUE(response.candidates(0).patchable());
  EXPECT_FALSE(response.candidates(3).patchable());
  EXPECT_EQ(response.candidates(3).reason(), "SIB addressing");
  std::lock_guard<std::mutex> lock(tprd_.guest->mu);
  EXPECT_FALSE(tprd_.guest->blob_present);
}

TEST_F(TprdServiceTest, ErrorsMapToCodesWithActionableMessages) {
  tprd::v1::EnablePatchingResponse response;
  grpc::Status unknown = Enable("no-such-domain", &response);
  EXPECT_EQ(unknown.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(unknown.error_message(), HasSubstr("no-such-domain"));

  grpc::Status stopped = Enable("winxp-off", &response);
  EXPECT_EQ(stopped.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_THAT(stopped.error_message(), HasSubstr("not running"));

  EXPECT_EQ(Enable("", &response).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(Enable("winxp-01", &response, static_cast<tprd::v1::Strategy>(77)).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  tprd_.guest->enable_error = absl::FailedPreconditionError("no KPCR found on vCPU 0");
  grpc::Status refused = Enable("winxp-01", &response);
  EXPECT_EQ(refused.error_code(), grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(refused.error_message(), "no KPCR found on vCPU 0");
  tprd_.guest->enable_error = absl::OkStatus();

  {
    grpc::ClientContext context;
    Deadline(&context);
    tprd::v1::RollbackRequest request;
    request.set_domain("winxp-01");
    request.add_site_ids(12345);
    tprd::v1::RollbackResponse rolled;
    EXPECT_EQ(stub_->Rollback(&context, request, &rolled).error_code(),
              grpc::StatusCode::NOT_FOUND);
  }

  tprd_.hypervisor.SetUnavailable(true);
  grpc::ClientContext context;
  Deadline(&context);
  tprd::v1::ListDomainsResponse domains;
  grpc::Status down = stub_->ListDomains(&context, {}, &domains);
  EXPECT_EQ(down.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_THAT(down.error_message(), HasSubstr("libvirt"));
}

TEST(GrpcStatusTest, EveryAbslCodeKeepsItsMeaning) {
  EXPECT_EQ(ToGrpcStatus(absl::OkStatus()).error_code(), grpc::StatusCode::OK);
  EXPECT_EQ(ToGrpcStatus(absl::NotFoundError("x")).error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_EQ(ToGrpcStatus(absl::FailedPreconditionError("x")).error_code(),
            grpc::StatusCode::FAILED_PRECONDITION);
  EXPECT_EQ(ToGrpcStatus(absl::InvalidArgumentError("x")).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(ToGrpcStatus(absl::UnavailableError("x")).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(ToGrpcStatus(absl::DeadlineExceededError("x")).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  EXPECT_EQ(ToGrpcStatus(absl::UnknownError("x")).error_code(), grpc::StatusCode::UNKNOWN);
  EXPECT_EQ(ToGrpcStatus(absl::NotFoundError("site 3 is gone")).error_message(), "site 3 is gone");
}

TEST_F(TprdServiceTest, ReadsAnswerWhileTheActorIsBusyAndConcurrentCallsAllComplete) {
  tprd_.guest->hold_enable = true;
  grpc::Status first_status;
  std::thread first([&] {
    tprd::v1::EnablePatchingResponse response;
    first_status = Enable("winxp-01", &response);
  });
  ASSERT_TRUE(tprd_.guest->WaitUntil([&] { return tprd_.guest->enable_entered; }));

  constexpr int kCallers = 8;
  std::vector<std::thread> callers;
  std::atomic<int> busy_seen{0}, refused_second_enable{0};
  for (int i = 0; i < kCallers; ++i) {
    callers.emplace_back([&, i] {
      if (i % 2 == 0) {
        grpc::ClientContext context;
        Deadline(&context, 5);
        tprd::v1::GetDomainRequest request;
        request.set_domain("winxp-01");
        tprd::v1::DomainStatus status;
        if (stub_->GetDomain(&context, request, &status).ok() && status.busy_with() == "enable" &&
            status.state() == tprd::v1::DOMAIN_STATE_PATCHING) {
          ++busy_seen;
        }
      } else {
        tprd::v1::EnablePatchingResponse response;
        if (Enable("winxp-01", &response).error_code() == grpc::StatusCode::FAILED_PRECONDITION) {
          ++refused_second_enable;
        }
      }
    });
  }
  for (auto& caller : callers) caller.join();
  EXPECT_EQ(busy_seen.load(), kCallers / 2) << "status must not wait for the busy actor";
  EXPECT_EQ(refused_second_enable.load(), kCallers / 2);

  tprd_.guest->ReleaseEnable();
  first.join();
  EXPECT_TRUE(first_status.ok()) << first_status.error_message();
}

TEST_F(TprdServiceTest, ScanBehindABusyActorHitsTheCallDeadline) {
  tprd_.guest->hold_enable = true;
  std::thread first([&] {
    tprd::v1::EnablePatchingResponse response;
    EXPECT_TRUE(Enable("winxp-01", &response).ok());
  });
  ASSERT_TRUE(tprd_.guest->WaitUntil([&] { return tprd_.guest->enable_entered; }));
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
  tprd::v1::ScanRequest request;
  request.set_domain("winxp-01");
  tprd::v1::ScanResponse response;
  EXPECT_EQ(stub_->Scan(&context, request, &response).error_code(),
            grpc::StatusCode::DEADLINE_EXCEEDED);
  tprd_.guest->ReleaseEnable();
  first.join();
}

TEST_F(TprdServiceTest, WatchEventsStreamsSiteAndLifecycleEvents) {
  grpc::ClientContext context;
  Deadline(&context, 20);
  tprd::v1::WatchEventsRequest request;
  request.set_domain("winxp-01");
  auto reader = stub_->WatchEvents(&context, request);
  // The server sends headers once subscribed: events published after this are not missed.
  reader->WaitForInitialMetadata();

  tprd::v1::EnablePatchingResponse enabled;
  ASSERT_TRUE(Enable("winxp-01", &enabled).ok());
  tprd_.hypervisor.EmitLifecycle("winxp-01", LifecycleKind::kRebooted);

  int site_events = 0;
  bool rebooted = false;
  tprd::v1::Event event;
  while (!rebooted && reader->Read(&event)) {
    EXPECT_EQ(event.domain().name(), "winxp-01");
    if (event.kind() == tprd::v1::Event::KIND_SITE) ++site_events;
    if (event.kind() == tprd::v1::Event::KIND_LIFECYCLE) {
      EXPECT_EQ(event.lifecycle(), "rebooted");
      rebooted = true;
    }
  }
  EXPECT_TRUE(rebooted) << "stream ended before the reboot event";
  EXPECT_EQ(site_events, 3);
  context.TryCancel();
  reader->Finish();
}

TEST_F(TprdServiceTest, WatchEventsForAnUnknownDomainFailsAtOnce) {
  grpc::ClientContext context;
  Deadline(&context);
  tprd::v1::WatchEventsRequest request;
  request.set_domain("ghost");
  auto reader = stub_->WatchEvents(&context, request);
  tprd::v1::Event event;
  EXPECT_FALSE(reader->Read(&event));
  EXPECT_EQ(reader->Finish().error_code(), grpc::StatusCode::NOT_FOUND);
}

TEST_F(TprdServiceTest, HealthServiceReportsServing) {
  // grpc.health.v1.Health/Check with an empty request; SERVING is field 1 = 1 (bytes 08 01).
  grpc::GenericStub generic(channel_);
  grpc::ClientContext context;
  Deadline(&context);
  grpc::ByteBuffer request;  // empty HealthCheckRequest
  grpc::Slice empty("", 0);
  request = grpc::ByteBuffer(&empty, 1);
  grpc::ByteBuffer response;
  absl::Notification done;
  grpc::Status status;
  generic.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                    &response, [&](grpc::Status s) {
                      status = std::move(s);
                      done.Notify();
                    });
  ASSERT_TRUE(done.WaitForNotificationWithTimeout(absl::Seconds(10)));
  ASSERT_TRUE(status.ok()) << status.error_message();
  std::vector<grpc::Slice> slices;
  ASSERT_TRUE(response.Dump(&slices).ok());
  std::string bytes;
  for (const auto& slice : slices)
    bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
  EXPECT_EQ(bytes, std::string("\x08\x01", 2));
}

// Every engine form has the proto value of its number (the guest's site table fixes both), and
// tprctl's word for it (the enum name, lower case, without FORM_) is the engine's name, which the
// journal and tprctl decode use.
TEST(ProtoConvertTest, EveryFormHasItsProtoNumberAndName) {
  for (int value = 1; value <= static_cast<int>(engine::Form::kAndMemZero); ++value) {
    const auto form = static_cast<engine::Form>(value);
    const tprd::v1::Form proto = ToProto(form);
    ASSERT_EQ(static_cast<int>(proto), value);
    std::string word = tprd::v1::Form_Name(proto).substr(std::string("FORM_").size());
    for (char& c : word) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    EXPECT_EQ(word, engine::FormName(form));
  }
  EXPECT_EQ(ToProto(engine::Form::kAndMemZero), tprd::v1::FORM_AND_MEM_ZERO);
}

}  // namespace
}  // namespace tprd::daemon

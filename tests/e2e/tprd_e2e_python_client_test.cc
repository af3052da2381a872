// A client no one here wrote the stubs for: contrib/python/tprd_client.py, on Debian's
// python3-grpcio, learns tprd's API through gRPC server reflection alone and checks the standard
// health service, then drives a real tprd over its unix socket: enable, status, sites, rollback
// on the test guest, and a refusal with its gRPC status code.
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_support.h"
#include "tests/support/libvirt_test_env.h"

#ifndef TPRD_PYTHON_CLIENT
#error "TPRD_PYTHON_CLIENT is defined by tests/e2e/CMakeLists.txt"
#endif

namespace tprd::testing {
namespace {

class PythonClientTest : public ::testing::Test {
 protected:
  void SetUp() override {
    tprd_ = std::make_unique<TprdProcess>(MakeTprdDir(), "proving_window_s = 5\n");
    tprd_->Start();
  }
  // Debian's interpreter: its python3-grpcio and python3-protobuf, never a pip copy.
  RunResult Client(std::vector<std::string> args) {
    std::vector<std::string> argv = {"/usr/bin/python3", TPRD_PYTHON_CLIENT, "--socket",
                                     tprd_->socket()};
    argv.insert(argv.end(), args.begin(), args.end());
    return tprd::testing::Run(argv);
  }
  nlohmann::json Call(const std::string& method, const std::string& request) {
    RunResult r = Client({"call", method, request});
    EXPECT_EQ(r.exit_code, 0) << method << " " << request << ": " << r.err;
    nlohmann::json doc = nlohmann::json::parse(r.out, nullptr, false);
    EXPECT_FALSE(doc.is_discarded()) << method << ": " << r.out;
    return doc;
  }
  std::unique_ptr<TprdProcess> tprd_;
};

TEST_F(PythonClientTest, LearnsTheApiByReflectionAndDrivesAnEnableAndRollback) {
  RunResult health = Client({"health"});
  EXPECT_EQ(health.exit_code, 0) << health.err;
  EXPECT_EQ(health.out, "SERVING\n");

  // Everything below comes from reflection: the client has no tprd stubs.
  RunResult services = Client({"services"});
  ASSERT_EQ(services.exit_code, 0) << services.err;
  for (const char* expected :
       {"tprd.v1.Tprd\n", "grpc.health.v1.Health\n", "grpc.reflection.v1alpha.ServerReflection\n",
        "  GetDomain(tprd.v1.GetDomainRequest) returns (tprd.v1.DomainStatus)\n",
        "  WatchEvents(tprd.v1.WatchEventsRequest) returns (stream tprd.v1.Event)\n"}) {
    EXPECT_TRUE(absl::StrContains(services.out, expected)) << expected << services.out;
  }

  std::unique_ptr<TestDomain> domain = BootTestGuest("nobench", false);
  ASSERT_NE(domain, nullptr);
  if (HasFatalFailure()) return;
  const std::string name = domain->name();
  const std::string ref = "{\"domain\": \"" + name + "\"}";

  nlohmann::json enabled =
      Call("EnablePatching", "{\"domain\": \"" + name + "\", \"strategy\": \"STRATEGY_MMIO\", " +
                                 "\"transient\": true}");
  EXPECT_EQ(enabled["status"].value("state", std::string()), "DOMAIN_STATE_PATCHED") << enabled;
  WaitForApplied(*tprd_, name, HotSites(), absl::Seconds(90), "enabled by the Python client");

  nlohmann::json status = Call("GetDomain", ref);
  EXPECT_EQ(status.value("strategy", std::string()), "STRATEGY_MMIO") << status;
  EXPECT_GE(status.value("sites_applied", 0), static_cast<int>(HotSites().size())) << status;
  nlohmann::json sites = Call("ListSites", ref);
  int applied = 0;
  for (const nlohmann::json& site : sites["sites"]) {
    if (site.value("state", std::string()) == "SITE_STATE_APPLIED") ++applied;
  }
  EXPECT_GE(applied, static_cast<int>(HotSites().size())) << sites;

  Call("Rollback", ref);
  EXPECT_EQ(Call("GetDomain", ref).value("state", std::string()), "DOMAIN_STATE_UNPATCHED");
  ExpectGuestPasses(*domain, domain->Lines().size(), "after the Python client's rollback");

  // A refusal comes back as tprd's gRPC status code and message.
  RunResult missing = Client({"call", "GetDomain", "{\"domain\": \"no-such-domain-py\"}"});
  EXPECT_EQ(missing.exit_code, 1);
  EXPECT_TRUE(absl::StartsWith(missing.err, "tprd_client: NOT_FOUND: ")) << missing.err;
  EXPECT_TRUE(absl::StrContains(missing.err, "no-such-domain-py")) << missing.err;
  RunResult unknown = Client({"call", "NoSuchMethod"});
  EXPECT_EQ(unknown.exit_code, 2) << unknown.err;
}

}  // namespace
}  // namespace tprd::testing

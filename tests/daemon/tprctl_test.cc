// tprctl as a user runs it: the built binary as a subprocess against a real gRPC server with the
// daemon's TprdService over FakeHypervisor / FakeDomainController, on a unix socket in a temp
// dir. Checks output formats and exit codes (docs/usage.md).
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "daemon/actor/domain_registry.h"
#include "daemon/server/api_server.h"
#include "daemon/service/tprd_service.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/daemon/in_process_tprd.h"
#include "tests/daemon/test_dir.h"
#include "tests/fakes/fake_domain_controller.h"
#include "tests/support/subprocess.h"

#ifndef TPRCTL_PATH
#error "TPRCTL_PATH is defined by cli/CMakeLists.txt"
#endif

namespace tprd::daemon {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;
using Json = nlohmann::json;
using Clock = tprd::testing::ChildProcess::Clock;
using tprd::testing::RunResult;

constexpr auto kProcessTimeout = std::chrono::seconds(30);

// The test decides the socket: a TPRD_SOCKET of the test's own environment is never passed on.
tprd::testing::ChildProcess StartTprctl(const std::vector<std::string>& args,
                                        const std::vector<std::string>& environment = {}) {
  std::vector<std::string> argv = {TPRCTL_PATH};
  argv.insert(argv.end(), args.begin(), args.end());
  return tprd::testing::ChildProcess(argv, {.set = environment, .unset = {"TPRD_SOCKET"}});
}

class TprctlTest : public ::testing::Test {
 protected:
  void SetUp() override { tprd_.Start(); }
  void TearDown() override { tprd_.Stop(); }

  const std::string& socket() const { return tprd_.server->socket_path(); }

  // Runs tprctl with `args` (no socket added) to completion.
  static RunResult RunRaw(const std::vector<std::string>& args,
                          const std::vector<std::string>& environment = {}) {
    tprd::testing::ChildProcess process = StartTprctl(args, environment);
    RunResult result;
    EXPECT_TRUE(process.started()) << "cannot start " << TPRCTL_PATH;
    std::optional<int> code = process.Wait(Clock::now() + kProcessTimeout);
    EXPECT_TRUE(code.has_value()) << "tprctl did not finish within " << kProcessTimeout.count()
                                  << " s; stderr: " << process.err();
    result.exit_code = code.value_or(-1);
    result.out = process.out();
    result.err = process.err();
    return result;
  }

  // Runs tprctl against the test's daemon.
  RunResult Run(std::vector<std::string> args) {
    args.insert(args.begin(), {"--socket", socket()});
    return RunRaw(args);
  }

  static Json ParseJson(const RunResult& result) {
    Json parsed = Json::parse(result.out, nullptr, /*allow_exceptions=*/false);
    EXPECT_FALSE(parsed.is_discarded()) << "not one JSON document: " << result.out;
    return parsed;
  }

  static std::set<std::string> Keys(const Json& object) {
    std::set<std::string> keys;
    for (auto it = object.begin(); it != object.end(); ++it) keys.insert(it.key());
    return keys;
  }

  InProcessTprd tprd_;
};

TEST_F(TprctlTest, DomainsTableListsEveryDomain) {
  RunResult result = Run({"domains"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(result.err, "");
  ASSERT_THAT(result.out, StartsWith("NAME "));
  EXPECT_THAT(result.out, HasSubstr("\nwinxp-01 "));
  EXPECT_THAT(result.out, HasSubstr("unpatched"));
  EXPECT_THAT(result.out, HasSubstr("\nwinxp-off "));
  EXPECT_THAT(result.out, HasSubstr("gone"));
}

// The exposition parses with Debian's python3-prometheus-client, says what status says, and
// keeps a domain name with a quote, a backslash and a newline intact through the parser.
TEST_F(TprctlTest, MetricsIsPrometheusTextThatSaysWhatStatusSays) {
  tprd_.hypervisor.AddDomain("odd \"name\" \\ with\nnewline",
                             "aaaaaaaa-0000-0000-0000-000000000003", true);
  ASSERT_EQ(Run({"enable", "--strategy", "mmio", "winxp-01"}).exit_code, 0);
  RunResult metrics = Run({"metrics"});
  ASSERT_EQ(metrics.exit_code, 0) << metrics.err;
  EXPECT_EQ(metrics.err, "");
  const std::string text = tprd_.dir.File("metrics.txt");
  {
    std::ofstream file(text);
    file << metrics.out;
  }
  const RunResult parsed = tprd::testing::Run({"/usr/bin/python3", PARSE_METRICS_PY, text});
  const std::string& samples = parsed.out;
  ASSERT_EQ(parsed.exit_code, 0) << samples << parsed.err << "\n" << metrics.out;
  EXPECT_THAT(samples, HasSubstr("tprd_domain_info gauge tprd_domain_info{domain=winxp-01,"
                                 "state=patched,strategy=mmio,uuid="));
  EXPECT_THAT(samples, HasSubstr("tprd_sites gauge tprd_sites{domain=winxp-01,state=applied} 3\n"));
  EXPECT_THAT(samples,
              HasSubstr("tprd_sites gauge tprd_sites{domain=winxp-01,state=rolled_back} 0\n"));
  EXPECT_THAT(samples,
              HasSubstr("tprd_trap_stops counter tprd_trap_stops_total{domain=winxp-01} "));
  EXPECT_THAT(samples, HasSubstr("tprd_domain_error gauge tprd_domain_error{domain=winxp-01} 0\n"));
  // The numbers `tprctl status` shows (the fake controller's), under their Prometheus names.
  EXPECT_THAT(samples, HasSubstr("tprd_tpr_accesses_reaching_apic_before_per_second gauge "
                                 "tprd_tpr_accesses_reaching_apic_before_per_second"
                                 "{domain=winxp-01} 25000\n"));
  EXPECT_THAT(samples,
              HasSubstr("tprd_tpr_accesses_reaching_apic_per_second gauge "
                        "tprd_tpr_accesses_reaching_apic_per_second{domain=winxp-01} 120\n"));
  EXPECT_THAT(samples,
              HasSubstr("tprd_tpr_accesses_without_apic_per_second gauge "
                        "tprd_tpr_accesses_without_apic_per_second{domain=winxp-01} 30000\n"));
  EXPECT_THAT(samples, HasSubstr("tprd_tpr_accesses_reaching_apic counter "
                                 "tprd_tpr_accesses_reaching_apic_total"
                                 "{by=handlers,domain=winxp-01} 300\n"));
  EXPECT_THAT(samples, HasSubstr("tprd_tpr_accesses_without_apic counter "
                                 "tprd_tpr_accesses_without_apic_total{domain=winxp-01} 90000\n"));
  EXPECT_THAT(samples, HasSubstr("tprd_enable_pause_seconds histogram "
                                 "tprd_enable_pause_seconds_bucket{domain=winxp-01,le=0.25} 1\n"));
  EXPECT_THAT(samples, HasSubstr("tprd_enable_pause_seconds histogram "
                                 "tprd_enable_pause_seconds_bucket{domain=winxp-01,le=0.1} 0\n"));
  EXPECT_THAT(samples, HasSubstr("tprd_enable_pause_seconds histogram "
                                 "tprd_enable_pause_seconds_count{domain=winxp-01} 1\n"));
  // The odd name comes back from the parser as it was (the script writes \\ and \n back as
  // escapes so that a sample stays on one line).
  EXPECT_THAT(samples, HasSubstr("tprd_domain_info{domain=odd \"name\" \\\\ with\\nnewline,"));
  // Only running domains: winxp-off is not there.
  EXPECT_THAT(samples, Not(HasSubstr("winxp-off")));
}

TEST_F(TprctlTest, DomainsJsonIsOneDocument) {
  RunResult result = Run({"--json", "domains"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  Json parsed = ParseJson(result);
  ASSERT_TRUE(parsed["domains"].is_array());
  ASSERT_EQ(parsed["domains"].size(), 2u);
  EXPECT_EQ(parsed["domains"][0]["name"], "winxp-01");
  EXPECT_EQ(parsed["domains"][0]["running"], true);
  EXPECT_EQ(parsed["domains"][0]["state"], "unpatched");
  EXPECT_EQ(parsed["domains"][0]["strategy"], nullptr);
  EXPECT_EQ(parsed["domains"][1]["name"], "winxp-off");
  EXPECT_EQ(parsed["domains"][1]["id"], -1);
  EXPECT_EQ(parsed["domains"][1]["state"], "gone");
}

TEST_F(TprctlTest, JsonAfterTheCommandWorksToo) {
  RunResult result = Run({"domains", "--json"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(ParseJson(result)["domains"].size(), 2u);
}

TEST_F(TprctlTest, EnableThenSitesJsonHasExactlyTheDocumentedKeys) {
  RunResult enabled = Run({"enable", "winxp-01"});
  ASSERT_EQ(enabled.exit_code, 0) << enabled.err;
  EXPECT_THAT(enabled.out, HasSubstr("winxp-01: patched, strategy mmio, 3 sites applied"));

  RunResult result = Run({"--json", "sites", "winxp-01"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  Json parsed = ParseJson(result);
  EXPECT_EQ(Keys(parsed), (std::set<std::string>{"domain", "sites"}));
  EXPECT_EQ(parsed["domain"], "winxp-01");
  ASSERT_EQ(parsed["sites"].size(), 3u);
  const std::set<std::string> site_keys = {
      "id", "address", "form", "register", "original", "patched", "disassembly", "state", "hits"};
  for (const Json& site : parsed["sites"]) EXPECT_EQ(Keys(site), site_keys) << site.dump();
  const Json& site = parsed["sites"][1];
  EXPECT_EQ(site["id"], 1);
  EXPECT_THAT(site["address"].get<std::string>(), ::testing::MatchesRegex("0x[0-9a-f]{8}"));
  EXPECT_EQ(site["form"], "mov_mem_from_reg");
  EXPECT_EQ(site["register"], "ecx");
  EXPECT_EQ(site["original"], "890d8000feff");
  EXPECT_THAT(site["patched"].get<std::string>(), ::testing::MatchesRegex("[0-9a-f]{12}"));
  EXPECT_NE(site["patched"], site["original"]);
  EXPECT_EQ(site["state"], "applied");
  EXPECT_THAT(site["disassembly"].get<std::string>(), HasSubstr("ecx"));
}

TEST_F(TprctlTest, SitesTableAndStatusByUuidAndId) {
  ASSERT_EQ(Run({"enable", "--strategy", "mmio", "winxp-01"}).exit_code, 0);
  RunResult sites = Run({"sites", "1"});  // by ID
  ASSERT_EQ(sites.exit_code, 0) << sites.err;
  EXPECT_THAT(sites.out, StartsWith("ID "));
  EXPECT_THAT(sites.out, HasSubstr("mov_mem_from_reg"));
  EXPECT_THAT(sites.out, HasSubstr("applied"));

  RunResult status = Run({"--json", "status", "aaaaaaaa-0000-0000-0000-000000000001"});
  ASSERT_EQ(status.exit_code, 0) << status.err;
  Json parsed = ParseJson(status);
  EXPECT_EQ(parsed["domain"], "winxp-01");
  EXPECT_EQ(parsed["state"], "patched");
  EXPECT_EQ(parsed["strategy"], "mmio");
  EXPECT_EQ(parsed["sites_applied"], 3);
  EXPECT_EQ(parsed["rates_sampled"], true);
  EXPECT_EQ(parsed["tpr_accesses_per_second_after"], 120);
  EXPECT_EQ(parsed["tpr_accesses_per_second_without_apic"], 30000);
  EXPECT_EQ(parsed["learning_window_hits"], 400);

  RunResult table = Run({"status", "winxp-01"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_THAT(table.out, HasSubstr("state:      patched"));
  // Honest labels (docs/design.md "Rates and metrics"): no "exits" under TCG.
  EXPECT_THAT(table.out, HasSubstr("traps:      0 handled, 2.0/s now\n"));
  EXPECT_THAT(table.out, HasSubstr("TPR accesses reaching the APIC: 120/s now (of 30120/s "
                                   "counted; 30000/s served without it)\n"));
  EXPECT_THAT(table.out, HasSubstr("  before the first patch: at least 25000/s (learning window: "
                                   "400 in 16.0 ms of guest time"));
  EXPECT_THAT(table.out, Not(HasSubstr("exits")));
}

// With QEMU's APIC trace taken before the first patch, "before" is the trace's rate; a refused
// trace is said, with the learning window's figure.
TEST_F(TprctlTest, StatusSaysWhereBeforeCameFrom) {
  {
    std::lock_guard<std::mutex> lock(tprd_.guest->mu);
    tprd_.guest->apic_trace_before = true;
  }
  ASSERT_EQ(Run({"enable", "--strategy", "mmio", "winxp-01"}).exit_code, 0);
  Json parsed = ParseJson(Run({"--json", "status", "winxp-01"}));
  EXPECT_EQ(parsed["tpr_accesses_per_second_before"], 350000);
  EXPECT_EQ(parsed["before_trace_tpr_reads"], 105000);
  EXPECT_EQ(parsed["before_trace_tpr_writes"], 70000);
  EXPECT_DOUBLE_EQ(parsed["before_trace_seconds"].get<double>(), 0.5);
  RunResult table = Run({"status", "winxp-01"});
  EXPECT_THAT(table.out, HasSubstr("  before the first patch: 350000/s (QEMU's APIC trace: 105000 "
                                   "reads and 70000 writes of the TPR in 500 ms; tracing slows "
                                   "the guest, so at least this)\n"));
  EXPECT_THAT(table.out, Not(HasSubstr("no APIC trace")));
}

TEST_F(TprctlTest, StatusSaysWhyThereWasNoApicTrace) {
  {
    std::lock_guard<std::mutex> lock(tprd_.guest->mu);
    tprd_.guest->apic_trace_error = "QEMU, to `logfile ...`: Permission denied";
  }
  ASSERT_EQ(Run({"enable", "--strategy", "mmio", "winxp-01"}).exit_code, 0);
  RunResult table = Run({"status", "winxp-01"});
  EXPECT_THAT(table.out,
              HasSubstr("  before the first patch: at least 25000/s (learning window: "));
  EXPECT_THAT(table.out, HasSubstr("\n  (no APIC trace: QEMU, to `logfile ...`: Permission "
                                   "denied)\n"));
}

TEST_F(TprctlTest, EnableDryRunWritesNothing) {
  RunResult result = Run({"--json", "enable", "--dry-run", "--budget", "2", "winxp-01"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  Json parsed = ParseJson(result);
  EXPECT_EQ(parsed["dry_run"], true);
  EXPECT_EQ(parsed["sites"].size(), 3u);
  std::lock_guard<std::mutex> lock(tprd_.guest->mu);
  EXPECT_FALSE(tprd_.guest->blob_present);
}

TEST_F(TprctlTest, RollbackOneSiteThenTheRest) {
  ASSERT_EQ(Run({"enable", "winxp-01"}).exit_code, 0);
  RunResult one = Run({"rollback", "winxp-01", "--site", "0"});
  ASSERT_EQ(one.exit_code, 0) << one.err;
  EXPECT_THAT(one.out, HasSubstr("rolled back 1 sites (0)"));

  RunResult rest = Run({"--json", "rollback", "winxp-01"});
  ASSERT_EQ(rest.exit_code, 0) << rest.err;
  Json parsed = ParseJson(rest);
  EXPECT_EQ(parsed["rolled_back"], Json::parse("[1, 2]"));
  EXPECT_TRUE(parsed["refused"].empty());
  EXPECT_EQ(parsed["status"]["state"], "unpatched");
}

TEST_F(TprctlTest, DomainsAndStatusShowTheIntentEnableRecordsAndDisableRemoves) {
  RunResult before = Run({"domains"});
  ASSERT_EQ(before.exit_code, 0) << before.err;
  EXPECT_THAT(before.out, StartsWith("NAME "));
  EXPECT_THAT(before.out, HasSubstr(" INTENT "));

  ASSERT_EQ(Run({"enable", "--strategy", "mmio", "winxp-01"}).exit_code, 0);
  RunResult table = Run({"domains"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_THAT(table.out, ::testing::ContainsRegex("\nwinxp-01 +1 +patched +mmio +3 +mmio +aaaa"));
  EXPECT_THAT(table.out, ::testing::ContainsRegex("\nwinxp-off +- +gone +- +0 +- +aaaa"));

  Json listed = ParseJson(Run({"--json", "domains"}));
  EXPECT_EQ(listed["domains"][0]["intent"]["strategy"], "mmio");
  EXPECT_EQ(listed["domains"][0]["intent"]["discovery_budget_ms"], 0);
  EXPECT_EQ(listed["domains"][1]["intent"], nullptr);

  RunResult status = Run({"status", "winxp-01"});
  EXPECT_THAT(status.out, HasSubstr("intent:     mmio\n"));

  RunResult rollback = Run({"rollback", "winxp-01"});
  ASSERT_EQ(rollback.exit_code, 0) << rollback.err;
  EXPECT_EQ(ParseJson(Run({"--json", "status", "winxp-01"}))["intent"]["strategy"], "mmio")
      << "rollback keeps the intent";

  RunResult disabled = Run({"disable", "winxp-01"});
  ASSERT_EQ(disabled.exit_code, 0) << disabled.err;
  EXPECT_THAT(disabled.out, HasSubstr("winxp-01: intent removed, rolled back 0 sites"));
  EXPECT_EQ(ParseJson(Run({"--json", "status", "winxp-01"}))["intent"], nullptr);
  EXPECT_EQ(tprd_.hypervisor.IntentXml("winxp-01"), std::nullopt);

  ASSERT_EQ(Run({"enable", "--transient", "winxp-01"}).exit_code, 0);
  EXPECT_EQ(tprd_.hypervisor.IntentXml("winxp-01"), std::nullopt);
  Json json = ParseJson(Run({"--json", "disable", "winxp-01"}));
  EXPECT_EQ(json["intent_removed"], false);
  EXPECT_EQ(json["rolled_back"], Json::parse("[0, 1, 2]"));
  EXPECT_EQ(json["status"]["state"], "unpatched");
}

TEST_F(TprctlTest, AnIntentTprdRefusesShowsAsInvalidWithTheReason) {
  tprd_.hypervisor.SetIntentXml("winxp-off", std::string("<intent strategy=\"\x1b[31m\"/>"));
  RunResult table = Run({"domains"});
  ASSERT_EQ(table.exit_code, 0) << table.err;
  EXPECT_THAT(table.out, ::testing::ContainsRegex("\nwinxp-off +- +gone +- +0 +invalid +aaaa"));
  RunResult status = Run({"status", "winxp-off"});
  ASSERT_EQ(status.exit_code, 0) << status.err;
  EXPECT_THAT(status.out, HasSubstr("intent err: tprd's intent metadata"));
  EXPECT_EQ(status.out.find('\x1b'), std::string::npos) << "hostile text is escaped";
  RunResult disabled = Run({"disable", "winxp-off"});
  ASSERT_EQ(disabled.exit_code, 0) << disabled.err;
  EXPECT_THAT(disabled.out, HasSubstr("winxp-off: intent removed"));
}

TEST_F(TprctlTest, ScanJsonReportsLookAlikesAsNotPatchable) {
  RunResult result = Run({"--json", "scan", "winxp-01"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  Json parsed = ParseJson(result);
  ASSERT_EQ(parsed["candidates"].size(), 4u);
  EXPECT_EQ(parsed["candidates"][0]["patchable"], true);
  EXPECT_EQ(parsed["candidates"][3]["patchable"], false);
  EXPECT_EQ(parsed["candidates"][3]["reason"], "SIB addressing");
}

TEST_F(TprctlTest, UnknownDomainExits3WithTheDaemonsMessage) {
  for (const char* command : {"status", "sites", "enable", "rollback", "scan", "watch"}) {
    RunResult result = Run({command, "no-such-domain"});
    EXPECT_EQ(result.exit_code, 3) << command << ": " << result.err;
    EXPECT_THAT(result.err, StartsWith("tprctl: ")) << command;
    EXPECT_THAT(result.err, HasSubstr("no-such-domain")) << command;
    EXPECT_EQ(std::count(result.err.begin(), result.err.end(), '\n'), 1) << result.err;
    EXPECT_EQ(result.out, "") << command;
  }
}

TEST_F(TprctlTest, FailedPreconditionExits1) {
  RunResult result = Run({"enable", "winxp-off"});
  EXPECT_EQ(result.exit_code, 1);
  EXPECT_THAT(result.err, HasSubstr("not running"));
}

TEST_F(TprctlTest, MissingSocketExits4WithAPlainMessage) {
  RunResult result = RunRaw({"--socket", tprd_.dir.File("nothing-here.sock"), "domains"});
  EXPECT_EQ(result.exit_code, 4);
  EXPECT_THAT(result.err,
              StartsWith("tprctl: cannot reach tprd at " + tprd_.dir.File("nothing-here.sock")));
  EXPECT_THAT(result.err, HasSubstr("is tprd running? are you in group tprd?"));
}

TEST_F(TprctlTest, SocketWithNobodyListeningExits4) {
  // A stale socket file, as a killed tprd leaves behind: bound, never listening.
  const std::string stale = tprd_.dir.File("stale.sock");
  const int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(fd, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  ASSERT_LT(stale.size(), sizeof(address.sun_path));
  std::copy(stale.begin(), stale.end(), address.sun_path);
  ASSERT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  RunResult result = RunRaw({"--socket", stale, "status", "winxp-01"});
  ::close(fd);
  EXPECT_EQ(result.exit_code, 4) << result.err;
  EXPECT_THAT(result.err, StartsWith("tprctl: cannot reach tprd at " + stale));
}

TEST_F(TprctlTest, LibvirtDownIsUnavailableWithTheDaemonsMessage) {
  tprd_.hypervisor.SetUnavailable(true);
  RunResult result = Run({"domains"});
  EXPECT_EQ(result.exit_code, 4);
  EXPECT_THAT(result.err, HasSubstr("libvirt"));
  EXPECT_THAT(result.err, Not(HasSubstr("cannot reach tprd")));
}

TEST_F(TprctlTest, UsageErrorsExit2) {
  const std::vector<std::vector<std::string>> bad = {
      {},
      {"frobnicate"},
      {"status"},
      {"enable", "winxp-01", "--strategy", "fastest"},
      {"enable", "winxp-01", "--budget", "-1"},
      {"--timeout", "0", "domains"},
      {"rollback", "winxp-01", "--site", "abc"},
      {"domains", "--no-such-option"},
  };
  for (const auto& args : bad) {
    RunResult result = Run(args);
    EXPECT_EQ(result.exit_code, 2) << ::testing::PrintToString(args) << ": " << result.err;
    EXPECT_THAT(result.err, StartsWith("tprctl: ")) << ::testing::PrintToString(args);
  }
  // Empty domain reaches the daemon, which calls it malformed: usage too.
  EXPECT_EQ(Run({"status", ""}).exit_code, 2);
}

TEST_F(TprctlTest, DomainThatIsNotUtf8IsAUsageError) {
  // gRPC could not even send it as a proto3 string (the daemon would answer a bare INTERNAL).
  for (const char* bad : {"\xff\xfe", "winxp-01\xc3", "\xc0\xaf", "\xed\xa0\x80"}) {
    RunResult result = Run({"status", bad});
    EXPECT_EQ(result.exit_code, 2) << result.err;
    EXPECT_THAT(result.err, StartsWith("tprctl: domain name '"));
    EXPECT_THAT(result.err, HasSubstr("not valid UTF-8"));
  }
  // Valid multi-byte names go to the daemon, which does not know them.
  EXPECT_EQ(Run({"status", "gr\xc3\xbc\xc3\x9f-\xe2\x82\xac-\xf0\x9f\x98\x80"}).exit_code, 3);
}

TEST_F(TprctlTest, TprdSocketEnvironmentVariableSetsTheSocketAndSocketOverridesIt) {
  RunResult from_env = RunRaw({"domains"}, {"TPRD_SOCKET=" + socket()});
  EXPECT_EQ(from_env.exit_code, 0) << from_env.err;
  EXPECT_THAT(from_env.out, HasSubstr("winxp-01"));

  RunResult overridden =
      RunRaw({"--socket", socket(), "domains"}, {"TPRD_SOCKET=" + tprd_.dir.File("wrong.sock")});
  EXPECT_EQ(overridden.exit_code, 0) << overridden.err;

  RunResult wrong_env = RunRaw({"domains"}, {"TPRD_SOCKET=" + tprd_.dir.File("wrong.sock")});
  EXPECT_EQ(wrong_env.exit_code, 4);
  EXPECT_THAT(wrong_env.err, HasSubstr(tprd_.dir.File("wrong.sock")));
}

TEST_F(TprctlTest, DecodeStillWorksAndHonoursTheGlobalJson) {
  RunResult result = RunRaw({"--json", "decode", "--address", "0x80001000", "a18000feff"});
  ASSERT_EQ(result.exit_code, 0) << result.err;
  EXPECT_EQ(ParseJson(result)["form"], "mov_eax_from_moffs");
}

TEST_F(TprctlTest, WatchJsonPrintsOneObjectPerEventUntilInterrupted) {
  tprd::testing::ChildProcess watch =
      StartTprctl({"--socket", socket(), "--json", "watch", "winxp-01"});
  ASSERT_TRUE(watch.started());
  // The subscription is live once an event comes through: nudge with lifecycle events until one
  // does, bounded.
  const auto deadline = Clock::now() + std::chrono::seconds(20);
  bool subscribed = false;
  while (!subscribed && Clock::now() < deadline) {
    tprd_.hypervisor.EmitLifecycle("winxp-01", LifecycleKind::kRebooted);
    subscribed = watch.ReadUntil([&] { return !watch.OutLines().empty(); },
                                 Clock::now() + std::chrono::milliseconds(200));
  }
  ASSERT_TRUE(subscribed) << "no event line from tprctl watch; stderr: " << watch.err();

  ASSERT_EQ(Run({"enable", "winxp-01"}).exit_code, 0);
  auto site_events = [&] {
    int count = 0;
    for (const std::string& line : watch.OutLines()) {
      Json event = Json::parse(line, nullptr, false);
      if (!event.is_discarded() && event["kind"] == "site") ++count;
    }
    return count;
  };
  EXPECT_TRUE(watch.ReadUntil([&] { return site_events() >= 3; }, deadline))
      << "site events missing; stdout: " << watch.out();

  watch.Signal(SIGINT);
  std::optional<int> code = watch.Wait(Clock::now() + kProcessTimeout);
  ASSERT_TRUE(code.has_value()) << "tprctl watch did not stop on SIGINT";
  EXPECT_EQ(*code, 0) << watch.err();
  for (const std::string& line : watch.OutLines()) {
    Json event = Json::parse(line, nullptr, false);
    ASSERT_FALSE(event.is_discarded()) << "not JSON: " << line;
    EXPECT_EQ(event["domain"], "winxp-01");
    EXPECT_TRUE(event.contains("kind") && event.contains("time") && event.contains("message"));
  }
  EXPECT_EQ(site_events(), 3);
}

}  // namespace
}  // namespace tprd::daemon

// tprd's rates and metrics end to end (docs/design.md "Rates and metrics"): the test guest under
// cr8 and under mmio, enabled through tprctl; `tprctl status`, `tprctl metrics` and the
// metrics_textfile say the same numbers, and the text parses with Debian's
// python3-prometheus-client. The numbers themselves are printed, never asserted (timings are not
// pass/fail): under TCG "before" is tens of thousands a second, "now" what the strategy leaves.
// And the "before" trace's cleanup: a tprd killed during it leaves QEMU tracing, the next stops it.
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/time.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_support.h"
#include "tests/support/libvirt_test_env.h"

#ifndef PARSE_METRICS_PY
#error "PARSE_METRICS_PY is defined by tests/e2e/CMakeLists.txt"
#endif

namespace tprd::testing {
namespace {

using ::testing::HasSubstr;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream all;
  all << in.rdbuf();
  return all.str();
}

// The value of the parsed sample `name{domain=DOMAIN}` (parse_metrics.py's lines), or -1.
double Sample(const std::string& parsed, const std::string& name, const std::string& domain) {
  const std::string key = absl::StrCat(" ", name, "{domain=", domain, "} ");
  const size_t at = parsed.find(key);
  if (at == std::string::npos) return -1;
  return std::stod(parsed.substr(at + key.size()));
}

// libvirt's directory of the running domain `name` (/var/lib/libvirt/qemu/domain-ID-NAME), where
// QEMU writes tprd's APIC trace; empty (and a test failure) when there is not exactly one.
std::string LibvirtDomainDirectory(const std::string& name) {
  RunResult id = Virsh({"domid", name});
  if (id.exit_code != 0) {
    ADD_FAILURE() << "virsh domid " << name << ": " << id.err;
    return "";
  }
  const std::string prefix = absl::StrCat("domain-", absl::StripAsciiWhitespace(id.out), "-");
  std::vector<std::string> found;
  for (const auto& entry : std::filesystem::directory_iterator("/var/lib/libvirt/qemu")) {
    if (absl::StartsWith(entry.path().filename().string(), prefix)) {
      found.push_back(entry.path().string());
    }
  }
  if (found.size() != 1) {
    ADD_FAILURE() << found.size() << " directories /var/lib/libvirt/qemu/" << prefix << "*";
    return "";
  }
  return found.front();
}

// Whether QEMU's apic_mem_readl and apic_mem_writel trace events are on, as HMP lists them.
std::optional<bool> ApicTraceEventsOn(const std::string& domain) {
  RunResult r = Virsh({"qemu-monitor-command", domain, "--hmp", "info trace-events apic_mem_*"});
  if (r.exit_code != 0) return std::nullopt;
  const bool read_on = absl::StrContains(r.out, "apic_mem_readl : state 1");
  const bool write_on = absl::StrContains(r.out, "apic_mem_writel : state 1");
  if (read_on != write_on) return std::nullopt;
  return read_on;
}

class TprdMetricsEndToEnd : public ::testing::TestWithParam<const char*> {};

TEST_P(TprdMetricsEndToEnd, StatusMetricsAndTextfileSayTheSameNumbers) {
  const std::string strategy = GetParam();
  TestDomainOptions options;
  options.kernel = TestGuestElf();
  options.vcpus = 2;
  options.cr8legacy_cpu = strategy == "cr8";
  options.acpi = true;  // "before" measured by the guest's ACPI PM timer
  absl::StatusOr<std::unique_ptr<TestDomain>> created = TestDomain::Create(options);
  ASSERT_TRUE(created.ok()) << created.status();
  TestDomain& domain = **created;
  ASSERT_TRUE(domain.WaitForPrefix("STAT cpu=1 ", absl::Seconds(120)).ok()) << domain.LastLines();

  const std::string dir = MakeTprdDir();
  const std::string textfile = dir + "/tprd.prom";
  TprdProcess tprd(dir, absl::StrCat("metrics_textfile = ", textfile, "\nproving_window_s = 5\n"));
  tprd.Start();
  if (HasFatalFailure()) return;
  RunResult enabled = tprd.Ctl({"enable", domain.name(), "--strategy", strategy, "--transient"});
  ASSERT_EQ(enabled.exit_code, 0) << enabled.out << enabled.err << tprd.LogTail();

  // Rates need two reads of the guest's counters a second or more apart.
  nlohmann::json status;
  ASSERT_TRUE(PollUntil(absl::Seconds(60),
                        [&] {
                          RunResult r = tprd.Ctl({"--json", "status", domain.name()});
                          status = nlohmann::json::parse(r.out, nullptr, false);
                          return r.exit_code == 0 && !status.is_discarded() &&
                                 status["rates_sampled"] == true;
                        }))
      << "tprctl status never had rates\n"
      << status.dump() << tprd.LogTail();
  const double before = status["tpr_accesses_per_second_before"];
  EXPECT_GT(status["learning_window_hits"].get<uint64_t>(), 0u) << status.dump();
  EXPECT_EQ(status["learning_window_guest_clock"], true)
      << "the machine has ACPI: its PM timer measures the window\n"
      << status.dump() << tprd.LogTail();
  // "before" is QEMU's APIC trace, taken before the blob went in (docs/design.md "Rates and
  // metrics"), on the distribution's libvirt (QEMU as libvirt-qemu writes the file).
  const double trace_seconds = status["before_trace_seconds"];
  const uint64_t traced = status["before_trace_tpr_reads"].get<uint64_t>() +
                          status["before_trace_tpr_writes"].get<uint64_t>();
  ASSERT_GT(trace_seconds, 0) << "no APIC trace: " << status["before_trace_error"] << "\n"
                              << status.dump() << tprd.LogTail();
  EXPECT_GT(status["before_trace_tpr_reads"].get<uint64_t>(), 0u) << status.dump();
  EXPECT_GT(status["before_trace_tpr_writes"].get<uint64_t>(), 0u) << status.dump();
  EXPECT_NEAR(before, static_cast<double>(traced) / trace_seconds, before * 1e-6)
      << "before is the trace's rate\n"
      << status.dump();
  // The trace left nothing behind: events off, no file.
  EXPECT_EQ(ApicTraceEventsOn(domain.name()), std::optional<bool>(false));
  const std::string directory = LibvirtDomainDirectory(domain.name());
  EXPECT_FALSE(directory.empty() || std::filesystem::exists(directory + "/tprd-apic-trace.log"))
      << directory << " still holds the trace file";

  RunResult text_status = tprd.Ctl({"status", domain.name()});
  EXPECT_THAT(text_status.out, HasSubstr("TPR accesses reaching the APIC: "));
  EXPECT_THAT(text_status.out, HasSubstr("/s counted; "));
  EXPECT_THAT(text_status.out, HasSubstr("  before the first patch: "));
  EXPECT_THAT(text_status.out, HasSubstr("(QEMU's APIC trace: "));
  std::cout << strategy << ": tprctl status says\n" << text_status.out;

  // tprctl metrics: parses, and its "before" is the status's (sampled once, at enable).
  RunResult metrics = tprd.Ctl({"metrics"});
  ASSERT_EQ(metrics.exit_code, 0) << metrics.err;
  const std::string printed = dir + "/metrics.txt";
  std::ofstream(printed) << metrics.out;
  RunResult parsed = tprd::testing::Run({"/usr/bin/python3", PARSE_METRICS_PY, printed});
  ASSERT_EQ(parsed.exit_code, 0) << parsed.err << metrics.out;
  const double metrics_before =
      Sample(parsed.out, "tprd_tpr_accesses_reaching_apic_before_per_second", domain.name());
  EXPECT_NEAR(metrics_before, before, before * 1e-5 + 1e-9) << parsed.out;
  for (const char* name :
       {"tprd_tpr_accesses_reaching_apic_per_second", "tprd_tpr_accesses_without_apic_per_second",
        "tprd_trap_stops_per_second", "tprd_tpr_accesses_without_apic_total"}) {
    EXPECT_GE(Sample(parsed.out, name, domain.name()), 0) << name << " missing\n" << parsed.out;
  }
  std::cout << strategy << ": tprctl metrics (parsed) says\n";
  for (absl::string_view line : absl::StrSplit(parsed.out, '\n')) {
    if (line.find("per_second") != std::string::npos || line.find("_total") != std::string::npos)
      std::cout << "  " << line << "\n";
  }

  // The textfile: written within a few seconds, the same families, the same "before".
  std::string file_parsed;
  ASSERT_TRUE(PollUntil(
      absl::Seconds(30),
      [&] {
        if (ReadFile(textfile).find("tprd_tpr_accesses_reaching_apic_per_second{") ==
            std::string::npos) {
          return false;
        }
        RunResult r = tprd::testing::Run({"/usr/bin/python3", PARSE_METRICS_PY, textfile});
        file_parsed = r.out;
        return r.exit_code == 0;
      }))
      << "no parsable metrics_textfile with rates at " << textfile << "\n"
      << ReadFile(textfile) << tprd.LogTail();
  EXPECT_NEAR(
      Sample(file_parsed, "tprd_tpr_accesses_reaching_apic_before_per_second", domain.name()),
      before, before * 1e-5 + 1e-9)
      << file_parsed;

  RunResult rolled = tprd.Ctl({"rollback", domain.name()});
  EXPECT_EQ(rolled.exit_code, 0) << rolled.out << rolled.err;
  ASSERT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
  ExpectGuestPasses(domain, domain.Lines().size(), "after the rollback");
}

// tprd killed during its "before" trace (before anything is patched): QEMU keeps tracing into the
// file in the domain's directory; the next tprd's adopt turns the events off and removes it, and
// the guest never noticed.
TEST(TprdApicTraceEndToEnd, ATraceAKilledTprdLeftRunningIsStoppedByTheNextTprd) {
  TestDomainOptions options;
  options.kernel = TestGuestElf();
  options.vcpus = 2;
  absl::StatusOr<std::unique_ptr<TestDomain>> created = TestDomain::Create(options);
  ASSERT_TRUE(created.ok()) << created.status();
  TestDomain& domain = **created;
  ASSERT_TRUE(domain.WaitForPrefix("STAT cpu=1 ", absl::Seconds(120)).ok()) << domain.LastLines();
  const std::string file = LibvirtDomainDirectory(domain.name()) + "/tprd-apic-trace.log";
  ASSERT_FALSE(std::filesystem::exists(file)) << file;

  // A long window, so that the kill lands inside it.
  TprdProcess tprd(MakeTprdDir(), "before_trace_ms = 10000\n");
  tprd.Start();
  if (HasFatalFailure()) return;
  std::thread enable([&] { tprd.Ctl({"enable", domain.name(), "--strategy", "mmio"}); });
  const bool tracing = PollUntil(absl::Seconds(30), [&] {
    std::error_code error;
    return std::filesystem::file_size(file, error) > 0 && !error;
  });
  tprd.Kill();
  enable.join();
  ASSERT_TRUE(tracing) << "tprd's APIC trace never wrote " << file << "\n" << tprd.LogTail();
  // What the kill left: the events on, QEMU still writing.
  EXPECT_EQ(ApicTraceEventsOn(domain.name()), std::optional<bool>(true));
  std::error_code error;
  const uintmax_t size_at_kill = std::filesystem::file_size(file, error);
  EXPECT_TRUE(PollUntil(absl::Seconds(10), [&] {
    std::error_code e;
    return std::filesystem::file_size(file, e) > size_at_kill && !e;
  })) << "QEMU stopped writing the trace on its own";

  const size_t from = domain.Lines().size();
  tprd.Start();  // adopts every running domain: the leftover trace goes
  if (HasFatalFailure()) return;
  EXPECT_TRUE(PollUntil(absl::Seconds(30),
                        [&] {
                          return ApicTraceEventsOn(domain.name()) == std::optional<bool>(false) &&
                                 !std::filesystem::exists(file);
                        }))
      << "the next tprd left the trace running or the file there\n"
      << tprd.LogTail();
  ExpectGuestPasses(domain, from, "after the leftover trace was stopped");
  ASSERT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
}

INSTANTIATE_TEST_SUITE_P(Strategies, TprdMetricsEndToEnd, ::testing::Values("cr8", "mmio"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param);
                         });

}  // namespace
}  // namespace tprd::testing

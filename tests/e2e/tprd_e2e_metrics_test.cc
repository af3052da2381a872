// tprd's rates and metrics end to end (docs/design.md "Rates and metrics"): the test guest under
// cr8 and under mmio, enabled through tprctl; `tprctl status`, `tprctl metrics` and the
// metrics_textfile say the same numbers, and the text parses with Debian's
// python3-prometheus-client. The numbers themselves are printed, never asserted (timings are not
// pass/fail): under TCG "before" is tens of thousands a second, "now" what the strategy leaves.
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

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
  EXPECT_GT(before, 0) << "the learning window saw TPR accesses: " << status.dump();
  EXPECT_EQ(status["learning_window_guest_clock"], true)
      << "the machine has ACPI: its PM timer measures the window\n"
      << status.dump() << tprd.LogTail();

  RunResult text_status = tprd.Ctl({"status", domain.name()});
  EXPECT_THAT(text_status.out, HasSubstr("TPR accesses reaching the APIC: "));
  EXPECT_THAT(text_status.out, HasSubstr("/s counted; "));
  EXPECT_THAT(text_status.out, HasSubstr("  before the first patch: at least "));
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

INSTANTIATE_TEST_SUITE_P(Strategies, TprdMetricsEndToEnd, ::testing::Values("cr8", "mmio"),
                         [](const ::testing::TestParamInfo<const char*>& info) {
                           return std::string(info.param);
                         });

}  // namespace
}  // namespace tprd::testing

#include <string>
#include <vector>

#include "daemon/metrics/exposition.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tprd::daemon {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

DomainSnapshot Running(const std::string& name) {
  DomainSnapshot s;
  s.domain = {name, "aaaaaaaa-0000-0000-0000-00000000000" + std::to_string(name.size() % 10), 1,
              true};
  return s;
}

TEST(EscapeLabelValueTest, EscapesBackslashQuoteAndNewlineOnly) {
  EXPECT_EQ(EscapeLabelValue("winxp-01"), "winxp-01");
  EXPECT_EQ(EscapeLabelValue("a\"b"), "a\\\"b");
  EXPECT_EQ(EscapeLabelValue("a\\b"), "a\\\\b");
  EXPECT_EQ(EscapeLabelValue("a\nb"), "a\\nb");
  EXPECT_EQ(EscapeLabelValue("\\\"\n"), "\\\\\\\"\\n");
  EXPECT_EQ(EscapeLabelValue("tab\there, ünï"), "tab\there, ünï");  // left as they are
  EXPECT_EQ(EscapeLabelValue(""), "");
}

TEST(MetricsTextTest, EveryRunningDomainWithEscapedNameAndNoOther) {
  DomainSnapshot odd = Running("a \"quoted\" \\ name\nwith a newline");
  DomainSnapshot off = Running("switched-off");
  off.domain.running = false;
  const std::string text = MetricsText({odd, off});
  EXPECT_THAT(text, HasSubstr("tprd_domain_info{domain=\"a \\\"quoted\\\" \\\\ name\\nwith a "
                              "newline\",uuid=\""));
  EXPECT_THAT(text, Not(HasSubstr("switched-off")));
  // Every sample is one line: no raw newline inside a label.
  for (size_t start = 0, end; start < text.size(); start = end + 1) {
    end = text.find('\n', start);
    ASSERT_NE(end, std::string::npos) << "the text ends with a newline";
    const std::string line = text.substr(start, end - start);
    if (line.rfind("tprd_", 0) == 0) {
      EXPECT_THAT(line, HasSubstr("} ")) << line;
    }
  }
}

TEST(MetricsTextTest, CountersEndInTotalAndEachFamilyIsTypedOnce) {
  const std::string text = MetricsText({Running("winxp-01")});
  for (const char* counter :
       {"tprd_tpr_accesses_without_apic_total", "tprd_tpr_accesses_reaching_apic_total",
        "tprd_trap_stops_total", "tprd_guard_mismatches_total"}) {
    EXPECT_THAT(text, HasSubstr(std::string("# TYPE ") + counter + " counter\n")) << counter;
  }
  EXPECT_THAT(text, HasSubstr("# TYPE tprd_sites gauge\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE tprd_enable_pause_seconds histogram\n"));
  size_t types = 0;
  for (size_t at = text.find("# TYPE "); at != std::string::npos; at = text.find("# TYPE ", at + 1))
    ++types;
  size_t helps = 0;
  for (size_t at = text.find("# HELP "); at != std::string::npos; at = text.find("# HELP ", at + 1))
    ++helps;
  EXPECT_EQ(types, helps);
}

TEST(MetricsTextTest, RatesOnlyOnceMeasured) {
  DomainSnapshot fresh = Running("fresh");
  std::string text = MetricsText({fresh});
  EXPECT_THAT(text, Not(HasSubstr("tprd_tpr_accesses_reaching_apic_per_second{")));
  EXPECT_THAT(text, Not(HasSubstr("tprd_tpr_accesses_reaching_apic_before_per_second{")));
  EXPECT_THAT(text, HasSubstr("tprd_tpr_accesses_reaching_apic_total{domain=\"fresh\",by="
                              "\"handlers\"} 0\n"));

  DomainSnapshot patched = Running("patched");
  patched.state = DomainState::kPatched;
  patched.status.strategy = engine::Strategy::kCr8;
  patched.status.learning_hits = 400;
  patched.status.learning_run = absl::Milliseconds(8);
  patched.status.tpr_accesses_per_second_before = 50000;
  patched.status.rates = AccessRates{150000.5, 812, 3.25};
  patched.status.handler_accesses_without_apic = 12345678901ull;
  patched.status.unpatched_accesses_seen = 42;
  text = MetricsText({patched});
  EXPECT_THAT(text, HasSubstr("state=\"patched\",strategy=\"cr8\"} 1\n"));
  EXPECT_THAT(text,
              HasSubstr("tprd_tpr_accesses_reaching_apic_before_per_second{domain=\"patched\"} "
                        "50000\n"));
  EXPECT_THAT(text, HasSubstr("tprd_tpr_accesses_reaching_apic_per_second{domain=\"patched\"} "
                              "812\n"));
  EXPECT_THAT(text, HasSubstr("tprd_tpr_accesses_without_apic_per_second{domain=\"patched\"} "
                              "150000\n"));
  EXPECT_THAT(text, HasSubstr("tprd_trap_stops_per_second{domain=\"patched\"} 3.25\n"));
  EXPECT_THAT(text, HasSubstr("tprd_tpr_accesses_without_apic_total{domain=\"patched\"} "
                              "12345678901\n"));
  EXPECT_THAT(text, HasSubstr("tprd_tpr_accesses_reaching_apic_total{domain=\"patched\",by="
                              "\"unpatched\"} 42\n"));
}

TEST(MetricsTextTest, EnablePausesAreACumulativeHistogram) {
  DomainSnapshot s = Running("h");
  s.status.enable_pauses.Add(absl::Milliseconds(5));     // <= 0.01
  s.status.enable_pauses.Add(absl::Milliseconds(200));   // <= 0.25
  s.status.enable_pauses.Add(absl::Milliseconds(1500));  // <= 2.5
  s.status.enable_pauses.Add(absl::Seconds(30));         // +Inf only
  const std::string text = MetricsText({s});
  EXPECT_THAT(text, HasSubstr("tprd_enable_pause_seconds_bucket{domain=\"h\",le=\"0.01\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("tprd_enable_pause_seconds_bucket{domain=\"h\",le=\"0.1\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("tprd_enable_pause_seconds_bucket{domain=\"h\",le=\"0.25\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("tprd_enable_pause_seconds_bucket{domain=\"h\",le=\"2.5\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("tprd_enable_pause_seconds_bucket{domain=\"h\",le=\"5\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("tprd_enable_pause_seconds_bucket{domain=\"h\",le=\"+Inf\"} 4\n"));
  EXPECT_THAT(text, HasSubstr("tprd_enable_pause_seconds_sum{domain=\"h\"} 31.705\n"));
  EXPECT_THAT(text, HasSubstr("tprd_enable_pause_seconds_count{domain=\"h\"} 4\n"));
}

TEST(AccessRateMeterTest, RatesOverIntervalsOfAtLeastTheMinimum) {
  AccessRateMeter meter(absl::Seconds(1));
  const absl::Time t0 = absl::FromUnixSeconds(1000);
  meter.Add({t0, 100, 10, 1});
  EXPECT_FALSE(meter.rates().has_value());
  meter.Add({t0 + absl::Milliseconds(500), 600, 20, 1});  // too soon: the base stays
  EXPECT_FALSE(meter.rates().has_value());
  meter.Add({t0 + absl::Seconds(2), 4100, 30, 5});
  ASSERT_TRUE(meter.rates().has_value());
  EXPECT_DOUBLE_EQ(meter.rates()->without_apic_per_second, 2000);
  EXPECT_DOUBLE_EQ(meter.rates()->to_apic_per_second, 10);
  EXPECT_DOUBLE_EQ(meter.rates()->trap_stops_per_second, 2);
  // Counts that go down (a new session): a new base, no rate until the next interval.
  meter.Add({t0 + absl::Seconds(3), 5, 0, 0});
  EXPECT_FALSE(meter.rates().has_value());
  meter.Add({t0 + absl::Seconds(4), 1005, 0, 0});
  ASSERT_TRUE(meter.rates().has_value());
  EXPECT_DOUBLE_EQ(meter.rates()->without_apic_per_second, 1000);
}

}  // namespace
}  // namespace tprd::daemon

#include "daemon/config.h"

#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/daemon/test_dir.h"

namespace tprd::daemon {
namespace {

using ::testing::HasSubstr;

TEST(ConfigTest, FileSettingsApplyAndFlagsWin) {
  TestDir dir;
  const std::string path = dir.File("tprd.conf");
  std::ofstream(path) << "# tprd settings\n"
                         "connect = qemu+ssh://host/system\n"
                         "socket = \"/tmp/x.sock\"   # quoted\n"
                         "\n"
                         "poll_interval_ms = 250\n"
                         "log_level = debug\n"
                         "adopt_domains = winxp-*\n"
                         "proving_window_s = 5\n"
                         "mmio_write_stops_per_second = 50\n";
  Config config;
  auto action = ParseCommandLine({"--config", path, "--socket=/run/other.sock"}, &config);
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(*action, CommandLineAction::kRun);
  EXPECT_EQ(config.connect, "qemu+ssh://host/system");
  EXPECT_EQ(config.socket, "/run/other.sock");
  EXPECT_EQ(config.state_dir, "/var/lib/tprd");
  EXPECT_EQ(config.poll_interval, absl::Milliseconds(250));
  EXPECT_TRUE(config.debug);
  EXPECT_EQ(config.adopt_domains, "winxp-*");
  EXPECT_EQ(config.proving_window, absl::Seconds(5));
  EXPECT_EQ(config.mmio_write_stops_per_second, 50);
  ASSERT_TRUE(ParseCommandLine({"--config", path, "--adopt-domains", "w2k3-*"}, &config).ok());
  EXPECT_EQ(config.adopt_domains, "w2k3-*");
}

TEST(ConfigTest, MetricsTextfileIsAnAbsolutePathOrNothing) {
  Config config;
  EXPECT_TRUE(config.metrics_textfile.empty()) << "no file unless asked for";
  ASSERT_TRUE(
      ApplyConfigText("metrics_textfile = /var/lib/node_exporter/tprd.prom\n", "t", &config).ok());
  EXPECT_EQ(config.metrics_textfile, "/var/lib/node_exporter/tprd.prom");
  absl::Status relative = ApplyConfigText("metrics_textfile = tprd.prom\n", "t", &config);
  EXPECT_EQ(relative.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(std::string(relative.message()).find("absolute path"), std::string::npos);
}

TEST(ConfigTest, BeforeTraceIsHalfASecondByDefaultAndZeroTurnsItOff) {
  Config config;
  EXPECT_EQ(config.before_trace, absl::Milliseconds(500));
  ASSERT_TRUE(ApplyConfigText("before_trace_ms = 0\n", "f", &config).ok());
  EXPECT_EQ(config.before_trace, absl::ZeroDuration());
  ASSERT_TRUE(ApplyConfigText("before_trace_ms = 250\n", "f", &config).ok());
  EXPECT_EQ(config.before_trace, absl::Milliseconds(250));
  EXPECT_FALSE(ApplyConfigText("before_trace_ms = -1\n", "f", &config).ok());
  EXPECT_FALSE(ApplyConfigText("before_trace_ms = 10001\n", "f", &config).ok());
  EXPECT_FALSE(ApplyConfigText("before_trace_ms = soon\n", "f", &config).ok());
}

TEST(ConfigTest, BadLinesNameTheFileAndLine) {
  Config config;
  absl::Status unknown = ApplyConfigText("connect = x\nsokcet = y\n", "tprd.conf", &config);
  EXPECT_TRUE(absl::IsInvalidArgument(unknown));
  EXPECT_THAT(std::string(unknown.message()), HasSubstr("tprd.conf:2"));
  EXPECT_THAT(std::string(unknown.message()), HasSubstr("sokcet"));
  EXPECT_FALSE(ApplyConfigText("poll_interval_ms = soon\n", "f", &config).ok());
  EXPECT_FALSE(ApplyConfigText("just words\n", "f", &config).ok());
  EXPECT_FALSE(ApplyConfigText("mmio_write_stops_per_second = 0\n", "f", &config).ok());
}

TEST(ConfigTest, DiscoveryIsAutoUnlessTheConfigForcesOne) {
  Config config;
  EXPECT_FALSE(config.discovery.has_value()) << "auto: by the domain's accelerator";
  ASSERT_TRUE(ApplyConfigText("discovery = watchpoint\n", "f", &config).ok());
  EXPECT_EQ(config.discovery, engine::Discovery::kWatchpoint);
  ASSERT_TRUE(ApplyConfigText("discovery = breakpoints\n", "f", &config).ok());
  EXPECT_EQ(config.discovery, engine::Discovery::kBreakpoints);
  ASSERT_TRUE(ApplyConfigText("discovery = auto\n", "f", &config).ok());
  EXPECT_FALSE(config.discovery.has_value());
  absl::Status bad = ApplyConfigText("discovery = int3\n", "f", &config);
  EXPECT_TRUE(absl::IsInvalidArgument(bad));
  EXPECT_THAT(std::string(bad.message()), HasSubstr("auto, breakpoints or watchpoint"));
}

TEST(ConfigTest, UsageErrorsAndMissingConfigFile) {
  Config config;
  EXPECT_FALSE(ParseCommandLine({"--bogus"}, &config).ok());
  EXPECT_FALSE(ParseCommandLine({"--socket"}, &config).ok());
  EXPECT_FALSE(ParseCommandLine({"--adopt-domains="}, &config).ok());
  EXPECT_TRUE(
      absl::IsNotFound(ParseCommandLine({"--config", "/nonexistent.conf"}, &config).status()));
  EXPECT_EQ(*ParseCommandLine({"--help"}, &config), CommandLineAction::kHelp);
}

}  // namespace
}  // namespace tprd::daemon

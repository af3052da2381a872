// tprd's command line (ParseCommandLine, on CLI11): where each flag's value comes from, and the
// traps of CLI11 2.1 it must not fall into (taking the next argument after `--flag=` or a flag
// as a value). tprd_flags_cli_test.cmake runs the binary for exit codes and output.
#include <stdlib.h>

#include <fstream>
#include <string>
#include <vector>

#include "daemon/config.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/daemon/test_dir.h"

namespace tprd::daemon {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

class TprdFlagsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Neither the host's environment nor its /etc/tprd/tprd.conf may leak into a case: each
    // command line gets an empty config file unless it names one.
    unsetenv("LIBVIRT_DEFAULT_URI");
    std::ofstream(empty_conf_) << "";
  }
  void TearDown() override { unsetenv("LIBVIRT_DEFAULT_URI"); }

  // Parses into a fresh Config.
  absl::StatusOr<CommandLineAction> Parse(std::vector<std::string> args) {
    config_ = Config();
    args.insert(args.begin(), {"--config", empty_conf_});
    return ParseCommandLine(args, &config_);
  }
  // The message of a usage error, which must be one line.
  std::string Error(std::vector<std::string> args) {
    absl::StatusOr<CommandLineAction> action = Parse(std::move(args));
    EXPECT_TRUE(absl::IsInvalidArgument(action.status())) << action.status();
    const std::string message(action.status().message());
    EXPECT_THAT(message, Not(HasSubstr("\n")));
    return message;
  }

  TestDir dir_;
  const std::string empty_conf_ = dir_.File("empty.conf");
  Config config_;
};

TEST_F(TprdFlagsTest, EveryFlagInBothFormsAndDefaultsOtherwise) {
  ASSERT_TRUE(Parse({}).ok());
  EXPECT_EQ(config_.connect, "qemu:///system");
  EXPECT_EQ(config_.socket, "/run/tprd/tprd.sock");
  EXPECT_EQ(config_.state_dir, "/var/lib/tprd");
  EXPECT_EQ(config_.adopt_domains, "*");
  EXPECT_EQ(config_.config_file, empty_conf_);

  auto action = Parse({"--connect", "test:///default", "--socket=/tmp/a.sock", "--state-dir",
                       "/tmp/state", "--adopt-domains=w2k3-*"});
  ASSERT_TRUE(action.ok()) << action.status();
  EXPECT_EQ(*action, CommandLineAction::kRun);
  EXPECT_EQ(config_.connect, "test:///default");
  EXPECT_EQ(config_.socket, "/tmp/a.sock");
  EXPECT_EQ(config_.state_dir, "/tmp/state");
  EXPECT_EQ(config_.adopt_domains, "w2k3-*");
}

TEST_F(TprdFlagsTest, ShortConnectAndValuesAfterEqualsAsWritten) {
  ASSERT_TRUE(Parse({"-c", "qemu:///session"}).ok());
  EXPECT_EQ(config_.connect, "qemu:///session");
  ASSERT_TRUE(Parse({"-c=test:///default"}).ok());  // not "=test:///default"
  EXPECT_EQ(config_.connect, "test:///default");
  ASSERT_TRUE(Parse({"--connect=qemu+ssh://h/system?keyfile=k"}).ok());
  EXPECT_EQ(config_.connect, "qemu+ssh://h/system?keyfile=k");
  // After `=` a value may start with '-'; a separate "-" is a value too.
  ASSERT_TRUE(Parse({"--socket=--odd.sock", "--state-dir", "-"}).ok());
  EXPECT_EQ(config_.socket, "--odd.sock");
  EXPECT_EQ(config_.state_dir, "-");
}

TEST_F(TprdFlagsTest, AFlagGivenTwiceKeepsItsLastValue) {
  ASSERT_TRUE(Parse({"--socket", "/tmp/a.sock", "--socket=/tmp/b.sock"}).ok());
  EXPECT_EQ(config_.socket, "/tmp/b.sock");
  ASSERT_TRUE(Parse({"--connect", "test:///a", "-c", "test:///b"}).ok());
  EXPECT_EQ(config_.connect, "test:///b");
}

TEST_F(TprdFlagsTest, EmptyValueAfterEqualsStaysEmptyAndTakesNothingElse) {
  ASSERT_TRUE(Parse({"--socket=", "--state-dir", "/tmp/state"}).ok());
  EXPECT_EQ(config_.socket, "");
  EXPECT_EQ(config_.state_dir, "/tmp/state");
  // The next argument is not the socket's value: it is reported as what it is.
  EXPECT_THAT(Error({"--socket=", "--x"}), HasSubstr("unknown argument \"--x\""));
  EXPECT_THAT(Error({"--socket=", "stray"}), HasSubstr("unknown argument \"stray\""));
  EXPECT_EQ(*Parse({"--socket=", "--help"}), CommandLineAction::kHelp);
}

TEST_F(TprdFlagsTest, AFlagIsNeverTakenAsTheValueOfTheOneBefore) {
  EXPECT_THAT(Error({"--socket", "--x"}), AllOf(HasSubstr("--socket needs a value"),
                                                HasSubstr("\"--x\""), HasSubstr("--socket=--x")));
  EXPECT_THAT(Error({"--socket", "--state-dir", "/tmp/state"}),
              HasSubstr("--socket needs a value"));
  EXPECT_THAT(Error({"-c", "-h"}), HasSubstr("--connect needs a value"));
  EXPECT_THAT(Error({"--adopt-domains", "--help"}), HasSubstr("--adopt-domains needs a value"));
  EXPECT_THAT(Error({"--state-dir", "--version"}), HasSubstr("--state-dir needs a value"));
  EXPECT_EQ(config_.socket, "/run/tprd/tprd.sock");
}

TEST_F(TprdFlagsTest, MissingValueNamesTheFlag) {
  EXPECT_EQ(Error({"--socket"}), "--socket needs a value");
  EXPECT_EQ(Error({"-c"}), "--connect needs a value");
  EXPECT_EQ(Error({"--adopt-domains"}), "--adopt-domains needs a value");
}

TEST_F(TprdFlagsTest, EmptyPatternIsAnErrorInEitherForm) {
  EXPECT_EQ(Error({"--adopt-domains="}), "--adopt-domains needs a pattern");
  EXPECT_EQ(Error({"--adopt-domains", ""}), "--adopt-domains needs a pattern");
  EXPECT_THAT(Error({"--adopt-domains=", "w2k3-*"}), HasSubstr("unknown argument \"w2k3-*\""));
  EXPECT_EQ(config_.adopt_domains, "*");
}

TEST_F(TprdFlagsTest, UnknownArgumentsAreNamed) {
  EXPECT_EQ(Error({"--bogus"}), "unknown argument \"--bogus\"");
  EXPECT_EQ(Error({"stray"}), "unknown argument \"stray\"");
  EXPECT_EQ(Error({"--sock", "/tmp/a.sock"}), "unknown arguments \"--sock\", \"/tmp/a.sock\"");
  EXPECT_THAT(Error({"-x"}), HasSubstr("\"-x\""));
  EXPECT_THAT(Error({"--", "--socket"}), HasSubstr("\"--socket\""));
}

TEST_F(TprdFlagsTest, HelpAndVersion) {
  EXPECT_EQ(*Parse({"--help"}), CommandLineAction::kHelp);
  EXPECT_EQ(*Parse({"-h"}), CommandLineAction::kHelp);
  EXPECT_EQ(*Parse({"--socket", "/tmp/a.sock", "--help"}), CommandLineAction::kHelp);
  EXPECT_EQ(*Parse({"--version"}), CommandLineAction::kVersion);
}

// CLI11 reads a value glued to a short flag: `-connect=URI` (one dash) would connect to
// "onnect=URI". tprd takes a value only as the next argument or after `=`.
TEST_F(TprdFlagsTest, ASingleDashArgumentIsAWholeFlagName) {
  EXPECT_EQ(Error({"-ctest:///default"}), "unknown argument \"-ctest:///default\"");
  EXPECT_EQ(Error({"-connect=test:///default"}), "unknown argument \"-connect=test:///default\"");
  EXPECT_EQ(Error({"-connect", "test:///default"}), "unknown argument \"-connect\"");
  EXPECT_EQ(Error({"-ch"}), "unknown argument \"-ch\"");
  EXPECT_EQ(Error({"-hc"}), "unknown argument \"-hc\"");
  EXPECT_EQ(config_.connect, "qemu:///system");
  ASSERT_TRUE(Parse({"-c=", "--socket", "-"}).ok());  // `-c=` is -c with an empty value
  EXPECT_EQ(config_.connect, "");
}

TEST_F(TprdFlagsTest, HelpAndVersionTakeNoValue) {
  EXPECT_EQ(Error({"--help=yes"}), "unknown argument \"--help=yes\"");
  EXPECT_EQ(Error({"-h=1"}), "unknown argument \"-h=1\"");
  EXPECT_EQ(Error({"--version=1"}), "unknown argument \"--version=1\"");
}

// As tprd's first parser did: the first --help or --version ends the command line (what
// follows is not read), and what precedes it must parse.
TEST_F(TprdFlagsTest, TheFirstOfHelpAndVersionWinsAndEndsTheCommandLine) {
  EXPECT_EQ(*Parse({"--help", "--version"}), CommandLineAction::kHelp);
  EXPECT_EQ(*Parse({"--version", "-h"}), CommandLineAction::kVersion);
  EXPECT_EQ(*Parse({"--help", "--bogus"}), CommandLineAction::kHelp);
  EXPECT_EQ(*Parse({"--help", "--socket"}), CommandLineAction::kHelp);
  EXPECT_EQ(*Parse({"--adopt-domains=", "--help"}), CommandLineAction::kHelp);
  EXPECT_EQ(*Parse({"--config=/nonexistent.conf", "--version"}), CommandLineAction::kVersion);
  EXPECT_EQ(Error({"--bogus", "--help"}), "unknown argument \"--bogus\"");
  EXPECT_EQ(Error({"stray", "--version"}), "unknown argument \"stray\"");
  EXPECT_EQ(Error({"--socket", "--help"}),
            "--socket needs a value, not the flag \"--help\" "
            "(write --socket=--help for that value)");
  EXPECT_EQ(config_.socket, "/run/tprd/tprd.sock");
}

TEST_F(TprdFlagsTest, EnvironmentThenFileThenFlags) {
  const std::string conf = dir_.File("tprd.conf");
  std::ofstream(conf) << "connect = qemu+ssh://file/system\nsocket = /tmp/file.sock\n";
  setenv("LIBVIRT_DEFAULT_URI", "test:///env", 1);
  ASSERT_TRUE(Parse({}).ok());
  EXPECT_EQ(config_.connect, "test:///env");
  ASSERT_TRUE(Parse({"--config", conf}).ok());  // the last --config wins over Parse's own
  EXPECT_EQ(config_.config_file, conf);
  EXPECT_EQ(config_.connect, "qemu+ssh://file/system");
  EXPECT_EQ(config_.socket, "/tmp/file.sock");
  ASSERT_TRUE(Parse({"--config=" + conf, "-c", "test:///flag"}).ok());
  EXPECT_EQ(config_.connect, "test:///flag");
  EXPECT_EQ(config_.socket, "/tmp/file.sock");
}

TEST_F(TprdFlagsTest, ConfigFileErrorsComeBackAsTheyAre) {
  EXPECT_TRUE(absl::IsNotFound(Parse({"--config", "/nonexistent.conf"}).status()));
  EXPECT_TRUE(absl::IsNotFound(Parse({"--config="}).status()));
  const std::string bad = dir_.File("bad.conf");
  std::ofstream(bad) << "sokcet = /tmp/x.sock\n";
  absl::StatusOr<CommandLineAction> action = Parse({"--config", bad});
  EXPECT_TRUE(absl::IsInvalidArgument(action.status()));
  EXPECT_THAT(std::string(action.status().message()), HasSubstr("bad.conf:1: "));
}

}  // namespace
}  // namespace tprd::daemon

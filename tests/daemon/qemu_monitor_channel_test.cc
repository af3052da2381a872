// QemuMonitor::StartGdbServer against FakeLibvirtConnection: the order of the monitor commands
// that hand QEMU tprd's socketpair, what it refuses, and what it cleans up on each failure.
// (The same sequence against real QEMU: qemu_guest_vm_integration_test and every e2e test.)
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvm-backend/qemu_monitor.h"
#include "tests/fakes/fake_libvirt_connection.h"

namespace tprd::backend {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr char kUuid[] = "6f1c1d32-5a52-4c39-9d5c-0123456789ab";
constexpr char kQueryChardev[] = R"({"execute":"query-chardev"})";
constexpr char kNoChardevs[] =
    R"({"return":[{"frontend-open":true,"filename":"gdb","label":"#chr054"}]})";

class QemuMonitorChannelTest : public ::testing::Test {
 protected:
  void SetUp() override {
    LibvirtDomainInfo domain;
    domain.name = "xp";
    domain.uuid = kUuid;
    domain.state = LibvirtDomainState::kRunning;
    connection_.AddDomain(domain, 1234);
  }

  // Answers every command; `fail_on` (a substring) gets a QMP or HMP error instead.
  void Answer(std::string chardevs, std::string fail_on = "") {
    connection_.SetMonitorHandler([chardevs, fail_on](const std::string&,
                                                      const std::string& command,
                                                      bool hmp) -> absl::StatusOr<std::string> {
      if (command == kQueryChardev) return chardevs;
      if (!fail_on.empty() && absl::StrContains(command, fail_on)) {
        return hmp ? std::string("Could not open gdbserver on device 'chardev:x'\r\n")
                   : std::string(R"({"error":{"class":"GenericError","desc":"refused"}})");
      }
      if (hmp) return std::string("Waiting for gdb connection on device 'chardev:x'\r\n");
      return std::string(R"({"return":{}})");
    });
  }

  FakeLibvirtConnection connection_;
  QemuMonitor monitor_{&connection_, kUuid};
};

TEST_F(QemuMonitorChannelTest, HandsQemuOneEndOfASocketpairAndStartsTheGdbstubOnIt) {
  Answer(kNoChardevs);
  absl::StatusOr<std::unique_ptr<UnixSocketStream>> stream = monitor_.StartGdbServer();
  ASSERT_TRUE(stream.ok()) << stream.status();
  const std::vector<std::string> log = connection_.monitor_log();
  ASSERT_EQ(log.size(), 4u);
  EXPECT_EQ(log[0], std::string("qmp: ") + kQueryChardev);
  EXPECT_THAT(log[1], StartsWith(R"(qmp: {"arguments":{"fdname":"tprd-gdb-)"));
  EXPECT_THAT(log[1], HasSubstr(R"("execute":"getfd")"));
  EXPECT_THAT(log[2], HasSubstr(R"("execute":"chardev-add")"));
  EXPECT_THAT(log[3], StartsWith("hmp: gdbserver chardev:tprd-gdb-"));
  // One name for the descriptor and the chardev, new for every channel.
  const std::string id = log[3].substr(std::string("hmp: gdbserver chardev:").size());
  EXPECT_THAT(log[1], HasSubstr(id));
  EXPECT_THAT(log[2], HasSubstr(R"("id":")" + id + "\""));
  connection_.SetMonitorHandler(nullptr);
  Answer(kNoChardevs);
  ASSERT_TRUE(monitor_.StartGdbServer().ok());
  EXPECT_NE(connection_.monitor_log()[7], log[3]);
}

TEST_F(QemuMonitorChannelTest, SomeoneElsesGdbstubIsAlreadyExistsAndNothingIsPassed) {
  Answer(R"({"return":[{"frontend-open":true,"filename":"unix:/tmp/dbg.sock,server=on",)"
         R"("label":"gdb"}]})");
  absl::StatusOr<std::unique_ptr<UnixSocketStream>> stream = monitor_.StartGdbServer();
  EXPECT_EQ(stream.status().code(), absl::StatusCode::kAlreadyExists) << stream.status();
  EXPECT_THAT(std::string(stream.status().message()), HasSubstr("/tmp/dbg.sock"));
  EXPECT_THAT(connection_.monitor_log(), ElementsAre(std::string("qmp: ") + kQueryChardev));
}

TEST_F(QemuMonitorChannelTest, AnOlderTprdsSocketAndAPreviousChannelAreTakenOver) {
  Answer(R"({"return":[{"frontend-open":true,"filename":"unix:/run/tprd/gdb/x.sock,server=on",)"
         R"("label":"gdb"},{"frontend-open":true,"filename":"disconnected:fd:tprd-gdb-9-0",)"
         R"("label":"tprd-gdb-9-0"}]})");
  ASSERT_TRUE(monitor_.StartGdbServer().ok());
  // Replaced by `gdbserver chardev:NEW` (QEMU deletes the old gdbstub chardev), not removed.
  for (const std::string& command : connection_.monitor_log()) {
    EXPECT_THAT(command, ::testing::Not(HasSubstr("chardev-remove")));
  }
}

TEST_F(QemuMonitorChannelTest, ALeftoverChardevWithoutFrontendIsRemoved) {
  Answer(R"({"return":[{"frontend-open":false,"filename":"unix:","label":"tprd-gdb-9-3"}]})");
  ASSERT_TRUE(monitor_.StartGdbServer().ok());
  EXPECT_EQ(connection_.monitor_log()[1],
            R"(qmp: {"arguments":{"id":"tprd-gdb-9-3"},"execute":"chardev-remove"})");
}

TEST_F(QemuMonitorChannelTest, AFailedChardevAddClosesTheNamedDescriptor) {
  Answer(kNoChardevs, "chardev-add");
  absl::StatusOr<std::unique_ptr<UnixSocketStream>> stream = monitor_.StartGdbServer();
  ASSERT_FALSE(stream.ok());
  EXPECT_THAT(std::string(stream.status().message()), HasSubstr("chardev-add"));
  EXPECT_THAT(connection_.monitor_log().back(), HasSubstr(R"("execute":"closefd")"));
}

TEST_F(QemuMonitorChannelTest, AFailedGdbserverRemovesTheChardev) {
  Answer(kNoChardevs, "gdbserver chardev:");
  absl::StatusOr<std::unique_ptr<UnixSocketStream>> stream = monitor_.StartGdbServer();
  ASSERT_FALSE(stream.ok());
  EXPECT_THAT(connection_.monitor_log().back(), HasSubstr(R"("execute":"chardev-remove")"));
}

TEST_F(QemuMonitorChannelTest, AFailedGetfdLeavesNothingBehind) {
  Answer(kNoChardevs, R"("execute":"getfd")");
  absl::StatusOr<std::unique_ptr<UnixSocketStream>> stream = monitor_.StartGdbServer();
  ASSERT_FALSE(stream.ok());
  EXPECT_THAT(std::string(stream.status().message()), HasSubstr("getfd"));
  EXPECT_EQ(connection_.monitor_log().size(), 2u);
}

}  // namespace
}  // namespace tprd::backend

// QemuMonitor's gdbstub channel over FakeLibvirtConnection: whose channel it may replace.
#include "kvm-backend/qemu_monitor.h"

#include <unistd.h>

#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_libvirt_connection.h"

namespace tprd::backend {
namespace {

using ::testing::HasSubstr;

constexpr char kUuid[] = "6f1c2f0e-0000-4000-8000-000000000001";

// query-chardev listing one tprd gdbstub channel of process `pid`, in use.
std::string ListingWithChannelOf(int pid) {
  return absl::StrCat(R"({"return":[{"frontend-open":true,"filename":"disconnected:fd:x",)",
                      R"("label":"tprd-gdb-)", pid, R"(-3"}],"id":"libvirt-1"})");
}

class QemuMonitorTest : public ::testing::Test {
 protected:
  QemuMonitorTest() {
    LibvirtDomainInfo domain;
    domain.uuid = kUuid;
    domain.name = "guest";
    domain.state = LibvirtDomainState::kRunning;
    connection_.AddDomain(domain);
    connection_.SetMonitorHandler(
        [](const std::string&, const std::string& command, bool) -> absl::StatusOr<std::string> {
          if (absl::StrContains(command, "gdbserver")) {
            return std::string("Waiting for gdb connection on device 'chardev:x'\r\n");
          }
          return std::string(R"({"return":{},"id":"libvirt-2"})");
        });
  }
  FakeLibvirtConnection connection_;
};

// Two tprds managing one domain would take the gdbstub from each other, each seeing its own
// session break ("broken pipe"): the second is told who holds it instead.
TEST_F(QemuMonitorTest, AnotherRunningTprdsChannelIsNotTakenOver) {
  connection_.SetMonitorReply(R"({"execute":"query-chardev"})", ListingWithChannelOf(4242));
  QemuMonitor monitor(&connection_, kUuid, [](int pid) { return pid == 4242; });
  auto started = monitor.StartGdbServer();
  EXPECT_EQ(started.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(std::string(started.status().message()), HasSubstr("another tprd (pid 4242)"));
  for (const std::string& command : connection_.monitor_log()) {
    EXPECT_THAT(command, ::testing::Not(HasSubstr("gdbserver"))) << "nothing started";
  }
}

// A killed tprd's channel (its process gone) is replaced, as is one of this process's own.
TEST_F(QemuMonitorTest, ADeadTprdsOrOurOwnChannelIsReplaced) {
  for (int holder : {4242, static_cast<int>(getpid())}) {
    SCOPED_TRACE(holder);
    connection_.SetMonitorReply(R"({"execute":"query-chardev"})", ListingWithChannelOf(holder));
    QemuMonitor monitor(&connection_, kUuid,
                        [](int pid) { return pid == static_cast<int>(getpid()); });
    auto started = monitor.StartGdbServer();
    EXPECT_TRUE(started.ok()) << started.status();
  }
}

TEST(IsRunningTprd, ThisTestIsNotTprdAndNoProcessIsPidZero) {
  EXPECT_FALSE(IsRunningTprd(getpid()));
  EXPECT_FALSE(IsRunningTprd(0));
}

}  // namespace
}  // namespace tprd::backend

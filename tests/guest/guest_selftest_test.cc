// Runs the test guest's handler self-test mode: the guest installs the tprd blob (a multiboot
// module instantiated by tpr-blob-tool) and checks every handler under exact, mmio and cr8.
#include <chrono>
#include <set>
#include <string>

#include "gtest/gtest.h"
#include "tests/support/qemu_process.h"

namespace tprd::testing {
namespace {

using std::chrono::seconds;

TEST(GuestSelftestTest, EveryStrategyPasses) {
  QemuOptions options;
  options.kernel = std::string(TPRD_GUEST_DIR) + "/tpr-test-guest.elf";
  options.initrd = std::string(TPRD_GUEST_DIR) + "/selftest-blob.bin";
  options.append = "selftest nobench";
  options.cpu = "qemu32,+cr8legacy";  // TCG honours lock mov cr0 as CR8 with this flag
  options.smp = 2;
  auto qemu = QemuProcess::Start(options);
  ASSERT_TRUE(qemu.ok()) << qemu.status();
  auto done = (*qemu)->WaitForPrefix("SELFTEST done ", seconds(60));
  ASSERT_TRUE(done.ok()) << done.status();

  std::set<std::string> strategies_passed, and_zero_passed;
  for (const std::string& line : (*qemu)->lines()) {
    if (line.rfind("SELFTEST strategy=", 0) != 0) continue;
    EXPECT_EQ(line.find(" fail"), std::string::npos) << line;
    auto f = ParseSerialFields(line);
    if (line.size() > 5 && line.compare(line.size() - 5, 5, " pass") == 0 &&
        f["check"] == "values") {
      strategies_passed.insert(f["strategy"]);
    }
    // and dword [tpr], 0 through and_tpr_zero: values, real TPR, registers and the and's flags.
    if (line.size() > 5 && line.compare(line.size() - 5, 5, " pass") == 0 &&
        f["check"] == "and-zero-registers-flags-stack") {
      and_zero_passed.insert(f["strategy"]);
    }
  }
  EXPECT_EQ(strategies_passed, (std::set<std::string>{"exact", "mmio", "cr8"}));
  EXPECT_EQ(and_zero_passed, (std::set<std::string>{"exact", "mmio", "cr8"}));
  auto fields = ParseSerialFields(*done);
  EXPECT_EQ(fields["fail"], "0") << *done << "\n" << (*qemu)->LastLines(40);
  EXPECT_GT(std::stoul(fields["pass"]), 10u) << *done;

  // After the self-test the guest goes on with its normal checks.
  auto stat = (*qemu)->WaitForPrefix("STAT ", seconds(30));
  ASSERT_TRUE(stat.ok()) << stat.status();
  EXPECT_EQ(ParseSerialFields(*stat)["fail"], "0") << *stat;
}

}  // namespace
}  // namespace tprd::testing

// Boots the test guest under QEMU TCG (no libvirt) and checks its own verdict: every CPU's
// STAT lines show passing checks and no failures, in the non-PAE and the PAE build.
#include <chrono>
#include <set>
#include <string>

#include "gtest/gtest.h"
#include "tests/support/qemu_process.h"

namespace tprd::testing {
namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

std::string GuestImage(const char* name) { return std::string(TPRD_GUEST_DIR) + "/" + name; }

QemuOptions GuestOptions(const char* image, int smp, const char* append = "") {
  QemuOptions options;
  options.kernel = GuestImage(image);
  options.smp = smp;
  options.append = append;
  return options;
}

// Waits until every CPU has printed a STAT line with pass > 0 (after at least `min_rounds`
// rounds), failing on any FAIL line or STAT with fail > 0.
void ExpectAllCpusPass(QemuProcess& qemu, int cpus, seconds timeout) {
  auto boot = qemu.WaitForPrefix("BOOT ", seconds(30));
  ASSERT_TRUE(boot.ok()) << boot.status();
  auto boot_fields = ParseSerialFields(*boot);
  ASSERT_EQ(boot_fields["cpus"], std::to_string(cpus)) << *boot;

  std::set<int> passing;
  std::string failure;
  auto verdict = qemu.WaitForLine(
      [&](const std::string& line) {
        if (line.rfind("FAIL ", 0) == 0) {
          failure = line;
          return true;
        }
        if (line.rfind("STAT ", 0) != 0) return false;
        auto f = ParseSerialFields(line);
        if (f["fail"] != "0") {
          failure = line;
          return true;
        }
        if (std::stoul(f["pass"]) > 0 && std::stoul(f["rounds"]) > 0) {
          passing.insert(std::stoi(f["cpu"]));
        }
        return static_cast<int>(passing.size()) == cpus;
      },
      timeout);
  ASSERT_TRUE(verdict.ok()) << verdict.status();
  EXPECT_TRUE(failure.empty()) << failure << "\nlast lines:\n" << qemu.LastLines();
}

TEST(GuestBootTest, OneCpuPasses) {
  QemuOptions options = GuestOptions("tpr-test-guest.elf", 1);
  auto qemu = QemuProcess::Start(options);
  ASSERT_TRUE(qemu.ok()) << qemu.status();
  ExpectAllCpusPass(**qemu, 1, seconds(45));
  // A benchmark round reports all four figures.
  auto bench = (*qemu)->WaitForPrefix("BENCH ", seconds(20));
  ASSERT_TRUE(bench.ok()) << bench.status();
  auto f = ParseSerialFields(*bench);
  for (const char* key : {"round", "tpr_read", "tpr_write", "mem_read", "mem_write"}) {
    EXPECT_FALSE(f[key].empty()) << key << " missing in " << *bench;
  }
}

TEST(GuestBootTest, TwoCpusPass) {
  QemuOptions options = GuestOptions("tpr-test-guest.elf", 2);
  auto qemu = QemuProcess::Start(options);
  ASSERT_TRUE(qemu.ok()) << qemu.status();
  ExpectAllCpusPass(**qemu, 2, seconds(45));
}

TEST(GuestBootTest, PaeTwoCpusPass) {
  QemuOptions options = GuestOptions("tpr-test-guest-pae.elf", 2);
  auto qemu = QemuProcess::Start(options);
  ASSERT_TRUE(qemu.ok()) << qemu.status();
  auto boot = (*qemu)->WaitForPrefix("BOOT ", seconds(30));
  ASSERT_TRUE(boot.ok()) << boot.status();
  EXPECT_EQ(ParseSerialFields(*boot)["paging"], "pae");
  ExpectAllCpusPass(**qemu, 2, seconds(45));
}

TEST(GuestBootTest, SiteTableListsEveryForm) {
  QemuOptions options = GuestOptions("tpr-test-guest.elf", 1, "nobench");
  auto qemu = QemuProcess::Start(options);
  ASSERT_TRUE(qemu.ok()) << qemu.status();
  ASSERT_TRUE((*qemu)->WaitForPrefix("STAT ", seconds(45)).ok()) << (*qemu)->LastLines();
  std::set<std::string> patchable_forms, kinds;
  std::set<std::string> regs_8b;
  for (const std::string& line : (*qemu)->lines()) {
    if (line.rfind("SITE ", 0) != 0) continue;
    auto f = ParseSerialFields(line);
    kinds.insert(f["kind"]);
    EXPECT_EQ(f["va"].rfind("0x801", 0), 0u) << line;
    if (f["kind"] == "patchable") patchable_forms.insert(f["form"]);
    if (f["kind"] == "patchable" && f["form"] == "8B") regs_8b.insert(f["reg"]);
  }
  EXPECT_EQ(patchable_forms, (std::set<std::string>{"A1", "A3", "8B", "89", "C7", "FF6", "8325"}));
  EXPECT_EQ(kinds, (std::set<std::string>{"patchable", "unpatchable", "decoy"}));
  EXPECT_TRUE(regs_8b.count("edi") && regs_8b.count("ebp")) << "8B sites need edi and ebp";
}

TEST(GuestBootTest, LateSiteRunsOnlyAfterItsTime) {
  QemuOptions options = GuestOptions("tpr-test-guest.elf", 2, "late=3 nobench");
  auto qemu = QemuProcess::Start(options);
  ASSERT_TRUE(qemu.ok()) << qemu.status();
  auto boot = (*qemu)->WaitForPrefix("BOOT ", seconds(30));
  ASSERT_TRUE(boot.ok()) << boot.status();
  EXPECT_EQ(ParseSerialFields(*boot)["late"], "3");
  auto late = (*qemu)->WaitForPrefix("LATE ", seconds(40));
  ASSERT_TRUE(late.ok()) << late.status();
  EXPECT_GE(std::stoul(ParseSerialFields(*late)["uptime_ms"]), 3000u) << *late;
}

}  // namespace
}  // namespace tprd::testing

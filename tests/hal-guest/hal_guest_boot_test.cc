// Boots hal-guest (the HAL-shaped, independent test guest; docs/hal-guest.md) under plain
// QEMU TCG with QEMU's own TPR patcher off, and checks its serial STAT/FAIL lines.
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "gtest/gtest.h"
#include "tests/support/qemu_process.h"

namespace {

using tprd::testing::ParseSerialFields;
using tprd::testing::QemuOptions;
using tprd::testing::QemuProcess;
using Fields = std::map<std::string, std::string>;
using namespace std::chrono_literals;

// Every CPU must report STAT up to this guest uptime (TSC-based, so wall-clock bound).
constexpr uint64_t kStatUptimeMs = 5000;
constexpr auto kBootTimeout = 30s;
constexpr auto kStatTimeout = 45s;

uint64_t Num(const Fields& f, const std::string& key) {
  auto it = f.find(key);
  if (it == f.end() || it->second.empty()) return UINT64_MAX;
  return std::stoull(it->second, nullptr, 0);
}

bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

QemuOptions Options(const std::string& append, int smp, const std::string& cpu = "") {
  QemuOptions o;
  o.kernel = TPRD_HAL_GUEST_ELF;
  o.append = append;
  o.smp = smp;
  o.memory_mib = 64;
  o.cpu = cpu;
  o.vapic_off = true;
  return o;
}

// Boots, waits for BOOT and for STAT lines from every CPU up to kStatUptimeMs, then checks
// the counters. Returns the serial lines for further checks.
std::vector<std::string> BootAndCheck(int seed, int smp, const std::string& cpu = "") {
  auto qemu = QemuProcess::Start(Options("seed=" + std::to_string(seed), smp, cpu));
  EXPECT_TRUE(qemu.ok()) << qemu.status();
  if (!qemu.ok()) return {};
  auto boot = (*qemu)->WaitForPrefix("BOOT ", kBootTimeout);
  EXPECT_TRUE(boot.ok()) << boot.status();
  if (!boot.ok()) return {};
  Fields b = ParseSerialFields(*boot);
  EXPECT_EQ(b["guest"], "hal");
  EXPECT_EQ(Num(b, "cpus"), static_cast<uint64_t>(smp)) << *boot;
  EXPECT_EQ(Num(b, "expected"), static_cast<uint64_t>(smp)) << *boot;
  EXPECT_EQ(Num(b, "seed"), static_cast<uint64_t>(seed)) << *boot;

  std::map<int, uint64_t> uptime;
  auto done = (*qemu)->WaitForLine(
      [&](const std::string& line) {
        if (!StartsWith(line, "STAT ")) return false;
        Fields f = ParseSerialFields(line);
        uptime[static_cast<int>(Num(f, "cpu"))] = Num(f, "uptime_ms");
        if (static_cast<int>(uptime.size()) < smp) return false;
        for (const auto& [c, u] : uptime) {
          if (u < kStatUptimeMs) return false;
        }
        return true;
      },
      kStatTimeout);
  EXPECT_TRUE(done.ok()) << done.status();

  std::vector<std::string> lines = (*qemu)->lines();
  std::map<int, std::vector<Fields>> stats;
  for (const std::string& line : lines) {
    EXPECT_FALSE(StartsWith(line, "FAIL ")) << line;
    if (!StartsWith(line, "STAT ")) continue;
    Fields f = ParseSerialFields(line);
    stats[static_cast<int>(Num(f, "cpu"))].push_back(f);
    EXPECT_EQ(Num(f, "wrong_reads"), 0u) << line;
    EXPECT_EQ(Num(f, "mask_violations"), 0u) << line;
    EXPECT_EQ(Num(f, "lost_interrupts"), 0u) << line;
  }
  EXPECT_EQ(static_cast<int>(stats.size()), smp);
  for (int c = 0; c < smp; ++c) {
    const auto& s = stats[c];
    EXPECT_GE(s.size(), 2u) << "cpu " << c << " STAT lines; last lines:\n"
                            << (*qemu)->LastLines(30);
    if (s.size() < 2) continue;
    const Fields& first = s.front();
    const Fields& last = s.back();
    EXPECT_GT(Num(last, "rounds"), Num(first, "rounds")) << "cpu " << c;
    EXPECT_GT(Num(last, "tpr_reads"), Num(first, "tpr_reads")) << "cpu " << c;
    EXPECT_GT(Num(last, "timer_ticks"), Num(first, "timer_ticks")) << "cpu " << c;
    if (smp > 1) {
      EXPECT_GT(Num(last, "ipis"), Num(first, "ipis")) << "cpu " << c;
    }
    EXPECT_GT(Num(last, "rare_runs"), 0u) << "cpu " << c;
    EXPECT_GT(Num(last, "mask_tests"), 0u) << "cpu " << c;
  }
  return lines;
}

// The HAL forms of shared/design/hal-research.md must all be present as executed sites, plus the
// other kinds (rare writers, register-relative, cmp/test, decoys).
void CheckSites(const std::vector<std::string>& lines) {
  std::set<std::string> forms, kinds, names;
  for (const std::string& line : lines) {
    if (!StartsWith(line, "SITE ")) continue;
    Fields f = ParseSerialFields(line);
    kinds.insert(f["kind"]);
    names.insert(f["name"]);
    if (f["kind"] != "decoy") forms.insert(f["form"]);
  }
  for (const char* kind : {"hot", "rare", "regrel", "cmp", "icr", "decoy"}) {
    EXPECT_TRUE(kinds.count(kind)) << "no SITE of kind " << kind;
  }
  // KfRaiseIrql (A1 + 89 0D), KeRaiseIrqlToDpcLevel/SynchLevel (C7 41/C1), KeGetCurrentIrql
  // (8B 0D), MoveZeroToTpr (83 /4), push dword [tpr] (FF /6), KfLowerIrql (89 /r).
  for (const char* form : {"A1", "89/ecx", "C7/41", "C7/C1", "8B/ecx", "83/4", "FF/6"}) {
    EXPECT_TRUE(forms.count(form)) << "no executed SITE with form " << form;
  }
  for (const char* name :
       {"KfRaiseIrql.rd", "KfRaiseIrql.wr", "KeRaiseIrqlToDpcLevel.wr",
        "KeRaiseIrqlToSynchLevel.wr", "KfLowerIrql.wr", "KeGetCurrentIrql.rd", "MoveZeroToTpr.wr",
        "HalpReadTpr.rd", "HalpRegRelRead.rd", "HalpRegRelWrite.wr", "HalpRareRaise.wr"}) {
    EXPECT_TRUE(names.count(name)) << "no SITE " << name;
  }
}

class HalGuestBootTest : public ::testing::TestWithParam<std::tuple<int, int>> {};

TEST_P(HalGuestBootTest, ChecksHoldOnEveryCpu) {
  auto [seed, smp] = GetParam();
  std::vector<std::string> lines = BootAndCheck(seed, smp);
  if (HasFailure()) return;
  CheckSites(lines);
}

INSTANTIATE_TEST_SUITE_P(SeedsAndCpus, HalGuestBootTest,
                         ::testing::Combine(::testing::Values(1, 2, 3), ::testing::Values(1, 2, 4)),
                         [](const auto& info) {
                           return "seed" + std::to_string(std::get<0>(info.param)) + "_smp" +
                                  std::to_string(std::get<1>(info.param));
                         });

TEST(HalGuestBootTest, Cr8LegacyCpuModel) { BootAndCheck(7, 2, "qemu32,+cr8legacy"); }

// One seed nobody chose, printed so that a failure can be replayed with TPRD_HAL_SEED=N.
TEST(HalGuestBootTest, RandomSeed) {
  int seed = 0;
  if (const char* fixed = std::getenv("TPRD_HAL_SEED"); fixed != nullptr && *fixed != 0) {
    seed = std::atoi(fixed);
  } else {
    seed = static_cast<int>(std::random_device{}() % 1000000) + 4;
  }
  std::cout << "hal-guest random seed: " << seed << " (replay: TPRD_HAL_SEED=" << seed << ")\n";
  RecordProperty("seed", seed);
  std::vector<std::string> lines = BootAndCheck(seed, 2);
  if (HasFailure()) return;
  CheckSites(lines);
}

// Different seeds place the functions at different addresses and pick different forms.
TEST(HalGuestBootTest, SeedsVaryLayoutAndForms) {
  std::map<int, std::map<std::string, std::string>> site_va, func_tmpl;
  for (int seed : {1, 2}) {
    auto qemu = QemuProcess::Start(Options("seed=" + std::to_string(seed), 1));
    ASSERT_TRUE(qemu.ok()) << qemu.status();
    auto end = (*qemu)->WaitForPrefix("TEMPLATES ", kBootTimeout);
    ASSERT_TRUE(end.ok()) << end.status();
    for (const std::string& line : (*qemu)->lines()) {
      Fields f = ParseSerialFields(line);
      if (f[""] == "SITE" && f["kind"] != "decoy") site_va[seed][f["name"]] = f["va"];
      if (f[""] == "FUNC") func_tmpl[seed][f["name"]] = f["template"];
    }
  }
  ASSERT_FALSE(site_va[1].empty());
  EXPECT_NE(site_va[1]["KfRaiseIrql.wr"], site_va[2]["KfRaiseIrql.wr"]);
  EXPECT_NE(site_va[1], site_va[2]);
  EXPECT_NE(func_tmpl[1], func_tmpl[2]);
}

// The checks can fail: inject=stale writes the TPR once behind the HAL functions' back.
TEST(HalGuestNegativeTest, StaleTprWriteIsDetected) {
  auto qemu = QemuProcess::Start(Options("seed=1 inject=stale", 2));
  ASSERT_TRUE(qemu.ok()) << qemu.status();
  auto inject = (*qemu)->WaitForPrefix("INJECT ", kBootTimeout);
  ASSERT_TRUE(inject.ok()) << inject.status();
  auto fail = (*qemu)->WaitForLine(
      [](const std::string& line) {
        return StartsWith(line, "FAIL cpu=0 check=read/") && line.find("got=0x") != line.npos;
      },
      10s);
  ASSERT_TRUE(fail.ok()) << fail.status();
  auto stat = (*qemu)->WaitForLine(
      [](const std::string& line) {
        if (!StartsWith(line, "STAT cpu=0 ")) return false;
        return Num(ParseSerialFields(line), "wrong_reads") > 0;
      },
      10s);
  ASSERT_TRUE(stat.ok()) << stat.status();
  // The other CPU did nothing wrong.
  for (const std::string& line : (*qemu)->lines()) {
    EXPECT_FALSE(StartsWith(line, "FAIL cpu=1 ")) << line;
  }
}

// The decoy page's check can fail: inject=decoy changes one byte of it, as a patch of a decoy or
// a software breakpoint left in it would; every CPU reports it at its next STAT.
TEST(HalGuestNegativeTest, ChangedDecoyByteIsDetected) {
  auto qemu = QemuProcess::Start(Options("seed=1 inject=decoy", 2));
  ASSERT_TRUE(qemu.ok()) << qemu.status();
  auto inject = (*qemu)->WaitForPrefix("INJECT ", kBootTimeout);
  ASSERT_TRUE(inject.ok()) << inject.status();
  for (int cpu = 0; cpu < 2; ++cpu) {
    auto fail =
        (*qemu)->WaitForPrefix("FAIL cpu=" + std::to_string(cpu) + " check=decoy_bytes ", 10s);
    ASSERT_TRUE(fail.ok()) << "cpu " << cpu << ": " << fail.status();
  }
}

// A CPU exception prints FAIL and halts only that CPU: never a triple fault (QEMU runs with
// -no-reboot, so a triple fault would end the process). inject=fault runs into the int3
// filler (#BP); inject=df raises an exception on an unmapped stack (#PF, then #DF through the
// task gate).
class HalGuestExceptionTest : public ::testing::TestWithParam<std::tuple<std::string, int>> {};

TEST_P(HalGuestExceptionTest, FailsAndHaltsOnlyThatCpu) {
  auto [mode, vector] = GetParam();
  auto qemu = QemuProcess::Start(Options("seed=2 inject=" + mode, 2));
  ASSERT_TRUE(qemu.ok()) << qemu.status();
  auto fail = (*qemu)->WaitForPrefix(
      "FAIL cpu=0 check=exception vector=" + std::to_string(vector) + " ", kBootTimeout);
  ASSERT_TRUE(fail.ok()) << fail.status();
  size_t after = (*qemu)->lines().size();
  auto stat = (*qemu)->WaitForPrefix("STAT cpu=1 ", 10s, after);
  ASSERT_TRUE(stat.ok()) << stat.status();
  size_t next = after;
  while ((*qemu)->lines()[next] != *stat) ++next;
  // A second one: cpu 1 keeps running after cpu 0 stopped.
  auto stat2 = (*qemu)->WaitForPrefix("STAT cpu=1 ", 10s, next + 1);
  ASSERT_TRUE(stat2.ok()) << stat2.status();
  EXPECT_FALSE((*qemu)->exited());
  bool halted = false;
  for (const std::string& line : (*qemu)->lines()) {
    EXPECT_FALSE(StartsWith(line, "FAIL cpu=1 ")) << line;
    if (line == *fail) halted = true;
    EXPECT_FALSE(halted && StartsWith(line, "STAT cpu=0 ")) << "cpu 0 still running: " << line;
  }
  EXPECT_TRUE(halted);
}

INSTANTIATE_TEST_SUITE_P(Modes, HalGuestExceptionTest,
                         ::testing::Values(std::make_tuple(std::string("fault"), 3),
                                           std::make_tuple(std::string("df"), 8)),
                         [](const auto& info) { return std::get<0>(info.param); });

}  // namespace

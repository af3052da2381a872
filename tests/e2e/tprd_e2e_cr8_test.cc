// tprd end to end on the first test guest under cr8 (AltMovCr8; the guest CPU has cr8legacy:
// the handlers write CR8, which clears the TPR's low nibble, so every unpatched read of the
// test guest, register-relative, prefixed or cmp, is caught by tprd's watchpoint and fixed up)
// and under mmio, on 1, 2 and 4 vCPUs, for a sustained run that crosses the end of the proving
// window, then a rollback. The guest's checks must hold throughout. The `_watchpoint` cases force
// the discovery tprd picks on KVM hosts (`discovery = watchpoint`: no breakpoint on unproven
// bytes) and compare the unproven candidates' bytes, read through QEMU's monitor at random
// moments, with what the scan found (docs/design.md "Discovery on KVM hosts").
// Between the quarters of that run tprd is stopped with SIGTERM and started again, killed with
// SIGKILL and started again, and the guest is reset (the operator's recorded intent patches the
// new boot): each must leave the guest's checks at 0 failures and tprd on the same strategy.
// TPRD_E2E_SECONDS=N makes each case run N STAT lines per vCPU patched (the soak: 60 or more).
#include <cstdlib>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_support.h"
#include "tests/support/libvirt_test_env.h"
#include "tests/support/qemu_process.h"

namespace tprd::testing {
namespace {

struct StrategyCase {
  std::string strategy;  // cr8 or mmio
  int vcpus = 2;
  std::string discovery;  // empty: tprd's auto (breakpoints under TCG)
};

// STAT lines per vCPU each case runs patched; each covers about a second of guest time. The
// default, 12, takes the run well past the 5 s proving window.
int PatchedStatLines() {
  int lines = 0;
  const char* env = std::getenv("TPRD_E2E_SECONDS");
  if (env != nullptr && absl::SimpleAtoi(env, &lines) && lines >= 4) return lines;
  return 12;
}

class TprdEndToEndStrategy : public ::testing::TestWithParam<StrategyCase> {};

TEST_P(TprdEndToEndStrategy, SustainedRunStaysCorrectAcrossTheProvingWindowAndRollsBack) {
  const StrategyCase& c = GetParam();
  TestDomainOptions options;
  options.kernel = TestGuestElf();
  options.vcpus = c.vcpus;
  options.cr8legacy_cpu = c.strategy == "cr8";
  options.reboot_restarts = true;  // the reset between the third and fourth quarters
  options.acpi = true;             // the learning window measured by the guest's clock
  absl::StatusOr<std::unique_ptr<TestDomain>> created = TestDomain::Create(options);
  ASSERT_TRUE(created.ok()) << created.status();
  TestDomain& domain = **created;
  ASSERT_TRUE(
      domain.WaitForPrefix(absl::StrCat("STAT cpu=", c.vcpus - 1, " "), absl::Seconds(120)).ok())
      << domain.LastLines();

  const bool watchpoint = c.discovery == "watchpoint";
  TprdProcess tprd(MakeTprdDir(),
                   absl::StrCat("proving_window_s = 5\n", c.discovery.empty() ? "" : "discovery = ",
                                c.discovery, c.discovery.empty() ? "" : "\n"));
  tprd.Start();
  if (HasFatalFailure()) return;
  RunResult enabled = tprd.Ctl({"enable", domain.name(), "--strategy", c.strategy});
  ASSERT_EQ(enabled.exit_code, 0) << enabled.out << enabled.err << tprd.LogTail();
  if (watchpoint) ExpectUnprovenBytesUnchanged(tprd, domain.name(), "right after enable");
  // mmio under discovery = watchpoint: its watchpoint sees writes only, so only the writers are
  // sure to be patched; a hot reader the learning window missed stays unpatched, correct
  // (docs/design.md "Discovery on KVM hosts").
  std::vector<std::string> hot;
  for (const std::string& name : HotSites()) {
    const bool reader = name.rfind("wr_", 0) != 0;
    if (!(watchpoint && c.strategy == "mmio" && reader)) hot.push_back(name);
  }
  WaitForApplied(tprd, domain.name(), hot, absl::Seconds(90), "hot sites");
  if (HasFailure()) return;
  // Each STAT line covers about a second: thousands of rounds, every 64th of which runs the
  // unpatchable reads (PatchedStatLines per vCPU, in four quarters); under the watchpoint
  // discovery the candidates' bytes are read at a random moment of each quarter.
  // The strategy tprd shows for the domain ("?" when the call fails).
  auto strategy = [&] {
    const std::string shown = StatusField(tprd, domain.name(), "strategy");
    return shown.empty() ? std::string("?") : shown;
  };
  // After a restart or a reboot: patched again, on the operator's strategy.
  auto expect_patched_again = [&](const char* when) {
    WaitForApplied(tprd, domain.name(), hot, absl::Seconds(180), when);
    EXPECT_EQ(strategy(), c.strategy) << when << "\n" << tprd.LogTail(40);
  };
  // What happens between quarter q and q+1.
  auto between_quarters = [&](int quarter) {
    if (quarter == 0) {
      std::cout << "[ lifecycle ] SIGTERM, then tprd starts again and adopts the guest"
                << std::endl;
      ASSERT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
      ExpectGuestPasses(domain, domain.Lines().size(), "tprd stopped", c.vcpus, /*rounds=*/1);
      tprd.Start();
      if (HasFatalFailure()) return;
      expect_patched_again("adopted after SIGTERM");
    } else if (quarter == 1) {
      std::cout << "[ lifecycle ] kill -9, then tprd starts again and adopts the guest"
                << std::endl;
      tprd.Kill();
      tprd.Start();
      if (HasFatalFailure()) return;
      expect_patched_again("adopted after kill -9");
    } else if (quarter == 2) {
      std::cout << "[ lifecycle ] guest reset; the recorded intent patches the new boot"
                << std::endl;
      const size_t before_reset = domain.Lines().size();
      RunResult reset = Virsh({"reset", domain.name()});
      ASSERT_EQ(reset.exit_code, 0) << reset.out << reset.err;
      absl::StatusOr<std::string> boot =
          domain.WaitForPrefix("BOOT ", absl::Seconds(120), before_reset);
      ASSERT_TRUE(boot.ok()) << "no new boot after the reset: " << boot.status() << "\n"
                             << domain.LastLines();
      expect_patched_again("the new boot, patched by the recorded intent");
    }
  };
  std::mt19937 random(std::random_device{}());
  const int lines = PatchedStatLines();
  for (int quarter = 0; quarter < 4; ++quarter) {
    if (quarter > 0) {
      between_quarters(quarter - 1);
      if (HasFatalFailure()) return;
    }
    ExpectGuestPasses(domain, domain.Lines().size(), "patched", c.vcpus,
                      /*rounds=*/(lines + 3 - quarter) / 4);
    if (!watchpoint) continue;
    absl::SleepFor(absl::Milliseconds(random() % 1000));  // a random moment, not a wait
    const size_t compared = ExpectUnprovenBytesUnchanged(
        tprd, domain.name(), absl::StrCat("patched, quarter ", quarter + 1));
    EXPECT_GT(compared, 0u) << "the decoys are never proven: their bytes are compared";
  }

  RunResult status = tprd.Ctl({"--json", "status", domain.name()});
  nlohmann::json doc = nlohmann::json::parse(status.out, nullptr, false);
  ASSERT_FALSE(doc.is_discarded()) << status.out << status.err;
  EXPECT_EQ(doc.value("strategy", std::string()), c.strategy) << "switched away: " << status.out;
  if (c.strategy == "cr8") {
    EXPECT_GT(doc.value("traps_handled", 0), 0) << "the unpatchable reads trap under cr8";
  }
  EXPECT_EQ(doc.value("discovery", std::string()), watchpoint ? "watchpoint" : "breakpoints")
      << "auto picks breakpoints under TCG: " << status.out;

  RunResult rolled = tprd.Ctl({"rollback", domain.name()});
  EXPECT_EQ(rolled.exit_code, 0) << rolled.out << rolled.err << tprd.LogTail();
  // Leaving cr8 gives each CPU's real TPR back the low nibble CR8 writes clear before the guest
  // runs on (docs/design.md, "Soundness of each strategy"): no check fails at the rollback or
  // after it: each CPU's fail count (since boot) stays 0 through two more STAT lines.
  ExpectGuestPasses(domain, domain.Lines().size(), "after the rollback", c.vcpus, /*rounds=*/2);
  EXPECT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
}

INSTANTIATE_TEST_SUITE_P(Guest, TprdEndToEndStrategy,
                         ::testing::Values(StrategyCase{"cr8", 1, ""}, StrategyCase{"cr8", 2, ""},
                                           StrategyCase{"cr8", 4, ""}, StrategyCase{"mmio", 1, ""},
                                           StrategyCase{"mmio", 2, ""}, StrategyCase{"mmio", 4, ""},
                                           StrategyCase{"cr8", 2, "watchpoint"},
                                           StrategyCase{"mmio", 2, "watchpoint"}),
                         [](const auto& info) {
                           return absl::StrCat(info.param.strategy, "_smp", info.param.vcpus,
                                               info.param.discovery.empty() ? "" : "_",
                                               info.param.discovery);
                         });

}  // namespace
}  // namespace tprd::testing

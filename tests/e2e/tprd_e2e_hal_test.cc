// tprd end to end on the HAL-shaped test guest (tests/hal-guest, docs/hal-guest.md): real
// libvirtd, real tprd and tprctl processes, hal-guest.elf booted as a transient libvirt domain
// with `seed=N`. The guest checks itself on every CPU, forever: every TPR read returns what that
// CPU last wrote (`wrong_reads`), no interrupt arrives while the TPR masks its class
// (`mask_violations`), a self-IPI sent while masked arrives exactly once after the TPR drops
// (`lost_interrupts`); any failure is also a `FAIL` line. These tests read every serial line
// after enable and require all three counters to stay 0 and no FAIL line, while patched, across
// the end of the proving window, at the rollback and after it.
//
// Cases (docs/hal-guest.md, "With tprd"):
//   Cr8/HalStrategyTest  : cr8legacy CPU, `enable --strategy cr8`, run, rollback, run on.
//   Mmio/HalStrategyTest : `enable --strategy mmio`: either refused at enable with the reason
//                          (a TPR writer tprd cannot patch), or accepted and then exactly as
//                          correct as cr8; the status's strategy must match the guest's word.
//   Cr8/HalKill9Test : cr8, kill -9 of tprd while patched, a new tprd adopts, run, rollback.
// Cases named `_watchpoint` run tprd with `discovery = watchpoint`, the discovery it picks on KVM
// hosts (never a breakpoint on unproven bytes; docs/design.md "Discovery on KVM hosts"), and at
// random moments of each patched run compare the unproven candidates' bytes, read through QEMU's
// monitor, with what the scan found, and require no breakpoint set on a candidate.
// TPRD_HAL_SOAK=1 runs more seeds and vCPU counts for longer; TPRD_HAL_SECONDS sets the
// patched run's wall-clock seconds; TPRD_HAL_SEED fixes the "random" seed (it is printed either
// way). On failure the serial log, tprd's log and `tprctl watch` events are kept in
// /tmp/tprd-e2e-hal-logs/.
#include <cstdint>
#include <regex>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_support.h"
#include "tests/e2e/hal_e2e.h"
#include "tests/support/libvirt_test_env.h"
#include "tests/support/subprocess.h"

namespace tprd::testing {
namespace {

// ------------------------------------------------------------------------------ cases 1 and 2

class HalStrategyTest : public ::testing::TestWithParam<HalCase> {};

TEST_P(HalStrategyTest, StaysCorrectWhilePatchedAcrossTheProvingWindowAndAfterRollback) {
  const HalCase& c = GetParam();
  HalE2e e2e(c);
  e2e.Boot();
  if (HasFatalFailure()) return;
  TestDomain& domain = *e2e.domain();
  const std::vector<uint8_t> code_before = e2e.ReadGuestCode();
  Say() << "read " << code_before.size() << " bytes of guest code" << std::endl;

  TprdProcess tprd(MakeTprdDir(), TprdConfig(c));
  absl::Cleanup keep_logs = [&] { e2e.KeepLogs(&tprd, TestName()); };
  tprd.Start();
  if (HasFatalFailure()) return;
  e2e.StartWatch(tprd);
  Say() << "tprd started" << std::endl;

  const size_t enable_from = domain.Lines().size();
  const absl::Time enable_start = absl::Now();
  RunResult enabled = tprd.Ctl({"--json", "enable", domain.name(), "--strategy", c.strategy});
  Say() << "enable --strategy " << c.strategy << ": exit " << enabled.exit_code << " after "
        << absl::Now() - enable_start << " (guest uptime " << e2e.Uptime() << " ms) " << enabled.err
        << std::endl;

  if (c.strategy == "mmio" && enabled.exit_code != 0) {
    // A refusal is acceptable only as tprd's answer at enable, with the reason: mmio is unsafe
    // because of a TPR writer tprd cannot patch. This guest has exactly one such writer, the
    // register-relative HalpRegRelWrite (`mov [ebx+0x80],eax`, docs/hal-guest.md).
    EXPECT_EQ(enabled.exit_code, 1) << enabled.out << enabled.err;
    EXPECT_NE(enabled.err.find("mmio is unsafe"), std::string::npos)
        << "the refusal does not say why: " << enabled.err;
    std::smatch m;
    static const std::regex address("0x([0-9a-fA-F]+)");
    uint32_t va = 0;
    if (std::regex_search(enabled.err, m, address)) absl::SimpleHexAtoi(m[1].str(), &va);
    const GuestLayout::Site* site = nullptr;
    for (const GuestLayout::Site& s : e2e.layout().sites) {
      if (s.va == va) site = &s;
    }
    Say() << "mmio refused, naming " << e2e.layout().Name(va) << std::endl;
    ASSERT_NE(site, nullptr) << "the refusal names no TPR access of the guest: " << enabled.err
                             << "\n"
                             << e2e.Annotate(enabled.err);
    EXPECT_TRUE(StartsWith(site->form, "regrel") && site->name.size() > 3 &&
                site->name.substr(site->name.size() - 3) == ".wr")
        << "mmio refused for " << site->name << " (" << site->form
        << "), which is not a TPR writer tprd cannot patch: " << enabled.err;
    // Refused means untouched: nothing patched, and the guest runs on correctly.
    Status s = GetStatus(tprd, domain.name());
    EXPECT_NE(s.state, "patched") << s.raw;
    for (const SiteRow& row : ListSites(tprd, domain.name())) {
      EXPECT_NE(row.state, "applied") << "refused, yet patched: " << e2e.layout().Name(row.address);
    }
    const uint64_t target = e2e.Uptime() + 3000;
    e2e.WaitForUptime(enable_from, target, absl::Seconds(60), "after the refusal");
    const std::vector<std::string> lines = domain.Lines();
    PhaseResult after = CheckPhase("after mmio was refused", lines, enable_from, lines.size(),
                                   e2e.layout(), e2e.baseline_);
    ExpectProgress("after mmio was refused", after, c.vcpus, 2);
    EXPECT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
    return;
  }
  ASSERT_EQ(enabled.exit_code, 0) << enabled.out << enabled.err << "\n"
                                  << e2e.Annotate(enabled.err) << tprd.LogTail(60);

  e2e.RunPatched(tprd, enable_from, RunSeconds(), GuestSeconds(), "patched");
  e2e.ExpectSitesPatched(tprd, "after the run");
  // The rates tprd shows for this guest (issue 14: on both test guests). Their values are
  // timings, printed and not asserted; that they are there, and counted, is asserted.
  {
    RunResult json = tprd.Ctl({"--json", "status", domain.name()});
    nlohmann::json doc = nlohmann::json::parse(json.out, nullptr, false);
    ASSERT_FALSE(doc.is_discarded()) << json.out << json.err;
    EXPECT_EQ(doc.value("rates_sampled", false), true) << "no rates after the run: " << json.out;
    EXPECT_GT(doc.value("learning_window_hits", uint64_t{0}), 0u)
        << "the enable's learning window counted no TPR access: " << json.out;
    EXPECT_GT(doc.value("before_trace_seconds", 0.0), 0.0)
        << "no APIC trace before the first patch: " << doc.value("before_trace_error", "") << "\n"
        << json.out;
    EXPECT_GT(doc.value("before_trace_tpr_reads", uint64_t{0}) +
                  doc.value("before_trace_tpr_writes", uint64_t{0}),
              0u)
        << "QEMU's APIC trace counted no TPR access before the enable: " << json.out;
    EXPECT_GT(doc.value("handler_accesses_without_apic", uint64_t{0}) +
                  doc.value("handler_accesses_to_apic", uint64_t{0}),
              0u)
        << "the guest's handlers counted no TPR access: " << json.out;
    RunResult text = tprd.Ctl({"status", domain.name()});
    for (absl::string_view line : absl::StrSplit(text.out, '\n')) {
      if (absl::StrContains(line, "/s")) Say() << "tprctl status: " << line << std::endl;
    }
    // tprctl metrics says the same "before" (sampled once, at the enable).
    RunResult metrics = tprd.Ctl({"metrics"});
    const std::string key = absl::StrCat(
        "tprd_tpr_accesses_reaching_apic_before_per_second{domain=\"", domain.name(), "\"} ");
    const size_t at = metrics.out.find(key);
    ASSERT_NE(at, std::string::npos) << "no " << key << "in tprctl metrics:\n" << metrics.out;
    double before_in_metrics = 0;
    const std::string value =
        metrics.out.substr(at + key.size(), metrics.out.find('\n', at) - at - key.size());
    ASSERT_TRUE(absl::SimpleAtod(value, &before_in_metrics)) << value;
    const double before = doc.value("tpr_accesses_per_second_before", 0.0);
    EXPECT_NEAR(before_in_metrics, before, before * 1e-5 + 1e-9) << metrics.out;
  }
  // What tprd reports and what the guest's handlers do: the strategy word in the guest.
  const BlobState blob = ReadBlobState(domain.name(), c.vcpus);
  const Status status = GetStatus(tprd, domain.name());
  Say() << Describe(blob) << std::endl;
  EXPECT_TRUE(blob.found) << blob.error;
  if (blob.found) {
    EXPECT_EQ(status.strategy, StrategyName(blob.strategy_word))
        << "tprctl status says " << status.strategy << " while the guest's handlers run "
        << StrategyName(blob.strategy_word) << ": " << Describe(blob);
    EXPECT_EQ(StrategyName(blob.strategy_word), c.strategy) << Describe(blob);
  }

  const size_t rollback_from = domain.Lines().size();
  e2e.Rollback(tprd, "rollback");
  const size_t rollback_done = domain.Lines().size();
  e2e.CheckAroundRollback(tprd, enable_from, rollback_from, rollback_done, c.strategy.c_str());
  Say() << "checked the STAT lines after the rollback" << std::endl;

  EXPECT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
  EXPECT_EQ(e2e.ReadGuestCode(), code_before) << "rollback restores the guest's code byte for byte";
  Say() << "done" << std::endl;
}

INSTANTIATE_TEST_SUITE_P(Cr8, HalStrategyTest, ::testing::ValuesIn(Cases("cr8")),
                         [](const auto& info) { return CaseName(info.param); });
INSTANTIATE_TEST_SUITE_P(Mmio, HalStrategyTest, ::testing::ValuesIn(Cases("mmio")),
                         [](const auto& info) { return CaseName(info.param); });

}  // namespace
}  // namespace tprd::testing

// tprd end to end on the HAL-shaped test guest (tests/hal-guest, docs/hal-guest.md) through
// tprd's and the guest's lifecycle: kill -9 of tprd while patched and the adopt by a new tprd,
// SIGTERM while patched and the take-back, `virsh save` / `virsh restore` while attached,
// snapshot reverts, and a guest reset while patched. The guest's own checks (hal_e2e.h,
// tprd_e2e_hal_test.cc) must hold throughout. Built into tprd_e2e_hal_test with
// tprd_e2e_hal_test.cc (tests/e2e/CMakeLists.txt), which describes the environment variables
// and where the logs of a failure are kept.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_support.h"
#include "tests/e2e/hal_e2e.h"
#include "tests/support/libvirt_test_env.h"
#include "tests/support/subprocess.h"

namespace tprd::testing {
namespace {

// ------------------------------------------------------------------------------ case 3

// Starts tprd and its event watch and enables `strategy` on the HAL guest (a fatal failure if
// the enable does not succeed).
void StartAndEnable(HalE2e& e2e, TprdProcess& tprd, const std::string& strategy) {
  tprd.Start();
  if (::testing::Test::HasFatalFailure()) return;
  e2e.StartWatch(tprd);
  // Transient: the reset test checks the guest stays unpatched until it enables again, which a
  // recorded intent would undo (docs/usage.md).
  RunResult enabled =
      tprd.Ctl({"--json", "enable", e2e.domain()->name(), "--strategy", strategy, "--transient"});
  ASSERT_EQ(enabled.exit_code, 0) << enabled.out << enabled.err << "\n"
                                  << e2e.Annotate(enabled.err) << tprd.LogTail(60);
  Say() << "enabled " << strategy << " by guest uptime " << e2e.Uptime() << " ms" << std::endl;
}

// Rolls everything back, checks the guest from `patched_from` through the rollback and after it,
// stops tprd, and compares the guest's code with `code_before` (read before tprd came).
void RollBackAndCompareCode(HalE2e& e2e, TprdProcess& tprd, size_t patched_from,
                            const std::vector<uint8_t>& code_before, const char* label) {
  const size_t rollback_from = e2e.domain()->Lines().size();
  e2e.Rollback(tprd, absl::StrCat(label, ": rollback").c_str());
  const size_t rollback_done = e2e.domain()->Lines().size();
  e2e.CheckAroundRollback(tprd, patched_from, rollback_from, rollback_done, label);
  EXPECT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
  EXPECT_EQ(e2e.ReadGuestCode(), code_before) << "rollback restores the guest's code byte for byte";
}

// kill -9 of tprd while patched under cr8: its traps stay armed in QEMU's gdbstub and the guest
// stops at the next hit; a new tprd adopts the guest (the strategy word still says cr8) and
// keeps it correct. The guest's checks must hold throughout: before, during and after.
class HalKill9Test : public ::testing::TestWithParam<HalCase> {};

TEST_P(HalKill9Test, KilledWhilePatchedUnderCr8AdoptedByANewTprdStaysCorrect) {
  const HalCase& c = GetParam();
  HalE2e e2e(c);
  e2e.Boot();
  if (HasFatalFailure()) return;
  TestDomain& domain = *e2e.domain();
  const std::vector<uint8_t> code_before = e2e.ReadGuestCode();

  TprdProcess tprd(MakeTprdDir(), TprdConfig(c));
  absl::Cleanup keep_logs = [&] { e2e.KeepLogs(&tprd, TestName()); };
  const size_t enable_from = domain.Lines().size();
  StartAndEnable(e2e, tprd, "cr8");
  if (HasFatalFailure()) return;

  const int kills = Soak() ? 3 : 1;
  for (int kill = 0; kill < kills; ++kill) {
    // Patched for a while (the hot sites are applied within milliseconds), then killed.
    e2e.RunPatched(tprd, domain.Lines().size(), 3, 1, "patched before kill -9");
    const size_t killed_at = domain.Lines().size();
    tprd.Kill();
    Say() << "kill -9 " << kill + 1 << "/" << kills << " at serial line " << killed_at
          << "; domain " << DomainRunState(domain.name()) << std::endl;
    // The armed traps stop the guest at its next hit; whether it did by now is only reported.
    PollUntil(absl::Seconds(10), [&] { return DomainRunState(domain.name()) == "paused"; });
    Say() << "after kill -9: domain " << DomainRunState(domain.name()) << std::endl;

    tprd.Start();  // adopts the domain (its --adopt-domains names this test's domains)
    if (HasFatalFailure()) return;
    e2e.StartWatch(tprd);
    WaitForState(tprd, domain.name(), "patched", absl::Seconds(60), "adopted");
    e2e.RunPatched(tprd, killed_at, RunSeconds(), GuestSeconds(), "adopted after kill -9");
  }
  e2e.ExpectSitesPatched(tprd, "adopted");
  const BlobState blob = ReadBlobState(domain.name(), c.vcpus);
  Say() << Describe(blob) << std::endl;
  EXPECT_EQ(StrategyName(blob.strategy_word), "cr8") << Describe(blob);

  RollBackAndCompareCode(e2e, tprd, enable_from, code_before, "kill -9");
}

// SIGTERM of tprd while patched: it leaves the guest on exact (under cr8 each CPU's real TPR gets
// its low nibble back first), the guest runs without tprd for a guest second, and a new tprd
// adopts it back to the strategy the operator chose (the journal remembers it; under mmio the
// alias of the APIC page is reused). The guest's checks must hold throughout.
class HalSigtermTest : public ::testing::TestWithParam<HalCase> {};

TEST_P(HalSigtermTest, StoppedWhilePatchedRunsExactThenANewTprdTakesItBack) {
  const HalCase& c = GetParam();
  HalE2e e2e(c);
  e2e.Boot();
  if (HasFatalFailure()) return;
  TestDomain& domain = *e2e.domain();
  const std::vector<uint8_t> code_before = e2e.ReadGuestCode();

  TprdProcess tprd(MakeTprdDir(), TprdConfig(c));
  absl::Cleanup keep_logs = [&] { e2e.KeepLogs(&tprd, TestName()); };
  const size_t enable_from = domain.Lines().size();
  StartAndEnable(e2e, tprd, c.strategy);
  if (HasFatalFailure()) return;
  e2e.RunPatched(tprd, domain.Lines().size(), 3, 1, "patched before SIGTERM");

  Say() << "SIGTERM at guest uptime " << e2e.Uptime() << " ms or later" << std::endl;
  EXPECT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
  // A CPU the detach could not give its real TPR back (PatchManager::Detach's DATA_LOSS).
  EXPECT_EQ(ReadFile(tprd.log_path()).find("left on exact, but"), std::string::npos)
      << tprd.LogTail();
  const BlobState away = ReadBlobState(domain.name(), c.vcpus);
  Say() << "after SIGTERM (guest uptime " << e2e.Uptime() << " ms): domain "
        << DomainRunState(domain.name()) << "; " << Describe(away) << std::endl;
  EXPECT_EQ(DomainRunState(domain.name()), "running") << "tprd left the guest stopped";
  EXPECT_EQ(StrategyName(away.strategy_word), "exact") << Describe(away);
  const size_t away_from = domain.Lines().size();
  e2e.WaitForUptime(away_from, e2e.Uptime() + 1000, absl::Seconds(60), "without tprd");

  tprd.Start();  // adopts the domain
  if (HasFatalFailure()) return;
  e2e.StartWatch(tprd);
  WaitForState(tprd, domain.name(), "patched", absl::Seconds(60), "adopted");
  e2e.RunPatched(tprd, domain.Lines().size(), RunSeconds(), GuestSeconds(),
                 "adopted after SIGTERM");
  const BlobState back = ReadBlobState(domain.name(), c.vcpus);
  Say() << Describe(back) << std::endl;
  EXPECT_EQ(StrategyName(back.strategy_word), c.strategy) << Describe(back);

  RollBackAndCompareCode(e2e, tprd, enable_from, code_before, "SIGTERM");
}

// `virsh save` while tprd stays attached to the HAL guest on mmio, after its proving window (the
// guest then makes no trap stop, so the save cannot land in QEMU's `debug` run state, which QEMU
// 7.2 cannot restore: docs/design.md "Saves and migrations"), then `virsh restore` with the same
// tprd running. tprd must see the save as a save (no lost session, no failed take-back), take the
// restored guest back from its blob with every site on mmio, the guest's checks must hold before,
// across and after, and the rollback must restore the code byte for byte.
class HalSaveTest : public ::testing::TestWithParam<HalCase> {};

TEST_P(HalSaveTest, SavedWhileAttachedRestoresCorrectAndIsTakenBack) {
  const HalCase& c = GetParam();
  HalE2e e2e(c);
  e2e.Boot();
  if (HasFatalFailure()) return;
  TestDomain& domain = *e2e.domain();
  const std::string name = domain.name();
  const std::vector<uint8_t> code_before = e2e.ReadGuestCode();

  TprdProcess tprd(MakeTprdDir(), TprdConfig(c));
  absl::Cleanup keep_logs = [&] { e2e.KeepLogs(&tprd, TestName()); };
  const size_t enable_from = domain.Lines().size();
  StartAndEnable(e2e, tprd, c.strategy);
  if (HasFatalFailure()) return;
  e2e.RunPatched(tprd, domain.Lines().size(), kProvingWindowSeconds + 3, 1,
                 "patched before the save");
  ASSERT_TRUE(WaitForProvingWindowEnd(tprd, name, absl::Seconds(60))) << tprd.LogTail(40);

  // The restore's QEMU opens the serial log afresh (libvirt truncates a file chardev without
  // append='on'): the lines up to the save are checked now, the new file's after the restore.
  const std::vector<std::string> lines_at_save = domain.Lines();
  CheckPhase("patched before the save", lines_at_save, enable_from, lines_at_save.size(),
             e2e.layout(), e2e.baseline());
  const std::string image = absl::StrCat("/var/lib/libvirt/qemu/save/", name, ".sav");
  RunResult saved = Virsh({"save", name, image});
  ASSERT_EQ(saved.exit_code, 0) << saved.out << saved.err << tprd.LogTail(40);
  EXPECT_TRUE(
      PollUntil(absl::Seconds(10),
                [&] {
                  return ReadFile(tprd.log_path()).find(absl::StrCat(name, ": gone: saved:")) !=
                         std::string::npos;
                }))
      << "tprd must see the save as a save\n"
      << tprd.LogTail(40);
  RunResult restored = Virsh({"restore", image});
  std::remove(image.c_str());
  ASSERT_EQ(restored.exit_code, 0) << restored.out << restored.err << "\n"
                                   << DomainRunStateAndReason(name) << tprd.LogTail(60);
  const size_t restored_from = std::min(lines_at_save.size(), domain.Lines().size());
  WaitForState(tprd, name, "patched", absl::Seconds(30), "restored");
  e2e.RunPatched(tprd, restored_from, RunSeconds(), GuestSeconds(), "restored while attached");
  e2e.ExpectSitesPatched(tprd, "restored while attached");
  const BlobState back = ReadBlobState(name, c.vcpus);
  Say() << Describe(back) << std::endl;
  EXPECT_EQ(StrategyName(back.strategy_word), c.strategy) << Describe(back);
  const std::string log = ReadFile(tprd.log_path());
  EXPECT_EQ(log.find("lost the session"), std::string::npos) << tprd.LogTail(60);
  EXPECT_EQ(log.find("cannot take it back"), std::string::npos) << tprd.LogTail(60);

  RollBackAndCompareCode(e2e, tprd, restored_from, code_before, "save");
}

// regrel=off: with the guest's register-relative TPR writer running, mmio keeps stopping the guest
// at it (about 250 stops a second on these variants), and a save that lands in one of those
// stops cannot be restored by QEMU 7.2 (measured: docs/design.md "Saves and migrations").
// The cases of the tests whose operation copies the guest's memory (save, snapshot): mmio with
// regrel=off.
HalCase CopyCase(int vcpus, uint32_t seed, bool random = false) {
  return HalCase{
      .strategy = "mmio", .vcpus = vcpus, .seed = seed, .random = random, .no_regrel = true};
}

std::vector<HalCase> SaveCases() {
  if (!Soak()) return {CopyCase(1, 5)};
  return {CopyCase(1, 5), CopyCase(2, 2), CopyCase(4, 3), CopyCase(2, RandomSeed() + 19, true)};
}

INSTANTIATE_TEST_SUITE_P(Hal, HalSaveTest, ::testing::ValuesIn(SaveCases()),
                         [](const auto& info) { return CaseName(info.param); });

// Snapshots with memory (internal, qcow2) of the HAL-shaped guest while tprd runs, then reverts
// of the running domain: to the snapshot from before the enable (tprd must show `unpatched` and
// write nothing from what it knew) and to the snapshot of the patched guest (its blob adopted,
// every site it runs patched again). The guest's checks hold after each revert and after the
// rollback, and the rollback restores its code byte for byte. mmio only, regrel=off, as
// HalSaveTest and for its reason (a snapshot's copy landing in a trap stop).
class HalSnapshotTest : public ::testing::TestWithParam<HalCase> {};

TEST_P(HalSnapshotTest, RevertsShowAndAdoptWhatTheSnapshotsMemoryHolds) {
  const HalCase& c = GetParam();
  HalE2e e2e(c);
  e2e.Boot(/*reboot_restarts=*/false, /*snapshot_disk=*/true);
  if (HasFatalFailure()) return;
  TestDomain& domain = *e2e.domain();
  const std::string name = domain.name();
  const std::vector<uint8_t> code_before = e2e.ReadGuestCode();
  RunResult before = Virsh({"snapshot-create-as", name, "before-enable"});
  ASSERT_EQ(before.exit_code, 0) << before.out << before.err;

  TprdProcess tprd(MakeTprdDir(), TprdConfig(c));
  absl::Cleanup keep_logs = [&] { e2e.KeepLogs(&tprd, TestName()); };
  const size_t enable_from = domain.Lines().size();
  StartAndEnable(e2e, tprd, c.strategy);
  if (HasFatalFailure()) return;
  e2e.RunPatched(tprd, enable_from, kProvingWindowSeconds + 3, 1, "patched before the snapshot");
  ASSERT_TRUE(WaitForProvingWindowEnd(tprd, name, absl::Seconds(60))) << tprd.LogTail(40);
  const std::vector<SiteRow> sites_patched = ListSites(tprd, name);

  RunResult patched = Virsh({"snapshot-create-as", name, "patched"});
  ASSERT_EQ(patched.exit_code, 0) << patched.out << patched.err << tprd.LogTail(40);
  WaitForState(tprd, name, "patched", absl::Seconds(30), "after the snapshot of the patched guest");
  {
    const std::vector<std::string> lines = domain.Lines();
    CheckPhase("patched, through the snapshot", lines, enable_from, lines.size(), e2e.layout(),
               e2e.baseline());
  }

  RunResult reverted = Virsh({"snapshot-revert", name, "before-enable"});
  ASSERT_EQ(reverted.exit_code, 0) << reverted.out << reverted.err << tprd.LogTail(40);
  size_t from = domain.Lines().size();
  WaitForState(tprd, name, "unpatched", absl::Seconds(30), "reverted to before the enable");
  for (const SiteRow& row : ListSites(tprd, name)) {
    EXPECT_NE(row.state, "applied")
        << e2e.layout().Name(row.address) << ": listed as applied from the old memory";
  }
  e2e.RunAfterRevert(from, 3, "reverted to before the enable");
  EXPECT_EQ(StatusField(tprd, name, "state"), "unpatched") << tprd.LogTail(40);

  reverted = Virsh({"snapshot-revert", name, "patched"});
  ASSERT_EQ(reverted.exit_code, 0) << reverted.out << reverted.err << tprd.LogTail(40);
  from = domain.Lines().size();
  WaitForState(tprd, name, "patched", absl::Seconds(30), "reverted to the patched snapshot");
  e2e.RunAfterRevert(from, 3, "reverted to the patched snapshot");
  e2e.ExpectSitesPatched(tprd, "reverted to the patched snapshot");
  size_t applied_before = 0, applied_after = 0;
  for (const SiteRow& row : sites_patched) applied_before += row.state == "applied";
  for (const SiteRow& row : ListSites(tprd, name)) applied_after += row.state == "applied";
  EXPECT_EQ(applied_after, applied_before) << "the snapshot's sites, adopted";
  // No check of tprd's log for "lost the session": libvirt may revert by restarting QEMU, and
  // then its stop event can come after tprd's 2 s grace (ciH: 2.15 s); tprd then takes the
  // guest back from a lost session, which is correct, with a warning (docs/design.md).

  RollBackAndCompareCode(e2e, tprd, from, code_before, "snapshot");
  for (const char* snapshot : {"patched", "before-enable"}) {
    RunResult deleted = Virsh({"snapshot-delete", name, snapshot});
    EXPECT_EQ(deleted.exit_code, 0) << deleted.out << deleted.err;
  }
}

std::vector<HalCase> SnapshotCases() {
  if (!Soak()) return {CopyCase(2, 4)};
  return {CopyCase(1, 1), CopyCase(2, 4), CopyCase(4, RandomSeed() + 23, true)};
}

INSTANTIATE_TEST_SUITE_P(Hal, HalSnapshotTest, ::testing::ValuesIn(SnapshotCases()),
                         [](const auto& info) { return CaseName(info.param); });

// A guest reset while patched: the patches go with the guest's memory, tprd says "unpatched"
// without an error, and its traps do not follow the guest into the new boot (under cr8 a trap
// left armed would stop the booting guest, or fix up reads of a guest with no blob). The new boot
// passes its checks alone, a second enable patches it, and the rollback leaves it correct.
class HalRebootTest : public ::testing::TestWithParam<HalCase> {};

TEST_P(HalRebootTest, ResetWhilePatchedLeavesNothingBehindAndEnableWorksAgain) {
  const HalCase& c = GetParam();
  HalE2e e2e(c);
  e2e.Boot(/*reboot_restarts=*/true);
  if (HasFatalFailure()) return;
  TestDomain& domain = *e2e.domain();

  TprdProcess tprd(MakeTprdDir(), TprdConfig(c));
  absl::Cleanup keep_logs = [&] { e2e.KeepLogs(&tprd, TestName()); };
  const size_t enable_from = domain.Lines().size();
  StartAndEnable(e2e, tprd, c.strategy);
  if (HasFatalFailure()) return;
  e2e.RunPatched(tprd, domain.Lines().size(), 3, 1, "patched before the reset");
  const size_t reset_from = domain.Lines().size();
  CheckPhase("patched before the reset", domain.Lines(), enable_from, reset_from, e2e.layout(),
             e2e.baseline());

  RunResult reset = Virsh({"reset", domain.name()});
  ASSERT_EQ(reset.exit_code, 0) << reset.out << reset.err;
  const size_t boot = e2e.WaitForReboot(reset_from);
  if (HasFailure()) return;
  WaitForState(tprd, domain.name(), "unpatched", absl::Seconds(30), "after the reset");
  const Status after_reset = GetStatus(tprd, domain.name());
  EXPECT_EQ(after_reset.last_error, "") << "the reset left an error behind: " << after_reset.raw;
  Say() << "rebooted at serial line " << boot << "; tprd says " << after_reset.state << std::endl;

  const size_t enable2_from = domain.Lines().size();
  RunResult enabled = tprd.Ctl({"--json", "enable", domain.name(), "--strategy", c.strategy});
  ASSERT_EQ(enabled.exit_code, 0) << enabled.out << enabled.err << tprd.LogTail(60);
  e2e.RunPatched(tprd, enable2_from, RunSeconds(), GuestSeconds(), "patched after the reset");
  e2e.ExpectSitesPatched(tprd, "patched after the reset");
  const size_t rollback_from = domain.Lines().size();
  e2e.Rollback(tprd, "rollback after the reset");
  const size_t rollback_done = domain.Lines().size();
  e2e.CheckAroundRollback(tprd, enable2_from, rollback_from, rollback_done, "reset");
  EXPECT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
}

std::vector<HalCase> RebootCases() {
  if (!Soak()) return {{"cr8", 2, 4}};
  return {{"cr8", 1, 1}, {"cr8", 4, 3}, {"mmio", 2, 2}, {"cr8", 2, RandomSeed() + 17, true}};
}

INSTANTIATE_TEST_SUITE_P(Hal, HalRebootTest, ::testing::ValuesIn(RebootCases()),
                         [](const auto& info) { return CaseName(info.param); });

std::vector<HalCase> SigtermCases() {
  // The idle case: systemd stopping tprd on an idle host meets halted CPUs under cr8, in the
  // proving window (where a breakpoint racing the detach's stop once kept every CPU from its
  // poke: docs/design.md).
  if (!Soak()) return {{"cr8", 2, 2}, {"mmio", 2, 3}, {"cr8", 4, 6, false, true}};
  return {{"cr8", 1, 1},
          {"cr8", 4, 3},
          {"mmio", 1, 1},
          {"mmio", 4, 2},
          {"cr8", 4, 6, false, true},
          {"cr8", 2, RandomSeed() + 11, true},
          {"mmio", 2, RandomSeed() + 13, true}};
}

INSTANTIATE_TEST_SUITE_P(Hal, HalSigtermTest, ::testing::ValuesIn(SigtermCases()),
                         [](const auto& info) { return CaseName(info.param); });

// One vCPU by default: it isolates the kill and the adopt from cr8's SMP trouble (see the
// Cr8/HalStrategyTest cases on 2 and 4 vCPUs); the soak adds SMP.
std::vector<HalCase> Kill9Cases() {
  // The watchpoint case: a killed tprd leaves only its TPR watchpoint behind (no breakpoint).
  if (!Soak()) return {{"cr8", 1, 1}, {"cr8", 2, 6, false, false, "watchpoint"}};
  return {{"cr8", 1, 1}, {"cr8", 2, 2}, {"cr8", 4, 3}, {"cr8", 2, RandomSeed() + 7, true}};
}

INSTANTIATE_TEST_SUITE_P(Cr8, HalKill9Test, ::testing::ValuesIn(Kill9Cases()),
                         [](const auto& info) { return CaseName(info.param); });

}  // namespace
}  // namespace tprd::testing

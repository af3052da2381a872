// The host acting on a domain while tprd patches it (real libvirtd, QEMU TCG, tprd, tprctl and
// virsh): reset, destroy and suspend in the middle of an enable, suspend in the middle of a
// rollback, and libvirtd restarted under a patched domain. Afterwards: no half-written site, no
// guest resumed that the host paused, clear errors, and tprd still serving.
#include <sys/wait.h>

#include <cstdlib>
#include <iostream>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/engine/site.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_support.h"
#include "tests/support/libvirt_test_env.h"

namespace tprd::testing {
namespace {

constexpr int kRounds = 5;

// tprctl ARGS in the background; `act` runs after `delay`; returns tprctl's result.
RunResult RaceWith(TprdProcess& tprd, std::vector<std::string> args, absl::Duration delay,
                   const std::function<void()>& act, const std::string& log) {
  std::vector<std::string> full = {TprctlPath(), "--socket", tprd.socket(), "--timeout", "120"};
  full.insert(full.end(), args.begin(), args.end());
  const pid_t ctl = Spawn(full, log, log);
  EXPECT_GT(ctl, 0);
  absl::SleepFor(delay);  // where the host's action lands, drawn at random: not a synchronisation
  act();
  int status = 0;
  waitpid(ctl, &status, 0);  // tprctl bounds itself (--timeout)
  RunResult result;
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  result.out = ReadFile(log);
  ::unlink(log.c_str());
  return result;
}

// Every site is whole: the bytes are the original ones or those of a site the guest's own
// table records as applied. Takes tprd's gdbstub away (SIGTERM) and starts it again.
void ExpectEverySiteWhole(TprdProcess& tprd, TestDomain& domain,
                          const std::vector<uint8_t>& pristine, const std::string& when) {
  ASSERT_EQ(tprd.Terminate(), 0) << when << "\n" << tprd.LogTail();
  const CodeRange range = TestGuestCodeRange();
  GuestSnapshot guest = SnapshotGuest(domain.uuid(), range.first, range.size);
  std::vector<uint8_t> expected = pristine;
  if (guest.blob) {
    for (const engine::Site& site : guest.blob->sites) {
      EXPECT_NE(site.state, engine::SiteState::kPending) << when << ": site " << site.id;
      if (site.state == engine::SiteState::kApplied) {
        std::copy(site.patched.begin(), site.patched.end(),
                  expected.begin() + (site.address - range.first));
      }
    }
  }
  EXPECT_TRUE(guest.code == expected) << when << ": a site is neither original nor applied";
  tprd.Start();
}

class RaceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    const unsigned seed = std::random_device{}();
    rng_.seed(seed);
    std::cout << "seed " << seed << "\n";
    tprd_ = std::make_unique<TprdProcess>(MakeTprdDir(), "proving_window_s = 5\n");
    tprd_->Start();
  }
  absl::Duration Draw(absl::Duration span) {
    std::uniform_real_distribution<double> u(0.0, 1.0);
    return span * u(rng_);
  }
  // A failed operation must say why in one line a person can act on.
  static void ExpectClearOutcome(const RunResult& r, const std::string& when) {
    EXPECT_TRUE(r.exit_code == 0 || r.exit_code == 1) << when << ": exit " << r.exit_code << "\n"
                                                      << r.out;
    if (r.exit_code != 0) {
      EXPECT_NE(r.out.find("tprctl: "), std::string::npos) << when << r.out;
    }
  }
  void StopDuringEnable(const std::string& how, const std::function<void(TestDomain&)>& stop);
  absl::Duration TimedEnable(const std::string& name) {
    const absl::Time start = absl::Now();
    RunResult r = tprd_->Ctl({"enable", name, "--strategy", "mmio", "--transient"});
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err << tprd_->LogTail();
    return absl::Now() - start;
  }

  std::mt19937 rng_;
  std::unique_ptr<TprdProcess> tprd_;
  int kept_ = 0, lost_in_libvirt_ = 0;
};

TEST_F(RaceTest, ResetDuringEnableClearsStateAndEnableWorksAgain) {
  std::unique_ptr<TestDomain> domain = BootTestGuest("nobench", /*reboot_restarts=*/true);
  ASSERT_NE(domain, nullptr);
  if (HasFatalFailure()) return;
  // The first enable installs the blob; a reset takes it away again, so every round is one.
  const absl::Duration span = TimedEnable(domain->name());
  int interrupted = 0;
  for (int round = 0; round < kRounds; ++round) {
    const std::string when = absl::StrCat("reset round ", round);
    ASSERT_EQ(tprd_->Ctl({"rollback", domain->name()}).exit_code, 0);
    const size_t before = domain->Lines().size();
    RunResult r = RaceWith(
        *tprd_, {"enable", domain->name(), "--strategy", "mmio", "--transient"}, Draw(span),
        [&] {
          EXPECT_EQ(Virsh({"reset", domain->name()}).exit_code, 0);
        },
        tprd_->socket() + ".ctl");
    ExpectClearOutcome(r, when);
    if (r.exit_code != 0) {
      ++interrupted;
      // A reset that lands before the enable's stop leaves a CPU in real mode: "not booted far
      // enough, try again" is as clear and true as "rebooted during the enable" (the reboot
      // event may come after the enable's answer).
      EXPECT_TRUE(r.out.find("rebooted during the enable") != std::string::npos ||
                  r.out.find("has not booted far enough") != std::string::npos)
          << when << r.out;
    }
    ASSERT_TRUE(domain->WaitForPrefix("BOOT ", absl::Seconds(60), before).ok())
        << domain->LastLines();
    WaitForState(*tprd_, domain->name(), "unpatched", absl::Seconds(30), when.c_str());
    for (const auto& [address, state] : SiteStates(*tprd_, domain->name())) {
      EXPECT_NE(state, "applied") << when << ": 0x" << std::hex << address << " survived";
    }
    EXPECT_EQ(StatusField(*tprd_, domain->name(), "last_error"), "")
        << when << ": the reboot left an error behind";
    ExpectGuestPasses(*domain, domain->Lines().size(), when.c_str());
    TimedEnable(domain->name());
    WaitForApplied(*tprd_, domain->name(), HotSites(), absl::Seconds(60), when.c_str());
    if (HasFatalFailure()) return;
  }
  std::cout << "RESULT resets racing enable: " << interrupted << " of " << kRounds
            << " enables failed as 'rebooted during the enable' or 'not booted far enough', the "
               "rest completed first\n";
  EXPECT_EQ(tprd_->Ctl({"rollback", domain->name()}).exit_code, 0);
}

// The domain ends (by `stop`, drawn at random into the enable): tprctl's answer is clear, and
// a failure says the domain stopped; tprd keeps serving.
void RaceTest::StopDuringEnable(const std::string& how,
                                const std::function<void(TestDomain&)>& stop) {
  int interrupted = 0, gone_first = 0;
  for (int round = 0; round < kRounds; ++round) {
    const std::string when = absl::StrCat(how, " round ", round);
    std::unique_ptr<TestDomain> domain = BootTestGuest("nobench", false);
    ASSERT_NE(domain, nullptr);
    RunResult r = RaceWith(
        *tprd_, {"enable", domain->name(), "--strategy", "mmio", "--transient"},
        Draw(absl::Milliseconds(1500)), [&] { stop(*domain); }, tprd_->socket() + ".ctl");
    ExpectClearOutcome(r, when);
    if (r.exit_code != 0) {
      // Either the domain stopped while the enable ran, or it was gone before the enable reached
      // the domain's actor (the draw can fall before that; seen in a clean-clone run): both say
      // so in words.
      const bool during = r.out.find("stopped during the enable") != std::string::npos;
      const bool before = r.out.find("is not running; start it") != std::string::npos;
      if (during) ++interrupted;
      if (before) ++gone_first;
      EXPECT_TRUE(during || before) << when << r.out;
    }
    ASSERT_TRUE(
        PollUntil(absl::Seconds(30), [&] { return DomainRunState(domain->name()) != "running"; }))
        << when << ": the domain did not stop";
    // Gone: tprd says so (not found, or known and not running) and keeps serving.
    RunResult status = tprd_->Ctl({"status", domain->name()});
    EXPECT_TRUE(status.exit_code == 3 || status.exit_code == 0 || status.exit_code == 1)
        << when << ": " << status.out << status.err;
    EXPECT_EQ(tprd_->Ctl({"domains"}).exit_code, 0) << when << "\n" << tprd_->LogTail();
  }
  std::cout << "RESULT " << how << " racing enable: " << interrupted << " of " << kRounds
            << " enables failed as 'stopped during the enable', " << gone_first
            << " found the domain gone before they started, the rest completed first\n";
}

TEST_F(RaceTest, DestroyDuringEnableIsReportedAndTprdServesOn) {
  StopDuringEnable("destroy", [](TestDomain& domain) { EXPECT_TRUE(domain.Destroy().ok()); });
}

// The test guest has no ACPI, so `virsh shutdown` does nothing to it. QEMU's own `quit` is a
// shutdown as libvirt sees it: a SHUTDOWN event (host-initiated), then the domain shut off
// with reason "shutdown", the path a guest powering itself off takes in tprd.
TEST_F(RaceTest, ShutdownDuringEnableIsReportedAndTprdServesOn) {
  StopDuringEnable("shutdown", [](TestDomain& domain) {
    RunResult r = Virsh({"qemu-monitor-command", domain.name(), "--hmp", "quit"});
    // QEMU may go before it answers: the monitor's end is then libvirt's error.
    EXPECT_TRUE(r.exit_code == 0 || r.err.find("Unable to read from monitor") != std::string::npos)
        << r.err;
  });
}

// A guest the host paused stays paused whatever tprd was doing, and nothing is half-written.
TEST_F(RaceTest, SuspendDuringEnableOrRollbackLeavesTheGuestPausedAndEverySiteWhole) {
  std::unique_ptr<TestDomain> domain = BootTestGuest("nobench", false);
  ASSERT_NE(domain, nullptr);
  if (HasFatalFailure()) return;
  const CodeRange range = TestGuestCodeRange();
  ASSERT_EQ(tprd_->Terminate(), 0);
  const std::vector<uint8_t> pristine = ReadCode(domain->uuid(), range.first, range.size);
  tprd_->Start();
  const absl::Duration enable_span = TimedEnable(domain->name());
  ASSERT_EQ(tprd_->Ctl({"rollback", domain->name()}).exit_code, 0);
  const absl::Duration span = std::max(enable_span, absl::Milliseconds(300));
  // Most suspends land inside a tprd stop, where libvirt drops them: go on (bounded) until at
  // least one took effect, so the race this test is about has run.
  for (int round = 0; round < kRounds || (kept_ == 0 && round < 3 * kRounds); ++round) {
    for (const char* op : {"enable", "rollback"}) {
      const std::string when = absl::StrCat(op, " with a suspend, round ", round);
      std::vector<std::string> args = {op, domain->name()};
      if (std::string(op) == "enable") {
        args.push_back("--strategy");
        args.push_back("mmio");
        args.push_back("--transient");
      } else {
        // Something to roll back: patched again, hot sites applied.
        TimedEnable(domain->name());
        WaitForApplied(*tprd_, domain->name(), HotSites(), absl::Seconds(60), when.c_str());
      }
      std::string suspended;
      const absl::Duration delay = Draw(span);
      RunResult r = RaceWith(
          *tprd_, args, delay,
          [&] {
            suspended = Virsh({"domstate", "--reason", domain->name()}).out;
            RunResult v = Virsh({"suspend", domain->name()});
            EXPECT_EQ(v.exit_code, 0) << v.err;
            suspended += " -> " + Virsh({"domstate", "--reason", domain->name()}).out;
          },
          tprd_->socket() + ".ctl");
      ExpectClearOutcome(r, when);
      // A suspend that landed while tprd held the guest stopped is a no-op in libvirt (it
      // already reports the domain "paused (unknown)"): nothing to keep, and nothing tprd can
      // see (docs/design.md, "A suspend during a tprd stop"). Every suspend that took effect
      // must hold after tprd is done.
      if (suspended.find("(user)") != std::string::npos) {
        ++kept_;
        EXPECT_EQ(DomainRunState(domain->name()), "paused")
            << when << ": tprd resumed a guest the host paused (suspend after " << delay
            << "; state " << suspended << ")\n"
            << r.out << tprd_->LogTail();
        EXPECT_EQ(Virsh({"resume", domain->name()}).exit_code, 0);
      } else {
        // libvirt swallowed it: the state right after may already be "running" again, when
        // tprd's stop ended between the suspend and the domstate (seen in CI), so only the
        // count is kept.
        ++lost_in_libvirt_;
        if (DomainRunState(domain->name()) == "paused") (void)Virsh({"resume", domain->name()});
      }
      ExpectGuestPasses(*domain, domain->Lines().size(), when.c_str());
      ExpectEverySiteWhole(*tprd_, *domain, pristine, when);
      if (HasFatalFailure()) return;
      // Either way it went, the next operation completes.
      if (std::string(op) == "enable") {
        TimedEnable(domain->name());
      } else {
        EXPECT_EQ(tprd_->Ctl({"rollback", domain->name()}).exit_code, 0) << tprd_->LogTail();
      }
    }
  }
  ASSERT_EQ(tprd_->Ctl({"rollback", domain->name()}).exit_code, 0);
  ASSERT_EQ(tprd_->Terminate(), 0);
  EXPECT_TRUE(ReadCode(domain->uuid(), range.first, range.size) == pristine);
  std::cout << "RESULT suspends racing enable/rollback: " << kept_ << " took effect and held, "
            << lost_in_libvirt_ << " landed in a tprd stop (no-op in libvirt)\n";
  EXPECT_GT(kept_, 0) << "no suspend took effect: the race was never run";
}

// libvirtd restarted under a patched domain: tprd reconnects and registers its callbacks again,
// so a later reboot is still seen (the patches are forgotten, not left listed as applied).
TEST_F(RaceTest, LibvirtdRestartUnderAPatchedDomainThenALaterRebootIsStillSeen) {
  const char* allowed = std::getenv("TPRD_IT_RESTART_LIBVIRTD");
  if (allowed == nullptr || *allowed == 0) {
    GTEST_SKIP() << "set TPRD_IT_RESTART_LIBVIRTD=1 to let this test restart libvirtd";
  }
  std::unique_ptr<TestDomain> domain = BootTestGuest("nobench", /*reboot_restarts=*/true);
  ASSERT_NE(domain, nullptr);
  TimedEnable(domain->name());
  WaitForApplied(*tprd_, domain->name(), HotSites(), absl::Seconds(60), "before the restart");
  ASSERT_TRUE(RestartLibvirtd(absl::Seconds(60)).ok());
  // Still patched and served through the restart.
  WaitForState(*tprd_, domain->name(), "patched", absl::Seconds(30), "after the restart");
  ExpectGuestPasses(*domain, domain->Lines().size(), "libvirtd restarted");
  if (HasFailure()) ADD_FAILURE() << "tprd's log:\n" << tprd_->LogTail(80);
  // Whether the restart broke a poll (a stop's resume asks libvirt): then tprd let the guest go
  // on exact and took it back, which the checks above cover.
  const bool broke_a_poll = tprd_->LogTail(100000).find("lost the session") != std::string::npos;
  std::cout << "RESULT libvirtd restart: "
            << (broke_a_poll ? "broke a poll (let go, taken back)" : "no poll broken") << std::endl;
  // Give tprd's reconnect a bounded chance: its status answers from libvirt again.
  const size_t before = domain->Lines().size();
  ASSERT_EQ(Virsh({"reset", domain->name()}).exit_code, 0);
  ASSERT_TRUE(domain->WaitForPrefix("BOOT ", absl::Seconds(60), before).ok());
  WaitForState(*tprd_, domain->name(), "unpatched", absl::Seconds(60),
               "reboot after the libvirtd restart");
  TimedEnable(domain->name());
  WaitForApplied(*tprd_, domain->name(), HotSites(), absl::Seconds(60), "enable after it all");
  EXPECT_EQ(tprd_->Ctl({"rollback", domain->name()}).exit_code, 0);
}

}  // namespace
}  // namespace tprd::testing

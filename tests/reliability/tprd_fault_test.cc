// tprd killed (SIGKILL) at random points of enable and of rollback, many times over, on one
// running test guest (real libvirtd, QEMU TCG, tprd and tprctl processes). After every restart:
// every site is fully original or fully patched, the guest's site table, tprd's view and the
// journal agree, the guest's checks never fail, and it is never left stopped for long.
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <iostream>
#include <map>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/engine/site.h"
#include "daemon/journal/journal.h"
#include "gtest/gtest.h"
#include "kvm-backend/libvirt_connection.h"
#include "tests/e2e/e2e_support.h"
#include "tests/support/libvirt_test_env.h"

namespace tprd::testing {
namespace {

// The issue asks for at least 20 of each; TPRD_FAULT_ITERATIONS overrides it (longer soaks).
int Iterations() {
  const char* env = std::getenv("TPRD_FAULT_ITERATIONS");
  return env != nullptr && std::atoi(env) > 0 ? std::atoi(env) : 20;
}

constexpr absl::Duration kMaxStopped = absl::Seconds(5);

// Watches libvirt's view of the domain from a thread and keeps the longest time it stayed
// paused (a gdbstub stop shows as paused). 100 ms resolution, far below the 5 s asked.
class StoppedWatch {
 public:
  explicit StoppedWatch(std::string uuid) : uuid_(std::move(uuid)) {
    thread_ = std::thread([this] { Run(); });
  }
  ~StoppedWatch() {
    done_ = true;
    thread_.join();
  }
  absl::Duration longest() const { return absl::Milliseconds(longest_ms_.load()); }

 private:
  void Run() {
    absl::StatusOr<std::unique_ptr<backend::LibvirtConnection>> conn =
        backend::ConnectToLibvirt({});
    if (!conn.ok()) return;
    std::optional<absl::Time> paused_since;
    while (!done_) {
      absl::StatusOr<backend::LibvirtDomainInfo> info = (*conn)->GetDomain(uuid_);
      const absl::Time now = absl::Now();
      if (info.ok() && info->state == backend::LibvirtDomainState::kPaused) {
        if (!paused_since) paused_since = now;
        const int64_t ms = absl::ToInt64Milliseconds(now - *paused_since);
        if (ms > longest_ms_) longest_ms_ = ms;
      } else {
        paused_since.reset();
      }
      absl::SleepFor(absl::Milliseconds(100));  // sampling period of an outside view
    }
  }

  const std::string uuid_;
  std::atomic<bool> done_{false};
  std::atomic<int64_t> longest_ms_{0};
  std::thread thread_;
};

// "0x80101234: a1 80 00 fe ff -> e8 ..." for each run of differing bytes.
std::string Differences(uint32_t first, const std::vector<uint8_t>& want,
                        const std::vector<uint8_t>& got) {
  std::string out;
  for (size_t i = 0; i < want.size() && i < got.size();) {
    if (want[i] == got[i]) {
      ++i;
      continue;
    }
    size_t end = i;
    while (end < want.size() && end < got.size() && (want[end] != got[end] || end - i < 6)) ++end;
    absl::StrAppend(&out, "\n  0x", absl::Hex(first + i), ":");
    for (size_t k = i; k < end; ++k)
      absl::StrAppend(&out, " ", absl::Hex(want[k], absl::kZeroPad2));
    absl::StrAppend(&out, " ->");
    for (size_t k = i; k < end; ++k) absl::StrAppend(&out, " ", absl::Hex(got[k], absl::kZeroPad2));
    i = end;
  }
  return out;
}

struct FaultStats {
  int kills = 0;
  int finished_before_kill = 0;  // the operation had already completed when the kill landed
  int sites_applied_after = 0;   // summed over kills: sites found patched after restart
  int sites_original_after = 0;
};

class FaultTest : public ::testing::Test {
 protected:
  void SetUp() override {
    domain_ = BootTestGuest("nobench", false);
    ASSERT_NE(domain_, nullptr);
    range_ = TestGuestCodeRange();
    pristine_ = ReadCode(domain_->uuid(), range_.first, range_.size);
    tprd_ = std::make_unique<TprdProcess>(MakeTprdDir(), "proving_window_s = 5\n");
    tprd_->Start();
  }

  // Runs `tprctl ARGS` in the background, kills tprd after `delay`, and reaps tprctl. Returns
  // whether tprctl had already finished (the kill then hit an idle daemon).
  bool KillDuring(const std::vector<std::string>& args, absl::Duration delay) {
    std::vector<std::string> full = {TprctlPath(), "--socket", tprd_->socket(), "--timeout", "60"};
    full.insert(full.end(), args.begin(), args.end());
    const std::string out = absl::StrCat(domain_->serial_path(), ".tprctl.log");
    const pid_t ctl = Spawn(full, out, out);
    EXPECT_GT(ctl, 0);
    absl::SleepFor(delay);  // the fault point, drawn at random: not a synchronisation
    int status;
    const bool finished = waitpid(ctl, &status, WNOHANG) == ctl;
    tprd_->Kill();
    if (finished) {
      EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
          << "tprctl " << args[0] << " failed before the kill: " << ReadFile(out);
    }
    if (!finished) Stop(ctl, 10000);  // its connection broke: it exits on its own
    return finished;
  }

  // Restarts tprd and checks the guest, tprd's view and the journal against each other.
  void RestartAndCheck(const std::string& when, FaultStats& stats) {
    tprd_->Start();
    if (HasFatalFailure()) return;
    const absl::Time view_time = absl::Now();
    const std::vector<SiteRow> view = ListSites(*tprd_, domain_->name());
    // SIGTERM: tprd leaves the guest on exact and lets go of the gdbstub, so that our own session
    // can read what the guest holds.
    ASSERT_EQ(tprd_->Terminate(), 0) << when << "\n" << tprd_->LogTail();
    const GuestSnapshot guest = SnapshotGuest(domain_->uuid(), range_.first, range_.size);
    ASSERT_EQ(guest.code.size(), pristine_.size());
    std::vector<daemon::JournalSkip> skipped;
    absl::StatusOr<std::vector<daemon::JournalEntry>> journal =
        daemon::Journal::ReadAll(tprd_->journal_path(), &skipped);
    ASSERT_TRUE(journal.ok()) << journal.status();
    std::map<uint32_t, engine::SiteState> journaled;  // last state per site id
    std::set<uint32_t> changed_after_view;  // patched at first execution after the view was taken
    for (const daemon::JournalEntry& entry : *journal) {
      if (entry.domain_uuid == domain_->uuid() && entry.site) {
        journaled[entry.site->id] = entry.site->state;
        if (entry.time > view_time && entry.site->state == engine::SiteState::kApplied) {
          changed_after_view.insert(entry.site->id);
        }
      }
    }
    std::map<uint32_t, const SiteRow*> view_by_id;
    for (const SiteRow& row : view) view_by_id[row.id] = &row;

    // Every byte of the code pages is the original one or part of a fully applied site.
    std::vector<uint8_t> expected = pristine_;
    if (guest.blob) {
      for (const engine::Site& site : guest.blob->sites) {
        const std::string name(engine::SiteStateName(site.state));
        ASSERT_GE(site.address, range_.first);
        const size_t at = site.address - range_.first;
        ASSERT_LE(at + site.original.size(), expected.size());
        const std::vector<uint8_t> now(guest.code.begin() + at,
                                       guest.code.begin() + at + site.original.size());
        EXPECT_NE(site.state, engine::SiteState::kPending)
            << when << ": site " << site.id << " still pending after the restart";
        if (site.state == engine::SiteState::kApplied) {
          ++stats.sites_applied_after;
          std::copy(site.patched.begin(), site.patched.end(), expected.begin() + at);
          EXPECT_EQ(now, site.patched) << when << ": site " << site.id << " recorded applied";
        } else {
          ++stats.sites_original_after;
          EXPECT_EQ(now, site.original) << when << ": site " << site.id << " recorded " << name;
        }
        auto v = view_by_id.find(site.id);
        if (v == view_by_id.end()) {
          // tprd lists an unpatched guest's sites only while it holds a session.
          EXPECT_TRUE(site.state != engine::SiteState::kApplied ||
                      changed_after_view.count(site.id))
              << when << ": tprd does not list applied site " << site.id;
        } else if (!changed_after_view.count(site.id)) {
          // Agreement on what matters, patched or not: candidate and rolled_back both mean the
          // original bytes (an enable turns rolled-back sites into candidates in its memory).
          EXPECT_EQ(v->second->state == "applied", site.state == engine::SiteState::kApplied)
              << when << ": tprd's view of site " << site.id << " is " << v->second->state
              << ", the guest's table says " << name;
          EXPECT_EQ(v->second->address, site.address);
        }
        auto j = journaled.find(site.id);
        ASSERT_NE(j, journaled.end()) << when << ": site " << site.id << " never journaled";
        EXPECT_EQ(j->second, site.state)
            << when << ": the journal's last word on site " << site.id << " is "
            << engine::SiteStateName(j->second) << ", the guest's table says " << name;
      }
    } else {
      EXPECT_TRUE(guest.blob_error.empty()) << when << ": " << guest.blob_error;
    }
    for (const SiteRow& row : view) {
      if (row.state == "applied") {
        const bool in_table =
            guest.blob && std::any_of(guest.blob->sites.begin(), guest.blob->sites.end(),
                                      [&](const engine::Site& s) { return s.id == row.id; });
        EXPECT_TRUE(in_table) << when << ": tprd says site " << row.id
                              << " is applied; the guest's table does not have it";
      }
    }
    EXPECT_TRUE(guest.code == expected)
        << when << ": code bytes differ from original + applied sites (a half-written site?)"
        << Differences(range_.first, expected, guest.code);
    NoFailureSoFar(when);
    tprd_->Start();
  }

  void NoFailureSoFar(const std::string& when) {
    for (const std::string& line : domain_->Lines()) {
      ASSERT_NE(line.rfind("FAIL ", 0), 0u) << when << ": " << line << "\n"
                                            << domain_->LastLines() << tprd_->LogTail(120);
      if (line.rfind("STAT ", 0) == 0) {
        ASSERT_NE(line.find(" fail=0"), std::string::npos) << when << ": " << line;
      }
    }
  }

  absl::Duration Timed(const std::vector<std::string>& args) {
    const absl::Time start = absl::Now();
    RunResult r = tprd_->Ctl(args);
    EXPECT_EQ(r.exit_code, 0) << r.out << r.err << tprd_->LogTail();
    return absl::Now() - start;
  }

  std::unique_ptr<TestDomain> domain_;
  CodeRange range_;
  std::vector<uint8_t> pristine_;
  std::unique_ptr<TprdProcess> tprd_;
};

TEST_F(FaultTest, KillNineDuringEnableAndRollbackLeavesEverySiteWholeAndTheRecordsAgreeing) {
  if (HasFatalFailure()) return;
  const std::string name = domain_->name();
  StoppedWatch watch(domain_->uuid());
  // The first enable installs the blob (and learns); later ones reuse it and are shorter. The
  // fault window follows the last complete run of each operation.
  Timed({"enable", name, "--strategy", "mmio"});
  Timed({"rollback", name});
  absl::Duration enable_time = Timed({"enable", name, "--strategy", "mmio"});
  absl::Duration rollback_time = Timed({"rollback", name});
  ASSERT_FALSE(HasFailure());
  const unsigned seed = std::random_device{}();
  std::mt19937 rng(seed);
  std::cout << "seed " << seed << "; enable " << enable_time << ", rollback " << rollback_time
            << "\n";
  auto draw = [&](absl::Duration span) {
    std::uniform_real_distribution<double> u(0.0, 1.2);  // also past the end, now and then
    return span * u(rng);
  };

  FaultStats during_enable, during_rollback;
  const int iterations = Iterations();
  for (int i = 0; i < iterations && !HasFatalFailure(); ++i) {
    const std::string at = absl::StrCat("iteration ", i, " (seed ", seed, ")");
    during_enable.finished_before_kill +=
        KillDuring({"enable", name, "--strategy", "mmio"}, draw(enable_time));
    ++during_enable.kills;
    RestartAndCheck(absl::StrCat(at, ", killed during enable"), during_enable);
    if (HasFatalFailure()) break;
    // Finish the enable (idempotent where the killed one got there), then kill a rollback.
    enable_time = std::max(enable_time / 2, Timed({"enable", name, "--strategy", "mmio"}));
    // Enable patches again what the last rollback restored (hot sites at their first run).
    WaitForApplied(*tprd_, name, HotSites(), absl::Seconds(60), at.c_str());
    during_rollback.finished_before_kill += KillDuring({"rollback", name}, draw(rollback_time));
    ++during_rollback.kills;
    RestartAndCheck(absl::StrCat(at, ", killed during rollback"), during_rollback);
    if (HasFatalFailure()) break;
    rollback_time = std::max(rollback_time / 2, Timed({"rollback", name}));
  }
  // Everything rolled back at the end: the code is byte-identical to before the first enable.
  ASSERT_EQ(tprd_->Terminate(), 0) << tprd_->LogTail();
  const std::vector<uint8_t> last = ReadCode(domain_->uuid(), range_.first, range_.size);
  EXPECT_TRUE(last == pristine_) << "code pages differ from before the first enable"
                                 << Differences(range_.first, pristine_, last);
  ExpectGuestPasses(*domain_, domain_->Lines().size(), "after the kill loop");
  EXPECT_LT(watch.longest(), kMaxStopped) << "the guest was left stopped too long";
  auto report = [](const char* what, const FaultStats& s) {
    std::cout << "RESULT kill -9 during " << what << ": " << s.kills << " kills, "
              << s.finished_before_kill << " after it had finished; sites found applied "
              << s.sites_applied_after << ", original " << s.sites_original_after << "\n";
  };
  report("enable", during_enable);
  report("rollback", during_rollback);
  std::cout << "RESULT longest stop seen: " << watch.longest() << "\n";
}

}  // namespace
}  // namespace tprd::testing

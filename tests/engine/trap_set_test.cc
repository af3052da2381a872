// TrapSet against a FakeGuestVm: arming is idempotent, a trap that cannot be set is reported,
// removing takes away exactly what was armed, and the proving window decides which candidates
// keep their breakpoints.
#include "daemon/engine/trap_set.h"

#include <map>
#include <set>
#include <tuple>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_guest_vm.h"

namespace tprd::engine {
namespace {

using ::testing::HasSubstr;
using ::tprd::testing::FakeClock;
using ::tprd::testing::FakeGuestVm;

constexpr uint32_t kFirst = 0x80100000;
constexpr uint32_t kSecond = 0x80100010;
constexpr uint32_t kApplied = 0x80100020;
constexpr uint32_t kUnplanned = 0x80100030;
constexpr uint32_t kForeign = 0x80100040;  // a breakpoint someone else set

// Counts trap calls and fails the ones a test names.
class TrapCountingGuestVm : public FakeGuestVm {
 public:
  TrapCountingGuestVm() : FakeGuestVm(StoppedGuest()) {}

  absl::Status SetBreakpoint(uint32_t va) override {
    ++set_breakpoint_calls;
    if (failing_breakpoints.count(va)) return absl::UnavailableError("injected");
    return FakeGuestVm::SetBreakpoint(va);
  }
  absl::Status RemoveBreakpoint(uint32_t va) override {
    ++remove_breakpoint_calls;
    return FakeGuestVm::RemoveBreakpoint(va);
  }
  absl::Status SetWatchpoint(uint32_t va, uint32_t length, WatchKind kind) override {
    ++set_watchpoint_calls;
    if (fail_watchpoint) return absl::UnavailableError("injected");
    return FakeGuestVm::SetWatchpoint(va, length, kind);
  }
  absl::Status RemoveWatchpoint(uint32_t va, uint32_t length, WatchKind kind) override {
    ++remove_watchpoint_calls;
    return FakeGuestVm::RemoveWatchpoint(va, length, kind);
  }

  static Options StoppedGuest() {
    Options options;
    options.start_running = false;  // traps are set with the guest stopped
    return options;
  }

  std::set<uint32_t> failing_breakpoints;
  bool fail_watchpoint = false;
  int set_breakpoint_calls = 0;
  int remove_breakpoint_calls = 0;
  int set_watchpoint_calls = 0;
  int remove_watchpoint_calls = 0;
};

ManagedSite MakeSite(uint32_t id, uint32_t address, SiteState state, bool planned = true) {
  ManagedSite managed;
  managed.site.id = id;
  managed.site.address = address;
  managed.site.original = {0xA1, 0x80, 0x00, 0xFE, 0xFF};
  if (planned) managed.site.patched = {0xE8, 0x00, 0x00, 0x00, 0x00};
  managed.site.state = state;
  return managed;
}

class TrapSetTest : public ::testing::Test {
 protected:
  TrapSetTest() {
    profile_.emplace();
    profile_->tpr_va = kDefaultTprVa;
    sites_[0] = MakeSite(0, kFirst, SiteState::kCandidate);
    sites_[1] = MakeSite(1, kSecond, SiteState::kCandidate);
    sites_[2] = MakeSite(2, kApplied, SiteState::kApplied);
    sites_[3] = MakeSite(3, kUnplanned, SiteState::kCandidate, /*planned=*/false);
  }

  std::set<uint32_t> Armed() const {
    std::set<uint32_t> out;
    for (const auto& [id, managed] : sites_) {
      if (managed.armed) out.insert(managed.site.address);
    }
    return out;
  }

  TrapCountingGuestVm vm_;
  FakeClock clock_;
  TrapSet traps_{vm_, clock_};
  std::map<uint32_t, ManagedSite> sites_;
  std::optional<GuestProfile> profile_;
};

TEST_F(TrapSetTest, ArmingTwiceSetsEachTrapOnce) {
  traps_.OpenProvingWindow(absl::Seconds(60));
  ASSERT_TRUE(traps_.Arm(sites_, Strategy::kCr8, profile_, /*mmio_alias=*/false).ok());
  ASSERT_TRUE(traps_.Arm(sites_, Strategy::kCr8, profile_, /*mmio_alias=*/false).ok());

  // Applied sites and sites that can never be patched get none.
  EXPECT_EQ(vm_.breakpoints(), (std::set<uint32_t>{kFirst, kSecond}));
  EXPECT_EQ(Armed(), (std::set<uint32_t>{kFirst, kSecond}));
  EXPECT_TRUE(traps_.HasBreakpointAt(kFirst));
  EXPECT_FALSE(traps_.HasBreakpointAt(kApplied));
  EXPECT_EQ(vm_.set_breakpoint_calls, 2);
  EXPECT_EQ(vm_.watchpoints(), (std::set<std::tuple<uint32_t, uint32_t, WatchKind>>{
                                   {kDefaultTprVa, 4, WatchKind::kAccess}}));
  EXPECT_EQ(vm_.set_watchpoint_calls, 1);
  EXPECT_TRUE(traps_.WatchesAccesses());
  EXPECT_FALSE(traps_.WatchesWrites());
}

TEST_F(TrapSetTest, MmioWatchesWritesOnlyThroughItsAlias) {
  ASSERT_TRUE(traps_.Arm(sites_, Strategy::kMmio, profile_, /*mmio_alias=*/false).ok());
  EXPECT_FALSE(traps_.watch_armed());
  EXPECT_TRUE(vm_.watchpoints().empty());

  ASSERT_TRUE(traps_.Arm(sites_, Strategy::kMmio, profile_, /*mmio_alias=*/true).ok());
  EXPECT_TRUE(traps_.WatchesWrites());
  EXPECT_EQ(
      vm_.watchpoints(),
      (std::set<std::tuple<uint32_t, uint32_t, WatchKind>>{{kDefaultTprVa, 4, WatchKind::kWrite}}));
}

TEST_F(TrapSetTest, NoWatchpointWithoutAProfile) {
  traps_.OpenProvingWindow(absl::Seconds(60));  // candidates keep breakpoints only in it
  ASSERT_TRUE(traps_.Arm(sites_, Strategy::kCr8, std::nullopt, /*mmio_alias=*/false).ok());
  EXPECT_FALSE(traps_.watch_armed());
  EXPECT_EQ(vm_.set_watchpoint_calls, 0);
  EXPECT_EQ(Armed(), (std::set<uint32_t>{kFirst, kSecond}));  // the window keeps them
}

TEST_F(TrapSetTest, ABreakpointThatCannotBeSetIsTheSitesNote) {
  traps_.OpenProvingWindow(absl::Seconds(60));  // candidates keep breakpoints only in it
  vm_.failing_breakpoints = {kSecond};
  ASSERT_TRUE(traps_.Arm(sites_, Strategy::kCr8, profile_, /*mmio_alias=*/false).ok());
  EXPECT_EQ(Armed(), (std::set<uint32_t>{kFirst}));
  EXPECT_FALSE(traps_.HasBreakpointAt(kSecond));
  EXPECT_THAT(sites_[1].note, HasSubstr("breakpoint not set: injected"));

  // Tried again at the next arming.
  vm_.failing_breakpoints.clear();
  ASSERT_TRUE(traps_.Arm(sites_, Strategy::kCr8, profile_, /*mmio_alias=*/false).ok());
  EXPECT_EQ(Armed(), (std::set<uint32_t>{kFirst, kSecond}));
}

TEST_F(TrapSetTest, AWatchpointThatCannotBeSetIsAnError) {
  vm_.fail_watchpoint = true;
  absl::Status armed = traps_.Arm(sites_, Strategy::kCr8, profile_, /*mmio_alias=*/false);
  EXPECT_TRUE(absl::IsUnavailable(armed)) << armed;
  EXPECT_FALSE(traps_.watch_armed());
  // Nothing to remove: only the breakpoints go.
  ASSERT_TRUE(traps_.RemoveAll(sites_, profile_).ok());
  EXPECT_EQ(vm_.remove_watchpoint_calls, 0);
}

TEST_F(TrapSetTest, RemoveAllRemovesExactlyWhatWasArmed) {
  traps_.OpenProvingWindow(absl::Seconds(60));  // candidates keep breakpoints only in it
  ASSERT_TRUE(vm_.FakeGuestVm::SetBreakpoint(kForeign).ok());
  ASSERT_TRUE(vm_.FakeGuestVm::SetWatchpoint(0x1000, 4, WatchKind::kWrite).ok());
  ASSERT_TRUE(traps_.Arm(sites_, Strategy::kCr8, profile_, /*mmio_alias=*/false).ok());

  ASSERT_TRUE(traps_.RemoveAll(sites_, profile_).ok());
  EXPECT_EQ(vm_.breakpoints(), (std::set<uint32_t>{kForeign}));
  EXPECT_EQ(vm_.watchpoints(),
            (std::set<std::tuple<uint32_t, uint32_t, WatchKind>>{{0x1000, 4, WatchKind::kWrite}}));
  EXPECT_TRUE(Armed().empty());
  EXPECT_FALSE(traps_.watch_armed());
  EXPECT_FALSE(traps_.HasBreakpointAt(kFirst));

  // Again: nothing is left to remove.
  const int breakpoint_removals = vm_.remove_breakpoint_calls;
  ASSERT_TRUE(traps_.RemoveAll(sites_, profile_).ok());
  EXPECT_EQ(vm_.remove_breakpoint_calls, breakpoint_removals);
  EXPECT_EQ(vm_.remove_watchpoint_calls, 1);
}

TEST_F(TrapSetTest, RemoveAllReportsTheFirstFailureAndForgetsEverything) {
  traps_.OpenProvingWindow(absl::Seconds(60));  // candidates keep breakpoints only in it
  ASSERT_TRUE(traps_.Arm(sites_, Strategy::kCr8, profile_, /*mmio_alias=*/false).ok());
  ASSERT_TRUE(vm_.FakeGuestVm::RemoveBreakpoint(kFirst).ok());  // lost behind the set's back

  absl::Status removed = traps_.RemoveAll(sites_, profile_);
  EXPECT_TRUE(absl::IsNotFound(removed)) << removed;
  EXPECT_TRUE(vm_.breakpoints().empty());
  EXPECT_TRUE(vm_.watchpoints().empty());
  EXPECT_TRUE(Armed().empty());
  EXPECT_FALSE(traps_.watch_armed());
}

TEST_F(TrapSetTest, RemoveBreakpointTakesOneSite) {
  traps_.OpenProvingWindow(absl::Seconds(60));  // candidates keep breakpoints only in it
  ASSERT_TRUE(traps_.Arm(sites_, Strategy::kCr8, profile_, /*mmio_alias=*/false).ok());
  traps_.RemoveBreakpoint(sites_[0]);
  EXPECT_EQ(vm_.breakpoints(), (std::set<uint32_t>{kSecond}));
  EXPECT_EQ(Armed(), (std::set<uint32_t>{kSecond}));
  EXPECT_FALSE(traps_.HasBreakpointAt(kFirst));
  EXPECT_TRUE(traps_.watch_armed());
}

TEST_F(TrapSetTest, TheProvingWindowKeepsCandidatesArmedUntilItsDeadline) {
  const ManagedSite& candidate = sites_[0];
  EXPECT_FALSE(traps_.proving_window_open());
  EXPECT_FALSE(traps_.WantsBreakpoint(candidate));

  traps_.OpenProvingWindow(absl::Seconds(60));
  EXPECT_TRUE(traps_.proving_window_open());
  EXPECT_EQ(traps_.proving_deadline(), clock_.Now() + absl::Seconds(60));
  EXPECT_TRUE(traps_.WantsBreakpoint(candidate));
  EXPECT_FALSE(traps_.WantsBreakpoint(sites_[2]));  // applied
  EXPECT_FALSE(traps_.WantsBreakpoint(sites_[3]));  // can never be patched

  clock_.Advance(absl::Seconds(59));
  EXPECT_FALSE(traps_.CloseProvingWindowIfDue());
  EXPECT_TRUE(traps_.proving_window_open());
  clock_.Advance(absl::Seconds(1));
  EXPECT_TRUE(traps_.CloseProvingWindowIfDue());
  EXPECT_FALSE(traps_.proving_window_open());
  EXPECT_FALSE(traps_.CloseProvingWindowIfDue());

  // After it no breakpoint stays on a candidate, under either strategy: the TPR watchpoint sees
  // a late one run.
  EXPECT_FALSE(traps_.WantsBreakpoint(candidate));
}

}  // namespace
}  // namespace tprd::engine

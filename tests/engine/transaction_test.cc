#include "daemon/engine/transaction.h"

#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_guest_vm.h"
#include "tests/fakes/page_table_builder.h"

namespace tprd::engine {
namespace {

using testing::FakeGuestVm;
using ::testing::HasSubstr;
using Kind = SiteOutcome::Kind;

// Keeps every record, and the latest state per site id; can fail the Nth call.
class FakePatchRecorder : public PatchRecorder {
 public:
  absl::Status RecordSite(const Site& site) override {
    if (on_record) std::exchange(on_record, nullptr)();  // once
    if (fail_at_ > 0 && ++calls_ == fail_at_) return absl::InternalError("journal full");
    records.push_back(site);
    return absl::OkStatus();
  }
  std::function<void()> on_record;  // runs at the next record, once
  absl::Status RecordSites(absl::Span<const Site> sites) override {
    batches.push_back(sites.size());
    return PatchRecorder::RecordSites(sites);
  }
  std::vector<size_t> batches;  // the size of each RecordSites call
  void FailNth(int n) {
    fail_at_ = n;
    calls_ = 0;
  }
  std::optional<SiteState> Latest(uint32_t id) const {
    for (auto it = records.rbegin(); it != records.rend(); ++it) {
      if (it->id == id) return it->state;
    }
    return std::nullopt;
  }
  std::vector<Site> records;

 private:
  int fail_at_ = 0;
  int calls_ = 0;
};

constexpr uint32_t kSiteA = 0x80101000;
constexpr uint32_t kSiteB = 0x80102000;
constexpr uint32_t kSiteC = 0x80103000;

Site MakeSite(uint32_t id, uint32_t address, std::vector<uint8_t> original,
              std::vector<uint8_t> patched) {
  Site site;
  site.id = id;
  site.address = address;
  site.original = std::move(original);
  site.patched = std::move(patched);
  return site;
}

// Real TPR instructions and plausible replacements (call rel32 to some handler).
std::vector<Site> ThreeSites() {
  return {
      MakeSite(1, kSiteA, {0xA1, 0x80, 0x00, 0xFE, 0xFF}, {0xE8, 0x10, 0x20, 0x30, 0x00}),
      MakeSite(2, kSiteB, {0x89, 0x0D, 0x80, 0x00, 0xFE, 0xFF},
               {0x51, 0xE8, 0x11, 0x21, 0x31, 0x00}),
      MakeSite(3, kSiteC, {0xC7, 0x05, 0x80, 0x00, 0xFE, 0xFF, 0x41, 0x00, 0x00, 0x00},
               {0x68, 0x41, 0x00, 0x00, 0x00, 0xE8, 0x12, 0x22, 0x32, 0x00}),
  };
}

class TransactionTest : public ::testing::Test {
 protected:
  TransactionTest() { SetUpFresh(); }

  // A fresh guest, recorder and sites (for loops over fault positions inside one test).
  void SetUpFresh() {
    vm_ = FakeGuestVm(testing::XpLikeVmOptions({.vcpu_count = 2}));
    recorder_ = FakePatchRecorder();
    EXPECT_TRUE(testing::BuildXpLikeLayout(vm_, {.vcpu_count = 2}).ok());
    sites_ = ThreeSites();
    for (const Site& s : sites_) Put(s.address, s.original);
    // Neighbouring bytes, so a write spilling over would show.
    for (const Site& s : sites_) {
      Put(s.address - 2, {0x90, 0x90});
      Put(s.address + static_cast<uint32_t>(s.original.size()), {0xC3, 0xCC});
    }
    vm_.SetEip(0, 0x80200000);
    vm_.SetEip(1, 0x80200100);
  }

  void Put(uint32_t va, const std::vector<uint8_t>& bytes) {
    ASSERT_TRUE(vm_.BackdoorWriteVirtual(0, va, bytes).ok());
  }
  std::vector<uint8_t> Bytes(const Site& s) {
    absl::StatusOr<std::vector<uint8_t>> b =
        vm_.BackdoorVirtualBytes(0, s.address, s.original.size());
    EXPECT_TRUE(b.ok());
    return b.ok() ? *b : std::vector<uint8_t>{};
  }
  TransactionReport Apply(ApplyOptions options = {}) {
    absl::StatusOr<TransactionReport> r =
        ApplySites(vm_, recorder_, absl::MakeSpan(sites_), options);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : TransactionReport{};
  }
  TransactionReport Rollback(RollbackOptions options = {}) {
    absl::StatusOr<TransactionReport> r =
        RollbackSites(vm_, recorder_, absl::MakeSpan(sites_), options);
    EXPECT_TRUE(r.ok()) << r.status();
    return r.ok() ? *r : TransactionReport{};
  }
  // Every site fully original or fully patched, the record consistent with it, and no byte
  // outside the sites ever written.
  void ExpectWholeAndTrue() {
    for (const Site& s : sites_) {
      SCOPED_TRACE(::testing::Message() << "site " << s.id);
      const std::vector<uint8_t> now = Bytes(s);
      const bool original = now == s.original, patched = now == s.patched;
      EXPECT_TRUE(original || patched);
      const std::optional<SiteState> recorded = recorder_.Latest(s.id);
      if (recorded == SiteState::kApplied) {
        EXPECT_TRUE(patched);
      }
      if (recorded == SiteState::kRolledBack || recorded == SiteState::kCandidate) {
        EXPECT_TRUE(original);
      }
      if (!recorded.has_value()) {
        EXPECT_TRUE(original);
      } else {
        EXPECT_EQ(*recorded, s.state);
      }
    }
    ExpectOnlySiteBytesWritten();
  }
  void ExpectOnlySiteBytesWritten() {
    for (const FakeGuestVm::WriteRecord& w : vm_.write_log()) {
      ASSERT_TRUE(w.is_virtual);
      bool inside = false;
      for (const Site& s : sites_) {
        inside |=
            w.address >= s.address && w.address + w.bytes.size() <= s.address + s.original.size();
      }
      EXPECT_TRUE(inside) << "write at 0x" << std::hex << w.address;
    }
  }

  FakeGuestVm vm_;
  FakePatchRecorder recorder_;
  std::vector<Site> sites_;
};

TEST_F(TransactionTest, ApplyPatchesAllWithOneStopAndRecordsPendingThenApplied) {
  const TransactionReport r = Apply();
  EXPECT_EQ(r.Count(Kind::kApplied), 3);
  for (const Site& s : sites_) {
    EXPECT_EQ(Bytes(s), s.patched);
    EXPECT_EQ(s.state, SiteState::kApplied);
  }
  EXPECT_EQ(vm_.stop_calls(), 1);
  EXPECT_EQ(vm_.resume_calls(), 1);
  EXPECT_TRUE(vm_.running());
  // Every pending record before the first write, every outcome after the last: one recorder call
  // each (the journal's two fsyncs for the whole stop).
  ASSERT_EQ(recorder_.records.size(), 6u);
  for (int i = 0; i < 3; ++i) EXPECT_EQ(recorder_.records[i].state, SiteState::kPending);
  for (int i = 3; i < 6; ++i) EXPECT_EQ(recorder_.records[i].state, SiteState::kApplied);
  EXPECT_EQ(recorder_.batches, (std::vector<size_t>{3, 3}));
  EXPECT_EQ(vm_.write_log().size(), 3u);  // one write per site
  ExpectWholeAndTrue();
}

// Sites close together are read with one read of the range covering them: to decide, to check
// again before the writes, and to read the writes back. A shared read that fails is made again
// site by site, and the sites are patched all the same.
TEST_F(TransactionTest, SitesCloseTogetherShareTheirReads) {
  for (bool fail_shared : {false, true}) {
    SCOPED_TRACE(fail_shared ? "the first shared read fails" : "no fault");
    SetUpFresh();
    // The three sites moved next to each other: A, A+0x20, A+0x40.
    for (size_t k = 0; k < sites_.size(); ++k) {
      sites_[k].address = kSiteA + static_cast<uint32_t>(0x20 * k);
      Put(sites_[k].address, sites_[k].original);
    }
    if (fail_shared) vm_.FailNthRead(1);
    const int reads_before = vm_.op_count(FakeGuestVm::Op::kReadMemory);
    const TransactionReport r = Apply();
    EXPECT_EQ(r.Count(Kind::kApplied), 3);
    for (const Site& s : sites_) EXPECT_EQ(Bytes(s), s.patched);
    // Three passes of one read each; the failed one is made again as three.
    EXPECT_EQ(vm_.op_count(FakeGuestVm::Op::kReadMemory) - reads_before, fail_shared ? 5 : 3);
    EXPECT_EQ(vm_.write_log().size(), 3u);
  }
}

TEST_F(TransactionTest, ApplyTwiceIsIdempotent) {
  Apply();
  vm_.ClearWriteLog();
  const TransactionReport r = Apply();
  EXPECT_EQ(r.Count(Kind::kAlreadyApplied), 3);
  EXPECT_TRUE(vm_.write_log().empty());
  ExpectWholeAndTrue();
}

TEST_F(TransactionTest, AlreadyPatchedBytesAreRecordedAsApplied) {
  Put(kSiteA, sites_[0].patched);
  const TransactionReport r = Apply();
  EXPECT_EQ(r.outcomes[0].kind, Kind::kAlreadyApplied);
  EXPECT_EQ(recorder_.Latest(1), SiteState::kApplied);
  ExpectWholeAndTrue();
}

TEST_F(TransactionTest, ApplyThenRollbackRestoresEverything) {
  const FakeGuestVm::MemorySnapshot before = vm_.Snapshot();
  Apply();
  const TransactionReport r = Rollback();
  EXPECT_EQ(r.Count(Kind::kRolledBack), 3);
  EXPECT_EQ(vm_.Snapshot(), before);
  for (const Site& s : sites_) EXPECT_EQ(s.state, SiteState::kRolledBack);
  const TransactionReport again = Rollback();
  EXPECT_EQ(again.Count(Kind::kAlreadyOriginal), 3);
  ExpectWholeAndTrue();
}

TEST_F(TransactionTest, CallerHeldStopIsNeitherStoppedNorResumed) {
  ASSERT_TRUE(vm_.Stop().ok());
  const TransactionReport r = Apply({.stop = GuestStop::kCallerHoldsStopped});
  EXPECT_EQ(r.Count(Kind::kApplied), 3);
  EXPECT_EQ(vm_.stop_calls(), 1);
  EXPECT_EQ(vm_.resume_calls(), 0);
  EXPECT_FALSE(vm_.running());
}

TEST_F(TransactionTest, StoppedGuestScopeResumesOnce) {
  {
    absl::StatusOr<std::unique_ptr<StoppedGuestScope>> scope = StoppedGuestScope::Enter(vm_);
    ASSERT_TRUE(scope.ok());
    Apply({.stop = GuestStop::kCallerHoldsStopped});
    Rollback({.stop = GuestStop::kCallerHoldsStopped});
    EXPECT_FALSE(vm_.running());
  }
  EXPECT_EQ(vm_.stop_calls(), 1);
  EXPECT_EQ(vm_.resume_calls(), 1);
  EXPECT_TRUE(vm_.running());
}

TEST_F(TransactionTest, HostPausedGuestStaysPaused) {
  vm_.SetHostPaused(true);
  const TransactionReport r = Apply();
  EXPECT_EQ(r.Count(Kind::kApplied), 3);
  EXPECT_EQ(r.resume_status.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(vm_.running());
}

TEST_F(TransactionTest, StopFailureWritesNothing) {
  vm_.FailNth(FakeGuestVm::Op::kStop, 1, absl::UnavailableError("gdbstub gone"));
  absl::StatusOr<TransactionReport> r = ApplySites(vm_, recorder_, absl::MakeSpan(sites_));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(vm_.write_log().empty());
  EXPECT_TRUE(recorder_.records.empty());
}

TEST_F(TransactionTest, BytesChangedAreSkipped) {
  Put(kSiteB, {0x89, 0x0D, 0x80, 0x00, 0xFE, 0xFE});
  const TransactionReport r = Apply();
  EXPECT_EQ(r.outcomes[1].kind, Kind::kSkipped);
  EXPECT_THAT(r.outcomes[1].reason, HasSubstr("bytes changed since classification"));
  EXPECT_EQ(r.Count(Kind::kApplied), 2);
  EXPECT_FALSE(recorder_.Latest(2).has_value());
}

TEST_F(TransactionTest, BytesChangedBehindTheBackWhileThePendingRecordsAreMade) {
  // Site C's bytes change after the transaction read them and before it writes: while it makes
  // the pass's pending records (the journal's fsync). They are checked again before the writes.
  recorder_.on_record = [this] {
    ASSERT_TRUE(vm_.BackdoorWriteVirtual(0, kSiteC, std::vector<uint8_t>{0xCC}).ok());
  };
  const TransactionReport r = Apply();
  EXPECT_EQ(r.outcomes[2].kind, Kind::kSkipped);
  EXPECT_EQ(r.Count(Kind::kApplied), 2);
  EXPECT_EQ(sites_[2].state, SiteState::kCandidate);
}

TEST_F(TransactionTest, VcpuStrictlyInsideASiteBlocksOnlyThatSite) {
  vm_.SetEip(1, kSiteB + 1);
  vm_.SetEip(0, kSiteA);  // at the first byte: nothing executed yet, safe
  const TransactionReport r = Apply();
  EXPECT_EQ(r.outcomes[0].kind, Kind::kApplied);
  EXPECT_EQ(r.outcomes[1].kind, Kind::kSkipped);
  EXPECT_THAT(r.outcomes[1].reason, HasSubstr("vCPU 1 is inside the site"));
  EXPECT_EQ(Bytes(sites_[1]), sites_[1].original);
  EXPECT_EQ(r.outcomes[2].kind, Kind::kApplied);
}

TEST_F(TransactionTest, MalformedAndOverlappingSitesAreSkipped) {
  sites_.push_back(MakeSite(4, kSiteA + 2, {0x00, 0xFE, 0xFF, 0x90, 0x90}, {1, 2, 3, 4, 5}));
  sites_.push_back(MakeSite(5, 0x80104000, {0xA1}, {0xE8, 0x00}));
  const TransactionReport r = Apply();
  EXPECT_THAT(r.outcomes[3].reason, HasSubstr("overlaps site 1"));
  EXPECT_THAT(r.outcomes[4].reason, HasSubstr("differ in length"));
  EXPECT_EQ(r.Count(Kind::kApplied), 3);
}

// A Windows HAL has a few hundred TPR sites, rolled back in one batch. The overlap check
// once asked each earlier site's check again, 2^n in the batch's size with the guest
// stopped: 300 sites never finished.
TEST_F(TransactionTest, AFewHundredSitesInOneBatchAreAllApplied) {
  sites_.clear();
  for (uint32_t i = 0; i < 300; ++i) {
    const uint32_t address = 0x80110000 + i * 16;
    sites_.push_back(
        MakeSite(i + 1, address, {0xA1, 0x80, 0x00, 0xFE, 0xFF}, {0xE8, 0x10, 0x20, 0x30, 0x00}));
    Put(address, sites_.back().original);
  }
  // One overlapping site at the end is still found.
  sites_.push_back(MakeSite(301, 0x80110002, {0x00, 0xFE, 0xFF}, {1, 2, 3}));
  const TransactionReport r = Apply();
  EXPECT_EQ(r.Count(Kind::kApplied), 300);
  EXPECT_THAT(r.outcomes[300].reason, HasSubstr("overlaps site 1"));
}

TEST_F(TransactionTest, RollbackRefusesChangedBytesUnlessForced) {
  Apply();
  Put(kSiteA + 1, {0x99});
  TransactionReport r = Rollback();
  EXPECT_EQ(r.outcomes[0].kind, Kind::kSkipped);
  EXPECT_THAT(r.outcomes[0].reason, HasSubstr("bytes changed since patching"));
  EXPECT_EQ(r.Count(Kind::kRolledBack), 2);
  r = Rollback({.force = true});
  EXPECT_EQ(r.outcomes[0].kind, Kind::kRolledBack);
  EXPECT_EQ(Bytes(sites_[0]), sites_[0].original);
}

TEST_F(TransactionTest, RollbackWaitsForVcpusInHandlersWithBoundedRetries) {
  Apply();
  constexpr uint32_t kHandlersStart = 0x800C0000, kHandlersEnd = 0x800C1000;
  vm_.SetEip(0, kHandlersStart + 0x10);
  RollbackOptions options{.handler_code_start = kHandlersStart, .handler_code_end = kHandlersEnd};
  TransactionReport r = Rollback(options);  // no retries: refused
  EXPECT_EQ(r.Count(Kind::kSkipped), 3);
  EXPECT_THAT(r.outcomes[0].reason, HasSubstr("inside the handler code"));
  // From now on the vCPU leaves the handlers on the third stop.
  int stops = 0;
  vm_.OnStop([&stops](FakeGuestVm& vm) {
    if (++stops == 3) vm.SetEip(0, 0x80200000);
  });
  options.max_retries = 3;
  r = Rollback(options);
  EXPECT_EQ(r.Count(Kind::kRolledBack), 3);
  EXPECT_EQ(r.stop_count, 3);  // the first stop and two retries
  EXPECT_TRUE(vm_.running());
  EXPECT_EQ(vm_.stop_calls(), vm_.resume_calls());
}

TEST_F(TransactionTest, RollbackRetriesAreBounded) {
  Apply();
  vm_.SetEip(1, kSiteC + 5);  // never moves
  const TransactionReport r = Rollback({.max_retries = 2});
  EXPECT_EQ(r.outcomes[2].kind, Kind::kSkipped);
  EXPECT_EQ(r.stop_count, 3);
  EXPECT_EQ(r.Count(Kind::kRolledBack), 2);
  EXPECT_EQ(Bytes(sites_[2]), sites_[2].patched);
  EXPECT_EQ(sites_[2].state, SiteState::kApplied);
}

// Stopped again at once, a vCPU may not have run at all: with a clock, the retries let the
// guest run a little longer each time (1 ms doubling, capped at 20 ms).
TEST_F(TransactionTest, RollbackRetriesLetTheGuestRunLongerEachTime) {
  Apply();
  vm_.SetEip(1, kSiteC + 5);  // never moves
  testing::FakeClock clock;
  const absl::Time start = clock.Now();
  const TransactionReport r = Rollback({.max_retries = 7, .clock = &clock});
  EXPECT_EQ(r.outcomes[2].kind, Kind::kSkipped);
  EXPECT_EQ(clock.Now() - start, absl::Milliseconds(1 + 2 + 4 + 8 + 16 + 20 + 20));
}

TEST_F(TransactionTest, CallerHeldRollbackDoesNotRetry) {
  Apply();
  vm_.SetEip(1, kSiteC + 5);
  ASSERT_TRUE(vm_.Stop().ok());
  const TransactionReport r = Rollback({.stop = GuestStop::kCallerHoldsStopped, .max_retries = 5});
  EXPECT_EQ(r.outcomes[2].kind, Kind::kSkipped);
  EXPECT_EQ(vm_.resume_calls(), 1);  // only Apply's
}

TEST_F(TransactionTest, TornWriteIsRestored) {
  vm_.FailNthWrite(2, /*partial_bytes=*/2);  // site B tears after 2 bytes
  const TransactionReport r = Apply();
  EXPECT_EQ(r.outcomes[1].kind, Kind::kFailed);
  EXPECT_THAT(r.outcomes[1].reason, HasSubstr("torn bytes"));
  EXPECT_EQ(Bytes(sites_[1]), sites_[1].original);
  EXPECT_EQ(recorder_.Latest(2), SiteState::kCandidate);
  EXPECT_EQ(r.outcomes[2].kind, Kind::kApplied);
  ExpectWholeAndTrue();
}

// The pass's writes go in one exchange; when it breaks, nothing says which landed: each site is
// read again and ends whole, applied if its write landed, as it was otherwise.
TEST_F(TransactionTest, BrokenExchangeOfThePassesWritesLeavesEachSiteWholeAndTrue) {
  vm_.BreakNthWriteMany(1, /*landed=*/1);
  const TransactionReport r = Apply();
  EXPECT_EQ(r.outcomes[0].kind, Kind::kApplied);
  for (int i : {1, 2}) {
    EXPECT_EQ(r.outcomes[i].kind, Kind::kFailed) << i;
    EXPECT_THAT(r.outcomes[i].reason, HasSubstr("write failed")) << i;
    EXPECT_THAT(r.outcomes[i].reason, HasSubstr("bytes unchanged")) << i;
    EXPECT_EQ(Bytes(sites_[i]), sites_[i].original) << i;
  }
  ExpectWholeAndTrue();
}

TEST_F(TransactionTest, TornWriteThatCannotBeRestoredIsReportedAndLeftPending) {
  vm_.FailNthWrite(1, /*partial_bytes=*/2);
  // The restore fails too: it comes after the pass's three site writes, which go together.
  vm_.FailNthWrite(4, /*partial_bytes=*/1);
  const TransactionReport r = Apply();
  EXPECT_EQ(r.outcomes[0].kind, Kind::kTorn);
  EXPECT_EQ(sites_[0].state, SiteState::kPending);
  EXPECT_EQ(recorder_.Latest(1), SiteState::kPending);
}

TEST_F(TransactionTest, WriteThatFailedButLandedIsApplied) {
  // The write reports an error but every byte arrived (a lost reply).
  vm_.FailNthWrite(1, /*partial_bytes=*/5);
  const TransactionReport r = Apply();
  EXPECT_EQ(r.outcomes[0].kind, Kind::kApplied);
  ExpectWholeAndTrue();
}

TEST_F(TransactionTest, ReadBackShowingOtherBytesIsRestored) {
  // Something overwrites part of site A right after our write: the read-back disagrees, the
  // bytes are torn, and the transaction puts the original back.
  vm_.AfterNthWrite(1, [](FakeGuestVm& vm) {
    ASSERT_TRUE(vm.BackdoorWriteVirtual(0, kSiteA + 1, std::vector<uint8_t>{0x77}).ok());
  });
  const TransactionReport r = Apply();
  EXPECT_EQ(r.outcomes[0].kind, Kind::kFailed);
  EXPECT_THAT(r.outcomes[0].reason, HasSubstr("read back"));
  EXPECT_EQ(Bytes(sites_[0]), sites_[0].original);
  EXPECT_EQ(r.Count(Kind::kApplied), 2);
  ExpectWholeAndTrue();
}

TEST_F(TransactionTest, RecorderFailureWritesNothingOrIsRecordedAgain) {
  for (int n = 1; n <= 6; ++n) {
    SCOPED_TRACE(::testing::Message() << "recorder fails call " << n);
    SetUpFresh();
    recorder_.FailNth(n);
    const TransactionReport r = Apply();
    if (n <= 3) {
      // Calls 1-3 are the pending records: nothing is written, and each site's own state is
      // recorded again over a pending record that may have landed.
      EXPECT_TRUE(r.aborted);
      EXPECT_TRUE(vm_.write_log().empty());
      for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(r.outcomes[i].kind, Kind::kFailed);
        EXPECT_THAT(r.outcomes[i].reason, HasSubstr("recording pending failed, nothing written"));
      }
    } else {
      // Calls 4-6 are the outcomes, after every write: the failed batch is recorded again site
      // by site (the fake fails one call only), so every record ends true.
      EXPECT_EQ(vm_.write_log().size(), 3u);
      EXPECT_EQ(r.Count(Kind::kApplied), 3);
    }
    ExpectWholeAndTrue();
    EXPECT_TRUE(vm_.running());  // resumed even after an abort
  }
}

TEST_F(TransactionTest, FailNthReadOrWriteAtEveryStepKeepsSitesWhole) {
  for (bool rollback : {false, true}) {
    for (int n = 1; n <= 12; ++n) {
      for (bool fail_write : {false, true}) {
        SCOPED_TRACE(::testing::Message() << (rollback ? "rollback" : "apply") << " fail "
                                          << (fail_write ? "write " : "read ") << n);
        SetUpFresh();
        if (rollback) Apply();
        vm_.ClearWriteLog();
        if (fail_write) {
          vm_.FailNthWrite(n, /*partial_bytes=*/static_cast<size_t>(n % 4));
        } else {
          vm_.FailNthRead(n);
        }
        const TransactionReport r = rollback ? Rollback() : Apply();
        EXPECT_EQ(r.Count(Kind::kTorn), 0);
        ExpectWholeAndTrue();
        vm_.ClearFaults();
        // A second run without faults completes the job.
        const TransactionReport again = rollback ? Rollback() : Apply();
        for (const Site& s : sites_) {
          EXPECT_EQ(Bytes(s), rollback ? s.original : s.patched);
        }
        EXPECT_EQ(again.Count(Kind::kFailed) + again.Count(Kind::kSkipped), 0);
        ExpectWholeAndTrue();
      }
    }
  }
}

TEST_F(TransactionTest, RegisterReadFailureSkipsEverySite) {
  vm_.FailNth(FakeGuestVm::Op::kReadRegisters, 2, absl::UnavailableError("lost"));
  const TransactionReport r = Apply();
  EXPECT_EQ(r.Count(Kind::kSkipped), 3);
  EXPECT_THAT(r.outcomes[0].reason, HasSubstr("cannot check where the vCPUs are"));
  EXPECT_TRUE(vm_.write_log().empty());
}

}  // namespace
}  // namespace tprd::engine

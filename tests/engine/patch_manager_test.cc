// PatchManager against a FakeGuestVm laid out like 32-bit Windows: enable, patch on first
// execution, learning window, cr8 fix-ups, rollback, detach, refusals.
#include "daemon/engine/patch_manager.h"

#include <cstring>
#include <functional>
#include <set>

#include "daemon/engine/guest_site_table.h"
#include "daemon/engine/page_walker.h"
#include "daemon/engine/placement.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_guest_vm.h"
#include "tests/fakes/page_table_builder.h"
#include "tests/fakes/recording_journal.h"

namespace tprd::engine {
namespace {

using ::testing::HasSubstr;
using ::tprd::testing::FakeClock;
using ::tprd::testing::FakeGuestVm;

constexpr uint32_t kCode = 0x80100000;           // physical 0x100000
constexpr uint32_t kReadEax = kCode;             // A1 moffs: mov eax,[tpr]
constexpr uint32_t kWriteEcx = kCode + 0x10;     // 89 0D: mov [tpr],ecx
constexpr uint32_t kWriteImm = kCode + 0x20;     // C7 05: mov dword [tpr],0x41
constexpr uint32_t kPrefixed = kCode + 0x30;     // 3E A1: not patchable
constexpr uint32_t kRegRelative = kCode + 0x40;  // 89 81 disp32: mov [ecx+tpr],eax
constexpr uint32_t kCmpImm = kCode + 0x50;       // 81 3D: cmp dword [tpr],0x51
constexpr uint32_t kAddEax = kCode + 0x60;       // 03 05: add eax,[tpr]
constexpr uint32_t kReadViaEcx = kCode + 0x70;   // 8B 81 80 00 00 00: mov eax,[ecx+0x80]
constexpr uint32_t kEsRead = kCode + 0x80;       // 26 8B 15: es: mov edx,[tpr]
constexpr uint32_t kDecoy = 0x80200000;          // data that looks like A1 moffs

using ::tprd::testing::RecordingJournal;

class PatchManagerTest : public ::testing::Test {
 protected:
  PatchManagerTest() : vm_(Options()), manager_(vm_, journal_, clock_) {}

  static FakeGuestVm::Options Options() {
    testing::XpLikeOptions xp;
    xp.vcpu_count = 2;
    return testing::XpLikeVmOptions(xp);
  }

  void SetUp() override {
    testing::XpLikeOptions xp;
    xp.vcpu_count = 2;
    ASSERT_TRUE(testing::BuildXpLikeLayout(vm_, xp).ok());
    for (int v = 0; v < 2; ++v) {
      const uint32_t kpcr = 0x80040000 + v * 0x1000;
      vm_.BackdoorWrite32(kpcr - 0x80000000 + 0x1C, kpcr);
      const uint8_t number = static_cast<uint8_t>(v);
      ASSERT_TRUE(vm_.BackdoorWritePhysical(kpcr - 0x80000000 + 0x51, {&number, 1}).ok());
      vm_.Registers(v).fs_base = kpcr;
      vm_.Registers(v).cs = 8;
      vm_.Registers(v).eip = kCode + 0x800;
    }
    vm_.SetTpr(0, 0x20);
    vm_.SetTpr(1, 0x41);
    // tprd steps vCPUs to consume QEMU's pending watchpoint hits; here a step moves nothing
    // (tests that look at steps script them).
    vm_.SetStepLength(0);
    Put(kReadEax, {0xA1, 0x80, 0x00, 0xFE, 0xFF});
    Put(kWriteEcx, {0x89, 0x0D, 0x80, 0x00, 0xFE, 0xFF});
    Put(kWriteImm, {0xC7, 0x05, 0x80, 0x00, 0xFE, 0xFF, 0x41, 0x00, 0x00, 0x00});
    Put(kPrefixed, {0x3E, 0xA1, 0x80, 0x00, 0xFE, 0xFF});
    Put(kRegRelative, {0x89, 0x81, 0x80, 0x00, 0xFE, 0xFF});
    Put(kCmpImm, {0x81, 0x3D, 0x80, 0x00, 0xFE, 0xFF, 0x51, 0x00, 0x00, 0x00});
    Put(kAddEax, {0x03, 0x05, 0x80, 0x00, 0xFE, 0xFF});
    Put(kReadViaEcx, {0x8B, 0x81, 0x80, 0x00, 0x00, 0x00});
    Put(kEsRead, {0x26, 0x8B, 0x15, 0x80, 0x00, 0xFE, 0xFF});
    Put(kDecoy, {0xA1, 0x80, 0x00, 0xFE, 0xFF});
  }

  void Put(uint32_t va, std::vector<uint8_t> bytes) {
    ASSERT_TRUE(vm_.BackdoorWritePhysical(va - 0x80000000, bytes).ok());
  }
  std::vector<uint8_t> Bytes(uint32_t va, size_t n) {
    return vm_.BackdoorPhysicalBytes(va - 0x80000000, n);
  }
  std::optional<ManagedSite> SiteAt(uint32_t address) {
    for (const ManagedSite& s : manager_.Sites()) {
      if (s.site.address == address) return s;
    }
    return std::nullopt;
  }
  // Enables cr8 on a cr8legacy CPU, with nothing seen in the learning window.
  void EnableCr8() {
    vm_.SetFeatures({.cr8legacy = true, .qemu_vapic_active = false});
    EnableRequest request;
    request.strategy = Strategy::kCr8;
    request.wake_halted_cpus_alone = true;
    absl::StatusOr<EnableReport> report = manager_.Enable(request);
    ASSERT_TRUE(report.ok()) << report.status();
  }
  // The learning window refuses `strategy`: nothing is written, no trap is left, the guest runs.
  void ExpectEnableRefused(Strategy strategy, const std::string& why) {
    vm_.ClearWriteLog();
    EnableRequest request;
    request.strategy = strategy;
    absl::StatusOr<EnableReport> report = manager_.Enable(request);
    ASSERT_FALSE(report.ok());
    EXPECT_TRUE(absl::IsFailedPrecondition(report.status())) << report.status();
    EXPECT_THAT(std::string(report.status().message()), HasSubstr(why));
    EXPECT_TRUE(vm_.write_log().empty());
    EXPECT_TRUE(vm_.watchpoints().empty());
    EXPECT_TRUE(vm_.running());
  }
  // The blob as the guest holds it now (stops and resumes the fake for the reads).
  std::optional<ParsedBlob> GuestBlob() {
    const bool was_running = vm_.running();
    EXPECT_TRUE(vm_.Stop().ok());
    std::optional<ParsedBlob> found;
    for (uint32_t pa = kLegacyWindowFirst; pa < kLegacyWindowEnd && !found; pa += 4096) {
      absl::StatusOr<ParsedBlob> parsed = ReadGuestBlob(vm_, 0, kLowMemoryVirtualBase + pa);
      if (parsed.ok()) found = *std::move(parsed);
    }
    if (was_running) {
      EXPECT_TRUE(vm_.Resume().ok());
    }
    return found;
  }
  // `n` learning-window hits of an unpatchable writer, then an mmio enable.
  absl::StatusOr<EnableReport> EnableMmioAfterWriterHits(uint32_t after_writer, int n) {
    for (int i = 0; i < n; ++i) QueueWatchpoint(0, after_writer);
    EnableRequest request;
    request.strategy = Strategy::kMmio;
    return manager_.Enable(request);
  }
  // The vCPUs stepped since the first `since` steps.
  std::vector<int> StepsSince(size_t since) {
    const std::vector<int>& all = vm_.step_calls();
    return std::vector<int>(all.begin() + std::min(since, all.size()), all.end());
  }
  void QueueBreakpoint(int vcpu, uint32_t pc) {
    vm_.SetEip(vcpu, pc);
    vm_.QueueStopEvent({StopEvent::Kind::kBreakpoint, vcpu, pc, 0, WatchKind::kAccess});
  }
  void QueueWatchpoint(int vcpu, uint32_t pc_after) {
    vm_.SetEip(vcpu, pc_after);
    vm_.QueueStopEvent(
        {StopEvent::Kind::kWatchpoint, vcpu, pc_after, kDefaultTprVa, WatchKind::kAccess});
  }

  // The physical address of a variable in the blob's data block (for backdoor access to the
  // fake's memory while it runs).
  static uint64_t DataPhysical(const ParsedBlob& blob, uint32_t va) {
    const uint64_t base = blob.placement.data_apart() ? blob.placement.data_pa
                                                      : blob.placement.pa + kBlobDataBlockOffset;
    return base + (va - blob.addresses.data_block);
  }
  // Steps of the fake run the blob's tpr_poke (`mov [tpr], eax`: the vCPU's TPR becomes eax) and
  // record the vCPU and its EFLAGS in pokes_; any other step goes to `other`, or moves eip 2.
  struct Poke {
    int vcpu;
    uint32_t eflags;
  };
  void EmulatePoke(const ParsedBlob& blob,
                   std::function<void(FakeGuestVm&, VcpuRegisters&)> other = nullptr) {
    vm_.OnStep([this, poke = blob.addresses.tpr_poke, other](FakeGuestVm& vm, int vcpu) {
      VcpuRegisters& r = vm.Registers(vcpu);
      if (r.eip == poke) {
        pokes_.push_back({vcpu, r.eflags});
        vm.SetTpr(vcpu, static_cast<uint8_t>(r.reg(Gpr::kEax)));
        r.eip += 5;
      } else if (other) {
        other(vm, r);
      } else {
        r.eip += 2;
      }
      return true;
    });
  }
  // The blob's strategy word as the guest holds it now, read behind the fake's back (it may run).
  Strategy WordNow(const ParsedBlob& blob) {
    uint8_t word = 0xFF;
    EXPECT_TRUE(
        vm_.BackdoorReadPhysical(DataPhysical(blob, blob.addresses.strategy_word), {&word, 1})
            .ok());
    return static_cast<Strategy>(word);
  }
  // The next stop is tprd's own interrupt, with vCPU 0 at code that is no TPR access: what the
  // other vCPUs stand at is then the stop's business.
  void StopAtVcpu0Elsewhere() {
    vm_.SetEip(0, kCode + 0x800);
    vm_.QueueStopEvent({StopEvent::Kind::kInterrupted, 0, kCode + 0x800, 0, WatchKind::kAccess});
  }
  // The vCPU is halted: its eip stands just after a hlt.
  void Halt(int vcpu) {
    Put(kCode + 0x900, {0xF4});
    vm_.SetEip(vcpu, kCode + 0x901);
  }
  // Where the blob's image starts (its magic "TPRB" at a page start of the legacy window), as a
  // guest virtual address; 0 when there is none.
  uint32_t BlobVa() const {
    for (uint32_t pa = kLegacyWindowFirst; pa < kLegacyWindowEnd; pa += 4096) {
      if (vm_.BackdoorPhysicalBytes(pa, 4) == std::vector<uint8_t>{0x54, 0x50, 0x52, 0x42}) {
        return kLowMemoryVirtualBase + pa;
      }
    }
    return 0;
  }
  std::vector<int> PokedVcpus() const {
    std::vector<int> out;
    for (const Poke& p : pokes_) out.push_back(p.vcpu);
    return out;
  }

  FakeGuestVm vm_;
  RecordingJournal journal_;
  FakeClock clock_;
  std::vector<Poke> pokes_;
  PatchManager manager_;
};

TEST_F(PatchManagerTest, EnableArmsEveryPatchableCandidateAndPatchesNothingUnproven) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  absl::StatusOr<EnableReport> report = manager_.Enable(request);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->applied_at_enable, 0u);
  EXPECT_TRUE(vm_.running());
  EXPECT_THAT(vm_.breakpoints(), ::testing::IsSupersetOf({kReadEax, kWriteEcx, kWriteImm, kDecoy}));
  EXPECT_FALSE(vm_.breakpoints().count(kPrefixed)) << "prefixed access is not patchable";
  EXPECT_FALSE(vm_.breakpoints().count(kRegRelative));
  EXPECT_EQ(Bytes(kReadEax, 5), (std::vector<uint8_t>{0xA1, 0x80, 0x00, 0xFE, 0xFF}));
  EXPECT_EQ(
      vm_.watchpoints(),
      (std::set<std::tuple<uint32_t, uint32_t, WatchKind>>{{kDefaultTprVa, 4, WatchKind::kWrite}}))
      << "mmio keeps a write watchpoint: it sees every writer tprd did not patch";
  EXPECT_EQ(manager_.Status().strategy, Strategy::kMmio);
}

// The scan reads every kernel code page: with a live reader it runs while the guest does, and
// the guest is stopped again for the patching (issue 15: the enable's stop without the scan).
TEST_F(PatchManagerTest, EnableScansWhileTheGuestRunsAndPatchesInALaterStop) {
  QueueWatchpoint(0, kReadEax + 5);  // the learning window proves one site
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  absl::StatusOr<EnableReport> report = manager_.Enable(request);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_GT(vm_.live_reads_while_running(), 100) << "the scan ran in a stop";
  // The blob's placement uses the scan's memory map (an HMP command of milliseconds).
  EXPECT_EQ(vm_.memory_map_reads_while_stopped(), 0) << "the memory map was read in a stop";
  EXPECT_EQ(report->applied_at_enable, 1u);
  EXPECT_EQ(SiteAt(kReadEax)->site.state, SiteState::kApplied);
  EXPECT_TRUE(vm_.running());
}

TEST_F(PatchManagerTest, EnableWithoutALiveReaderScansInItsStop) {
  vm_.SetLiveReadsAvailable(false);
  QueueWatchpoint(0, kReadEax + 5);
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  absl::StatusOr<EnableReport> report = manager_.Enable(request);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(vm_.live_reads_while_running(), 0);
  EXPECT_EQ(SiteAt(kReadEax)->site.state, SiteState::kApplied);
  EXPECT_THAT(vm_.breakpoints(), ::testing::IsSupersetOf({kWriteEcx, kWriteImm}));
}

TEST_F(PatchManagerTest, BreakpointHitPatchesTheSiteBeforeItRuns) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  QueueBreakpoint(0, kWriteEcx);
  absl::StatusOr<std::vector<ManagerEvent>> events = manager_.Poll(absl::Milliseconds(10));
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].kind, ManagerEvent::Kind::kSitePatched);
  std::optional<ManagedSite> site = SiteAt(kWriteEcx);
  ASSERT_TRUE(site);
  EXPECT_EQ(site->site.state, SiteState::kApplied);
  EXPECT_EQ(Bytes(kWriteEcx, 6), site->site.patched);
  EXPECT_EQ(site->site.patched[0], 0x51) << "push ecx";
  EXPECT_EQ(site->site.patched[1], 0xE8) << "call set_tpr";
  EXPECT_FALSE(vm_.breakpoints().count(kWriteEcx));
  EXPECT_TRUE(vm_.running());
  // The decoy never executes, so it is never patched.
  EXPECT_EQ(SiteAt(kDecoy)->site.state, SiteState::kCandidate);
  EXPECT_EQ(Bytes(kDecoy, 5), (std::vector<uint8_t>{0xA1, 0x80, 0x00, 0xFE, 0xFF}));
  // The journal heard pending then applied.
  ASSERT_GE(journal_.records.size(), 2u);
  EXPECT_EQ(journal_.records.front().state, SiteState::kPending);
  EXPECT_EQ(journal_.records.back().state, SiteState::kApplied);
}

TEST_F(PatchManagerTest, TwoVcpusAtTheSameSiteRecordItAppliedOnce) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  vm_.SetEip(1, kReadEax);
  QueueBreakpoint(0, kReadEax);
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  EXPECT_EQ(SiteAt(kReadEax)->site.state, SiteState::kApplied);
  absl::StatusOr<RollbackReport> report = manager_.Rollback({}, false);
  ASSERT_TRUE(report.ok());
  EXPECT_EQ(Bytes(kReadEax, 5), (std::vector<uint8_t>{0xA1, 0x80, 0x00, 0xFE, 0xFF}));
}

TEST_F(PatchManagerTest, LearningWindowProvesHotSitesPatchedInTheEnableStop) {
  QueueWatchpoint(0, kReadEax + 5);
  QueueWatchpoint(1, kWriteImm + 10);
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  absl::StatusOr<EnableReport> report = manager_.Enable(request);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->learning_hits, 2u);
  EXPECT_EQ(report->applied_at_enable, 2u);
  EXPECT_EQ(SiteAt(kReadEax)->site.state, SiteState::kApplied);
  EXPECT_EQ(SiteAt(kWriteImm)->site.state, SiteState::kApplied);
  EXPECT_FALSE(vm_.breakpoints().count(kReadEax));
  EXPECT_TRUE(vm_.breakpoints().count(kWriteEcx));
}

// The journal's records of the enable's stop are written in it and made durable after the guest
// runs again (issue 15: no fsync inside the stop): the pending record still precedes the write.
TEST_F(PatchManagerTest, TheEnablesRecordsAreMadeDurableAfterTheGuestRunsAgain) {
  QueueWatchpoint(0, kReadEax + 5);
  std::vector<bool> running_at_sync;
  journal_.on_sync = [&] { running_at_sync.push_back(vm_.running()); };
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  ASSERT_EQ(SiteAt(kReadEax)->site.state, SiteState::kApplied);
  std::vector<SiteState> deferred_states;
  for (size_t i = 0; i < journal_.records.size(); ++i) {
    if (journal_.records[i].address == kReadEax && journal_.deferred[i]) {
      deferred_states.push_back(journal_.records[i].state);
    }
  }
  EXPECT_EQ(deferred_states, (std::vector<SiteState>{SiteState::kPending, SiteState::kApplied}));
  ASSERT_FALSE(running_at_sync.empty()) << "the deferred records were never made durable";
  EXPECT_TRUE(running_at_sync.back()) << "synced before the guest ran again";
  EXPECT_TRUE(manager_.Status().last_error.empty()) << manager_.Status().last_error;
}

// The learning window's run time is the guest's own (its ACPI PM timer, which runs only while
// the guest runs) where the machine has one, across the timer's wrap; without one, tprd's.
TEST_F(PatchManagerTest, LearningWindowRunTimeIsTheGuestClocksWhereThereIsOne) {
  // Three resumes (the window's start and one after each hit) of 1790 ticks (0.5 ms) each,
  // starting just before the 24-bit timer wraps, and the last reading right after the enable's
  // own resume (not in its stop), which the fake also runs for 1790 ticks: on a real machine
  // that last run is the reading's round trip, a few milliseconds of a window of about 0.5 s.
  vm_.SetAcpiPmTimer(0xFFFF00, 1790);
  QueueWatchpoint(0, kReadEax + 5);
  QueueWatchpoint(1, kWriteImm + 10);
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  absl::StatusOr<EnableReport> report = manager_.Enable(request);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->learning_hits, 2u);
  const ManagerStatus status = manager_.Status();
  EXPECT_TRUE(status.learning_run_guest_clock);
  EXPECT_NEAR(absl::ToDoubleMicroseconds(status.learning_run), 4 * 1790 * 1e6 / 3579545, 1);
  // The window's start only: in the window the clock is read once a second, here never.
  EXPECT_EQ(vm_.pm_timer_reads_while_stopped(), 1) << "the last reading was made in the stop";
}

TEST_F(PatchManagerTest, LearningWindowRunTimeIsTprdsWithoutAGuestClock) {
  QueueWatchpoint(0, kReadEax + 5);
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  EXPECT_FALSE(manager_.Status().learning_run_guest_clock);
}

// An unpatchable writer that runs often would stop the guest at every run under mmio's write
// watchpoint: refused, and nothing is written.
TEST_F(PatchManagerTest, MmioRefusedWhenAnUnpatchableWriterRunsOftenAndNothingIsWritten) {
  for (int i = 0; i < EnableRequest{}.learning_max_hits / 8; ++i) {
    QueueWatchpoint(0, kRegRelative + 6);
  }
  ExpectEnableRefused(Strategy::kMmio, "mmio does not pay");
}

// A writer whose encoding does not name the TPR (the HAL-shaped guest's mov [ebx+0x80], eax with
// ebx at the APIC page) is found by its operand's address: often, it refuses mmio too.
TEST_F(PatchManagerTest, MmioRefusedWhenARegisterRelativeWriterRunsOftenInTheLearningWindow) {
  constexpr uint32_t kWriteViaEbx = kCode + 0x90;  // 89 83 80 00 00 00: mov [ebx+0x80],eax
  Put(kWriteViaEbx, {0x89, 0x83, 0x80, 0x00, 0x00, 0x00});
  vm_.Registers(0).reg(Gpr::kEbx) = 0xFFFE0000;
  for (int i = 0; i < EnableRequest{}.learning_max_hits / 8; ++i) {
    QueueWatchpoint(0, kWriteViaEbx + 6);
  }
  ExpectEnableRefused(Strategy::kMmio, "mmio does not pay");
}

// The handlers store the TPR through a second mapping of the APIC page tprd makes in a free entry
// of the TPR's own page table, so the write watchpoint on the TPR sees only unpatched writers.
TEST_F(PatchManagerTest, MmioMapsTheApicPageASecondTimeForTheHandlers) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  std::optional<ParsedBlob> blob = GuestBlob();
  ASSERT_TRUE(blob);
  EXPECT_NE(blob->tpr_write_va, kDefaultTprVa);
  EXPECT_EQ(blob->tpr_write_va & 0xFFF, kDefaultTprVa & 0xFFF);
  ASSERT_TRUE(vm_.Stop().ok());
  GuestVmPhysicalReader memory(vm_);
  const PagingRegisters paging = PagingRegisters::From(vm_.Registers(0));
  absl::StatusOr<Translation> tpr = TranslateVirtual(memory, paging, kDefaultTprVa);
  absl::StatusOr<Translation> alias = TranslateVirtual(memory, paging, blob->tpr_write_va);
  ASSERT_TRUE(tpr.ok() && alias.ok());
  ASSERT_TRUE(alias->present());
  EXPECT_EQ(alias->physical_address, tpr->physical_address);
  EXPECT_TRUE(alias->writable);
  ASSERT_TRUE(vm_.Resume().ok());

  // Rolled back, detached and enabled again: the same alias, no second one.
  ASSERT_TRUE(manager_.Rollback({}, false).ok());
  ASSERT_TRUE(manager_.Enable(request).ok());
  EXPECT_EQ(GuestBlob()->tpr_write_va, blob->tpr_write_va);
}

// A rare unpatchable writer (seen once in the learning window, or never) no longer refuses mmio:
// the write watchpoint stops the guest right after it, and every CPU's shadow is set from its
// real TPR before any CPU runs again, also a CPU the stop did not name.
TEST_F(PatchManagerTest, MmioResyncsTheShadowsAfterAnUnpatchableWriterRuns) {
  constexpr uint32_t kWriteViaEbx = kCode + 0x90;  // 89 83 80 00 00 00: mov [ebx+0x80],eax
  Put(kWriteViaEbx, {0x89, 0x83, 0x80, 0x00, 0x00, 0x00});
  vm_.Registers(0).reg(Gpr::kEbx) = 0xFFFE0000;
  absl::StatusOr<EnableReport> report = EnableMmioAfterWriterHits(kWriteViaEbx + 6, 1);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(GuestBlob()->cpus[0].shadow_tpr, 0x20);

  vm_.SetTpr(0, 0x7B);  // the register-relative writer ran on vCPU 0
  vm_.SetTpr(1, 0x62);  // and one on vCPU 1 hit at the same moment, unreported
  QueueWatchpoint(0, kWriteViaEbx + 6);
  absl::StatusOr<std::vector<ManagerEvent>> events = manager_.Poll(absl::Milliseconds(10));
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_TRUE(events->empty());
  std::optional<ParsedBlob> blob = GuestBlob();
  ASSERT_TRUE(blob);
  EXPECT_EQ(blob->cpus[0].shadow_tpr, 0x7B);
  EXPECT_EQ(blob->cpus[1].shadow_tpr, 0x62);
  EXPECT_EQ(manager_.Status().strategy, Strategy::kMmio);
  EXPECT_EQ(manager_.Status().unpatched_write_stops, 1u);
  EXPECT_EQ(manager_.Status().shadow_resyncs, 2u);
  EXPECT_TRUE(manager_.Status().last_error.empty()) << manager_.Status().last_error;
  EXPECT_TRUE(vm_.running());

  // A stop tprd makes itself (here: the rollback's) resyncs too, before the guest runs again.
  vm_.SetTpr(1, 0x31);
  ASSERT_TRUE(manager_.Rollback({}, false).ok());
  EXPECT_EQ(GuestBlob()->cpus[1].shadow_tpr, 0x31);
}

// Every run of an unpatchable writer stops the guest: past the per-second limit mmio is not
// worth it and the domain goes to exact (correct either way).
TEST_F(PatchManagerTest, MmioGoesExactWhenUnpatchableWritesStopTheGuestTooOften) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  request.unpatched_write_stops_per_second_limit = 3;
  ASSERT_TRUE(manager_.Enable(request).ok());
  for (int i = 0; i < 3; ++i) {
    QueueWatchpoint(0, kRegRelative + 6);
    ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
    ASSERT_EQ(manager_.Status().strategy, Strategy::kMmio);
  }
  QueueWatchpoint(0, kRegRelative + 6);
  absl::StatusOr<std::vector<ManagerEvent>> events = manager_.Poll(absl::Milliseconds(10));
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].kind, ManagerEvent::Kind::kStrategyChanged);
  EXPECT_THAT((*events)[0].message, HasSubstr("times a second"));
  EXPECT_EQ(manager_.Status().strategy, Strategy::kExact);
  EXPECT_TRUE(vm_.watchpoints().empty());
}

// Under TCG a breakpoint slows every instruction on its page, so unproven candidates keep one
// only for the proving window; after it mmio keeps none: its write watchpoint sees a late
// writer (and patches it), and a reader is correct unpatched.
TEST_F(PatchManagerTest, ProvingWindowEndsWithOnlyTheBreakpointsCorrectnessNeeds) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  request.proving_window = absl::Seconds(60);
  ASSERT_TRUE(manager_.Enable(request).ok());
  ASSERT_THAT(vm_.breakpoints(), ::testing::IsSupersetOf({kReadEax, kWriteEcx, kDecoy}));

  clock_.Advance(absl::Seconds(59));
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(1)).ok());
  EXPECT_TRUE(vm_.breakpoints().count(kReadEax)) << "still inside the window";
  EXPECT_TRUE(manager_.Status().proving_window_open);

  clock_.Advance(absl::Seconds(2));
  const int resumes_before = vm_.op_count(FakeGuestVm::Op::kResume);
  absl::StatusOr<std::vector<ManagerEvent>> events = manager_.Poll(absl::Milliseconds(1));
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_FALSE(vm_.breakpoints().count(kReadEax)) << "a reader is correct unpatched under mmio";
  EXPECT_FALSE(vm_.breakpoints().count(kDecoy));
  EXPECT_FALSE(vm_.breakpoints().count(kWriteEcx)) << "the write watchpoint stands in for it";
  EXPECT_FALSE(vm_.breakpoints().count(kWriteImm));
  EXPECT_EQ(vm_.op_count(FakeGuestVm::Op::kResume), resumes_before + 1)
      << "one stop removes them all";
  EXPECT_TRUE(vm_.running());
  EXPECT_THAT(SiteAt(kReadEax)->note, HasSubstr("proving window"));
  ASSERT_FALSE(events->empty());
  EXPECT_THAT(events->back().message, HasSubstr("proving window over"));
  EXPECT_EQ(events->back().kind, ManagerEvent::Kind::kNotice) << "not an error";
  EXPECT_FALSE(manager_.Status().proving_window_open);
  EXPECT_TRUE(manager_.Status().last_error.empty());

  // A late writer stops right after it ran (its write reached the real TPR, which the shadow
  // then follows) and is patched for its next run.
  vm_.SetTpr(0, 0x55);
  QueueWatchpoint(0, kWriteEcx + 6);
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  EXPECT_EQ(SiteAt(kWriteEcx)->site.state, SiteState::kApplied);
  EXPECT_EQ(GuestBlob()->cpus[0].shadow_tpr, 0x55);
  EXPECT_EQ(manager_.Status().unpatched_write_stops, 0u) << "a patchable writer, now patched";
}

// A write watchpoint stop whose instruction cannot be found (QEMU TCG can report a vCPU's stop at
// the end of its translation block): the shadows are resynced all the same, and it is no error.
TEST_F(PatchManagerTest, UndecodableWriteStopUnderMmioStillResyncsAndIsNoError) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  vm_.SetTpr(0, 0x44);
  QueueWatchpoint(0, kCode + 0x900);  // zeros before it: no TPR access ends there
  absl::StatusOr<std::vector<ManagerEvent>> events = manager_.Poll(absl::Milliseconds(10));
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_TRUE(events->empty());
  EXPECT_EQ(GuestBlob()->cpus[0].shadow_tpr, 0x44);
  EXPECT_EQ(manager_.Status().unpatched_write_stops, 1u);
  EXPECT_TRUE(manager_.Status().last_error.empty()) << manager_.Status().last_error;
  EXPECT_TRUE(vm_.running());
}

// libvirt pauses the domain (a save) while tprd handles a trap stop: tprd's resume is refused,
// and that is said as the host's pause (which the owner checks for a copy of the state), not as
// a warning of tprd's.
TEST_F(PatchManagerTest, AHostPauseDuringATrapStopIsTheHostsPauseNotAWarning) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  vm_.OnStop([](FakeGuestVm& vm) { vm.SetHostPaused(true); });
  QueueWatchpoint(0, kCode + 0x900);
  absl::StatusOr<std::vector<ManagerEvent>> events = manager_.Poll(absl::Milliseconds(10));
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].kind, ManagerEvent::Kind::kHostPaused) << (*events)[0].message;
  EXPECT_FALSE(vm_.running()) << "a guest the host paused stays paused";
}

// After the proving window cr8 keeps no breakpoint on a candidate (under TCG each slows its whole
// page) and keeps its access watchpoint, which sees a late candidate run (the next test).
TEST_F(PatchManagerTest, ProvingWindowEndUnderCr8RemovesTheBreakpointsAndKeepsTheWatchpoint) {
  EnableCr8();
  ASSERT_FALSE(vm_.breakpoints().empty());
  clock_.Advance(absl::Minutes(2));
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(1)).ok());
  EXPECT_TRUE(vm_.breakpoints().empty()) << "design.md: the proving window";
  EXPECT_EQ(vm_.watchpoints().size(), 1u);
  EXPECT_TRUE(vm_.running());
}

// A candidate that first runs after the window (its breakpoint gone): the access watchpoint stops
// the guest right after the read, which is fixed up to the shadow, and the site is patched there.
TEST_F(PatchManagerTest, Cr8AfterTheProvingWindowFixesUpAndPatchesALateReaderAtItsFirstRun) {
  EnableCr8();
  ASSERT_EQ(SiteAt(kReadEax)->site.state, SiteState::kCandidate);
  clock_.Advance(absl::Minutes(2));
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(1)).ok());
  ASSERT_TRUE(vm_.breakpoints().empty());
  vm_.SetTpr(1, 0x40);  // shadow 0x41; a CR8 write left the real TPR without its low nibble
  vm_.Registers(1).reg(Gpr::kEax) = 0x40;
  QueueWatchpoint(1, kReadEax + 5);
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  EXPECT_EQ(vm_.Registers(1).reg(Gpr::kEax), 0x41u) << "fixed up to the shadow";
  EXPECT_EQ(SiteAt(kReadEax)->site.state, SiteState::kApplied);
  EXPECT_TRUE(vm_.breakpoints().empty());
  EXPECT_TRUE(vm_.running());
}

TEST_F(PatchManagerTest, Cr8FixesUpAReadOfAVcpuTheStopDidNotName) {
  EnableCr8();
  vm_.SetTpr(1, 0x40);  // shadow 0x41; a CR8 write left the real TPR without its low nibble
  vm_.SetEip(1, kReadEax + 5);
  vm_.Registers(1).reg(Gpr::kEax) = 0x40;
  vm_.Registers(0).reg(Gpr::kEdx) = 0x20;
  QueueWatchpoint(0, kEsRead + 7);  // vCPU 0's stop is the one reported
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  EXPECT_EQ(vm_.Registers(1).reg(Gpr::kEax), 0x41u);
  EXPECT_EQ(manager_.Status().unreported_fixups, 1u);
  EXPECT_EQ(SiteAt(kReadEax)->site.state, SiteState::kApplied);
}

TEST_F(PatchManagerTest, Cr8LeavesAnUnnamedVcpuAloneWithoutProofItRanTheRead) {
  EnableCr8();
  vm_.SetTpr(1, 0x40);
  vm_.SetEip(1, kReadEax + 5);  // jumped here: eax holds something else
  vm_.Registers(1).reg(Gpr::kEax) = 0x1234;
  StopAtVcpu0Elsewhere();
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  EXPECT_EQ(vm_.Registers(1).reg(Gpr::kEax), 0x1234u);
  EXPECT_EQ(manager_.Status().unreported_fixups, 0u);
}

// QEMU 7.2 (TCG) names one vCPU per stop and keeps the other's hit pending, which makes that
// vCPU's next TPR access stop late. A vCPU the stop did not name, standing just after a TPR
// write, is stepped alone: QEMU then reports its hit (which proves the write ran), the shadow
// follows the real TPR, and no hit is left pending.
TEST_F(PatchManagerTest, Cr8StepsAnUnnamedVcpuAfterAWriteAndResyncsItsShadow) {
  EnableCr8();
  const size_t steps = vm_.step_calls().size();  // shadows: vCPU 0 0x20, vCPU 1 0x41
  vm_.SetEip(1, kRegRelative + 6);               // mov [ecx+tpr], eax ran with ecx = 0
  vm_.Registers(1).reg(Gpr::kEcx) = 0;
  vm_.SetTpr(1, 0x73);
  vm_.SetPendingWatchpointHit(1);
  vm_.SetStepLength(2);  // the next instruction: two bytes, not a TPR access
  StopAtVcpu0Elsewhere();
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  EXPECT_EQ(StepsSince(steps), std::vector<int>{1});
  EXPECT_FALSE(vm_.pending_watchpoint_hit(1));
  EXPECT_EQ(vm_.Registers(1).eip, kRegRelative + 8);
  EXPECT_EQ(GuestBlob()->cpus[1].shadow_tpr, 0x73);
  EXPECT_EQ(StepsSince(steps).size(), 1u);
  EXPECT_TRUE(vm_.running());
}

// The case found on a starved host (design.md): a vCPU stands after an unpatched write whose hit
// another vCPU's stop left unreported, and the instruction its step runs is an unpatched read.
// The write is applied first (the shadow follows the real TPR), then the read is fixed up with
// that shadow: before, the read got the stale shadow and the write's resync was skipped.
TEST_F(PatchManagerTest, Cr8StepOverAReadAfterAnUnreportedWriteSeesTheWrite) {
  EnableCr8();                                // shadows: vCPU 0 0x20, vCPU 1 0x41
  constexpr uint32_t kLower = kCode + 0xA00;  // not scanned: unpatched, as not yet proven
  Put(kLower, {0x89, 0x0D, 0x80, 0x00, 0xFE, 0xFF, 0xA1, 0x80, 0x00, 0xFE, 0xFF, 0xC3});
  vm_.SetEip(1, kLower + 6);  // mov [tpr],ecx ran with ecx = 0
  vm_.Registers(1).reg(Gpr::kEcx) = 0;
  vm_.SetTpr(1, 0x00);
  vm_.SetPendingWatchpointHit(1);
  vm_.OnStep([](FakeGuestVm& vm, int vcpu) {
    VcpuRegisters& r = vm.Registers(vcpu);
    if (r.eip == kLower + 6) {  // mov eax,[tpr]: the real TPR
      r.reg(Gpr::kEax) = *vm.ReadTpr(vcpu);
      r.eip += 5;
    } else {
      r.eip += 1;
    }
    return true;
  });
  StopAtVcpu0Elsewhere();
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  EXPECT_FALSE(vm_.pending_watchpoint_hit(1));
  EXPECT_EQ(vm_.Registers(1).eip, kLower + 11);
  EXPECT_EQ(GuestBlob()->cpus[1].shadow_tpr, 0x00) << "the shadow follows the unreported write";
  EXPECT_EQ(vm_.Registers(1).reg(Gpr::kEax), 0x00u) << "the read sees the write, not 0x41";
  EXPECT_TRUE(vm_.running());
}

// A vCPU standing after an applied writer ran the handler (CR8 write, shadow store), even when
// the step that ends its pending hit reports one: that hit is an older access's, and the real
// TPR is only the CR8 result, so the shadow stays (seen on 2 vCPUs: 0x41 became 0x40).
TEST_F(PatchManagerTest, Cr8KeepsTheShadowOfAVcpuStandingAfterAnAppliedWriter) {
  EnableCr8();
  QueueBreakpoint(0, kWriteEcx);
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  ASSERT_EQ(SiteAt(kWriteEcx)->site.state, SiteState::kApplied);
  vm_.SetEip(1, kWriteEcx + 6);  // returned from set_tpr: CR8 = 4, shadow 0x41
  vm_.SetTpr(1, 0x40);
  vm_.SetPendingWatchpointHit(1);
  vm_.SetStepLength(2);
  StopAtVcpu0Elsewhere();
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  EXPECT_FALSE(vm_.pending_watchpoint_hit(1));
  EXPECT_EQ(GuestBlob()->cpus[1].shadow_tpr, 0x41);
  EXPECT_EQ(manager_.Status().unreported_fixups, 0u);
}

// The same place reached by a jump: the step reports no hit, so nothing was written and the
// shadow (whose low nibble the real TPR lacks under cr8) stays.
TEST_F(PatchManagerTest, Cr8StepsAnUnnamedVcpuThatJumpedAfterAWriteAndKeepsItsShadow) {
  EnableCr8();
  const size_t steps = vm_.step_calls().size();
  vm_.SetEip(1, kRegRelative + 6);
  vm_.Registers(1).reg(Gpr::kEcx) = 0;
  vm_.SetTpr(1, 0x40);  // shadow 0x41, CR8 wrote 4
  StopAtVcpu0Elsewhere();
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  EXPECT_EQ(StepsSince(steps), std::vector<int>{1});
  EXPECT_EQ(GuestBlob()->cpus[1].shadow_tpr, 0x41);
}

// The learning window's stops step no one, so a hit it left pending on a vCPU the stop did not
// name would come late, at that vCPU's next access to the APIC page, under the strategy's own
// watchpoint: the window ends by stepping every vCPU once.
TEST_F(PatchManagerTest, LearningWindowEndsWithNoHitPending) {
  vm_.SetPendingWatchpointHit(1);
  EnableCr8();
  EXPECT_FALSE(vm_.pending_watchpoint_hit(1));
  EXPECT_EQ(vm_.step_calls(), (std::vector<int>{0, 1}));
}

// A vCPU about to run hlt is not stepped at a stop: its step would end only at its next interrupt,
// with every other vCPU stopped meanwhile.
TEST_F(PatchManagerTest, Cr8DoesNotStepAVcpuAboutToHalt) {
  EnableCr8();
  const size_t steps = vm_.step_calls().size();
  Put(kRegRelative + 6, {0xF4});
  vm_.SetEip(1, kRegRelative + 6);
  vm_.Registers(1).reg(Gpr::kEcx) = 0;
  vm_.SetPendingWatchpointHit(1);
  StopAtVcpu0Elsewhere();
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  EXPECT_TRUE(StepsSince(steps).empty());
  EXPECT_TRUE(vm_.running());
}

// Nor one halted already (an idle CPU: its eip is just after the hlt), at an ordinary stop: its
// step would wait for its next interrupt with every other CPU stopped.
TEST_F(PatchManagerTest, Cr8DoesNotStepAHaltedVcpuAtAStop) {
  EnableCr8();
  const size_t steps = vm_.step_calls().size();
  Halt(1);
  vm_.SetPendingWatchpointHit(1);
  StopAtVcpu0Elsewhere();
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  EXPECT_TRUE(StepsSince(steps).empty());
  EXPECT_TRUE(vm_.running());
}

// Before the watchpoint goes, a halted vCPU is stepped too (its step ends at its next interrupt):
// a hit it holds would otherwise outlive the watchpoint (QEMU frees it and keeps the pointer).
TEST_F(PatchManagerTest, RemovingTheWatchpointStepsAHaltedVcpuToo) {
  EnableCr8();
  const size_t steps = vm_.step_calls().size();
  Halt(1);
  vm_.SetPendingWatchpointHit(1);
  ASSERT_TRUE(manager_.Rollback({}, false).ok());  // removes the watchpoint: every vCPU stepped
  EXPECT_EQ(StepsSince(steps), (std::vector<int>{0, 1}));
  EXPECT_FALSE(vm_.pending_watchpoint_hit(1));
  EXPECT_TRUE(vm_.running());
}

// The learning window's end steps a halted vCPU too. The case found in a clean-clone run (ciJ):
// an AP held a hit from before a guest reset (QEMU's CPU reset keeps it), stayed halted through
// the short window of the next enable, and its first TPR read under cr8 was reported at the end
// of its translation block, after the value was used.
TEST_F(PatchManagerTest, LearningWindowEndsWithNoHitPendingOnAHaltedVcpu) {
  Halt(1);
  vm_.SetPendingWatchpointHit(1);
  EnableCr8();
  EXPECT_FALSE(vm_.pending_watchpoint_hit(1));
}

// Leaving cr8 (here: a full rollback) the real TPR lacks the low nibble CR8 writes clear, and
// debug writes cannot reach the APIC: tprd steps each such CPU through the blob's one-instruction
// poke with eax = its shadow and interrupts off, then gives the CPU its registers back.
TEST_F(PatchManagerTest, LeavingCr8GivesEachRealTprItsShadowBack) {
  EnableCr8();
  // shadows: vCPU 0 0x20, vCPU 1 0x41
  vm_.SetTpr(1, 0x40);  // CR8 = 4 wrote the real TPR without its low nibble
  const std::optional<ParsedBlob> blob = GuestBlob();
  ASSERT_TRUE(blob);
  EmulatePoke(*blob, [](FakeGuestVm&, VcpuRegisters&) {});  // other steps: the CPU stays put
  vm_.Registers(1).reg(Gpr::kEax) = 0xCAFE;
  vm_.Registers(1).eflags = 0x202;  // IF and the reserved bit
  const uint32_t eip = vm_.Registers(1).eip;
  ASSERT_TRUE(manager_.Rollback({}, false).ok());
  EXPECT_EQ(PokedVcpus(), std::vector<int>{1}) << "only the CPU whose TPR lost a nibble";
  ASSERT_TRUE(vm_.Stop().ok());
  EXPECT_EQ(*vm_.ReadTpr(1), 0x41);
  EXPECT_EQ(pokes_[0].eflags & (1u << 9), 0u) << "stepped with interrupts off";
  EXPECT_EQ(vm_.Registers(1).reg(Gpr::kEax), 0xCAFEu);
  EXPECT_EQ(vm_.Registers(1).eip, eip);
  EXPECT_EQ(vm_.Registers(1).eflags, 0x202u);
  EXPECT_EQ(manager_.Status().real_tpr_restores, 1u);
  EXPECT_TRUE(manager_.Status().last_error.empty()) << manager_.Status().last_error;
}

// A CPU inside the handlers may be between its CR8 write and its shadow store. Left to run after
// the word changed, that store would undo a poke (or a read there would take the exact path while
// the real TPR lacks its nibble): it is stepped out of the handlers alone, under the cr8 word, and
// poked then; the guest does not run meanwhile (seen in clean-clone runs: one wrong read per CPU).
TEST_F(PatchManagerTest, LeavingCr8StepsACpuOutOfTheHandlersBeforeTheWordChanges) {
  EnableCr8();
  // Between its CR8 write and its shadow store: the real TPR and the old shadow agree (0x40),
  // and the store of 0x41 comes with its next instructions.
  vm_.SetTpr(1, 0x40);
  const std::optional<ParsedBlob> blob = GuestBlob();
  ASSERT_TRUE(blob);
  {
    ASSERT_TRUE(vm_.Stop().ok());
    const uint8_t old_shadow = 0x40;
    ASSERT_TRUE(vm_.WriteVirtual(0, blob->addresses.PerCpuShadow(1), {&old_shadow, 1}).ok());
    ASSERT_TRUE(vm_.Resume().ok());
  }
  vm_.SetEip(1, blob->handlers.set_tpr_eax);
  const uint64_t shadow_pa = DataPhysical(*blob, blob->addresses.PerCpuShadow(1));
  int sleeps = 0;
  clock_.OnSleep([&] { ++sleeps; });
  int handler_steps = 0;
  EmulatePoke(*blob, [&](FakeGuestVm& vm, VcpuRegisters& r) {
    if (!blob->addresses.InHandlerCode(r.eip)) {
      r.eip += 2;
      return;
    }
    EXPECT_EQ(WordNow(*blob), Strategy::kCr8) << "stepped under the cr8 word";
    if (++handler_steps == 3) {  // it stores the shadow and returns from the handler
      const uint8_t shadow = 0x41;
      EXPECT_TRUE(vm.BackdoorWritePhysical(shadow_pa, {&shadow, 1}).ok());
      r.eip = kCode + 0x800;
    } else {
      r.eip += 1;
    }
  });
  ASSERT_TRUE(manager_.Rollback({}, false).ok());
  EXPECT_EQ(handler_steps, 3);
  EXPECT_EQ(sleeps, 0) << "the guest never ran between the first stop and the poke";
  EXPECT_EQ(PokedVcpus(), std::vector<int>{1});
  ASSERT_TRUE(vm_.Stop().ok());
  EXPECT_EQ(*vm_.ReadTpr(1), 0x41);
  EXPECT_TRUE(manager_.Status().last_error.empty()) << manager_.Status().last_error;
}

// Under exact a rollback that let the guest run and stopped it again to wait for a CPU inside the
// handlers mostly stopped it right after the handler's own MMIO read, every time (a clean-clone
// run: 20 of 20 retries refused). The CPU is stepped out of them instead; the guest never runs.
TEST_F(PatchManagerTest, RollbackStepsACpuOutOfTheHandlersInsteadOfWaitingForIt) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  const std::optional<ParsedBlob> blob = GuestBlob();
  ASSERT_TRUE(blob);
  vm_.SetEip(1, blob->handlers.set_tpr_eax);
  int sleeps = 0;
  clock_.OnSleep([&] { ++sleeps; });
  int handler_steps = 0;
  vm_.OnStep([&](FakeGuestVm& vm, int vcpu) {
    VcpuRegisters& r = vm.Registers(vcpu);
    if (!blob->addresses.InHandlerCode(r.eip)) {
      r.eip += 2;
    } else if (++handler_steps == 3) {
      r.eip = kCode + 0x800;  // returned to its caller
    } else {
      r.eip += 1;
    }
    return true;
  });
  absl::StatusOr<RollbackReport> rolled = manager_.Rollback({}, false);
  ASSERT_TRUE(rolled.ok()) << rolled.status();
  EXPECT_TRUE(rolled->refused.empty()) << rolled->refused.front().second;
  EXPECT_EQ(handler_steps, 3);
  EXPECT_EQ(sleeps, 0) << "the guest was let run to leave the handlers";
}

// A halted CPU cannot be stepped through the poke (the step masks interrupts, and only an
// interrupt ends a hlt). It runs alone, under cr8, every other CPU stopped, to a breakpoint on
// the instruction after its hlt: there it is awake, and the poke runs before the guest does.
TEST_F(PatchManagerTest, LeavingCr8WakesAHaltedCpuAloneThenPokesIt) {
  EnableCr8();
  vm_.SetTpr(1, 0x40);  // shadow 0x41
  Halt(1);
  const std::optional<ParsedBlob> blob = GuestBlob();
  ASSERT_TRUE(blob);
  const uint32_t after_hlt = kCode + 0x901;
  int sleeps = 0;
  clock_.OnSleep([&] { ++sleeps; });
  vm_.OnRunAlone([&](FakeGuestVm& vm, int vcpu) {
    EXPECT_EQ(WordNow(*blob), Strategy::kCr8) << "woken under the cr8 word";
    EXPECT_TRUE(vm.breakpoints().count(after_hlt)) << "a breakpoint after its hlt";
    // Its timer interrupt ran (the handler's CR8 writes leave the real TPR 0x40 again) and
    // returned to the instruction after the hlt.
    vm.SetTpr(vcpu, 0x40);
    return StopEvent{StopEvent::Kind::kBreakpoint, vcpu, after_hlt, 0, WatchKind::kAccess};
  });
  // Steps other than the poke's: where vCPU 1 stood at each (the poke's own is not one).
  std::vector<uint32_t> vcpu1_steps_at;
  EmulatePoke(*blob, [&](FakeGuestVm&, VcpuRegisters& r) {
    if (&r == &vm_.Registers(1)) vcpu1_steps_at.push_back(r.eip);
    r.eip += 2;
  });
  ASSERT_TRUE(manager_.Rollback({}, false).ok());
  EXPECT_EQ(vm_.run_alone_calls(), std::vector<int>{1});
  EXPECT_EQ(sleeps, 0) << "the guest never ran as a whole between the first stop and the poke";
  EXPECT_EQ(PokedVcpus(), std::vector<int>{1});
  // Back where it woke after the poke: the step before the watchpoint goes starts there.
  EXPECT_EQ(vcpu1_steps_at, std::vector<uint32_t>{after_hlt}) << "back where it woke";
  EXPECT_FALSE(vm_.breakpoints().count(after_hlt)) << "the wake's breakpoint is gone";
  ASSERT_TRUE(vm_.Stop().ok());
  EXPECT_EQ(*vm_.ReadTpr(1), 0x41);
  EXPECT_TRUE(manager_.Status().last_error.empty()) << manager_.Status().last_error;
}

// Its interrupt handler's unpatched read of the TPR stops it on cr8's access watchpoint: fixed
// up as at any stop; it stands after that read, awake, and is poked.
TEST_F(PatchManagerTest, LeavingCr8FixesUpAReadTheWokenCpuMadeAndPokesIt) {
  EnableCr8();
  vm_.SetTpr(1, 0x40);
  Halt(1);
  const std::optional<ParsedBlob> blob = GuestBlob();
  ASSERT_TRUE(blob);
  vm_.OnRunAlone([&](FakeGuestVm& vm, int vcpu) {
    vm.SetEip(vcpu, kReadEax + 5);
    vm.Registers(vcpu).reg(Gpr::kEax) = 0x40;
    return StopEvent{StopEvent::Kind::kWatchpoint, vcpu, kReadEax + 5, kDefaultTprVa,
                     WatchKind::kAccess};
  });
  EmulatePoke(*blob);
  ASSERT_TRUE(manager_.Rollback({}, false).ok());
  EXPECT_EQ(vm_.Registers(1).reg(Gpr::kEax), 0x41u) << "the read fixed up to the shadow";
  EXPECT_EQ(PokedVcpus(), std::vector<int>{1});
  ASSERT_TRUE(vm_.Stop().ok());
  EXPECT_EQ(*vm_.ReadTpr(1), 0x41);
  EXPECT_TRUE(manager_.Status().last_error.empty()) << manager_.Status().last_error;
}

// QEMU reports a vCPU's not yet reported watchpoint hit at its next run, before it executes
// anything: the first step of the poke then ends still at the poke. It is stepped again.
TEST_F(PatchManagerTest, LeavingCr8StepsThePokeAgainWhenAnOldHitEndedTheFirstStep) {
  EnableCr8();
  vm_.SetTpr(1, 0x40);  // shadow 0x41
  const std::optional<ParsedBlob> blob = GuestBlob();
  ASSERT_TRUE(blob);
  EmulatePoke(*blob);
  vm_.OnStep([this, &blob, first = true](FakeGuestVm& vm, int vcpu) mutable {
    VcpuRegisters& r = vm.Registers(vcpu);
    if (r.eip != blob->addresses.tpr_poke) {
      r.eip += 2;
      return true;
    }
    if (first) {  // the old hit is reported; nothing ran
      first = false;
      return true;
    }
    pokes_.push_back({vcpu, r.eflags});
    vm.SetTpr(vcpu, static_cast<uint8_t>(r.reg(Gpr::kEax)));
    r.eip += 5;
    return true;
  });
  ASSERT_TRUE(manager_.Rollback({}, false).ok());
  EXPECT_EQ(PokedVcpus(), std::vector<int>{1});
  ASSERT_TRUE(vm_.Stop().ok());
  EXPECT_EQ(*vm_.ReadTpr(1), 0x41);
  EXPECT_TRUE(manager_.Status().last_error.empty()) << manager_.Status().last_error;
}

// Nothing wakes it alone (it may wait for another CPU's IPI): the guest runs on a moment under
// cr8 (still correct there) and is looked at again.
TEST_F(PatchManagerTest, LeavingCr8WaitsUnderCr8ForAHaltedCpuToWake) {
  EnableCr8();
  vm_.SetTpr(1, 0x40);  // shadow 0x41
  Halt(1);
  const std::optional<ParsedBlob> blob = GuestBlob();
  ASSERT_TRUE(blob);
  int sleeps = 0;
  clock_.OnSleep([&] {
    EXPECT_EQ(WordNow(*blob), Strategy::kCr8) << "runs on under the cr8 word";
    if (++sleeps == 2) vm_.SetEip(1, kCode + 0x800);  // an interrupt woke it
  });
  EmulatePoke(*blob);
  ASSERT_TRUE(manager_.Rollback({}, false).ok());
  EXPECT_EQ(sleeps, 2);
  EXPECT_EQ(PokedVcpus(), std::vector<int>{1});
  ASSERT_TRUE(vm_.Stop().ok());
  EXPECT_EQ(*vm_.ReadTpr(1), 0x41);
  EXPECT_TRUE(manager_.Status().last_error.empty()) << manager_.Status().last_error;
}

// One that never wakes is left, and said.
TEST_F(PatchManagerTest, LeavingCr8LeavesACpuThatStaysHaltedAndSaysSo) {
  EnableCr8();
  vm_.SetTpr(1, 0x40);
  Halt(1);
  ASSERT_TRUE(manager_.Rollback({}, false).ok());
  EXPECT_EQ(vm_.Registers(1).eip, kCode + 0x901u) << "not pointed at the poke";
  EXPECT_THAT(manager_.Status().last_error, HasSubstr("halted"));
  EXPECT_TRUE(vm_.running());
}

// The let-go while libvirt holds the guest paused to copy its state (a save, a migration, a
// snapshot): under mmio no vCPU runs, since every step ends in QEMU's debug run state, which a
// copy that completes then carries and QEMU 7.2 cannot load. A SIGTERM's detach still steps
// every vCPU so that no watchpoint hit outlives the watchpoint.
TEST_F(PatchManagerTest, DetachForAHostCopyRunsNoVcpuUnderMmio) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  ASSERT_EQ(manager_.Status().strategy, Strategy::kMmio);
  ASSERT_FALSE(vm_.watchpoints().empty());
  const size_t steps = vm_.step_calls().size();
  const size_t lone_runs = vm_.run_alone_calls().size();
  const absl::Status detached = manager_.Detach({.host_copies_state = true});
  EXPECT_TRUE(detached.ok()) << detached;
  EXPECT_TRUE(StepsSince(steps).empty()) << "a vCPU was stepped during the host's copy";
  EXPECT_EQ(vm_.run_alone_calls().size(), lone_runs);
  EXPECT_EQ(manager_.Status().strategy, Strategy::kExact);
  EXPECT_TRUE(vm_.watchpoints().empty());
  EXPECT_TRUE(vm_.breakpoints().empty());
}

TEST_F(PatchManagerTest, DetachOtherwiseStepsEveryVcpuBeforeTheWatchpointGoes) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  const size_t steps = vm_.step_calls().size();
  ASSERT_TRUE(manager_.Detach().ok());
  EXPECT_EQ(StepsSince(steps), (std::vector<int>{0, 1}));
  EXPECT_TRUE(vm_.watchpoints().empty());
}

// A detach (SIGTERM) goes with its manager: what went wrong on the way out comes back with it.
TEST_F(PatchManagerTest, DetachSaysWhichCpuItCouldNotGiveItsShadowBack) {
  EnableCr8();
  vm_.SetTpr(1, 0x40);
  Halt(1);
  const absl::Status detached = manager_.Detach();
  EXPECT_TRUE(absl::IsDataLoss(detached)) << detached;
  EXPECT_THAT(detached.message(), HasSubstr("vCPU 1's TPR reads 0x40 instead of 0x41"));
  EXPECT_THAT(detached.message(), HasSubstr("halted"));
  EXPECT_TRUE(vm_.running());
  EXPECT_TRUE(vm_.watchpoints().empty());
}

// A candidate's breakpoint that races with the detach's own stop (a SIGTERM in the proving
// window) is reported instead of the interrupt and kept by the backend, which then refuses every
// step: it is taken with the stop, so that the poke still gives vCPU 1 its nibble back.
TEST_F(PatchManagerTest, DetachTakesABreakpointThatRacedWithItsStopAndStillPokes) {
  EnableCr8();
  vm_.SetTpr(1, 0x40);
  const std::optional<ParsedBlob> blob = GuestBlob();
  ASSERT_TRUE(blob);
  EmulatePoke(*blob);
  ASSERT_TRUE(vm_.breakpoints().count(kDecoy)) << "the decoy is an unproven candidate";
  vm_.SetEip(0, kDecoy);
  vm_.RaceNextStop({StopEvent::Kind::kBreakpoint, 0, kDecoy, 0, WatchKind::kAccess});
  const absl::Status detached = manager_.Detach();
  EXPECT_TRUE(detached.ok()) << detached;
  EXPECT_FALSE(vm_.raced_stop_kept());
  EXPECT_EQ(PokedVcpus(), std::vector<int>{1});
  ASSERT_TRUE(vm_.Stop().ok());
  EXPECT_EQ(*vm_.ReadTpr(1), 0x41);
  EXPECT_TRUE(vm_.breakpoints().empty());
  EXPECT_EQ(Bytes(kDecoy, 5), (std::vector<uint8_t>{0xA1, 0x80, 0x00, 0xFE, 0xFF}))
      << "the candidate it stopped at is left as it was";
}

// A CPU stopped in user mode is not stepped through kernel code; the gap is said, not hidden.
TEST_F(PatchManagerTest, LeavingCr8LeavesAUserModeCpuAndSaysSo) {
  EnableCr8();
  const size_t steps = vm_.step_calls().size();
  vm_.SetTpr(1, 0x40);
  vm_.Registers(1).cs = 0x1B;
  const uint32_t eip = vm_.Registers(1).eip;
  ASSERT_TRUE(manager_.Rollback({}, false).ok());
  EXPECT_EQ(vm_.Registers(1).eip, eip) << "not pointed at the poke";
  EXPECT_EQ(StepsSince(steps).size(), 2u) << "only the steps that end every pending hit";
  EXPECT_THAT(manager_.Status().last_error, HasSubstr("user code"));
}

// A watchpoint hit that races with one of tprd's own stops (here the proving window's end)
// reaches tprd only after it resumed the guest: the stop itself must look at every vCPU.
TEST_F(PatchManagerTest, Cr8FixesUpAReadThatRacedWithTprdsOwnStop) {
  EnableCr8();
  vm_.SetTpr(1, 0x40);
  vm_.SetEip(1, kReadEax + 5);
  vm_.Registers(1).reg(Gpr::kEax) = 0x40;
  const std::optional<ParsedBlob> blob = GuestBlob();
  ASSERT_TRUE(blob);
  EmulatePoke(*blob);  // leaving cr8 gives vCPU 1's real TPR its low nibble back
  const absl::Status detached = manager_.Detach();  // tprd's own stop, then exact and no traps
  EXPECT_TRUE(detached.ok()) << detached;
  EXPECT_EQ(vm_.Registers(1).reg(Gpr::kEax), 0x41u);
  EXPECT_EQ(manager_.Status().unreported_fixups, 1u);
}

TEST_F(PatchManagerTest, Cr8FixesUpAnUnpatchedReadAndPatchesIt) {
  EnableCr8();
  EXPECT_EQ(vm_.watchpoints().size(), 1u) << "cr8 keeps an access watchpoint on the TPR";
  // vCPU 1 (shadow 0x41) read the real TPR, which a CR8 write left as 0x40.
  vm_.SetTpr(1, 0x40);
  vm_.Registers(1).reg(Gpr::kEax) = 0x40;
  QueueWatchpoint(1, kReadEax + 5);
  absl::StatusOr<std::vector<ManagerEvent>> events = manager_.Poll(absl::Milliseconds(10));
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_EQ(vm_.Registers(1).reg(Gpr::kEax), 0x41u);
  EXPECT_EQ(SiteAt(kReadEax)->site.state, SiteState::kApplied);
}

// EFLAGS bits: IF and the always-set bit 1 must survive a fix-up; CF PF AF ZF SF OF are
// recomputed.
constexpr uint32_t kIfAndReserved = 0x202;
constexpr uint32_t kCfPfAfSf = 0x01 | 0x04 | 0x10 | 0x80;
constexpr uint32_t kZfPf = 0x40 | 0x04;

TEST_F(PatchManagerTest, Cr8AcceptsACmpReaderAndFixesItsFlagsToTheShadow) {
  vm_.SetFeatures({.cr8legacy = true, .qemu_vapic_active = false});
  vm_.SetTpr(1, 0x51);
  // The learning window sees the cmp run: it can be fixed up, so cr8 is not refused.
  QueueWatchpoint(0, kCmpImm + 10);
  EnableRequest request;
  request.strategy = Strategy::kCr8;
  absl::StatusOr<EnableReport> report = manager_.Enable(request);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->learning_hits, 1u);
  EXPECT_EQ(manager_.Status().strategy, Strategy::kCr8);
  ASSERT_EQ(vm_.watchpoints().size(), 1u);

  // vCPU 1 (shadow 0x51) compared the real TPR, which a CR8 write left as 0x50: "below".
  vm_.SetTpr(1, 0x50);
  vm_.Registers(1).eflags = kIfAndReserved | kCfPfAfSf;
  const VcpuRegisters before = vm_.Registers(1);
  QueueWatchpoint(1, kCmpImm + 10);
  absl::StatusOr<std::vector<ManagerEvent>> events = manager_.Poll(absl::Milliseconds(10));
  ASSERT_TRUE(events.ok()) << events.status();
  for (const ManagerEvent& e : *events) {
    EXPECT_NE(e.kind, ManagerEvent::Kind::kStrategyChanged) << e.message;
    EXPECT_NE(e.kind, ManagerEvent::Kind::kWarning) << e.message;
  }
  EXPECT_EQ(vm_.Registers(1).eflags, kIfAndReserved | kZfPf) << "equal, as with the shadow";
  for (int r = 0; r < kGprCount; ++r) EXPECT_EQ(vm_.Registers(1).gpr[r], before.gpr[r]);
  EXPECT_EQ(vm_.Registers(1).eip, kCmpImm + 10) << "the sete after it runs next";
  EXPECT_EQ(manager_.Status().strategy, Strategy::kCr8);
  EXPECT_TRUE(vm_.running());
}

// The test guest's np_regrel_read: the encoding names 0x80, not the TPR; the registers at the
// stop show it read the TPR.
TEST_F(PatchManagerTest, Cr8FixesUpARegisterRelativeReadFoundByItsAddress) {
  EnableCr8();
  vm_.SetTpr(1, 0x40);  // shadow 0x41
  vm_.Registers(1).reg(Gpr::kEcx) = 0xFFFE0000;
  vm_.Registers(1).reg(Gpr::kEax) = 0x40;
  QueueWatchpoint(1, kReadViaEcx + 6);
  absl::StatusOr<std::vector<ManagerEvent>> events = manager_.Poll(absl::Milliseconds(10));
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_TRUE(events->empty()) << (*events)[0].message;
  EXPECT_EQ(vm_.Registers(1).reg(Gpr::kEax), 0x41u);

  // With ecx elsewhere the same bytes did not read the TPR: nothing is touched.
  vm_.Registers(1).reg(Gpr::kEcx) = 0x80001000;
  vm_.Registers(1).reg(Gpr::kEax) = 0x40;
  QueueWatchpoint(1, kReadViaEcx + 6);
  events = manager_.Poll(absl::Milliseconds(10));
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].kind, ManagerEvent::Kind::kWarning);
  EXPECT_EQ(vm_.Registers(1).reg(Gpr::kEax), 0x40u);
  EXPECT_EQ(manager_.Status().strategy, Strategy::kCr8);
}

// The test guest's np_es_8b_edx: "26 8B 15 tpr" also decodes from the 8B. Either way it loads
// edx from the TPR, so it is fixed up; the prefixed instruction is never patched.
TEST_F(PatchManagerTest, Cr8FixesUpAReadThatAFlatSegmentPrefixMakesAmbiguous) {
  EnableCr8();  // vCPU 0's shadow: 0x20
  const auto before = Bytes(kEsRead, 7);
  vm_.Registers(0).reg(Gpr::kEdx) = 0x27;  // anything but the shadow
  QueueWatchpoint(0, kEsRead + 7);
  absl::StatusOr<std::vector<ManagerEvent>> events = manager_.Poll(absl::Milliseconds(10));
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_TRUE(events->empty()) << (*events)[0].message;
  EXPECT_EQ(vm_.Registers(0).reg(Gpr::kEdx), 0x20u);
  EXPECT_EQ(Bytes(kEsRead, 7), before);
}

TEST_F(PatchManagerTest, Cr8RefusedWhenAnUnfixableReaderRuns) {
  vm_.SetFeatures({.cr8legacy = true, .qemu_vapic_active = false});
  // add eax,[tpr] writes a register from the TPR's value and its flags: no fix-up exists.
  QueueWatchpoint(0, kAddEax + 6);
  ExpectEnableRefused(Strategy::kCr8, "cr8 is unsafe");
}

TEST_F(PatchManagerTest, Cr8SwitchesToExactWhenAnUnfixableReaderRunsLater) {
  EnableCr8();
  vm_.Registers(0).eflags = kIfAndReserved;
  QueueWatchpoint(0, kAddEax + 6);
  absl::StatusOr<std::vector<ManagerEvent>> events = manager_.Poll(absl::Milliseconds(10));
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].kind, ManagerEvent::Kind::kStrategyChanged);
  EXPECT_EQ(manager_.Status().strategy, Strategy::kExact);
  EXPECT_EQ(vm_.Registers(0).eflags, kIfAndReserved) << "an add is not fixed up";
  EXPECT_TRUE(vm_.watchpoints().empty());
}

// More candidates than the guest's site table holds: the last ones get no slot. A writer
// among them runs unpatched; under mmio the write watchpoint catches each run.
class FullSiteTableTest : public PatchManagerTest {
 protected:
  static constexpr uint32_t kLateWriter = kCode + 0x3000;
  void SetUp() override {
    PatchManagerTest::SetUp();
    for (uint32_t i = 0; i < kBlobMaxSites; ++i) {
      Put(kCode + 0x1000 + i * 8, {0xA1, 0x80, 0x00, 0xFE, 0xFF});
    }
    Put(kLateWriter, {0x89, 0x0D, 0x80, 0x00, 0xFE, 0xFF});
  }
};

TEST_F(FullSiteTableTest, MmioResyncsTheShadowsWhenAWriterWithoutASlotRuns) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  std::optional<ManagedSite> late = SiteAt(kLateWriter);
  ASSERT_TRUE(late);
  ASSERT_GE(late->site.id, kBlobMaxSites);
  EXPECT_FALSE(vm_.breakpoints().count(kLateWriter)) << "the write watchpoint sees it";

  vm_.SetTpr(0, 0x66);
  QueueWatchpoint(0, kLateWriter + 6);
  absl::StatusOr<std::vector<ManagerEvent>> events = manager_.Poll(absl::Milliseconds(10));
  ASSERT_TRUE(events.ok()) << events.status();
  EXPECT_EQ(manager_.Status().strategy, Strategy::kMmio);
  EXPECT_EQ(GuestBlob()->cpus[0].shadow_tpr, 0x66);
  EXPECT_EQ(Bytes(kLateWriter, 6), (std::vector<uint8_t>{0x89, 0x0D, 0x80, 0x00, 0xFE, 0xFF}));
  EXPECT_TRUE(vm_.running());
}

TEST_F(FullSiteTableTest, MmioRefusedWhenAWriterWithoutASlotRunsOftenInTheLearningWindow) {
  for (int i = 0; i < EnableRequest{}.learning_max_hits / 8; ++i) {
    QueueWatchpoint(0, kLateWriter + 6);
  }
  ExpectEnableRefused(Strategy::kMmio, "site table is full");
}

TEST_F(FullSiteTableTest, ReadersWithoutASlotGetNoBreakpoint) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  size_t unslotted_armed = 0;
  for (const ManagedSite& s : manager_.Sites()) {
    if (s.site.id >= kBlobMaxSites && s.armed && s.site.address != kLateWriter) ++unslotted_armed;
  }
  EXPECT_EQ(unslotted_armed, 0u) << "a reader is correct unpatched: no trap for nothing";
}

TEST_F(PatchManagerTest, RollbackAllRestoresEveryByteAndLeavesExact) {
  const auto before = Bytes(kCode, 0x100);
  QueueWatchpoint(0, kReadEax + 5);
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  QueueBreakpoint(1, kWriteEcx);
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  ASSERT_NE(Bytes(kCode, 0x100), before);
  absl::StatusOr<RollbackReport> report = manager_.Rollback({}, false);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->rolled_back.size(), 2u);
  EXPECT_TRUE(report->refused.empty());
  EXPECT_EQ(Bytes(kCode, 0x100), before);
  EXPECT_EQ(manager_.Status().strategy, Strategy::kExact);
  EXPECT_TRUE(vm_.breakpoints().empty());
  EXPECT_TRUE(vm_.running());
}

TEST_F(PatchManagerTest, RollbackRefusesASiteChangedBehindTprdUnlessForced) {
  QueueWatchpoint(0, kReadEax + 5);
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  const uint32_t id = SiteAt(kReadEax)->site.id;
  Put(kReadEax, {0x90, 0x90, 0x90, 0x90, 0x90});
  absl::StatusOr<RollbackReport> report = manager_.Rollback({id}, false);
  ASSERT_TRUE(report.ok()) << report.status();
  ASSERT_EQ(report->refused.size(), 1u);
  EXPECT_EQ(Bytes(kReadEax, 5), (std::vector<uint8_t>(5, 0x90)));
  report = manager_.Rollback({id}, true);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(Bytes(kReadEax, 5), (std::vector<uint8_t>{0xA1, 0x80, 0x00, 0xFE, 0xFF}));
  EXPECT_TRUE(absl::IsNotFound(manager_.Rollback({9999}, false).status()));
}

TEST_F(PatchManagerTest, DetachLeavesExactAndNoTraps) {
  EnableCr8();
  ASSERT_TRUE(manager_.Detach().ok());
  EXPECT_EQ(manager_.Status().strategy, Strategy::kExact);
  EXPECT_TRUE(vm_.breakpoints().empty());
  EXPECT_TRUE(vm_.watchpoints().empty());
  EXPECT_TRUE(vm_.running());
}

TEST_F(PatchManagerTest, RefusesWhatItCannotPatch) {
  EnableRequest cr8;
  cr8.strategy = Strategy::kCr8;
  EXPECT_THAT(std::string(manager_.Enable(cr8).status().message()), HasSubstr("cr8legacy"));
  vm_.SetFeatures({.cr8legacy = false, .qemu_vapic_active = true});
  EnableRequest mmio;
  EXPECT_THAT(std::string(manager_.Enable(mmio).status().message()), HasSubstr("vapic"));
  vm_.SetFeatures({});
  vm_.Registers(1).fs_base = 0x80070000;  // no KPCR there
  absl::Status no_kpcr = manager_.Enable(mmio).status();
  EXPECT_TRUE(absl::IsFailedPrecondition(no_kpcr));
  EXPECT_THAT(std::string(no_kpcr.message()), HasSubstr("KPCR"));
  EXPECT_TRUE(vm_.running()) << "a refusal leaves the guest running";
}

TEST_F(PatchManagerTest, DryRunWritesNothing) {
  vm_.ClearWriteLog();
  EnableRequest request;
  request.dry_run = true;
  absl::StatusOr<EnableReport> report = manager_.Enable(request);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_GE(report->candidates, 4u);
  EXPECT_TRUE(vm_.write_log().empty());
  EXPECT_TRUE(vm_.breakpoints().empty());
  EXPECT_TRUE(vm_.running());
}

TEST_F(PatchManagerTest, AdoptAfterCleanDetachTakesTheGuestBack) {
  QueueWatchpoint(0, kReadEax + 5);
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  ASSERT_TRUE(manager_.Detach().ok());
  vm_.SetTpr(0, 0x3D);  // the guest ran on exact meanwhile

  PatchManager restarted(vm_, journal_, clock_);
  absl::StatusOr<bool> adopted = restarted.Adopt(Strategy::kMmio);
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  EXPECT_TRUE(*adopted);
  EXPECT_EQ(restarted.Status().strategy, Strategy::kMmio);
  bool found = false;
  for (const ManagedSite& s : restarted.Sites()) {
    if (s.site.address == kReadEax) {
      found = true;
      EXPECT_EQ(s.site.state, SiteState::kApplied);
    }
  }
  EXPECT_TRUE(found) << "the guest's site table lists the patched site";
  EXPECT_TRUE(vm_.breakpoints().count(kWriteEcx)) << "unpatched candidates are armed again";
  EXPECT_TRUE(vm_.running());
}

TEST_F(PatchManagerTest, AdoptAfterKillPatchesTheSiteAVcpuStoppedAt) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  // tprd is killed; vCPU 1 hits the breakpoint on kWriteEcx and the guest stays stopped.
  ASSERT_TRUE(vm_.Stop().ok());
  vm_.SetEip(1, kWriteEcx);

  PatchManager restarted(vm_, journal_, clock_);
  absl::StatusOr<bool> adopted = restarted.Adopt();
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  EXPECT_TRUE(*adopted);
  EXPECT_EQ(restarted.Status().strategy, Strategy::kMmio) << "the word kept the strategy";
  EXPECT_EQ(Bytes(kWriteEcx, 1)[0], 0x51) << "patched before it runs";
  EXPECT_TRUE(vm_.running());
}

// tprd killed under cr8 before it resynced a shadow after a write it had not patched (the step
// that proves such a write was cut short): the real TPR then is no CR8 write of the shadow,
// and the adopt takes it. A real TPR that is the shadow's high nibble is a CR8 write: kept.
TEST_F(PatchManagerTest, AdoptUnderCr8TakesAWriteTheKilledTprdMissed) {
  EnableCr8();  // shadows: vCPU 0 0x20, vCPU 1 0x41
  ASSERT_TRUE(vm_.Stop().ok());
  vm_.SetTpr(0, 0x73);  // an APIC write behind the handlers
  vm_.SetTpr(1, 0x40);  // CR8 = 4

  PatchManager restarted(vm_, journal_, clock_);
  absl::StatusOr<bool> adopted = restarted.Adopt();
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  EXPECT_EQ(restarted.Status().strategy, Strategy::kCr8);
  std::optional<ParsedBlob> blob = GuestBlob();
  ASSERT_TRUE(blob);
  EXPECT_EQ(blob->cpus[0].shadow_tpr, 0x73);
  EXPECT_EQ(blob->cpus[1].shadow_tpr, 0x41);
}

// tprd killed under cr8 while a vCPU stood just after an unpatched register-relative read
// (mov eax,[ebx+0x80], ebx at the APIC page): the watchpoint's hit went to the killed tprd, so
// the adopt must find the read by its operand's address and give it the shadow. A vCPU that
// stands there with another value (it jumped there) is left alone. Found by the HAL e2e's
// kill -9 case (ciT): 0x40 read for 0x41.
TEST_F(PatchManagerTest, AdoptUnderCr8FixesARegisterRelativeReadTheKilledTprdLeftUnfixed) {
  constexpr uint32_t kReadViaEbx = kCode + 0xA0;  // 8B 83 80 00 00 00: mov eax,[ebx+0x80]
  Put(kReadViaEbx, {0x8B, 0x83, 0x80, 0x00, 0x00, 0x00});
  EnableCr8();  // shadows: vCPU 0 0x20, vCPU 1 0x41
  ASSERT_TRUE(vm_.Stop().ok());
  for (int vcpu : {0, 1}) {
    vm_.SetEip(vcpu, kReadViaEbx + 6);
    vm_.Registers(vcpu).reg(Gpr::kEbx) = 0xFFFE0000;
  }
  vm_.SetTpr(1, 0x40);  // CR8 = 4: the read saw the real TPR without its low nibble
  vm_.Registers(1).reg(Gpr::kEax) = 0x40;
  vm_.SetTpr(0, 0x20);
  vm_.Registers(0).reg(Gpr::kEax) = 0x1234;  // jumped there: not the TPR's value

  PatchManager restarted(vm_, journal_, clock_);
  absl::StatusOr<bool> adopted = restarted.Adopt();
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  EXPECT_EQ(restarted.Status().strategy, Strategy::kCr8);
  EXPECT_EQ(vm_.Registers(1).reg(Gpr::kEax), 0x41u) << "fixed up to the shadow";
  EXPECT_EQ(vm_.Registers(0).reg(Gpr::kEax), 0x1234u) << "no proof that the read just ran";
}

// tprd killed between the guest write and its record: the guest's table still says pending,
// the journal one step behind. Adopt records what the bytes say in both.
TEST_F(PatchManagerTest, AdoptAfterKillMidTransactionRecordsWhatTheBytesSay) {
  QueueWatchpoint(0, kReadEax + 5);
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  std::optional<Site> patched;
  for (const ManagedSite& s : manager_.Sites()) {
    if (s.site.address == kReadEax) patched = s.site;
  }
  ASSERT_TRUE(patched && patched->state == SiteState::kApplied);
  const uint32_t blob_va = BlobVa();
  ASSERT_NE(blob_va, 0u);
  ASSERT_TRUE(vm_.Stop().ok());
  Site pending = *patched;
  pending.state = SiteState::kPending;
  GuestSiteTable table(vm_, 0, blob_va);
  ASSERT_TRUE(table.RecordSite(pending).ok());
  journal_.records.clear();

  PatchManager restarted(vm_, journal_, clock_);
  ASSERT_TRUE(restarted.Adopt().ok());
  ASSERT_TRUE(vm_.Stop().ok());
  absl::StatusOr<std::vector<Site>> after = ReadGuestSiteTable(vm_, 0, blob_va);
  ASSERT_TRUE(after.ok()) << after.status();
  bool in_table = false;
  for (const Site& s : *after) {
    if (s.id != patched->id) continue;
    in_table = true;
    EXPECT_EQ(s.state, SiteState::kApplied) << "the guest's table follows the bytes";
  }
  EXPECT_TRUE(in_table);
  bool journaled = false;
  for (const Site& s : journal_.records) {
    if (s.id != patched->id) continue;
    journaled = true;
    EXPECT_EQ(s.state, SiteState::kApplied);
  }
  EXPECT_TRUE(journaled) << "the adopt journals every site's state";
}

// A kill -9 between an enable's pending record and its write: the site had been proven (the
// learning window saw it), so it is recorded rolled back and the next enable patches it without a
// new proof; under `discovery = watchpoint` nothing else would prove a reader (ciA, 2026-12-07).
TEST_F(PatchManagerTest, APendingSiteAKilledTprdNeverWroteIsPatchedByTheNextEnable) {
  QueueWatchpoint(0, kReadEax + 5);
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  request.discovery = Discovery::kWatchpoint;
  ASSERT_TRUE(manager_.Enable(request).ok());
  std::optional<ManagedSite> reader = SiteAt(kReadEax);
  ASSERT_TRUE(reader && reader->site.state == SiteState::kApplied);
  const uint32_t blob_va = BlobVa();
  ASSERT_NE(blob_va, 0u);
  // As the killed tprd left it: the original bytes, the table saying pending.
  ASSERT_TRUE(vm_.Stop().ok());
  ASSERT_TRUE(vm_.BackdoorWriteVirtual(0, kReadEax, reader->site.original).ok());
  Site pending = reader->site;
  pending.state = SiteState::kPending;
  ASSERT_TRUE(GuestSiteTable(vm_, 0, blob_va).RecordSite(pending).ok());

  {
    PatchManager restarted(vm_, journal_, clock_);
    ASSERT_TRUE(restarted.Adopt().ok());
    ASSERT_TRUE(restarted.Detach().ok());
  }
  // A second restart still knows (the guest's table says rolled back, not pending).
  PatchManager again(vm_, journal_, clock_);
  ASSERT_TRUE(again.Adopt().ok());
  absl::StatusOr<EnableReport> report = again.Enable(request);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->learning_hits, 0u) << "the blob was there: no learning window";
  bool applied = false;
  for (const ManagedSite& s : again.Sites()) {
    if (s.site.address == kReadEax) applied = s.site.state == SiteState::kApplied;
  }
  EXPECT_TRUE(applied) << "the reader the killed enable was about to patch";
}

TEST_F(PatchManagerTest, EnableAfterRollbackPatchesEverySiteAgain) {
  QueueWatchpoint(0, kReadEax + 5);
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  ASSERT_TRUE(manager_.Rollback({}, false).ok());
  ASSERT_TRUE(manager_.Enable(request).ok());
  EXPECT_EQ(manager_.Status().strategy, Strategy::kMmio);
  for (const ManagedSite& s : manager_.Sites()) {
    EXPECT_NE(s.site.state, SiteState::kRolledBack) << s.disassembly;
    if (s.site.address == kWriteEcx) {
      EXPECT_TRUE(vm_.breakpoints().count(kWriteEcx)) << "the restored writer is armed again";
    }
  }
}

// A writer rolled back on its own leaves the guest on exact; a restarted tprd must not switch
// the word back to mmio with that writer unpatched and unarmed.
TEST_F(PatchManagerTest, AdoptWithARolledBackWriterKeepsTheGuestOnExact) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  QueueBreakpoint(0, kWriteEcx);
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  std::optional<ManagedSite> writer = SiteAt(kWriteEcx);
  ASSERT_TRUE(writer && writer->site.state == SiteState::kApplied)
      << "the writer is patched at its first execution";
  ASSERT_TRUE(manager_.Rollback({writer->site.id}, false).ok());
  EXPECT_EQ(manager_.Status().strategy, Strategy::kExact);
  ASSERT_TRUE(manager_.Detach().ok());

  PatchManager restarted(vm_, journal_, clock_);
  ASSERT_TRUE(restarted.Adopt(Strategy::kMmio).ok());
  EXPECT_EQ(restarted.Status().strategy, Strategy::kExact);
}

TEST_F(PatchManagerTest, EnableAfterDetachReusesTheBlobInTheGuest) {
  QueueWatchpoint(0, kReadEax + 5);
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  ASSERT_TRUE(manager_.Detach().ok());
  PatchManager second(vm_, journal_, clock_);
  ASSERT_TRUE(second.Enable(request).ok());
  int blobs = 0;
  for (uint32_t pa = kLegacyWindowFirst; pa < kLegacyWindowEnd; pa += 4096) {
    if (vm_.BackdoorPhysicalBytes(pa, 4) == std::vector<uint8_t>{0x54, 0x50, 0x52, 0x42}) ++blobs;
  }
  EXPECT_EQ(blobs, 1);
  bool applied = false;
  for (const ManagedSite& s : second.Sites()) {
    applied |= s.site.address == kReadEax && s.site.state == SiteState::kApplied;
  }
  EXPECT_TRUE(applied) << "the site patched by the first session is known to the second";
}

// QEMU with SeaBIOS: 0xC0000-0xE7FFF read-only and zero, 0xE8000-0xEFFFF RAM with only a
// small zero run (docs/design.md "Placement").
TEST_F(PatchManagerTest, PlacesTheImageInReadOnlyMemoryAndTheDataBlockInRam) {
  std::vector<MemoryRegion> map = vm_.MemoryMap().value();
  std::vector<MemoryRegion> legacy;
  auto region = [](uint64_t start, uint64_t end, bool ram, bool rom) {
    MemoryRegion r;
    r.start = start;
    r.end = end;
    r.ram = ram;
    r.rom = rom;
    return r;
  };
  legacy.push_back(region(0, 0xBFFFF, true, false));
  legacy.push_back(region(0xC0000, 0xE7FFF, false, true));
  legacy.push_back(region(0xE8000, 0xEFFFF, true, false));
  legacy.push_back(region(0xF0000, 0xFFFFF, false, true));
  for (const MemoryRegion& r : map) {
    if (r.start >= 0x100000) legacy.push_back(r);
    if (r.start == 0 && r.end >= 0x100000) legacy.push_back(region(0x100000, r.end, true, false));
  }
  vm_.SetMemoryMap(legacy);
  std::vector<uint8_t> seabios(0x8000, 0xAA);
  std::fill(seabios.begin() + 0x100, seabios.begin() + 0x900, 0);
  ASSERT_TRUE(vm_.BackdoorWritePhysical(0xE8000, seabios).ok());

  QueueWatchpoint(0, kReadEax + 5);
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  absl::StatusOr<EnableReport> report = manager_.Enable(request);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->applied_at_enable, 1u);
  // The image in the read-only window, the data block in the RAM zero run.
  EXPECT_EQ(vm_.BackdoorPhysicalBytes(0xC0000, 4), (std::vector<uint8_t>{0x54, 0x50, 0x52, 0x42}));
  std::vector<uint8_t> strategy = vm_.BackdoorPhysicalBytes(0xE8100, 4);
  EXPECT_EQ(strategy, (std::vector<uint8_t>{1, 0, 0, 0})) << "mmio in the data block";
  // Nothing non-zero was overwritten.
  std::vector<uint8_t> after = vm_.BackdoorPhysicalBytes(0xE8000, 0x8000);
  for (size_t i = 0; i < after.size(); ++i) {
    if (seabios[i] != 0) {
      ASSERT_EQ(after[i], seabios[i]) << "offset 0x" << std::hex << i;
    }
  }
  ASSERT_TRUE(manager_.Detach().ok());
  PatchManager restarted(vm_, journal_, clock_);
  absl::StatusOr<bool> adopted = restarted.Adopt(Strategy::kMmio);
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  EXPECT_TRUE(*adopted) << restarted.Status().last_error;
}

TEST_F(PatchManagerTest, AdoptRejectsACorruptBlob) {
  QueueWatchpoint(0, kReadEax + 5);
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  ASSERT_TRUE(manager_.Detach().ok());
  // Corrupt one byte of the blob's code: the checksum no longer matches.
  std::optional<uint32_t> blob_pa;
  for (uint32_t pa = kLegacyWindowFirst; pa < kLegacyWindowEnd; pa += 4096) {
    std::vector<uint8_t> magic = vm_.BackdoorPhysicalBytes(pa, 4);
    if (magic == std::vector<uint8_t>{0x54, 0x50, 0x52, 0x42}) blob_pa = pa;
  }
  ASSERT_TRUE(blob_pa);
  const uint8_t junk = 0xCC;
  ASSERT_TRUE(vm_.BackdoorWritePhysical(*blob_pa + 0x100, {&junk, 1}).ok());
  PatchManager restarted(vm_, journal_, clock_);
  absl::StatusOr<bool> adopted = restarted.Adopt(Strategy::kMmio);
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  EXPECT_FALSE(*adopted);
  EXPECT_FALSE(restarted.Status().last_error.empty());
  EXPECT_TRUE(vm_.running());
}

}  // namespace
// Where Enable wrote the strategy word and each CPU's per-CPU entry (physical), from the
// write log: the word is the last 4-byte write of the strategy's value, the entries the writes
// of kPerCpuEntrySize bytes, CPU 0 first.
struct GuestWordAddresses {
  uint64_t word = 0;
  std::vector<uint64_t> per_cpu;
};
GuestWordAddresses FindGuestWord(const FakeGuestVm& vm, Strategy strategy) {
  GuestWordAddresses found;
  const std::vector<uint8_t> value = {static_cast<uint8_t>(strategy), 0, 0, 0};
  for (const FakeGuestVm::WriteRecord& record : vm.write_log()) {
    if (record.bytes == value) found.word = record.physical.front();
    if (record.bytes.size() == kPerCpuEntrySize) found.per_cpu.push_back(record.physical.front());
  }
  return found;
}

// The guest's per-CPU access counters reach the status as sums of differences, read without
// stopping the guest, across a u32 wrap; watchpoint stops at unpatched writers are counted too.
TEST_F(PatchManagerTest, TheGuestsAccessCountersAreSummedAcrossAWrap) {
  vm_.ClearWriteLog();
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  const GuestWordAddresses guest = FindGuestWord(vm_, Strategy::kMmio);
  ASSERT_EQ(guest.per_cpu.size(), 2u);
  const uint64_t cpu0 = guest.per_cpu[0] + TPRD_BLOB_PCPU_STATS_DELTA;
  const uint64_t cpu1 = guest.per_cpu[1] + TPRD_BLOB_PCPU_STATS_DELTA;
  vm_.BackdoorWrite32(cpu0 + TPRD_BLOB_PCPU_STAT_NO_APIC, 0xFFFFFFF0u);
  vm_.BackdoorWrite32(cpu1 + TPRD_BLOB_PCPU_STAT_NO_APIC, 5);
  vm_.BackdoorWrite32(cpu1 + TPRD_BLOB_PCPU_STAT_APIC, 7);
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(manager_.Poll(absl::ZeroDuration()).ok());
  EXPECT_EQ(manager_.Status().handler_accesses_without_apic, 0xFFFFFFF0u + 5);
  EXPECT_EQ(manager_.Status().handler_accesses_to_apic, 7u);
  EXPECT_EQ(manager_.Status().counters_read_at, clock_.Now());

  vm_.BackdoorWrite32(cpu0 + TPRD_BLOB_PCPU_STAT_NO_APIC, 0x10);  // wrapped: 0x20 more
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(manager_.Poll(absl::ZeroDuration()).ok());
  EXPECT_EQ(manager_.Status().handler_accesses_without_apic, uint64_t{0xFFFFFFF0} + 5 + 0x20);
  EXPECT_EQ(manager_.Status().handler_accesses_to_apic, 7u);
}

TEST_F(PatchManagerTest, AGuardFlipToExactIsWhatTheStatusSaysAndItSticksUntilTheNextEnable) {
  vm_.ClearWriteLog();
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  const GuestWordAddresses guest = FindGuestWord(vm_, Strategy::kMmio);
  ASSERT_NE(guest.word, 0u);
  ASSERT_EQ(guest.per_cpu.size(), 2u);

  // The guest's guard on CPU 1 caught a stale shadow: it counts and flips the word itself.
  vm_.BackdoorWrite32(guest.per_cpu[1] + TPRD_BLOB_PCPU_MISMATCHES, 3);
  vm_.BackdoorWrite32(guest.word, static_cast<uint32_t>(Strategy::kExact));
  clock_.Advance(absl::Seconds(2));
  absl::StatusOr<std::vector<ManagerEvent>> events = manager_.Poll(absl::ZeroDuration());
  ASSERT_TRUE(events.ok()) << events.status();
  bool changed = false;
  for (const ManagerEvent& e : *events) {
    if (e.kind == ManagerEvent::Kind::kStrategyChanged) {
      changed = true;
      EXPECT_THAT(e.message, HasSubstr("guard found a stale shadow"));
      EXPECT_THAT(e.message, HasSubstr("CPU 1: 3"));
    }
  }
  EXPECT_TRUE(changed) << "the flip is an event";
  EXPECT_EQ(manager_.Status().strategy, Strategy::kExact) << "the status says what the guest does";
  EXPECT_EQ(manager_.Status().requested_strategy, Strategy::kMmio);
  EXPECT_EQ(manager_.Status().guard_mismatches, 3u);
  clock_.Advance(absl::Seconds(2));
  events = manager_.Poll(absl::ZeroDuration());
  ASSERT_TRUE(events.ok());
  for (const ManagerEvent& e : *events) {
    EXPECT_NE(e.kind, ManagerEvent::Kind::kStrategyChanged) << "reported once: " << e.message;
  }

  // A restarted tprd that remembers mmio (journal) leaves the guest on exact.
  ASSERT_TRUE(manager_.Detach().ok());
  PatchManager restarted(vm_, journal_, clock_);
  absl::StatusOr<bool> adopted = restarted.Adopt(Strategy::kMmio);
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  EXPECT_TRUE(*adopted);
  EXPECT_EQ(restarted.Status().strategy, Strategy::kExact);
  EXPECT_EQ(vm_.BackdoorPhysicalBytes(guest.word, 4), (std::vector<uint8_t>{0, 0, 0, 0}));
  EXPECT_THAT(restarted.Status().last_error, HasSubstr("stays on exact until the next"));

  // The operator asks for mmio again: that is a new decision, and the evidence is cleared.
  ASSERT_TRUE(restarted.Enable(request).ok());
  EXPECT_EQ(restarted.Status().strategy, Strategy::kMmio);
  EXPECT_EQ(restarted.Status().guard_mismatches, 0u);
  EXPECT_EQ(vm_.BackdoorPhysicalBytes(guest.per_cpu[1] + TPRD_BLOB_PCPU_MISMATCHES, 4),
            (std::vector<uint8_t>{0, 0, 0, 0}));
}

TEST_F(PatchManagerTest, EnableThatFailsAfterItsStopLetsTheGuestRun) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  // Switching strategy goes through exact; a failing guest write there used to return with the
  // guest still stopped.
  vm_.SetFeatures({.cr8legacy = true, .qemu_vapic_active = false});
  vm_.FailNthWrite(1);
  request.strategy = Strategy::kCr8;
  EXPECT_FALSE(manager_.Enable(request).ok());
  EXPECT_TRUE(vm_.running()) << "the guest is not left stopped";
}

// The same for a rollback whose switch to exact fails.
TEST_F(PatchManagerTest, RollbackThatFailsAfterItsStopLetsTheGuestRun) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  ASSERT_TRUE(manager_.Enable(request).ok());
  vm_.FailNthWrite(1);
  EXPECT_FALSE(manager_.Rollback({}, false).ok());
  EXPECT_TRUE(vm_.running()) << "the rollback left the guest stopped";
}

// Discovery on KVM hosts (docs/design.md): the fake writes breakpoints into guest memory as int3,
// as QEMU does under KVM, so a breakpoint on an unproven candidate would show in its bytes.
class WatchpointDiscoveryTest : public PatchManagerTest {
 protected:
  void SetUp() override {
    PatchManagerTest::SetUp();
    vm_.set_breakpoints_in_memory(true);
  }
  static EnableRequest Request(Strategy strategy, Discovery discovery = Discovery::kWatchpoint) {
    EnableRequest request;
    request.strategy = strategy;
    request.discovery = discovery;
    request.proving_window = absl::Seconds(60);
    return request;
  }
  // No byte of a candidate that is not applied differs from what the scan read.
  void ExpectUnprovenBytesUnchanged(const char* when) {
    for (const ManagedSite& m : manager_.Sites()) {
      if (m.site.state == SiteState::kApplied) continue;
      EXPECT_EQ(Bytes(m.site.address, m.site.original.size()), m.site.original)
          << when << ": candidate at 0x" << std::hex << m.site.address;
    }
    EXPECT_EQ(Bytes(kDecoy, 5), (std::vector<uint8_t>{0xA1, 0x80, 0x00, 0xFE, 0xFF})) << when;
  }
};

TEST_F(WatchpointDiscoveryTest, MmioNeverSetsABreakpointAndPatchesAWriterAtItsFirstRun) {
  vm_.ClearWriteLog();
  ASSERT_TRUE(manager_.Enable(Request(Strategy::kMmio)).ok());
  EXPECT_TRUE(vm_.breakpoint_log().empty());
  EXPECT_EQ(manager_.Status().candidate_breakpoints, 0u);
  EXPECT_EQ(manager_.Status().discovery, Discovery::kWatchpoint);
  EXPECT_EQ(
      vm_.watchpoints(),
      (std::set<std::tuple<uint32_t, uint32_t, WatchKind>>{{kDefaultTprVa, 4, WatchKind::kWrite}}));
  EXPECT_EQ(SiteAt(kWriteEcx)->site.state, SiteState::kCandidate);
  ExpectUnprovenBytesUnchanged("after enable");

  // The writer ran unpatched (its value reached the real TPR) and the write watchpoint stopped
  // the vCPU after it: the shadow follows the real TPR and the site is patched for its next run.
  vm_.SetTpr(0, 0x5C);
  QueueWatchpoint(0, kWriteEcx + 6);
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  std::optional<ManagedSite> writer = SiteAt(kWriteEcx);
  EXPECT_EQ(writer->site.state, SiteState::kApplied);
  EXPECT_EQ(Bytes(kWriteEcx, 6), writer->site.patched);
  EXPECT_EQ(GuestBlob()->cpus[0].shadow_tpr, 0x5C);
  EXPECT_EQ(manager_.Status().unpatched_write_stops, 0u);

  clock_.Advance(absl::Seconds(61));
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(1)).ok());
  EXPECT_FALSE(manager_.Status().proving_window_open);
  EXPECT_TRUE(vm_.breakpoint_log().empty()) << "not at enable, at a stop, nor at the window's end";
  ExpectUnprovenBytesUnchanged("after the proving window");
  // tprd wrote the blob, the site table, the alias and the proven site; no candidate's bytes.
  for (const FakeGuestVm::WriteRecord& w : vm_.write_log()) {
    for (const ManagedSite& m : manager_.Sites()) {
      if (m.site.state == SiteState::kApplied) continue;
      const uint64_t pa = m.site.address - 0x80000000;
      for (uint64_t p : w.physical) {
        EXPECT_FALSE(p >= pa && p < pa + m.site.original.size())
            << "wrote into the unproven candidate at 0x" << std::hex << m.site.address;
      }
    }
  }
  ASSERT_TRUE(manager_.Rollback({}, false).ok());
  EXPECT_EQ(Bytes(kWriteEcx, 6), writer->site.original);
}

TEST_F(WatchpointDiscoveryTest, Cr8NeverSetsABreakpointAndFixesUpAndPatchesAReaderAtItsFirstRun) {
  vm_.SetFeatures({.cr8legacy = true, .qemu_vapic_active = false});
  ASSERT_TRUE(manager_.Enable(Request(Strategy::kCr8)).ok());
  EXPECT_TRUE(vm_.breakpoint_log().empty());
  EXPECT_EQ(vm_.watchpoints().size(), 1u) << "cr8's access watchpoint";
  // vCPU 1 (shadow 0x41) ran the unpatched read of a real TPR a CR8 write left as 0x40.
  vm_.SetTpr(1, 0x40);
  vm_.Registers(1).reg(Gpr::kEax) = 0x40;
  QueueWatchpoint(1, kReadEax + 5);
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  EXPECT_EQ(vm_.Registers(1).reg(Gpr::kEax), 0x41u) << "fixed up to the shadow";
  EXPECT_EQ(SiteAt(kReadEax)->site.state, SiteState::kApplied);
  clock_.Advance(absl::Minutes(2));
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(1)).ok());
  EXPECT_TRUE(vm_.breakpoint_log().empty()) << "cr8 keeps breakpoints only under kBreakpoints";
  EXPECT_EQ(manager_.Status().candidate_breakpoints, 0u);
  ExpectUnprovenBytesUnchanged("cr8, after the proving window");
}

// Under mmio the watchpoint sees writes only: a reader is proven by the first enable's learning
// window alone. A rollback and a second enable (no learning window: the blob is in) must patch it
// again at once, as code that ran in this boot, not leave it unpatched until the next boot.
TEST_F(WatchpointDiscoveryTest, EnableAfterRollbackPatchesAgainAReaderOnlyTheLearningWindowSaw) {
  QueueWatchpoint(0, kReadEax + 5);  // the first enable's learning window sees the reader run
  ASSERT_TRUE(manager_.Enable(Request(Strategy::kMmio)).ok());
  ASSERT_EQ(SiteAt(kReadEax)->site.state, SiteState::kApplied);
  ASSERT_TRUE(manager_.Rollback({}, false).ok());
  ASSERT_EQ(SiteAt(kReadEax)->site.state, SiteState::kRolledBack);
  EXPECT_EQ(Bytes(kReadEax, 5), SiteAt(kReadEax)->site.original);

  absl::StatusOr<EnableReport> again = manager_.Enable(Request(Strategy::kMmio));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->learning_hits, 0u) << "no second learning window";
  EXPECT_EQ(SiteAt(kReadEax)->site.state, SiteState::kApplied) << "patched again at the enable";
  EXPECT_EQ(Bytes(kReadEax, 5), SiteAt(kReadEax)->site.patched);
  EXPECT_GE(again->applied_at_enable, 1u);
  EXPECT_TRUE(vm_.breakpoint_log().empty());
  ExpectUnprovenBytesUnchanged("after the second enable");
}

TEST_F(WatchpointDiscoveryTest, AdoptKeepsTheSessionsDiscovery) {
  ASSERT_TRUE(manager_.Enable(Request(Strategy::kMmio)).ok());
  ASSERT_TRUE(manager_.Detach().ok());
  PatchManager restarted(vm_, journal_, clock_);
  absl::StatusOr<bool> adopted =
      restarted.Adopt(Strategy::kMmio, Request(Strategy::kExact, Discovery::kWatchpoint));
  ASSERT_TRUE(adopted.ok()) << adopted.status();
  EXPECT_TRUE(*adopted);
  EXPECT_EQ(restarted.Status().discovery, Discovery::kWatchpoint);
  EXPECT_TRUE(vm_.breakpoint_log().empty());
  ExpectUnprovenBytesUnchanged("after the adopt");
}

// Breakpoints where QEMU writes them into memory: a candidate a watchpoint proves while its int3
// stands (cr8 keeps its breakpoints) loses the breakpoint before the transaction checks its
// bytes, and its removal never writes the saved byte back over the patch.
TEST_F(WatchpointDiscoveryTest, ABreakpointInMemoryGoesBeforeItsSiteIsPatched) {
  vm_.SetFeatures({.cr8legacy = true, .qemu_vapic_active = false});
  ASSERT_TRUE(manager_.Enable(Request(Strategy::kCr8, Discovery::kBreakpoints)).ok());
  ASSERT_TRUE(vm_.breakpoints().count(kReadEax));
  EXPECT_GT(manager_.Status().candidate_breakpoints, 0u);
  ASSERT_EQ(Bytes(kReadEax, 1)[0], 0xCC) << "the fake writes int3 as KVM does";
  vm_.SetTpr(1, 0x40);
  vm_.Registers(1).reg(Gpr::kEax) = 0x40;
  QueueWatchpoint(1, kReadEax + 5);
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  std::optional<ManagedSite> site = SiteAt(kReadEax);
  EXPECT_EQ(site->site.state, SiteState::kApplied) << site->note;
  EXPECT_FALSE(vm_.breakpoints().count(kReadEax));
  EXPECT_EQ(Bytes(kReadEax, 5), site->site.patched);
  ASSERT_TRUE(manager_.Rollback({}, false).ok());
  EXPECT_EQ(Bytes(kReadEax, 5), (std::vector<uint8_t>{0xA1, 0x80, 0x00, 0xFE, 0xFF}));
}

}  // namespace tprd::engine

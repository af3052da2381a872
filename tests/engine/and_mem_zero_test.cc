// `and dword [tpr], 0` (83 25 <tpr> 00, MoveZeroToTpr in real HALs) through the engine: the
// trap decoding sees it as a writer of 0, the learning window proves and patches it (66 90;
// call and_tpr_zero), another immediate refuses mmio like any unpatchable writer, and under cr8
// a watchpoint stop after an unpatched one sets that CPU's shadow from the real TPR.
#include <cstring>

#include "daemon/engine/blob.h"
#include "daemon/engine/patch_manager.h"
#include "daemon/engine/placement.h"
#include "daemon/engine/trap_decoding.h"
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

#define TPR 0x80, 0x00, 0xFE, 0xFF

constexpr uint32_t kCode = 0x80100000;        // physical 0x100000
constexpr uint32_t kAndZero = kCode;          // 83 25 tpr 00: and dword [tpr],0
constexpr uint32_t kAndOther = kCode + 0x10;  // 83 25 tpr 0F: keeps the low nibble
constexpr uint32_t kAndImm32 = kCode + 0x20;  // 81 25 tpr 00000000: same meaning, 10 bytes
constexpr uint32_t kReadEax = kCode + 0x30;   // A1: mov eax,[tpr]

TEST(AndMemZeroTrapTest, AStopAfterTheAndIsAWriterOfItsForm) {
  // Some code before it, so the backward decoder has every start to try.
  std::vector<uint8_t> bytes = {0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90,
                                0x90, 0x83, 0x25, TPR,  0x00, 0xC3};
  const uint32_t base = 0x80001000;
  const uint32_t start = base + 8;
  GuestByteReader reader = SpanByteReader(bytes, base);
  std::string why;
  auto decoded = ResolveTrap(start + 7, reader, kDefaultTprVa, &why);
  ASSERT_TRUE(decoded.has_value()) << why;
  EXPECT_EQ(decoded->first, start);
  const Classification& c = decoded->second;
  EXPECT_TRUE(c.patchable);
  EXPECT_EQ(c.form, Form::kAndMemZero);
  EXPECT_TRUE(IsWriter(c, start, reader));
  EXPECT_FALSE(FixableReadDestination(c, start, reader).has_value());
  EXPECT_FALSE(IsFixableRead(c, start, reader)) << "a writer: its fix-up is the shadow";
  VcpuRegisters regs;
  EXPECT_FALSE(FixedEflags(c, start, reader, 0x41, kDefaultTprVa, regs).has_value())
      << "and's flags do not depend on the TPR: nothing to recompute";
}

TEST(AndMemZeroTrapTest, OtherAndsAreUnpatchableWriters) {
  for (const std::vector<uint8_t>& and_bytes :
       {std::vector<uint8_t>{0x83, 0x25, TPR, 0x0F},
        std::vector<uint8_t>{0x81, 0x25, TPR, 0, 0, 0, 0},
        std::vector<uint8_t>{0x3E, 0x83, 0x25, TPR, 0x00}}) {
    std::vector<uint8_t> bytes = {0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90, 0x90};
    for (uint8_t b : and_bytes) bytes.push_back(b);
    const uint32_t base = 0x80001000;
    const uint32_t end = base + static_cast<uint32_t>(bytes.size());
    bytes.push_back(0xC3);
    GuestByteReader reader = SpanByteReader(bytes, base);
    std::string why;
    auto decoded = ResolveTrap(end, reader, kDefaultTprVa, &why);
    ASSERT_TRUE(decoded.has_value()) << why;
    EXPECT_FALSE(decoded->second.patchable);
    EXPECT_FALSE(decoded->second.form.has_value());
    EXPECT_TRUE(IsWriter(decoded->second, decoded->first, reader)) << decoded->second.detail;
  }
}

using ::tprd::testing::RecordingJournal;

class AndMemZeroManagerTest : public ::testing::Test {
 protected:
  AndMemZeroManagerTest() : vm_(Options()), manager_(vm_, journal_, clock_) {}

  static testing::XpLikeOptions Xp() {
    testing::XpLikeOptions xp;
    xp.vcpu_count = 2;
    return xp;
  }
  static FakeGuestVm::Options Options() { return testing::XpLikeVmOptions(Xp()); }

  void SetUp() override {
    ASSERT_TRUE(testing::BuildXpLikeLayout(vm_, Xp()).ok());
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
    Put(kAndZero, {0x83, 0x25, TPR, 0x00});
    Put(kAndOther, {0x83, 0x25, TPR, 0x0F});
    Put(kAndImm32, {0x81, 0x25, TPR, 0x00, 0x00, 0x00, 0x00});
    Put(kReadEax, {0xA1, TPR});
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
  void QueueWatchpoint(int vcpu, uint32_t pc_after) {
    vm_.SetEip(vcpu, pc_after);
    vm_.QueueStopEvent(
        {StopEvent::Kind::kWatchpoint, vcpu, pc_after, kDefaultTprVa, WatchKind::kAccess});
  }
  // The blob in the guest, read back and parsed as adopt would (its data block may live apart).
  absl::StatusOr<ParsedBlob> GuestBlob() {
    for (uint32_t pa = kLegacyWindowFirst; pa < kLegacyWindowEnd; pa += 4096) {
      if (vm_.BackdoorPhysicalBytes(pa, 4) != std::vector<uint8_t>{0x54, 0x50, 0x52, 0x42}) {
        continue;
      }
      const std::vector<uint8_t> image = vm_.BackdoorPhysicalBytes(pa, kBlobSize);
      const uint32_t data_va = BlobHeaderDataVa(image).value_or(0);
      const std::vector<uint8_t> data =
          vm_.BackdoorPhysicalBytes(data_va - kLowMemoryVirtualBase, kBlobDataBlockSize);
      return ParseBlob(image, absl::MakeConstSpan(data));
    }
    return absl::NotFoundError("no blob in the guest");
  }

  FakeGuestVm vm_;
  RecordingJournal journal_;
  FakeClock clock_;
  PatchManager manager_;
};

TEST_F(AndMemZeroManagerTest, ScanFindsTheAndZeroPatchableAndTheOtherAndsNot) {
  absl::StatusOr<std::vector<ManagedSite>> sites = manager_.Scan();
  ASSERT_TRUE(sites.ok()) << sites.status();
  std::map<uint32_t, const ManagedSite*> by_address;
  for (const ManagedSite& s : *sites) by_address[s.site.address] = &s;
  ASSERT_TRUE(by_address.count(kAndZero));
  EXPECT_EQ(by_address[kAndZero]->site.form, Form::kAndMemZero);
  EXPECT_TRUE(by_address[kAndZero]->note.empty()) << by_address[kAndZero]->note;
  ASSERT_TRUE(by_address.count(kAndOther));
  EXPECT_THAT(by_address[kAndOther]->note, HasSubstr("0x0F"));
  ASSERT_TRUE(by_address.count(kAndImm32));
  EXPECT_THAT(by_address[kAndImm32]->note, HasSubstr("81 /4"));
}

TEST_F(AndMemZeroManagerTest, LearningWindowProvesAndPatchesItUnderMmio) {
  QueueWatchpoint(0, kAndZero + 7);
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  absl::StatusOr<EnableReport> report = manager_.Enable(request);
  ASSERT_TRUE(report.ok()) << report.status();
  EXPECT_EQ(report->applied_at_enable, 1u);
  std::optional<ManagedSite> site = SiteAt(kAndZero);
  ASSERT_TRUE(site);
  EXPECT_EQ(site->site.state, SiteState::kApplied);
  const std::vector<uint8_t> patched = Bytes(kAndZero, 7);
  EXPECT_EQ(patched, site->site.patched);
  ASSERT_EQ(patched.size(), 7u);
  EXPECT_EQ(patched[0], 0x66);
  EXPECT_EQ(patched[1], 0x90);
  EXPECT_EQ(patched[2], 0xE8);
  absl::StatusOr<ParsedBlob> blob = GuestBlob();
  ASSERT_TRUE(blob.ok()) << blob.status();
  uint32_t rel32;
  std::memcpy(&rel32, patched.data() + 3, 4);
  EXPECT_EQ(kAndZero + 7 + rel32, blob->handlers.and_tpr_zero) << "call and_tpr_zero";
  // The guest's own site table holds it as form 7, so a restarted tprd can adopt it.
  bool in_table = false;
  for (const Site& s : blob->sites) {
    if (s.address != kAndZero) continue;
    in_table = true;
    EXPECT_EQ(s.form, Form::kAndMemZero);
    EXPECT_EQ(s.original, (std::vector<uint8_t>{0x83, 0x25, TPR, 0x00}));
  }
  EXPECT_TRUE(in_table);

  // Rollback restores the and byte for byte.
  absl::StatusOr<RollbackReport> rolled = manager_.Rollback({}, false);
  ASSERT_TRUE(rolled.ok()) << rolled.status();
  EXPECT_EQ(Bytes(kAndZero, 7), (std::vector<uint8_t>{0x83, 0x25, TPR, 0x00}));
}

// Within the proving window the and gets its breakpoint like any candidate; after it, mmio's write
// watchpoint stands in for it (it proves and patches the and when it runs).
TEST_F(AndMemZeroManagerTest, UnprovenAndZeroIsWatchedUnderMmioAsAWriter) {
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  request.proving_window = absl::Seconds(1);
  ASSERT_TRUE(manager_.Enable(request).ok());
  EXPECT_TRUE(vm_.breakpoints().count(kAndZero));
  EXPECT_TRUE(vm_.breakpoints().count(kReadEax));
  clock_.Advance(absl::Seconds(2));
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(1)).ok());
  EXPECT_FALSE(vm_.breakpoints().count(kAndZero));
  EXPECT_FALSE(vm_.breakpoints().count(kReadEax));
  EXPECT_TRUE(vm_.watchpoints().count({kDefaultTprVa, 4, WatchKind::kWrite}));
  QueueWatchpoint(0, kAndZero + 7);
  ASSERT_TRUE(manager_.Poll(absl::Milliseconds(10)).ok());
  EXPECT_EQ(Bytes(kAndZero, 2), (std::vector<uint8_t>{0x66, 0x90})) << "patched when it ran";
}

TEST_F(AndMemZeroManagerTest, MmioRefusedWhenAnAndWithAnotherImmediateRunsOften) {
  for (int i = 0; i < EnableRequest{}.learning_max_hits / 8; ++i) QueueWatchpoint(0, kAndOther + 7);
  EnableRequest request;
  request.strategy = Strategy::kMmio;
  absl::StatusOr<EnableReport> report = manager_.Enable(request);
  ASSERT_FALSE(report.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(report.status())) << report.status();
  EXPECT_THAT(std::string(report.status().message()), HasSubstr("mmio does not pay"));
  EXPECT_THAT(std::string(report.status().message()), HasSubstr("83 25 <tpr> 00"));
}

TEST_F(AndMemZeroManagerTest, Cr8SetsTheShadowFromTheRealTprAfterAnUnpatchedAnd) {
  vm_.SetFeatures({.cr8legacy = true, .qemu_vapic_active = false});
  EnableRequest request;
  request.strategy = Strategy::kCr8;
  ASSERT_TRUE(manager_.Enable(request).ok());
  ASSERT_EQ(vm_.watchpoints().size(), 1u);
  absl::StatusOr<ParsedBlob> before = GuestBlob();
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_EQ(before->cpus[1].shadow_tpr, 0x41);
  // vCPU 1 ran the unpatched and: the real TPR is 0 now, its flags are the and's (right
  // already: they do not depend on what it read) and no register changed.
  vm_.SetTpr(1, 0x00);
  vm_.Registers(1).eflags = 0x246;
  const VcpuRegisters regs = vm_.Registers(1);
  QueueWatchpoint(1, kAndZero + 7);
  absl::StatusOr<std::vector<ManagerEvent>> events = manager_.Poll(absl::Milliseconds(10));
  ASSERT_TRUE(events.ok()) << events.status();
  absl::StatusOr<ParsedBlob> after = GuestBlob();
  ASSERT_TRUE(after.ok()) << after.status();
  EXPECT_EQ(after->cpus[1].shadow_tpr, 0x00) << "shadow follows the write";
  EXPECT_EQ(after->cpus[0].shadow_tpr, 0x20) << "the other CPU's is untouched";
  EXPECT_EQ(vm_.Registers(1).eflags, regs.eflags);
  for (int r = 0; r < kGprCount; ++r) {
    EXPECT_EQ(vm_.Registers(1).reg(static_cast<Gpr>(r)), regs.reg(static_cast<Gpr>(r))) << r;
  }
  EXPECT_EQ(manager_.Status().strategy, Strategy::kCr8) << "a writer is no unfixable read";
  EXPECT_EQ(SiteAt(kAndZero)->site.state, SiteState::kApplied) << "and patched now";
}

}  // namespace
}  // namespace tprd::engine

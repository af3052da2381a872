// PlanTprAlias / AliasMapsTprPage over page tables built in a fake guest's memory: where mmio's
// second mapping of the APIC page goes, and when there is none.
#include "daemon/engine/tpr_alias.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_guest_vm.h"
#include "tests/fakes/page_table_builder.h"

namespace tprd::engine {
namespace {

using ::testing::HasSubstr;
using ::tprd::testing::FakeGuestVm;
using ::tprd::testing::PageFlags;
using ::tprd::testing::PageTableBuilder;
using Mode = PageTableBuilder::Mode;

constexpr uint64_t kPoolStart = 0x100000;
constexpr uint64_t kPoolEnd = 0x200000;
constexpr uint32_t kTpr = 0xFFFE0080;
constexpr uint64_t kApic = 0xFEE00000;

class TprAliasTest : public ::testing::TestWithParam<Mode> {
 protected:
  TprAliasTest()
      : vm_(FakeGuestVm::Options{.ram_bytes = 64u << 20}),
        memory_(vm_),
        builder_(vm_, GetParam(), kPoolStart, kPoolEnd) {}

  // Writes the plan's entry as tprd does.
  void Apply(const TprAliasPlan& plan) {
    if (plan.entry_size == 8) {
      vm_.BackdoorWrite32(plan.entry_pa, static_cast<uint32_t>(plan.entry));
      vm_.BackdoorWrite32(plan.entry_pa + 4, static_cast<uint32_t>(plan.entry >> 32));
    } else {
      vm_.BackdoorWrite32(plan.entry_pa, static_cast<uint32_t>(plan.entry));
    }
  }

  FakeGuestVm vm_;
  ::tprd::testing::FakeGuestVmBackdoorReader memory_;
  PageTableBuilder builder_;
};

TEST_P(TprAliasTest, TakesTheHighestFreeEntryOfTheTprsTableAndMapsTheApicThere) {
  ASSERT_TRUE(builder_.Map4K(0xFFFE0000, kApic).ok());
  ASSERT_TRUE(builder_.Map4K(0xFFFFF000, 0x300000).ok());  // the top entry is taken
  absl::StatusOr<TprAliasPlan> plan = PlanTprAlias(memory_, builder_.paging(), kTpr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->alias_va, 0xFFFFE000u);
  EXPECT_EQ(plan->apic_page, kApic);
  EXPECT_EQ(plan->entry_size, GetParam() == Mode::kPae ? 8 : 4);
  absl::StatusOr<bool> before = AliasMapsTprPage(memory_, builder_.paging(), kTpr, 0xFFFFE000);
  ASSERT_TRUE(before.ok());
  EXPECT_FALSE(*before);
  Apply(*plan);
  absl::StatusOr<Translation> t = TranslateVirtual(memory_, builder_.paging(), 0xFFFFE080);
  ASSERT_TRUE(t.ok());
  ASSERT_TRUE(t->present());
  EXPECT_EQ(t->physical_address, kApic + 0x80);
  EXPECT_TRUE(t->writable);
  absl::StatusOr<bool> after = AliasMapsTprPage(memory_, builder_.paging(), kTpr, 0xFFFFE000);
  ASSERT_TRUE(after.ok());
  EXPECT_TRUE(*after);
  absl::StatusOr<std::pair<uint64_t, int>> where =
      PageTableEntryOf(memory_, builder_.paging(), 0xFFFFE000);
  ASSERT_TRUE(where.ok());
  EXPECT_EQ(where->first, plan->entry_pa);
}

// A not-present entry with bits set may be the OS's own (a paged-out or transition PTE).
TEST_P(TprAliasTest, NeverTakesANotPresentEntryThatHoldsBits) {
  ASSERT_TRUE(builder_.Map4K(0xFFFE0000, kApic).ok());
  ASSERT_TRUE(builder_.Map4K(0xFFFFF000, 0x300000, PageFlags{.present = false}).ok());
  absl::StatusOr<TprAliasPlan> plan = PlanTprAlias(memory_, builder_.paging(), kTpr);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->alias_va, 0xFFFFE000u);
}

TEST_P(TprAliasTest, AFullTableIsARefusalWithTheReason) {
  const uint32_t region = GetParam() == Mode::kPae ? 0xFFE00000 : 0xFFC00000;
  for (uint32_t va = region; va != 0; va += 0x1000) {
    ASSERT_TRUE(builder_.Map4K(va, va == 0xFFFE0000 ? kApic : 0x300000).ok());
  }
  absl::StatusOr<TprAliasPlan> plan = PlanTprAlias(memory_, builder_.paging(), kTpr);
  ASSERT_FALSE(plan.ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(plan.status()));
  EXPECT_THAT(std::string(plan.status().message()), HasSubstr("no free entry"));
}

TEST_P(TprAliasTest, ALargePageHasNoTableToShare) {
  const uint32_t large = builder_.large_page_size();
  ASSERT_TRUE(builder_.MapLarge(0u - large, 0x400000).ok());
  absl::StatusOr<TprAliasPlan> plan = PlanTprAlias(memory_, builder_.paging(), kTpr);
  ASSERT_FALSE(plan.ok());
  EXPECT_THAT(std::string(plan.status().message()), HasSubstr("page"));
}

TEST_P(TprAliasTest, AnAliasToAnotherPageIsNoAlias) {
  ASSERT_TRUE(builder_.Map4K(0xFFFE0000, kApic).ok());
  ASSERT_TRUE(builder_.Map4K(0xFFFFE000, 0x300000).ok());
  absl::StatusOr<bool> maps = AliasMapsTprPage(memory_, builder_.paging(), kTpr, 0xFFFFE000);
  ASSERT_TRUE(maps.ok());
  EXPECT_FALSE(*maps);
}

INSTANTIATE_TEST_SUITE_P(Paging, TprAliasTest, ::testing::Values(Mode::kNonPae, Mode::kPae),
                         [](const auto& info) {
                           return info.param == Mode::kPae ? std::string("Pae")
                                                           : std::string("NonPae");
                         });

}  // namespace
}  // namespace tprd::engine

#include "daemon/engine/page_walker.h"

#include <cstdint>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_guest_vm.h"
#include "tests/fakes/page_table_builder.h"

namespace tprd::engine {
namespace {

using ::testing::ElementsAre;
using testing::FakeGuestVm;
using ::testing::Field;
using testing::PageFlags;
using testing::PageTableBuilder;
using Mode = PageTableBuilder::Mode;

constexpr uint64_t kPoolStart = 0x100000;
constexpr uint64_t kPoolEnd = 0x200000;

// Reads the fake's memory directly, so the walker is tested without run-state rules.
class BackdoorMemory : public PhysicalMemoryReader {
 public:
  explicit BackdoorMemory(const FakeGuestVm& vm) : vm_(vm) {}
  absl::Status ReadPhysical(uint64_t pa, absl::Span<uint8_t> out) override {
    ++reads;
    return vm_.BackdoorReadPhysical(pa, out);
  }
  int reads = 0;

 private:
  const FakeGuestVm& vm_;
};

class PageWalkerTest : public ::testing::TestWithParam<Mode> {
 protected:
  PageWalkerTest() : vm_(FakeGuestVm::Options{.ram_bytes = 64u << 20}), memory_(vm_) {}

  PageTableBuilder Builder() { return PageTableBuilder(vm_, GetParam(), kPoolStart, kPoolEnd); }

  Translation MustTranslate(const PageTableBuilder& b, uint32_t va) {
    absl::StatusOr<Translation> t = TranslateVirtual(memory_, b.paging(), va);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *t : Translation{};
  }

  FakeGuestVm vm_;
  BackdoorMemory memory_;
};

TEST_P(PageWalkerTest, SmallPageTranslatesWithOffsetAndFlags) {
  PageTableBuilder b = Builder();
  ASSERT_TRUE(b.Map4K(0x80123000, 0x00456000, {.writable = false, .user = true}).ok());
  const Translation t = MustTranslate(b, 0x80123ABC);
  ASSERT_TRUE(t.present());
  EXPECT_EQ(t.physical_address, 0x00456ABCu);
  EXPECT_EQ(t.page_size, 4096u);
  EXPECT_FALSE(t.writable);
  EXPECT_TRUE(t.user);
  EXPECT_FALSE(t.no_execute);
}

TEST_P(PageWalkerTest, LargePageTranslates) {
  PageTableBuilder b = Builder();
  const uint32_t size = b.large_page_size();
  ASSERT_TRUE(b.MapLarge(0xC0000000, 2 * uint64_t{size}).ok());
  const Translation t = MustTranslate(b, 0xC0000000 + size - 1);
  ASSERT_TRUE(t.present());
  EXPECT_EQ(t.physical_address, 2 * uint64_t{size} + size - 1);
  EXPECT_EQ(t.page_size, size);
  EXPECT_TRUE(t.writable);
  EXPECT_FALSE(t.user);
}

TEST_P(PageWalkerTest, NotPresentAtEachLevel) {
  PageTableBuilder b = Builder();
  // No directory entry at all.
  Translation t = MustTranslate(b, 0x40000000);
  EXPECT_EQ(t.fault, PageFault::kNotPresent);
  EXPECT_EQ(t.fault_level, GetParam() == Mode::kPae ? PagingLevel::kPdpte : PagingLevel::kPde);
  // Directory present, page table entry not.
  ASSERT_TRUE(b.Map4K(0x80001000, 0x1000).ok());
  t = MustTranslate(b, 0x80002000);
  EXPECT_EQ(t.fault, PageFault::kNotPresent);
  EXPECT_EQ(t.fault_level, PagingLevel::kPte);
  // Leaf marked not present.
  ASSERT_TRUE(b.Map4K(0x80003000, 0x3000, {.present = false}).ok());
  t = MustTranslate(b, 0x80003000);
  EXPECT_EQ(t.fault, PageFault::kNotPresent);
  EXPECT_EQ(t.fault_level, PagingLevel::kPte);
  // Clear the directory entry's present bit.
  absl::StatusOr<uint64_t> pde = b.EntryAddress(0x80001000, PagingLevel::kPde);
  ASSERT_TRUE(pde.ok());
  vm_.BackdoorWrite32(*pde, 0);
  t = MustTranslate(b, 0x80001000);
  EXPECT_EQ(t.fault, PageFault::kNotPresent);
  EXPECT_EQ(t.fault_level, PagingLevel::kPde);
}

TEST_P(PageWalkerTest, PermissionsAreTheAndOfAllLevels) {
  PageTableBuilder b = Builder();
  ASSERT_TRUE(b.Map4K(0x00400000, 0x5000, {.writable = true, .user = true}).ok());
  absl::StatusOr<uint64_t> pde = b.EntryAddress(0x00400000, PagingLevel::kPde);
  ASSERT_TRUE(pde.ok());
  const uint64_t value = vm_.BackdoorRead64(*pde);
  vm_.BackdoorWrite32(*pde, static_cast<uint32_t>(value & ~uint64_t{0x6}));  // clear R/W, U/S
  const Translation t = MustTranslate(b, 0x00400000);
  ASSERT_TRUE(t.present());
  EXPECT_FALSE(t.writable);
  EXPECT_FALSE(t.user);
}

TEST_P(PageWalkerTest, PagingOffIsIdentity) {
  PageTableBuilder b = Builder();
  PagingRegisters paging = b.paging();
  paging.cr0 &= ~kCr0Pg;
  absl::StatusOr<Translation> t = TranslateVirtual(memory_, paging, 0x12345678);
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->present());
  EXPECT_EQ(t->physical_address, 0x12345678u);
}

TEST_P(PageWalkerTest, TableOutsideRamIsAnErrorNotACrash) {
  PageTableBuilder b = Builder();
  ASSERT_TRUE(b.Map4K(0x80001000, 0x1000).ok());
  absl::StatusOr<uint64_t> pde = b.EntryAddress(0x80001000, PagingLevel::kPde);
  ASSERT_TRUE(pde.ok());
  // Point the page table at 3 GiB physical: no RAM there.
  vm_.BackdoorWrite32(*pde, 0xC0000000u | 0x7);
  absl::StatusOr<Translation> t = TranslateVirtual(memory_, b.paging(), 0x80001000);
  EXPECT_FALSE(t.ok());
  EXPECT_EQ(t.status().code(), absl::StatusCode::kOutOfRange);
  // And a CR3 outside RAM.
  PagingRegisters paging = b.paging();
  paging.cr3 = 0xF0000000;
  EXPECT_FALSE(TranslateVirtual(memory_, paging, 0x80001000).ok());
}

TEST_P(PageWalkerTest, ReverseLookupFindsEveryAliasInRange) {
  PageTableBuilder b = Builder();
  ASSERT_TRUE(b.Map4K(0x80010000, 0x7000).ok());
  ASSERT_TRUE(b.Map4K(0x90020000, 0x7000, {.writable = false}).ok());
  ASSERT_TRUE(b.Map4K(0x00030000, 0x7000).ok());  // user-half alias
  ASSERT_TRUE(b.Map4K(0x80011000, 0x8000).ok());  // a different page
  absl::StatusOr<ReverseLookupResult> all = FindVirtualMappings(memory_, b.paging(), 0x7123);
  ASSERT_TRUE(all.ok()) << all.status();
  EXPECT_THAT(all->mappings, ElementsAre(Field(&VirtualMapping::va, 0x00030000u),
                                         Field(&VirtualMapping::va, 0x80010000u),
                                         Field(&VirtualMapping::va, 0x90020000u)));
  EXPECT_FALSE(all->mappings[2].translation.writable);
  absl::StatusOr<ReverseLookupResult> kernel =
      FindVirtualMappings(memory_, b.paging(), 0x7000, 0x80000000, 0xFFFFFFFF);
  ASSERT_TRUE(kernel.ok());
  EXPECT_THAT(kernel->mappings, ElementsAre(Field(&VirtualMapping::va, 0x80010000u),
                                            Field(&VirtualMapping::va, 0x90020000u)));
}

TEST_P(PageWalkerTest, ReverseLookupInsideLargePage) {
  PageTableBuilder b = Builder();
  const uint32_t size = b.large_page_size();
  ASSERT_TRUE(b.MapLarge(0x80000000, 0).ok());
  absl::StatusOr<ReverseLookupResult> r = FindVirtualMappings(memory_, b.paging(), size - 4096);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->mappings.size(), 1u);
  EXPECT_EQ(r->mappings[0].va, 0x80000000u + size - 4096);
  EXPECT_EQ(r->mappings[0].translation.page_size, size);
}

TEST_P(PageWalkerTest, ReverseLookupSkipsBrokenTablesAndCountsThem) {
  PageTableBuilder b = Builder();
  ASSERT_TRUE(b.Map4K(0x80010000, 0x7000).ok());
  ASSERT_TRUE(b.Map4K(0xA0000000, 0x9000).ok());
  absl::StatusOr<uint64_t> pde = b.EntryAddress(0xA0000000, PagingLevel::kPde);
  ASSERT_TRUE(pde.ok());
  vm_.BackdoorWrite32(*pde, 0xC0000000u | 0x7);  // table outside RAM
  absl::StatusOr<ReverseLookupResult> r = FindVirtualMappings(memory_, b.paging(), 0x7000);
  ASSERT_TRUE(r.ok());
  EXPECT_THAT(r->mappings, ElementsAre(Field(&VirtualMapping::va, 0x80010000u)));
  EXPECT_EQ(r->skipped_entries, 1);
}

TEST_P(PageWalkerTest, ReverseLookupReadsOnlyPresentTables) {
  PageTableBuilder b = Builder();
  ASSERT_TRUE(b.Map4K(0x80010000, 0x7000).ok());
  memory_.reads = 0;
  ASSERT_TRUE(FindVirtualMappings(memory_, b.paging(), 0x7000).ok());
  // Root (+ one directory under PAE) + the single page table.
  EXPECT_EQ(memory_.reads, GetParam() == Mode::kPae ? 3 : 2);
}

INSTANTIATE_TEST_SUITE_P(BothModes, PageWalkerTest, ::testing::Values(Mode::kNonPae, Mode::kPae),
                         [](const auto& info) {
                           return info.param == Mode::kPae ? std::string("Pae")
                                                           : std::string("NonPae");
                         });

// --- Mode-specific behaviour. ---

class PaeOnlyTest : public ::testing::Test {
 protected:
  PaeOnlyTest()
      : vm_(FakeGuestVm::Options{.ram_bytes = 64u << 20}),
        memory_(vm_),
        b_(vm_, Mode::kPae, kPoolStart, kPoolEnd) {}
  FakeGuestVm vm_;
  BackdoorMemory memory_;
  PageTableBuilder b_;
};

TEST_F(PaeOnlyTest, NxCountsOnlyWithEferNxe) {
  ASSERT_TRUE(b_.Map4K(0x80001000, 0x1000, {.no_execute = true}).ok());
  absl::StatusOr<Translation> t = TranslateVirtual(memory_, b_.paging(), 0x80001000);
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->present());
  EXPECT_TRUE(t->no_execute);
  // Without NXE bit 63 is reserved.
  PagingRegisters no_nxe = b_.paging();
  no_nxe.efer = 0;
  t = TranslateVirtual(memory_, no_nxe, 0x80001000);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->fault, PageFault::kReservedBits);
  EXPECT_EQ(t->fault_level, PagingLevel::kPte);
}

TEST_F(PaeOnlyTest, NxOnDirectoryAppliesToThePage) {
  ASSERT_TRUE(b_.Map4K(0x80001000, 0x1000).ok());
  absl::StatusOr<uint64_t> pde = b_.EntryAddress(0x80001000, PagingLevel::kPde);
  ASSERT_TRUE(pde.ok());
  vm_.BackdoorWrite64(*pde, vm_.BackdoorRead64(*pde) | (uint64_t{1} << 63));
  absl::StatusOr<Translation> t = TranslateVirtual(memory_, b_.paging(), 0x80001000);
  ASSERT_TRUE(t.ok());
  EXPECT_TRUE(t->no_execute);
}

TEST_F(PaeOnlyTest, ReservedBitsAreFaultsAtEachLevel) {
  ASSERT_TRUE(b_.Map4K(0x80001000, 0x1000).ok());
  ASSERT_TRUE(b_.MapLarge(0x80200000, 0x200000).ok());
  // PDPTE with a reserved bit (bit 1).
  absl::StatusOr<uint64_t> pdpte = b_.EntryAddress(0x80001000, PagingLevel::kPdpte);
  ASSERT_TRUE(pdpte.ok());
  const uint64_t saved = vm_.BackdoorRead64(*pdpte);
  vm_.BackdoorWrite64(*pdpte, saved | 0x2);
  absl::StatusOr<Translation> t = TranslateVirtual(memory_, b_.paging(), 0x80001000);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->fault, PageFault::kReservedBits);
  EXPECT_EQ(t->fault_level, PagingLevel::kPdpte);
  vm_.BackdoorWrite64(*pdpte, saved);
  // 2 MiB page with bit 13 set (reserved in a large PDE).
  absl::StatusOr<uint64_t> pde = b_.EntryAddress(0x80200000, PagingLevel::kPde);
  ASSERT_TRUE(pde.ok());
  vm_.BackdoorWrite64(*pde, vm_.BackdoorRead64(*pde) | (1u << 13));
  t = TranslateVirtual(memory_, b_.paging(), 0x80200000);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->fault, PageFault::kReservedBits);
  EXPECT_EQ(t->fault_level, PagingLevel::kPde);
  // A physical address beyond MAXPHYADDR (36 bits) in a PTE.
  absl::StatusOr<uint64_t> pte = b_.EntryAddress(0x80001000, PagingLevel::kPte);
  ASSERT_TRUE(pte.ok());
  vm_.BackdoorWrite64(*pte, vm_.BackdoorRead64(*pte) | (uint64_t{1} << 40));
  t = TranslateVirtual(memory_, b_.paging(), 0x80001000);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->fault, PageFault::kReservedBits);
}

TEST_F(PaeOnlyTest, PhysicalAddressAbove4GiB) {
  ASSERT_TRUE(b_.Map4K(0x80001000, uint64_t{0x3} << 32 | 0x5000).ok());
  absl::StatusOr<Translation> t = TranslateVirtual(memory_, b_.paging(), 0x80001010);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->physical_address, (uint64_t{0x3} << 32) | 0x5010);
}

TEST(NonPaeTest, PsIgnoredWithoutCr4Pse) {
  FakeGuestVm vm(FakeGuestVm::Options{.ram_bytes = 64u << 20});
  BackdoorMemory memory(vm);
  PageTableBuilder b(vm, Mode::kNonPae, kPoolStart, kPoolEnd);
  ASSERT_TRUE(b.MapLarge(0x80000000, 0x400000).ok());
  PagingRegisters paging = b.paging();
  paging.cr4 &= ~kCr4Pse;
  // The PDE is then a page-table pointer to 0x400000, which holds zeros: not present.
  absl::StatusOr<Translation> t = TranslateVirtual(memory, paging, 0x80000000);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->fault, PageFault::kNotPresent);
  EXPECT_EQ(t->fault_level, PagingLevel::kPte);
}

TEST(NonPaeTest, Pse36HighPhysicalBits) {
  FakeGuestVm vm(FakeGuestVm::Options{.ram_bytes = 64u << 20});
  BackdoorMemory memory(vm);
  PageTableBuilder b(vm, Mode::kNonPae, kPoolStart, kPoolEnd);
  ASSERT_TRUE(b.MapLarge(0x80000000, (uint64_t{0x5} << 32) | 0x800000).ok());
  absl::StatusOr<Translation> t = TranslateVirtual(memory, b.paging(), 0x80000123);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->physical_address, (uint64_t{0x5} << 32) | 0x800123);
  // Bit 21 of a 4 MiB PDE is reserved.
  absl::StatusOr<uint64_t> pde = b.EntryAddress(0x80000000, PagingLevel::kPde);
  ASSERT_TRUE(pde.ok());
  vm.BackdoorWrite32(*pde, static_cast<uint32_t>(vm.BackdoorRead64(*pde)) | (1u << 21));
  t = TranslateVirtual(memory, b.paging(), 0x80000123);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->fault, PageFault::kReservedBits);
}

TEST(XpLikeLayoutTest, KernelAndApicMappings) {
  for (bool pae : {false, true}) {
    for (bool large : {false, true}) {
      SCOPED_TRACE(::testing::Message() << "pae=" << pae << " large=" << large);
      testing::XpLikeOptions options{.pae = pae, .large_pages = large};
      FakeGuestVm vm(testing::XpLikeVmOptions(options));
      absl::StatusOr<PageTableBuilder> b = testing::BuildXpLikeLayout(vm, options);
      ASSERT_TRUE(b.ok()) << b.status();
      BackdoorMemory memory(vm);
      absl::StatusOr<Translation> t = TranslateVirtual(memory, b->paging(), 0x80C01234);
      ASSERT_TRUE(t.ok());
      EXPECT_EQ(t->physical_address, 0xC01234u);
      t = TranslateVirtual(memory, b->paging(), testing::kXpApicVa + 0x80);
      ASSERT_TRUE(t.ok());
      EXPECT_EQ(t->physical_address, testing::kApicPhysical + 0x80);
      absl::StatusOr<ReverseLookupResult> apic =
          FindVirtualMappings(memory, b->paging(), testing::kApicPhysical, 0x80000000, 0xFFFFFFFF);
      ASSERT_TRUE(apic.ok());
      EXPECT_THAT(apic->mappings, ElementsAre(Field(&VirtualMapping::va, testing::kXpApicVa)));
    }
  }
}

}  // namespace
}  // namespace tprd::engine

#include "daemon/engine/guest_site_table.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_guest_vm.h"
#include "tests/fakes/page_table_builder.h"

namespace tprd::engine {
namespace {

using testing::FakeGuestVm;
using ::testing::HasSubstr;

constexpr uint32_t kBlobVa = 0x800E8000;
constexpr uint64_t kBlobPa = 0xE8000;

Site MovEdiSite(uint32_t id, SiteState state) {
  Site site;
  site.id = id;
  site.address = 0x80101000 + id;
  site.form = Form::kMovRegFromMem;
  site.reg = Gpr::kEdi;
  site.original = {0x8B, 0x3D, 0x80, 0x00, 0xFE, 0xFF};
  site.patched = {0x90, 0xE8, 0x11, 0x22, 0x33, 0x44};
  site.state = state;
  return site;
}

class GuestSiteTableTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto layout = testing::BuildXpLikeLayout(vm_, {});
    ASSERT_TRUE(layout.ok()) << layout.status();
    BlobPlacement placement;
    placement.va = kBlobVa;
    placement.pa = kBlobPa;
    placement.strategy = Strategy::kMmio;
    placement.cpu_count = 1;
    auto blob = InstantiateBlob(placement);
    ASSERT_TRUE(blob.ok()) << blob.status();
    blob_ = *blob;
    ASSERT_TRUE(vm_.BackdoorWritePhysical(kBlobPa, blob_.bytes).ok());
    ASSERT_TRUE(vm_.Stop().ok());
    vm_.ClearWriteLog();
  }

  std::vector<uint8_t> EntryBytes(uint32_t id) {
    return vm_.BackdoorPhysicalBytes(kBlobPa + (blob_.addresses.SiteEntry(id) - kBlobVa),
                                     kSiteEntrySize);
  }

  FakeGuestVm vm_{
      FakeGuestVm::Options{.ram_bytes = 32u << 20, .vcpu_count = 1, .start_running = false}};
  BlobInstance blob_;
};

TEST_F(GuestSiteTableTest, RecordsEachStateAtTheSitesSlotAndReadsItBack) {
  GuestSiteTable table(vm_, 0, kBlobVa);
  const Site pending = MovEdiSite(7, SiteState::kPending);
  ASSERT_TRUE(table.RecordSite(pending).ok());
  auto expected = EncodeSiteEntry(pending);
  ASSERT_TRUE(expected.ok());
  EXPECT_EQ(EntryBytes(7), std::vector<uint8_t>(expected->begin(), expected->end()));
  ASSERT_EQ(vm_.write_log().size(), 1u);
  EXPECT_EQ(vm_.write_log()[0].address, blob_.addresses.SiteEntry(7));
  EXPECT_EQ(vm_.op_count(FakeGuestVm::Op::kReadMemory), 1);  // the read-back

  ASSERT_TRUE(table.RecordSite(MovEdiSite(7, SiteState::kApplied)).ok());
  auto sites = ReadGuestSiteTable(vm_, 0, kBlobVa);
  ASSERT_TRUE(sites.ok()) << sites.status();
  ASSERT_EQ(sites->size(), 1u);
  EXPECT_EQ((*sites)[0].id, 7u);
  EXPECT_EQ((*sites)[0].state, SiteState::kApplied);
  EXPECT_EQ((*sites)[0].reg, Gpr::kEdi);
  EXPECT_EQ((*sites)[0].original, pending.original);
  EXPECT_EQ((*sites)[0].patched, pending.patched);
  // Nothing outside the entry changed: the rest of the blob is as installed.
  auto all = vm_.BackdoorVirtualBytes(0, kBlobVa, kBlobSize);
  ASSERT_TRUE(all.ok());
  for (uint32_t i = 0; i < kBlobSize; ++i) {
    const uint32_t va = kBlobVa + i;
    if (va >= blob_.addresses.SiteEntry(7) && va < blob_.addresses.SiteEntry(8)) continue;
    ASSERT_EQ((*all)[i], blob_.bytes[i]) << "offset " << i;
  }
}

TEST_F(GuestSiteTableTest, AdoptReadsEverySiteBack) {
  GuestSiteTable table(vm_, 0, kBlobVa);
  for (uint32_t id : {0u, 1u, 200u, kBlobMaxSites - 1}) {
    ASSERT_TRUE(table.RecordSite(MovEdiSite(id, SiteState::kApplied)).ok());
  }
  ASSERT_TRUE(table.RecordSite(MovEdiSite(1, SiteState::kRolledBack)).ok());
  auto sites = ReadGuestSiteTable(vm_, 0, kBlobVa);
  ASSERT_TRUE(sites.ok()) << sites.status();
  ASSERT_EQ(sites->size(), 4u);
  EXPECT_EQ((*sites)[1].state, SiteState::kRolledBack);
  EXPECT_EQ((*sites)[3].id, kBlobMaxSites - 1);
  EXPECT_EQ((*sites)[3].address, 0x80101000 + kBlobMaxSites - 1);
}

// A batch writes each run of consecutive ids in one write and reads it back in one read; the
// table then reads as the same records made one by one would leave it.
TEST_F(GuestSiteTableTest, ABatchWritesEachRunOfConsecutiveIdsOnce) {
  GuestSiteTable table(vm_, 0, kBlobVa);
  const std::vector<Site> batch = {
      MovEdiSite(4, SiteState::kPending), MovEdiSite(2, SiteState::kPending),
      MovEdiSite(3, SiteState::kPending), MovEdiSite(9, SiteState::kPending),
      MovEdiSite(3, SiteState::kApplied)};  // the last record of id 3 wins
  ASSERT_TRUE(table.RecordSites(batch).ok());
  ASSERT_EQ(vm_.write_log().size(), 2u) << "ids 2-4, then 9";
  EXPECT_EQ(vm_.write_log()[0].address, blob_.addresses.SiteEntry(2));
  EXPECT_EQ(vm_.write_log()[0].bytes.size(), 3 * kSiteEntrySize);
  EXPECT_EQ(vm_.write_log()[1].address, blob_.addresses.SiteEntry(9));
  auto sites = ReadGuestSiteTable(vm_, 0, kBlobVa);
  ASSERT_TRUE(sites.ok()) << sites.status();
  ASSERT_EQ(sites->size(), 4u);
  EXPECT_EQ((*sites)[0].id, 2u);
  EXPECT_EQ((*sites)[1].state, SiteState::kApplied);
  EXPECT_EQ((*sites)[2].state, SiteState::kPending);
  EXPECT_EQ((*sites)[3].id, 9u);
}

TEST_F(GuestSiteTableTest, ABatchWithARecordItCannotStoreWritesNothing) {
  GuestSiteTable table(vm_, 0, kBlobVa);
  const std::vector<Site> batch = {MovEdiSite(1, SiteState::kPending),
                                   MovEdiSite(kBlobMaxSites, SiteState::kPending)};
  EXPECT_EQ(table.RecordSites(batch).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(vm_.write_log().empty());
}

TEST_F(GuestSiteTableTest, RefusesSitesItCannotStoreWithoutWriting) {
  GuestSiteTable table(vm_, 0, kBlobVa);
  auto too_far = table.RecordSite(MovEdiSite(kBlobMaxSites, SiteState::kPending));
  EXPECT_EQ(too_far.code(), absl::StatusCode::kInvalidArgument);
  Site torn = MovEdiSite(3, SiteState::kPending);
  torn.patched.pop_back();
  EXPECT_FALSE(table.RecordSite(torn).ok());
  EXPECT_TRUE(vm_.write_log().empty());
}

TEST_F(GuestSiteTableTest, AFailedWriteOrReadIsReported) {
  GuestSiteTable table(vm_, 0, kBlobVa);
  vm_.FailNthWrite(1);
  auto write_failed = table.RecordSite(MovEdiSite(2, SiteState::kPending));
  EXPECT_EQ(write_failed.code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(std::string(write_failed.message()), HasSubstr("site 2"));
  vm_.FailNthRead(1);
  EXPECT_FALSE(table.RecordSite(MovEdiSite(2, SiteState::kPending)).ok());
}

TEST_F(GuestSiteTableTest, ARecordThatReadsBackDifferentFails) {
  GuestSiteTable table(vm_, 0, kBlobVa);
  const uint64_t state_pa =
      kBlobPa + (blob_.addresses.SiteEntry(5) - kBlobVa) + TPRD_BLOB_SITE_STATE;
  vm_.AfterNthWrite(1, [state_pa](FakeGuestVm& vm) {
    const uint8_t other = static_cast<uint8_t>(SiteState::kRolledBack);
    ASSERT_TRUE(vm.BackdoorWritePhysical(state_pa, {&other, 1}).ok());
  });
  auto status = table.RecordSite(MovEdiSite(5, SiteState::kApplied));
  EXPECT_EQ(status.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(status.message()), HasSubstr("reads back different"));
}

TEST_F(GuestSiteTableTest, ReadingRejectsACorruptOrMisplacedBlob) {
  // The same blob copied one page higher: its header still says kBlobVa.
  ASSERT_TRUE(vm_.BackdoorWritePhysical(kBlobPa + 0x4000, blob_.bytes).ok());
  auto misplaced = ReadGuestBlob(vm_, 0, kBlobVa + 0x4000);
  EXPECT_EQ(misplaced.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(misplaced.status().message()), HasSubstr("header says"));

  const uint8_t flipped = blob_.bytes[TPRD_BLOB_CODE_START] ^ 0xFF;
  ASSERT_TRUE(vm_.BackdoorWritePhysical(kBlobPa + TPRD_BLOB_CODE_START, {&flipped, 1}).ok());
  auto corrupt = ReadGuestSiteTable(vm_, 0, kBlobVa);
  EXPECT_EQ(corrupt.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(corrupt.status().message()), HasSubstr("checksum"));

  EXPECT_FALSE(ReadGuestBlob(vm_, 0, 0x70000000).ok());  // not mapped
}

}  // namespace
}  // namespace tprd::engine

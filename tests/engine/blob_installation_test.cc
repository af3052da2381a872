// BlobInstallation against a FakeGuestVm laid out like 32-bit Windows: a fresh guest holds no
// blob, an installed one is found again (and a damaged one is not trusted), per-CPU entries and
// the strategy word are written and read back.
#include "daemon/engine/blob_installation.h"

#include <cstring>
#include <vector>

#include "daemon/engine/guest_profile.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_guest_vm.h"
#include "tests/fakes/page_table_builder.h"

namespace tprd::engine {
namespace {

using ::tprd::testing::FakeGuestVm;

class BlobInstallationTest : public ::testing::Test {
 protected:
  BlobInstallationTest() : vm_(testing::XpLikeVmOptions(Layout())) {}

  static testing::XpLikeOptions Layout() {
    testing::XpLikeOptions xp;
    xp.vcpu_count = 2;
    return xp;
  }

  void SetUp() override {
    ASSERT_TRUE(testing::BuildXpLikeLayout(vm_, Layout()).ok());
    ASSERT_TRUE(testing::SetXpLikeKpcrs(vm_, Layout().vcpu_count).ok());
    vm_.SetTpr(0, 0x20);
    vm_.SetTpr(1, 0x41);
    ASSERT_TRUE(vm_.Stop().ok());  // the blob is written with the guest stopped
    absl::StatusOr<GuestProfile> profile = CheckGuestProfile(vm_, kBlobMaxCpus);
    ASSERT_TRUE(profile.ok()) << profile.status();
    profile_ = *profile;
  }

  // Find, counting the blobs it did not trust.
  absl::StatusOr<std::optional<ParsedBlob>> Find(BlobInstallation& blob) {
    return blob.Find([this](const absl::Status&) { ++skipped_; });
  }

  FakeGuestVm vm_;
  std::optional<GuestProfile> profile_;
  int skipped_ = 0;
};

TEST_F(BlobInstallationTest, AFreshGuestHoldsNoBlob) {
  BlobInstallation blob(vm_);
  absl::StatusOr<std::optional<ParsedBlob>> found = Find(blob);
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_FALSE(found->has_value());
  EXPECT_FALSE(blob.installed());
  EXPECT_EQ(skipped_, 0);
}

TEST_F(BlobInstallationTest, AnInstalledBlobIsFoundAndTakenOver) {
  BlobInstallation blob(vm_);
  ASSERT_TRUE(blob.Install(*profile_, kBlobDefaultGuardPeriod).ok());
  ASSERT_TRUE(blob.installed());

  BlobInstallation later(vm_);  // a later session of tprd
  absl::StatusOr<std::optional<ParsedBlob>> found = Find(later);
  ASSERT_TRUE(found.ok()) << found.status();
  ASSERT_TRUE(found->has_value());
  EXPECT_EQ((*found)->placement.pa, blob.placement().pa);
  EXPECT_EQ((*found)->placement.strategy, Strategy::kExact);
  later.Take(**found);
  EXPECT_TRUE(later.installed());
  EXPECT_EQ(later.addresses().strategy_word, blob.addresses().strategy_word);
  EXPECT_EQ(later.handlers().set_tpr, blob.handlers().set_tpr);
}

TEST_F(BlobInstallationTest, ADamagedBlobIsNotTrusted) {
  BlobInstallation blob(vm_);
  ASSERT_TRUE(blob.Install(*profile_, kBlobDefaultGuardPeriod).ok());
  const uint64_t code_pa =
      blob.placement().pa + (blob.addresses().code_start - blob.addresses().va);
  const uint8_t damaged = static_cast<uint8_t>(vm_.BackdoorPhysicalBytes(code_pa, 1).at(0) ^ 0xFF);
  ASSERT_TRUE(vm_.BackdoorWritePhysical(code_pa, {&damaged, 1}).ok());

  BlobInstallation later(vm_);
  absl::StatusOr<std::optional<ParsedBlob>> found = Find(later);
  ASSERT_TRUE(found.ok()) << found.status();
  EXPECT_FALSE(found->has_value());
  EXPECT_EQ(skipped_, 1);
}

TEST_F(BlobInstallationTest, PerCpuEntriesAndTheStrategyWordAreWritten) {
  BlobInstallation blob(vm_);
  EXPECT_TRUE(absl::IsFailedPrecondition(blob.InitPerCpu(profile_, /*from_real_tpr=*/true)));
  ASSERT_TRUE(blob.Install(*profile_, kBlobDefaultGuardPeriod).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(blob.InitPerCpu(std::nullopt, /*from_real_tpr=*/true)));

  ASSERT_TRUE(blob.InitPerCpu(profile_, /*from_real_tpr=*/true).ok());
  std::optional<PerCpuEntry> first = blob.ReadPerCpuEntry(0);
  std::optional<PerCpuEntry> second = blob.ReadPerCpuEntry(1);
  ASSERT_TRUE(first && second);
  EXPECT_TRUE(first->enabled);
  EXPECT_EQ(first->shadow_tpr, 0x20);
  EXPECT_EQ(second->shadow_tpr, 0x41);

  ASSERT_TRUE(blob.WriteStrategyWord(Strategy::kMmio).ok());
  std::vector<uint8_t> word =
      vm_.BackdoorPhysicalBytes(blob.DataBlockPhysical(blob.addresses().strategy_word), 4);
  ASSERT_EQ(word.size(), 4u);
  uint32_t value = 0;
  std::memcpy(&value, word.data(), 4);
  EXPECT_EQ(value, static_cast<uint32_t>(Strategy::kMmio));
}

TEST_F(BlobInstallationTest, AWriteThatDoesNotReadBackIsDataLoss) {
  BlobInstallation blob(vm_);
  ASSERT_TRUE(blob.Install(*profile_, kBlobDefaultGuardPeriod).ok());
  const uint64_t word_pa = blob.DataBlockPhysical(blob.addresses().strategy_word);
  vm_.AfterNthWrite(1, [word_pa](FakeGuestVm& vm) { vm.BackdoorWrite32(word_pa, 7); });
  absl::Status s = blob.WriteStrategyWord(Strategy::kCr8);
  EXPECT_TRUE(absl::IsDataLoss(s)) << s;
}

}  // namespace
}  // namespace tprd::engine

// Placement helpers that need no guest: finding pages that claim to hold a blob.
#include "daemon/engine/placement.h"

#include <cstring>
#include <vector>

#include "daemon/engine/blob.h"
#include "gtest/gtest.h"

namespace tprd::engine {
namespace {

void PutMagic(std::vector<uint8_t>& window, size_t offset) {
  const uint32_t magic = TPRD_BLOB_MAGIC;
  std::memcpy(window.data() + offset, &magic, 4);
}

TEST(PagesWithBlobMagicTest, NamesEveryPageThatStartsWithTheMagicAndNoOther) {
  std::vector<uint8_t> window(kLegacyWindowEnd - kLegacyWindowFirst);
  EXPECT_TRUE(PagesWithBlobMagic(window).empty());
  PutMagic(window, 0);
  PutMagic(window, 0x3000);
  PutMagic(window, 0x5004);                // not at a page start: not a blob
  PutMagic(window, window.size() - 4096);  // the window's last page
  EXPECT_EQ(PagesWithBlobMagic(window),
            (std::vector<uint32_t>{kLegacyWindowFirst, kLegacyWindowFirst + 0x3000,
                                   kLegacyWindowEnd - 4096}));
}

TEST(PagesWithBlobMagicTest, AShortWindowIsReadOnlyAsFarAsItGoes) {
  std::vector<uint8_t> window(4096 + 3);  // the second page is too short for a magic
  PutMagic(window, 0);
  EXPECT_EQ(PagesWithBlobMagic(window), std::vector<uint32_t>{kLegacyWindowFirst});
}

}  // namespace
}  // namespace tprd::engine

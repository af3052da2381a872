// The one hex codec (daemon/engine/hex.h): what journal files, gdb packets, JSON and messages
// carry must not change by a byte.
#include "daemon/engine/hex.h"

#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "gtest/gtest.h"

namespace tprd::engine {
namespace {

TEST(HexTest, EncodesLowerCaseWithoutOrWithASeparator) {
  const std::vector<uint8_t> bytes = {0xa1, 0x80, 0x00, 0xfe, 0xff};
  EXPECT_EQ(HexEncode(bytes), "a18000feff");
  EXPECT_EQ(HexEncode(bytes, " "), "a1 80 00 fe ff");
  EXPECT_EQ(HexEncode({}), "");
  EXPECT_EQ(HexEncode({}, " "), "");
  EXPECT_EQ(HexEncode(std::vector<uint8_t>{0x0f}, " "), "0f");
}

TEST(HexTest, EncodesEveryByteAsAbseilDoes) {
  std::vector<uint8_t> all;
  for (int b = 0; b < 256; ++b) all.push_back(static_cast<uint8_t>(b));
  EXPECT_EQ(HexEncode(all), absl::BytesToHexString(std::string(all.begin(), all.end())));
  absl::StatusOr<std::vector<uint8_t>> back = HexDecode(HexEncode(all));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back, all);
}

TEST(HexTest, DigitValues) {
  EXPECT_EQ(HexDigitValue('0'), 0);
  EXPECT_EQ(HexDigitValue('9'), 9);
  EXPECT_EQ(HexDigitValue('a'), 10);
  EXPECT_EQ(HexDigitValue('F'), 15);
  for (char c : std::string("gG/:@`x -\0", 10)) EXPECT_EQ(HexDigitValue(c), -1) << int(c);
}

TEST(HexTest, DecodesEitherCaseAndSaysWhatIsWrong) {
  EXPECT_EQ(*HexDecode("007F80ff"), (std::vector<uint8_t>{0x00, 0x7f, 0x80, 0xff}));
  EXPECT_TRUE(HexDecode("")->empty());
  EXPECT_EQ(HexDecode("abc").status().message(), "odd-length hex string of 3");
  EXPECT_EQ(HexDecode("00zz").status().message(), "non-hex character at offset 2");
  EXPECT_EQ(HexDecode("000z").status().message(), "non-hex character at offset 2");
  EXPECT_FALSE(HexDecode("0x12").ok());
  EXPECT_FALSE(HexDecode("a1 80").ok());
  EXPECT_FALSE(HexDecode("+1").ok());
}

}  // namespace
}  // namespace tprd::engine

#include "daemon/engine/backward_decoder.h"

#include <gtest/gtest.h>

#include <vector>

namespace tprd::engine {
namespace {

#define TPR 0x80, 0x00, 0xFE, 0xFF

using Outcome = BackwardDecodeResult::Outcome;

// Guest code at `base`: 16 nops, then `instruction`, then a ret. Returns the trap pc (the
// address after the instruction).
struct Code {
  uint32_t base = 0x80010000;
  std::vector<uint8_t> bytes;
  uint32_t pc = 0;
};

Code NopsThen(const std::vector<uint8_t>& instruction) {
  Code code;
  code.bytes.assign(16, 0x90);
  code.bytes.insert(code.bytes.end(), instruction.begin(), instruction.end());
  code.pc = code.base + static_cast<uint32_t>(code.bytes.size());
  code.bytes.push_back(0xC3);
  return code;
}

TEST(BackwardDecoderTest, FindsEachFormByItsLength) {
  const std::vector<std::vector<uint8_t>> instructions = {
      {0xA1, TPR},       {0xA3, TPR},       {0x8B, 0x0D, TPR},
      {0x89, 0x3D, TPR}, {0xFF, 0x35, TPR}, {0xC7, 0x05, TPR, 0x41, 0, 0, 0}};
  for (const auto& instruction : instructions) {
    const Code code = NopsThen(instruction);
    const auto result = DecodeBackward(code.pc, SpanByteReader(code.bytes, code.base));
    ASSERT_TRUE(result.ok()) << result.status();
    EXPECT_EQ(result->outcome, Outcome::kFound) << result->detail;
    ASSERT_TRUE(result->start.has_value());
    EXPECT_EQ(*result->start, code.pc - instruction.size());
    EXPECT_TRUE(result->classification.patchable);
    EXPECT_EQ(result->classification.length, instruction.size());
    EXPECT_TRUE(result->reason.empty());
  }
}

TEST(BackwardDecoderTest, FoundButNotPatchableKeepsTheReason) {
  const Code code = NopsThen({0x8B, 0x80, TPR});  // mov eax,[eax+tpr]
  const auto result = DecodeBackward(code.pc, SpanByteReader(code.bytes, code.base));
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->outcome, Outcome::kFound) << result->detail;
  EXPECT_EQ(*result->start, code.pc - 6);
  EXPECT_FALSE(result->classification.patchable);
  EXPECT_EQ(result->classification.reason, RejectReason::kRegisterRelative);
}

TEST(BackwardDecoderTest, NoneWhenNothingNamesTheTpr) {
  const Code code = NopsThen({0xA1, 0x00, 0x10, 0x00, 0x80});
  const auto result = DecodeBackward(code.pc, SpanByteReader(code.bytes, code.base));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->outcome, Outcome::kNone);
  EXPECT_EQ(result->reason, "none");
  EXPECT_TRUE(result->candidates.empty());
  EXPECT_FALSE(result->start.has_value());
  EXPECT_FALSE(result->detail.empty());
}

TEST(BackwardDecoderTest, NoneWhenTheAccessDoesNotEndAtPc) {
  const Code code = NopsThen({0xA1, TPR});
  const auto result = DecodeBackward(code.pc + 1, SpanByteReader(code.bytes, code.base));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->outcome, Outcome::kNone);
}

TEST(BackwardDecoderTest, AmbiguousListsEveryCandidate) {
  // ds: mov eax,[tpr] ends at pc, and so does the unprefixed mov one byte later.
  const Code code = NopsThen({0x3E, 0xA1, TPR});
  const auto result = DecodeBackward(code.pc, SpanByteReader(code.bytes, code.base));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->outcome, Outcome::kAmbiguous);
  EXPECT_EQ(result->reason, "ambiguous");
  EXPECT_EQ(result->candidates, (std::vector<uint32_t>{code.pc - 6, code.pc - 5}));
  EXPECT_FALSE(result->start.has_value());
  EXPECT_NE(result->detail.find("0x8001001"), std::string::npos) << result->detail;
}

TEST(BackwardDecoderTest, UnreadablePreviousPageOnlyRemovesItsStarts) {
  // The instruction starts exactly at a page boundary; the page before is not mapped.
  const uint32_t page = 0x80011000;
  const std::vector<uint8_t> bytes = {0xA1, TPR, 0xC3};
  const auto result = DecodeBackward(page + 5, SpanByteReader(bytes, page));
  ASSERT_TRUE(result.ok()) << result.status();
  ASSERT_EQ(result->outcome, Outcome::kFound) << result->detail;
  EXPECT_EQ(*result->start, page);
}

TEST(BackwardDecoderTest, UnreadablePcPageIsAnError) {
  const std::vector<uint8_t> bytes = {0xA1, TPR};
  const auto result = DecodeBackward(0x90000005, SpanByteReader(bytes, 0x80000000));
  EXPECT_FALSE(result.ok());
}

TEST(BackwardDecoderTest, PcNearZeroTriesOnlyTheStartsThatExist) {
  const std::vector<uint8_t> bytes = {0xA1, TPR};
  const auto result = DecodeBackward(5, SpanByteReader(bytes, 0));
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->outcome, Outcome::kFound);
  EXPECT_EQ(*result->start, 0u);
  const auto at_zero = DecodeBackward(0, SpanByteReader(bytes, 0));
  ASSERT_TRUE(at_zero.ok()) << at_zero.status();
  EXPECT_EQ(at_zero->outcome, Outcome::kNone);
}

TEST(BackwardDecoderTest, UsesTheGivenTprAddress) {
  const Code code = NopsThen({0xA1, 0x80, 0x00, 0xE0, 0xFE});
  const auto other = DecodeBackward(code.pc, SpanByteReader(code.bytes, code.base), 0xFEE00080);
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(other->outcome, Outcome::kFound);
  const auto default_tpr = DecodeBackward(code.pc, SpanByteReader(code.bytes, code.base));
  ASSERT_TRUE(default_tpr.ok()) << default_tpr.status();
  EXPECT_EQ(default_tpr->outcome, Outcome::kNone);
}

TEST(BackwardDecoderTest, OutcomeNames) {
  EXPECT_EQ(BackwardOutcomeName(Outcome::kFound), "found");
  EXPECT_EQ(BackwardOutcomeName(Outcome::kNone), "none");
  EXPECT_EQ(BackwardOutcomeName(Outcome::kAmbiguous), "ambiguous");
}

}  // namespace
}  // namespace tprd::engine

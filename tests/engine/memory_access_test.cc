#include "daemon/engine/memory_access.h"

#include <vector>

#include "gtest/gtest.h"

namespace tprd::engine {
namespace {

TEST(MemoryAccessTest, TellsWritersFromReaders) {
  // mov [ecx+0xFFFE0080], eax
  EXPECT_EQ(WritesMemoryOperand(std::vector<uint8_t>{0x89, 0x81, 0x80, 0x00, 0xFE, 0xFF}), true);
  // cmp dword [0xFFFE0080], 0x41
  EXPECT_EQ(WritesMemoryOperand(std::vector<uint8_t>{0x83, 0x3D, 0x80, 0x00, 0xFE, 0xFF, 0x41}),
            false);
  // and dword [0xFFFE0080], 0x41 (read-modify-write)
  EXPECT_EQ(WritesMemoryOperand(std::vector<uint8_t>{0x83, 0x25, 0x80, 0x00, 0xFE, 0xFF, 0x41}),
            true);
  EXPECT_FALSE(WritesMemoryOperand(std::vector<uint8_t>{0x0F, 0x0B, 0xFF}).value_or(true));
  EXPECT_FALSE(WritesMemoryOperand(std::vector<uint8_t>{0xFF}).has_value());
}

TEST(MemoryAccessTest, FindsTheDestinationOfAnyMovLoad) {
  // mov edx, [ecx+0xFFFE0080]
  EXPECT_EQ(MovLoadDestination(std::vector<uint8_t>{0x8B, 0x91, 0x80, 0x00, 0xFE, 0xFF}), 2);
  // es: mov edx, [0xFFFE0080]
  EXPECT_EQ(MovLoadDestination(std::vector<uint8_t>{0x26, 0x8B, 0x15, 0x80, 0x00, 0xFE, 0xFF}), 2);
  // cmp is not a load into a register
  EXPECT_FALSE(MovLoadDestination(std::vector<uint8_t>{0x83, 0x3D, 0x80, 0x00, 0xFE, 0xFF, 0x41}));
  // mov esp, [...] is never fixed up
  EXPECT_FALSE(MovLoadDestination(std::vector<uint8_t>{0x8B, 0x25, 0x80, 0x00, 0xFE, 0xFF}));
}

TEST(MemoryAccessTest, DecodesCmpAndTestButNoOtherReader) {
  // cmp dword [0xFFFE0080], 0x51
  std::optional<FlagOnlyRead> cmp = DecodeFlagOnlyRead(
      std::vector<uint8_t>{0x81, 0x3D, 0x80, 0x00, 0xFE, 0xFF, 0x51, 0x00, 0x00, 0x00});
  ASSERT_TRUE(cmp.has_value());
  EXPECT_EQ(cmp->op, FlagOp::kCmp);
  EXPECT_EQ(cmp->width, 32);
  EXPECT_TRUE(cmp->memory_first);
  EXPECT_FALSE(cmp->reg.has_value());
  EXPECT_EQ(cmp->imm, 0x51u);
  EXPECT_EQ(cmp->address.disp, 0xFFFE0080u);
  EXPECT_FALSE(cmp->address.base.has_value());
  // cmp bh, [esi+ebx*4+0x10]
  std::optional<FlagOnlyRead> reg =
      DecodeFlagOnlyRead(std::vector<uint8_t>{0x3A, 0x7C, 0x9E, 0x10});
  ASSERT_TRUE(reg.has_value());
  EXPECT_FALSE(reg->memory_first);
  EXPECT_EQ(reg->width, 8);
  ASSERT_TRUE(reg->reg.has_value());
  EXPECT_EQ(reg->reg->gpr, Gpr::kEbx);
  EXPECT_EQ(reg->reg->shift, 8);
  EXPECT_EQ(reg->address.base, Gpr::kEsi);
  EXPECT_EQ(reg->address.index, Gpr::kEbx);
  EXPECT_EQ(reg->address.scale, 4);
  EXPECT_EQ(reg->address.disp, 0x10u);
  // test word [0xFFFE0080], ax
  std::optional<FlagOnlyRead> test =
      DecodeFlagOnlyRead(std::vector<uint8_t>{0x66, 0x85, 0x05, 0x80, 0x00, 0xFE, 0xFF});
  ASSERT_TRUE(test.has_value());
  EXPECT_EQ(test->op, FlagOp::kTest);
  EXPECT_EQ(test->width, 16);
  // Readers whose result goes elsewhere than EFLAGS, and a cmp without memory.
  for (const std::vector<uint8_t>& bytes : std::vector<std::vector<uint8_t>>{
           {0x03, 0x05, 0x80, 0x00, 0xFE, 0xFF},        // add eax,[tpr]
           {0x0F, 0xA3, 0x05, 0x80, 0x00, 0xFE, 0xFF},  // bt [tpr],eax
           {0x0F, 0xB6, 0x05, 0x80, 0x00, 0xFE, 0xFF},  // movzx eax,byte [tpr]
           {0x8B, 0x05, 0x80, 0x00, 0xFE, 0xFF},        // mov eax,[tpr]
           {0x67, 0x83, 0x3E, 0x80, 0x00, 0x51},        // cmp word-addressed [0x80]
           {0x39, 0xC8},                                // cmp eax,ecx
           {0xA6},                                      // cmpsb: two memory operands
       }) {
    EXPECT_FALSE(DecodeFlagOnlyRead(bytes).has_value()) << std::hex << int(bytes[0]);
  }
}

TEST(MemoryAccessTest, DecodesTheMemoryOperandsAddress) {
  // mov eax,[ecx+0x80]
  std::optional<MemoryOperandAt> at =
      DecodeMemoryOperand(std::vector<uint8_t>{0x8B, 0x81, 0x80, 0x00, 0x00, 0x00, 0xC3});
  ASSERT_TRUE(at.has_value());
  EXPECT_EQ(at->length, 6);
  EXPECT_EQ(at->address.base, Gpr::kEcx);
  EXPECT_EQ(at->address.disp, 0x80u);
  EXPECT_EQ(at->address.segment, EncodedAddress::Segment::kFlat);
  // fs: mov eax,[0x1C]
  at = DecodeMemoryOperand(std::vector<uint8_t>{0x64, 0xA1, 0x1C, 0x00, 0x00, 0x00});
  ASSERT_TRUE(at.has_value());
  EXPECT_EQ(at->address.segment, EncodedAddress::Segment::kFs);
  EXPECT_FALSE(DecodeMemoryOperand(std::vector<uint8_t>{0x8D, 0x41, 0x10}).has_value()) << "lea";
  EXPECT_FALSE(DecodeMemoryOperand(std::vector<uint8_t>{0x89, 0xC8}).has_value()) << "no memory";
  EXPECT_FALSE(DecodeMemoryOperand(std::vector<uint8_t>{0xA5}).has_value()) << "movsd: two";
}

}  // namespace
}  // namespace tprd::engine

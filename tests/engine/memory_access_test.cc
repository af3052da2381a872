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

}  // namespace
}  // namespace tprd::engine

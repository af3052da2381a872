// The cr8 flag fix-up: the arithmetic (against a table, and against the host CPU running the
// same cmp/test), and decoded guest instructions end to end (bytes + registers + TPR -> EFLAGS).
#include "daemon/engine/flag_fixup.h"

#include <cstdint>
#include <random>
#include <vector>

#include "daemon/engine/memory_access.h"
#include "gtest/gtest.h"

namespace tprd::engine {
namespace {

constexpr uint32_t kTprVa = 0xFFFE0080;
constexpr uint32_t kIf = 1u << 9;
constexpr uint32_t kDf = 1u << 10;
constexpr uint32_t kReserved1 = 1u << 1;  // always set in EFLAGS

struct ArithmeticCase {
  FlagOp op;
  int width;
  uint32_t lhs, rhs;
  uint32_t flags;  // the arithmetic flags expected
};

TEST(FlagFixupTest, FlagsMatchTheTable) {
  const ArithmeticCase cases[] = {
      // The test guest's check: cmp dword [tpr], 0x51 with the shadow 0x51 and with the real
      // TPR the CR8 write left (0x50).
      {FlagOp::kCmp, 32, 0x51, 0x51, kFlagZf | kFlagPf},
      {FlagOp::kCmp, 32, 0x50, 0x51, kFlagCf | kFlagPf | kFlagAf | kFlagSf},
      {FlagOp::kCmp, 32, 0x52, 0x51, 0},
      {FlagOp::kCmp, 32, 0x80000000, 1, kFlagOf | kFlagAf | kFlagPf},
      {FlagOp::kCmp, 32, 0x7FFFFFFF, 0xFFFFFFFF, kFlagOf | kFlagCf | kFlagSf | kFlagPf},
      {FlagOp::kCmp, 8, 0x80, 0x01, kFlagOf | kFlagAf},
      {FlagOp::kCmp, 8, 0x00, 0x01, kFlagCf | kFlagAf | kFlagSf | kFlagPf},
      {FlagOp::kCmp, 16, 0x0051, 0xFFAF, kFlagCf | kFlagAf},  // -0x51 sign-extended
      {FlagOp::kCmp, 8, 0x1F1, 0x0F1, kFlagZf | kFlagPf},     // operands truncated to 8 bits
      {FlagOp::kTest, 32, 0x51, 0xF0, kFlagPf},               // 0x50: two bits set
      {FlagOp::kTest, 32, 0x51, 0x0E, kFlagZf | kFlagPf},
      {FlagOp::kTest, 8, 0xF1, 0x80, kFlagSf},
      {FlagOp::kTest, 16, 0x8001, 0x8001, kFlagSf},
  };
  for (const ArithmeticCase& c : cases) {
    SCOPED_TRACE(::testing::Message() << (c.op == FlagOp::kCmp ? "cmp" : "test") << c.width << " 0x"
                                      << std::hex << c.lhs << ", 0x" << c.rhs);
    // Every non-arithmetic bit survives; stale arithmetic flags do not.
    EXPECT_EQ(FlagsAfter(c.op, c.width, c.lhs, c.rhs, kIf | kDf | kReserved1 | kArithmeticFlags),
              kIf | kDf | kReserved1 | c.flags);
    EXPECT_EQ(FlagsAfter(c.op, c.width, c.lhs, c.rhs, 0), c.flags);
  }
}

#if defined(__x86_64__)
// Runs `insn rhs, lhs` (AT&T order: computes lhs - rhs or lhs & rhs) and reads EFLAGS.
// pushf/pop step below the red zone first: the compiler may keep data there.
#define TPRD_HOST_FLAGS(insn, mod)                   \
  __asm__ volatile(insn " %" mod "[rhs], %" mod      \
                        "[lhs]\n\t"                  \
                        "lea -128(%%rsp), %%rsp\n\t" \
                        "pushfq\n\t"                 \
                        "popq %[flags]\n\t"          \
                        "lea 128(%%rsp), %%rsp"      \
                   : [flags] "=r"(flags)             \
                   : [lhs] "r"(lhs), [rhs] "r"(rhs)  \
                   : "cc", "memory")

// The arithmetic flags the host CPU computes for `op lhs, rhs` at `width` bits.
uint32_t HostFlags(FlagOp op, int width, uint32_t lhs, uint32_t rhs) {
  uint64_t flags = 0;
  if (op == FlagOp::kCmp) {
    if (width == 8) TPRD_HOST_FLAGS("cmpb", "b");
    if (width == 16) TPRD_HOST_FLAGS("cmpw", "w");
    if (width == 32) TPRD_HOST_FLAGS("cmpl", "k");
  } else {
    if (width == 8) TPRD_HOST_FLAGS("testb", "b");
    if (width == 16) TPRD_HOST_FLAGS("testw", "w");
    if (width == 32) TPRD_HOST_FLAGS("testl", "k");
  }
  return static_cast<uint32_t>(flags) & kArithmeticFlags;
}
#undef TPRD_HOST_FLAGS

TEST(FlagFixupTest, FlagsMatchTheHostCpu) {
  // Every pair at 8 bits; at 16 and 32 bits the edges (sign, carry, nibble boundaries, TPR
  // values) against each other, then random pairs.
  const uint32_t edges[] = {0,          1,          0x0F,       0x10,       0x50,
                            0x51,       0x7F,       0x80,       0xFF,       0x100,
                            0x7FFF,     0x8000,     0xFFFF,     0x10000,    0x7FFFFFFF,
                            0x80000000, 0x80000001, 0xFFFFFF80, 0xFFFFFFFE, 0xFFFFFFFF};
  std::mt19937 random(20240607);
  int compared = 0;
  auto check = [&](FlagOp op, int width, uint32_t lhs, uint32_t rhs) {
    const uint32_t host = HostFlags(op, width, lhs, rhs);
    const uint32_t ours = FlagsAfter(op, width, lhs, rhs, 0);
    ++compared;
    if (host != ours) {
      ADD_FAILURE() << (op == FlagOp::kCmp ? "cmp" : "test") << width << " 0x" << std::hex << lhs
                    << ", 0x" << rhs << ": host 0x" << host << ", ours 0x" << ours;
      return false;
    }
    return true;
  };
  for (FlagOp op : {FlagOp::kCmp, FlagOp::kTest}) {
    for (uint32_t lhs = 0; lhs < 256; ++lhs) {
      for (uint32_t rhs = 0; rhs < 256; ++rhs) {
        if (!check(op, 8, lhs, rhs)) return;
      }
    }
    for (int width : {16, 32}) {
      for (uint32_t lhs : edges) {
        for (uint32_t rhs : edges) {
          if (!check(op, width, lhs, rhs)) return;
        }
      }
      for (int i = 0; i < 200000; ++i) {
        if (!check(op, width, random(), random())) return;
      }
    }
  }
  EXPECT_GT(compared, 900000);
}
#endif

// A vCPU whose registers a decoded instruction reads: eax = 0x00005180 (al 0x80, ah 0x51).
VcpuRegisters Registers() {
  VcpuRegisters regs;
  regs.reg(Gpr::kEax) = 0x00005180;
  regs.reg(Gpr::kEcx) = 0x51;
  regs.reg(Gpr::kEdx) = 0xFFFE0000;
  regs.reg(Gpr::kEbx) = 0x20;
  regs.fs_base = 0xFFDFF000;
  regs.eflags = kIf | kReserved1 | kFlagCf;  // CF: stale, from the real TPR
  return regs;
}

struct DecodedCase {
  const char* what;
  std::vector<uint8_t> bytes;
  uint8_t tpr;
  uint32_t flags;  // expected arithmetic flags
};

TEST(FlagFixupTest, DecodedGuestInstructionsGetTheShadowsFlags) {
  const DecodedCase cases[] = {
      {"cmp dword [tpr], 0x51 (the test guest's np_cmp_imm)",
       {0x81, 0x3D, 0x80, 0x00, 0xFE, 0xFF, 0x51, 0x00, 0x00, 0x00},
       0x51,
       kFlagZf | kFlagPf},
      {"cmp dword [tpr], 0x51 with the real TPR",
       {0x81, 0x3D, 0x80, 0x00, 0xFE, 0xFF, 0x51, 0x00, 0x00, 0x00},
       0x50,
       kFlagCf | kFlagPf | kFlagAf | kFlagSf},
      {"cmp dword [tpr], -1 (83 /7 ib, sign-extended)",
       {0x83, 0x3D, 0x80, 0x00, 0xFE, 0xFF, 0xFF},
       0x51,
       kFlagCf | kFlagAf},  // 0x51 - 0xFFFFFFFF = 0x52, borrowing
      {"cmp byte [tpr], 0x51 (80 /7 ib)",
       {0x80, 0x3D, 0x80, 0x00, 0xFE, 0xFF, 0x51},
       0x51,
       kFlagZf | kFlagPf},
      {"cmp word [tpr], 0x51 (66 81 /7 iw)",
       {0x66, 0x81, 0x3D, 0x80, 0x00, 0xFE, 0xFF, 0x51, 0x00},
       0x51,
       kFlagZf | kFlagPf},
      {"cmp [tpr], ecx (39 /r)", {0x39, 0x0D, 0x80, 0x00, 0xFE, 0xFF}, 0x51, kFlagZf | kFlagPf},
      {"cmp ebx, [tpr] (3B /r): ebx - tpr",
       {0x3B, 0x1D, 0x80, 0x00, 0xFE, 0xFF},
       0x51,
       FlagsAfter(FlagOp::kCmp, 32, 0x20, 0x51, 0)},
      {"cmp ah, [tpr] (3A /r): ah is eax bits 8-15",
       {0x3A, 0x25, 0x80, 0x00, 0xFE, 0xFF},
       0x51,
       kFlagZf | kFlagPf},
      {"cmp [tpr], al (38 /r)",
       {0x38, 0x05, 0x80, 0x00, 0xFE, 0xFF},
       0x51,
       FlagsAfter(FlagOp::kCmp, 8, 0x51, 0x80, 0)},
      {"cmp [edx+0x80], cx (66 39 /r, register-relative)",
       {0x66, 0x39, 0x8A, 0x80, 0x00, 0x00, 0x00},
       0x51,
       kFlagZf | kFlagPf},
      {"test dword [tpr], 0xF0 (F7 /0 id)",
       {0xF7, 0x05, 0x80, 0x00, 0xFE, 0xFF, 0xF0, 0x00, 0x00, 0x00},
       0x51,
       kFlagPf},
      {"test byte [tpr], 0x0F (F6 /0 ib)",
       {0xF6, 0x05, 0x80, 0x00, 0xFE, 0xFF, 0x0F},
       0x50,
       kFlagZf | kFlagPf},
      {"test [tpr], ebx (85 /r)", {0x85, 0x1D, 0x80, 0x00, 0xFE, 0xFF}, 0x20, 0},
      {"test [tpr], al (84 /r)", {0x84, 0x05, 0x80, 0x00, 0xFE, 0xFF}, 0x80, kFlagSf},
  };
  for (const DecodedCase& c : cases) {
    SCOPED_TRACE(c.what);
    std::optional<FlagOnlyRead> read = DecodeFlagOnlyRead(c.bytes);
    ASSERT_TRUE(read.has_value());
    const VcpuRegisters regs = Registers();
    std::optional<uint32_t> flags = FixedFlags(*read, c.tpr, kTprVa, regs);
    ASSERT_TRUE(flags.has_value());
    EXPECT_EQ(*flags, kIf | kReserved1 | c.flags) << std::hex << *flags;
  }
}

TEST(FlagFixupTest, AnOperandThatIsNotExactlyTheTprIsNotFixed) {
  VcpuRegisters regs = Registers();
  // cmp [edx+0x84], ecx: edx + 0x84 is the TPR's upper bytes, which the watchpoint also covers.
  std::optional<FlagOnlyRead> read =
      DecodeFlagOnlyRead(std::vector<uint8_t>{0x39, 0x8A, 0x84, 0x00, 0x00, 0x00});
  ASSERT_TRUE(read.has_value());
  EXPECT_FALSE(FixedFlags(*read, 0x51, kTprVa, regs).has_value());
  // fs: cmp [0x80], 0x51 names fs_base + 0x80, not the TPR...
  read = DecodeFlagOnlyRead(std::vector<uint8_t>{0x64, 0x83, 0x3D, 0x80, 0x00, 0x00, 0x00, 0x51});
  ASSERT_TRUE(read.has_value());
  EXPECT_FALSE(FixedFlags(*read, 0x51, kTprVa, regs).has_value());
  // ...unless fs_base makes it so.
  regs.fs_base = 0xFFFE0000;
  EXPECT_EQ(FixedFlags(*read, 0x51, kTprVa, regs), kIf | kReserved1 | kFlagZf | kFlagPf);
  // gs: a base tprd does not know.
  read = DecodeFlagOnlyRead(std::vector<uint8_t>{0x65, 0x83, 0x3D, 0x80, 0x00, 0xFE, 0xFF, 0x51});
  ASSERT_TRUE(read.has_value());
  EXPECT_FALSE(FixedFlags(*read, 0x51, kTprVa, regs).has_value());
}

}  // namespace
}  // namespace tprd::engine

#include "daemon/engine/flag_fixup.h"

#include <bit>

namespace tprd::engine {
namespace {

uint32_t Mask(int width) { return width >= 32 ? 0xFFFFFFFFu : (1u << width) - 1; }

}  // namespace

uint32_t FlagsAfter(FlagOp op, int width, uint32_t lhs, uint32_t rhs, uint32_t eflags) {
  const uint32_t mask = Mask(width);
  const uint32_t sign = 1u << (width - 1);
  lhs &= mask;
  rhs &= mask;
  uint32_t result = 0;
  uint32_t flags = 0;
  if (op == FlagOp::kCmp) {
    result = (lhs - rhs) & mask;
    if (lhs < rhs) flags |= kFlagCf;  // the borrow out of the top bit
    // Signed overflow: the operands' signs differ and the result's sign is not lhs's.
    if ((lhs ^ rhs) & (lhs ^ result) & sign) flags |= kFlagOf;
    if ((lhs ^ rhs ^ result) & 0x10) flags |= kFlagAf;  // the borrow out of bit 3
  } else {
    result = lhs & rhs;
  }
  if (result == 0) flags |= kFlagZf;
  if (result & sign) flags |= kFlagSf;
  if (std::popcount(result & 0xFF) % 2 == 0) flags |= kFlagPf;  // even parity of the low byte
  return (eflags & ~kArithmeticFlags) | flags;
}

std::optional<uint32_t> LinearAddress(const EncodedAddress& address, const VcpuRegisters& regs) {
  uint32_t linear = address.disp;
  if (address.base) linear += regs.reg(*address.base);
  if (address.index) linear += regs.reg(*address.index) * address.scale;
  switch (address.segment) {
    case EncodedAddress::Segment::kFlat:
      return linear;
    case EncodedAddress::Segment::kFs:
      return linear + regs.fs_base;
    case EncodedAddress::Segment::kOther:
      return std::nullopt;
  }
  return std::nullopt;
}

std::optional<uint32_t> FixedFlags(const FlagOnlyRead& read, uint32_t memory, uint32_t tpr_va,
                                   const VcpuRegisters& regs) {
  if (read.width != 8 && read.width != 16 && read.width != 32) return std::nullopt;
  if (LinearAddress(read.address, regs) != tpr_va) return std::nullopt;
  const uint32_t other = read.reg ? regs.reg(read.reg->gpr) >> read.reg->shift : read.imm;
  return read.memory_first ? FlagsAfter(read.op, read.width, memory, other, regs.eflags)
                           : FlagsAfter(read.op, read.width, other, memory, regs.eflags);
}

}  // namespace tprd::engine

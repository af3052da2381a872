// cr8 fix-up of a flag-only TPR reader (`cmp`, `test`). Under cr8 the real TPR lost its low
// nibble to the CR8 write, so an unpatched `cmp dword [tpr], 0x51` set its flags from the wrong
// value; at the watchpoint stop just after it, tprd recomputes the arithmetic flags from the
// shadow value and writes EFLAGS back. This file is the arithmetic, kept pure and small so it can
// be checked against the host CPU (tests/engine/flag_fixup_test.cc).
#ifndef TPRD_DAEMON_ENGINE_FLAG_FIXUP_H_
#define TPRD_DAEMON_ENGINE_FLAG_FIXUP_H_

#include <cstdint>
#include <optional>

#include "daemon/engine/guest_vm.h"

namespace tprd::engine {

inline constexpr uint32_t kFlagCf = 1u << 0;
inline constexpr uint32_t kFlagPf = 1u << 2;
inline constexpr uint32_t kFlagAf = 1u << 4;
inline constexpr uint32_t kFlagZf = 1u << 6;
inline constexpr uint32_t kFlagSf = 1u << 7;
inline constexpr uint32_t kFlagOf = 1u << 11;
// The flags cmp and test define; every other EFLAGS bit (IF, DF, TF, ...) is left alone.
inline constexpr uint32_t kArithmeticFlags =
    kFlagCf | kFlagPf | kFlagAf | kFlagZf | kFlagSf | kFlagOf;

enum class FlagOp : uint8_t {
  kCmp,   // lhs - rhs
  kTest,  // lhs & rhs; CF and OF cleared, AF cleared as hardware and QEMU do (SDM: undefined)
};

// EFLAGS after `op lhs, rhs` on `width`-bit operands (8, 16 or 32; the operands are truncated to
// it): the six arithmetic flags as the CPU computes them, every other bit of `eflags` kept.
uint32_t FlagsAfter(FlagOp op, int width, uint32_t lhs, uint32_t rhs, uint32_t eflags);

// A register operand: the 32-bit register and the bit its value starts at (8 for ah..bh).
struct RegisterPart {
  Gpr gpr = Gpr::kEax;
  uint8_t shift = 0;
};

// A memory operand's address as encoded: segment:[base + index * scale + disp].
struct EncodedAddress {
  // kFlat: cs/ds/es/ss, flat (base 0) in every guest tprd patches (XP's kernel). kFs: the KPCR
  // segment, whose base VcpuRegisters holds. kOther: gs, whose base tprd does not read.
  enum class Segment : uint8_t { kFlat, kFs, kOther };
  Segment segment = Segment::kFlat;
  std::optional<Gpr> base;
  std::optional<Gpr> index;
  uint8_t scale = 1;
  uint32_t disp = 0;
};

// A decoded instruction that reads one memory operand and writes only EFLAGS: cmp or test with
// a register or an immediate as the other operand (memory_access.h DecodeFlagOnlyRead).
struct FlagOnlyRead {
  FlagOp op = FlagOp::kCmp;
  int width = 32;            // operand size: 8, 16 or 32
  bool memory_first = true;  // `cmp [m], x` (m - x) rather than `cmp x, [m]` (x - m)
  // The other operand: a register, or else `imm` (as the instruction sign-extends it).
  std::optional<RegisterPart> reg;
  uint32_t imm = 0;
  EncodedAddress address;
};

// The linear address `address` names with these registers; nullopt for a segment whose base is
// unknown.
std::optional<uint32_t> LinearAddress(const EncodedAddress& address, const VcpuRegisters& regs);

// The EFLAGS `read` would have left had its memory operand read as `memory` (the TPR zero-
// extended), from the registers at the stop after it ran (cmp and test change no general
// register, so they are still its inputs). nullopt when the memory operand is not `tpr_va`
// (a register-relative access that reached elsewhere, a segment of unknown base): unfixable.
std::optional<uint32_t> FixedFlags(const FlagOnlyRead& read, uint32_t memory, uint32_t tpr_va,
                                   const VcpuRegisters& regs);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_FLAG_FIXUP_H_

// Whether an instruction writes memory: the learning window must tell an unpatchable writer of
// the TPR (which makes mmio unsafe) from an unpatchable reader such as `cmp [tpr], imm`.
#ifndef TPRD_DAEMON_ENGINE_MEMORY_ACCESS_H_
#define TPRD_DAEMON_ENGINE_MEMORY_ACCESS_H_

#include <cstdint>
#include <optional>

#include "absl/types/span.h"
#include "daemon/engine/flag_fixup.h"

namespace tprd::engine {

// True if the 32-bit instruction at the start of `bytes` writes any explicit memory operand;
// false if it only reads memory; nullopt if the bytes do not decode.
std::optional<bool> WritesMemoryOperand(absl::Span<const uint8_t> bytes);

// For `mov r32, [mem]` (any addressing form): the destination register. nullopt otherwise.
std::optional<uint8_t> MovLoadDestination(absl::Span<const uint8_t> bytes);

// For `cmp` or `test` of an 8/16/32-bit memory operand with a register or an immediate (either
// order for cmp): what a cr8 fix-up needs to recompute its flags. nullopt for anything else
// (another operation, 16-bit addressing, no memory operand), which stays unfixable.
std::optional<FlagOnlyRead> DecodeFlagOnlyRead(absl::Span<const uint8_t> bytes);

// The length of the 32-bit instruction at the start of `bytes` and the address of its explicit
// memory operand, for a watchpoint stop whose access does not name the TPR in its encoding
// (mov eax, [ecx+0x80]). nullopt when the bytes do not decode, there is no memory operand (or
// more than one), or its address is not one 32-bit registers give.
struct MemoryOperandAt {
  uint8_t length = 0;
  EncodedAddress address;
};
std::optional<MemoryOperandAt> DecodeMemoryOperand(absl::Span<const uint8_t> bytes);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_MEMORY_ACCESS_H_

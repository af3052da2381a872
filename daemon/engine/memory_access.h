// Whether an instruction writes memory: the learning window must tell an unpatchable writer of
// the TPR (which makes mmio unsafe) from an unpatchable reader such as `cmp [tpr], imm`.
#ifndef TPRD_DAEMON_ENGINE_MEMORY_ACCESS_H_
#define TPRD_DAEMON_ENGINE_MEMORY_ACCESS_H_

#include <cstdint>
#include <optional>

#include "absl/types/span.h"

namespace tprd::engine {

// True if the 32-bit instruction at the start of `bytes` writes any explicit memory operand;
// false if it only reads memory; nullopt if the bytes do not decode.
std::optional<bool> WritesMemoryOperand(absl::Span<const uint8_t> bytes);

// For `mov r32, [mem]` (any addressing form): the destination register. nullopt otherwise.
std::optional<uint8_t> MovLoadDestination(absl::Span<const uint8_t> bytes);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_MEMORY_ACCESS_H_

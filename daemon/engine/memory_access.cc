#include "daemon/engine/memory_access.h"

#include <Zydis/Zydis.h>

namespace tprd::engine {
namespace {

struct Decoded {
  ZydisDecodedInstruction instruction;
  ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
};

// One 32-bit instruction with its operands; nullopt when the bytes do not decode.
std::optional<Decoded> Decode(absl::Span<const uint8_t> bytes) {
  ZydisDecoder decoder;
  Decoded d;
  if (!ZYAN_SUCCESS(
          ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32)) ||
      !ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder, bytes.data(), bytes.size(), &d.instruction,
                                           d.operands))) {
    return std::nullopt;
  }
  return d;
}

}  // namespace

std::optional<bool> WritesMemoryOperand(absl::Span<const uint8_t> bytes) {
  std::optional<Decoded> d = Decode(bytes);
  if (!d) return std::nullopt;
  for (uint8_t i = 0; i < d->instruction.operand_count_visible; ++i) {
    if (d->operands[i].type == ZYDIS_OPERAND_TYPE_MEMORY &&
        (d->operands[i].actions & ZYDIS_OPERAND_ACTION_MASK_WRITE)) {
      return true;
    }
  }
  return false;
}

std::optional<uint8_t> MovLoadDestination(absl::Span<const uint8_t> bytes) {
  std::optional<Decoded> d = Decode(bytes);
  if (!d || d->instruction.mnemonic != ZYDIS_MNEMONIC_MOV ||
      d->instruction.operand_count_visible != 2 ||
      d->operands[0].type != ZYDIS_OPERAND_TYPE_REGISTER ||
      d->operands[1].type != ZYDIS_OPERAND_TYPE_MEMORY || d->operands[0].size != 32) {
    return std::nullopt;
  }
  static constexpr ZydisRegister kGprs[] = {
      ZYDIS_REGISTER_EAX, ZYDIS_REGISTER_ECX, ZYDIS_REGISTER_EDX, ZYDIS_REGISTER_EBX,
      ZYDIS_REGISTER_ESP, ZYDIS_REGISTER_EBP, ZYDIS_REGISTER_ESI, ZYDIS_REGISTER_EDI};
  for (uint8_t i = 0; i < 8; ++i) {
    if (d->operands[0].reg.value == kGprs[i] && i != 4) return i;  // never esp
  }
  return std::nullopt;
}

}  // namespace tprd::engine

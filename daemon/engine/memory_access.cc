#include "daemon/engine/memory_access.h"

#include <Zydis/Zydis.h>

namespace tprd::engine {

std::optional<bool> WritesMemoryOperand(absl::Span<const uint8_t> bytes) {
  ZydisDecoder decoder;
  if (!ZYAN_SUCCESS(
          ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32))) {
    return std::nullopt;
  }
  ZydisDecodedInstruction instruction;
  ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
  if (!ZYAN_SUCCESS(
          ZydisDecoderDecodeFull(&decoder, bytes.data(), bytes.size(), &instruction, operands))) {
    return std::nullopt;
  }
  for (uint8_t i = 0; i < instruction.operand_count_visible; ++i) {
    if (operands[i].type == ZYDIS_OPERAND_TYPE_MEMORY &&
        (operands[i].actions & ZYDIS_OPERAND_ACTION_MASK_WRITE)) {
      return true;
    }
  }
  return false;
}

std::optional<uint8_t> MovLoadDestination(absl::Span<const uint8_t> bytes) {
  ZydisDecoder decoder;
  if (!ZYAN_SUCCESS(
          ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32))) {
    return std::nullopt;
  }
  ZydisDecodedInstruction instruction;
  ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
  if (!ZYAN_SUCCESS(
          ZydisDecoderDecodeFull(&decoder, bytes.data(), bytes.size(), &instruction, operands)) ||
      instruction.mnemonic != ZYDIS_MNEMONIC_MOV || instruction.operand_count_visible != 2 ||
      operands[0].type != ZYDIS_OPERAND_TYPE_REGISTER ||
      operands[1].type != ZYDIS_OPERAND_TYPE_MEMORY || operands[0].size != 32) {
    return std::nullopt;
  }
  static constexpr ZydisRegister kGprs[] = {
      ZYDIS_REGISTER_EAX, ZYDIS_REGISTER_ECX, ZYDIS_REGISTER_EDX, ZYDIS_REGISTER_EBX,
      ZYDIS_REGISTER_ESP, ZYDIS_REGISTER_EBP, ZYDIS_REGISTER_ESI, ZYDIS_REGISTER_EDI};
  for (uint8_t i = 0; i < 8; ++i) {
    if (operands[0].reg.value == kGprs[i] && i != 4) return i;
  }
  return std::nullopt;
}

}  // namespace tprd::engine

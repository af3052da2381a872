#include "daemon/engine/classifier.h"

#include <Zydis/Zydis.h>

#include <algorithm>
#include <array>
#include <utility>

#include "absl/strings/str_format.h"

namespace tprd::engine {
namespace {

constexpr std::array<std::pair<RejectReason, std::string_view>, 10> kReasonNames = {{
    {RejectReason::kNone, ""},
    {RejectReason::kUndecodable, "undecodable"},
    {RejectReason::kNotTpr, "not_tpr"},
    {RejectReason::kTooShort, "too_short"},
    {RejectReason::kPrefix, "prefix"},
    {RejectReason::kRegisterRelative, "register_relative"},
    {RejectReason::kSib, "sib"},
    {RejectReason::kOtherOperation, "other_operation"},
    {RejectReason::kOperandSize, "operand_size"},
    {RejectReason::kEspRegister, "esp_register"},
}};

// A call rel32 is 5 bytes: anything shorter cannot hold it.
constexpr uint8_t kMinPatchableLength = 5;

Classification Reject(Classification result, RejectReason reason, std::string detail) {
  result.patchable = false;
  result.reason = reason;
  result.detail = std::move(detail);
  return result;
}

// The explicit memory operand whose displacement is the TPR address, if any. LEA (AGEN) only
// computes the address, so it is not an access.
const ZydisDecodedOperand* FindTprOperand(const ZydisDecodedInstruction& instruction,
                                          const ZydisDecodedOperand* operands, uint32_t tpr_va) {
  for (int i = 0; i < instruction.operand_count; ++i) {
    const ZydisDecodedOperand& op = operands[i];
    if (op.type != ZYDIS_OPERAND_TYPE_MEMORY || op.mem.type != ZYDIS_MEMOP_TYPE_MEM ||
        !op.mem.disp.has_displacement) {
      continue;
    }
    uint32_t displacement = static_cast<uint32_t>(op.mem.disp.value);
    if (instruction.address_width == 16) displacement &= 0xFFFF;
    if (displacement == tpr_va) return &op;
  }
  return nullptr;
}

Gpr GprFromModrmReg(uint8_t reg) { return static_cast<Gpr>(reg & 7); }

// The form an unprefixed, disp32-only instruction has, from its opcode; nullopt when it is none
// of the seven.
std::optional<Form> FormFromOpcode(const ZydisDecodedInstruction& instruction) {
  if (instruction.encoding != ZYDIS_INSTRUCTION_ENCODING_LEGACY ||
      instruction.opcode_map != ZYDIS_OPCODE_MAP_DEFAULT) {
    return std::nullopt;
  }
  switch (instruction.opcode) {
    case 0xA1:
      return Form::kMovEaxFromMoffs;
    case 0xA3:
      return Form::kMovMoffsFromEax;
    case 0x8B:
      return Form::kMovRegFromMem;
    case 0x89:
      return Form::kMovMemFromReg;
    case 0xC7:
      if (instruction.raw.modrm.reg == 0) return Form::kMovMemFromImm;
      return std::nullopt;
    case 0xFF:
      if (instruction.raw.modrm.reg == 6) return Form::kPushMem;
      return std::nullopt;
    case 0x83:
      // and dword [tpr], imm8: only the immediate 0 (MoveZeroToTpr) has a handler.
      if (instruction.raw.modrm.reg == 4 && instruction.raw.imm[0].size == 8 &&
          instruction.raw.imm[0].value.u == 0) {
        return Form::kAndMemZero;
      }
      return std::nullopt;
    default:
      return std::nullopt;
  }
}

// Why an `and` that names the TPR is not the patchable `and dword [tpr], 0` (83 25 <tpr> 00).
std::string AndDetail(const ZydisDecodedInstruction& instruction) {
  constexpr std::string_view kOnly = "only and dword [tpr], 0 (83 25 <tpr> 00) is patched";
  if (instruction.opcode == 0x83 && instruction.operand_width == 32) {
    return absl::StrFormat("and dword [tpr], 0x%02X keeps bits of the TPR; %s.",
                           static_cast<uint8_t>(instruction.raw.imm[0].value.u), kOnly);
  }
  if (instruction.opcode == 0x81 && instruction.operand_width == 32) {
    return absl::StrFormat("and dword [tpr], 0x%08X in the 10-byte encoding 81 /4 id; %s.",
                           static_cast<uint32_t>(instruction.raw.imm[0].value.u), kOnly);
  }
  return absl::StrFormat("An and of the TPR with a register or in another width; %s.", kOnly);
}

}  // namespace

std::string_view RejectReasonName(RejectReason reason) {
  for (const auto& [r, name] : kReasonNames) {
    if (r == reason) return name;
  }
  return "unknown";
}

Classification Classify(absl::Span<const uint8_t> bytes, uint32_t address, uint32_t tpr_va) {
  Classification result;
  ZydisDecoder decoder;
  if (!ZYAN_SUCCESS(
          ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32))) {
    return Reject(result, RejectReason::kUndecodable, "The decoder could not be initialised.");
  }
  ZydisDecodedInstruction instruction;
  ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
  const size_t size = std::min<size_t>(bytes.size(), ZYDIS_MAX_INSTRUCTION_LENGTH);
  if (size == 0 ||
      !ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder, bytes.data(), size, &instruction, operands))) {
    return Reject(
        result, RejectReason::kUndecodable,
        absl::StrFormat("The bytes at 0x%08X are not a valid 32-bit instruction.", address));
  }
  result.length = instruction.length;

  const ZydisDecodedOperand* tpr_operand = FindTprOperand(instruction, operands, tpr_va);
  if (tpr_operand == nullptr) {
    return Reject(result, RejectReason::kNotTpr,
                  absl::StrFormat("No memory operand addresses the TPR at 0x%08X.", tpr_va));
  }
  result.tpr_access = true;

  if (instruction.length < kMinPatchableLength) {
    return Reject(result, RejectReason::kTooShort,
                  absl::StrFormat("%d bytes cannot hold a 5-byte call.", instruction.length));
  }
  if (instruction.raw.prefix_count > 0) {
    return Reject(result, RejectReason::kPrefix,
                  absl::StrFormat("Prefix byte 0x%02X changes how the access behaves.",
                                  instruction.raw.prefixes[0].value));
  }
  if (tpr_operand->mem.base != ZYDIS_REGISTER_NONE ||
      tpr_operand->mem.index != ZYDIS_REGISTER_NONE) {
    return Reject(result, RejectReason::kRegisterRelative,
                  "The address adds a base or index register, so it is not provably the TPR.");
  }
  if (instruction.attributes & ZYDIS_ATTRIB_HAS_SIB) {
    return Reject(result, RejectReason::kSib,
                  "The address is encoded with a SIB byte, which no replacement covers.");
  }

  const std::optional<Form> form = FormFromOpcode(instruction);
  if (!form.has_value()) {
    const bool is_move =
        instruction.mnemonic == ZYDIS_MNEMONIC_MOV || instruction.mnemonic == ZYDIS_MNEMONIC_PUSH;
    if (is_move && tpr_operand->size != 32) {
      return Reject(result, RejectReason::kOperandSize,
                    absl::StrFormat("A %d-bit access to the TPR; only 32-bit moves are patched.",
                                    tpr_operand->size));
    }
    if (instruction.mnemonic == ZYDIS_MNEMONIC_AND) {
      return Reject(result, RejectReason::kOtherOperation, AndDetail(instruction));
    }
    return Reject(result, RejectReason::kOtherOperation,
                  "Not a plain 32-bit mov or push of the TPR, nor and dword [tpr], 0 (cmp, test, "
                  "or, movzx, ...).");
  }
  result.form = form;
  if (tpr_operand->size != 32 || instruction.operand_width != 32) {
    return Reject(result, RejectReason::kOperandSize,
                  absl::StrFormat("A %d-bit access to the TPR; only 32-bit moves are patched.",
                                  tpr_operand->size));
  }

  switch (*form) {
    case Form::kMovEaxFromMoffs:
    case Form::kMovMoffsFromEax:
      result.reg = Gpr::kEax;
      break;
    case Form::kMovRegFromMem:
    case Form::kMovMemFromReg:
      result.reg = GprFromModrmReg(instruction.raw.modrm.reg);
      if (*result.reg == Gpr::kEsp) {
        // mov esp,[tpr] would need a get_tpr_esp handler that returns through the stack it
        // replaces. mov [tpr],esp could be push esp; call set_tpr, but no real HAL does it and
        // a stack-pointer store into the APIC is a bug we should show, not hide.
        return Reject(result, RejectReason::kEspRegister,
                      "ESP is the register moved; such sites are never patched.");
      }
      break;
    case Form::kMovMemFromImm:
      result.imm = static_cast<uint32_t>(instruction.raw.imm[0].value.u);
      break;
    case Form::kPushMem:
    case Form::kAndMemZero:
      break;
  }
  result.patchable = true;
  result.reason = RejectReason::kNone;
  return result;
}

std::optional<Site> CandidateSite(const Classification& classification,
                                  absl::Span<const uint8_t> bytes, uint32_t address) {
  if (!classification.patchable || !classification.form.has_value() ||
      bytes.size() < classification.length) {
    return std::nullopt;
  }
  Site site;
  site.address = address;
  site.form = *classification.form;
  site.reg = classification.reg.value_or(Gpr::kEax);
  site.imm = classification.imm;
  site.original.assign(bytes.begin(), bytes.begin() + classification.length);
  site.state = SiteState::kCandidate;
  return site;
}

}  // namespace tprd::engine

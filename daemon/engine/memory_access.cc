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

constexpr ZydisRegister kGprs[kGprCount] = {
    ZYDIS_REGISTER_EAX, ZYDIS_REGISTER_ECX, ZYDIS_REGISTER_EDX, ZYDIS_REGISTER_EBX,
    ZYDIS_REGISTER_ESP, ZYDIS_REGISTER_EBP, ZYDIS_REGISTER_ESI, ZYDIS_REGISTER_EDI};

std::optional<Gpr> Gpr32(ZydisRegister reg) {
  for (uint8_t i = 0; i < kGprCount; ++i) {
    if (reg == kGprs[i]) return static_cast<Gpr>(i);
  }
  return std::nullopt;
}

// Any 8-, 16- or 32-bit general register as the part of a 32-bit one that holds it.
std::optional<RegisterPart> GprPart(ZydisRegister reg) {
  static constexpr ZydisRegister k16[kGprCount] = {
      ZYDIS_REGISTER_AX, ZYDIS_REGISTER_CX, ZYDIS_REGISTER_DX, ZYDIS_REGISTER_BX,
      ZYDIS_REGISTER_SP, ZYDIS_REGISTER_BP, ZYDIS_REGISTER_SI, ZYDIS_REGISTER_DI};
  // In encoding order: al cl dl bl are the low bytes of eax..ebx, ah ch dh bh the next ones.
  static constexpr ZydisRegister k8[kGprCount] = {
      ZYDIS_REGISTER_AL, ZYDIS_REGISTER_CL, ZYDIS_REGISTER_DL, ZYDIS_REGISTER_BL,
      ZYDIS_REGISTER_AH, ZYDIS_REGISTER_CH, ZYDIS_REGISTER_DH, ZYDIS_REGISTER_BH};
  if (std::optional<Gpr> gpr = Gpr32(reg)) return RegisterPart{*gpr, 0};
  for (uint8_t i = 0; i < kGprCount; ++i) {
    if (reg == k16[i]) return RegisterPart{static_cast<Gpr>(i), 0};
    if (reg == k8[i]) return RegisterPart{static_cast<Gpr>(i % 4), static_cast<uint8_t>(i / 4 * 8)};
  }
  return std::nullopt;
}

// A 32-bit-addressed memory operand's address; nullopt for anything a register file of 32-bit
// general registers cannot reproduce.
std::optional<EncodedAddress> Address(const ZydisDecodedInstruction& instruction,
                                      const ZydisDecodedOperand& op) {
  if (instruction.address_width != 32 || op.mem.type != ZYDIS_MEMOP_TYPE_MEM) return std::nullopt;
  EncodedAddress address;
  switch (op.mem.segment) {
    case ZYDIS_REGISTER_CS:
    case ZYDIS_REGISTER_DS:
    case ZYDIS_REGISTER_ES:
    case ZYDIS_REGISTER_SS:
      address.segment = EncodedAddress::Segment::kFlat;
      break;
    case ZYDIS_REGISTER_FS:
      address.segment = EncodedAddress::Segment::kFs;
      break;
    default:
      address.segment = EncodedAddress::Segment::kOther;
      break;
  }
  if (op.mem.base != ZYDIS_REGISTER_NONE) {
    address.base = Gpr32(op.mem.base);
    if (!address.base) return std::nullopt;
  }
  if (op.mem.index != ZYDIS_REGISTER_NONE) {
    address.index = Gpr32(op.mem.index);
    if (!address.index) return std::nullopt;
    address.scale = op.mem.scale == 0 ? 1 : op.mem.scale;
  }
  address.disp = op.mem.disp.has_displacement ? static_cast<uint32_t>(op.mem.disp.value) : 0;
  return address;
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
  std::optional<Gpr> gpr = Gpr32(d->operands[0].reg.value);
  if (!gpr || *gpr == Gpr::kEsp) return std::nullopt;  // never esp
  return static_cast<uint8_t>(*gpr);
}

std::optional<FlagOnlyRead> DecodeFlagOnlyRead(absl::Span<const uint8_t> bytes) {
  std::optional<Decoded> d = Decode(bytes);
  if (!d || d->instruction.operand_count_visible != 2) return std::nullopt;
  FlagOnlyRead read;
  switch (d->instruction.mnemonic) {
    case ZYDIS_MNEMONIC_CMP:
      read.op = FlagOp::kCmp;
      break;
    case ZYDIS_MNEMONIC_TEST:
      read.op = FlagOp::kTest;
      break;
    default:
      return std::nullopt;
  }
  const ZydisDecodedOperand* memory = nullptr;
  const ZydisDecodedOperand* other = nullptr;
  for (uint8_t i = 0; i < 2; ++i) {
    const ZydisDecodedOperand& op = d->operands[i];
    if (op.type == ZYDIS_OPERAND_TYPE_MEMORY && memory == nullptr) {
      memory = &op;
      read.memory_first = i == 0;
    } else {
      other = &op;
    }
  }
  if (memory == nullptr || other == nullptr) return std::nullopt;
  read.width = memory->size;
  if (read.width != 8 && read.width != 16 && read.width != 32) return std::nullopt;
  std::optional<EncodedAddress> address = Address(d->instruction, *memory);
  if (!address) return std::nullopt;
  read.address = *address;
  if (other->type == ZYDIS_OPERAND_TYPE_REGISTER) {
    read.reg = GprPart(other->reg.value);
    if (!read.reg) return std::nullopt;
  } else if (other->type == ZYDIS_OPERAND_TYPE_IMMEDIATE && !other->imm.is_relative) {
    // Zydis sign-extends a signed immediate (83 /7 ib) to 64 bits; FlagsAfter truncates it to
    // the operand size, which is the value the instruction uses.
    read.imm = static_cast<uint32_t>(other->imm.value.u);
  } else {
    return std::nullopt;
  }
  return read;
}

std::optional<MemoryOperandAt> DecodeMemoryOperand(absl::Span<const uint8_t> bytes) {
  std::optional<Decoded> d = Decode(bytes);
  if (!d) return std::nullopt;
  std::optional<MemoryOperandAt> found;
  for (uint8_t i = 0; i < d->instruction.operand_count_visible; ++i) {
    const ZydisDecodedOperand& op = d->operands[i];
    if (op.type != ZYDIS_OPERAND_TYPE_MEMORY || op.mem.type == ZYDIS_MEMOP_TYPE_AGEN) continue;
    if (found) return std::nullopt;  // movs, cmps: two addresses
    std::optional<EncodedAddress> address = Address(d->instruction, op);
    if (!address) return std::nullopt;
    found = MemoryOperandAt{d->instruction.length, *address};
  }
  return found;
}

}  // namespace tprd::engine

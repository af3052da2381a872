#include "daemon/engine/planner.h"

#include <Zydis/Zydis.h>

#include <string>

#include "absl/strings/str_format.h"

namespace tprd::engine {
namespace {

constexpr size_t kCallLength = 5;

// The original instruction's length for each form (no prefixes, disp32 addressing).
size_t FormLength(Form form) {
  switch (form) {
    case Form::kMovEaxFromMoffs:
    case Form::kMovMoffsFromEax:
      return 5;
    case Form::kMovRegFromMem:
    case Form::kMovMemFromReg:
    case Form::kPushMem:
      return 6;
    case Form::kAndMemZero:
      return 7;
    case Form::kMovMemFromImm:
      return 10;
  }
  return 0;
}

// The bytes that go before the call.
std::vector<uint8_t> LeadBytes(const PlanRequest& request) {
  switch (request.form) {
    case Form::kMovEaxFromMoffs:
    case Form::kMovMoffsFromEax:
      return {};
    case Form::kMovMemFromReg:
      return {static_cast<uint8_t>(0x50 + static_cast<uint8_t>(request.reg))};  // push r
    case Form::kMovRegFromMem:
      return {0x90};  // nop
    case Form::kPushMem:
      return {0x50};  // push eax
    case Form::kAndMemZero:
      return {0x66, 0x90};  // the 2-byte nop (xchg ax, ax): one instruction, as in 8B's case
    case Form::kMovMemFromImm:
      return {0x68, static_cast<uint8_t>(request.imm), static_cast<uint8_t>(request.imm >> 8),
              static_cast<uint8_t>(request.imm >> 16), static_cast<uint8_t>(request.imm >> 24)};
  }
  return {};
}

absl::Status CheckRequest(const PlanRequest& request, const HandlerTable& handlers) {
  const size_t expected = FormLength(request.form);
  if (expected == 0) return absl::InvalidArgumentError("Unknown form.");
  if (request.original_length != expected) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Site 0x%08X: a %s site is %d bytes, not %d.", request.address,
                        std::string(FormName(request.form)), expected, request.original_length));
  }
  if ((request.form == Form::kMovRegFromMem || request.form == Form::kMovMemFromReg) &&
      request.reg == Gpr::kEsp) {
    return absl::InvalidArgumentError(
        absl::StrFormat("Site 0x%08X: esp sites are never patched.", request.address));
  }
  if (static_cast<int>(request.reg) >= kGprCount) {
    return absl::InvalidArgumentError("Register out of range.");
  }
  if (HandlerFor(handlers, request.form, request.reg) == 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("Site 0x%08X: the handler table has no handler for %s %s.", request.address,
                        std::string(FormName(request.form)), std::string(GprName(request.reg))));
  }
  return absl::OkStatus();
}

absl::Status Mismatch(const PlanRequest& request, const std::string& what) {
  return absl::InternalError(
      absl::StrFormat("Site 0x%08X: replacement does not decode as "
                      "intended: %s.",
                      request.address, what));
}

// Checks the one-instruction lead (push r / nop / push imm32) decoded from the replacement.
absl::Status VerifyLead(const ZydisDecodedInstruction& instruction,
                        const ZydisDecodedOperand* operands, const PlanRequest& request) {
  const auto pushes_register = [&](Gpr reg) {
    return instruction.mnemonic == ZYDIS_MNEMONIC_PUSH && instruction.length == 1 &&
           operands[0].type == ZYDIS_OPERAND_TYPE_REGISTER &&
           operands[0].reg.value ==
               static_cast<ZydisRegister>(ZYDIS_REGISTER_EAX + static_cast<int>(reg));
  };
  switch (request.form) {
    case Form::kMovMemFromReg:
      if (!pushes_register(request.reg)) return Mismatch(request, "expected push of the register");
      return absl::OkStatus();
    case Form::kPushMem:
      if (!pushes_register(Gpr::kEax)) return Mismatch(request, "expected push eax");
      return absl::OkStatus();
    case Form::kMovRegFromMem:
      if (instruction.mnemonic != ZYDIS_MNEMONIC_NOP || instruction.length != 1) {
        return Mismatch(request, "expected a one-byte nop");
      }
      return absl::OkStatus();
    case Form::kAndMemZero:
      if (instruction.mnemonic != ZYDIS_MNEMONIC_NOP || instruction.length != 2) {
        return Mismatch(request, "expected the two-byte nop 66 90");
      }
      return absl::OkStatus();
    case Form::kMovMemFromImm:
      if (instruction.mnemonic != ZYDIS_MNEMONIC_PUSH || instruction.length != 5 ||
          instruction.operand_width != 32 || operands[0].type != ZYDIS_OPERAND_TYPE_IMMEDIATE ||
          static_cast<uint32_t>(operands[0].imm.value.u) != request.imm) {
        return Mismatch(request, "expected push imm32 of the original immediate");
      }
      return absl::OkStatus();
    case Form::kMovEaxFromMoffs:
    case Form::kMovMoffsFromEax:
      break;
  }
  return Mismatch(request, "this form has no instruction before the call");
}

}  // namespace

uint32_t HandlerFor(const HandlerTable& handlers, Form form, Gpr reg) {
  switch (form) {
    case Form::kMovEaxFromMoffs:
      return handlers.get_tpr[static_cast<int>(Gpr::kEax)];
    case Form::kMovMoffsFromEax:
      return handlers.set_tpr_eax;
    case Form::kMovRegFromMem:
      if (reg == Gpr::kEsp || static_cast<int>(reg) >= kGprCount) return 0;
      return handlers.get_tpr[static_cast<int>(reg)];
    case Form::kMovMemFromReg:
    case Form::kMovMemFromImm:
      return handlers.set_tpr;
    case Form::kPushMem:
      return handlers.get_tpr_stack;
    case Form::kAndMemZero:
      return handlers.and_tpr_zero;
  }
  return 0;
}

absl::StatusOr<std::vector<uint8_t>> PlanReplacement(const PlanRequest& request,
                                                     const HandlerTable& handlers) {
  if (absl::Status status = CheckRequest(request, handlers); !status.ok()) return status;
  std::vector<uint8_t> bytes = LeadBytes(request);
  const uint32_t call_address = request.address + static_cast<uint32_t>(bytes.size());
  const uint32_t target = HandlerFor(handlers, request.form, request.reg);
  // Unsigned wrap-around is exactly the CPU's 32-bit EIP arithmetic.
  const uint32_t rel32 = target - (call_address + static_cast<uint32_t>(kCallLength));
  bytes.insert(bytes.end(), {0xE8, static_cast<uint8_t>(rel32), static_cast<uint8_t>(rel32 >> 8),
                             static_cast<uint8_t>(rel32 >> 16), static_cast<uint8_t>(rel32 >> 24)});
  if (absl::Status status = VerifyReplacement(bytes, request, handlers); !status.ok()) {
    return status;
  }
  return bytes;
}

absl::StatusOr<std::vector<uint8_t>> PlanReplacement(const Site& site,
                                                     const HandlerTable& handlers) {
  PlanRequest request;
  request.address = site.address;
  request.form = site.form;
  request.reg = site.reg;
  request.imm = site.imm;
  request.original_length = site.original.size();
  return PlanReplacement(request, handlers);
}

absl::Status VerifyReplacement(absl::Span<const uint8_t> replacement, const PlanRequest& request,
                               const HandlerTable& handlers) {
  if (absl::Status status = CheckRequest(request, handlers); !status.ok()) return status;
  if (replacement.size() != request.original_length) {
    return Mismatch(request, absl::StrFormat("%d bytes instead of %d", replacement.size(),
                                             request.original_length));
  }
  ZydisDecoder decoder;
  if (!ZYAN_SUCCESS(
          ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32))) {
    return absl::InternalError("The decoder could not be initialised.");
  }
  ZydisDecodedInstruction instruction;
  ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
  size_t offset = 0;
  const size_t lead_length = request.original_length - kCallLength;
  if (lead_length > 0) {
    if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder, replacement.data(), lead_length,
                                             &instruction, operands))) {
      return Mismatch(request, "the bytes before the call do not decode");
    }
    if (absl::Status status = VerifyLead(instruction, operands, request); !status.ok()) {
      return status;
    }
    offset = instruction.length;
  }
  if (offset != lead_length) return Mismatch(request, "the call does not start where expected");
  if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder, replacement.data() + offset,
                                           replacement.size() - offset, &instruction, operands)) ||
      instruction.mnemonic != ZYDIS_MNEMONIC_CALL || instruction.length != kCallLength ||
      instruction.raw.prefix_count != 0 || operands[0].type != ZYDIS_OPERAND_TYPE_IMMEDIATE) {
    return Mismatch(request, "expected a 5-byte call rel32 at the end");
  }
  const uint32_t call_address = request.address + static_cast<uint32_t>(offset);
  ZyanU64 target = 0;
  if (!ZYAN_SUCCESS(ZydisCalcAbsoluteAddress(&instruction, &operands[0], call_address, &target))) {
    return Mismatch(request, "the call target cannot be computed");
  }
  const uint32_t expected = HandlerFor(handlers, request.form, request.reg);
  if (static_cast<uint32_t>(target) != expected) {
    return Mismatch(request, absl::StrFormat("the call goes to 0x%08X, not the handler at 0x%08X",
                                             static_cast<uint32_t>(target), expected));
  }
  return absl::OkStatus();
}

}  // namespace tprd::engine

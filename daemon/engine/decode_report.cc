#include "daemon/engine/decode_report.h"

#include <Zydis/Zydis.h>

#include <algorithm>
#include <nlohmann/json.hpp>

#include "absl/strings/str_format.h"
#include "daemon/engine/hex.h"
#include "daemon/engine/planner.h"

namespace tprd::engine {
namespace {

std::string Disassemble(absl::Span<const uint8_t> bytes, uint32_t address) {
  ZydisDecoder decoder;
  ZydisFormatter formatter;
  ZydisDecodedInstruction instruction;
  ZydisDecodedOperand operands[ZYDIS_MAX_OPERAND_COUNT];
  char text[256] = {};
  if (!ZYAN_SUCCESS(
          ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32)) ||
      !ZYAN_SUCCESS(ZydisFormatterInit(&formatter, ZYDIS_FORMATTER_STYLE_INTEL)) ||
      // "dword ptr" always: the operand size decides whether a form is patchable.
      !ZYAN_SUCCESS(ZydisFormatterSetProperty(&formatter, ZYDIS_FORMATTER_PROP_FORCE_SIZE, 1)) ||
      !ZYAN_SUCCESS(
          ZydisDecoderDecodeFull(&decoder, bytes.data(), bytes.size(), &instruction, operands)) ||
      !ZYAN_SUCCESS(ZydisFormatterFormatInstruction(&formatter, &instruction, operands,
                                                    instruction.operand_count_visible, text,
                                                    sizeof(text), address, nullptr))) {
    return "";
  }
  return text;
}

std::string Hex32(uint32_t value) { return absl::StrFormat("0x%08x", value); }

}  // namespace

DecodeReport BuildDecodeReport(absl::Span<const uint8_t> bytes, uint32_t address, uint32_t tpr_va,
                               const std::optional<HandlerTable>& handlers) {
  DecodeReport report;
  report.address = address;
  report.tpr_va = tpr_va;
  report.classification = Classify(bytes, address, tpr_va);
  const size_t length =
      report.classification.length == 0 ? bytes.size() : report.classification.length;
  report.bytes.assign(bytes.begin(), bytes.begin() + std::min(length, bytes.size()));
  if (report.classification.length != 0) report.disassembly = Disassemble(report.bytes, address);

  if (report.classification.patchable && handlers.has_value()) {
    const std::optional<Site> site = CandidateSite(report.classification, report.bytes, address);
    if (!site.has_value()) {
      report.replacement_error = "The classification does not describe a site.";
    } else if (absl::StatusOr<std::vector<uint8_t>> replacement = PlanReplacement(*site, *handlers);
               replacement.ok()) {
      report.replacement = *std::move(replacement);
    } else {
      report.replacement_error = std::string(replacement.status().message());
    }
  }
  return report;
}

std::string DecodeReportJson(const DecodeReport& report, int indent) {
  const Classification& c = report.classification;
  nlohmann::ordered_json json;
  json["address"] = Hex32(report.address);
  json["bytes"] = HexEncode(report.bytes);
  json["length"] = c.length;
  json["tpr_access"] = c.tpr_access;
  json["form"] = c.form ? nlohmann::ordered_json(std::string(FormName(*c.form))) : nullptr;
  json["register"] = c.reg ? nlohmann::ordered_json(std::string(GprName(*c.reg))) : nullptr;
  json["imm"] = c.form == Form::kMovMemFromImm ? nlohmann::ordered_json(Hex32(c.imm)) : nullptr;
  json["patchable"] = c.patchable;
  json["reason"] = std::string(RejectReasonName(c.reason));
  json["reason_detail"] = c.detail;
  json["disassembly"] = report.disassembly;
  json["replacement"] = HexEncode(report.replacement);
  if (!report.replacement_error.empty()) json["replacement_error"] = report.replacement_error;
  // Guest bytes can be anything; replace rather than throw on invalid UTF-8 (there is none
  // today, but the dump must never be the thing that fails).
  return json.dump(indent, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

std::string DecodeReportText(const DecodeReport& report) {
  const Classification& c = report.classification;
  std::string out;
  absl::StrAppendFormat(&out, "address:     0x%08x\n", report.address);
  absl::StrAppendFormat(&out, "bytes:       %s (%d)\n", HexEncode(report.bytes), c.length);
  absl::StrAppendFormat(&out, "disassembly: %s\n",
                        report.disassembly.empty() ? "(does not decode)" : report.disassembly);
  absl::StrAppendFormat(&out, "tpr access:  %s (tpr 0x%08x)\n", c.tpr_access ? "yes" : "no",
                        report.tpr_va);
  if (c.form.has_value()) {
    absl::StrAppendFormat(&out, "form:        %s\n", std::string(FormName(*c.form)));
  }
  if (c.reg.has_value()) {
    absl::StrAppendFormat(&out, "register:    %s\n", std::string(GprName(*c.reg)));
  }
  if (c.form == Form::kMovMemFromImm) absl::StrAppendFormat(&out, "imm:         0x%08x\n", c.imm);
  if (c.patchable) {
    absl::StrAppendFormat(&out, "patchable:   yes\n");
  } else {
    absl::StrAppendFormat(&out, "patchable:   no: %s: %s\n",
                          std::string(RejectReasonName(c.reason)), c.detail);
  }
  if (!report.replacement.empty()) {
    absl::StrAppendFormat(&out, "replacement: %s\n", HexEncode(report.replacement));
  } else if (!report.replacement_error.empty()) {
    absl::StrAppendFormat(&out, "replacement: none: %s\n", report.replacement_error);
  }
  return out;
}

}  // namespace tprd::engine

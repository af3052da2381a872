// What `tprctl decode` prints: the classifier's and the planner's view of one instruction, as a
// struct, as JSON and as readable text.
#ifndef TPRD_DAEMON_ENGINE_DECODE_REPORT_H_
#define TPRD_DAEMON_ENGINE_DECODE_REPORT_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/types/span.h"
#include "daemon/engine/classifier.h"
#include "daemon/engine/site.h"

namespace tprd::engine {

// Default virtual address of the guest blob: physical 0xE8000 (the first RAM after SeaBIOS's
// option-ROM area) seen through Windows' linear map at 0x80000000.
inline constexpr uint32_t kDefaultBlobVa = 0x800E8000;

// TODO(integrator): replace with the guest blob's own handler table (daemon/engine/blob.h) once
// it exists. Placeholder layout: handler i at blob_va + 0x100 + 0x20 * i, in the order set_tpr,
// set_tpr_eax, get_tpr_eax..get_tpr_edi (esp slot left 0), get_tpr_stack.
HandlerTable HandlerTableForDefaultLayout(uint32_t blob_va);

struct DecodeReport {
  uint32_t address = 0;
  uint32_t tpr_va = kDefaultTprVa;
  std::vector<uint8_t> bytes;  // the instruction's bytes (all input bytes when undecodable)
  Classification classification;
  std::string disassembly;           // Intel syntax, absolute addresses; empty if undecodable
  std::vector<uint8_t> replacement;  // empty when not patchable or no handler table
  std::string replacement_error;     // why a patchable site got no replacement (planner error)
};

// Never fails: undecodable bytes are a report with reason "undecodable".
DecodeReport BuildDecodeReport(absl::Span<const uint8_t> bytes, uint32_t address, uint32_t tpr_va,
                               const std::optional<HandlerTable>& handlers);

// One JSON object. Keys: address, bytes, length, tpr_access, form, register, imm, patchable,
// reason, reason_detail, disassembly, replacement (see docs/usage.md "tprctl decode").
// indent < 0: one line.
std::string DecodeReportJson(const DecodeReport& report, int indent = -1);
// Readable multi-line summary, ending in a newline.
std::string DecodeReportText(const DecodeReport& report);

// Lower-case hex without separators ("a18000feff").
std::string HexString(absl::Span<const uint8_t> bytes);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_DECODE_REPORT_H_

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

// Default virtual address of the guest blob (tprctl decode --blob-va; handlers from
// HandlerTableForBlob in daemon/engine/blob.h): physical 0xE8000 (the first RAM after SeaBIOS's
// option-ROM area) seen through Windows' linear map at 0x80000000.
inline constexpr uint32_t kDefaultBlobVa = 0x800E8000;

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

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_DECODE_REPORT_H_

// Backward decoder: from a data watchpoint's trap PC (the address AFTER the access) to the
// instruction that made the access.
#ifndef TPRD_DAEMON_ENGINE_BACKWARD_DECODER_H_
#define TPRD_DAEMON_ENGINE_BACKWARD_DECODER_H_

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "daemon/engine/classifier.h"
#include "daemon/engine/site.h"

namespace tprd::engine {

// Reads guest bytes at a virtual address; an error for bytes it cannot read (unmapped page).
using GuestByteReader = std::function<absl::Status(uint32_t va, absl::Span<uint8_t> out)>;

// A reader over a buffer holding the guest bytes from `base` on; reads outside it fail.
// The span must outlive the reader.
GuestByteReader SpanByteReader(absl::Span<const uint8_t> bytes, uint32_t base);

struct BackwardDecodeResult {
  enum class Outcome : uint8_t {
    kFound,      // exactly one candidate: `start` and `classification` are set
    kNone,       // no start in [pc-15, pc-1] decodes to end at pc and names the TPR
    kAmbiguous,  // more than one does: `candidates` lists them
  };
  Outcome outcome = Outcome::kNone;
  std::optional<uint32_t> start;
  // Of the found instruction: it names the TPR but may still be unpatchable (see reason).
  Classification classification;
  // Every start whose instruction ends exactly at pc and names the TPR, lowest first.
  std::vector<uint32_t> candidates;
  // Empty when found; else "none" or "ambiguous" and a sentence (candidates, unreadable bytes).
  std::string reason;
  std::string detail;
};
std::string_view BackwardOutcomeName(BackwardDecodeResult::Outcome outcome);

// Tries every start from pc-15 to pc-1. Bytes before pc that cannot be read (an unmapped page
// before pc's page) only remove the starts that need them; an error only when not even the
// bytes of pc's own page before pc can be read.
absl::StatusOr<BackwardDecodeResult> DecodeBackward(uint32_t trap_pc, const GuestByteReader& read,
                                                    uint32_t tpr_va = kDefaultTprVa);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_BACKWARD_DECODER_H_

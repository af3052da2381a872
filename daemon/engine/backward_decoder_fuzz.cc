// Fuzzes the backward decoder. Input: 4 bytes TPR address, 1 byte of how many bytes before the
// buffer end the trap pc lies, then guest bytes mapped at a page-straddling base, so the
// unreadable-page path is reached too.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "daemon/engine/backward_decoder.h"

namespace {

void Check(bool invariant) {
  if (!invariant) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tprd::engine;
  using Outcome = BackwardDecodeResult::Outcome;
  if (size < 5) return 0;
  uint32_t tpr;
  std::memcpy(&tpr, data, sizeof(tpr));
  const uint8_t back = data[4];
  const absl::Span<const uint8_t> bytes(data + 5, size - 5);
  const uint32_t base = 0x80010FF8;  // 8 bytes before a page boundary
  const uint32_t end = base + static_cast<uint32_t>(bytes.size());
  const uint32_t pc = end - std::min<uint32_t>(back, static_cast<uint32_t>(bytes.size()));

  const absl::StatusOr<BackwardDecodeResult> result =
      DecodeBackward(pc, SpanByteReader(bytes, base), tpr);
  if (!result.ok()) return 0;
  switch (result->outcome) {
    case Outcome::kFound:
      Check(result->candidates.size() == 1 && result->start.has_value());
      Check(*result->start + result->classification.length == pc);
      Check(result->classification.tpr_access && result->reason.empty());
      break;
    case Outcome::kNone:
      Check(result->candidates.empty() && !result->start.has_value() && result->reason == "none");
      break;
    case Outcome::kAmbiguous:
      Check(result->candidates.size() > 1 && !result->start.has_value());
      Check(result->reason == "ambiguous");
      break;
  }
  for (uint32_t start : result->candidates) Check(start < pc && pc - start <= 15);
  return 0;
}

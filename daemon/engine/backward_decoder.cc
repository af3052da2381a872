#include "daemon/engine/backward_decoder.h"

#include <Zydis/Zydis.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"

namespace tprd::engine {
namespace {

constexpr uint32_t kMaxInstructionLength = ZYDIS_MAX_INSTRUCTION_LENGTH;  // 15
constexpr uint32_t kPageSize = 4096;

struct Window {
  uint32_t base = 0;  // address of bytes[0]; the window ends at the trap pc
  std::vector<uint8_t> bytes;
};

// The bytes before pc: up to 15, fewer at address 0 or when the page before pc's page cannot be
// read.
absl::StatusOr<Window> ReadWindow(uint32_t trap_pc, const GuestByteReader& read) {
  Window window;
  const uint32_t wanted = std::min(trap_pc, kMaxInstructionLength);
  window.base = trap_pc - wanted;
  window.bytes.resize(wanted);
  if (wanted == 0) return window;
  absl::Status status = read(window.base, absl::MakeSpan(window.bytes));
  if (status.ok()) return window;

  const uint32_t page_start = (trap_pc - 1) & ~(kPageSize - 1);
  if (page_start <= window.base) return status;  // nothing shorter to try
  window.base = page_start;
  window.bytes.assign(trap_pc - page_start, 0);
  status = read(window.base, absl::MakeSpan(window.bytes));
  if (!status.ok()) return status;
  return window;
}

std::string HexList(const std::vector<uint32_t>& addresses) {
  return absl::StrJoin(addresses, ", ", [](std::string* out, uint32_t address) {
    absl::StrAppendFormat(out, "0x%08X", address);
  });
}

}  // namespace

GuestByteReader SpanByteReader(absl::Span<const uint8_t> bytes, uint32_t base) {
  return [bytes, base](uint32_t va, absl::Span<uint8_t> out) -> absl::Status {
    const uint64_t offset = static_cast<uint64_t>(va) - base;
    if (va < base || offset + out.size() > bytes.size()) {
      return absl::OutOfRangeError(
          absl::StrFormat("0x%08X+%d is outside the buffer", va, out.size()));
    }
    if (!out.empty()) std::memcpy(out.data(), bytes.data() + offset, out.size());
    return absl::OkStatus();
  };
}

std::string_view BackwardOutcomeName(BackwardDecodeResult::Outcome outcome) {
  switch (outcome) {
    case BackwardDecodeResult::Outcome::kFound:
      return "found";
    case BackwardDecodeResult::Outcome::kNone:
      return "none";
    case BackwardDecodeResult::Outcome::kAmbiguous:
      return "ambiguous";
  }
  return "unknown";
}

absl::StatusOr<BackwardDecodeResult> DecodeBackward(uint32_t trap_pc, const GuestByteReader& read,
                                                    uint32_t tpr_va) {
  absl::StatusOr<Window> window = ReadWindow(trap_pc, read);
  if (!window.ok()) return window.status();

  BackwardDecodeResult result;
  std::optional<Classification> match;
  for (size_t offset = 0; offset < window->bytes.size(); ++offset) {
    const uint32_t start = window->base + static_cast<uint32_t>(offset);
    const absl::Span<const uint8_t> tail = absl::MakeConstSpan(window->bytes).subspan(offset);
    Classification classification = Classify(tail, start, tpr_va);
    if (classification.length != tail.size() || !classification.tpr_access) continue;
    result.candidates.push_back(start);
    match = std::move(classification);
  }

  const uint32_t unread =
      std::min(trap_pc, kMaxInstructionLength) - static_cast<uint32_t>(window->bytes.size());
  const std::string unread_note =
      unread == 0 ? ""
                  : absl::StrFormat(" (the %d bytes before 0x%08X could not be read)", unread,
                                    window->base);
  if (result.candidates.empty()) {
    result.outcome = BackwardDecodeResult::Outcome::kNone;
    result.reason = "none";
    result.detail =
        absl::StrFormat("No instruction ending at 0x%08X addresses the TPR at 0x%08X%s.", trap_pc,
                        tpr_va, unread_note);
  } else if (result.candidates.size() > 1) {
    result.outcome = BackwardDecodeResult::Outcome::kAmbiguous;
    result.reason = "ambiguous";
    result.detail =
        absl::StrFormat("%d instructions ending at 0x%08X address the TPR, starting at %s.",
                        result.candidates.size(), trap_pc, HexList(result.candidates));
  } else {
    result.outcome = BackwardDecodeResult::Outcome::kFound;
    result.start = result.candidates.front();
    result.classification = std::move(*match);
  }
  return result;
}

}  // namespace tprd::engine

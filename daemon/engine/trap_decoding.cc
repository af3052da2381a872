#include "daemon/engine/trap_decoding.h"

#include <algorithm>
#include <vector>

#include "daemon/engine/flag_fixup.h"
#include "daemon/engine/memory_access.h"

namespace tprd::engine {
namespace {

// The bytes of the instruction at `start` a classification decoded; nullopt when the guest
// memory cannot be read (then nothing is assumed about the instruction).
std::optional<std::vector<uint8_t>> InstructionBytes(const Classification& c, uint32_t start,
                                                     const GuestByteReader& reader) {
  std::vector<uint8_t> bytes(std::max<size_t>(1, std::min<size_t>(15, c.length)));
  if (!reader(start, absl::MakeSpan(bytes)).ok()) return std::nullopt;
  return bytes;
}

// For a cmp/test of the TPR (which writes only EFLAGS): how to recompute its flags.
std::optional<FlagOnlyRead> FlagOnlyReadAt(const Classification& c, uint32_t start,
                                           const GuestByteReader& reader) {
  if (c.form) return std::nullopt;  // one of the seven forms (mov, push, and [tpr],0)
  std::optional<std::vector<uint8_t>> bytes = InstructionBytes(c, start, reader);
  if (!bytes) return std::nullopt;
  return DecodeFlagOnlyRead(*bytes);
}

}  // namespace

std::optional<std::pair<uint32_t, Classification>> ResolveTrap(uint32_t pc,
                                                               const GuestByteReader& reader,
                                                               uint32_t tpr_va, std::string* why) {
  absl::StatusOr<BackwardDecodeResult> decoded = DecodeBackward(pc, reader, tpr_va);
  if (!decoded.ok()) {
    *why = std::string(decoded.status().message());
    return std::nullopt;
  }
  if (decoded->outcome == BackwardDecodeResult::Outcome::kFound) {
    return std::make_pair(*decoded->start, decoded->classification);
  }
  *why = decoded->detail.empty() ? decoded->reason : decoded->detail;
  if (decoded->outcome != BackwardDecodeResult::Outcome::kAmbiguous) return std::nullopt;
  // "26 8B 15 tpr" is es: mov edx,[tpr] and also, from the 8B, mov edx,[tpr]: whether 26 is a
  // prefix or the end of the instruction before cannot be told, and does not matter, since
  // cs/ds/es/ss are flat. Such decodings collapse into the longest (prefixed, so never
  // patched); any other pair of absolute decodings is truly ambiguous.
  std::optional<std::pair<uint32_t, Classification>> absolute;
  for (uint32_t start : decoded->candidates) {
    uint8_t bytes[15];
    const size_t length = std::min<size_t>(15, pc - start);
    if (!reader(start, absl::MakeSpan(bytes, length)).ok()) return std::nullopt;
    Classification c = Classify(absl::MakeConstSpan(bytes, length), start, tpr_va);
    if (c.reason == RejectReason::kRegisterRelative || c.reason == RejectReason::kSib) continue;
    if (!absolute) {
      absolute = std::make_pair(start, c);  // candidates come lowest (longest) first
      continue;
    }
    std::vector<uint8_t> between(start - absolute->first);
    if (!reader(absolute->first, absl::MakeSpan(between)).ok()) return std::nullopt;
    for (uint8_t b : between) {
      if (b != 0x26 && b != 0x2E && b != 0x36 && b != 0x3E) return std::nullopt;
    }
  }
  return absolute;
}

std::optional<std::pair<uint32_t, Classification>> ResolveByAddress(uint32_t pc,
                                                                    const GuestByteReader& reader,
                                                                    uint32_t tpr_va,
                                                                    const VcpuRegisters& regs) {
  // The bytes before pc; only those of pc's own page when the page before is not mapped.
  uint32_t first = pc >= 15 ? pc - 15 : 0;
  std::vector<uint8_t> window(pc - first);
  if (!reader(first, absl::MakeSpan(window)).ok()) {
    first = std::max(first, pc & ~0xFFFu);
    window.resize(pc - first);
    if (window.empty() || !reader(first, absl::MakeSpan(window)).ok()) return std::nullopt;
  }
  std::optional<std::pair<uint32_t, Classification>> found;
  for (uint32_t start = first; start < pc; ++start) {
    const auto tail = absl::MakeConstSpan(window).subspan(start - first);
    std::optional<MemoryOperandAt> operand = DecodeMemoryOperand(tail);
    if (!operand || operand->length != tail.size() ||
        LinearAddress(operand->address, regs) != tpr_va) {
      continue;
    }
    if (found) return std::nullopt;
    Classification c = Classify(tail, start, tpr_va);
    if (!c.tpr_access) c.detail = "The address reaches the TPR only through its registers.";
    found = std::make_pair(start, std::move(c));
  }
  return found;
}

bool IsWriter(const Classification& c, uint32_t start, const GuestByteReader& reader) {
  if (c.form) return FormWritesTpr(*c.form);
  std::optional<std::vector<uint8_t>> bytes = InstructionBytes(c, start, reader);
  if (!bytes) return true;
  return WritesMemoryOperand(*bytes).value_or(true);
}

std::optional<Gpr> FixableReadDestination(const Classification& c, uint32_t start,
                                          const GuestByteReader& reader) {
  if (c.form == Form::kMovEaxFromMoffs || c.form == Form::kMovRegFromMem) {
    return c.reg.value_or(Gpr::kEax);
  }
  std::optional<std::vector<uint8_t>> bytes = InstructionBytes(c, start, reader);
  if (!bytes) return std::nullopt;
  std::optional<uint8_t> reg = MovLoadDestination(*bytes);
  if (!reg) return std::nullopt;
  return static_cast<Gpr>(*reg);
}

std::optional<uint32_t> FixedEflags(const Classification& c, uint32_t start,
                                    const GuestByteReader& reader, uint8_t shadow, uint32_t tpr_va,
                                    const VcpuRegisters& regs) {
  std::optional<FlagOnlyRead> read = FlagOnlyReadAt(c, start, reader);
  if (!read) return std::nullopt;
  // The APIC answers a read of the TPR register with the 8-bit TPR, upper bytes zero.
  return FixedFlags(*read, shadow, tpr_va, regs);
}

bool IsFixableRead(const Classification& c, uint32_t start, const GuestByteReader& reader) {
  return c.form == Form::kPushMem || FixableReadDestination(c, start, reader) ||
         FlagOnlyReadAt(c, start, reader);
}

}  // namespace tprd::engine

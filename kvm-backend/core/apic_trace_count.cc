#include "kvm-backend/core/apic_trace_count.h"

#include "absl/strings/numbers.h"
#include "absl/strings/strip.h"

namespace tprd::backend {
namespace {

// A line longer than this is not a trace line of these events; it is dropped, not buffered.
constexpr size_t kMaxLineBytes = 4096;

}  // namespace

void ApicTraceCounter::CountLine(std::string_view line) {
  // The log backend prefixes "PID@SECONDS.MICROS:" when QEMU logs with timestamps.
  const size_t event = line.find("apic_mem_");
  if (event == std::string_view::npos) return;
  // Debian's Abseil has its own string_view (docs: toolchain traps).
  absl::string_view rest(line.data() + event, line.size() - event);
  bool read;
  if (absl::ConsumePrefix(&rest, "apic_mem_readl ")) {
    read = true;
  } else if (absl::ConsumePrefix(&rest, "apic_mem_writel ")) {
    read = false;
  } else {
    return;
  }
  if (!absl::ConsumePrefix(&rest, "0x")) return;
  const size_t end = rest.find_first_not_of("0123456789abcdefABCDEF");
  uint64_t offset = 0;
  if (!absl::SimpleHexAtoi(rest.substr(0, end), &offset)) return;
  if (offset == 0x80) {
    (read ? count_.tpr_reads : count_.tpr_writes)++;
  } else {
    count_.other++;
  }
}

void ApicTraceCounter::Feed(std::string_view chunk) {
  while (!chunk.empty()) {
    const size_t eol = chunk.find('\n');
    if (eol == std::string_view::npos) {
      if (!dropping_ && partial_.size() + chunk.size() <= kMaxLineBytes) {
        partial_.append(chunk);
      } else {
        dropping_ = true;  // too long for a trace line of these events: skip to its newline
        partial_.clear();
      }
      return;
    }
    if (dropping_) {
      dropping_ = false;
    } else if (partial_.empty()) {
      CountLine(chunk.substr(0, eol));
    } else {
      partial_.append(chunk.substr(0, eol));
      CountLine(partial_);
      partial_.clear();
    }
    chunk.remove_prefix(eol + 1);
  }
}

ApicTraceCount ApicTraceCounter::Finish() {
  if (!partial_.empty() && !dropping_) {
    CountLine(partial_);
  }
  partial_.clear();
  dropping_ = false;
  return count_;
}

ApicTraceCount CountApicTrace(std::string_view text) {
  ApicTraceCounter counter;
  counter.Feed(text);
  return counter.Finish();
}

}  // namespace tprd::backend

// Counting the TPR accesses that reached QEMU's APIC emulation, from QEMU's `log` trace backend:
// lines `[PID@TIME:]apic_mem_readl 0x80 = 0x...` and `apic_mem_writel 0x80 = 0x...` (QEMU 7.2's
// apic_mem_readl/apic_mem_writel events; offset 0x80 is the TPR). Pure: fed text in chunks of
// any size (a line may span two chunks), no I/O. Used by tprd's "before" sample
// (kvm-backend/apic_trace_sampler.h) and by bench/.
#ifndef TPRD_KVM_BACKEND_CORE_APIC_TRACE_COUNT_H_
#define TPRD_KVM_BACKEND_CORE_APIC_TRACE_COUNT_H_

#include <cstdint>
#include <string>
#include <string_view>

namespace tprd::backend {

struct ApicTraceCount {
  uint64_t tpr_reads = 0;
  uint64_t tpr_writes = 0;
  uint64_t other = 0;  // accesses to other APIC registers (ICR, EOI, timer, ...)
};

class ApicTraceCounter {
 public:
  // Adds the complete lines in `chunk` (with what was left of the previous chunk); keeps an
  // incomplete last line for the next call.
  void Feed(std::string_view chunk);
  // The counts so far, including a last line with no newline.
  ApicTraceCount Finish();

 private:
  void CountLine(std::string_view line);

  ApicTraceCount count_;
  std::string partial_;    // the start of a line whose newline has not come yet
  bool dropping_ = false;  // inside a line too long to be one of these events
};

// All of `text` at once.
ApicTraceCount CountApicTrace(std::string_view text);

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_CORE_APIC_TRACE_COUNT_H_

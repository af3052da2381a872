// ApicTraceCounter: QEMU 7.2's log-backend lines for apic_mem_readl/apic_mem_writel, fed whole
// or in pieces of any size.
#include "kvm-backend/core/apic_trace_count.h"

#include <string>

#include "gtest/gtest.h"

namespace tprd::backend {
namespace {

// As QEMU 7.2 writes them with `-msg timestamp=on` (libvirt's default): PID@TIME:EVENT ARGS.
constexpr char kCaptured[] =
    "24480@1796630184.435442:apic_mem_readl 0x230 = 0x00000000\n"
    "24480@1796630184.435472:apic_mem_readl 0x80 = 0x00000041\n"
    "24480@1796630184.435475:apic_mem_writel 0x80 = 0x00000000\n"
    "24481@1796630184.435476:apic_mem_writel 0x300 = 0x000c40fd\n"
    "apic_mem_readl 0x80 = 0x0000003d\n"
    "24481@1796630184.435478:apic_mem_readl 0x800 = 0x00000000\n"
    "24481@1796630184.435479:apic_report_irq_delivered coalescing 0\n"
    "24481@1796630184.435480:apic_mem_writel 0x80";  // cut off: the file ends mid-line

TEST(ApicTraceCounter, CountsTprReadsAndWritesAndOtherRegisters) {
  const ApicTraceCount count = CountApicTrace(kCaptured);
  EXPECT_EQ(count.tpr_reads, 2u);
  EXPECT_EQ(count.tpr_writes, 2u) << "the last line counts although no newline ends it";
  EXPECT_EQ(count.other, 3u) << "0x230, 0x300 and 0x800 (not 0x80: offsets are compared whole)";
}

TEST(ApicTraceCounter, PiecesOfAnySizeCountAsTheWhole) {
  const std::string text = kCaptured;
  const ApicTraceCount whole = CountApicTrace(text);
  for (size_t piece = 1; piece < 40; ++piece) {
    ApicTraceCounter counter;
    for (size_t at = 0; at < text.size(); at += piece) counter.Feed(text.substr(at, piece));
    const ApicTraceCount count = counter.Finish();
    EXPECT_EQ(count.tpr_reads, whole.tpr_reads) << "pieces of " << piece;
    EXPECT_EQ(count.tpr_writes, whole.tpr_writes) << "pieces of " << piece;
    EXPECT_EQ(count.other, whole.other) << "pieces of " << piece;
  }
}

TEST(ApicTraceCounter, AnOverlongLineIsSkippedWithoutLosingTheNextOne) {
  ApicTraceCounter counter;
  counter.Feed("x");
  counter.Feed(std::string(10000, 'y') + "apic_mem_readl 0x80 = 0x0");  // no newline yet
  counter.Feed("\napic_mem_readl 0x80 = 0x0\n");
  const ApicTraceCount count = counter.Finish();
  EXPECT_EQ(count.tpr_reads, 1u) << "only the line after the overlong one";
}

TEST(ApicTraceCounter, OtherTextIsNotCounted) {
  const ApicTraceCount count = CountApicTrace(
      "apic_mem_readlx 0x80\napic_mem_readl 80 = 0\napic_mem_readl 0xzz\n\n\napic_mem_\n");
  EXPECT_EQ(count.tpr_reads + count.tpr_writes + count.other, 0u);
}

}  // namespace
}  // namespace tprd::backend

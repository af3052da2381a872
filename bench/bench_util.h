// Small helpers for the benchmark harness (bench/tpr_bench*.cc): child processes, statistics,
// QEMU trace counting. Not a library anyone else should use.
#ifndef TPRD_BENCH_BENCH_UTIL_H_
#define TPRD_BENCH_BENCH_UTIL_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "tests/support/subprocess.h"

namespace tprd::bench {

// Child processes: tests/support/subprocess.h, shared with the end-to-end tests.
using testing::ReadFile;
using testing::RssKib;
using testing::Run;
using testing::RunResult;
using testing::Spawn;
using testing::Stop;

uint64_t FileSize(const std::string& path);
double NowSeconds();  // Unix time with fraction

struct Summary {
  size_t n = 0;
  double median = 0, min = 0, max = 0;
};
Summary Summarize(std::vector<double> values);

// Percentile (0..100) of unsorted values, nearest rank.
double Percentile(std::vector<double> values, double p);

// Counts QEMU log-backend trace lines `apic_mem_readl 0x80 = ...` / `apic_mem_writel 0x80 = ...`
// (with or without the "pid@time:" prefix) in `text`: TPR accesses that reached QEMU's APIC.
struct TprTraceCount {
  uint64_t reads = 0, writes = 0;  // offset 0x80 only
  uint64_t other = 0;              // other APIC registers
};
TprTraceCount CountTprTrace(const std::string& text);

// Kilobytes of resident memory of `pid` (VmRSS), 0 if unknown.

}  // namespace tprd::bench

#endif  // TPRD_BENCH_BENCH_UTIL_H_

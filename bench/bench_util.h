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

}  // namespace tprd::bench

#endif  // TPRD_BENCH_BENCH_UTIL_H_

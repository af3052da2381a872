// Engine micro-benchmarks (Google Benchmark): classify one instruction, plan one replacement,
// decode backwards from one trap PC, scan guest code. Pure engine code, no guest.
//   build-bench/bench/tprd_micro_bench [--benchmark_format=json]
#include <benchmark/benchmark.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "daemon/engine/backward_decoder.h"
#include "daemon/engine/blob.h"
#include "daemon/engine/classifier.h"
#include "daemon/engine/page_walker.h"
#include "daemon/engine/planner.h"
#include "daemon/engine/scanner.h"

namespace tprd::engine {
namespace {

constexpr uint32_t kSiteVa = 0x80101000;

// The test guest's forms, and two that are rejected.
const std::vector<std::vector<uint8_t>>& Instructions() {
  static const std::vector<std::vector<uint8_t>> forms = {
      {0xA1, 0x80, 0x00, 0xFE, 0xFF},                       // mov eax,[tpr]
      {0xA3, 0x80, 0x00, 0xFE, 0xFF},                       // mov [tpr],eax
      {0x8B, 0x3D, 0x80, 0x00, 0xFE, 0xFF},                 // mov edi,[tpr]
      {0x89, 0x0D, 0x80, 0x00, 0xFE, 0xFF},                 // mov [tpr],ecx
      {0xC7, 0x05, 0x80, 0x00, 0xFE, 0xFF, 0x41, 0, 0, 0},  // mov dword [tpr],0x41
      {0xFF, 0x35, 0x80, 0x00, 0xFE, 0xFF},                 // push dword [tpr]
      {0x83, 0x3D, 0x80, 0x00, 0xFE, 0xFF, 0x51},           // cmp dword [tpr],0x51
      {0x3E, 0xA1, 0x80, 0x00, 0xFE, 0xFF},                 // ds: mov eax,[tpr]
  };
  return forms;
}

const char* const kNames[] = {"A1 mov eax,[tpr]",  "A3 mov [tpr],eax", "8B mov edi,[tpr]",
                              "89 mov [tpr],ecx",  "C7 mov [tpr],imm", "FF6 push [tpr]",
                              "83 cmp [tpr],imm8", "3E A1 (prefix)"};

void BM_Classify(benchmark::State& state) {
  state.SetLabel(kNames[state.range(0)]);
  const std::vector<uint8_t>& bytes = Instructions()[state.range(0)];
  for (auto _ : state) {
    Classification c = Classify(bytes, kSiteVa);
    benchmark::DoNotOptimize(c);
  }
}
BENCHMARK(BM_Classify)->DenseRange(0, 7);

void BM_Plan(benchmark::State& state) {
  state.SetLabel(kNames[state.range(0)]);
  const std::vector<uint8_t>& bytes = Instructions()[state.range(0)];
  absl::StatusOr<HandlerTable> handlers = HandlerTableForBlob(0x800E8000);
  std::optional<Site> site = CandidateSite(Classify(bytes, kSiteVa), bytes, kSiteVa);
  if (!handlers.ok() || !site) {
    state.SkipWithError("no site or handlers");
    return;
  }
  for (auto _ : state) {
    absl::StatusOr<std::vector<uint8_t>> plan = PlanReplacement(*site, *handlers);
    benchmark::DoNotOptimize(plan);
  }
}
BENCHMARK(BM_Plan)->DenseRange(0, 5);

// A trap PC just after the site, with 32 bytes of other code before it (as in a real kernel).
void BM_DecodeBackward(benchmark::State& state) {
  state.SetLabel(kNames[state.range(0)]);
  const std::vector<uint8_t>& site = Instructions()[state.range(0)];
  std::vector<uint8_t> code(64, 0xC3);               // rets after the site
  std::fill(code.begin(), code.begin() + 32, 0x90);  // nops, then mov ecx,ebx, then the site
  code[28] = 0x8B;
  code[29] = 0xCB;
  std::copy(site.begin(), site.end(), code.begin() + 32);
  const uint32_t base = kSiteVa - 32;
  GuestByteReader reader = SpanByteReader(code, base);
  const uint32_t pc = kSiteVa + static_cast<uint32_t>(site.size());
  for (auto _ : state) {
    absl::StatusOr<BackwardDecodeResult> r = DecodeBackward(pc, reader);
    benchmark::DoNotOptimize(r);
  }
}
BENCHMARK(BM_DecodeBackward)->DenseRange(0, 7);

// Guest physical memory in a vector; non-PAE paging with 4 MiB pages mapping `mib` MiB of
// random bytes (one TPR-address occurrence per 4 KiB page) at 0x80000000.
class VectorMemory : public PhysicalMemoryReader {
 public:
  explicit VectorMemory(size_t mib) : bytes_((mib + 4) << 20) {
    std::mt19937 rng(1);
    for (auto& b : bytes_) b = static_cast<uint8_t>(rng());
    const uint8_t site[] = {0xA1, 0x80, 0x00, 0xFE, 0xFF};
    for (size_t page = 0; page + 4096 <= bytes_.size(); page += 4096) {
      std::copy(std::begin(site), std::end(site), bytes_.begin() + page + 1000);
    }
    // Page directory at 0x1000: PDE 0x200 + i -> 4 MiB page i (present, writable, PS).
    uint8_t* pd = bytes_.data() + 0x1000;
    std::fill(pd, pd + 4096, 0);
    for (size_t i = 0; i < mib / 4; ++i) {
      const uint32_t pde = static_cast<uint32_t>(i << 22) | 0x83;
      std::memcpy(pd + (0x200 + i) * 4, &pde, 4);
    }
  }
  absl::Status ReadPhysical(uint64_t pa, absl::Span<uint8_t> out) override {
    if (pa + out.size() > bytes_.size()) return absl::OutOfRangeError("beyond memory");
    std::memcpy(out.data(), bytes_.data() + pa, out.size());
    return absl::OkStatus();
  }

 private:
  std::vector<uint8_t> bytes_;
};

void BM_ScanKernelCode(benchmark::State& state) {
  const size_t mib = static_cast<size_t>(state.range(0));
  VectorMemory memory(mib);
  PagingRegisters paging;
  paging.cr0 = 0x80010001;  // PG WP PE
  paging.cr3 = 0x1000;
  paging.cr4 = 0x10;  // PSE
  ScanOptions options;
  uint64_t bytes = 0;
  for (auto _ : state) {
    absl::StatusOr<ScanResult> r = ScanKernelCode(memory, paging, options);
    if (!r.ok()) {
      state.SkipWithError(std::string(r.status().message()).c_str());
      return;
    }
    bytes += r->bytes_scanned;
    benchmark::DoNotOptimize(r);
  }
  state.SetBytesProcessed(static_cast<int64_t>(bytes));
}
BENCHMARK(BM_ScanKernelCode)->Arg(64)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace tprd::engine

BENCHMARK_MAIN();

// tpr-blob-tool: instantiate the guest handler blob for a placement, or list its layout.
//
//   tpr-blob-tool instantiate --va 0x800E8000 --pa 0xE8000 [--tpr 0xFFFE0080]
//                 [--strategy exact|mmio|cr8] [--cpus N] [--guard N] -o blob.bin
//   tpr-blob-tool info
//
// instantiate writes the bytes to -o and prints key=value lines (addresses of the strategy word,
// per-CPU area, site table, code range and every handler) for a guest or script that installs
// the blob itself; C code can use guest-rom/blob_layout.h instead.
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <string>

#include "daemon/engine/blob.h"
#include "guest-rom/blob_image.h"

namespace {

using tprd::engine::BlobPlacement;
using tprd::engine::Gpr;
using tprd::engine::kGprCount;

int Usage() {
  std::fprintf(stderr,
               "usage:\n"
               "  tpr-blob-tool instantiate --va ADDR --pa ADDR [--tpr ADDR] "
               "[--strategy exact|mmio|cr8] [--cpus N] [--guard N] -o FILE\n"
               "  tpr-blob-tool info\n");
  return 2;
}

bool ParseU32(const std::string& text, uint32_t* value) {
  char* end = nullptr;
  const unsigned long long parsed = std::strtoull(text.c_str(), &end, 0);
  if (text.empty() || *end != '\0' || parsed > 0xFFFFFFFFull) return false;
  *value = static_cast<uint32_t>(parsed);
  return true;
}

int Info() {
  std::printf("size=0x%x code_page=[0x0,0x%x) data_pages=[0x%x,0x%x)\n", TPRD_BLOB_TOTAL_SIZE,
              TPRD_BLOB_DATA_OFFSET, TPRD_BLOB_DATA_OFFSET, TPRD_BLOB_TOTAL_SIZE);
  std::printf("handler_code=[0x%x,0x%x) (%u bytes)\n", TPRD_BLOB_CODE_START, TPRD_BLOB_CODE_END,
              TPRD_BLOB_CODE_END - TPRD_BLOB_CODE_START);
  std::printf("relocations: base=%u tpr=%u\n", TPRD_BLOB_BASE_RELOC_COUNT,
              TPRD_BLOB_TPR_RELOC_COUNT);
  for (const tprd_blob_symbol& symbol : tprd_blob_symbols) {
    std::printf("%-24s 0x%x\n", symbol.name, symbol.value);
  }
  return 0;
}

int Instantiate(int argc, char** argv) {
  BlobPlacement placement;
  std::string output;
  bool have_va = false, have_pa = false;
  for (int i = 2; i < argc; ++i) {
    const std::string flag = argv[i];
    if (i + 1 >= argc) return Usage();
    const std::string value = argv[++i];
    bool ok = true;
    if (flag == "--va") {
      ok = have_va = ParseU32(value, &placement.va);
    } else if (flag == "--pa") {
      ok = have_pa = ParseU32(value, &placement.pa);
    } else if (flag == "--tpr") {
      ok = ParseU32(value, &placement.tpr_va);
    } else if (flag == "--cpus") {
      ok = ParseU32(value, &placement.cpu_count);
    } else if (flag == "--guard") {
      ok = ParseU32(value, &placement.guard_period);
    } else if (flag == "--strategy") {
      auto strategy = tprd::engine::StrategyFromName(value);
      ok = strategy.has_value();
      if (ok) placement.strategy = *strategy;
    } else if (flag == "-o") {
      output = value;
    } else {
      ok = false;
    }
    if (!ok) {
      std::fprintf(stderr, "tpr-blob-tool: bad %s %s\n", flag.c_str(), value.c_str());
      return Usage();
    }
  }
  if (!have_va || !have_pa || output.empty()) return Usage();

  auto blob = tprd::engine::InstantiateBlob(placement);
  if (!blob.ok()) {
    std::fprintf(stderr, "tpr-blob-tool: %s\n", std::string(blob.status().message()).c_str());
    return 1;
  }
  std::ofstream out(output, std::ios::binary);
  out.write(reinterpret_cast<const char*>(blob->bytes.data()),
            static_cast<std::streamsize>(blob->bytes.size()));
  out.close();
  if (!out) {
    std::fprintf(stderr, "tpr-blob-tool: cannot write %s\n", output.c_str());
    return 1;
  }

  const auto& a = blob->addresses;
  const auto& h = blob->handlers;
  std::printf("va=0x%08x pa=0x%08x size=0x%x tpr=0x%08x strategy=%u cpus=%u guard=%u\n",
              placement.va, placement.pa, tprd::engine::kBlobSize, placement.tpr_va,
              static_cast<unsigned>(placement.strategy), placement.cpu_count,
              placement.guard_period);
  std::printf("code_start=0x%08x code_end=0x%08x data_start=0x%08x\n", a.code_start, a.code_end,
              a.data_start);
  std::printf("strategy_word=0x%08x percpu_area=0x%08x percpu_entry_size=%u site_table=0x%08x\n",
              a.strategy_word, a.percpu_area, tprd::engine::kPerCpuEntrySize, a.site_table);
  std::printf("set_tpr=0x%08x set_tpr_eax=0x%08x get_tpr_stack=0x%08x and_tpr_zero=0x%08x\n",
              h.set_tpr, h.set_tpr_eax, h.get_tpr_stack, h.and_tpr_zero);
  for (int reg = 0; reg < kGprCount; ++reg) {
    if (static_cast<Gpr>(reg) == Gpr::kEsp) continue;
    std::printf("get_tpr_%s=0x%08x\n",
                std::string(tprd::engine::GprName(static_cast<Gpr>(reg))).c_str(), h.get_tpr[reg]);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) return Usage();
  const std::string command = argv[1];
  if (command == "info" && argc == 2) return Info();
  if (command == "instantiate") return Instantiate(argc, argv);
  return Usage();
}

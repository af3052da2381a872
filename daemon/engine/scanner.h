// Finds TPR access candidates in the guest kernel's code: every place where the TPR's address
// appears as bytes, tried as the displacement of an instruction starting 1 to 3 bytes earlier
// (moffs forms, ModRM disp32 forms, one prefix). Report-only: patchable candidates are patched
// later, once proven to execute.
#ifndef TPRD_DAEMON_ENGINE_SCANNER_H_
#define TPRD_DAEMON_ENGINE_SCANNER_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/engine/address_space.h"
#include "daemon/engine/classifier.h"

namespace tprd::engine {

struct ScanCandidate {
  uint32_t address = 0;
  Classification classification;
  std::vector<uint8_t> bytes;  // the instruction's bytes (classification.length of them)
};

struct ScanOptions {
  uint32_t tpr_va = kDefaultTprVa;
  uint32_t va_first = 0x80000000;
  uint32_t va_last = 0xFFFFFFFF;
  size_t max_pages = 1u << 20;  // 4 GiB of 4 KiB pages: the whole range
  // Physical pages to read: RAM only (not MMIO such as the APIC page). Null: every page.
  std::function<bool(uint64_t pa)> is_ram;
  // Virtual ranges [first, last] never scanned (tprd's own blob).
  std::vector<std::pair<uint32_t, uint32_t>> exclude;
};

struct ScanResult {
  std::vector<ScanCandidate> candidates;  // ascending address; patchable or not
  uint64_t bytes_scanned = 0;
  size_t pages_scanned = 0;
  size_t pages_unreadable = 0;
  bool truncated = false;
};

absl::StatusOr<ScanResult> ScanKernelCode(PhysicalMemoryReader& memory,
                                          const PagingRegisters& paging,
                                          const ScanOptions& options);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_SCANNER_H_

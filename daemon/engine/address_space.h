// Enumerates the present pages of a guest address space in bulk: reads each page directory and
// table once, whole. The scanner uses it to find the kernel's code pages; TranslateVirtual
// (page_walker.h) answers single addresses.
#ifndef TPRD_DAEMON_ENGINE_ADDRESS_SPACE_H_
#define TPRD_DAEMON_ENGINE_ADDRESS_SPACE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/engine/page_walker.h"

namespace tprd::engine {

// One present 4 KiB virtual page (large pages are listed as their 4 KiB pieces).
struct MappedPage {
  uint32_t va = 0;
  uint64_t pa = 0;
  bool writable = false;
  bool user = false;
  bool no_execute = false;
};

struct AddressSpace {
  std::vector<MappedPage> pages;  // ascending va
  int skipped_entries = 0;        // present entries with reserved bits or unreadable tables
  bool truncated = false;         // stopped at max_pages
};

// Every present page in [va_first, va_last] (inclusive, rounded to pages), at most max_pages.
// Paging off: identity pages of the range. An error only when the root cannot be read.
absl::StatusOr<AddressSpace> EnumerateMappedPages(PhysicalMemoryReader& memory,
                                                  const PagingRegisters& paging, uint32_t va_first,
                                                  uint32_t va_last, size_t max_pages);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_ADDRESS_SPACE_H_

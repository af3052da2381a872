// A second virtual mapping of the local APIC's page, made by tprd in a free entry of the page
// table that maps the TPR. The blob's handlers store the TPR through it under mmio, so that a
// write watchpoint on the TPR's own address fires only for writers tprd has not patched
// (docs/design.md "mmio: a write watchpoint that sees only unpatched writers").
//
// Pure: reads and writes guest physical memory through the given interfaces only.
#ifndef TPRD_DAEMON_ENGINE_TPR_ALIAS_H_
#define TPRD_DAEMON_ENGINE_TPR_ALIAS_H_

#include <cstdint>
#include <utility>

#include "absl/status/statusor.h"
#include "daemon/engine/page_walker.h"

namespace tprd::engine {

struct TprAliasPlan {
  uint32_t alias_va = 0;   // page-aligned virtual address of the new mapping
  uint64_t entry_pa = 0;   // physical address of the free page table entry it takes
  uint64_t entry = 0;      // the entry to write there (the TPR page's, accessed/dirty cleared)
  int entry_size = 4;      // 4 (non-PAE) or 8 (PAE)
  uint64_t apic_page = 0;  // physical page both addresses map
};

// Finds the page table that maps `tpr_va` with a 4 KiB page and a free entry in it: an entry
// that is all zero (a not-present entry with any bit set may be the OS's own bookkeeping, e.g. a
// paged-out or transition PTE, and is never taken). The highest free entry is chosen: an OS
// allocator that hands out this region from its bottom meets it last. FAILED_PRECONDITION with
// the reason when the TPR is not mapped by a 4 KiB page (paging off, a large page) or the table
// is full; an error when a paging structure cannot be read.
absl::StatusOr<TprAliasPlan> PlanTprAlias(PhysicalMemoryReader& memory,
                                          const PagingRegisters& paging, uint32_t tpr_va);

// Where the page table entry that maps `va` with a 4 KiB page lives: (physical address, 4 or 8).
absl::StatusOr<std::pair<uint64_t, int>> PageTableEntryOf(PhysicalMemoryReader& memory,
                                                          const PagingRegisters& paging,
                                                          uint32_t va);

// Whether `alias_va` maps the same physical page as `tpr_va`, present and writable, with the same
// caching bits (PWT, PCD) as the OS gave the APIC page.
absl::StatusOr<bool> AliasMapsTprPage(PhysicalMemoryReader& memory, const PagingRegisters& paging,
                                      uint32_t tpr_va, uint32_t alias_va);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_TPR_ALIAS_H_

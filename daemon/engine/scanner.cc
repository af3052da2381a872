#include "daemon/engine/scanner.h"

#include <algorithm>
#include <cstring>
#include <set>

namespace tprd::engine {
namespace {

constexpr uint32_t kPageSize = 4096;
// The longest instruction is 15 bytes: carry that much of the next page so an instruction that
// crosses a page boundary is still seen whole.
constexpr uint32_t kTail = 16;

bool Excluded(const ScanOptions& options, uint32_t va) {
  for (const auto& [first, last] : options.exclude) {
    if (va >= first && va <= last) return true;
  }
  return false;
}

}  // namespace

absl::StatusOr<ScanResult> ScanKernelCode(PhysicalMemoryReader& memory,
                                          const PagingRegisters& paging,
                                          const ScanOptions& options) {
  absl::StatusOr<AddressSpace> space =
      EnumerateMappedPages(memory, paging, options.va_first, options.va_last, options.max_pages);
  if (!space.ok()) return space.status();
  ScanResult result;
  result.truncated = space->truncated;

  std::vector<const MappedPage*> pages;
  for (const MappedPage& page : space->pages) {
    if (page.no_execute || page.user || Excluded(options, page.va)) continue;
    if (options.is_ram && !options.is_ram(page.pa)) continue;
    pages.push_back(&page);
  }

  uint8_t needle[4];
  std::memcpy(needle, &options.tpr_va, 4);
  std::set<uint32_t> seen;
  std::vector<uint8_t> buffer(kPageSize + kTail);
  // Pages are in ascending va; a run is a stretch of virtually contiguous pages.
  std::vector<uint8_t> previous_tail;  // last 3 bytes of the previous page, if contiguous
  uint32_t previous_va = 0;
  bool have_previous = false;
  for (size_t i = 0; i < pages.size(); ++i) {
    const MappedPage& page = *pages[i];
    if (!memory.ReadPhysical(page.pa, absl::MakeSpan(buffer.data(), kPageSize)).ok()) {
      ++result.pages_unreadable;
      have_previous = false;
      continue;
    }
    ++result.pages_scanned;
    result.bytes_scanned += kPageSize;
    size_t valid = kPageSize;
    if (i + 1 < pages.size() && pages[i + 1]->va == page.va + kPageSize &&
        memory.ReadPhysical(pages[i + 1]->pa, absl::MakeSpan(buffer.data() + kPageSize, kTail))
            .ok()) {
      valid += kTail;
    }
    // Candidate starts may lie up to 3 bytes before this page: prepend the previous page's tail.
    std::vector<uint8_t> window;
    uint32_t window_va = page.va;
    if (have_previous && previous_va + kPageSize == page.va) {
      window = previous_tail;
      window_va -= static_cast<uint32_t>(previous_tail.size());
    }
    const size_t head = window.size();
    window.insert(window.end(), buffer.begin(), buffer.begin() + valid);
    // Needles whose first byte lies in this page (not in the tail, which the next page scans).
    for (size_t at = head; at < head + kPageSize && at + 4 <= window.size(); ++at) {
      if (std::memcmp(window.data() + at, needle, 4) != 0) continue;
      for (size_t back = 1; back <= 3 && back <= at; ++back) {
        const size_t start = at - back;
        const uint32_t address = window_va + static_cast<uint32_t>(start);
        if (seen.count(address)) continue;
        const size_t available = std::min<size_t>(15, window.size() - start);
        absl::Span<const uint8_t> bytes(window.data() + start, available);
        Classification c = Classify(bytes, address, options.tpr_va);
        // Keep only decodings in which these 4 bytes are the instruction's own address field.
        if (!c.tpr_access || c.length < back + 4) continue;
        seen.insert(address);
        result.candidates.push_back(ScanCandidate{
            address, c, std::vector<uint8_t>(bytes.begin(), bytes.begin() + c.length)});
      }
    }
    previous_tail.assign(buffer.begin() + kPageSize - 3, buffer.begin() + kPageSize);
    previous_va = page.va;
    have_previous = true;
  }
  std::sort(result.candidates.begin(), result.candidates.end(),
            [](const ScanCandidate& a, const ScanCandidate& b) { return a.address < b.address; });
  return result;
}

}  // namespace tprd::engine

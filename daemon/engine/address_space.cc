#include "daemon/engine/address_space.h"

#include <algorithm>
#include <array>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "daemon/engine/paging_bits.h"

namespace tprd::engine {
namespace {

struct Walk {
  PhysicalMemoryReader& memory;
  const PagingRegisters& paging;
  uint32_t va_first;
  uint32_t va_last;
  size_t max_pages;
  AddressSpace result;

  // Bits 12..MAXPHYADDR-1 of a PAE entry.
  uint64_t PaeAddressMask() const {
    const int bits = paging.physical_address_bits > 12 && paging.physical_address_bits <= 52
                         ? paging.physical_address_bits
                         : 36;
    return ((1ull << bits) - 1) & ~(pte::kSmallPageBytes - 1);
  }

  bool Full() {
    if (result.pages.size() >= max_pages) {
      result.truncated = true;
      return true;
    }
    return false;
  }

  // Adds the 4 KiB pieces of [va, va + size) that fall in the range.
  void AddRange(uint64_t va, uint64_t pa, uint64_t size, bool writable, bool user, bool nx) {
    const uint64_t first = std::max<uint64_t>(va, va_first & ~(pte::kSmallPageBytes - 1));
    const uint64_t last = std::min<uint64_t>(va + size - 1, va_last);
    for (uint64_t page = first; page <= last && page < va + size; page += pte::kSmallPageBytes) {
      if (Full()) return;
      result.pages.push_back(
          MappedPage{static_cast<uint32_t>(page), pa + (page - va), writable, user, nx});
    }
  }

  bool Overlaps(uint64_t va, uint64_t size) const {
    return va + size - 1 >= (va_first & ~(pte::kSmallPageBytes - 1)) && va <= va_last;
  }

  template <typename Entry, size_t N>
  bool ReadTable(uint64_t pa, std::array<Entry, N>& table) {
    std::array<uint8_t, sizeof(Entry) * N> raw;
    if (!memory.ReadPhysical(pa, absl::MakeSpan(raw)).ok()) return false;
    std::memcpy(table.data(), raw.data(), raw.size());
    return true;
  }

  void NonPae() {
    std::array<uint32_t, 1024> directory;
    if (!ReadTable(paging.cr3 & ~0xFFFu, directory)) return;
    const bool pse = (paging.cr4 & kCr4Pse) != 0;
    for (uint64_t i = 0; i < 1024 && !result.truncated; ++i) {
      const uint32_t pde = directory[i];
      const uint64_t va = i << 22;
      if (!(pde & pte::kPresent) || !Overlaps(va, 4u << 20)) continue;
      if ((pde & pte::kLargePage) && pse) {
        // PSE-36: bits 13..20 hold physical address bits 32..39.
        const uint64_t pa = (pde & 0xFFC00000u) | (static_cast<uint64_t>((pde >> 13) & 0xFF) << 32);
        AddRange(va, pa, 4u << 20, pde & pte::kWritable, pde & pte::kUser, false);
        continue;
      }
      std::array<uint32_t, 1024> table;
      if (!ReadTable(pde & ~0xFFFu, table)) {
        ++result.skipped_entries;
        continue;
      }
      for (uint64_t j = 0; j < 1024 && !result.truncated; ++j) {
        const uint32_t pte = table[j];
        const uint64_t page_va = va + (j << 12);
        if (!(pte & pte::kPresent) || !Overlaps(page_va, pte::kSmallPageBytes)) continue;
        AddRange(page_va, pte & ~0xFFFu, pte::kSmallPageBytes, (pde & pte & pte::kWritable) != 0,
                 (pde & pte & pte::kUser) != 0, false);
      }
    }
  }

  void Pae() {
    std::array<uint64_t, 4> pdpt;
    if (!ReadTable(paging.cr3 & ~0x1Fu, pdpt)) return;
    const bool nxe = (paging.efer & kEferNxe) != 0;
    const uint64_t mask = PaeAddressMask();
    for (uint64_t i = 0; i < 4 && !result.truncated; ++i) {
      const uint64_t pdpte = pdpt[i];
      const uint64_t va = i << 30;
      if (!(pdpte & pte::kPresent) || !Overlaps(va, 1ull << 30)) continue;
      std::array<uint64_t, 512> directory;
      if (!ReadTable(pdpte & mask, directory)) {
        ++result.skipped_entries;
        continue;
      }
      for (uint64_t j = 0; j < 512 && !result.truncated; ++j) {
        const uint64_t pde = directory[j];
        const uint64_t pde_va = va + (j << 21);
        if (!(pde & pte::kPresent) || !Overlaps(pde_va, 2u << 20)) continue;
        const bool pde_nx = nxe && (pde & pte::kNoExecute);
        if (pde & pte::kLargePage) {
          AddRange(pde_va, pde & mask & ~((2ull << 20) - 1), 2u << 20, pde & pte::kWritable,
                   pde & pte::kUser, pde_nx);
          continue;
        }
        std::array<uint64_t, 512> table;
        if (!ReadTable(pde & mask, table)) {
          ++result.skipped_entries;
          continue;
        }
        for (uint64_t k = 0; k < 512 && !result.truncated; ++k) {
          const uint64_t pte = table[k];
          const uint64_t page_va = pde_va + (k << 12);
          if (!(pte & pte::kPresent) || !Overlaps(page_va, pte::kSmallPageBytes)) continue;
          AddRange(page_va, pte & mask, pte::kSmallPageBytes, (pde & pte & pte::kWritable) != 0,
                   (pde & pte & pte::kUser) != 0, pde_nx || (nxe && (pte & pte::kNoExecute)));
        }
      }
    }
  }
};

}  // namespace

absl::StatusOr<AddressSpace> EnumerateMappedPages(PhysicalMemoryReader& memory,
                                                  const PagingRegisters& paging, uint32_t va_first,
                                                  uint32_t va_last, size_t max_pages) {
  if (va_first > va_last) return absl::InvalidArgumentError("empty virtual address range");
  Walk walk{memory, paging, va_first, va_last, max_pages, {}};
  if (!(paging.cr0 & kCr0Pg)) {
    walk.AddRange(0, 0, 1ull << 32, true, true, false);
    return walk.result;
  }
  const uint64_t root = (paging.cr4 & kCr4Pae) ? (paging.cr3 & ~0x1Fu) : (paging.cr3 & ~0xFFFu);
  uint8_t probe[4];
  if (absl::Status s = memory.ReadPhysical(root, absl::MakeSpan(probe)); !s.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot read the page table root at physical 0x", absl::Hex(root), ": ", s.message()));
  }
  if (paging.cr4 & kCr4Pae) {
    walk.Pae();
  } else {
    walk.NonPae();
  }
  return walk.result;
}

}  // namespace tprd::engine

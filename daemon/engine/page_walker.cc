#include "daemon/engine/page_walker.h"

#include <array>
#include <cstring>

#include "absl/strings/str_format.h"
#include "daemon/engine/paging_bits.h"

namespace tprd::engine {
namespace {

uint64_t BitRange(int low, int high_exclusive) {
  if (high_exclusive <= low) return 0;
  const uint64_t upto_high =
      high_exclusive >= 64 ? ~uint64_t{0} : (uint64_t{1} << high_exclusive) - 1;
  return upto_high & ~((uint64_t{1} << low) - 1);
}

int MaxPhysicalBits(const PagingRegisters& paging) {
  // Clamp a garbage value to what x86 can express; 32 is the architectural minimum for PAE.
  if (paging.physical_address_bits < 32) return 32;
  if (paging.physical_address_bits > 52) return 52;
  return paging.physical_address_bits;
}

// The kind of entry being decoded; decides the reserved bits and the address field.
enum class EntryKind { kNonPaePde, kNonPaePte, kPdpte, kPaePde, kPaePte };

struct DecodedEntry {
  bool present = false;
  bool reserved = false;
  bool large = false;  // maps a page directly (PS)
  uint64_t next = 0;   // next-level table, or the page frame when large / a PTE
  bool writable = false;
  bool user = false;
  bool no_execute = false;
};

DecodedEntry DecodeEntry(EntryKind kind, uint64_t entry, const PagingRegisters& paging) {
  DecodedEntry d;
  d.present = (entry & pte::kPresent) != 0;
  if (!d.present) return d;
  const int maxphy = MaxPhysicalBits(paging);
  const bool nxe = (paging.efer & kEferNxe) != 0;
  d.writable = (entry & pte::kWritable) != 0;
  d.user = (entry & pte::kUser) != 0;
  switch (kind) {
    case EntryKind::kNonPaePde:
      d.large = (paging.cr4 & kCr4Pse) && (entry & pte::kLargePage);
      if (d.large) {
        // PSE-36: physical bits 32.. live in entry bits 13..; bit 21 and bits past MAXPHYADDR
        // are reserved.
        const int high_bits = maxphy - 32 > 8 ? 8 : maxphy - 32;
        d.reserved = (entry & BitRange(13 + high_bits, 22)) != 0;
        d.next = (entry & 0xFFC00000u) | (((entry >> 13) & BitRange(0, high_bits)) << 32);
      } else {
        d.next = entry & 0xFFFFF000u;
      }
      return d;
    case EntryKind::kNonPaePte:
      d.next = entry & 0xFFFFF000u;
      return d;
    case EntryKind::kPdpte:
      // No R/W, U/S or XD at this level in 32-bit PAE paging: they do not restrict.
      d.writable = true;
      d.user = true;
      d.reserved = (entry & (BitRange(1, 3) | BitRange(5, 9) | BitRange(maxphy, 64))) != 0;
      d.next = entry & BitRange(12, maxphy);
      return d;
    case EntryKind::kPaePde:
    case EntryKind::kPaePte:
      d.reserved = (entry & BitRange(maxphy, 63)) != 0 || (!nxe && (entry & pte::kNoExecute));
      d.no_execute = nxe && (entry & pte::kNoExecute);
      d.large = kind == EntryKind::kPaePde && (entry & pte::kLargePage);
      if (d.large) {
        d.reserved = d.reserved || (entry & BitRange(13, 21)) != 0;
        d.next = entry & BitRange(21, maxphy);
      } else {
        d.next = entry & BitRange(12, maxphy);
      }
      return d;
  }
  return d;
}

bool PaeEnabled(const PagingRegisters& paging) { return (paging.cr4 & kCr4Pae) != 0; }
bool PagingEnabled(const PagingRegisters& paging) {
  return (paging.cr0 & kCr0Pg) && (paging.cr0 & kCr0Pe);
}

absl::StatusOr<uint64_t> ReadEntry(PhysicalMemoryReader& memory, uint64_t pa, bool pae) {
  std::array<uint8_t, 8> bytes = {};
  const size_t size = pae ? 8 : 4;
  absl::Status status = memory.ReadPhysical(pa, absl::MakeSpan(bytes.data(), size));
  if (!status.ok()) {
    return absl::Status(status.code(), absl::StrFormat("reading paging entry at physical 0x%x: %s",
                                                       pa, status.message()));
  }
  uint64_t value = 0;
  for (size_t i = 0; i < size; ++i) value |= uint64_t{bytes[i]} << (8 * i);
  return value;
}

// Accumulates permissions over levels; returns true when the walk must stop with a fault.
bool Accumulate(const DecodedEntry& entry, PagingLevel level, Translation& t) {
  if (!entry.present) {
    t.fault = PageFault::kNotPresent;
    t.fault_level = level;
    return true;
  }
  if (entry.reserved) {
    t.fault = PageFault::kReservedBits;
    t.fault_level = level;
    return true;
  }
  t.writable = t.writable && entry.writable;
  t.user = t.user && entry.user;
  t.no_execute = t.no_execute || entry.no_execute;
  return false;
}

Translation StartTranslation() {
  Translation t;
  t.writable = true;
  t.user = true;
  return t;
}

}  // namespace

absl::StatusOr<Translation> TranslateVirtual(PhysicalMemoryReader& memory,
                                             const PagingRegisters& paging, uint32_t va) {
  Translation t = StartTranslation();
  if (!PagingEnabled(paging)) {
    t.physical_address = va;
    t.page_size = pte::kSmallPageBytes;
    return t;
  }
  if (!PaeEnabled(paging)) {
    const uint64_t pde_pa = (paging.cr3 & 0xFFFFF000u) + uint64_t{va >> 22} * 4;
    absl::StatusOr<uint64_t> pde = ReadEntry(memory, pde_pa, false);
    if (!pde.ok()) return pde.status();
    const DecodedEntry dir = DecodeEntry(EntryKind::kNonPaePde, *pde, paging);
    if (Accumulate(dir, PagingLevel::kPde, t)) return t;
    if (dir.large) {
      t.physical_address = dir.next | (va & (pte::kNonPaeLargePageBytes - 1));
      t.page_size = pte::kNonPaeLargePageBytes;
      return t;
    }
    absl::StatusOr<uint64_t> pte = ReadEntry(memory, dir.next + ((va >> 12) & 0x3FF) * 4, false);
    if (!pte.ok()) return pte.status();
    const DecodedEntry page = DecodeEntry(EntryKind::kNonPaePte, *pte, paging);
    if (Accumulate(page, PagingLevel::kPte, t)) return t;
    t.physical_address = page.next | (va & 0xFFF);
    t.page_size = pte::kSmallPageBytes;
    return t;
  }
  const uint64_t pdpte_pa = (paging.cr3 & 0xFFFFFFE0u) + uint64_t{va >> 30} * 8;
  absl::StatusOr<uint64_t> pdpte = ReadEntry(memory, pdpte_pa, true);
  if (!pdpte.ok()) return pdpte.status();
  const DecodedEntry pointer = DecodeEntry(EntryKind::kPdpte, *pdpte, paging);
  if (Accumulate(pointer, PagingLevel::kPdpte, t)) return t;
  absl::StatusOr<uint64_t> pde = ReadEntry(memory, pointer.next + ((va >> 21) & 0x1FF) * 8, true);
  if (!pde.ok()) return pde.status();
  const DecodedEntry dir = DecodeEntry(EntryKind::kPaePde, *pde, paging);
  if (Accumulate(dir, PagingLevel::kPde, t)) return t;
  if (dir.large) {
    t.physical_address = dir.next | (va & (pte::kPaeLargePageBytes - 1));
    t.page_size = pte::kPaeLargePageBytes;
    return t;
  }
  absl::StatusOr<uint64_t> pte = ReadEntry(memory, dir.next + ((va >> 12) & 0x1FF) * 8, true);
  if (!pte.ok()) return pte.status();
  const DecodedEntry page = DecodeEntry(EntryKind::kPaePte, *pte, paging);
  if (Accumulate(page, PagingLevel::kPte, t)) return t;
  t.physical_address = page.next | (va & 0xFFF);
  t.page_size = pte::kSmallPageBytes;
  return t;
}

namespace {

// Walks one table (directory or page table) read whole, for the reverse lookup.
class ReverseWalker {
 public:
  ReverseWalker(PhysicalMemoryReader& memory, const PagingRegisters& paging, uint64_t frame,
                uint32_t va_first, uint32_t va_last)
      : memory_(memory), paging_(paging), frame_(frame), va_first_(va_first), va_last_(va_last) {}

  absl::Status Run() {
    if (!PagingEnabled(paging_)) {
      if (frame_ <= 0xFFFFF000u && frame_ >= (va_first_ & ~0xFFFu) && frame_ <= va_last_) {
        Translation t = StartTranslation();
        t.physical_address = frame_;
        t.page_size = pte::kSmallPageBytes;
        result_.mappings.push_back({static_cast<uint32_t>(frame_), t});
      }
      return absl::OkStatus();
    }
    if (!PaeEnabled(paging_)) {
      return WalkDirectory(paging_.cr3 & 0xFFFFF000u, 0, StartTranslation(), false);
    }
    std::vector<uint64_t> pdpt;
    if (absl::Status s = ReadTable(paging_.cr3 & 0xFFFFFFE0u, 4, true, pdpt); !s.ok()) return s;
    for (uint32_t i = 0; i < 4; ++i) {
      const uint64_t base = uint64_t{i} << 30;
      if (!Overlaps(base, uint64_t{1} << 30)) continue;
      const DecodedEntry e = DecodeEntry(EntryKind::kPdpte, pdpt[i], paging_);
      Translation t = StartTranslation();
      if (!e.present) continue;
      if (Accumulate(e, PagingLevel::kPdpte, t)) {
        ++result_.skipped_entries;
        continue;
      }
      if (absl::Status s = WalkDirectory(e.next, static_cast<uint32_t>(base), t, true); !s.ok()) {
        ++result_.skipped_entries;
      }
    }
    return absl::OkStatus();
  }

  ReverseLookupResult Take() { return std::move(result_); }

 private:
  bool Overlaps(uint64_t base, uint64_t size) const {
    return base <= va_last_ && base + size - 1 >= va_first_;
  }

  absl::Status ReadTable(uint64_t pa, size_t entries, bool pae, std::vector<uint64_t>& out) {
    const size_t entry_size = pae ? 8 : 4;
    std::vector<uint8_t> bytes(entries * entry_size);
    absl::Status status = memory_.ReadPhysical(pa, absl::MakeSpan(bytes));
    if (!status.ok()) {
      return absl::Status(
          status.code(),
          absl::StrFormat("reading paging table at physical 0x%x: %s", pa, status.message()));
    }
    out.assign(entries, 0);
    for (size_t i = 0; i < entries; ++i) {
      for (size_t b = 0; b < entry_size; ++b) {
        out[i] |= uint64_t{bytes[i * entry_size + b]} << (8 * b);
      }
    }
    return absl::OkStatus();
  }

  // Records every 4 KiB page of a large page or a PTE that maps frame_.
  void MaybeRecord(uint32_t page_va, uint64_t page_pa, uint32_t page_size, const Translation& t) {
    if (frame_ < page_pa || frame_ >= page_pa + page_size) return;
    const uint32_t va = page_va + static_cast<uint32_t>(frame_ - page_pa);
    if (va < (va_first_ & ~0xFFFu) || va > va_last_) return;
    Translation found = t;
    found.physical_address = frame_;
    found.page_size = page_size;
    result_.mappings.push_back({va, found});
  }

  absl::Status WalkDirectory(uint64_t pa, uint32_t base, const Translation& above, bool pae) {
    const size_t count = pae ? 512 : 1024;
    const uint32_t span = pae ? pte::kPaeLargePageBytes : pte::kNonPaeLargePageBytes;
    std::vector<uint64_t> directory;
    if (absl::Status s = ReadTable(pa, count, pae, directory); !s.ok()) return s;
    for (size_t i = 0; i < count; ++i) {
      const uint32_t dir_base = base + static_cast<uint32_t>(i) * span;
      if (!Overlaps(dir_base, span)) continue;
      const DecodedEntry e =
          DecodeEntry(pae ? EntryKind::kPaePde : EntryKind::kNonPaePde, directory[i], paging_);
      if (!e.present) continue;
      Translation t = above;
      if (Accumulate(e, PagingLevel::kPde, t)) {
        ++result_.skipped_entries;
        continue;
      }
      if (e.large) {
        MaybeRecord(dir_base, e.next, span, t);
        continue;
      }
      if (!WalkTable(e.next, dir_base, t, pae).ok()) ++result_.skipped_entries;
    }
    return absl::OkStatus();
  }

  absl::Status WalkTable(uint64_t pa, uint32_t base, const Translation& above, bool pae) {
    const size_t count = pae ? 512 : 1024;
    std::vector<uint64_t> table;
    if (absl::Status s = ReadTable(pa, count, pae, table); !s.ok()) return s;
    for (size_t i = 0; i < count; ++i) {
      const uint32_t page_va = base + static_cast<uint32_t>(i) * pte::kSmallPageBytes;
      if (!Overlaps(page_va, pte::kSmallPageBytes)) continue;
      const DecodedEntry e =
          DecodeEntry(pae ? EntryKind::kPaePte : EntryKind::kNonPaePte, table[i], paging_);
      if (!e.present) continue;
      Translation t = above;
      if (Accumulate(e, PagingLevel::kPte, t)) {
        ++result_.skipped_entries;
        continue;
      }
      MaybeRecord(page_va, e.next, pte::kSmallPageBytes, t);
    }
    return absl::OkStatus();
  }

  PhysicalMemoryReader& memory_;
  const PagingRegisters& paging_;
  const uint64_t frame_;
  const uint32_t va_first_;
  const uint32_t va_last_;
  ReverseLookupResult result_;
};

}  // namespace

absl::StatusOr<ReverseLookupResult> FindVirtualMappings(PhysicalMemoryReader& memory,
                                                        const PagingRegisters& paging,
                                                        uint64_t physical_page, uint32_t va_first,
                                                        uint32_t va_last) {
  if (va_first > va_last) {
    return absl::InvalidArgumentError(
        absl::StrFormat("empty virtual range 0x%x..0x%x", va_first, va_last));
  }
  ReverseWalker walker(memory, paging, physical_page & ~uint64_t{0xFFF}, va_first, va_last);
  if (absl::Status s = walker.Run(); !s.ok()) return s;
  return walker.Take();
}

}  // namespace tprd::engine

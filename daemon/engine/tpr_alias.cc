#include "daemon/engine/tpr_alias.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_format.h"
#include "daemon/engine/paging_bits.h"

namespace tprd::engine {
namespace {

// PWT, PCD: the alias maps the APIC as the OS did.
constexpr uint64_t kCacheBits = pte::kWriteThrough | pte::kCacheDisable;

uint64_t LoadEntry(const std::vector<uint8_t>& table, size_t index, int size) {
  uint64_t value = 0;
  std::memcpy(&value, table.data() + index * size, size);
  return value;
}

// Physical address mask of a PAE entry's next-level address (bits 12..MAXPHYADDR-1).
uint64_t PaeAddressMask(const PagingRegisters& paging) {
  const int bits = paging.physical_address_bits < 32   ? 32
                   : paging.physical_address_bits > 52 ? 52
                                                       : paging.physical_address_bits;
  return ((uint64_t{1} << bits) - 1) & ~uint64_t{0xFFF};
}

struct TableOf {
  uint64_t table_pa = 0;  // the page table mapping the va
  size_t index = 0;       // the va's entry in it
  size_t entries = 0;     // 1024 or 512
  int entry_size = 4;
  uint32_t region_va = 0;  // the va its entry 0 maps
};

absl::StatusOr<TableOf> FindPageTable(PhysicalMemoryReader& memory, const PagingRegisters& paging,
                                      uint32_t va) {
  if (!(paging.cr0 & kCr0Pg)) return absl::FailedPreconditionError("paging is off");
  TableOf t;
  if (paging.cr4 & kCr4Pae) {
    const uint64_t mask = PaeAddressMask(paging);
    uint8_t raw[8];
    const uint64_t pdpte_pa = (paging.cr3 & ~uint64_t{0x1F}) + (va >> 30) * 8;
    if (absl::Status s = memory.ReadPhysical(pdpte_pa, raw); !s.ok()) return s;
    uint64_t pdpte;
    std::memcpy(&pdpte, raw, 8);
    if (!(pdpte & pte::kPresent))
      return absl::FailedPreconditionError("the TPR's PDPTE is not present");
    const uint64_t pde_pa = (pdpte & mask) + ((va >> 21) & 0x1FF) * 8;
    if (absl::Status s = memory.ReadPhysical(pde_pa, raw); !s.ok()) return s;
    uint64_t pde;
    std::memcpy(&pde, raw, 8);
    if (!(pde & pte::kPresent))
      return absl::FailedPreconditionError("the TPR's PDE is not present");
    if (pde & pte::kLargePage) {
      return absl::FailedPreconditionError("the TPR is mapped by a 2 MiB page: no page table");
    }
    t.table_pa = pde & mask;
    t.index = (va >> 12) & 0x1FF;
    t.entries = 512;
    t.entry_size = 8;
    t.region_va = va & ~uint32_t{0x1FFFFF};
    return t;
  }
  uint8_t raw[4];
  const uint64_t pde_pa = (paging.cr3 & ~uint64_t{0xFFF}) + (va >> 22) * 4;
  if (absl::Status s = memory.ReadPhysical(pde_pa, raw); !s.ok()) return s;
  uint32_t pde;
  std::memcpy(&pde, raw, 4);
  if (!(pde & pte::kPresent)) return absl::FailedPreconditionError("the TPR's PDE is not present");
  if ((pde & pte::kLargePage) && (paging.cr4 & kCr4Pse)) {
    return absl::FailedPreconditionError("the TPR is mapped by a 4 MiB page: no page table");
  }
  t.table_pa = pde & 0xFFFFF000u;
  t.index = (va >> 12) & 0x3FF;
  t.entries = 1024;
  t.entry_size = 4;
  t.region_va = va & ~uint32_t{0x3FFFFF};
  return t;
}

}  // namespace

absl::StatusOr<TprAliasPlan> PlanTprAlias(PhysicalMemoryReader& memory,
                                          const PagingRegisters& paging, uint32_t tpr_va) {
  absl::StatusOr<TableOf> where = FindPageTable(memory, paging, tpr_va);
  if (!where.ok()) return where.status();
  std::vector<uint8_t> table(where->entries * where->entry_size);
  if (absl::Status s = memory.ReadPhysical(where->table_pa, absl::MakeSpan(table)); !s.ok()) {
    return s;
  }
  const uint64_t tpr_entry = LoadEntry(table, where->index, where->entry_size);
  if (!(tpr_entry & pte::kPresent) || !(tpr_entry & pte::kWritable)) {
    return absl::FailedPreconditionError(
        absl::StrFormat("the TPR's page table entry 0x%x is not present and writable", tpr_entry));
  }
  for (size_t i = where->entries; i-- > 0;) {
    if (i == where->index || LoadEntry(table, i, where->entry_size) != 0) continue;
    TprAliasPlan plan;
    plan.alias_va = where->region_va + static_cast<uint32_t>(i) * 4096u;
    plan.entry_pa = where->table_pa + i * where->entry_size;
    plan.entry = tpr_entry & ~(pte::kAccessed | pte::kDirty);
    plan.entry_size = where->entry_size;
    plan.apic_page =
        where->entry_size == 8 ? (tpr_entry & PaeAddressMask(paging)) : (tpr_entry & 0xFFFFF000u);
    return plan;
  }
  return absl::FailedPreconditionError(absl::StrFormat(
      "the page table that maps the TPR (%u entries at 0x%x) has no free entry for a second "
      "mapping of the APIC page",
      where->entries, where->table_pa));
}

absl::StatusOr<std::pair<uint64_t, int>> PageTableEntryOf(PhysicalMemoryReader& memory,
                                                          const PagingRegisters& paging,
                                                          uint32_t va) {
  absl::StatusOr<TableOf> t = FindPageTable(memory, paging, va);
  if (!t.ok()) return t.status();
  return std::make_pair(t->table_pa + t->index * t->entry_size, t->entry_size);
}

absl::StatusOr<bool> AliasMapsTprPage(PhysicalMemoryReader& memory, const PagingRegisters& paging,
                                      uint32_t tpr_va, uint32_t alias_va) {
  absl::StatusOr<TableOf> tpr = FindPageTable(memory, paging, tpr_va);
  if (!tpr.ok()) return tpr.status();
  absl::StatusOr<TableOf> alias = FindPageTable(memory, paging, alias_va);
  if (!alias.ok()) return false;
  auto entry_at = [&](const TableOf& t) -> absl::StatusOr<uint64_t> {
    uint8_t raw[8] = {};
    if (absl::Status s = memory.ReadPhysical(t.table_pa + t.index * t.entry_size,
                                             absl::MakeSpan(raw, t.entry_size));
        !s.ok()) {
      return s;
    }
    uint64_t value = 0;
    std::memcpy(&value, raw, t.entry_size);
    return value;
  };
  absl::StatusOr<uint64_t> tpr_entry = entry_at(*tpr);
  if (!tpr_entry.ok()) return tpr_entry.status();
  absl::StatusOr<uint64_t> alias_entry = entry_at(*alias);
  if (!alias_entry.ok()) return alias_entry.status();
  const uint64_t mask = tpr->entry_size == 8 ? PaeAddressMask(paging) : 0xFFFFF000u;
  const uint64_t needed = pte::kPresent | pte::kWritable;
  return (*alias_entry & needed) == needed && (*alias_entry & mask) == (*tpr_entry & mask) &&
         (*alias_entry & kCacheBits) == (*tpr_entry & kCacheBits);
}

}  // namespace tprd::engine

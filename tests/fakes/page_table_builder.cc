#include "tests/fakes/page_table_builder.h"

#include "absl/strings/str_format.h"

namespace tprd::testing {
namespace {

constexpr uint64_t kPresent = 1u << 0;
constexpr uint64_t kWritable = 1u << 1;
constexpr uint64_t kUser = 1u << 2;
constexpr uint64_t kPageSizeBit = 1u << 7;
constexpr uint64_t kXd = uint64_t{1} << 63;
constexpr uint64_t kTableBytes = 4096;

}  // namespace

PageTableBuilder::PageTableBuilder(FakeGuestVm& vm, Mode mode, uint64_t table_pool_start,
                                   uint64_t table_pool_end)
    : vm_(vm),
      mode_(mode),
      next_table_((table_pool_start + kTableBytes - 1) & ~(kTableBytes - 1)),
      pool_end_(table_pool_end) {
  // The root is allocated eagerly so cr3() is valid at once; a pool too small leaves cr3 = 0
  // and every Map call reports the exhausted pool.
  absl::StatusOr<uint64_t> root = AllocateTable();
  if (root.ok()) root_ = *root;
}

absl::StatusOr<uint64_t> PageTableBuilder::AllocateTable() {
  if (next_table_ + kTableBytes > pool_end_) {
    return absl::ResourceExhaustedError("page-table pool exhausted");
  }
  const uint64_t table = next_table_;
  next_table_ += kTableBytes;
  std::vector<uint8_t> zeros(kTableBytes, 0);
  if (absl::Status s = vm_.BackdoorWritePhysical(table, zeros); !s.ok()) return s;
  return table;
}

void PageTableBuilder::WriteEntry(uint64_t pa, uint64_t value) {
  if (mode_ == Mode::kPae) {
    vm_.BackdoorWrite64(pa, value);
  } else {
    vm_.BackdoorWrite32(pa, static_cast<uint32_t>(value));
  }
}

uint64_t PageTableBuilder::ReadEntry(uint64_t pa) const {
  const uint64_t value = vm_.BackdoorRead64(pa);
  return mode_ == Mode::kPae ? value : (value & 0xFFFFFFFFu);
}

uint64_t PageTableBuilder::EntryBits(PageFlags flags) const {
  uint64_t bits = 0;
  if (flags.present) bits |= kPresent;
  if (flags.writable) bits |= kWritable;
  if (flags.user) bits |= kUser;
  if (flags.no_execute && mode_ == Mode::kPae) bits |= kXd;
  return bits;
}

absl::StatusOr<uint64_t> PageTableBuilder::Directory(uint32_t va) {
  if (root_ == 0) return absl::ResourceExhaustedError("page-table pool exhausted");
  if (mode_ == Mode::kNonPae) return root_;
  const uint64_t pdpte_pa = root_ + uint64_t{va >> 30} * 8;
  const uint64_t pdpte = ReadEntry(pdpte_pa);
  if (pdpte & kPresent) return pdpte & 0x000FFFFFFFFFF000u;
  absl::StatusOr<uint64_t> directory = AllocateTable();
  if (!directory.ok()) return directory.status();
  WriteEntry(pdpte_pa, *directory | kPresent);  // PDPTEs have no R/W or U/S in PAE mode
  return *directory;
}

absl::Status PageTableBuilder::Map4K(uint32_t va, uint64_t pa, PageFlags flags) {
  if ((va & 0xFFF) || (pa & 0xFFF)) {
    return absl::InvalidArgumentError(absl::StrFormat("unaligned 0x%x -> 0x%x", va, pa));
  }
  absl::StatusOr<uint64_t> directory = Directory(va);
  if (!directory.ok()) return directory.status();
  const bool pae = mode_ == Mode::kPae;
  const uint64_t pde_pa = *directory + (pae ? ((va >> 21) & 0x1FF) * 8 : uint64_t{va >> 22} * 4);
  uint64_t pde = ReadEntry(pde_pa);
  if ((pde & kPresent) && (pde & kPageSizeBit)) {
    return absl::FailedPreconditionError(
        absl::StrFormat("0x%x is already inside a large page", va));
  }
  if (!(pde & kPresent)) {
    absl::StatusOr<uint64_t> table = AllocateTable();
    if (!table.ok()) return table.status();
    pde = *table | kPresent | kWritable | kUser;
    WriteEntry(pde_pa, pde);
  }
  const uint64_t table = pde & 0x000FFFFFFFFFF000u;
  const uint64_t pte_pa = table + (pae ? ((va >> 12) & 0x1FF) * 8 : ((va >> 12) & 0x3FF) * 4);
  WriteEntry(pte_pa, pa | EntryBits(flags));
  return absl::OkStatus();
}

absl::Status PageTableBuilder::MapLarge(uint32_t va, uint64_t pa, PageFlags flags) {
  const uint32_t size = large_page_size();
  if ((va & (size - 1)) || (pa & (size - 1))) {
    return absl::InvalidArgumentError(absl::StrFormat("unaligned large page 0x%x -> 0x%x", va, pa));
  }
  absl::StatusOr<uint64_t> directory = Directory(va);
  if (!directory.ok()) return directory.status();
  const bool pae = mode_ == Mode::kPae;
  const uint64_t pde_pa = *directory + (pae ? ((va >> 21) & 0x1FF) * 8 : uint64_t{va >> 22} * 4);
  uint64_t frame = pa;
  if (!pae) {
    // PSE-36: physical bits 32..39 go to entry bits 13..20.
    frame = (pa & 0xFFC00000u) | (((pa >> 32) & 0xFF) << 13);
  }
  WriteEntry(pde_pa, frame | EntryBits(flags) | kPageSizeBit);
  return absl::OkStatus();
}

absl::Status PageTableBuilder::MapRange(uint32_t va, uint64_t pa, uint64_t size, PageFlags flags) {
  for (uint64_t offset = 0; offset < size; offset += 4096) {
    if (absl::Status s = Map4K(va + static_cast<uint32_t>(offset), pa + offset, flags); !s.ok()) {
      return s;
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> PageTableBuilder::EntryAddress(uint32_t va,
                                                        engine::PagingLevel level) const {
  const bool pae = mode_ == Mode::kPae;
  if (level == engine::PagingLevel::kPdpte) {
    if (!pae) return absl::InvalidArgumentError("no PDPTE without PAE");
    return root_ + uint64_t{va >> 30} * 8;
  }
  uint64_t directory = root_;
  if (pae) {
    const uint64_t pdpte = ReadEntry(root_ + uint64_t{va >> 30} * 8);
    if (!(pdpte & kPresent)) return absl::NotFoundError("no page directory for this address");
    directory = pdpte & 0x000FFFFFFFFFF000u;
  }
  const uint64_t pde_pa = directory + (pae ? ((va >> 21) & 0x1FF) * 8 : uint64_t{va >> 22} * 4);
  if (level == engine::PagingLevel::kPde) return pde_pa;
  const uint64_t pde = ReadEntry(pde_pa);
  if (!(pde & kPresent) || (pde & kPageSizeBit)) {
    return absl::NotFoundError("no page table for this address");
  }
  const uint64_t table = pde & 0x000FFFFFFFFFF000u;
  return table + (pae ? ((va >> 12) & 0x1FF) * 8 : ((va >> 12) & 0x3FF) * 4);
}

FakeGuestVm::Options XpLikeVmOptions(const XpLikeOptions& options) {
  FakeGuestVm::Options vm_options;
  vm_options.ram_bytes = options.low_memory_bytes + (1u << 20);
  vm_options.vcpu_count = options.vcpu_count;
  return vm_options;
}

absl::StatusOr<PageTableBuilder> BuildXpLikeLayout(FakeGuestVm& vm, const XpLikeOptions& options) {
  const uint64_t pool_start = options.low_memory_bytes;
  PageTableBuilder builder(
      vm, options.pae ? PageTableBuilder::Mode::kPae : PageTableBuilder::Mode::kNonPae, pool_start,
      pool_start + (1u << 20));
  if (builder.cr3() == 0) return absl::ResourceExhaustedError("no RAM for the page tables");
  const uint32_t large = builder.large_page_size();
  if (options.large_pages && options.low_memory_bytes % large == 0) {
    for (uint64_t pa = 0; pa < options.low_memory_bytes; pa += large) {
      if (absl::Status s = builder.MapLarge(kXpKernelBase + static_cast<uint32_t>(pa), pa);
          !s.ok()) {
        return s;
      }
    }
  } else if (absl::Status s = builder.MapRange(kXpKernelBase, 0, options.low_memory_bytes);
             !s.ok()) {
    return s;
  }
  if (absl::Status s = builder.Map4K(kXpApicVa, kApicPhysical); !s.ok()) return s;
  MemoryRegion apic;
  apic.start = kApicPhysical;
  apic.end = kApicPhysical + 0xFFF;
  apic.name = "apic";
  vm.AddMemoryRegion(apic);
  builder.ApplyToAllVcpus();
  return builder;
}

absl::Status SetXpLikeKpcrs(FakeGuestVm& vm, int vcpu_count) {
  for (int v = 0; v < vcpu_count; ++v) {
    const uint32_t kpcr = kXpKernelBase + 0x40000 + v * 0x1000;
    vm.BackdoorWrite32(kpcr - kXpKernelBase + 0x1C, kpcr);
    const uint8_t number = static_cast<uint8_t>(v);
    if (absl::Status s = vm.BackdoorWritePhysical(kpcr - kXpKernelBase + 0x51, {&number, 1});
        !s.ok()) {
      return s;
    }
    vm.Registers(v).fs_base = kpcr;
    vm.Registers(v).cs = 8;
  }
  return absl::OkStatus();
}

}  // namespace tprd::testing

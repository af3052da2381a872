// Builds x86 32-bit page tables (non-PAE with 4 KiB and 4 MiB pages, PAE with 4 KiB and 2 MiB
// pages) in a FakeGuestVm's physical memory, and an XP-like kernel layout.
#ifndef TPRD_TESTS_FAKES_PAGE_TABLE_BUILDER_H_
#define TPRD_TESTS_FAKES_PAGE_TABLE_BUILDER_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "tests/fakes/fake_guest_vm.h"

namespace tprd::testing {

struct PageFlags {
  bool present = true;
  bool writable = true;
  bool user = false;
  bool no_execute = false;  // PAE only (needs EFER.NXE to mean anything)
};

class PageTableBuilder {
 public:
  enum class Mode : uint8_t { kNonPae, kPae };

  // Tables are allocated from the physical range [table_pool_start, table_pool_end), 4 KiB
  // aligned, zeroed. Directory entries created on the way are present, writable and user, so
  // the leaf's flags decide (tests change intermediate bits through EntryAddress).
  PageTableBuilder(FakeGuestVm& vm, Mode mode, uint64_t table_pool_start, uint64_t table_pool_end);

  absl::Status Map4K(uint32_t va, uint64_t pa, PageFlags flags = {});
  // A 4 MiB page (non-PAE, needs CR4.PSE) or a 2 MiB page (PAE); va and pa aligned to it.
  absl::Status MapLarge(uint32_t va, uint64_t pa, PageFlags flags = {});
  // 4 KiB pages over [va, va + size).
  absl::Status MapRange(uint32_t va, uint64_t pa, uint64_t size, PageFlags flags = {});
  uint32_t large_page_size() const { return mode_ == Mode::kPae ? (2u << 20) : (4u << 20); }

  // Physical address of the entry for `va` at a level; error when the table above is missing.
  absl::StatusOr<uint64_t> EntryAddress(uint32_t va, engine::PagingLevel level) const;

  uint32_t cr0() const { return engine::kCr0Pg | engine::kCr0Pe | engine::kCr0Wp; }
  uint32_t cr3() const { return static_cast<uint32_t>(root_); }
  uint32_t cr4() const { return mode_ == Mode::kPae ? engine::kCr4Pae : engine::kCr4Pse; }
  uint64_t efer() const { return mode_ == Mode::kPae ? engine::kEferNxe : 0; }
  engine::PagingRegisters paging() const { return {cr0(), cr3(), cr4(), efer(), 36}; }
  // Loads cr0/cr3/cr4/efer into every vCPU of the fake.
  void ApplyToAllVcpus() const { vm_.SetPagingAll(cr0(), cr3(), cr4(), efer()); }
  Mode mode() const { return mode_; }

 private:
  absl::StatusOr<uint64_t> AllocateTable();
  uint64_t EntryBits(PageFlags flags) const;
  // The page directory covering `va`, created on demand.
  absl::StatusOr<uint64_t> Directory(uint32_t va);
  void WriteEntry(uint64_t pa, uint64_t value);
  uint64_t ReadEntry(uint64_t pa) const;

  FakeGuestVm& vm_;
  Mode mode_;
  uint64_t next_table_;
  uint64_t pool_end_;
  uint64_t root_ = 0;  // page directory (non-PAE) or PDPT (PAE)
};

// A guest laid out like 32-bit Windows: low physical memory [0, low_memory_bytes) mapped at
// 0x80000000 + physical, the APIC page 0xFEE00000 at 0xFFFE0000. Page tables live in RAM
// just above the low memory (not mapped), so tests writing into the mapped range never hit them.
struct XpLikeOptions {
  bool pae = false;
  bool large_pages = false;  // map low memory with 4 MiB / 2 MiB pages
  uint64_t low_memory_bytes = 16u << 20;
  int vcpu_count = 1;
};

inline constexpr uint32_t kXpKernelBase = 0x80000000u;
inline constexpr uint32_t kXpApicVa = 0xFFFE0000u;
inline constexpr uint64_t kApicPhysical = 0xFEE00000u;

// Sets up `vm` (which must have at least low_memory_bytes + 1 MiB of RAM): tables, memory map
// entry for the APIC page, paging registers on every vCPU.
absl::StatusOr<PageTableBuilder> BuildXpLikeLayout(FakeGuestVm& vm, const XpLikeOptions& options);

// Options for a FakeGuestVm big enough for BuildXpLikeLayout.
FakeGuestVm::Options XpLikeVmOptions(const XpLikeOptions& options);

// Gives vCPUs 0..vcpu_count-1 a KPCR as Windows keeps one (at 0x80040000 + vCPU * 0x1000: its
// own address at +0x1C, the processor number at +0x51, fs based there) and kernel-mode cs, which
// is what the engine's guest profile looks for. Needs BuildXpLikeLayout's mapping.
absl::Status SetXpLikeKpcrs(FakeGuestVm& vm, int vcpu_count);

}  // namespace tprd::testing

#endif  // TPRD_TESTS_FAKES_PAGE_TABLE_BUILDER_H_

// x86 32-bit page-table walker (non-PAE 4 KiB / 4 MiB, PAE 4 KiB / 2 MiB) over a guest's
// physical memory, and the reverse search "which virtual pages map this physical page".
//
// Pure: reads physical memory only through PhysicalMemoryReader. Never aborts on garbage tables:
// entries pointing outside readable memory are errors, reserved bits are reported faults.
#ifndef TPRD_DAEMON_ENGINE_PAGE_WALKER_H_
#define TPRD_DAEMON_ENGINE_PAGE_WALKER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "daemon/engine/guest_vm.h"

namespace tprd::engine {

class PhysicalMemoryReader {
 public:
  virtual ~PhysicalMemoryReader() = default;
  virtual absl::Status ReadPhysical(uint64_t pa, absl::Span<uint8_t> out) = 0;
};

// Reads through GuestVm::ReadPhysical (the guest must be stopped), or with `live` through
// GuestVm::ReadPhysicalLive (the guest may run: bytes it writes meanwhile may be old or new).
class GuestVmPhysicalReader : public PhysicalMemoryReader {
 public:
  explicit GuestVmPhysicalReader(GuestVm& vm, bool live = false) : vm_(vm), live_(live) {}
  absl::Status ReadPhysical(uint64_t pa, absl::Span<uint8_t> out) override {
    return live_ ? vm_.ReadPhysicalLive(pa, out) : vm_.ReadPhysical(pa, out);
  }

 private:
  GuestVm& vm_;
  bool live_;
};

inline constexpr uint32_t kCr0Pe = 1u << 0;
inline constexpr uint32_t kCr0Wp = 1u << 16;
inline constexpr uint32_t kCr0Pg = 1u << 31;
inline constexpr uint32_t kCr4Pse = 1u << 4;
inline constexpr uint32_t kCr4Pae = 1u << 5;
inline constexpr uint64_t kEferNxe = 1u << 11;

// The registers that select and root the paging structures of one vCPU.
struct PagingRegisters {
  uint32_t cr0 = 0;
  uint32_t cr3 = 0;
  uint32_t cr4 = 0;
  uint64_t efer = 0;
  // MAXPHYADDR: PAE entry bits at and above it are reserved. 36 is what qemu32 reports.
  int physical_address_bits = 36;

  static PagingRegisters From(const VcpuRegisters& regs) {
    return {regs.cr0, regs.cr3, regs.cr4, regs.efer, 36};
  }
};

enum class PageFault : uint8_t {
  kNone = 0,
  kNotPresent,    // an entry on the way had P=0
  kReservedBits,  // a present entry had reserved bits set (hardware: #PF with RSVD)
};

enum class PagingLevel : uint8_t { kNone = 0, kPdpte, kPde, kPte };

struct Translation {
  PageFault fault = PageFault::kNone;
  PagingLevel fault_level = PagingLevel::kNone;  // which entry faulted
  uint64_t physical_address = 0;                 // valid when fault == kNone
  uint32_t page_size = 0;                        // 4 KiB, 2 MiB or 4 MiB
  // Effective permissions: AND of R/W and U/S over the levels, OR of XD (only with EFER.NXE).
  bool writable = false;
  bool user = false;
  bool no_execute = false;

  bool present() const { return fault == PageFault::kNone; }
};

// Translates one virtual address. Paging off (CR0.PG=0): identity, writable, user, executable.
// An error only when a paging structure cannot be read (e.g. outside guest RAM).
absl::StatusOr<Translation> TranslateVirtual(PhysicalMemoryReader& memory,
                                             const PagingRegisters& paging, uint32_t va);

struct VirtualMapping {
  uint32_t va = 0;  // page-aligned (4 KiB) virtual address mapping the physical page
  Translation translation;
};

struct ReverseLookupResult {
  std::vector<VirtualMapping> mappings;  // ascending va
  // Present entries whose next-level table could not be read or had reserved bits: skipped.
  int skipped_entries = 0;
};

// Every 4 KiB virtual page in [va_first, va_last] (inclusive, both rounded to pages) that maps the
// 4 KiB physical page holding `physical_page`. Reads each directory and table once, whole, and
// skips non-present entries. Paging off: the identity page, if in range.
absl::StatusOr<ReverseLookupResult> FindVirtualMappings(PhysicalMemoryReader& memory,
                                                        const PagingRegisters& paging,
                                                        uint64_t physical_page,
                                                        uint32_t va_first = 0,
                                                        uint32_t va_last = 0xFFFFFFFF);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_PAGE_WALKER_H_

// Where the blob goes in a guest: zero bytes in the legacy window 0xC0000-0xEFFFF, mapped at
// 0x80000000 + physical in the kernel's address space of every vCPU. docs/design.md
// "Placement" explains why code and guest-written data may go to different places.
#ifndef TPRD_DAEMON_ENGINE_PLACEMENT_H_
#define TPRD_DAEMON_ENGINE_PLACEMENT_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/engine/guest_profile.h"
#include "daemon/engine/guest_vm.h"

namespace tprd::engine {

inline constexpr uint32_t kLegacyWindowFirst = 0xC0000;
inline constexpr uint32_t kLegacyWindowEnd = 0xF0000;  // exclusive
inline constexpr uint32_t kLowMemoryVirtualBase = 0x80000000;

// The physical addresses of the pages of the legacy window that start with the blob's magic (a
// blob, or bytes that claim to be one: the caller parses and checks). `window` holds the window's
// bytes from kLegacyWindowFirst.
std::vector<uint32_t> PagesWithBlobMagic(const std::vector<uint8_t>& window);

struct PlacementRequest {
  uint32_t image_size = 0;  // header, code, site table: guest reads/executes only (page aligned)
  // The data block, written by the guest's handlers: must be RAM. The image holds a copy of it,
  // used when the whole image can go in RAM.
  uint32_t data_size = 0;
  uint32_t data_alignment = 64;
};

struct Placement {
  uint32_t image_pa = 0;
  uint32_t image_va = 0;
  uint32_t data_pa = 0;  // 0: the data block stays inside the image (one RAM placement)
  uint32_t data_va = 0;
  bool image_in_rom = false;
};

// A page-aligned run of zero bytes for the image (RAM; or read-only RAM when the data lives
// elsewhere) and a zero run of RAM for the data on pages the image does not use. The guest must
// be stopped. FAILED_PRECONDITION, with the runs found, when there is no room. `memory_map`: the
// guest's memory map read earlier (GuestVm::MemoryMap, an HMP command of 2.5-30 ms), else read
// here.
absl::StatusOr<Placement> FindPlacement(GuestVm& vm, const GuestProfile& profile,
                                        const PlacementRequest& request,
                                        const std::vector<MemoryRegion>* memory_map = nullptr);

// Checks that [va, va + size) maps to [pa, pa + size) on every vCPU (present; executable for
// code, writable for data).
absl::Status CheckKernelMapping(GuestVm& vm, const GuestProfile& profile, uint32_t va, uint32_t pa,
                                uint32_t size, bool needs_execute);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_PLACEMENT_H_

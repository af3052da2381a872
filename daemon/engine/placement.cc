#include "daemon/engine/placement.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "daemon/engine/blob.h"
#include "daemon/engine/page_walker.h"

namespace tprd::engine {
namespace {

constexpr uint32_t kPageSize = 4096;

struct ZeroRun {
  uint32_t first = 0;
  uint32_t end = 0;  // exclusive
  bool rom = false;
};

// Zero runs of at least `min_bytes` inside RAM or read-only RAM regions of the window.
absl::StatusOr<std::vector<ZeroRun>> FindZeroRuns(GuestVm& vm,
                                                  const std::vector<MemoryRegion>& regions,
                                                  uint32_t min_bytes) {
  std::vector<ZeroRun> runs;
  for (const MemoryRegion& region : regions) {
    if (!region.ram && !region.rom) continue;
    const uint64_t first = std::max<uint64_t>(region.start, kLegacyWindowFirst);
    const uint64_t end = std::min<uint64_t>(region.end + 1, kLegacyWindowEnd);
    if (first >= end) continue;
    std::vector<uint8_t> bytes(end - first);
    if (absl::Status s = vm.ReadPhysical(first, absl::MakeSpan(bytes)); !s.ok()) return s;
    size_t i = 0;
    while (i < bytes.size()) {
      if (bytes[i] != 0) {
        ++i;
        continue;
      }
      size_t j = i;
      while (j < bytes.size() && bytes[j] == 0) ++j;
      if (j - i >= min_bytes) {
        runs.push_back(ZeroRun{static_cast<uint32_t>(first + i), static_cast<uint32_t>(first + j),
                               !region.ram});
      }
      i = j;
    }
  }
  return runs;
}

uint32_t AlignUp(uint32_t value, uint32_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

std::string DescribeRuns(const std::vector<ZeroRun>& runs) {
  if (runs.empty()) return "none";
  return absl::StrJoin(runs, ", ", [](std::string* out, const ZeroRun& r) {
    absl::StrAppend(out, "0x", absl::Hex(r.first), "-0x", absl::Hex(r.end - 1),
                    r.rom ? " (read-only)" : " (RAM)");
  });
}

}  // namespace

absl::Status CheckKernelMapping(GuestVm& vm, const GuestProfile& profile, uint32_t va, uint32_t pa,
                                uint32_t size, bool needs_execute) {
  GuestVmPhysicalReader memory(vm);
  for (const VcpuProfile& cpu : profile.vcpus) {
    for (uint32_t offset = 0; offset < size; offset += kPageSize) {
      absl::StatusOr<Translation> t = TranslateVirtual(memory, cpu.paging, va + offset);
      if (!t.ok()) return t.status();
      if (!t->present() || t->physical_address != pa + offset || (needs_execute && t->no_execute)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "vCPU ", cpu.vcpu, " does not map virtual 0x", absl::Hex(va + offset),
            " to physical 0x", absl::Hex(pa + offset), needs_execute ? " executable" : "",
            ": low memory is not mapped at 0x80000000 as "
            "Windows does"));
      }
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<Placement> FindPlacement(GuestVm& vm, const GuestProfile& profile,
                                        const PlacementRequest& request,
                                        const std::vector<MemoryRegion>* memory_map) {
  absl::StatusOr<std::vector<MemoryRegion>> regions =
      memory_map != nullptr ? *memory_map : vm.MemoryMap();
  if (!regions.ok()) return regions.status();
  const uint32_t min_run =
      request.data_size == 0 ? request.image_size : std::min(request.image_size, request.data_size);
  absl::StatusOr<std::vector<ZeroRun>> runs = FindZeroRuns(vm, *regions, min_run);
  if (!runs.ok()) return runs.status();

  auto image_fits = [&](const ZeroRun& run, bool allow_rom, uint32_t* pa) {
    if (run.rom && !allow_rom) return false;
    const uint32_t start = AlignUp(run.first, kPageSize);
    if (start + request.image_size > run.end) return false;
    *pa = start;
    return true;
  };

  // 1. One RAM run for everything: the image carries its own data block (data_va = 0).
  for (const ZeroRun& run : *runs) {
    uint32_t pa;
    if (!image_fits(run, false, &pa)) continue;
    Placement p{pa, kLowMemoryVirtualBase + pa, 0, 0, false};
    if (!CheckKernelMapping(vm, profile, p.image_va, p.image_pa, request.image_size, true).ok()) {
      continue;
    }
    return p;
  }
  if (request.data_size == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("no room for tprd's blob: it needs ", request.image_size,
                     " zero bytes of RAM, page aligned, in 0xC0000-0xEFFFF; zero runs found: ",
                     DescribeRuns(*runs)));
  }
  // 2. Image anywhere (read-only RAM included), data in a RAM run on other pages.
  for (const ZeroRun& image_run : *runs) {
    uint32_t image_pa;
    if (!image_fits(image_run, true, &image_pa)) continue;
    const uint32_t image_va = kLowMemoryVirtualBase + image_pa;
    if (!CheckKernelMapping(vm, profile, image_va, image_pa, request.image_size, true).ok()) {
      continue;
    }
    for (const ZeroRun& data_run : *runs) {
      if (data_run.rom) continue;
      uint32_t data_pa = AlignUp(data_run.first, request.data_alignment);
      // Not on the image's pages.
      const uint32_t image_end = image_pa + request.image_size;
      if (data_pa < image_end && data_pa + request.data_size > image_pa) {
        data_pa = AlignUp(image_end, request.data_alignment);
      }
      if (data_pa + request.data_size > data_run.end) continue;
      const uint32_t data_va = kLowMemoryVirtualBase + data_pa;
      const uint32_t data_page = data_pa & ~(kPageSize - 1);
      const uint32_t data_span = AlignUp(data_pa + request.data_size, kPageSize) - data_page;
      if (!CheckKernelMapping(vm, profile, kLowMemoryVirtualBase + data_page, data_page, data_span,
                              false)
               .ok()) {
        continue;
      }
      return Placement{image_pa, image_va, data_pa, data_va, image_run.rom};
    }
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "no room for tprd's blob in 0xC0000-0xEFFFF: it needs ", request.image_size,
      " zero bytes (page aligned) for its code and ", request.data_size,
      " zero bytes of RAM on other pages for its data; zero runs found: ", DescribeRuns(*runs)));
}

std::vector<uint32_t> PagesWithBlobMagic(const std::vector<uint8_t>& window) {
  std::vector<uint32_t> pages;
  for (size_t offset = 0; offset + 4 <= window.size(); offset += 4096) {
    uint32_t magic;
    std::memcpy(&magic, window.data() + offset, 4);
    if (magic == TPRD_BLOB_MAGIC)
      pages.push_back(kLegacyWindowFirst + static_cast<uint32_t>(offset));
  }
  return pages;
}

}  // namespace tprd::engine

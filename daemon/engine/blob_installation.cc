#include "daemon/engine/blob_installation.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/engine/guest_site_table.h"
#include "daemon/engine/placement.h"
#include "daemon/engine/status_macros.h"

namespace tprd::engine {

absl::StatusOr<std::optional<ParsedBlob>> BlobInstallation::Find(
    const std::function<void(const absl::Status&)>& skipped) {
  std::vector<uint8_t> window(kLegacyWindowEnd - kLegacyWindowFirst);
  TPRD_RETURN_IF_ERROR(vm_.ReadPhysical(kLegacyWindowFirst, absl::MakeSpan(window)));
  for (const uint32_t pa : PagesWithBlobMagic(window)) {
    absl::StatusOr<ParsedBlob> parsed = ReadGuestBlob(vm_, 0, kLowMemoryVirtualBase + pa);
    if (!parsed.ok()) {
      // A forged or corrupt blob is never trusted; say so and keep looking.
      skipped(parsed.status());
      continue;
    }
    if (parsed->placement.pa != pa) {
      skipped(absl::DataLossError(absl::StrCat("a blob at physical 0x", absl::Hex(pa),
                                               " names another physical address: ignored")));
      continue;
    }
    return std::optional<ParsedBlob>(*std::move(parsed));
  }
  return std::optional<ParsedBlob>();
}

void BlobInstallation::Take(const ParsedBlob& blob) {
  installed_ = Installed{blob.addresses, blob.handlers, blob.placement};
}

absl::Status BlobInstallation::Install(const GuestProfile& profile, uint32_t guard_period) {
  absl::StatusOr<BlobPlacement> placement = Place(profile, guard_period);
  if (!placement.ok()) return placement.status();
  return InstallAt(*placement);
}

absl::StatusOr<BlobPlacement> BlobInstallation::Place(const GuestProfile& profile,
                                                      uint32_t guard_period,
                                                      const std::vector<MemoryRegion>* memory_map) {
  PlacementRequest want;
  want.image_size = kBlobSize;
  want.data_size = kBlobDataBlockSize;
  absl::StatusOr<Placement> where = FindPlacement(vm_, profile, want, memory_map);
  if (!where.ok()) return where.status();
  BlobPlacement placement;
  placement.va = where->image_va;
  placement.pa = where->image_pa;
  placement.data_va = where->data_va;
  placement.data_pa = where->data_pa;
  placement.tpr_va = profile.tpr_va;
  placement.strategy = Strategy::kExact;  // switched once every shadow is set
  placement.cpu_count = static_cast<uint32_t>(profile.vcpus.size());
  for (const VcpuProfile& cpu : profile.vcpus) {
    placement.cpu_count = std::max<uint32_t>(placement.cpu_count, cpu.processor_number + 1u);
  }
  placement.guard_period = guard_period;
  return placement;
}

absl::Status BlobInstallation::InstallAt(const BlobPlacement& placement) {
  absl::StatusOr<BlobInstance> blob = InstantiateBlob(placement);
  if (!blob.ok()) return blob.status();
  // The data block first: the image's header points at it.
  if (!blob->data_block.empty()) {
    TPRD_RETURN_IF_ERROR(WriteVerified(placement.data_va, blob->data_block));
  }
  // The magic last: a tprd killed mid-write (the image takes several gdbstub packets) leaves
  // nothing that looks like a blob.
  const absl::Span<const uint8_t> image(blob->bytes);
  TPRD_RETURN_IF_ERROR(WriteVerified(placement.va + 4, image.subspan(4)));
  TPRD_RETURN_IF_ERROR(WriteVerified(placement.va, image.first(4)));
  installed_ = Installed{blob->addresses, blob->handlers, placement};
  return absl::OkStatus();
}

absl::Status BlobInstallation::InitPerCpu(const std::optional<GuestProfile>& profile,
                                          bool from_real_tpr, bool clear_guard_evidence,
                                          bool cr8_missed_writes) {
  if (!installed_ || !profile) return absl::FailedPreconditionError("no blob installed");
  for (const VcpuProfile& cpu : profile->vcpus) {
    const uint32_t va = installed_->addresses.PerCpuEntry(cpu.processor_number);
    std::array<uint8_t, kPerCpuEntrySize> raw;
    TPRD_RETURN_IF_ERROR(vm_.ReadVirtual(0, va, absl::MakeSpan(raw)));
    absl::StatusOr<PerCpuEntry> entry = DecodePerCpuEntry(raw);
    if (!entry.ok()) return entry.status();
    if (from_real_tpr || !entry->enabled) {
      absl::StatusOr<uint8_t> tpr = vm_.ReadTpr(cpu.vcpu);
      if (!tpr.ok()) return tpr.status();
      entry->shadow_tpr = *tpr;
    } else if (cr8_missed_writes) {
      // Under cr8 the real TPR is the shadow's high nibble unless something wrote the APIC
      // behind the handlers (a write whose resync a killed tprd never made): then it is that
      // write. (A CPU between its CR8 write and its shadow store also differs; the store follows.)
      absl::StatusOr<uint8_t> tpr = vm_.ReadTpr(cpu.vcpu);
      if (!tpr.ok()) return tpr.status();
      if (*tpr != (entry->shadow_tpr & 0xF0)) entry->shadow_tpr = *tpr;
    }
    entry->enabled = true;
    entry->reads_since_check = 0;
    if (clear_guard_evidence) entry->mismatches = 0;
    TPRD_RETURN_IF_ERROR(WriteVerified(va, EncodePerCpuEntry(*entry)));
  }
  return absl::OkStatus();
}

std::optional<PerCpuEntry> BlobInstallation::ReadPerCpuEntry(uint8_t processor_number) {
  std::array<uint8_t, kPerCpuEntrySize> raw;
  const uint32_t va = installed_->addresses.PerCpuEntry(processor_number);
  if (!vm_.ReadVirtual(0, va, absl::MakeSpan(raw)).ok()) return std::nullopt;
  absl::StatusOr<PerCpuEntry> entry = DecodePerCpuEntry(raw);
  if (!entry.ok()) return std::nullopt;
  return *entry;
}

absl::Status BlobInstallation::WriteStrategyWord(Strategy strategy) {
  uint32_t word = static_cast<uint32_t>(strategy);
  uint8_t bytes[4];
  std::memcpy(bytes, &word, 4);
  return WriteVerified(installed_->addresses.strategy_word, bytes);
}

absl::Status BlobInstallation::WriteVerified(uint32_t va, absl::Span<const uint8_t> bytes) {
  TPRD_RETURN_IF_ERROR(vm_.WriteVirtual(0, va, bytes));
  std::vector<uint8_t> back(bytes.size());
  TPRD_RETURN_IF_ERROR(vm_.ReadVirtual(0, va, absl::MakeSpan(back)));
  if (!std::equal(back.begin(), back.end(), bytes.begin())) {
    return absl::DataLossError(
        absl::StrCat("guest memory at 0x", absl::Hex(va), " did not read back what tprd wrote"));
  }
  return absl::OkStatus();
}

uint64_t BlobInstallation::DataBlockPhysical(uint32_t va) const {
  const BlobPlacement& placement = installed_->placement;
  const uint64_t block_pa =
      placement.data_apart() ? placement.data_pa : placement.pa + kBlobDataBlockOffset;
  return block_pa + (va - installed_->addresses.data_block);
}

}  // namespace tprd::engine

#include "daemon/engine/guest_site_table.h"

#include <algorithm>
#include <array>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tprd::engine {

GuestSiteTable::GuestSiteTable(GuestVm& vm, int vcpu, uint32_t blob_va)
    : vm_(vm), vcpu_(vcpu), addresses_(BlobAddressesAt(blob_va)) {}

absl::Status GuestSiteTable::RecordSite(const Site& site) {
  if (site.id >= kBlobMaxSites) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "site %u: the guest site table holds ids 0..%u", site.id, kBlobMaxSites - 1));
  }
  auto entry = EncodeSiteEntry(site);
  if (!entry.ok()) return entry.status();
  const uint32_t va = addresses_.SiteEntry(site.id);
  if (absl::Status written = vm_.WriteVirtual(vcpu_, va, *entry); !written.ok()) {
    return absl::Status(written.code(),
                        absl::StrFormat("site %u: writing its record at 0x%08x: %s", site.id, va,
                                        std::string(written.message())));
  }
  std::array<uint8_t, kSiteEntrySize> back{};
  if (absl::Status read = vm_.ReadVirtual(vcpu_, va, absl::MakeSpan(back)); !read.ok()) {
    return absl::Status(
        read.code(), absl::StrFormat("site %u: reading back its record at 0x%08x: %s", site.id, va,
                                     std::string(read.message())));
  }
  if (back != *entry) {
    return absl::DataLossError(absl::StrFormat(
        "site %u: the record at 0x%08x reads back different from what was written", site.id, va));
  }
  return absl::OkStatus();
}

absl::Status GuestSiteTable::RecordSites(absl::Span<const Site> sites) {
  // id -> encoded record (the last one of an id wins); all are checked before anything is
  // written, as RecordSite checks its one.
  std::map<uint32_t, std::array<uint8_t, kSiteEntrySize>> entries;
  for (const Site& site : sites) {
    if (site.id >= kBlobMaxSites) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "site %u: the guest site table holds ids 0..%u", site.id, kBlobMaxSites - 1));
    }
    auto entry = EncodeSiteEntry(site);
    if (!entry.ok()) return entry.status();
    entries[site.id] = *entry;
  }
  for (auto it = entries.begin(); it != entries.end();) {
    // One run of consecutive ids.
    const uint32_t first = it->first;
    std::vector<uint8_t> run;
    uint32_t next = first;
    for (; it != entries.end() && it->first == next; ++it, ++next) {
      run.insert(run.end(), it->second.begin(), it->second.end());
    }
    const uint32_t va = addresses_.SiteEntry(first);
    if (absl::Status written = vm_.WriteVirtual(vcpu_, va, run); !written.ok()) {
      return absl::Status(written.code(),
                          absl::StrFormat("sites %u-%u: writing their records at 0x%08x: %s", first,
                                          next - 1, va, std::string(written.message())));
    }
    std::vector<uint8_t> back(run.size());
    if (absl::Status read = vm_.ReadVirtual(vcpu_, va, absl::MakeSpan(back)); !read.ok()) {
      return absl::Status(read.code(),
                          absl::StrFormat("sites %u-%u: reading back their records at 0x%08x: %s",
                                          first, next - 1, va, std::string(read.message())));
    }
    if (back != run) {
      return absl::DataLossError(
          absl::StrFormat("sites %u-%u: the records at 0x%08x read back different from what was "
                          "written",
                          first, next - 1, va));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<ParsedBlob> ReadGuestBlob(GuestVm& vm, int vcpu, uint32_t blob_va) {
  std::vector<uint8_t> bytes(kBlobSize);
  if (absl::Status read = vm.ReadVirtual(vcpu, blob_va, absl::MakeSpan(bytes)); !read.ok()) {
    return absl::Status(read.code(), absl::StrFormat("reading the blob at 0x%08x: %s", blob_va,
                                                     std::string(read.message())));
  }
  // The data block may live apart from the image (docs/design.md "Placement"): read it where
  // the header says; ParseBlob validates that address along with everything else.
  std::optional<absl::Span<const uint8_t>> data_block;
  std::vector<uint8_t> data;
  const std::optional<uint32_t> data_va = BlobHeaderDataVa(bytes);
  if (data_va && *data_va != blob_va + kBlobDataBlockOffset) {
    data.resize(kBlobDataBlockSize);
    if (absl::Status read = vm.ReadVirtual(vcpu, *data_va, absl::MakeSpan(data)); !read.ok()) {
      return absl::DataLossError(
          absl::StrFormat("guest blob rejected: its data block at 0x%08x cannot be read: %s",
                          *data_va, std::string(read.message())));
    }
    data_block = absl::MakeConstSpan(data);
  }
  auto parsed = ParseBlob(bytes, data_block);
  if (!parsed.ok()) return parsed.status();
  if (parsed->placement.va != blob_va) {
    return absl::DataLossError(
        absl::StrFormat("guest blob rejected: found at 0x%08x, its header says 0x%08x", blob_va,
                        parsed->placement.va));
  }
  return parsed;
}

absl::StatusOr<std::vector<Site>> ReadGuestSiteTable(GuestVm& vm, int vcpu, uint32_t blob_va) {
  auto parsed = ReadGuestBlob(vm, vcpu, blob_va);
  if (!parsed.ok()) return parsed.status();
  return std::move(parsed->sites);
}

}  // namespace tprd::engine

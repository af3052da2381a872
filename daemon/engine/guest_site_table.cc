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
  // One write per run of consecutive ids, all in one exchange; then one read of the range that
  // covers them checks every run.
  struct Run {
    uint32_t first, last;
    std::vector<uint8_t> bytes;
  };
  std::vector<Run> runs;
  for (auto it = entries.begin(); it != entries.end();) {
    Run run{it->first, it->first, {}};
    do {
      run.last = it->first;
      run.bytes.insert(run.bytes.end(), it->second.begin(), it->second.end());
      ++it;
    } while (it != entries.end() && it->first == run.last + 1);
    runs.push_back(std::move(run));
  }
  if (runs.empty()) return absl::OkStatus();
  std::vector<MemoryWrite> writes;
  for (const Run& run : runs) writes.push_back({addresses_.SiteEntry(run.first), run.bytes});
  absl::StatusOr<std::vector<absl::Status>> written = vm_.WriteVirtualMany(vcpu_, writes);
  for (size_t k = 0; k < runs.size(); ++k) {
    const absl::Status& s = written.ok() ? (*written)[k] : written.status();
    if (!s.ok()) {
      return absl::Status(
          s.code(),
          absl::StrFormat("sites %u-%u: writing their records at 0x%08x: %s", runs[k].first,
                          runs[k].last, writes[k].address, std::string(s.message())));
    }
  }
  const uint32_t from = addresses_.SiteEntry(runs.front().first);
  std::vector<uint8_t> back(addresses_.SiteEntry(runs.back().last) + kSiteEntrySize - from);
  if (absl::Status read = vm_.ReadVirtual(vcpu_, from, absl::MakeSpan(back)); !read.ok()) {
    return absl::Status(
        read.code(),
        absl::StrFormat("sites %u-%u: reading back their records at 0x%08x: %s", runs.front().first,
                        runs.back().last, from, std::string(read.message())));
  }
  for (size_t k = 0; k < runs.size(); ++k) {
    const auto at = back.begin() + (writes[k].address - from);
    if (!std::equal(runs[k].bytes.begin(), runs[k].bytes.end(), at)) {
      return absl::DataLossError(
          absl::StrFormat("sites %u-%u: the records at 0x%08x read back different from what was "
                          "written",
                          runs[k].first, runs[k].last, writes[k].address));
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

// PatchManager's blob in the guest: installing it, finding and adopting one already there
// (after a restart of tprd or a kill -9), its per-CPU entries, and mmio's second mapping of the
// APIC page. The rest of PatchManager is in patch_manager.cc, patch_manager_traps.cc and
// patch_manager_leave_cr8.cc.
#include <algorithm>
#include <array>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "daemon/engine/blob.h"
#include "daemon/engine/guest_site_table.h"
#include "daemon/engine/patch_manager.h"
#include "daemon/engine/placement.h"
#include "daemon/engine/status_macros.h"
#include "daemon/engine/tpr_alias.h"
#include "daemon/engine/trap_decoding.h"

namespace tprd::engine {

absl::Status PatchManager::Install(const EnableRequest& request, const GuestProfile& profile) {
  PlacementRequest want;
  want.image_size = kBlobSize;
  want.data_size = kBlobDataBlockSize;
  absl::StatusOr<Placement> where = FindPlacement(vm_, profile, want);
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
  placement.guard_period = request.guard_period;
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
  status_.installed = true;
  return absl::OkStatus();
}

absl::Status PatchManager::InitPerCpu(bool from_real_tpr, bool clear_guard_evidence,
                                      bool cr8_missed_writes) {
  if (!installed_ || !profile_) return absl::FailedPreconditionError("no blob installed");
  for (const VcpuProfile& cpu : profile_->vcpus) {
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

absl::Status PatchManager::EnsureTprAlias() {
  if (!installed_ || !profile_) return absl::FailedPreconditionError("no blob installed");
  GuestVmPhysicalReader memory(vm_);
  const PagingRegisters& paging = profile_->vcpus[0].paging;
  const uint32_t tpr_va = profile_->tpr_va;
  const uint32_t field = installed_->addresses.tpr_write_va;
  uint8_t raw[4];
  TPRD_RETURN_IF_ERROR(vm_.ReadVirtual(0, field, absl::MakeSpan(raw)));
  uint32_t current = 0;
  std::memcpy(&current, raw, 4);
  auto remember = [&](uint32_t alias_va) -> absl::Status {
    absl::StatusOr<std::pair<uint64_t, int>> where = PageTableEntryOf(memory, paging, alias_va);
    if (!where.ok()) return where.status();
    uint8_t entry_bytes[8] = {};
    TPRD_RETURN_IF_ERROR(
        vm_.ReadPhysical(where->first, absl::MakeSpan(entry_bytes, where->second)));
    uint64_t entry = 0;
    std::memcpy(&entry, entry_bytes, where->second);
    alias_ = AliasEntry{alias_va, where->first, entry, where->second};
    return absl::OkStatus();
  };
  if (current != tpr_va) {
    const uint32_t alias_va = current & ~uint32_t{0xFFF};
    absl::StatusOr<bool> maps = AliasMapsTprPage(memory, paging, tpr_va, alias_va);
    if (maps.ok() && *maps) return remember(alias_va);
    // The guest's OS took the entry since: the handlers must not store through it any more.
    uint8_t bytes[4];
    std::memcpy(bytes, &tpr_va, 4);
    TPRD_RETURN_IF_ERROR(WriteVerified(field, bytes));
    NoteError(absl::DataLossError(
        absl::StrCat("the blob's second mapping of the APIC page at 0x", absl::Hex(alias_va),
                     " no longer maps it; the handlers store the TPR at its own address again")));
  }
  absl::StatusOr<TprAliasPlan> plan = PlanTprAlias(memory, paging, tpr_va);
  if (!plan.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("strategy mmio needs a second mapping of the APIC page and there is none: ",
                     plan.status().message(), "; use --strategy cr8 (AMD hosts) or exact"));
  }
  uint8_t entry_bytes[8];
  std::memcpy(entry_bytes, &plan->entry, 8);
  const absl::Span<const uint8_t> entry(entry_bytes, plan->entry_size);
  TPRD_RETURN_IF_ERROR(vm_.WritePhysical(plan->entry_pa, entry));
  uint8_t back[8] = {};
  TPRD_RETURN_IF_ERROR(vm_.ReadPhysical(plan->entry_pa, absl::MakeSpan(back, plan->entry_size)));
  absl::StatusOr<bool> maps = AliasMapsTprPage(memory, paging, tpr_va, plan->alias_va);
  if (!std::equal(entry.begin(), entry.end(), back) || !maps.ok() || !*maps) {
    // Leave no half-made mapping behind.
    const uint8_t zero[8] = {};
    (void)vm_.WritePhysical(plan->entry_pa, absl::MakeConstSpan(zero, plan->entry_size));
    return absl::DataLossError(absl::StrCat("the page table entry at physical 0x",
                                            absl::Hex(plan->entry_pa),
                                            " did not read back what tprd wrote"));
  }
  const uint32_t alias_tpr = plan->alias_va + (tpr_va & 0xFFF);
  uint8_t bytes[4];
  std::memcpy(bytes, &alias_tpr, 4);
  TPRD_RETURN_IF_ERROR(WriteVerified(field, bytes));
  alias_ = AliasEntry{plan->alias_va, plan->entry_pa, plan->entry, plan->entry_size};
  return absl::OkStatus();
}

absl::StatusOr<std::optional<ParsedBlob>> PatchManager::FindInstalledBlob() {
  std::vector<uint8_t> window(kLegacyWindowEnd - kLegacyWindowFirst);
  TPRD_RETURN_IF_ERROR(vm_.ReadPhysical(kLegacyWindowFirst, absl::MakeSpan(window)));
  for (const uint32_t pa : PagesWithBlobMagic(window)) {
    absl::StatusOr<ParsedBlob> parsed = ReadGuestBlob(vm_, 0, kLowMemoryVirtualBase + pa);
    if (!parsed.ok()) {
      // A forged or corrupt blob is never trusted; say so and keep looking.
      NoteError(parsed.status());
      continue;
    }
    if (parsed->placement.pa != pa) {
      NoteError(absl::DataLossError(absl::StrCat("a blob at physical 0x", absl::Hex(pa),
                                                 " names another physical address: ignored")));
      continue;
    }
    return std::optional<ParsedBlob>(*std::move(parsed));
  }
  return std::optional<ParsedBlob>();
}

Strategy PatchManager::LoadInstalled(const ParsedBlob& blob) {
  installed_ = Installed{blob.addresses, blob.handlers, blob.placement};
  status_.installed = true;
  status_.strategy = blob.placement.strategy;
  // Sites as the guest recorded them, checked against the bytes actually there.
  for (const Site& recorded : blob.sites) {
    ManagedSite managed;
    managed.site = recorded;
    managed.disassembly = Disassemble(recorded);
    std::vector<uint8_t> now(recorded.original.size());
    absl::Status read = vm_.ReadVirtual(0, recorded.address, absl::MakeSpan(now));
    if (read.ok() && now == recorded.patched) {
      managed.site.state = SiteState::kApplied;
    } else if (read.ok() && now == recorded.original) {
      managed.site.state =
          recorded.state == SiteState::kRolledBack ? SiteState::kRolledBack : SiteState::kCandidate;
    } else {
      managed.note = read.ok() ? "the bytes at this site are neither the original nor the "
                                 "patched bytes: changed behind tprd"
                               : std::string(read.message());
    }
    next_id_ = std::max(next_id_, recorded.id + 1);
    sites_[recorded.id] = std::move(managed);
  }
  return blob.placement.strategy;
}

absl::Status PatchManager::RecordAdoptedStates(const ParsedBlob& blob) {
  GuestSiteTable guest_table(vm_, 0, installed_->addresses.va);
  std::vector<Site> now;
  for (const Site& recorded : blob.sites) {
    const ManagedSite& managed = sites_[recorded.id];
    if (!managed.note.empty()) continue;  // changed behind tprd: the record stays as it was
    if (managed.site.state != recorded.state) {
      TPRD_RETURN_IF_ERROR(guest_table.RecordSite(managed.site));
    }
    now.push_back(managed.site);
  }
  return journal_.RecordSites(now);
}

absl::StatusOr<bool> PatchManager::Adopt(std::optional<Strategy> requested_hint,
                                         absl::Duration proving_window, int write_stop_limit) {
  absl::StatusOr<GuestProfile> profile = StopAndProfile();
  StoppedGuestScope stopped(vm_);
  if (!profile.ok()) {
    // A guest tprd cannot patch holds no patches of tprd's.
    return absl::IsFailedPrecondition(profile.status()) ? absl::StatusOr<bool>(false)
                                                        : profile.status();
  }
  absl::StatusOr<std::optional<ParsedBlob>> found = FindInstalledBlob();
  if (!found.ok() || !found->has_value()) {
    if (!found.ok()) return found.status();
    return false;
  }
  const Strategy current = LoadInstalled(**found);
  // A tprd killed mid-transaction leaves records a step behind the bytes (pending, or the
  // journal one entry behind the guest's table). Record what the bytes say: in the guest's table
  // where it differs, and every site in the journal, so that the guest, tprd and the journal
  // agree again.
  if (absl::Status s = RecordAdoptedStates(**found); !s.ok()) NoteError(s);
  // tprd left cleanly: the word says exact and the operator's choice comes from the hint
  // (journal); killed: the word still holds the choice and the shadows are live.
  const Strategy requested =
      current != Strategy::kExact ? current : requested_hint.value_or(current);
  request_.strategy = requested;
  // The guest's guard switched mmio off in this boot (its counters say so, whoever saw it):
  // never switch it back on behind the operator's back.
  uint64_t mismatches = 0;
  for (const PerCpuEntry& cpu : (*found)->cpus) mismatches += cpu.mismatches;
  status_.guard_mismatches = mismatches;
  guard_rejected_mmio_ =
      current == Strategy::kExact && requested == Strategy::kMmio && mismatches > 0;
  request_.proving_window = proving_window;
  request_.unpatched_write_stops_per_second_limit = write_stop_limit;

  std::vector<ManagerEvent> events;
  absl::StatusOr<ScanResult> scan = ScanGuest(*profile);
  if (scan.ok()) MergeCandidates(*scan);
  absl::Status s = PlanSites();
  // A vCPU a killed tprd left stopped just after an unpatched access (cr8's watchpoint): fix it
  // up before the shadows are touched.
  if (s.ok() && current == Strategy::kCr8) {
    for (const VcpuProfile& cpu : profile->vcpus) {
      std::string why;
      GuestByteReader reader = [&](uint32_t va, absl::Span<uint8_t> out) {
        return vm_.ReadVirtual(cpu.vcpu, va, out);
      };
      if (ResolveTrap(cpu.eip, reader, profile->tpr_va, &why)) {
        s = HandleWatchpoint(cpu.vcpu, cpu.eip, events);
        if (!s.ok()) break;
      }
    }
  }
  // A writer rolled back on its own runs unpatched and unarmed: mmio's shadows would go stale,
  // so the guest stays on exact, as Rollback left it, until the next enable patches it again.
  const bool restored_writer = std::any_of(sites_.begin(), sites_.end(), [](const auto& entry) {
    return entry.second.site.state == SiteState::kRolledBack &&
           FormWritesTpr(entry.second.site.form);
  });
  Strategy word = requested == Strategy::kMmio && (restored_writer || guard_rejected_mmio_)
                      ? Strategy::kExact
                      : requested;
  if (s.ok() && word == Strategy::kMmio) {
    if (absl::Status alias = EnsureTprAlias(); !alias.ok()) {
      NoteError(alias);
      word = Strategy::kExact;
    }
  }
  if (guard_rejected_mmio_) {
    NoteError(absl::FailedPreconditionError(absl::StrCat(
        "the guest's mmio guard found a stale shadow in this boot (", mismatches,
        " mismatches) and switched itself to exact; it stays on exact until the next tprctl "
        "enable")));
  }
  // mmio's real TPR is always right (every write reaches it; a vCPU a killed tprd left stopped
  // after an unpatched write has a stale shadow), so its shadows are taken from it too.
  if (s.ok()) {
    s = InitPerCpu(/*from_real_tpr=*/current == Strategy::kExact || current == Strategy::kMmio,
                   /*clear_guard_evidence=*/false,
                   /*cr8_missed_writes=*/current == Strategy::kCr8);
  }
  if (s.ok()) s = WriteStrategy(word);
  if (s.ok()) status_.requested_strategy = requested;
  // A vCPU stopped at a candidate (a breakpoint hit) runs it next: patch it now.
  if (s.ok()) ApplyCandidatesAtVcpus(events);
  if (s.ok() && requested != Strategy::kExact) {
    traps_.OpenProvingWindow(request_.proving_window);
    s = traps_.Arm(sites_, status_.strategy, profile_, alias_.has_value());
  }
  // Hits the killed session left pending in QEMU would come late, at the next access to the
  // APIC page; stepped out now, with the traps armed (a stepped TPR access is handled).
  if (s.ok()) ConsumePendingHits(events, /*fix=*/word == Strategy::kCr8);
  NoteError(s);
  absl::Status resumed = stopped.Resume();
  if (!s.ok()) return s;
  if (!resumed.ok() && !absl::IsFailedPrecondition(resumed)) return resumed;
  return true;
}

}  // namespace tprd::engine

// PatchManager and its blob in the guest: adopting one already there (after a restart of tprd
// or a kill -9), mmio's second mapping of the APIC page, and watching the guest's strategy word
// and guard counters while it runs. Finding, installing and writing the blob is
// BlobInstallation's (blob_installation.h). The rest of PatchManager is in patch_manager.cc,
// patch_manager_traps.cc and patch_manager_leave_cr8.cc.
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

absl::Status PatchManager::EnsureTprAlias() {
  if (!blob_.installed() || !profile_) return absl::FailedPreconditionError("no blob installed");
  GuestVmPhysicalReader memory(vm_);
  const PagingRegisters& paging = profile_->vcpus[0].paging;
  const uint32_t tpr_va = profile_->tpr_va;
  const uint32_t field = blob_.addresses().tpr_write_va;
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
    TPRD_RETURN_IF_ERROR(blob_.WriteVerified(field, bytes));
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
  TPRD_RETURN_IF_ERROR(blob_.WriteVerified(field, bytes));
  alias_ = AliasEntry{plan->alias_va, plan->entry_pa, plan->entry, plan->entry_size};
  return absl::OkStatus();
}

Strategy PatchManager::LoadInstalled(const ParsedBlob& blob) {
  blob_.Take(blob);
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
      // A `pending` site a killed tprd never wrote had been proven (its transaction was about
      // to patch it): it is recorded rolled back, as a site applied earlier in this boot is, so
      // that the next enable patches it without a new proof. Under `discovery = watchpoint` a
      // reader is proven only by a first enable's learning window: as a candidate it stayed
      // unpatched for the rest of the boot (ciA, 2026-12-07, the fault test's kill -9 between
      // the pending record and the write). A rolled-back writer keeps an adopted guest on exact
      // until that enable, as after an operator's rollback.
      managed.site.state =
          recorded.state == SiteState::kRolledBack || recorded.state == SiteState::kPending
              ? SiteState::kRolledBack
              : SiteState::kCandidate;
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
  GuestSiteTable guest_table(vm_, 0, blob_.addresses().va);
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
                                         const EnableRequest& settings) {
  absl::StatusOr<GuestProfile> profile = StopAndProfile();
  StoppedGuestScope stopped(vm_);
  if (!profile.ok()) {
    // A guest tprd cannot patch holds no patches of tprd's.
    return absl::IsFailedPrecondition(profile.status()) ? absl::StatusOr<bool>(false)
                                                        : profile.status();
  }
  absl::StatusOr<std::optional<ParsedBlob>> found =
      blob_.Find([this](const absl::Status& skipped) { NoteError(skipped); });
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
  request_.proving_window = settings.proving_window;
  request_.unpatched_write_stops_per_second_limit = settings.unpatched_write_stops_per_second_limit;
  request_.discovery = settings.discovery;
  traps_.set_discovery(settings.discovery);

  std::vector<ManagerEvent> events;
  absl::StatusOr<ScanResult> scan = ScanGuest(*profile);
  if (scan.ok()) MergeCandidates(*scan);
  absl::Status s = PlanSites();
  // A vCPU a killed tprd left stopped just after an unpatched access (cr8's watchpoint reported
  // it to the killed tprd, so QEMU reports it to no one again): fix it up before the shadows are
  // touched. An access whose encoding names the TPR is handled as the hit it was. One found only
  // by its operand's address (a register-relative read, ciT 2026-12-07) needs proof that it just
  // ran, since a vCPU may also stand there because it jumped there: HandleWatchpoint's
  // unreported mode (the read's result still holds the real TPR, which differs from the shadow).
  if (s.ok() && current == Strategy::kCr8) {
    for (const VcpuProfile& cpu : profile->vcpus) {
      std::string why;
      GuestByteReader reader = [&](uint32_t va, absl::Span<uint8_t> out) {
        return vm_.ReadVirtual(cpu.vcpu, va, out);
      };
      const bool names_the_tpr = ResolveTrap(cpu.eip, reader, profile->tpr_va, &why).has_value();
      s = HandleWatchpoint(cpu.vcpu, cpu.eip, events, /*reported=*/names_the_tpr);
      if (!s.ok()) break;
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
    s = blob_.InitPerCpu(
        profile_, /*from_real_tpr=*/current == Strategy::kExact || current == Strategy::kMmio,
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

void PatchManager::ReadGuestCounters() {
  const uint32_t cpus = blob_.placement().cpu_count;
  std::vector<uint8_t> raw(size_t{cpus} * kPerCpuStatsSize);
  if (!vm_.ReadPhysicalLive(blob_.DataBlockPhysical(blob_.addresses().PerCpuStatsEntry(0)),
                            absl::MakeSpan(raw))
           .ok()) {
    return;
  }
  // Counted from 0 when the blob went in; a guest adopted later brings what it counted since.
  counters_seen_.resize(cpus);
  for (uint32_t cpu = 0; cpu < cpus; ++cpu) {
    absl::StatusOr<PerCpuStats> now = DecodePerCpuStats(
        absl::MakeConstSpan(raw).subspan(size_t{cpu} * kPerCpuStatsSize, kPerCpuStatsSize));
    if (!now.ok()) return;
    status_.handler_accesses_without_apic += uint32_t(now->no_apic - counters_seen_[cpu].no_apic);
    status_.handler_accesses_to_apic += uint32_t(now->apic - counters_seen_[cpu].apic);
    counters_seen_[cpu] = *now;
  }
  status_.counters_read_at = clock_.Now();
}

void PatchManager::WatchGuestWord(std::vector<ManagerEvent>& events) {
  if (!blob_.installed()) return;
  const absl::Time now = clock_.Now();
  if (next_word_check_ && now < *next_word_check_) return;
  next_word_check_ = now + absl::Seconds(1);
  CheckTprAlias(events);
  uint8_t word_bytes[4];
  if (!vm_.ReadPhysicalLive(blob_.DataBlockPhysical(blob_.addresses().strategy_word), word_bytes)
           .ok()) {
    return;  // no live path (or a transient failure): the status keeps what tprd wrote last
  }
  uint32_t word = 0;
  std::memcpy(&word, word_bytes, sizeof(word));
  uint64_t mismatches = 0;
  std::string per_cpu;
  for (uint32_t cpu = 0; cpu < blob_.placement().cpu_count; ++cpu) {
    std::array<uint8_t, kPerCpuEntrySize> raw;
    if (!vm_.ReadPhysicalLive(blob_.DataBlockPhysical(blob_.addresses().PerCpuEntry(cpu)),
                              absl::MakeSpan(raw))
             .ok()) {
      return;
    }
    absl::StatusOr<PerCpuEntry> entry = DecodePerCpuEntry(raw);
    if (!entry.ok()) return;
    mismatches += entry->mismatches;
    if (entry->mismatches > 0) absl::StrAppend(&per_cpu, " CPU ", cpu, ": ", entry->mismatches);
  }
  status_.guard_mismatches = mismatches;
  ReadGuestCounters();
  const Strategy seen = static_cast<Strategy>(word);
  if (seen == status_.strategy) return;
  if (word > static_cast<uint32_t>(Strategy::kCr8)) {
    events.push_back({ManagerEvent::Kind::kWarning, std::nullopt,
                      absl::StrCat("the guest's strategy word reads ", word,
                                   ", which is no strategy: changed behind tprd")});
    return;
  }
  if (seen == Strategy::kExact && status_.strategy == Strategy::kMmio) {
    guard_rejected_mmio_ = true;
    status_.strategy = Strategy::kExact;
    const std::string message = absl::StrCat(
        "the guest's mmio guard found a stale shadow (mismatches:",
        per_cpu.empty() ? " ?" : per_cpu,
        ") and switched itself to exact: an unpatched TPR writer runs; it stays on exact until "
        "the next tprctl enable");
    events.push_back({ManagerEvent::Kind::kStrategyChanged, std::nullopt, message});
    events.push_back({ManagerEvent::Kind::kWarning, std::nullopt, message});
    return;
  }
  status_.strategy = seen;
  events.push_back({ManagerEvent::Kind::kStrategyChanged, std::nullopt,
                    absl::StrCat("the guest's strategy word changed to ",
                                 std::string(StrategyName(seen)), " behind tprd")});
}

void PatchManager::CheckTprAlias(std::vector<ManagerEvent>& events) {
  if (!alias_) return;
  uint8_t raw[8] = {};
  if (!vm_.ReadPhysicalLive(alias_->entry_pa, absl::MakeSpan(raw, alias_->entry_size)).ok()) {
    return;
  }
  uint64_t entry = 0;
  std::memcpy(&entry, raw, alias_->entry_size);
  // The CPU may set accessed/dirty in it; anything else is the guest's OS taking the entry.
  constexpr uint64_t kAccessedDirty = (1u << 5) | (1u << 6);
  if ((entry & ~kAccessedDirty) == (alias_->entry & ~kAccessedDirty)) return;
  const std::string message = absl::StrCat(
      "the guest changed tprd's second mapping of the APIC page at 0x", absl::Hex(alias_->va),
      " (page table entry 0x", absl::Hex(alias_->entry), " now 0x", absl::Hex(entry),
      "): the handlers store the TPR at its own address again, and the domain runs exact");
  alias_.reset();
  absl::Status s = StopGuest();
  StoppedGuestScope stopped(vm_);
  if (s.ok() && blob_.installed() && profile_) {
    uint8_t bytes[4];
    std::memcpy(bytes, &profile_->tpr_va, 4);
    s = blob_.WriteVerified(blob_.addresses().tpr_write_va, bytes);
  }
  if (s.ok()) s = SwitchToExact("the alias of the APIC page is gone", events);
  NoteError(s);
  (void)ResumeGuest(stopped);
  events.push_back({ManagerEvent::Kind::kWarning, std::nullopt, message});
  NoteError(absl::DataLossError(message));
}

}  // namespace tprd::engine

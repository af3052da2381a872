// PatchManager's operations: scan, learn, enable, apply, rollback, detach. Adopting a blob
// already in the guest, mmio's alias and watching the guest's word are in patch_manager_blob.cc,
// what it does at its traps in patch_manager_traps.cc, leaving cr8 in
// patch_manager_leave_cr8.cc. The blob itself is a BlobInstallation (blob_installation.h), the
// traps a TrapSet (trap_set.h).
#include "daemon/engine/patch_manager.h"

#include <algorithm>
#include <array>
#include <cstring>
#include <memory>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "daemon/engine/decode_report.h"
#include "daemon/engine/guest_site_table.h"
#include "daemon/engine/planner.h"
#include "daemon/engine/status_macros.h"
#include "daemon/engine/transaction.h"
#include "daemon/engine/trap_decoding.h"

namespace tprd::engine {
namespace {

// Stopping the guest while a vCPU is in user mode (FS is the TEB there) is retried this often.
constexpr int kProfileAttempts = 50;

// Records in the guest's site table first (the truth that survives tprd), then the journal.
class BothRecorders : public PatchRecorder {
 public:
  BothRecorders(PatchRecorder& guest, PatchRecorder& journal) : guest_(guest), journal_(journal) {}
  absl::Status RecordSite(const Site& site) override {
    TPRD_RETURN_IF_ERROR(guest_.RecordSite(site));
    return journal_.RecordSite(site);
  }
  // A transaction's pass records its sites together: the journal makes them durable at once
  // (one fsync for the stop's pending records, one for its outcomes, not two per site).
  absl::Status RecordSites(absl::Span<const Site> sites) override {
    TPRD_RETURN_IF_ERROR(guest_.RecordSites(sites));
    return journal_.RecordSites(sites);
  }

 private:
  PatchRecorder& guest_;
  PatchRecorder& journal_;
};

}  // namespace

std::string PatchManager::Disassemble(const Site& site) {
  return BuildDecodeReport(site.original, site.address, kDefaultTprVa, std::nullopt).disassembly;
}

PatchManager::PatchManager(GuestVm& vm, PatchRecorder& journal, Clock& clock)
    : vm_(vm), journal_(journal), clock_(clock), blob_(vm), traps_(vm, clock) {}

void PatchManager::NoteError(const absl::Status& status) {
  if (!status.ok()) status_.last_error = std::string(status.message());
}

absl::Status PatchManager::ResumeGuest(StoppedGuestScope& stopped) {
  absl::Status s = stopped.Resume();
  NoteError(s);
  return s;
}

void PatchManager::SyncJournal() {
  journal_.DeferSync(false);
  NoteError(journal_.Sync());
}

absl::Status PatchManager::StopGuest() {
  TPRD_RETURN_IF_ERROR(vm_.Stop());
  stopped_at_ = clock_.Now();
  std::vector<ManagerEvent> ignored;
  // A trap that raced with this stop: handled now, before anything else runs. A watchpoint hit
  // is fixed up (QEMU reported it with the stop, so that vCPU has no hit pending). A breakpoint
  // needs nothing: its vCPU has not run the instruction, and stands at it for whatever the
  // caller does with that site. Left kept, either would make every step and lone run of a vCPU
  // refuse until the next resume: leaving cr8 then could not poke any real TPR (seen: a SIGTERM
  // in the proving window left a CPU reading its TPR without the low nibble). No site is
  // patched here: the caller (a rollback, a detach) decides what happens to the sites.
  if (std::optional<StopEvent> raced = vm_.TakeRacedTrapStop()) {
    ++status_.traps_handled;
    apply_at_stops_ = false;
    NoteError(HandleStopped(*raced, ignored));
    apply_at_stops_ = true;
    return absl::OkStatus();
  }
  AfterStop(std::nullopt, ignored);
  return absl::OkStatus();
}

absl::StatusOr<GuestProfile> PatchManager::StopAndProfile() {
  for (int attempt = 0;; ++attempt) {
    TPRD_RETURN_IF_ERROR(StopGuest());
    ProfileFailure failure = ProfileFailure::kNone;
    absl::StatusOr<GuestProfile> profile = CheckGuestProfile(vm_, kBlobMaxCpus, &failure);
    if (profile.ok() || failure != ProfileFailure::kUserMode || attempt + 1 >= kProfileAttempts) {
      if (profile.ok()) profile_ = *profile;
      return profile;
    }
    // A vCPU ran user code when it stopped: let the guest run a moment and look again. (No
    // StoppedGuestScope: the guest is meant to run here, and the caller's scope holds the stop
    // this loop ends with.)
    TPRD_RETURN_IF_ERROR(vm_.Resume());
    absl::StatusOr<std::optional<StopEvent>> stop = vm_.WaitForStop(absl::Milliseconds(2));
    if (!stop.ok()) return stop.status();
  }
}

bool PatchManager::CanReadLive() {
  std::array<uint8_t, 1> probe;
  return vm_.ReadPhysicalLive(0, absl::MakeSpan(probe)).ok();
}

absl::StatusOr<ScanResult> PatchManager::ScanGuest(const GuestProfile& profile, bool live,
                                                   std::vector<MemoryRegion>* memory_map) {
  absl::StatusOr<std::vector<MemoryRegion>> regions = vm_.MemoryMap();
  if (!regions.ok()) return regions.status();
  if (memory_map != nullptr) *memory_map = *regions;
  ScanOptions options;
  options.tpr_va = profile.tpr_va;
  options.is_ram = [ram = *regions](uint64_t pa) {
    for (const MemoryRegion& r : ram) {
      if (r.ram && pa >= r.start && pa <= r.end) return true;
    }
    return false;
  };
  if (blob_.installed()) {
    options.exclude.emplace_back(blob_.addresses().va, blob_.addresses().end - 1);
    options.exclude.emplace_back(blob_.addresses().data_block,
                                 blob_.addresses().data_block + kBlobDataBlockSize - 1);
  }
  GuestVmPhysicalReader memory(vm_, live);
  return ScanKernelCode(memory, profile.vcpus[0].paging, options);
}

void PatchManager::MergeCandidates(const ScanResult& scan) {
  std::set<uint32_t> known;
  for (const auto& [id, s] : sites_) known.insert(s.site.address);
  for (const ScanCandidate& c : scan.candidates) {
    if (!c.classification.patchable || known.count(c.address)) continue;
    std::optional<Site> site = CandidateSite(c.classification, c.bytes, c.address);
    if (!site) continue;
    site->id = next_id_++;
    ManagedSite managed;
    managed.site = *site;
    managed.disassembly = Disassemble(*site);
    if (site->id >= kBlobMaxSites) {
      managed.note = "the guest's site table is full: not patched";
    }
    sites_[site->id] = std::move(managed);
  }
}

absl::StatusOr<std::vector<ManagedSite>> PatchManager::Scan() {
  absl::StatusOr<GuestProfile> profile = StopAndProfile();
  StoppedGuestScope stopped(vm_);
  if (!profile.ok()) return profile.status();
  absl::StatusOr<ScanResult> scan = ScanGuest(*profile);
  TPRD_RETURN_IF_ERROR(ResumeGuest(stopped));
  if (!scan.ok()) return scan.status();
  std::vector<ManagedSite> out;
  for (const ScanCandidate& c : scan->candidates) {
    ManagedSite m;
    m.site.address = c.address;
    m.site.original = c.bytes;
    if (c.classification.form) m.site.form = *c.classification.form;
    if (c.classification.reg) m.site.reg = *c.classification.reg;
    m.site.imm = c.classification.imm;
    m.disassembly =
        BuildDecodeReport(c.bytes, c.address, profile->tpr_va, std::nullopt).disassembly;
    m.note = c.classification.patchable ? "" : c.classification.detail;
    out.push_back(std::move(m));
  }
  return out;
}

namespace {

// The time a stopped-and-resumed guest ran, from its ACPI PM timer (GuestVm::ReadAcpiPmTimer),
// read only while the guest is stopped. Unusable from the first failed read on (no ACPI, a
// backend without it): the caller keeps its own measure then.
class GuestRunClock {
 public:
  GuestRunClock(GuestVm& vm, Clock& clock) : vm_(vm), clock_(clock) {
    absl::StatusOr<uint32_t> ticks = vm_.ReadAcpiPmTimer();
    usable_ = ticks.ok();
    if (usable_) last_ticks_ = *ticks;
    last_read_ = clock_.Now();
  }
  // Reads the timer (the guest stopped) unless `force` is false and under a second of tprd's time
  // passed since the last read.
  void Sample(bool force) {
    const absl::Time now = clock_.Now();
    if (!usable_ || (!force && now - last_read_ < absl::Seconds(1))) return;
    absl::StatusOr<uint32_t> ticks = vm_.ReadAcpiPmTimer();
    if (!ticks.ok()) {
      usable_ = false;
      return;
    }
    uint64_t delta = (*ticks - last_ticks_) & kAcpiPmTimerMask;
    // The guest ran no longer than tprd's time between the reads: add the wraps that fit (none
    // between reads under 4.69 s apart; a wait with no stop can be longer).
    const uint64_t wrap = uint64_t{kAcpiPmTimerMask} + 1;
    const auto wall_ticks = static_cast<uint64_t>(absl::ToDoubleSeconds(now - last_read_) *
                                                  static_cast<double>(kAcpiPmTimerHz));
    if (wall_ticks > delta) delta += (wall_ticks - delta) / wrap * wrap;
    ticks_ += delta;
    last_ticks_ = *ticks;
    last_read_ = now;
  }
  bool usable() const { return usable_; }
  absl::Duration ran() const {
    return absl::Seconds(static_cast<double>(ticks_) / static_cast<double>(kAcpiPmTimerHz));
  }

 private:
  GuestVm& vm_;
  Clock& clock_;
  bool usable_ = false;
  uint32_t last_ticks_ = 0;
  uint64_t ticks_ = 0;
  absl::Time last_read_;
};

}  // namespace

absl::Status PatchManager::Learn(const EnableRequest& request, const GuestProfile& profile,
                                 std::set<uint32_t>& proven, size_t& hits) {
  TPRD_RETURN_IF_ERROR(vm_.SetWatchpoint(profile.tpr_va, 4, WatchKind::kAccess));
  // The guest's own clock, read while it is stopped: now, at a stop once a second of tprd's time
  // has passed since the last read (the timer wraps every 4.69 s), and at the end: right after
  // the enable's resume (finish_learning_clock_), not in its stop (an HMP command, 1-2.5 ms). The
  // timer is QEMU's virtual clock, which stood still until then.
  auto shared_clock = std::make_shared<GuestRunClock>(vm_, clock_);
  GuestRunClock& guest_clock = *shared_clock;
  // The window is the guest running under the watchpoint: these resumes (here and after each
  // hit) are the point, not the end of a stop. Enable's StoppedGuestScope covers every early
  // return, and the Stop() after the loop hands the guest back to it stopped.
  TPRD_RETURN_IF_ERROR(vm_.Resume());
  const absl::Time deadline = clock_.Now() + request.learning_window;
  // How long the guest ran in the window: from each resume to the stop that ends it, as tprd
  // sees them (the "before" rate of docs/design.md "Rates and metrics").
  absl::Duration ran;
  absl::Time resumed = clock_.Now();
  bool running = true;
  auto stopped_now = [&] {
    if (running) ran += clock_.Now() - resumed;
    running = false;
  };
  absl::Status verdict = absl::OkStatus();
  // mmio keeps a write watchpoint: an unpatchable writer is correct there but stops the guest
  // at each run, so only one that runs often refuses mmio.
  int unpatchable_writer_hits = 0;
  const int unpatchable_writer_limit = std::max(1, request.learning_max_hits / 8);
  // One stop of the window: a patchable hit is proven; an access a strategy cannot live with
  // sets the verdict.
  auto learn = [&](const StopEvent& event) -> absl::Status {
    if (event.kind == StopEvent::Kind::kGone) {
      return absl::UnavailableError("the domain went away during the learning window");
    }
    if (event.kind == StopEvent::Kind::kPausedByHost) {
      (void)vm_.RemoveWatchpoint(profile.tpr_va, 4, WatchKind::kAccess);
      return absl::FailedPreconditionError(
          "the domain was paused by the host during enable; resume it and try again");
    }
    if (event.kind == StopEvent::Kind::kWatchpoint) {
      ++hits;
      GuestByteReader reader = [&](uint32_t va, absl::Span<uint8_t> out) {
        return vm_.ReadVirtual(event.vcpu, va, out);
      };
      std::string why;
      std::optional<std::pair<uint32_t, Classification>> decoded =
          ResolveTrap(event.pc, reader, profile.tpr_va, &why);
      if (!decoded) {
        // An access whose encoding does not name the TPR (mov [ebx+0x80], eax with ebx at the
        // APIC page): found by its operand's address, as at a watchpoint stop after enable.
        // Without this a register-relative writer in the window never refused mmio (found by
        // the second test guest, tests/hal-guest).
        absl::StatusOr<VcpuRegisters> regs = vm_.ReadRegisters(event.vcpu);
        if (regs.ok()) decoded = ResolveByAddress(event.pc, reader, profile.tpr_va, *regs);
      }
      if (decoded) {
        const Classification& c = decoded->second;
        const std::optional<uint32_t> id = SiteAt(decoded->first);
        const bool no_slot = c.patchable && id && *id >= kBlobMaxSites;
        if (c.patchable && !no_slot) {
          proven.insert(decoded->first);
        } else if (request.strategy == Strategy::kMmio && IsWriter(c, decoded->first, reader) &&
                   ++unpatchable_writer_hits >= unpatchable_writer_limit) {
          // A writer (or an access we cannot tell apart from one) that cannot be patched and
          // runs often: mmio's write watchpoint would stop the guest at every run.
          verdict = absl::FailedPreconditionError(absl::StrCat(
              "strategy mmio does not pay for this guest: the TPR write at 0x",
              absl::Hex(decoded->first), " cannot be patched (",
              no_slot ? *CannotPatch(sites_[*id]) : c.detail, ") and ran ", unpatchable_writer_hits,
              " times in the learning window; each run would stop the guest; use --strategy "
              "cr8 (AMD hosts) or exact"));
        } else if (request.strategy == Strategy::kCr8 && !IsWriter(c, decoded->first, reader) &&
                   !IsFixableRead(c, decoded->first, reader)) {
          // A reader tprd can neither patch nor fix up would see the TPR without the low nibble
          // a CR8 write clears.
          verdict = absl::FailedPreconditionError(absl::StrCat(
              "strategy cr8 is unsafe for this guest: the TPR read at 0x",
              absl::Hex(decoded->first), " cannot be patched or fixed up (", c.detail,
              ") and would see the TPR without its low nibble; use --strategy mmio or exact"));
        }
      }
    }
    return absl::OkStatus();
  };
  while (verdict.ok() && static_cast<int>(hits) < request.learning_max_hits) {
    const absl::Duration left = deadline - clock_.Now();
    if (left <= absl::ZeroDuration()) break;
    absl::StatusOr<std::optional<StopEvent>> stop = vm_.WaitForStop(left);
    if (!stop.ok()) return stop.status();
    if (!stop->has_value()) break;
    stopped_now();
    guest_clock.Sample(/*force=*/false);
    TPRD_RETURN_IF_ERROR(learn(**stop));
    if (verdict.ok()) {
      TPRD_RETURN_IF_ERROR(vm_.Resume());
      resumed = clock_.Now();
      running = true;
    }
  }
  stopped_now();
  status_.learning_hits = hits;
  status_.learning_run = ran;
  TPRD_RETURN_IF_ERROR(vm_.Stop());
  stopped_at_ = clock_.Now();
  finish_learning_clock_ = [this, shared_clock] {
    shared_clock->Sample(/*force=*/true);
    status_.learning_run_guest_clock = shared_clock->usable();
    if (shared_clock->usable()) status_.learning_run = shared_clock->ran();
  };
  // A hit that raced with that stop would otherwise be delivered after the enable, and decoded
  // against code patched meanwhile: it is part of the window.
  if (std::optional<StopEvent> raced = vm_.TakeRacedWatchpointStop(); raced && verdict.ok()) {
    TPRD_RETURN_IF_ERROR(learn(*raced));
  }
  // No vCPU may keep a hit pending on the watchpoint removed next (QEMU frees it), nor into the
  // strategy's own watchpoint: the window's stops stepped no one.
  std::vector<ManagerEvent> ignored_events;
  ConsumePendingHits(ignored_events, /*fix=*/false);
  TPRD_RETURN_IF_ERROR(vm_.RemoveWatchpoint(profile.tpr_va, 4, WatchKind::kAccess));
  return verdict;
}

absl::Status PatchManager::PlanSites() {
  if (!blob_.installed()) return absl::FailedPreconditionError("no blob installed");
  for (auto& [id, managed] : sites_) {
    if (managed.site.state == SiteState::kApplied || !managed.site.patched.empty()) continue;
    absl::StatusOr<std::vector<uint8_t>> plan = PlanReplacement(managed.site, blob_.handlers());
    if (!plan.ok()) {
      managed.note = std::string(plan.status().message());
      continue;
    }
    managed.site.patched = *plan;
  }
  return absl::OkStatus();
}

size_t PatchManager::ApplyStopped(const std::vector<uint32_t>& ids,
                                  std::vector<ManagerEvent>* events) {
  std::vector<Site> batch;
  // Two vCPUs stopped at the same site name it twice: the transaction would skip the second
  // copy as overlapping, and that outcome must not overwrite the first one's.
  const std::set<uint32_t> unique(ids.begin(), ids.end());
  for (uint32_t id : unique) {
    auto it = sites_.find(id);
    if (it == sites_.end() || it->second.site.patched.empty() || id >= kBlobMaxSites ||
        it->second.site.state == SiteState::kApplied) {
      continue;
    }
    // Proven now: its breakpoint goes first. Under KVM it is an int3 in the site's first byte,
    // which the transaction's byte check would see, and whose later removal would write the
    // original byte back over the patch.
    if (it->second.armed) traps_.RemoveBreakpoint(it->second);
    batch.push_back(it->second.site);
  }
  if (batch.empty()) return 0;
  GuestSiteTable guest_table(vm_, 0, blob_.addresses().va);
  BothRecorders recorder(guest_table, journal_);
  ApplyOptions options;
  options.stop = GuestStop::kCallerHoldsStopped;
  absl::StatusOr<TransactionReport> report =
      ApplySites(vm_, recorder, absl::MakeSpan(batch), options);
  if (!report.ok()) {
    NoteError(report.status());
    return 0;
  }
  size_t applied = 0;
  for (size_t i = 0; i < batch.size(); ++i) {
    ManagedSite& managed = sites_[batch[i].id];
    managed.site.state = batch[i].state;
    const SiteOutcome& outcome = report->outcomes[i];
    if (outcome.kind == SiteOutcome::Kind::kApplied ||
        outcome.kind == SiteOutcome::Kind::kAlreadyApplied) {
      ++applied;
      managed.note.clear();
      if (events) {
        events->push_back(
            {ManagerEvent::Kind::kSitePatched, managed.site.id,
             absl::StrCat("patched site ", managed.site.id, " at 0x",
                          absl::Hex(managed.site.address), ": ", managed.disassembly)});
      }
    } else {
      managed.note = outcome.reason;
      if (events && outcome.kind != SiteOutcome::Kind::kSkipped) {
        events->push_back({ManagerEvent::Kind::kWarning, managed.site.id, outcome.reason});
      }
    }
  }
  if (report->aborted) NoteError(report->abort_status);
  return applied;
}

GuestByteReader PatchManager::OriginalCodeReader(int vcpu, bool* substituted) {
  return [this, vcpu, substituted](uint32_t va, absl::Span<uint8_t> out) -> absl::Status {
    TPRD_RETURN_IF_ERROR(vm_.ReadVirtual(vcpu, va, out));
    const uint64_t end = uint64_t{va} + out.size();
    for (const auto& [id, managed] : sites_) {
      const Site& site = managed.site;
      if (site.original.empty()) continue;
      // A candidate's breakpoint is an int3 in its first byte under KVM: what was there is known.
      if (managed.armed && site.address >= va && site.address < end) {
        out[site.address - va] = site.original[0];
      }
      if (site.state != SiteState::kApplied) continue;
      const uint64_t first = site.address, last = first + site.original.size();
      if (last <= va || first >= end) continue;
      for (uint64_t a = std::max<uint64_t>(first, va); a < std::min(last, end); ++a) {
        out[a - va] = site.original[a - first];
      }
      if (substituted) *substituted = true;
    }
    return absl::OkStatus();
  };
}

std::optional<uint32_t> PatchManager::SiteAt(uint32_t address) const {
  for (const auto& [id, managed] : sites_) {
    if (managed.site.address == address) return id;
  }
  return std::nullopt;
}

absl::StatusOr<EnableReport> PatchManager::Enable(const EnableRequest& request) {
  EnableReport report;
  if (request.strategy == Strategy::kCr8 || request.strategy == Strategy::kMmio ||
      request.strategy == Strategy::kExact) {
    report.strategy = request.strategy;
  }
  absl::StatusOr<CpuFeatures> features = vm_.Features();
  if (!features.ok()) return features.status();
  if (features->qemu_vapic_active) {
    return absl::FailedPreconditionError(
        "QEMU's own TPR patcher (vapic) is active in this domain; turn it off with "
        "-global apic.vapic=off (TCG) or kvm-apic.vapic=off (KVM) and restart the domain");
  }
  if (request.strategy == Strategy::kCr8 && !features->cr8legacy) {
    return absl::FailedPreconditionError(
        "strategy cr8 needs the guest CPU flag cr8legacy (AMD AltMovCr8); add "
        "<feature policy='require' name='cr8legacy'/> to the domain or use mmio");
  }
  const bool any_rolled_back = std::any_of(sites_.begin(), sites_.end(), [](const auto& entry) {
    return entry.second.site.state == SiteState::kRolledBack;
  });
  if (blob_.installed() && status_.requested_strategy == request.strategy &&
      status_.strategy == request.strategy && !any_rolled_back && !request.dry_run) {
    report.changed = false;
    report.strategy = request.strategy;
    for (const auto& [id, m] : sites_) {
      if (m.site.state == SiteState::kApplied) ++report.applied_at_enable;
      if (m.armed) ++report.armed;
    }
    return report;
  }

  absl::StatusOr<GuestProfile> profile = StopAndProfile();
  std::optional<StoppedGuestScope> stopped;
  stopped.emplace(vm_);  // every way out lets the guest run again
  if (!profile.ok()) return profile.status();
  if (!blob_.installed()) {
    // A blob from an earlier session (tprd restarted, or detached and enabled again): reuse
    // it and its site table; never place a second one.
    absl::StatusOr<std::optional<ParsedBlob>> found =
        blob_.Find([this](const absl::Status& skipped) { NoteError(skipped); });
    if (!found.ok()) return found.status();
    if (found->has_value()) LoadInstalled(**found);
  }
  // The scan reads and decodes every kernel code page (100-200 ms on the test guest, inside the
  // stop until 2026-12-07). With a live reader it runs while the guest does: a candidate's bytes
  // are checked again in the stop before any patch (the transaction), and a page table changed
  // meanwhile only costs a candidate that fails that check. The guest is then stopped and
  // profiled afresh (its vCPUs have moved) for the work that needs it.
  const bool scan_live = CanReadLive();
  if (scan_live) TPRD_RETURN_IF_ERROR(ResumeGuest(*stopped));
  // The scan's memory map also places the blob: read while the guest runs (with a live reader),
  // not in the final pause. Running cannot change it (short of the guest reprogramming its
  // chipset's shadow RAM, which Windows does not do at run time), and the blob's writes are
  // read back anyway (measured: the HMP command took 2.5 ms, once 30 ms, of a 5-8 ms pause).
  std::vector<MemoryRegion> memory_map;
  absl::StatusOr<ScanResult> scan = ScanGuest(*profile, scan_live, &memory_map);
  if (!scan.ok()) return scan.status();
  MergeCandidates(*scan);
  if (request.dry_run) {
    for (const auto& [id, m] : sites_) {
      if (m.site.state != SiteState::kRolledBack) ++report.candidates;
    }
    if (!scan_live) TPRD_RETURN_IF_ERROR(ResumeGuest(*stopped));
    return report;
  }
  if (scan_live) {
    profile = StopAndProfile();
    stopped.emplace(vm_);
    if (!profile.ok()) return profile.status();
  }
  // Sites known to be code: proven by the learning window, applied before in this boot, or where
  // a stopped vCPU is about to execute. They are patched while the guest is stopped here.
  std::set<uint32_t> proven;
  {
    // Enable patches every patchable site, also those an earlier rollback restored: under mmio a
    // restored writer left unpatched and unarmed would leave the shadows stale. A restored site
    // was applied in this boot (the blob's site table goes with the guest's memory), so it ran:
    // it needs no proof again. Under `discovery = watchpoint` a reader would otherwise never be
    // proven again under mmio (its watchpoint sees writes only, and only a first enable learns).
    // The transaction still checks its original bytes before it writes.
    for (auto& [id, m] : sites_) {
      if (m.site.state == SiteState::kRolledBack) {
        m.site.state = SiteState::kCandidate;
        proven.insert(m.site.address);
      }
    }
  }
  for (const auto& [id, m] : sites_) {
    if (m.site.state != SiteState::kRolledBack) ++report.candidates;
  }

  // Only this enable's own learning window may finish after its resume: one left by an enable
  // that failed after its window would read the clock for the time since.
  finish_learning_clock_ = nullptr;
  if (!blob_.installed()) {
    absl::Status learned = Learn(request, *profile, proven, report.learning_hits);
    if (!learned.ok()) return learned;
  }
  request_ = request;
  // The journal's fsyncs wait until the guest runs again (PatchRecorder::DeferSync); on an
  // error path they come just before the resume.
  journal_.DeferSync(true);
  absl::Cleanup sync_journal = [this] { SyncJournal(); };
  const absl::Time paused = clock_.Now();
  absl::Time mark = paused;
  const auto part = [&](const char* name) {
    const absl::Time now = clock_.Now();
    absl::StrAppend(&report.pause_parts, report.pause_parts.empty() ? "" : " ", name,
                    "_us=", absl::ToInt64Microseconds(now - mark));
    mark = now;
  };
  if (!blob_.installed()) {
    absl::StatusOr<BlobPlacement> placement =
        blob_.Place(*profile, request.guard_period, &memory_map);
    if (!placement.ok()) return placement.status();
    part("place");
    TPRD_RETURN_IF_ERROR(blob_.InstallAt(*placement));
  } else {
    // Switching strategy: go through exact so no handler sees a half-made switch. The word
    // first: leaving cr8 gives each real TPR its low nibble back, which may let the guest run a
    // moment, still under the traps that keep it correct.
    TPRD_RETURN_IF_ERROR(WriteStrategy(Strategy::kExact));
    TPRD_RETURN_IF_ERROR(DisarmTraps());
  }
  part("install");
  // The operator asks for this strategy: an earlier guard rejection no longer holds.
  TPRD_RETURN_IF_ERROR(
      blob_.InitPerCpu(profile_, /*from_real_tpr=*/true, /*clear_guard_evidence=*/true));
  guard_rejected_mmio_ = false;
  part("per_cpu");
  TPRD_RETURN_IF_ERROR(PlanSites());
  for (const VcpuProfile& cpu : profile->vcpus) {
    if (std::optional<uint32_t> id = SiteAt(cpu.eip)) proven.insert(sites_[*id].site.address);
  }
  std::vector<uint32_t> ids;
  for (uint32_t address : proven) {
    if (std::optional<uint32_t> id = SiteAt(address)) ids.push_back(*id);
  }
  part("plan");
  if (request.strategy == Strategy::kMmio) TPRD_RETURN_IF_ERROR(EnsureTprAlias());
  part("alias");
  TPRD_RETURN_IF_ERROR(WriteStrategy(request.strategy));
  status_.requested_strategy = request.strategy;
  status_.guard_mismatches = 0;
  part("word");
  report.applied_at_enable = ApplyStopped(ids, nullptr);
  part("apply");
  traps_.set_discovery(request.discovery);
  traps_.OpenProvingWindow(request.proving_window);
  if (absl::Status s = traps_.Arm(sites_, status_.strategy, profile_, alias_.has_value());
      !s.ok()) {
    NoteError(s);
  }
  part("arm");
  report.pause = clock_.Now() - paused;
  report.stop = clock_.Now() - stopped_at_;
  for (const auto& [id, m] : sites_) {
    if (m.armed) ++report.armed;
  }
  TPRD_RETURN_IF_ERROR(ResumeGuest(*stopped));
  if (finish_learning_clock_) {
    finish_learning_clock_();
    finish_learning_clock_ = nullptr;
  }
  report.strategy = request.strategy;
  return report;
}

absl::StatusOr<RollbackReport> PatchManager::Rollback(const std::vector<uint32_t>& ids,
                                                      bool force) {
  for (uint32_t id : ids) {
    if (!sites_.count(id)) {
      return absl::NotFoundError(absl::StrCat("no site ", id, " in this domain; see tprctl sites"));
    }
  }
  const bool all = ids.empty();
  std::vector<Site> batch;
  for (const auto& [id, managed] : sites_) {
    if (!all && std::find(ids.begin(), ids.end(), id) == ids.end()) continue;
    if (managed.site.state == SiteState::kApplied || managed.site.state == SiteState::kPending ||
        (force && !managed.site.patched.empty() && managed.site.state != SiteState::kCandidate)) {
      batch.push_back(managed.site);
    }
  }
  RollbackReport report;
  if (!blob_.installed()) return report;
  TPRD_RETURN_IF_ERROR(StopGuest());
  StoppedGuestScope stopped(vm_);
  // A rolled-back writer would leave the shadow stale while other sites still read it; going
  // through exact keeps every remaining patched site correct.
  std::vector<ManagerEvent> ignored;
  bool writer = false;
  for (const Site& s : batch) writer |= FormWritesTpr(s.form);
  if (all || writer) TPRD_RETURN_IF_ERROR(WriteStrategy(Strategy::kExact));
  if (all) {
    (void)DisarmTraps();
  } else {
    for (const Site& s : batch) {
      ManagedSite& managed = sites_[s.id];
      if (managed.armed) traps_.RemoveBreakpoint(managed);
    }
  }
  GuestSiteTable guest_table(vm_, 0, blob_.addresses().va);
  BothRecorders recorder(guest_table, journal_);
  RollbackOptions options;
  options.stop = GuestStop::kStopAndResume;
  options.force = force;
  options.handler_code_start = blob_.addresses().code_start;
  options.handler_code_end = blob_.addresses().code_end;
  options.max_retries = 20;
  options.clock = &clock_;
  options.after_stop = [this] {
    std::vector<ManagerEvent> ignored_events;
    AfterStop(std::nullopt, ignored_events);
    StepAllOutOfHandlers();
  };
  // A CPU inside the handlers blocks every site. Waiting for it by letting the guest run and
  // stopping it again can fail every time under exact: a stop then mostly lands right after the
  // handler's own MMIO read (seen in a clean-clone run, 20 of 20 on 2 vCPUs). Stepped alone, it
  // leaves them within a few instructions.
  StepAllOutOfHandlers();
  // RollbackSites stops (already stopped: idempotent) and resumes once.
  stopped.Release();
  absl::StatusOr<TransactionReport> tx =
      RollbackSites(vm_, recorder, absl::MakeSpan(batch), options);
  if (!tx.ok()) return tx.status();
  if (!tx->resume_status.ok()) {
    NoteError(absl::Status(
        tx->resume_status.code(),
        absl::StrCat("the guest stays stopped after the rollback: ", tx->resume_status.message())));
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    ManagedSite& managed = sites_[batch[i].id];
    managed.site.state = batch[i].state;
    const SiteOutcome& outcome = tx->outcomes[i];
    if (outcome.kind == SiteOutcome::Kind::kRolledBack ||
        outcome.kind == SiteOutcome::Kind::kAlreadyOriginal) {
      report.rolled_back.push_back(batch[i].id);
      managed.site.state = SiteState::kRolledBack;
    } else {
      report.refused.emplace_back(batch[i].id, outcome.reason);
    }
  }
  if (all) status_.requested_strategy = Strategy::kExact;
  return report;
}

absl::Status PatchManager::Detach(DetachOptions options) {
  if (!blob_.installed()) return absl::OkStatus();
  // What goes wrong on the way out (a CPU whose real TPR could not get its shadow back) is noted
  // as everywhere, but this manager goes with the detach: it comes back as DATA_LOSS instead.
  status_.last_error.clear();
  TPRD_RETURN_IF_ERROR(StopGuest());
  StoppedGuestScope stopped(vm_);
  const bool leaving_cr8 = status_.strategy == Strategy::kCr8;
  absl::Status strategy = WriteStrategy(Strategy::kExact);
  absl::Status traps = DisarmTraps(/*step_pending_hits=*/!options.host_copies_state || leaving_cr8);
  absl::Status resumed = stopped.Resume();
  if (!strategy.ok()) return strategy;
  if (!traps.ok()) return traps;
  if (!resumed.ok() && !absl::IsFailedPrecondition(resumed)) return resumed;
  if (!status_.last_error.empty()) {
    return absl::DataLossError(absl::StrCat("left on exact, but: ", status_.last_error));
  }
  return absl::OkStatus();
}

std::vector<ManagedSite> PatchManager::Sites() const {
  std::vector<ManagedSite> out;
  for (const auto& [id, managed] : sites_) out.push_back(managed);
  return out;
}

}  // namespace tprd::engine

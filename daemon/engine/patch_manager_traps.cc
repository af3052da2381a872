// PatchManager at its traps: what it does when the guest stops at one, the end of the proving
// window, and what must happen before the TPR watchpoint goes. Which traps are armed, for how
// long and why is TrapSet's (trap_set.h). The rest of PatchManager is in patch_manager.cc.
#include <algorithm>
#include <array>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "daemon/engine/blob.h"
#include "daemon/engine/patch_manager.h"
#include "daemon/engine/status_macros.h"
#include "daemon/engine/trap_decoding.h"

namespace tprd::engine {

absl::Status PatchManager::EndProvingWindowIfDue(std::vector<ManagerEvent>& events) {
  if (!traps_.CloseProvingWindowIfDue()) return absl::OkStatus();
  std::vector<ManagedSite*> unwanted;
  for (auto& [id, managed] : sites_) {
    if (managed.armed && !traps_.WantsBreakpoint(managed)) {
      unwanted.push_back(&managed);
    }
  }
  if (unwanted.empty()) return absl::OkStatus();
  // Breakpoints can only be removed with the guest stopped: one short stop for all of them.
  TPRD_RETURN_IF_ERROR(StopGuest());
  StoppedGuestScope stopped(vm_);
  for (ManagedSite* managed : unwanted) {
    traps_.RemoveBreakpoint(*managed);
    managed->note = "not run within the proving window: a reader, correct unpatched";
  }
  ApplyCandidatesAtVcpus(events);  // a vCPU may stand at one right now
  TPRD_RETURN_IF_ERROR(ResumeGuest(stopped));
  events.push_back({ManagerEvent::Kind::kNotice, std::nullopt,
                    absl::StrCat("proving window over: ", unwanted.size(),
                                 " candidate(s) never ran; their breakpoints are removed")});
  return absl::OkStatus();
}

absl::Status PatchManager::DisarmTraps(bool step_pending_hits) {
  if (traps_.watch_armed() && step_pending_hits) {
    // A hit left pending would outlive the watchpoint (QEMU frees it and keeps the vCPU's
    // pointer): its late report stops the VM, even after tprd detached, and nobody resumes it
    // (seen: a 4-vCPU guest left paused after a full rollback). Stepped out first.
    std::vector<ManagerEvent> ignored;
    ConsumePendingHits(ignored, /*fix=*/traps_.WatchesAccesses());
  }
  return traps_.RemoveAll(sites_, profile_);
}

absl::Status PatchManager::SwitchToExact(const std::string& why,
                                         std::vector<ManagerEvent>& events) {
  if (leaving_cr8_) {
    // A stop handled while cr8 is being left: the leave ends on exact (or the operator's next
    // strategy) and removes or keeps the traps as its caller decides; a nested leave here would
    // change the word under it.
    events.push_back(
        {ManagerEvent::Kind::kNotice, std::nullopt, absl::StrCat("leaving cr8 already; ", why)});
    return absl::OkStatus();
  }
  TPRD_RETURN_IF_ERROR(WriteStrategy(Strategy::kExact));
  if (traps_.watch_armed() && profile_) {
    // None may outlive the watchpoint (DisarmTraps); cr8's are still fixed up.
    ConsumePendingHits(events, /*fix=*/traps_.WatchesAccesses());
    (void)traps_.RemoveWatchpoint(profile_->tpr_va);
  }
  events.push_back({ManagerEvent::Kind::kStrategyChanged, std::nullopt,
                    absl::StrCat("switched to exact: ", why)});
  return absl::OkStatus();
}

void PatchManager::ApplyCandidatesAtVcpus(std::vector<ManagerEvent>& events) {
  absl::StatusOr<int> count = vm_.VcpuCount();
  if (!count.ok()) return;
  std::vector<uint32_t> ids;
  for (int v = 0; v < *count; ++v) {
    absl::StatusOr<VcpuRegisters> regs = vm_.ReadRegisters(v);
    if (!regs.ok()) continue;
    std::optional<uint32_t> id = SiteAt(regs->eip);
    if (!id) continue;
    ManagedSite& managed = sites_[*id];
    if (managed.site.state != SiteState::kCandidate) continue;
    ++managed.hits;
    if (managed.armed) traps_.RemoveBreakpoint(managed);
    ids.push_back(*id);
  }
  ApplyStopped(ids, &events);
}

absl::Status PatchManager::HandleWatchpoint(int vcpu, uint32_t pc,
                                            std::vector<ManagerEvent>& events, bool reported,
                                            AccessSeen* seen) {
  if (!blob_.installed() || !profile_) return absl::OkStatus();
  // A CPU on the exact path inside the handlers: nothing to fix.
  if (blob_.addresses().InHandlerCode(pc)) return absl::OkStatus();
  if (reported) ++status_.unpatched_accesses_seen;
  absl::StatusOr<VcpuRegisters> regs = vm_.ReadRegisters(vcpu);
  if (!regs.ok()) return regs.status();
  // A stop delivered late (it raced with the removal of a watchpoint, and the guest ran on):
  // the vCPU is elsewhere now, and fixing registers up would corrupt them.
  if (regs->eip != pc) return absl::OkStatus();
  bool original_bytes = false;
  GuestByteReader reader = OriginalCodeReader(vcpu, &original_bytes);
  std::string why;
  std::optional<std::pair<uint32_t, Classification>> decoded =
      ResolveTrap(pc, reader, profile_->tpr_va, &why);
  if (!decoded) decoded = ResolveByAddress(pc, reader, profile_->tpr_va, *regs);
  if (!decoded) {
    if (reported) {
      // Only cr8 keeps the watchpoint: under mmio or exact this is a stop of the learning
      // window delivered late, with nothing to fix, so it is a notice, not the domain's error.
      events.push_back(
          {traps_.watch_armed() ? ManagerEvent::Kind::kWarning : ManagerEvent::Kind::kNotice,
           std::nullopt,
           absl::StrCat("TPR access before 0x", absl::Hex(pc), " could not be decoded: ", why,
                        traps_.watch_armed() ? "" : " (a late stop; nothing to fix)")});
    }
    return absl::OkStatus();
  }
  const uint32_t start = decoded->first;
  const Classification& c = decoded->second;
  const bool is_write = IsWriter(c, start, reader);
  if (seen) *seen = {true, is_write, original_bytes};
  // An unreported vCPU merely stands after a TPR access: it may have jumped there. Only a read
  // whose result still holds the real TPR (and so differs from the shadow) is proof enough.
  if (!reported && is_write) return absl::OkStatus();
  // Which per-CPU entry: the vCPU's KPCR processor number.
  uint8_t number = 0;
  for (const VcpuProfile& cpu : profile_->vcpus) {
    if (cpu.vcpu == vcpu) number = cpu.processor_number;
  }
  const uint32_t entry_va = blob_.addresses().PerCpuEntry(number);
  std::array<uint8_t, kPerCpuEntrySize> raw;
  TPRD_RETURN_IF_ERROR(vm_.ReadVirtual(0, entry_va, absl::MakeSpan(raw)));
  absl::StatusOr<PerCpuEntry> entry = DecodePerCpuEntry(raw);
  if (!entry.ok()) return entry.status();
  // The real TPR (an `info lapic` round trip): needed for a write, and as the proof for an
  // unreported vCPU.
  std::optional<uint8_t> tpr;
  if (is_write || !reported) {
    absl::StatusOr<uint8_t> real = vm_.ReadTpr(vcpu);
    if (!real.ok()) return real.status();
    tpr = *real;
  }
  if (!reported && *tpr == entry->shadow_tpr) return absl::OkStatus();  // nothing to correct

  if (is_write) {
    // The real TPR holds the written value: the shadow follows it. After a site that is patched
    // by now, the stop may be the patched call's return (its handler wrote CR8, which lost the
    // low nibble): then the real TPR is the shadow's high nibble, and the shadow stays.
    if (Cr8HandlerWrote(original_bytes, *tpr, entry->shadow_tpr)) return absl::OkStatus();
    entry->shadow_tpr = *tpr;
    TPRD_RETURN_IF_ERROR(blob_.WriteVerified(entry_va, EncodePerCpuEntry(*entry)));
  } else if (std::optional<Gpr> reg = FixableReadDestination(c, start, reader)) {
    // The read saw the real TPR, whose low nibble a CR8 write cleared: give it the shadow.
    if (!reported && regs->reg(*reg) != *tpr) return absl::OkStatus();
    TPRD_RETURN_IF_ERROR(
        vm_.WriteRegister(vcpu, static_cast<WritableRegister>(*reg), entry->shadow_tpr));
  } else if (c.form == Form::kPushMem) {
    const uint32_t esp = regs->reg(Gpr::kEsp);
    if (!reported) {
      uint8_t slot[4];
      TPRD_RETURN_IF_ERROR(vm_.ReadVirtual(vcpu, esp, absl::MakeSpan(slot)));
      uint32_t pushed;
      std::memcpy(&pushed, slot, 4);
      if (pushed != *tpr) return absl::OkStatus();
    }
    uint32_t value = entry->shadow_tpr;
    uint8_t bytes[4];
    std::memcpy(bytes, &value, 4);
    TPRD_RETURN_IF_ERROR(vm_.WriteVirtual(vcpu, esp, bytes));
  } else if (std::optional<uint32_t> eflags =
                 FixedEflags(c, start, reader, entry->shadow_tpr, profile_->tpr_va, *regs)) {
    // A cmp/test compared the real TPR, whose low nibble a CR8 write cleared: its flags become
    // what the shadow gives (its jcc/setcc has not run yet: the stop is right after it).
    if (!reported && FixedEflags(c, start, reader, *tpr, profile_->tpr_va, *regs) != regs->eflags) {
      return absl::OkStatus();
    }
    TPRD_RETURN_IF_ERROR(vm_.WriteRegister(vcpu, WritableRegister::kEflags, *eflags));
  } else if (!reported) {
    return absl::OkStatus();
  } else if (++unfixable_reads_ >= static_cast<uint64_t>(request_.unfixable_read_limit)) {
    return SwitchToExact(absl::StrCat("the unpatchable TPR access at 0x", absl::Hex(start), " (",
                                      c.detail, ") keeps running and cannot be fixed up under cr8"),
                         events);
  }
  if (!reported) ++status_.unreported_fixups;
  if (c.patchable) {
    if (std::optional<uint32_t> id = SiteAt(start)) {
      ++sites_[*id].hits;
      if (sites_[*id].site.state == SiteState::kCandidate && apply_at_stops_) {
        ApplyStopped({*id}, &events);
      }
    }
  }
  return absl::OkStatus();
}

bool PatchManager::Cr8HandlerWrote(bool at_applied_site, uint8_t real_tpr, uint8_t shadow) const {
  return at_applied_site && status_.strategy == Strategy::kCr8 && real_tpr == (shadow & 0xF0);
}

absl::Status PatchManager::HandleUnpatchedWrite(int vcpu, uint32_t pc,
                                                std::vector<ManagerEvent>& events) {
  if (!blob_.installed() || !profile_) return absl::OkStatus();
  if (blob_.addresses().InHandlerCode(pc)) return absl::OkStatus();
  ++status_.unpatched_accesses_seen;
  absl::StatusOr<VcpuRegisters> regs = vm_.ReadRegisters(vcpu);
  if (!regs.ok()) return regs.status();
  if (regs->eip == pc) {
    GuestByteReader reader = OriginalCodeReader(vcpu);
    std::string why;
    std::optional<std::pair<uint32_t, Classification>> decoded =
        ResolveTrap(pc, reader, profile_->tpr_va, &why);
    if (!decoded) decoded = ResolveByAddress(pc, reader, profile_->tpr_va, *regs);
    if (decoded) {
      if (std::optional<uint32_t> id = SiteAt(decoded->first)) {
        ManagedSite& managed = sites_[*id];
        ++managed.hits;
        if (managed.site.state == SiteState::kCandidate && !CannotPatch(managed) &&
            apply_at_stops_) {
          // A writer proven late (after the proving window): patched now, as at a breakpoint.
          ApplyStopped({*id}, &events);
          return absl::OkStatus();
        }
      }
    }
  }
  ++status_.unpatched_write_stops;
  const absl::Time now = clock_.Now();
  if (now - write_stop_window_start_ >= absl::Seconds(1)) {
    write_stop_window_start_ = now;
    write_stops_in_window_ = 0;
  }
  if (++write_stops_in_window_ > request_.unpatched_write_stops_per_second_limit) {
    return SwitchToExact(
        absl::StrCat("a TPR write tprd cannot patch (last before 0x", absl::Hex(pc),
                     ") runs more than ", request_.unpatched_write_stops_per_second_limit,
                     " times a second, and mmio stops the guest at each run"),
        events);
  }
  return absl::OkStatus();
}

void PatchManager::ResyncShadowsFromRealTpr() {
  if (!blob_.installed() || !profile_ || !traps_.WatchesWrites()) return;
  for (const VcpuProfile& cpu : profile_->vcpus) {
    const uint32_t va = blob_.addresses().PerCpuEntry(cpu.processor_number);
    std::array<uint8_t, kPerCpuEntrySize> raw;
    if (absl::Status s = vm_.ReadVirtual(0, va, absl::MakeSpan(raw)); !s.ok()) {
      NoteError(s);
      continue;
    }
    absl::StatusOr<PerCpuEntry> entry = DecodePerCpuEntry(raw);
    if (!entry.ok() || !entry->enabled) continue;
    absl::StatusOr<uint8_t> tpr = vm_.ReadTpr(cpu.vcpu);
    if (!tpr.ok()) {
      NoteError(tpr.status());
      continue;
    }
    if (*tpr == entry->shadow_tpr) continue;
    entry->shadow_tpr = *tpr;
    if (absl::Status s = blob_.WriteVerified(va, EncodePerCpuEntry(*entry)); !s.ok()) {
      NoteError(s);
      continue;
    }
    ++status_.shadow_resyncs;
  }
}

void PatchManager::AfterStop(std::optional<int> reported_vcpu, std::vector<ManagerEvent>& events) {
  FixUpUnreportedAccesses(reported_vcpu, events);
  ResyncShadowsFromRealTpr();
}

void PatchManager::FixUpUnreportedAccesses(std::optional<int> reported_vcpu,
                                           std::vector<ManagerEvent>& events, bool learning) {
  // QEMU reports one vCPU per stop: another that hit the TPR watchpoint at the same moment is
  // stopped just after its access, unreported, with its hit pending.
  if (!traps_.watch_armed() && !learning) return;
  if (!profile_) return;
  // cr8's access watchpoint, also while leaving cr8 (the word already exact): a read of a real
  // TPR that lacks its low nibble is fixed up until the watchpoint goes.
  const bool cr8 = !learning && traps_.WatchesAccesses();
  absl::StatusOr<int> count = vm_.VcpuCount();
  if (!count.ok()) return;
  for (int v = 0; v < *count; ++v) {
    if (reported_vcpu == v) continue;
    absl::StatusOr<VcpuRegisters> regs = vm_.ReadRegisters(v);
    if (!regs.ok()) continue;
    AccessSeen seen;
    if (cr8) {
      if (absl::Status s = HandleWatchpoint(v, regs->eip, events, /*reported=*/false, &seen);
          !s.ok()) {
        NoteError(s);
        continue;
      }
    } else {
      GuestByteReader reader = OriginalCodeReader(v);
      std::string why;
      std::optional<std::pair<uint32_t, Classification>> decoded =
          ResolveTrap(regs->eip, reader, profile_->tpr_va, &why);
      if (!decoded) decoded = ResolveByAddress(regs->eip, reader, profile_->tpr_va, *regs);
      if (decoded) seen = {true, IsWriter(decoded->second, decoded->first, reader)};
    }
    // Also on one vCPU: a stop of tprd's own that raced with a hit leaves that hit pending
    // (QEMU reports no watchpoint for a VM that was already stopping).
    if (seen.decoded) StepPastUnreportedHit(v, seen, events, cr8);
  }
}

void PatchManager::ConsumePendingHits(std::vector<ManagerEvent>& events, bool fix) {
  absl::StatusOr<int> count = vm_.VcpuCount();
  if (!count.ok()) return;
  for (int v = 0; v < *count; ++v) {
    StepPastUnreportedHit(v, AccessSeen{}, events, fix, /*halted_too=*/true);
  }
}

PatchManager::HltAround PatchManager::LookForHlt(int vcpu, uint32_t eip) {
  uint8_t around[2] = {};
  HltAround out;
  out.readable = vm_.ReadVirtual(vcpu, eip - 1, absl::MakeSpan(around)).ok();
  out.halted = out.readable && around[0] == 0xF4;
  out.about_to_halt = out.readable && around[1] == 0xF4;
  return out;
}

void PatchManager::StepPastUnreportedHit(int vcpu, const AccessSeen& before,
                                         std::vector<ManagerEvent>& events, bool fix,
                                         bool halted_too) {
  absl::StatusOr<VcpuRegisters> regs = vm_.ReadRegisters(vcpu);
  if (!regs.ok()) return;
  const HltAround hlt = LookForHlt(vcpu, regs->eip);
  if (!hlt.readable) return;
  const bool asleep = hlt.halted || hlt.about_to_halt;
  // A halted CPU's step ends only when an interrupt becomes pending: QEMU then wakes it, masks
  // the interrupt for the step and runs the one instruction after the hlt (the interrupt is
  // taken when the guest runs again). A CPU that never gets one (cli; hlt, or one whose only
  // interrupts are the stopped CPUs' IPIs) would hold the step until its timeout, every other
  // CPU stopped meanwhile: so only where a hit left pending would outlive this moment.
  if (asleep && !halted_too) return;
  // A step that has to be interrupted is reported as a pause, which leaves the hit pending (and
  // an unreported write's shadow stale). One instruction takes microseconds, but on a starved
  // host the vCPU's thread may wait for a CPU far longer: the bound is generous (the guest's
  // other vCPUs wait meanwhile, which they do for any stop).
  const absl::Time started = clock_.Now();
  absl::StatusOr<StepResult> step = vm_.StepVcpu(vcpu, asleep ? kHaltedStepTimeout : kStepTimeout);
  const absl::Duration took = clock_.Now() - started;
  if (!step.ok()) {
    // No stepping on this backend, or a stop is already queued (it is handled next): nothing
    // worse than before.
    if (!absl::IsUnimplemented(step.status()) && !absl::IsFailedPrecondition(step.status())) {
      NoteError(step.status());
    }
    return;
  }
  ++status_.unreported_steps;
  if (asleep && !step->completed) {
    events.push_back({ManagerEvent::Kind::kNotice, std::nullopt,
                      absl::StrCat("vCPU ", vcpu, " stayed halted through a ",
                                   absl::FormatDuration(kHaltedStepTimeout),
                                   " step (no interrupt woke it): a watchpoint hit it may hold "
                                   "stays pending")});
  } else if (!asleep && (!step->completed || took > absl::Milliseconds(100))) {
    // Said: a step this slow means a starved host, and one that did not end leaves a hit pending.
    events.push_back(
        {step->completed ? ManagerEvent::Kind::kNotice : ManagerEvent::Kind::kWarning, std::nullopt,
         absl::StrCat("vCPU ", vcpu, "'s step ", step->completed ? "took " : "did not end within ",
                      absl::FormatDuration(took),
                      step->completed ? "" : ": a watchpoint hit it holds stays pending")});
  }
  if (!step->watchpoint_reported || !fix) return;  // merely jumped there, or nothing to fix
  // QEMU reported a hit: the access before the step ran (or the stepped instruction is one).
  // A write before the step ran first: the real TPR holds it, and the shadow follows, before the
  // stepped instruction is looked at. (Until 2026-12-07 the stepped instruction came first and,
  // when it was a read, its fix-up gave it the stale shadow and the write's resync was skipped:
  // KfLowerIrql's unpatched `mov [tpr],ecx; mov eax,[tpr]` on a vCPU whose hit another vCPU's
  // stop had left unreported, then a stale shadow read by the next patched read; seen on a
  // starved host, design.md.)
  if (before.is_write && blob_.installed() && profile_) {
    uint8_t number = 0;
    for (const VcpuProfile& cpu : profile_->vcpus) {
      if (cpu.vcpu == vcpu) number = cpu.processor_number;
    }
    std::optional<PerCpuEntry> entry = blob_.ReadPerCpuEntry(number);
    absl::StatusOr<uint8_t> tpr = vm_.ReadTpr(vcpu);
    // The hit the step reported may be an older one, left pending since an access elsewhere
    // (QEMU keeps it until the vCPU is stepped or stops): standing after an applied writer
    // proves only that the handler wrote (seen on 2 vCPUs: the shadow 0x41 became the CR8
    // result 0x40).
    if (entry && tpr.ok() && entry->shadow_tpr != *tpr &&
        !Cr8HandlerWrote(before.at_applied_site, *tpr, entry->shadow_tpr)) {
      entry->shadow_tpr = *tpr;
      if (absl::Status s =
              blob_.WriteVerified(blob_.addresses().PerCpuEntry(number), EncodePerCpuEntry(*entry));
          !s.ok()) {
        NoteError(s);
      }
      ++status_.unreported_fixups;
    }
  }
  if (step->completed && profile_) {
    // The stepped instruction may itself have been a TPR access (it ran; the hit may be its
    // own): handled as a reported hit. Anything else is no access, and no warning.
    absl::StatusOr<VcpuRegisters> now = vm_.ReadRegisters(vcpu);
    GuestByteReader reader = OriginalCodeReader(vcpu);
    std::string why;
    const bool access = now.ok() && (ResolveTrap(step->pc, reader, profile_->tpr_va, &why) ||
                                     ResolveByAddress(step->pc, reader, profile_->tpr_va, *now));
    if (access) {
      if (absl::Status s = HandleWatchpoint(vcpu, step->pc, events, /*reported=*/true); !s.ok()) {
        NoteError(s);
      }
    }
  }
}

absl::Status PatchManager::HandleStopped(const StopEvent& event,
                                         std::vector<ManagerEvent>& events) {
  absl::Status handled = absl::OkStatus();
  if (event.kind == StopEvent::Kind::kWatchpoint) {
    handled = traps_.WatchesWrites() ? HandleUnpatchedWrite(event.vcpu, event.pc, events)
                                     : HandleWatchpoint(event.vcpu, event.pc, events);
  }
  if (!handled.ok()) return handled;
  AfterStop(
      event.kind == StopEvent::Kind::kWatchpoint ? std::optional<int>(event.vcpu) : std::nullopt,
      events);
  if (apply_at_stops_) ApplyCandidatesAtVcpus(events);
  return absl::OkStatus();
}

absl::Status PatchManager::HandleStop(const StopEvent& event, std::vector<ManagerEvent>& events) {
  ++status_.traps_handled;
  switch (event.kind) {
    case StopEvent::Kind::kBreakpoint:
    case StopEvent::Kind::kInterrupted:
    case StopEvent::Kind::kWatchpoint:
      break;
    case StopEvent::Kind::kPausedByHost:
      events.push_back({ManagerEvent::Kind::kHostPaused, std::nullopt,
                        "the host paused the domain; tprd leaves it paused"});
      return absl::OkStatus();
    case StopEvent::Kind::kGone:
      return absl::UnavailableError("the domain is gone");
  }
  // Resume even after a failed fix-up (or a failed stop): a guest left stopped is worse than one
  // unfixed read.
  StoppedGuestScope stopped(vm_);
  // A stop may be delivered after the guest ran on (it raced with a trap's removal): make sure
  // every vCPU is stopped before looking at any of them.
  absl::Status handled = vm_.Stop();
  journal_.DeferSync(true);  // a site applied at this stop is made durable after the resume
  if (handled.ok()) handled = HandleStopped(event, events);
  absl::Status resumed = ResumeGuest(stopped);
  SyncJournal();
  if (handled.ok() && absl::IsFailedPrecondition(resumed)) {
    // The host paused the domain while tprd held it (a save's or a migration's pause, an
    // operator's suspend): the host's pause, for the owner to look at, not tprd's failure (a
    // HAL-guest save: it was reported as an error that outlived the restore).
    events.push_back(
        {ManagerEvent::Kind::kHostPaused, std::nullopt, std::string(resumed.message())});
    return absl::OkStatus();
  }
  return handled.ok() ? resumed : handled;
}

absl::StatusOr<std::vector<ManagerEvent>> PatchManager::Poll(absl::Duration timeout) {
  std::vector<ManagerEvent> events;
  WatchGuestWord(events);
  if (absl::Status s = EndProvingWindowIfDue(events); !s.ok()) {
    NoteError(s);
    if (absl::IsUnavailable(s) || absl::IsNotFound(s)) return s;
    events.push_back({ManagerEvent::Kind::kWarning, std::nullopt, std::string(s.message())});
  }
  if (std::optional<absl::Time> deadline = traps_.proving_deadline()) {
    timeout = std::min(timeout, *deadline - clock_.Now());
  }
  absl::StatusOr<std::optional<StopEvent>> stop =
      vm_.WaitForStop(std::max(timeout, absl::ZeroDuration()));
  if (!stop.ok()) return stop.status();
  if (!stop->has_value()) return events;
  if (absl::Status s = HandleStop(**stop, events); !s.ok()) {
    NoteError(s);
    if (absl::IsUnavailable(s) || absl::IsNotFound(s)) return s;
    events.push_back({ManagerEvent::Kind::kWarning, std::nullopt, std::string(s.message())});
  }
  return events;
}

}  // namespace tprd::engine

// PatchManager's unreported hits: a vCPU stopped just after a TPR access QEMU did not report
// (another vCPU's hit was, or a stop of tprd's own raced with it) is stepped past it, and on cr8
// a write it proves resyncs the shadow. The rest of PatchManager is in patch_manager.cc.
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "daemon/engine/blob.h"
#include "daemon/engine/patch_manager.h"
#include "daemon/engine/trap_decoding.h"

namespace tprd::engine {

void PatchManager::FixUpUnreportedAccesses(std::optional<int> reported_vcpu,
                                           std::vector<ManagerEvent>& events, bool learning) {
  // QEMU reports one vCPU per stop: another that hit the TPR watchpoint at the same moment is
  // stopped just after its access, unreported, with its hit pending.
  if (!tpr_watch_armed_ && !learning) return;
  if (!profile_) return;
  // cr8's access watchpoint, also while leaving cr8 (the word already exact): a read of a real
  // TPR that lacks its low nibble is fixed up until the watchpoint goes.
  const bool cr8 = !learning && FixesAccesses();
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
  for (int v = 0; v < *count; ++v) StepPastUnreportedHit(v, AccessSeen{}, events, fix);
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
                                         std::vector<ManagerEvent>& events, bool fix) {
  absl::StatusOr<VcpuRegisters> regs = vm_.ReadRegisters(vcpu);
  if (!regs.ok()) return;
  // A step over hlt never ends, nor does a step of a CPU halted already: leave them alone.
  const HltAround hlt = LookForHlt(vcpu, regs->eip);
  if (!hlt.readable || hlt.halted || hlt.about_to_halt) return;
  // A step that has to be interrupted is reported as a pause, which leaves the hit pending; one
  // instruction takes far less than this even on a loaded host, and the guest waits meanwhile.
  absl::StatusOr<StepResult> step = vm_.StepVcpu(vcpu, absl::Milliseconds(250));
  if (!step.ok()) {
    // No stepping on this backend, or a stop is already queued (it is handled next): nothing
    // worse than before.
    if (!absl::IsUnimplemented(step.status()) && !absl::IsFailedPrecondition(step.status())) {
      NoteError(step.status());
    }
    return;
  }
  ++status_.unreported_steps;
  if (!step->watchpoint_reported || !fix) return;  // merely jumped there, or nothing to fix
  // QEMU reported a hit: the access before the step ran (or the stepped instruction is one).
  AccessSeen after;
  if (step->completed && profile_) {
    // The stepped instruction may itself have been a TPR access (then the hit is its own, and
    // it ran): handled as a reported hit. Anything else is no access, and no warning.
    absl::StatusOr<VcpuRegisters> now = vm_.ReadRegisters(vcpu);
    GuestByteReader reader = OriginalCodeReader(vcpu);
    std::string why;
    const bool access = now.ok() && (ResolveTrap(step->pc, reader, profile_->tpr_va, &why) ||
                                     ResolveByAddress(step->pc, reader, profile_->tpr_va, *now));
    if (access) {
      if (absl::Status s = HandleWatchpoint(vcpu, step->pc, events, /*reported=*/true, &after);
          !s.ok()) {
        NoteError(s);
      }
    }
  }
  if (after.decoded || !before.is_write || !installed_ || !profile_) return;
  // The write before the step ran: the real TPR holds it, and the shadow follows.
  uint8_t number = 0;
  for (const VcpuProfile& cpu : profile_->vcpus) {
    if (cpu.vcpu == vcpu) number = cpu.processor_number;
  }
  std::optional<PerCpuEntry> entry = ReadPerCpuEntry(number);
  absl::StatusOr<uint8_t> tpr = vm_.ReadTpr(vcpu);
  if (!entry || !tpr.ok() || entry->shadow_tpr == *tpr) return;
  // The hit the step reported may be an older one, left pending since an access elsewhere
  // (QEMU keeps it until the vCPU is stepped or stops): standing after an applied writer proves
  // only that the handler wrote (seen on 2 vCPUs: the shadow 0x41 became the CR8 result 0x40).
  if (Cr8HandlerWrote(before.at_applied_site, *tpr, entry->shadow_tpr)) return;
  entry->shadow_tpr = *tpr;
  if (absl::Status s =
          WriteVerified(installed_->addresses.PerCpuEntry(number), EncodePerCpuEntry(*entry));
      !s.ok()) {
    NoteError(s);
  }
  ++status_.unreported_fixups;
}

}  // namespace tprd::engine

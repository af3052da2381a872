// PatchManager leaving cr8 (a rollback of every site, a strategy switch, a detach): a CR8 write
// clears the real TPR's low nibble, so every CPU's real TPR must get its shadow back before an
// unpatched or exact read can see it. docs/design.md "Soundness of each strategy" has the
// argument; the rest of PatchManager is in patch_manager.cc and patch_manager_traps.cc.
#include <algorithm>
#include <array>
#include <cstring>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "daemon/engine/blob.h"
#include "daemon/engine/page_walker.h"
#include "daemon/engine/patch_manager.h"
#include "daemon/engine/status_macros.h"

namespace tprd::engine {
namespace {

constexpr uint32_t kEflagsIf = 1u << 9, kEflagsTf = 1u << 8, kEflagsVm = 1u << 17;
// The longest path through the handlers (get_tpr_stack into tpr_read_slow, or set_tpr into
// tpr_write_core) is about 30 instructions.
constexpr int kMaxHandlerSteps = 64;
// A halted CPU cannot be stepped (the poke would never run). It runs alone, the others stopped,
// until an interrupt wakes it and it comes back to where it halted: its own timer ends a hlt
// within a tick (XP's clock: 10-15.6 ms; the HAL guest's: at most 4 ms).
constexpr absl::Duration kWakeAloneTimeout = absl::Milliseconds(50);
// Rounds of looking at every CPU, and the wall time they may take in all: the guest is stopped
// (but for the one CPU woken) through most of it.
constexpr int kHaltedAttempts = 20;
constexpr absl::Duration kLeaveBudget = absl::Seconds(1);

}  // namespace

absl::Status PatchManager::WriteStrategy(Strategy strategy) {
  if (!blob_.installed()) return absl::FailedPreconditionError("no blob installed");
  const bool leaving_cr8 = status_.strategy == Strategy::kCr8 && strategy != Strategy::kCr8;
  if (leaving_cr8) PrepareToLeaveCr8();
  if (absl::Status s = blob_.WriteStrategyWord(strategy); !s.ok()) {
    woken_vcpus_.clear();
    return s;
  }
  status_.strategy = strategy;
  if (leaving_cr8 && profile_) {
    for (const VcpuProfile& cpu : profile_->vcpus) PokeRealTpr(cpu);
  }
  woken_vcpus_.clear();  // the guest runs as a whole next
  return absl::OkStatus();
}

void PatchManager::PrepareToLeaveCr8() {
  if (!blob_.installed() || !profile_) return;
  leaving_cr8_ = true;
  woken_vcpus_.clear();
  wake_notes_.clear();
  absl::Cleanup done = [this] { leaving_cr8_ = false; };
  const absl::Time deadline = clock_.Now() + kLeaveBudget;
  for (int attempt = 0;; ++attempt) {
    std::vector<int> halted;
    for (const VcpuProfile& cpu : profile_->vcpus) {
      StepOutOfHandlers(cpu.vcpu);
      if (!woken_vcpus_.count(cpu.vcpu) && HaltedWithLostNibble(cpu)) halted.push_back(cpu.vcpu);
    }
    if (halted.empty() || attempt + 1 >= kHaltedAttempts || clock_.Now() >= deadline) return;
    // Each halted CPU runs alone until it wakes; the others stay stopped, so once every CPU is
    // awake they all are at once, and stay so until the pokes.
    if (request_.wake_halted_cpus_alone) {
      bool all_moved = true;
      for (int vcpu : halted) {
        const WakeResult woke = WakeAlone(vcpu);
        if (woke == WakeResult::kGiveUp) return;
        all_moved &= woke != WakeResult::kStillHalted;
      }
      if (all_moved) continue;
    }
    // One stayed halted (it may wait for another CPU's IPI, or the backend cannot run one CPU
    // alone): the whole guest runs a moment under cr8, still correct there, and is looked at
    // again. (No StoppedGuestScope: the guest is meant to run here; each caller's scope holds
    // the stop this loop ends with.)
    woken_vcpus_.clear();
    if (!vm_.Resume().ok()) return;  // paused by the host meanwhile: left as it is
    clock_.SleepFor(
        std::min(absl::Milliseconds(1) * (1 << std::min(attempt, 5)), absl::Milliseconds(20)));
    if (absl::Status s = StopGuest(); !s.ok()) {
      NoteError(s);
      return;
    }
  }
}

PatchManager::WakeResult PatchManager::WakeAlone(int vcpu) {
  std::string& note = wake_notes_[vcpu];  // what the last try saw, for the error if it stays
  absl::StatusOr<VcpuRegisters> regs = vm_.ReadRegisters(vcpu);
  if (!regs.ok()) {
    note = std::string(regs.status().message());
    return WakeResult::kStillHalted;
  }
  const uint32_t resume_at = regs->eip;
  // The instruction after its hlt: an interrupt's handler returns there. A breakpoint tprd keeps
  // there anyway (an unproven site) stops it as well, and stays.
  const bool own_breakpoint = !traps_.HasBreakpointAt(resume_at);
  if (own_breakpoint) {
    if (absl::Status s = vm_.SetBreakpoint(resume_at); !s.ok()) {
      note = absl::StrCat("no breakpoint: ", s.message());
      return WakeResult::kStillHalted;
    }
  }
  absl::StatusOr<StopEvent> stop = vm_.RunVcpuAlone(vcpu, kWakeAloneTimeout);
  if (own_breakpoint && (stop.ok() || !absl::IsUnavailable(stop.status()))) {
    NoteError(vm_.RemoveBreakpoint(resume_at));
  }
  if (!stop.ok()) {
    note = std::string(stop.status().message());
    if (absl::IsUnimplemented(stop.status())) return WakeResult::kStillHalted;
    NoteError(stop.status());
    return absl::IsUnavailable(stop.status()) ? WakeResult::kGiveUp : WakeResult::kStillHalted;
  }
  switch (stop->kind) {
    case StopEvent::Kind::kPausedByHost:
    case StopEvent::Kind::kGone:
      note = "the host paused the domain, or it is gone";
      return WakeResult::kGiveUp;
    case StopEvent::Kind::kWatchpoint: {
      // An access its interrupt handler made without the handlers: fixed up as at any stop, and
      // no site is patched behind the caller's back.
      note = absl::StrCat("stopped by a TPR access before 0x", absl::Hex(stop->pc));
      std::vector<ManagerEvent> ignored;
      ++status_.traps_handled;
      apply_at_stops_ = false;
      NoteError(HandleStopped(*stop, ignored));
      apply_at_stops_ = true;
      return WakeResult::kMoved;
    }
    case StopEvent::Kind::kBreakpoint:
      if (stop->vcpu == vcpu && stop->pc == resume_at) {
        // Awake, back where it halted: the byte before is still the hlt, but it ran.
        woken_vcpus_.insert(vcpu);
        note = "woken";
        return WakeResult::kWoken;
      }
      note =
          absl::StrCat("vCPU ", stop->vcpu, " stopped at a breakpoint at 0x", absl::Hex(stop->pc));
      return WakeResult::kMoved;
    case StopEvent::Kind::kInterrupted:
      break;
  }
  absl::StatusOr<VcpuRegisters> now = vm_.ReadRegisters(vcpu);
  const bool moved = now.ok() && now->eip != resume_at;
  note = absl::StrCat("not woken within ", absl::FormatDuration(kWakeAloneTimeout),
                      moved ? " (it ran)" : "");
  return moved ? WakeResult::kMoved : WakeResult::kStillHalted;
}

void PatchManager::StepAllOutOfHandlers() {
  if (!profile_) return;
  for (const VcpuProfile& cpu : profile_->vcpus) StepOutOfHandlers(cpu.vcpu, /*note_errors=*/false);
}

void PatchManager::StepOutOfHandlers(int vcpu, bool note_errors) {
  // Under the cr8 word a CPU inside the handlers is on the cr8 path (or before the word's
  // check): stepped alone, it finishes its CR8 write and its shadow store before the word
  // changes. Left to run after the change, its CR8 write would undo the poke, or its read would
  // take the exact path and read a real TPR that still lacks its low nibble.
  for (int step = 0; step < kMaxHandlerSteps; ++step) {
    absl::StatusOr<VcpuRegisters> regs = vm_.ReadRegisters(vcpu);
    if (!regs.ok() || !blob_.addresses().InHandlerCode(regs->eip)) return;
    absl::StatusOr<StepResult> stepped = vm_.StepVcpu(vcpu, absl::Milliseconds(250));
    if (!stepped.ok()) {
      if (note_errors && !absl::IsUnimplemented(stepped.status())) NoteError(stepped.status());
      return;
    }
    if (!stepped->completed) return;
  }
}

bool PatchManager::HaltedWithLostNibble(const VcpuProfile& cpu) {
  absl::StatusOr<VcpuRegisters> regs = vm_.ReadRegisters(cpu.vcpu);
  if (!regs.ok() || !LookForHlt(cpu.vcpu, regs->eip).halted) return false;
  std::optional<PerCpuEntry> entry = blob_.ReadPerCpuEntry(cpu.processor_number);
  absl::StatusOr<uint8_t> real = vm_.ReadTpr(cpu.vcpu);
  return entry && entry->enabled && real.ok() && *real != entry->shadow_tpr;
}

void PatchManager::PokeRealTpr(const VcpuProfile& cpu) {
  std::optional<PerCpuEntry> entry = blob_.ReadPerCpuEntry(cpu.processor_number);
  absl::StatusOr<uint8_t> real = vm_.ReadTpr(cpu.vcpu);
  if (!entry || !entry->enabled || !real.ok() || *real == entry->shadow_tpr) return;
  absl::StatusOr<VcpuRegisters> regs = vm_.ReadRegisters(cpu.vcpu);
  if (!regs.ok()) return;
  auto skip = [&](const std::string& why) {
    NoteError(absl::FailedPreconditionError(
        absl::StrCat("vCPU ", cpu.vcpu, "'s TPR reads 0x", absl::Hex(*real), " instead of 0x",
                     absl::Hex(entry->shadow_tpr), " until its next TPR write: ", why)));
  };
  if ((regs->cs & 3) != 0 || (regs->eflags & kEflagsVm)) return skip("it runs user code");
  if (blob_.addresses().InHandlerCode(regs->eip)) {
    return skip("it stayed inside tprd's handlers");
  }
  if (!woken_vcpus_.count(cpu.vcpu) && LookForHlt(cpu.vcpu, regs->eip).halted) {
    std::string why = "it stayed halted";
    if (auto note = wake_notes_.find(cpu.vcpu); note != wake_notes_.end()) {
      absl::StrAppend(&why, " (run alone: ", note->second, ")");
    }
    return skip(why);
  }
  GuestVmPhysicalReader memory(vm_);
  const PagingRegisters paging = PagingRegisters::From(*regs);
  absl::StatusOr<Translation> code = TranslateVirtual(memory, paging, blob_.addresses().tpr_poke);
  absl::StatusOr<Translation> tpr = TranslateVirtual(memory, paging, profile_->tpr_va);
  if (!code.ok() || !code->present() || !tpr.ok() || !tpr->present() || !tpr->writable) {
    return skip("its page tables do not map the handlers and the TPR");
  }
  // The one instruction `mov [tpr], eax` with eax = the shadow and interrupts off.
  const VcpuRegisters saved = *regs;
  absl::Status s = vm_.WriteRegister(cpu.vcpu, WritableRegister::kEax, entry->shadow_tpr);
  if (s.ok()) {
    s = vm_.WriteRegister(cpu.vcpu, WritableRegister::kEflags,
                          saved.eflags & ~(kEflagsIf | kEflagsTf));
  }
  if (s.ok()) s = vm_.WriteRegister(cpu.vcpu, WritableRegister::kEip, blob_.addresses().tpr_poke);
  absl::StatusOr<StepResult> step =
      s.ok() ? absl::StatusOr<StepResult>(absl::InternalError("not stepped")) : s;
  // A vCPU with a debug stop QEMU has not delivered yet (an access it finished just as another
  // vCPU's stop stopped it) takes it at its next run, before it executes anything: the step
  // then "completes" still at the poke. Step again. (Seen in the 4-vCPU HAL e2e about once in
  // ten rollbacks; most were the interrupt a stepped watchpoint hit left pending, which the
  // QEMU backend now takes at that step, docs/design.md.)
  for (int attempt = 0; s.ok() && attempt < 3; ++attempt) {
    step = vm_.StepVcpu(cpu.vcpu, absl::Milliseconds(200));
    if (!step.ok() || !step->completed || step->pc != blob_.addresses().tpr_poke) break;
  }
  // Whatever happened, the vCPU gets its own state back (every register the step could have
  // changed, should it have run further than the one instruction).
  absl::Status restored = vm_.WriteRegister(cpu.vcpu, WritableRegister::kEip, saved.eip);
  for (int r = 0; r < kGprCount && restored.ok(); ++r) {
    restored = vm_.WriteRegister(cpu.vcpu, static_cast<WritableRegister>(r), saved.gpr[r]);
  }
  if (restored.ok())
    restored = vm_.WriteRegister(cpu.vcpu, WritableRegister::kEflags, saved.eflags);
  NoteError(restored);
  if (step.ok() && step->completed && step->pc != blob_.addresses().tpr_poke + 5) {
    NoteError(absl::InternalError(
        absl::StrCat("vCPU ", cpu.vcpu, ": the step through the TPR poke ended at 0x",
                     absl::Hex(step->pc), ", not after the one instruction")));
  }
  if (!step.ok()) return skip(std::string(step.status().message()));
  absl::StatusOr<uint8_t> now = vm_.ReadTpr(cpu.vcpu);
  if (!step->completed || !now.ok() || *now != entry->shadow_tpr) {
    return skip(absl::StrCat("the step to set it did not ", step->completed ? "set it" : "complete",
                             " (it stopped at 0x", absl::Hex(step->pc), "; the TPR then read ",
                             now.ok() ? absl::StrCat("0x", absl::Hex(*now)) : "nothing", ")"));
  }
  ++status_.real_tpr_restores;
}

}  // namespace tprd::engine

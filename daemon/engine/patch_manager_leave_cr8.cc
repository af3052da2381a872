// PatchManager leaving cr8 (a rollback of every site, a strategy switch, a detach): a CR8 write
// clears the real TPR's low nibble, so every CPU's real TPR must get its shadow back before an
// unpatched or exact read can see it. docs/design.md "Soundness of each strategy" has the
// argument; the rest of PatchManager is in patch_manager.cc and patch_manager_traps.cc.
#include <algorithm>
#include <array>
#include <cstring>
#include <string>

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
// A halted CPU cannot be stepped (the poke would never run); the guest runs on under cr8, still
// correct, until it wakes. A timer interrupt wakes it within a tick.
constexpr int kHaltedAttempts = 20;

}  // namespace

bool PatchManager::FixesAccesses() const {
  return tpr_watch_armed_ && tpr_watch_kind_ == WatchKind::kAccess;
}

absl::Status PatchManager::WriteStrategy(Strategy strategy) {
  if (!installed_) return absl::FailedPreconditionError("no blob installed");
  const bool leaving_cr8 = status_.strategy == Strategy::kCr8 && strategy != Strategy::kCr8;
  if (leaving_cr8) PrepareToLeaveCr8();
  uint32_t word = static_cast<uint32_t>(strategy);
  uint8_t bytes[4];
  std::memcpy(bytes, &word, 4);
  TPRD_RETURN_IF_ERROR(WriteVerified(installed_->addresses.strategy_word, bytes));
  status_.strategy = strategy;
  if (leaving_cr8 && profile_) {
    for (const VcpuProfile& cpu : profile_->vcpus) PokeRealTpr(cpu);
  }
  return absl::OkStatus();
}

void PatchManager::PrepareToLeaveCr8() {
  if (!installed_ || !profile_) return;
  leaving_cr8_ = true;
  absl::Cleanup done = [this] { leaving_cr8_ = false; };
  for (int attempt = 0;; ++attempt) {
    bool halted_behind = false;
    for (const VcpuProfile& cpu : profile_->vcpus) {
      StepOutOfHandlers(cpu.vcpu);
      halted_behind |= HaltedWithLostNibble(cpu);
    }
    if (!halted_behind || attempt + 1 >= kHaltedAttempts) return;
    // Still cr8 (word and watchpoint), so the guest stays correct while it runs a moment.
    if (!vm_.Resume().ok()) return;  // paused by the host meanwhile: left as it is
    clock_.SleepFor(
        std::min(absl::Milliseconds(1) * (1 << std::min(attempt, 5)), absl::Milliseconds(20)));
    if (absl::Status s = StopGuest(); !s.ok()) {
      NoteError(s);
      return;
    }
  }
}

void PatchManager::StepOutOfHandlers(int vcpu) {
  // Under the cr8 word a CPU inside the handlers is on the cr8 path (or before the word's
  // check): stepped alone, it finishes its CR8 write and its shadow store before the word
  // changes. Left to run after the change, its CR8 write would undo the poke, or its read would
  // take the exact path and read a real TPR that still lacks its low nibble.
  for (int step = 0; step < kMaxHandlerSteps; ++step) {
    absl::StatusOr<VcpuRegisters> regs = vm_.ReadRegisters(vcpu);
    if (!regs.ok() || !installed_->addresses.InHandlerCode(regs->eip)) return;
    absl::StatusOr<StepResult> stepped = vm_.StepVcpu(vcpu, absl::Milliseconds(250));
    if (!stepped.ok()) {
      if (!absl::IsUnimplemented(stepped.status())) NoteError(stepped.status());
      return;
    }
    if (!stepped->completed) return;
  }
}

bool PatchManager::HaltedWithLostNibble(const VcpuProfile& cpu) {
  absl::StatusOr<VcpuRegisters> regs = vm_.ReadRegisters(cpu.vcpu);
  if (!regs.ok() || !LookForHlt(cpu.vcpu, regs->eip).halted) return false;
  std::optional<PerCpuEntry> entry = ReadPerCpuEntry(cpu.processor_number);
  absl::StatusOr<uint8_t> real = vm_.ReadTpr(cpu.vcpu);
  return entry && entry->enabled && real.ok() && *real != entry->shadow_tpr;
}

std::optional<PerCpuEntry> PatchManager::ReadPerCpuEntry(uint8_t processor_number) {
  std::array<uint8_t, kPerCpuEntrySize> raw;
  const uint32_t va = installed_->addresses.PerCpuEntry(processor_number);
  if (!vm_.ReadVirtual(0, va, absl::MakeSpan(raw)).ok()) return std::nullopt;
  absl::StatusOr<PerCpuEntry> entry = DecodePerCpuEntry(raw);
  if (!entry.ok()) return std::nullopt;
  return *entry;
}

void PatchManager::PokeRealTpr(const VcpuProfile& cpu) {
  std::optional<PerCpuEntry> entry = ReadPerCpuEntry(cpu.processor_number);
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
  if (installed_->addresses.InHandlerCode(regs->eip)) {
    return skip("it stayed inside tprd's handlers");
  }
  if (LookForHlt(cpu.vcpu, regs->eip).halted) return skip("it stayed halted");
  GuestVmPhysicalReader memory(vm_);
  const PagingRegisters paging = PagingRegisters::From(*regs);
  absl::StatusOr<Translation> code =
      TranslateVirtual(memory, paging, installed_->addresses.tpr_poke);
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
  if (s.ok())
    s = vm_.WriteRegister(cpu.vcpu, WritableRegister::kEip, installed_->addresses.tpr_poke);
  absl::StatusOr<StepResult> step =
      s.ok() ? vm_.StepVcpu(cpu.vcpu, absl::Milliseconds(200)) : absl::StatusOr<StepResult>(s);
  // Whatever happened, the vCPU gets its own state back (every register the step could have
  // changed, should it have run further than the one instruction).
  absl::Status restored = vm_.WriteRegister(cpu.vcpu, WritableRegister::kEip, saved.eip);
  for (int r = 0; r < kGprCount && restored.ok(); ++r) {
    restored = vm_.WriteRegister(cpu.vcpu, static_cast<WritableRegister>(r), saved.gpr[r]);
  }
  if (restored.ok())
    restored = vm_.WriteRegister(cpu.vcpu, WritableRegister::kEflags, saved.eflags);
  NoteError(restored);
  if (step.ok() && step->completed && step->pc != installed_->addresses.tpr_poke + 5) {
    NoteError(absl::InternalError(
        absl::StrCat("vCPU ", cpu.vcpu, ": the step through the TPR poke ended at 0x",
                     absl::Hex(step->pc), ", not after the one instruction")));
  }
  if (!step.ok()) return skip(std::string(step.status().message()));
  absl::StatusOr<uint8_t> now = vm_.ReadTpr(cpu.vcpu);
  if (!step->completed || !now.ok() || *now != entry->shadow_tpr) {
    return skip(
        absl::StrCat("the step to set it did not ", step->completed ? "set it" : "complete"));
  }
  ++status_.real_tpr_restores;
}

}  // namespace tprd::engine

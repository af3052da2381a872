// Vocabulary shared by the classifier, the planner, the transactions and the guest's site table.
#ifndef TPRD_DAEMON_ENGINE_SITE_H_
#define TPRD_DAEMON_ENGINE_SITE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "daemon/engine/guest_vm.h"

namespace tprd::engine {

// The windows TPR: APIC page mapped at 0xFFFE0000, TPR at offset 0x80.
inline constexpr uint32_t kDefaultTprVa = 0xFFFE0080;

// The seven patchable TPR access forms (shared/design/prior-art.md; the seventh from the GPLPV
// drivers, shared/design/hal-research.md). Values are stored in the guest's site table: never
// renumber.
enum class Form : uint8_t {
  kMovEaxFromMoffs = 1,  // A1 moffs32          mov eax,[tpr]
  kMovMoffsFromEax = 2,  // A3 moffs32          mov [tpr],eax
  kMovRegFromMem = 3,    // 8B /r disp32        mov r32,[tpr]
  kMovMemFromReg = 4,    // 89 /r disp32        mov [tpr],r32
  kMovMemFromImm = 5,    // C7 /0 disp32 imm32  mov dword [tpr],imm32
  kPushMem = 6,          // FF /6 disp32        push dword [tpr]
  kAndMemZero = 7,       // 83 /4 disp32 00     and dword [tpr],0 (imm8 0 only; 7 bytes)
};

// Exact names used in the API, JSON and docs.
std::string_view FormName(Form form);
std::optional<Form> FormFromName(std::string_view name);
std::string_view GprName(Gpr reg);  // "eax", "ecx", ...

// Whether the form writes the TPR (else it reads it). `and dword [tpr],0` reads it too, but
// what it leaves (TPR 0, flags of a zero result) does not depend on what it read: a writer.
inline bool FormWritesTpr(Form form) {
  return form == Form::kMovMoffsFromEax || form == Form::kMovMemFromReg ||
         form == Form::kMovMemFromImm || form == Form::kAndMemZero;
}

// How the blob's handlers reach the real TPR; stored in the blob's strategy word. Never
// renumber: the value lives in guest memory.
enum class Strategy : uint32_t {
  kExact = 0,  // every access is a real MMIO access: always correct, saves nothing
  kMmio = 1,   // reads from the per-CPU shadow; writes shadow, then the real TPR
  kCr8 = 2,    // reads from the shadow; writes shadow, then CR8 via lock mov cr0 (AltMovCr8)
};
std::string_view StrategyName(Strategy strategy);
std::optional<Strategy> StrategyFromName(std::string_view name);

// How a session proves that an unproven candidate is code (docs/design.md "Discovery on KVM
// hosts"). Either way the learning window (an access watchpoint before anything is patched)
// proves the hot sites at enable, and the strategy's TPR watchpoint sees every unpatched access.
enum class Discovery : uint8_t {
  // An execution breakpoint (gdbstub Z0) on each candidate: patched before its first run. Under
  // TCG QEMU keeps breakpoints outside guest memory; under KVM Z0 is an int3 written into it.
  kBreakpoints,
  // No breakpoint on bytes not proven to be code. A candidate is proven by its first access the
  // TPR watchpoint reports (cr8: every access; mmio: writes), handled as any unpatched access,
  // and patched at that stop. Under mmio a reader is proven only by the learning window (an
  // unpatched reader is correct under mmio; it costs its exit).
  kWatchpoint,
};
std::string_view DiscoveryName(Discovery discovery);
std::optional<Discovery> DiscoveryFromName(std::string_view name);

// Virtual addresses of the guest blob's handlers, which the planner targets.
struct HandlerTable {
  uint32_t set_tpr = 0;              // value pushed by the site; handler pops it (ret 4)
  uint32_t set_tpr_eax = 0;          // value in eax
  uint32_t get_tpr[kGprCount] = {};  // indexed by Gpr; the kEsp slot is unused (0)
  uint32_t get_tpr_stack = 0;        // for push [tpr], patched as push eax; call
  uint32_t and_tpr_zero = 0;         // for and dword [tpr],0, patched as 66 90 (nop); call
};

enum class SiteState : uint8_t {
  kCandidate = 0,   // classified, not written
  kPending = 1,     // the transaction is writing it: bytes may be either original or patched
  kApplied = 2,     // patched bytes are in the guest
  kRolledBack = 3,  // original bytes restored
};
std::string_view SiteStateName(SiteState state);

struct Site {
  uint32_t id = 0;       // stable within a domain; also the index in the guest's site table
  uint32_t address = 0;  // guest virtual address of the instruction
  Form form = Form::kMovEaxFromMoffs;
  Gpr reg = Gpr::kEax;            // the register read or written; kEax where the form has none
  uint32_t imm = 0;               // kMovMemFromImm only
  std::vector<uint8_t> original;  // bytes as classified
  std::vector<uint8_t> patched;   // replacement, same length
  SiteState state = SiteState::kCandidate;
};

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_SITE_H_

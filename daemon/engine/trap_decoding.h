// What the instruction behind a TPR trap was, and how tprd can correct it after it ran: the
// decoding of watchpoint stops for PatchManager's learning window and cr8 fix-ups. Pure logic
// over guest bytes read through a GuestByteReader (tested through patch_manager_test).
#ifndef TPRD_DAEMON_ENGINE_TRAP_DECODING_H_
#define TPRD_DAEMON_ENGINE_TRAP_DECODING_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "daemon/engine/backward_decoder.h"
#include "daemon/engine/classifier.h"
#include "daemon/engine/guest_vm.h"

namespace tprd::engine {

// The instruction that made a watchpoint stop ending at `pc`. Several decodings may end there
// and name the TPR ("00 A1 disp32" is also "add [ecx+disp32], ah"); a register-relative one
// reaches the TPR only if its registers sum to zero, so a single absolute decoding wins.
std::optional<std::pair<uint32_t, Classification>> ResolveTrap(uint32_t pc,
                                                               const GuestByteReader& reader,
                                                               uint32_t tpr_va, std::string* why);

// A TPR access whose encoding does not name the TPR, such as mov eax, [ecx+0x80] with ecx at
// the APIC page (ResolveTrap finds none): the one instruction ending at `pc` whose memory
// operand, computed with the vCPU's registers at the stop, is the TPR. An instruction that
// changed its own address registers does not match and stays unresolved; two matches too.
std::optional<std::pair<uint32_t, Classification>> ResolveByAddress(uint32_t pc,
                                                                    const GuestByteReader& reader,
                                                                    uint32_t tpr_va,
                                                                    const VcpuRegisters& regs);

// Whether the instruction at `start` writes the TPR; unknown counts as a writer (the safe
// answer for mmio, whose shadow a writer would leave stale).
bool IsWriter(const Classification& c, uint32_t start, const GuestByteReader& reader);

// The register a cr8 fix-up must correct for a mov load of the TPR, or nullopt when the read is
// not one.
std::optional<Gpr> FixableReadDestination(const Classification& c, uint32_t start,
                                          const GuestByteReader& reader);

// The EFLAGS a cmp/test of the TPR that just ran would have left with the TPR reading as
// `shadow`; nullopt if the instruction is not one or its operand is not exactly the TPR.
std::optional<uint32_t> FixedEflags(const Classification& c, uint32_t start,
                                    const GuestByteReader& reader, uint8_t shadow, uint32_t tpr_va,
                                    const VcpuRegisters& regs);

// Whether cr8 can correct a read of the TPR that tprd did not patch, after it ran: a mov load
// (its destination register), push (its stack slot) or cmp/test (EFLAGS). Anything else that
// reads the TPR (add eax,[tpr], bt, movzx, ...) saw the value without its low nibble for good.
bool IsFixableRead(const Classification& c, uint32_t start, const GuestByteReader& reader);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_TRAP_DECODING_H_

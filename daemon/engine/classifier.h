// Classifier: decides whether one instruction is a TPR access, which of the seven patchable
// forms it is, and if it cannot be patched, why. Pure function of the bytes and two addresses.
#ifndef TPRD_DAEMON_ENGINE_CLASSIFIER_H_
#define TPRD_DAEMON_ENGINE_CLASSIFIER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/types/span.h"
#include "daemon/engine/guest_vm.h"
#include "daemon/engine/site.h"

namespace tprd::engine {

// Why an instruction is not patchable. The names (RejectReasonName) are stable machine strings
// used in JSON, the API and docs/design-notes/classifier.md: never rename.
enum class RejectReason : uint8_t {
  kNone = 0,          // patchable
  kUndecodable,       // "undecodable": the bytes are not one valid 32-bit instruction
  kNotTpr,            // "not_tpr": no memory operand names the TPR address
  kTooShort,          // "too_short": shorter than the 5 bytes a call rel32 needs
  kPrefix,            // "prefix": any legacy prefix (66 67 F0 F2 F3 26 2E 36 3E 64 65)
  kRegisterRelative,  // "register_relative": a base or index register in the address
  kSib,               // "sib": a SIB byte, even without base or index
  kOtherOperation,    // "other_operation": not one of the seven forms (cmp, movzx, and
                      // with an immediate other than 0, ...)
  kOperandSize,       // "operand_size": a mov/push of the TPR that is not 32 bits wide
  kEspRegister,       // "esp_register": mov esp,[tpr] or mov [tpr],esp
};
std::string_view RejectReasonName(RejectReason reason);

struct Classification {
  // Decoded length in bytes; 0 when the bytes do not decode.
  uint8_t length = 0;
  // The instruction names the TPR address in a memory operand: either as its whole absolute
  // address (disp32 / moffs), or as the displacement next to a base/index register or under a
  // segment override (then the real address may differ, and it is never patchable).
  bool tpr_access = false;
  // Set for the seven forms; also set for a recognised form that is rejected (esp).
  std::optional<Form> form;
  // The register read or written: eax for A1/A3, ModRM.reg for 89/8B; none for C7, FF /6 and
  // 83 /4.
  std::optional<Gpr> reg;
  uint32_t imm = 0;  // kMovMemFromImm only
  bool patchable = false;
  RejectReason reason = RejectReason::kUndecodable;
  std::string detail;  // one human sentence; empty when patchable
};

// Classifies the first instruction in `bytes` (at most 15 are looked at), which sits at
// virtual address `address`. Never fails: anything unexpected is a rejection with a reason.
Classification Classify(absl::Span<const uint8_t> bytes, uint32_t address,
                        uint32_t tpr_va = kDefaultTprVa);

// The Site a patchable classification describes (state kCandidate, patched empty).
// Callers must pass the same bytes that were classified; only the first `length` are kept.
std::optional<Site> CandidateSite(const Classification& classification,
                                  absl::Span<const uint8_t> bytes, uint32_t address);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_CLASSIFIER_H_

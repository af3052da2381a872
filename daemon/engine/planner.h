// Planner: the exact replacement bytes for a classified TPR site, and their verification.
//
//   A1 moffs32            -> E8 rel32 (get_tpr[eax])
//   A3 moffs32            -> E8 rel32 (set_tpr_eax)
//   89 /r disp32          -> 50+r, E8 rel32 (set_tpr)
//   8B /r disp32          -> 90, E8 rel32 (get_tpr[r])
//   FF /6 disp32          -> 50, E8 rel32 (get_tpr_stack)
//   C7 /0 disp32 imm32    -> 68 imm32, E8 rel32 (set_tpr)
//   83 /4 disp32 00       -> 66 90, E8 rel32 (and_tpr_zero): the two spare bytes are one
//                            2-byte nop before the call, like the 8B form's 90
//
// rel32 = target - (address of the call + 5), modulo 2^32. The replacement always has the
// original length, and is decoded again with Zydis before it is returned.
#ifndef TPRD_DAEMON_ENGINE_PLANNER_H_
#define TPRD_DAEMON_ENGINE_PLANNER_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "daemon/engine/guest_vm.h"
#include "daemon/engine/site.h"

namespace tprd::engine {

// What the planner needs to know about one site.
struct PlanRequest {
  uint32_t address = 0;  // guest virtual address of the original instruction
  Form form = Form::kMovEaxFromMoffs;
  Gpr reg = Gpr::kEax;  // 89 / 8B only
  uint32_t imm = 0;     // C7 only
  size_t original_length = 0;
};

// The handler a form's call targets (0 when the table has none for it).
uint32_t HandlerFor(const HandlerTable& handlers, Form form, Gpr reg);

// The replacement bytes. Errors (INVALID_ARGUMENT / FAILED_PRECONDITION) for a length that is
// not the form's, esp, a missing (zero) handler, or a re-decode that is not the intended code.
absl::StatusOr<std::vector<uint8_t>> PlanReplacement(const PlanRequest& request,
                                                     const HandlerTable& handlers);
// Same, from a classified Site (address, form, reg, imm, original.size()).
absl::StatusOr<std::vector<uint8_t>> PlanReplacement(const Site& site,
                                                     const HandlerTable& handlers);

// Decodes `replacement` with Zydis and checks it is exactly the intended sequence for the
// request: the push/nop first where the form has one (66 90 for 83 /4), then a call to the
// form's handler ending at the original instruction's end. Usable on bytes read back from a
// guest.
absl::Status VerifyReplacement(absl::Span<const uint8_t> replacement, const PlanRequest& request,
                               const HandlerTable& handlers);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_PLANNER_H_

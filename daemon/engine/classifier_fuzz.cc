// Fuzzes the classifier, the planner and the decode report with arbitrary bytes.
// Input: 4 bytes address, 4 bytes TPR address, then the instruction bytes. Taking the TPR
// address from the input lets the fuzzer reach the TPR paths without guessing 0xFFFE0080.
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "daemon/engine/blob.h"
#include "daemon/engine/classifier.h"
#include "daemon/engine/decode_report.h"
#include "daemon/engine/planner.h"

namespace {

uint32_t Le32(const uint8_t* p) {
  uint32_t value;
  std::memcpy(&value, p, sizeof(value));
  return value;
}

void Check(bool invariant) {
  if (!invariant) __builtin_trap();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace tprd::engine;
  if (size < 8) return 0;
  const uint32_t address = Le32(data);
  const uint32_t tpr = Le32(data + 4);
  const absl::Span<const uint8_t> bytes(data + 8, size - 8);

  const Classification c = Classify(bytes, address, tpr);
  Check(c.length <= 15 && c.length <= bytes.size());
  Check((c.length == 0) == (c.reason == RejectReason::kUndecodable));
  Check(c.patchable == (c.reason == RejectReason::kNone));
  Check(c.patchable == c.detail.empty());
  if (!c.tpr_access) Check(!c.patchable && !c.form.has_value());

  const absl::StatusOr<HandlerTable> blob_handlers = HandlerTableForBlob(kDefaultBlobVa);
  Check(blob_handlers.ok());
  const HandlerTable& handlers = *blob_handlers;
  if (c.patchable) {
    Check(c.form.has_value() && c.length >= 5);
    const std::optional<Site> site = CandidateSite(c, bytes, address);
    Check(site.has_value());
    const absl::StatusOr<std::vector<uint8_t>> plan = PlanReplacement(*site, handlers);
    Check(plan.ok() && plan->size() == c.length);
    const PlanRequest request{address, site->form, site->reg, site->imm, site->original.size()};
    Check(VerifyReplacement(*plan, request, handlers).ok());
    // A replacement is never itself a TPR access: patching twice is impossible.
    Check(!Classify(*plan, address, tpr).patchable);
  }
  const DecodeReport report = BuildDecodeReport(bytes, address, tpr, handlers);
  Check(report.classification.patchable == c.patchable);
  Check(!DecodeReportJson(report).empty() && !DecodeReportText(report).empty());
  return 0;
}

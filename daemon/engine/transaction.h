// Apply and roll back a batch of sites as one transaction against a GuestVm.
//
// Guarantees (shared/design/architecture.md, "The engine"):
// - The batch runs with every vCPU stopped once: one Stop() and one Resume() per batch, or none
//   when the caller already holds the guest stopped (GuestStop::kCallerHoldsStopped).
// - A site is written only when its bytes are exactly the expected "before" bytes and no vCPU's
//   EIP lies strictly inside it; each site is written in ONE WriteVirtual call, then read back.
// - The recorder hears kPending before the guest bytes change and the final state after the
//   read-back. A recorder error stops the batch before any further guest write.
// - A fault at any point leaves each site either fully original or fully patched and the
//   records true. The single exception is reported as SiteOutcome::Kind::kTorn: a write tore
//   and writing the old bytes back failed too; its record then stays kPending.
#ifndef TPRD_DAEMON_ENGINE_TRANSACTION_H_
#define TPRD_DAEMON_ENGINE_TRANSACTION_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "daemon/engine/clock.h"
#include "daemon/engine/guest_vm.h"
#include "daemon/engine/patch_recorder.h"
#include "daemon/engine/site.h"

namespace tprd::engine {

// Who stops and resumes the guest around a batch.
enum class GuestStop : uint8_t {
  // The transaction calls Stop() once before and Resume() once after. A guest the host paused
  // stays paused: the Resume refusal is reported in TransactionReport::resume_status.
  kStopAndResume,
  // The caller already stopped the guest (a breakpoint stop, a StoppedGuestScope) and resumes
  // it itself: the transaction never calls Stop() or Resume().
  kCallerHoldsStopped,
};

struct SiteOutcome {
  enum class Kind : uint8_t {
    kApplied,          // patched bytes written and read back
    kAlreadyApplied,   // bytes were already the patched bytes
    kRolledBack,       // original bytes written and read back
    kAlreadyOriginal,  // bytes were already the original bytes
    kSkipped,          // not touched: reason says why (bytes changed, vCPU inside, ...)
    kFailed,           // a write, read or record failed; the site is fully original or patched
    kTorn,             // neither original nor patched and could not be restored
  };
  uint32_t site_id = 0;
  uint32_t address = 0;
  Kind kind = Kind::kSkipped;
  std::string reason;                       // empty for kApplied / kRolledBack / kAlready*
  SiteState state = SiteState::kCandidate;  // the site's state after the batch
};
std::string_view SiteOutcomeKindName(SiteOutcome::Kind kind);

struct TransactionReport {
  std::vector<SiteOutcome> outcomes;  // one per input site, same order
  absl::Status resume_status;         // kStopAndResume only: the final Resume()
  int stop_count = 0;                 // Stop() calls this transaction made
  bool aborted = false;               // a recorder error ended the batch early
  absl::Status abort_status;

  int Count(SiteOutcome::Kind kind) const;
};

struct ApplyOptions {
  GuestStop stop = GuestStop::kStopAndResume;
  int vcpu = 0;  // whose page tables translate the site addresses
};

struct RollbackOptions {
  GuestStop stop = GuestStop::kStopAndResume;
  int vcpu = 0;
  // Write the original bytes even where the bytes are no longer the patched bytes.
  bool force = false;
  // [handler_code_start, handler_code_end): the blob's handler code. While any vCPU's EIP is in
  // it, no site is rolled back (which site it came from is unknown). Empty range: no check.
  uint32_t handler_code_start = 0;
  uint32_t handler_code_end = 0;
  // With kStopAndResume: when vCPUs sit inside sites or handlers, resume, stop again and
  // re-check, up to this many times, for the sites still blocked.
  int max_retries = 0;
  // Lets the vCPUs run between those retries (1 ms, doubling to 20 ms): stopped again at once,
  // a vCPU may not have run a single instruction (seen under TCG: 20 retries, same EIP).
  // Null: no wait.
  Clock* clock = nullptr;
  // Called each time a retry has stopped the guest again, before anything is looked at: the
  // owner's work for a stop (cr8 fix-ups, mmio shadow resyncs) before the guest runs again.
  std::function<void()> after_stop = nullptr;
};

// Patches every site whose bytes are still site.original (or already site.patched). Updates
// each site's `state` in place. An error only when the guest could not be stopped; everything
// else (malformed or overlapping sites included) is a per-site outcome.
absl::StatusOr<TransactionReport> ApplySites(GuestVm& vm, PatchRecorder& recorder,
                                             absl::Span<Site> sites,
                                             const ApplyOptions& options = {});

// Restores site.original where the bytes are still site.patched (or anything, with force).
absl::StatusOr<TransactionReport> RollbackSites(GuestVm& vm, PatchRecorder& recorder,
                                                absl::Span<Site> sites,
                                                const RollbackOptions& options = {});

// Holds the guest stopped for several operations (e.g. install the blob, then apply with
// GuestStop::kCallerHoldsStopped): every way out of a stop of tprd's own lets the guest run
// again. Resume() once when done; the destructor resumes if the caller did not (a guest the host
// paused meanwhile stays paused: GuestVm::Resume refuses it). Release() when something else
// (e.g. RollbackSites) resumes it.
class StoppedGuestScope {
 public:
  // Stops the guest, then holds it.
  static absl::StatusOr<std::unique_ptr<StoppedGuestScope>> Enter(GuestVm& vm);
  // Holds a guest the caller stopped (or tried to: a half-made stop is let go as well).
  explicit StoppedGuestScope(GuestVm& vm) : vm_(vm) {}
  ~StoppedGuestScope();
  StoppedGuestScope(const StoppedGuestScope&) = delete;
  StoppedGuestScope& operator=(const StoppedGuestScope&) = delete;

  absl::Status Resume();
  void Release() { resumed_ = true; }

 private:
  GuestVm& vm_;
  bool resumed_ = false;
};

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_TRANSACTION_H_

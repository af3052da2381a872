// What the daemon asks of one domain's patching session. The real implementation (engine +
// kvm-backend) lives elsewhere; tests/fakes/fake_domain_controller.h fakes it.
//
// Threading: one DomainActor owns each controller and calls every method from its own thread,
// except Interrupt(), which any thread may call. Implementations therefore need no locking
// beyond what Interrupt() touches.
//
// Errors: absl status codes with messages a person can act on; the service maps them to gRPC
// codes one to one (NOT_FOUND unknown site, FAILED_PRECONDITION guest not fit / vapic active /
// no KPCR / no room for the blob, INVALID_ARGUMENT, UNAVAILABLE the hypervisor went away).
#ifndef TPRD_DAEMON_DOMAIN_DOMAIN_CONTROLLER_H_
#define TPRD_DAEMON_DOMAIN_DOMAIN_CONTROLLER_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/domain/access_rates.h"
#include "daemon/engine/managed_site.h"
#include "daemon/engine/site.h"

namespace tprd::daemon {

// The strategy a user asks for. kAuto is mmio on every guest: cr8 keeps a guest's unpatched
// readers correct only while tprd is attached (its traps fix them up), so a memory snapshot, a
// save or a migration of a cr8 guest is not safe (docs/design.md, "auto is mmio"); cr8 is used
// only when named.
enum class RequestedStrategy : uint8_t { kAuto, kMmio, kCr8, kExact };

// The engine's strategy for what the user asked for.
inline engine::Strategy ResolveRequestedStrategy(RequestedStrategy requested) {
  switch (requested) {
    case RequestedStrategy::kAuto:
    case RequestedStrategy::kMmio:
      return engine::Strategy::kMmio;
    case RequestedStrategy::kCr8:
      return engine::Strategy::kCr8;
    case RequestedStrategy::kExact:
      return engine::Strategy::kExact;
  }
  return engine::Strategy::kExact;
}

struct EnableOptions {
  RequestedStrategy strategy = RequestedStrategy::kAuto;
  bool dry_run = false;                                 // classify and report, write nothing
  absl::Duration discovery_budget = absl::Seconds(10);  // scan + mmio learning window
};

// Holds what engine::RollbackReport holds. Kept apart only so that this interface need not
// include patch_manager.h; to be merged once RollbackReport has a header of its own.
struct RollbackResult {
  std::vector<uint32_t> rolled_back;
  struct Refusal {
    uint32_t site_id = 0;
    std::string reason;
  };
  std::vector<Refusal> refused;
};

// What the session knows about its guest. The actor adds the domain state on top.
struct ControllerStatus {
  // tprd's patching is in force: a site is applied, or the blob is in and the operator's
  // strategy is not exact (sites wait at breakpoints for their first run). The actor polls the
  // session while this holds: a breakpoint nobody handles would stop the guest for good.
  bool patched = false;
  engine::Strategy strategy = engine::Strategy::kExact;            // the guest's word now
  engine::Strategy requested_strategy = engine::Strategy::kExact;  // the operator's, resolved
  uint64_t traps_handled = 0;
  // TPR access counts and rates (docs/design.md "Rates and metrics (2026-12-06, issue 14)").
  // Counts: the guest's per-CPU counters since its blob went in (handler_*), and the watchpoint
  // stops at unpatched accesses of this session.
  uint64_t handler_accesses_without_apic = 0;
  uint64_t handler_accesses_to_apic = 0;
  uint64_t unpatched_accesses_seen = 0;
  // before: TPR accesses reaching the APIC per second of guest run time in the enable's
  // learning window, nothing patched yet (a lower bound: the run time includes QEMU's stop and
  // restart at each hit, and the gdbstub's round trips unless measured by the guest's clock);
  // 0 when not measured (no learning window in this session, e.g. adopted).
  // Since 2026-12-07 "before" comes from QEMU's APIC trace when the enable took one (below),
  // else from the learning window.
  double tpr_accesses_per_second_before = 0;
  // The APIC trace the enable took before its first patch (kvm-backend/apic_trace_sampler.h):
  // TPR reads and writes that reached QEMU's APIC emulation in before_trace_window (zero: no
  // trace), or why there is none (empty when none was tried).
  uint64_t before_trace_tpr_reads = 0;
  uint64_t before_trace_tpr_writes = 0;
  absl::Duration before_trace_window;
  std::string before_trace_error;
  uint64_t learning_hits = 0;
  absl::Duration learning_run;
  bool learning_run_guest_clock = false;  // learning_run from the guest's ACPI PM timer
  // now: over the last interval of about a second while tprd holds the session; unset before two
  // samples were taken.
  std::optional<AccessRates> rates;
  // after: rates->to_apic_per_second (0 when unset), kept for the API's field of that name.
  double tpr_accesses_per_second_after = 0;
  PauseHistogram enable_pauses;      // the enables of this session that changed the guest
  bool proving_window_open = false;  // every candidate still waits at its breakpoint
  // The session's discovery ("breakpoints" or "watchpoint", engine::DiscoveryName); empty when
  // there is no session. candidate_breakpoints: breakpoints it set on unproven candidates.
  std::string discovery;
  uint64_t candidate_breakpoints = 0;
  uint64_t guard_mismatches = 0;  // the guest's mmio guard counters (ManagerStatus)
  // tprd's blob is in the guest (found by Adopt, or placed): tprd patched it during this boot,
  // even if nothing is patched now (a rollback leaves the blob).
  bool holds_blob = false;
  std::string last_error;
};

// Something the session did or saw on its own, reported by Poll(). What it adds to the engine's
// ManagerEvent: the site as it now stands (the actor has no PatchManager to look an id up in),
// and kHostCopiesState/kHostReplacesState, which only libvirt's pause reason tells (the engine
// never sees libvirt).
struct ControllerEvent {
  enum class Kind : uint8_t {
    kSiteChanged,      // a site was patched on first execution, or changed state
    kStrategyChanged,  // e.g. switched to exact because an unpatchable writer kept firing
    kError,            // a problem worth telling the user; the guest keeps running
    kNotice,           // worth telling, not a problem: journal and log, not last_error
    // libvirt paused the domain to copy its state (save, migration, snapshot, dump): the guest
    // must be correct wherever that copy runs, without tprd. The owner lets go (Detach).
    kHostCopiesState,
    // libvirt paused the domain to load other memory into it (a snapshot revert): nothing tprd
    // writes may land in that memory. The owner drops the session without a write (Abandon)
    // and looks for its blob when the domain runs again.
    kHostReplacesState,
  };
  Kind kind = Kind::kError;
  std::optional<engine::ManagedSite> site;  // kSiteChanged
  std::string message;
};

class DomainController {
 public:
  virtual ~DomainController() = default;

  // On daemon start (or when a domain is first seen): look for tprd's blob in the guest and, if
  // it is there, verify its sites and take the guest back (switch from exact to its strategy,
  // re-arm breakpoints/watchpoints, handle a guest left stopped at a trap by a killed tprd).
  // Returns whether the guest holds patches. A guest without the blob is not touched.
  // `strategy_hint`: what the operator last asked for (the journal's, else the domain's intent:
  // a guest that arrives by migration let go on exact), restored when the guest's word says
  // exact because tprd let go cleanly; a killed tprd left its choice in the word, which wins.
  // Resolved as an enable resolves it (ResolveRequestedStrategy).
  virtual absl::StatusOr<bool> Adopt(std::optional<RequestedStrategy> strategy_hint) = 0;

  // Discover, classify and patch; keep the guest correct afterwards (through Poll). Calling it
  // on a patched guest with the same options changes nothing; with another strategy, switches.
  virtual absl::StatusOr<std::vector<engine::ManagedSite>> Enable(const EnableOptions& options) = 0;

  // Restore original bytes. Empty `site_ids` means every site. Unknown ids: NOT_FOUND.
  virtual absl::StatusOr<RollbackResult> Rollback(const std::vector<uint32_t>& site_ids,
                                                  bool force) = 0;

  virtual absl::StatusOr<std::vector<engine::ManagedSite>> ListSites() = 0;

  // Report-only: candidates in the guest's code. Never writes to the guest. A candidate is
  // patchable when its note is empty; else the note says why not.
  virtual absl::StatusOr<std::vector<engine::ManagedSite>> Scan() = 0;

  virtual ControllerStatus Status() = 0;

  // Handles guest stops (breakpoints, watchpoints) for up to `timeout`; returns early when one
  // was handled or Interrupt() was called. UNAVAILABLE (or NOT_FOUND) when the domain is gone.
  virtual absl::StatusOr<std::vector<ControllerEvent>> Poll(absl::Duration timeout) = 0;

  // Thread-safe: make the current or next Poll() return promptly (a command is waiting).
  virtual void Interrupt() = 0;

  // Leave the guest correct without tprd: switch its strategy word to exact, remove
  // breakpoints and watchpoints, detach. Patches stay; a later Adopt() takes them back.
  // DATA_LOSS: detached so, with a problem on the way that the message names.
  virtual absl::Status Detach(const std::string& reason) = 0;

  // The guest's memory is gone (shutdown, destroy, crash, reboot): drop the session without
  // touching the guest.
  virtual void Abandon(const std::string& reason) = 0;
};

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_DOMAIN_DOMAIN_CONTROLLER_H_

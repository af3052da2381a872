// One domain's patching session, as pure logic over a GuestVm: enable (profile, learn, place
// and install the blob, patch what is proven, arm traps for the rest), keep the guest correct
// (handle breakpoint and watchpoint stops), roll back, adopt a patched guest, detach safely.
// docs/design.md explains the rules; architecture.md "Keeping a patched guest correct".
//
// Not thread-safe: one owner (the domain's actor) calls everything.
#ifndef TPRD_DAEMON_ENGINE_PATCH_MANAGER_H_
#define TPRD_DAEMON_ENGINE_PATCH_MANAGER_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/engine/blob.h"
#include "daemon/engine/clock.h"
#include "daemon/engine/guest_profile.h"
#include "daemon/engine/guest_vm.h"
#include "daemon/engine/patch_recorder.h"
#include "daemon/engine/placement.h"
#include "daemon/engine/scanner.h"
#include "daemon/engine/site.h"

namespace tprd::engine {

struct ManagedSite {
  Site site;                // state kCandidate = armed, waiting for its first execution
  std::string disassembly;  // the original instruction
  uint64_t hits = 0;        // breakpoint and watchpoint stops attributed to it
  bool armed = false;       // an execution breakpoint is set on it
  std::string note;         // why it is not patched, when it is not
};

struct EnableRequest {
  Strategy strategy = Strategy::kMmio;  // already resolved from "auto" by the caller
  bool dry_run = false;
  // The learning window: an access watchpoint on the TPR, before anything is patched, proves
  // hot sites (patched together in the enable's single stop) and finds writers the scan cannot
  // patch (which make mmio unsafe). Bounded by time and by hits.
  absl::Duration learning_window = absl::Milliseconds(500);
  int learning_max_hits = 400;
  uint32_t guard_period = kBlobDefaultGuardPeriod;
  // cr8: unfixable unpatched reads (add eax,[tpr], bt, movzx, ...; mov, push, cmp and test are
  // fixed up) seen before the domain switches to exact.
  // The first one already saw a wrong low nibble, so by default the first one switches.
  int unfixable_read_limit = 1;
  // How long execution breakpoints wait on unproven candidates after enable (or adopt). After
  // that only the ones correctness needs stay: writers under mmio (an unpatched writer would
  // leave the shadow stale). An unpatched reader is correct under mmio, and cr8's watchpoint
  // catches (and patches) any late access. Bounded because under TCG every translation block
  // on a page holding a breakpoint is cut to one instruction: the guest's hot code there runs
  // many times slower for as long as the breakpoint stays (docs/design.md).
  absl::Duration proving_window = absl::Seconds(60);
};

struct EnableReport {
  Strategy strategy = Strategy::kExact;
  size_t candidates = 0;         // patchable candidates found by the scan
  size_t applied_at_enable = 0;  // proven during the learning window, patched in the enable stop
  size_t armed = 0;              // waiting for their first execution
  size_t learning_hits = 0;
  absl::Duration pause;  // the install + apply stop
  bool changed = true;   // false: already enabled with this strategy
};

struct RollbackReport {
  std::vector<uint32_t> rolled_back;
  std::vector<std::pair<uint32_t, std::string>> refused;
};

struct ManagerEvent {
  // kNotice: worth telling, not a problem (the end of the proving window).
  enum class Kind : uint8_t { kSitePatched, kStrategyChanged, kWarning, kHostPaused, kNotice };
  Kind kind = Kind::kWarning;
  std::optional<uint32_t> site_id;
  std::string message;
};

struct ManagerStatus {
  bool installed = false;                          // the blob is in the guest
  Strategy strategy = Strategy::kExact;            // the strategy word now
  Strategy requested_strategy = Strategy::kExact;  // what the operator asked for
  uint64_t traps_handled = 0;
  uint64_t guard_mismatches = 0;     // the guest's mmio guard counters, summed over its CPUs
  uint64_t unreported_fixups = 0;    // cr8 fix-ups of accesses no stop named (FixUpUnreported...)
  bool proving_window_open = false;  // since enable: every candidate keeps its breakpoint
  std::string last_error;
};

class PatchManager {
 public:
  // `journal` hears every site state change (after the guest's own site table).
  PatchManager(GuestVm& vm, PatchRecorder& journal, Clock& clock);

  // Report-only scan of the guest's code; writes nothing. Stops the guest briefly.
  absl::StatusOr<std::vector<ManagedSite>> Scan();
  absl::StatusOr<EnableReport> Enable(const EnableRequest& request);
  // Empty ids: every site. Unknown ids: NOT_FOUND before anything is touched.
  absl::StatusOr<RollbackReport> Rollback(const std::vector<uint32_t>& ids, bool force);
  // Looks for tprd's blob in the guest; if present, verifies it and its sites and takes the
  // guest back (strategy, traps, a vCPU left stopped at a trap). Returns whether it was there.
  // `requested_hint`: the strategy the operator chose, when tprd remembers it (journal) and the
  // guest's strategy word says exact because tprd detached cleanly.
  // `proving_window`: as EnableRequest's, started afresh for the candidates adopt re-arms.
  absl::StatusOr<bool> Adopt(std::optional<Strategy> requested_hint = std::nullopt,
                             absl::Duration proving_window = EnableRequest{}.proving_window);
  // Leaves the guest correct without tprd: strategy word exact, every trap removed. The guest
  // is left running (unless the host paused it).
  absl::Status Detach();
  // Waits up to `timeout` for one guest stop and handles it. The guest must be running.
  absl::StatusOr<std::vector<ManagerEvent>> Poll(absl::Duration timeout);

  std::vector<ManagedSite> Sites() const;
  ManagerStatus Status() const {
    ManagerStatus status = status_;
    status.proving_window_open = proving_deadline_.has_value();
    return status;
  }
  // Rolled-back and candidate sites included. Used by the daemon for ListSites.
  bool HasSite(uint32_t id) const { return sites_.count(id) != 0; }

 private:
  struct Installed {
    BlobAddresses addresses;
    HandlerTable handlers;
    BlobPlacement placement;
  };

  absl::StatusOr<GuestProfile> StopAndProfile();
  // tprd's blob in the legacy window, validated; nullopt when there is none.
  absl::StatusOr<std::optional<ParsedBlob>> FindInstalledBlob();
  // Takes over a blob found in the guest and its site table; returns its strategy word.
  Strategy LoadInstalled(const ParsedBlob& blob);
  absl::Status RecordAdoptedStates(const ParsedBlob& blob);
  absl::StatusOr<ScanResult> ScanGuest(const GuestProfile& profile);
  void MergeCandidates(const ScanResult& scan);
  // Learning window; the guest runs during it and is stopped again at the end.
  absl::Status Learn(const EnableRequest& request, const GuestProfile& profile,
                     std::set<uint32_t>& proven, size_t& hits);
  absl::Status Install(const EnableRequest& request, const GuestProfile& profile);
  // `clear_guard_evidence`: the operator asked for a strategy again, so the guard's mismatch
  // counters of an earlier rejection are reset.
  absl::Status InitPerCpu(bool from_real_tpr, bool clear_guard_evidence = false);
  absl::Status WriteStrategy(Strategy strategy);
  absl::Status WriteVerified(uint32_t va, absl::Span<const uint8_t> bytes);
  absl::Status PlanSites();
  // Applies sites with the guest already stopped; returns how many were applied.
  size_t ApplyStopped(const std::vector<uint32_t>& ids, std::vector<ManagerEvent>* events);
  absl::Status ArmTraps();
  // Whether a candidate's breakpoint is still wanted (the proving window, or correctness).
  bool WantsBreakpoint(const ManagedSite& managed) const;
  // Why a candidate can never be patched in this session (no slot in the guest's site table, or
  // no replacement planned), or nullopt.
  static std::optional<std::string> CannotPatch(const ManagedSite& managed);
  // Once the proving window has passed: disarms the breakpoints only the window wanted.
  absl::Status EndProvingWindowIfDue(std::vector<ManagerEvent>& events);
  absl::Status DisarmTraps();
  absl::Status HandleStop(const StopEvent& event, std::vector<ManagerEvent>& events);
  // `reported`: QEMU named this vCPU's stop. false: the vCPU was found just after a TPR access
  // at another vCPU's stop (QEMU reports one per stop); fixed only on proof it just ran it.
  absl::Status HandleWatchpoint(int vcpu, uint32_t pc, std::vector<ManagerEvent>& events,
                                bool reported = true);
  // cr8: every other vCPU that stands just after a TPR read it evidently ran gets its fix-up.
  void FixUpUnreportedAccesses(std::optional<int> reported_vcpu, std::vector<ManagerEvent>& events);
  // After a stop: patch candidates at which a stopped vCPU stands (they are about to run).
  void ApplyCandidatesAtVcpus(std::vector<ManagerEvent>& events);
  std::optional<uint32_t> SiteAt(uint32_t address) const;
  absl::Status SwitchToExact(const std::string& why, std::vector<ManagerEvent>& events);
  // While the guest runs (about once a second, without stopping it): reads the guest's strategy
  // word and guard counters, so the status says what the guest does. A flip of mmio to exact by
  // the guest's guard is reported once and sticks until the operator enables again.
  void WatchGuestWord(std::vector<ManagerEvent>& events);
  // Guest physical address of a byte of the data block (strategy word, per-CPU area).
  uint64_t DataBlockPhysical(uint32_t va) const;
  absl::Status ResumeGuest();
  // vm_.Stop(), then the fix-ups of a cr8 watchpoint hit that raced with the stop: its stop
  // reply is kept by the backend and delivered after tprd's own work resumed the guest, too
  // late to fix anything, so every tprd-initiated stop looks at every vCPU first.
  absl::Status StopGuest();
  void NoteError(const absl::Status& status);

  GuestVm& vm_;
  PatchRecorder& journal_;
  Clock& clock_;

  std::optional<GuestProfile> profile_;
  std::optional<Installed> installed_;
  std::map<uint32_t, ManagedSite> sites_;  // by id
  uint32_t next_id_ = 0;
  std::set<uint32_t> armed_breakpoints_;
  bool tpr_watch_armed_ = false;
  EnableRequest request_;
  uint64_t unfixable_reads_ = 0;
  // End of the proving window (nullopt: over, or not started).
  std::optional<absl::Time> proving_deadline_;
  std::optional<absl::Time> next_word_check_;
  // The guest's guard found a stale shadow under mmio in this boot (its mismatch counters, kept
  // in guest memory): mmio stays off until the operator asks for it again.
  bool guard_rejected_mmio_ = false;
  ManagerStatus status_;
};

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_PATCH_MANAGER_H_

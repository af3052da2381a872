// One domain's patching session, as pure logic over a GuestVm: enable (profile, learn, place
// and install the blob, patch what is proven, arm traps for the rest), keep the guest correct
// (handle breakpoint and watchpoint stops), roll back, adopt a patched guest, detach safely.
// docs/design.md explains the rules; architecture.md "Keeping a patched guest correct".
//
// Not thread-safe: one owner (the domain's actor) calls everything.
#ifndef TPRD_DAEMON_ENGINE_PATCH_MANAGER_H_
#define TPRD_DAEMON_ENGINE_PATCH_MANAGER_H_

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/engine/backward_decoder.h"
#include "daemon/engine/blob.h"
#include "daemon/engine/blob_installation.h"
#include "daemon/engine/clock.h"
#include "daemon/engine/guest_profile.h"
#include "daemon/engine/guest_vm.h"
#include "daemon/engine/managed_site.h"
#include "daemon/engine/patch_recorder.h"
#include "daemon/engine/placement.h"
#include "daemon/engine/scanner.h"
#include "daemon/engine/site.h"
#include "daemon/engine/tpr_alias.h"
#include "daemon/engine/transaction.h"
#include "daemon/engine/trap_set.h"

namespace tprd::engine {

struct EnableRequest {
  Strategy strategy = Strategy::kMmio;  // already resolved from "auto" by the caller
  bool dry_run = false;
  // Leaving cr8: wake a halted CPU alone (WakeAlone) instead of only letting the whole guest run
  // a moment. Off in 2026-12-06's first builds: runs left a guest paused after leaving cr8 (ciL);
  // the cause was a debug interrupt QEMU left pending after a stepped watchpoint hit, which the
  // backend now takes at the step (QemuGuestVm::ConsumeStaleDebugInterrupt; docs/design.md).
  bool wake_halted_cpus_alone = true;
  // The learning window: an access watchpoint on the TPR, before anything is patched, proves
  // hot sites (patched together in the enable's single stop) and finds accesses the scan cannot
  // patch: a reader cr8 cannot fix up refuses cr8; a writer mmio cannot patch that runs often
  // (more than learning_max_hits / 8 hits) refuses mmio, whose write watchpoint would stop the
  // guest at each of its runs. Bounded by time and by hits; soundness does not depend on it
  // (docs/design.md "Strategies").
  absl::Duration learning_window = absl::Milliseconds(500);
  int learning_max_hits = 400;
  uint32_t guard_period = kBlobDefaultGuardPeriod;
  // cr8: unfixable unpatched reads (add eax,[tpr], bt, movzx, ...; mov, push, cmp and test are
  // fixed up) seen before the domain switches to exact.
  // The first one already saw a wrong low nibble, so by default the first one switches.
  int unfixable_read_limit = 1;
  // How long execution breakpoints wait on unproven candidates after enable (or adopt). After
  // that mmio keeps none: its write watchpoint catches (and patches) a late writer, and an
  // unpatched reader is correct under mmio. cr8 keeps them (docs/design.md). Bounded because
  // under TCG every translation block on a page holding a breakpoint is cut to one
  // instruction: the guest's hot code there runs many times slower while the breakpoint stays.
  absl::Duration proving_window = absl::Seconds(60);
  // mmio: stops at unpatchable TPR writes tolerated per second before the domain switches to
  // exact (each one stops the guest; correctness does not depend on this limit).
  int unpatched_write_stops_per_second_limit = 200;
  // How unproven candidates are proven (trap_set.h). Resolved by the caller from the domain's
  // accelerator (kWatchpoint on KVM, where a breakpoint is an int3 in guest memory).
  Discovery discovery = Discovery::kBreakpoints;
};

struct EnableReport {
  Strategy strategy = Strategy::kExact;
  size_t candidates = 0;         // patchable candidates found by the scan
  size_t applied_at_enable = 0;  // proven (learning window, or applied earlier this boot): patched
  size_t armed = 0;              // waiting for their first execution
  size_t learning_hits = 0;
  absl::Duration pause;  // the install + apply part of the enable's last stop
  absl::Duration stop;   // that whole stop, as the guest sees it: with the scan on a re-enable
  // Where the pause went, for operators and bench/: "install_us=... per_cpu_us=... ...".
  std::string pause_parts;
  bool changed = true;  // false: already enabled with this strategy
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
  uint64_t guard_mismatches = 0;       // the guest's mmio guard counters, summed over its CPUs
  uint64_t unreported_fixups = 0;      // cr8 fix-ups of accesses no stop named (FixUpUnreported...)
  uint64_t unreported_steps = 0;       // cr8: vCPUs stepped so QEMU reports a hit no stop named
  uint64_t unpatched_write_stops = 0;  // mmio: write watchpoint stops at unpatchable writers
  uint64_t real_tpr_restores = 0;      // leaving cr8: real TPRs set back to their shadows
  uint64_t shadow_resyncs = 0;         // mmio: shadows set from the real TPR after such a write
  // TPR accesses, counted where each can be (docs/design.md "Rates and metrics"). The guest's
  // per-CPU counters (blob layout 5), summed over CPUs since the blob went in, as last read:
  uint64_t handler_accesses_without_apic = 0;  // shadow reads, CR8 writes
  uint64_t handler_accesses_to_apic = 0;       // exact path, mmio writes, guard checks
  // Watchpoint stops at TPR accesses no handler made (cr8: every unpatched access; mmio: every
  // unpatched write; unpatched reads under mmio and every unpatched access under exact are not
  // seen by anything).
  uint64_t unpatched_accesses_seen = 0;
  absl::Time counters_read_at = absl::InfinitePast();  // when the guest's counters were read
  // The learning window of the enable that placed the blob (before the first patch): watchpoint
  // hits and the time the guest ran during it. Measured by the guest's ACPI PM timer where the
  // machine has one (`learning_run_guest_clock`: QEMU's virtual clock, which stands still while
  // the VM is stopped), else by tprd from each resume to the next stop it received, which adds
  // the gdbstub's round trips. Either way every stop adds QEMU's own stop and restart to the run,
  // so hits / run time is a lower bound of the rate.
  uint64_t learning_hits = 0;
  absl::Duration learning_run;
  bool learning_run_guest_clock = false;
  bool proving_window_open = false;  // since enable: every candidate keeps its breakpoint
  Discovery discovery = Discovery::kBreakpoints;  // this session's (TrapSet)
  uint64_t candidate_breakpoints = 0;  // breakpoints set on unproven candidates (0: watchpoint)
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
  // `settings`: the session's settings as an enable gives them (the proving window, started
  // afresh for the candidates adopt re-arms; the write stop limit; discovery); its strategy and
  // learning window are not used.
  absl::StatusOr<bool> Adopt(std::optional<Strategy> requested_hint = std::nullopt,
                             const EnableRequest& settings = {});
  // Leaves the guest correct without tprd: strategy word exact, every trap removed. The guest
  // is left running (unless the host paused it). DATA_LOSS: left so, but something went wrong on
  // the way (the message says what: e.g. a CPU that reads its TPR without the low nibble until
  // its next TPR write).
  struct DetachOptions {
    // The host holds the guest paused to copy its state (a save, a migration, a snapshot): no
    // vCPU runs on the way out, because every step ends in QEMU's `debug` run state and a copy
    // that completes there cannot be loaded by QEMU 7.2 (docs/design.md, "Saves and
    // migrations"). Under mmio and exact nothing needs a run: the word says exact, and a hit
    // left pending stays in this QEMU, not in the copy. cr8 still steps its pokes (without them
    // the copy's CPUs read their TPRs without the low nibble).
    bool host_copies_state = false;
  };
  absl::Status Detach(DetachOptions options);
  absl::Status Detach() { return Detach(DetachOptions{}); }
  // Waits up to `timeout` for one guest stop and handles it. The guest must be running.
  absl::StatusOr<std::vector<ManagerEvent>> Poll(absl::Duration timeout);

  std::vector<ManagedSite> Sites() const;
  ManagerStatus Status() const {
    ManagerStatus status = status_;
    status.installed = blob_.installed();
    status.proving_window_open = traps_.proving_window_open();
    status.discovery = traps_.discovery();
    status.candidate_breakpoints = traps_.candidate_breakpoints();
    return status;
  }
  // Rolled-back and candidate sites included. Used by the daemon for ListSites.
  bool HasSite(uint32_t id) const { return sites_.count(id) != 0; }

 private:
  absl::StatusOr<GuestProfile> StopAndProfile();
  static std::string Disassemble(const Site& site);
  // Takes over a blob found in the guest and its site table; returns its strategy word.
  Strategy LoadInstalled(const ParsedBlob& blob);
  absl::Status RecordAdoptedStates(const ParsedBlob& blob);
  // `live`: through GuestVm::ReadPhysicalLive, the guest running (CanReadLive()). `memory_map`,
  // when given, receives the memory map the scan used.
  absl::StatusOr<ScanResult> ScanGuest(const GuestProfile& profile, bool live = false,
                                       std::vector<MemoryRegion>* memory_map = nullptr);
  bool CanReadLive();
  void MergeCandidates(const ScanResult& scan);
  // Learning window; the guest runs during it and is stopped again at the end. Its last reading
  // of the guest's clock is left in finish_learning_clock_, for right after the enable's resume.
  absl::Status Learn(const EnableRequest& request, const GuestProfile& profile,
                     std::set<uint32_t>& proven, size_t& hits);
  // Leaving cr8 for another strategy also gives every CPU's real TPR its shadow back
  // (patch_manager_leave_cr8.cc). The guest must be stopped.
  absl::Status WriteStrategy(Strategy strategy);
  // Leaving cr8, before the word changes: every CPU inside the handlers is stepped out of them
  // (it finishes its CR8 write and shadow store under the cr8 word), and a CPU whose real TPR
  // lost its low nibble and is halted (a step cannot run it) runs alone under cr8 until it wakes
  // (WakeAlone); failing that the guest runs on a moment under cr8, bounded, and is looked at
  // again.
  void PrepareToLeaveCr8();
  enum class WakeResult : uint8_t {
    kWoken,        // back at the instruction after its hlt, awake (in woken_vcpus_)
    kMoved,        // stopped elsewhere (a trap, or interrupted while running): looked at again
    kStillHalted,  // nothing woke it in time, or the backend cannot run one vCPU alone
    kGiveUp,       // the host paused the domain, or it is gone
  };
  // Runs `vcpu` alone (every other vCPU stopped) to a breakpoint after its hlt.
  WakeResult WakeAlone(int vcpu);
  // `note_errors`: a step that fails is the domain's last error (else the caller copes, e.g. a
  // rollback that retries).
  void StepOutOfHandlers(int vcpu, bool note_errors = true);
  // Rollback: every CPU inside the handlers is stepped out of them.
  void StepAllOutOfHandlers();
  bool HaltedWithLostNibble(const VcpuProfile& cpu);
  // The hlt a vCPU stands at (about to halt) or just after (halted: an idle guest's CPUs mostly
  // are). A step of either ends only once an interrupt is pending: QEMU wakes the CPU for it but
  // masks it for the step (measured: 0.6-1 ms on the HAL guest's idle APs; never on a CPU that
  // gets no interrupt).
  struct HltAround {
    bool readable = false;  // the bytes around eip could be read
    bool halted = false;
    bool about_to_halt = false;
  };
  HltAround LookForHlt(int vcpu, uint32_t eip);
  // After the word left cr8: a CPU whose real TPR differs from its shadow (a CR8 write cleared
  // the low nibble) steps the blob's tpr_poke with eax = shadow and interrupts off, every
  // register it had restored after. Skips (and notes) a CPU in user mode, inside the handlers,
  // halted, or whose page tables do not map the poke and the TPR: a step there could fault.
  void PokeRealTpr(const VcpuProfile& cpu);
  absl::Status PlanSites();
  // Applies sites with the guest already stopped; returns how many were applied.
  size_t ApplyStopped(const std::vector<uint32_t>& ids, std::vector<ManagerEvent>* events);
  // Once the proving window has passed: disarms the breakpoints only the window wanted.
  absl::Status EndProvingWindowIfDue(std::vector<ManagerEvent>& events);
  // Every trap removed (traps_); with `step_pending_hits`, every vCPU is stepped first so that
  // no watchpoint hit outlives the watchpoint.
  absl::Status DisarmTraps(bool step_pending_hits = true);
  absl::Status HandleStop(const StopEvent& event, std::vector<ManagerEvent>& events);
  // The work for a trap stop once every vCPU is stopped (no resume).
  absl::Status HandleStopped(const StopEvent& event, std::vector<ManagerEvent>& events);
  // `reported`: QEMU named this vCPU's stop. false: the vCPU was found just after a TPR access
  // at another vCPU's stop (QEMU reports one per stop); fixed only on proof it just ran it.
  // `seen` (optional) says whether the instruction before pc accesses the TPR, and if it writes.
  struct AccessSeen {
    bool decoded = false;
    bool is_write = false;
    // The access is an applied site's original instruction: the CPU ran the patched call.
    bool at_applied_site = false;
  };
  // cr8: a CPU that stands after an applied writer ran the handler, which wrote CR8 (the real
  // TPR is the shadow's high nibble) and the shadow: the shadow stays, whatever hit is reported.
  bool Cr8HandlerWrote(bool at_applied_site, uint8_t real_tpr, uint8_t shadow) const;
  absl::Status HandleWatchpoint(int vcpu, uint32_t pc, std::vector<ManagerEvent>& events,
                                bool reported = true, AccessSeen* seen = nullptr);
  // cr8, SMP: steps a vCPU that stands just after a TPR access the stop did not name, alone, so
  // that QEMU reports (and forgets) its pending watchpoint hit now; a write it proves resyncs
  // the shadow. Without it that vCPU's next TPR access stops late (docs/design.md).
  // `fix`: cr8's shadow and register work after the step; false only consumes the hit.
  // `halted_too`: also a halted CPU (or one about to halt), whose step waits for its next
  // interrupt, up to kHaltedStepTimeout.
  void StepPastUnreportedHit(int vcpu, const AccessSeen& before, std::vector<ManagerEvent>& events,
                             bool fix, bool halted_too = false);
  static constexpr absl::Duration kHaltedStepTimeout = absl::Milliseconds(30);
  // Any other step: one instruction, unless the host starves the vCPU's thread (measured: steps
  // under a load of 7 on 2 cores; docs/design.md).
  static constexpr absl::Duration kStepTimeout = absl::Seconds(2);
  // cr8: every other vCPU that stands just after a TPR read it evidently ran gets its fix-up.
  // Every other vCPU that stands just after a TPR access is stepped (StepPastUnreportedHit):
  // QEMU 7.2 frees a watchpoint without clearing a vCPU's pending hit on it, so no hit may be
  // left pending when a watchpoint is removed, nor when the next access must stop on time.
  // `learning`: the learning window's own watchpoint, nothing to fix.
  void FixUpUnreportedAccesses(std::optional<int> reported_vcpu, std::vector<ManagerEvent>& events,
                               bool learning = false);
  // Steps every vCPU once (StepPastUnreportedHit), halted ones included: a hit left pending by a
  // stop that did not report it (the learning window's stops step no one; a killed tprd's
  // session; a hit pending when the guest was reset, which QEMU's CPU reset keeps) is reported
  // and forgotten now, not at that vCPU's next access to the APIC page, which would then stop
  // at the end of its translation block, after the value was used (docs/design.md, ciJ).
  void ConsumePendingHits(std::vector<ManagerEvent>& events, bool fix);
  // mmio: the write watchpoint stopped a vCPU after a TPR write no handler made. Patches it if it
  // is a candidate; counts it (too many a second: exact). The shadows are resynced by AfterStop.
  absl::Status HandleUnpatchedWrite(int vcpu, uint32_t pc, std::vector<ManagerEvent>& events);
  // mmio with its write watchpoint: every enabled CPU's shadow set from its real TPR. Safe at any
  // instruction boundary because the handlers store the real TPR before the shadow.
  void ResyncShadowsFromRealTpr();
  // The work every stop needs before the guest runs again, whoever made the stop.
  void AfterStop(std::optional<int> reported_vcpu, std::vector<ManagerEvent>& events);
  // mmio's second mapping of the APIC page: kept if the blob's write address still maps the
  // APIC, else made (a free entry of the TPR's page table) and the blob pointed at it. The guest
  // must be stopped. FAILED_PRECONDITION when no alias can be made: mmio is then unsound.
  absl::Status EnsureTprAlias();
  // While the guest runs: the alias's page table entry must still be tprd's. If the guest's OS
  // took it, the handlers are pointed back at the TPR and the domain goes to exact.
  void CheckTprAlias(std::vector<ManagerEvent>& events);
  // After a stop: patch candidates at which a stopped vCPU stands (they are about to run).
  void ApplyCandidatesAtVcpus(std::vector<ManagerEvent>& events);
  std::optional<uint32_t> SiteAt(uint32_t address) const;
  // Reads guest code as it was before tprd patched it: a vCPU stopped just after a site may have
  // run the original instruction before the site was patched (a hit that raced with the patch).
  // An armed candidate reads as its original bytes too (under KVM its breakpoint is an int3).
  // `substituted` (optional) is set when original bytes were used.
  GuestByteReader OriginalCodeReader(int vcpu, bool* substituted = nullptr);
  absl::Status SwitchToExact(const std::string& why, std::vector<ManagerEvent>& events);
  // While the guest runs (about once a second, without stopping it): reads the guest's strategy
  // word and guard counters, so the status says what the guest does. A flip of mmio to exact by
  // the guest's guard is reported once and sticks until the operator enables again.
  void WatchGuestWord(std::vector<ManagerEvent>& events);
  // Part of WatchGuestWord: the guest's per-CPU access counters into the status (differences
  // since the last read, so their u32 wraps are harmless while tprd reads once a second).
  void ReadGuestCounters();
  // Ends a stop (the guest runs again), noting a failure in the status's last error.
  absl::Status ResumeGuest(StoppedGuestScope& stopped);
  // Ends a DeferSync: the journal's owed fsync now (its failure is the manager's last error).
  void SyncJournal();
  // vm_.Stop(), then the fix-ups of a cr8 watchpoint hit that raced with the stop: its stop
  // reply is kept by the backend and delivered after tprd's own work resumed the guest, too
  // late to fix anything, so every tprd-initiated stop looks at every vCPU first.
  absl::Status StopGuest();
  void NoteError(const absl::Status& status);

  GuestVm& vm_;
  PatchRecorder& journal_;
  Clock& clock_;

  std::optional<GuestProfile> profile_;
  absl::Time stopped_at_;  // when tprd's latest stop of the guest began (EnableReport::stop)
  // Set by Learn, run by Enable once the guest runs again (status_.learning_run).
  std::function<void()> finish_learning_clock_;
  BlobInstallation blob_;
  std::map<uint32_t, ManagedSite> sites_;  // by id
  uint32_t next_id_ = 0;
  TrapSet traps_;
  // False while a stop of tprd's own (a rollback's, a detach's) handles a raced hit: no site is
  // patched behind the caller's back.
  bool apply_at_stops_ = true;
  // PrepareToLeaveCr8 runs (it may let the guest run a moment and handle a stop meanwhile): a
  // switch to exact asked for at such a stop is left to it, which is leaving cr8 already.
  bool leaving_cr8_ = false;
  // vCPUs WakeAlone saw wake since the guest last ran as a whole: they stand after their hlt,
  // which LookForHlt would take for halted.
  std::set<int> woken_vcpus_;
  std::map<int, std::string> wake_notes_;  // what WakeAlone last saw, per vCPU
  // mmio's alias: where its page table entry is and what it holds (nullopt: none known).
  struct AliasEntry {
    uint32_t va = 0;
    uint64_t entry_pa = 0;
    uint64_t entry = 0;
    int entry_size = 4;
  };
  std::optional<AliasEntry> alias_;
  absl::Time write_stop_window_start_ = absl::InfinitePast();
  int write_stops_in_window_ = 0;
  EnableRequest request_;
  uint64_t unfixable_reads_ = 0;
  std::optional<absl::Time> next_word_check_;
  std::vector<PerCpuStats> counters_seen_;  // the guest's counters as last read, per CPU
  // The guest's guard found a stale shadow under mmio in this boot (its mismatch counters, kept
  // in guest memory): mmio stays off until the operator asks for it again.
  bool guard_rejected_mmio_ = false;
  ManagerStatus status_;
};

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_PATCH_MANAGER_H_

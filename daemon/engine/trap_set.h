// The traps one patching session keeps in a guest after enable or adopt: an execution breakpoint
// on each unproven candidate it still wants (none under Discovery::kWatchpoint), one watchpoint on
// the TPR (cr8: every access, to fix unpatched reads up; mmio: writes, to resync the shadows), and
// the proving window that bounds how long candidates that never run keep their breakpoints
// (docs/design.md "the proving window"). It arms and disarms and remembers what is armed; what to
// do when the guest stops at a trap, and what must happen before a watchpoint goes, is
// PatchManager's. The learning window's own watchpoint is not one of these: Learn sets and removes
// it itself.
//
// Breakpoints and watchpoints are set and removed with the guest stopped. Not thread-safe: one
// owner (PatchManager) calls everything.
#ifndef TPRD_DAEMON_ENGINE_TRAP_SET_H_
#define TPRD_DAEMON_ENGINE_TRAP_SET_H_

#include <cstdint>
#include <map>
#include <optional>
#include <set>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "daemon/engine/clock.h"
#include "daemon/engine/guest_profile.h"
#include "daemon/engine/guest_vm.h"
#include "daemon/engine/managed_site.h"
#include "daemon/engine/site.h"

namespace tprd::engine {

class TrapSet {
 public:
  TrapSet(GuestVm& vm, Clock& clock) : vm_(vm), clock_(clock) {}

  // Under kWatchpoint no candidate ever gets a breakpoint. Set before the first Arm.
  void set_discovery(Discovery discovery) { discovery_ = discovery; }
  Discovery discovery() const { return discovery_; }
  // Execution breakpoints set on unproven candidates since this set was made (0 under
  // kWatchpoint): what the tests check, and what `tprctl status` shows.
  uint64_t candidate_breakpoints() const { return candidate_breakpoints_; }

  // Whether a candidate's breakpoint is still wanted: only while the proving window is open
  // (under either strategy), never under discovery = watchpoint.
  bool WantsBreakpoint(const ManagedSite& managed) const;
  // A breakpoint on every wanted candidate of `sites` that has none (one that cannot be set is
  // the site's note), then the TPR watchpoint `strategy` needs, if none is armed and the guest's
  // profile says where the TPR is. `mmio_alias`: mmio's handlers store through their second
  // mapping of the APIC page (without it every patched write would stop the guest).
  absl::Status Arm(std::map<uint32_t, ManagedSite>& sites, Strategy strategy,
                   const std::optional<GuestProfile>& profile, bool mmio_alias);
  // Removes the breakpoint of `managed`, which the caller knows is armed; a failure to remove it
  // is ignored (the guest may have lost it already).
  void RemoveBreakpoint(ManagedSite& managed);
  // Removes every breakpoint this set armed, then the TPR watchpoint (when `profile` says where
  // it is). Returns the first failure; what is armed is forgotten either way.
  absl::Status RemoveAll(std::map<uint32_t, ManagedSite>& sites,
                         const std::optional<GuestProfile>& profile);
  // Removes the TPR watchpoint, which the caller knows is armed (watch_armed()); forgotten even
  // when the removal fails.
  absl::Status RemoveWatchpoint(uint32_t tpr_va);

  bool HasBreakpointAt(uint32_t address) const { return breakpoints_.count(address) != 0; }
  bool watch_armed() const { return watch_armed_; }
  // cr8's access watchpoint is armed: an unpatched read is fixed up to the shadow (also while
  // leaving cr8, until the watchpoint goes: a real TPR the poke skipped is wrong).
  bool WatchesAccesses() const { return watch_armed_ && watch_kind_ == WatchKind::kAccess; }
  // mmio's write watchpoint is armed: after an unpatched write the shadows follow the real TPR.
  bool WatchesWrites() const { return watch_armed_ && watch_kind_ == WatchKind::kWrite; }

  // From now until `length` has passed every unproven candidate keeps its breakpoint.
  void OpenProvingWindow(absl::Duration length) { proving_deadline_ = clock_.Now() + length; }
  // Closes the proving window once its deadline has passed; true when it closed now.
  bool CloseProvingWindowIfDue();
  bool proving_window_open() const { return proving_deadline_.has_value(); }
  // nullopt: over, or not started.
  std::optional<absl::Time> proving_deadline() const { return proving_deadline_; }

 private:
  GuestVm& vm_;
  Clock& clock_;
  std::set<uint32_t> breakpoints_;  // addresses of the breakpoints this set armed
  bool watch_armed_ = false;
  WatchKind watch_kind_ = WatchKind::kAccess;  // cr8: access; mmio: write
  std::optional<absl::Time> proving_deadline_;
  Discovery discovery_ = Discovery::kBreakpoints;
  uint64_t candidate_breakpoints_ = 0;
};

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_TRAP_SET_H_

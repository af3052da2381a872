#include "daemon/engine/trap_set.h"

#include "absl/strings/str_cat.h"
#include "daemon/engine/status_macros.h"

namespace tprd::engine {

bool TrapSet::WantsBreakpoint(const ManagedSite& managed) const {
  const Site& site = managed.site;
  if (site.state == SiteState::kApplied || site.state == SiteState::kRolledBack) return false;
  // Never on bytes not proven to be code: under KVM the breakpoint is an int3 in guest memory,
  // and a candidate may be data that merely looks like a TPR access.
  if (discovery_ == Discovery::kWatchpoint) return false;
  // A site that can never be patched gains nothing from a breakpoint: both strategies keep a
  // TPR watchpoint that sees it run (cr8 fixes it up, mmio resyncs the shadows).
  if (CannotPatch(managed)) return false;
  // After the proving window neither strategy keeps one (a breakpoint slows its whole page under
  // TCG): a candidate that runs late is seen by the TPR watchpoint, made correct at that stop and
  // patched, as under discovery = watchpoint. mmio's write watchpoint proves a late writer, and
  // its readers are correct unpatched; cr8's access watchpoint sees every late access. Until
  // 2026-12-07 cr8 kept them all (docs/design.md "the proving window").
  return proving_deadline_.has_value();
}

absl::Status TrapSet::Arm(std::map<uint32_t, ManagedSite>& sites, Strategy strategy,
                          const std::optional<GuestProfile>& profile, bool mmio_alias) {
  // Every breakpoint in one exchange (the gdbstub's answers pipelined): one round trip, not one
  // each (issue 15: 50 of them were the largest part of the HAL guest's enable stop).
  std::vector<ManagedSite*> wanted;
  std::vector<uint32_t> addresses;
  for (auto& [id, managed] : sites) {
    if (!WantsBreakpoint(managed) || managed.armed) continue;
    wanted.push_back(&managed);
    addresses.push_back(managed.site.address);
  }
  absl::StatusOr<std::vector<absl::Status>> set =
      addresses.empty() ? std::vector<absl::Status>{} : vm_.SetBreakpoints(addresses);
  for (size_t k = 0; k < wanted.size(); ++k) {
    ManagedSite& managed = *wanted[k];
    const absl::Status& s = set.ok() ? (*set)[k] : set.status();
    if (!s.ok()) {
      managed.note = absl::StrCat("breakpoint not set: ", s.message());
      continue;
    }
    managed.armed = true;
    breakpoints_.insert(managed.site.address);
    ++candidate_breakpoints_;
  }
  if (!watch_armed_ && profile) {
    // cr8: every access (reads need fix-ups). mmio: writes only, and only once the handlers
    // store through the alias; else every patched write would stop the guest.
    std::optional<WatchKind> kind;
    if (strategy == Strategy::kCr8) kind = WatchKind::kAccess;
    if (strategy == Strategy::kMmio && mmio_alias) kind = WatchKind::kWrite;
    if (kind) {
      TPRD_RETURN_IF_ERROR(vm_.SetWatchpoint(profile->tpr_va, 4, *kind));
      watch_armed_ = true;
      watch_kind_ = *kind;
    }
  }
  return absl::OkStatus();
}

void TrapSet::RemoveBreakpoint(ManagedSite& managed) {
  (void)vm_.RemoveBreakpoint(managed.site.address);
  breakpoints_.erase(managed.site.address);
  managed.armed = false;
}

absl::Status TrapSet::RemoveAll(std::map<uint32_t, ManagedSite>& sites,
                                const std::optional<GuestProfile>& profile) {
  absl::Status first = absl::OkStatus();
  for (uint32_t address : breakpoints_) {
    absl::Status s = vm_.RemoveBreakpoint(address);
    if (first.ok()) first = s;
  }
  breakpoints_.clear();
  for (auto& [id, managed] : sites) managed.armed = false;
  if (watch_armed_ && profile) {
    absl::Status s = RemoveWatchpoint(profile->tpr_va);
    if (first.ok()) first = s;
  }
  return first;
}

absl::Status TrapSet::RemoveWatchpoint(uint32_t tpr_va) {
  absl::Status s = vm_.RemoveWatchpoint(tpr_va, 4, watch_kind_);
  watch_armed_ = false;
  return s;
}

bool TrapSet::CloseProvingWindowIfDue() {
  if (!proving_deadline_ || clock_.Now() < *proving_deadline_) return false;
  proving_deadline_.reset();
  return true;
}

}  // namespace tprd::engine

// Whether libvirt has caught up with the guest's latest stop. libvirt learns of every QEMU stop
// (a gdbstub trap or interrupt, an operator's `stop`) from QEMU's STOP event, some time after the
// stop, and sends its SUSPENDED lifecycle event once it has recorded the pause. Until then it
// still reports the domain "running" (or the pause before the last run), and an operator's
// `virsh suspend` in that gap is recorded as the user's pause of the very stop tprd holds: tprd
// read "running" and resumed, undoing a suspend libvirt had reported as done (ciQq,
// 2026-12-07). So before tprd decides from libvirt's state whether it may resume, it waits
// (bounded) for the SUSPENDED event that follows its latest run. Pure: no libvirt, no clock.
#ifndef TPRD_KVM_BACKEND_CORE_LIBVIRT_PAUSE_TRACKER_H_
#define TPRD_KVM_BACKEND_CORE_LIBVIRT_PAUSE_TRACKER_H_

#include <cstdint>
#include <optional>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tprd::backend {

class LibvirtPauseTracker {
 public:
  // The guest is about to run (a continue, a step, or the attach's stop of a running guest):
  // the stop that ends the run is libvirt's to report.
  void WillRun();
  // libvirt reported a pause (any SUSPENDED event of the domain); from its event thread.
  void OnPauseReported();
  // The domain is gone: nobody will report anything; wakes a waiter.
  void OnGone();
  // Waits until libvirt reported a pause after the last WillRun(), at most `timeout`.
  // True when it did (or nothing was awaited); false when it did not in time. The answer holds
  // until the next WillRun(): later calls return it at once. A stop libvirt never reported
  // (its events lost while libvirtd restarted) is one whose pause reason libvirt guessed when it
  // reconnected (QEMU's "paused" reads as the user's): the caller must not trust "user" then.
  bool WaitCaughtUp(absl::Duration timeout);
  // libvirt's state shows it handled the stop (paused for no reason of its own): settled as
  // reported, without waiting for the event.
  void MarkCaughtUp();
  // tprd's libvirt connection was lost (libvirtd restarting); from the connection's thread.
  void OnConnectionLost();
  // Whether the connection was lost since the last WillRun(): only then can libvirt have guessed
  // the reason of a pause it never saw happen (a late event under load is not a restart, and an
  // operator's suspend it reported late must hold: ciE 2026-12-07).
  bool ConnectionLostSinceRun();

 private:
  absl::Mutex mu_;
  uint64_t pauses_reported_ ABSL_GUARDED_BY(mu_) = 0;
  std::optional<uint64_t> awaiting_after_ ABSL_GUARDED_BY(mu_);  // pauses_reported_ at WillRun
  bool unreported_ ABSL_GUARDED_BY(mu_) = false;  // the last awaited pause did not come
  bool gone_ ABSL_GUARDED_BY(mu_) = false;
  bool connection_lost_since_run_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_CORE_LIBVIRT_PAUSE_TRACKER_H_

#include "kvm-backend/core/libvirt_pause_tracker.h"

namespace tprd::backend {

void LibvirtPauseTracker::WillRun() {
  absl::MutexLock lock(&mu_);
  awaiting_after_ = pauses_reported_;
  unreported_ = false;
  connection_lost_since_run_ = false;
}

void LibvirtPauseTracker::OnConnectionLost() {
  absl::MutexLock lock(&mu_);
  connection_lost_since_run_ = true;
}

bool LibvirtPauseTracker::ConnectionLostSinceRun() {
  absl::MutexLock lock(&mu_);
  return connection_lost_since_run_;
}

void LibvirtPauseTracker::OnPauseReported() {
  absl::MutexLock lock(&mu_);
  ++pauses_reported_;
}

void LibvirtPauseTracker::OnGone() {
  absl::MutexLock lock(&mu_);
  gone_ = true;
}

void LibvirtPauseTracker::MarkCaughtUp() {
  absl::MutexLock lock(&mu_);
  awaiting_after_.reset();
  unreported_ = false;
}

bool LibvirtPauseTracker::WaitCaughtUp(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  if (!awaiting_after_) return !unreported_;
  const uint64_t after = *awaiting_after_;
  const auto caught_up = [this, after]() ABSL_SHARED_LOCKS_REQUIRED(mu_) {
    return gone_ || pauses_reported_ != after;
  };
  const bool done = mu_.AwaitWithTimeout(absl::Condition(&caught_up), timeout);
  awaiting_after_.reset();
  unreported_ = !done;
  return done;
}

}  // namespace tprd::backend

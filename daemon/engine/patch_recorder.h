// Where a transaction records each site's state as it moves: the guest's own site table (the
// truth that survives the daemon) and the daemon's journal (audit, crash recovery).
#ifndef TPRD_DAEMON_ENGINE_PATCH_RECORDER_H_
#define TPRD_DAEMON_ENGINE_PATCH_RECORDER_H_

#include "absl/status/status.h"
#include "absl/types/span.h"
#include "daemon/engine/site.h"

namespace tprd::engine {

class PatchRecorder {
 public:
  virtual ~PatchRecorder() = default;
  // Called with the site's new state before the guest bytes change (kPending) and after the
  // change was read back (kApplied / kRolledBack). An error aborts the transaction before any
  // further guest write.
  virtual absl::Status RecordSite(const Site& site) = 0;
  // Several sites' current states at once (a snapshot, not a transition). A recorder that can
  // make them durable together (one fsync) overrides this.
  virtual absl::Status RecordSites(absl::Span<const Site> sites) {
    for (const Site& site : sites) {
      if (absl::Status s = RecordSite(site); !s.ok()) return s;
    }
    return absl::OkStatus();
  }
  // While tprd holds the guest stopped, a durable recorder may write its records at once and
  // make them durable after the guest runs again (Sync): the journal's fsyncs then cost the
  // guest nothing. Safe because the records are written before the guest bytes change, and a
  // killed tprd does not undo a write (the kernel keeps it); only a host crash could lose one,
  // and that takes the guest's memory with it.
  virtual void DeferSync(bool defer) { (void)defer; }
  // Makes the records written while deferring durable. OK when nothing is owed.
  virtual absl::Status Sync() { return absl::OkStatus(); }
};

// Records nothing: for callers that keep no journal (tests, report-only runs).
class NullPatchRecorder : public PatchRecorder {
 public:
  absl::Status RecordSite(const Site&) override { return absl::OkStatus(); }
};

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_PATCH_RECORDER_H_

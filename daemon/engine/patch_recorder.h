// Where a transaction records each site's state as it moves: the guest's own site table (the
// truth that survives the daemon) and the daemon's journal (audit, crash recovery).
#ifndef TPRD_DAEMON_ENGINE_PATCH_RECORDER_H_
#define TPRD_DAEMON_ENGINE_PATCH_RECORDER_H_

#include "absl/status/status.h"
#include "daemon/engine/site.h"

namespace tprd::engine {

class PatchRecorder {
 public:
  virtual ~PatchRecorder() = default;
  // Called with the site's new state before the guest bytes change (kPending) and after the
  // change was read back (kApplied / kRolledBack). An error aborts the transaction before any
  // further guest write.
  virtual absl::Status RecordSite(const Site& site) = 0;
};

// Records nothing: for callers that keep no journal (tests, report-only runs).
class NullPatchRecorder : public PatchRecorder {
 public:
  absl::Status RecordSite(const Site&) override { return absl::OkStatus(); }
};

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_PATCH_RECORDER_H_

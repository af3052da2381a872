// A PatchRecorder that keeps every site state it is told, in order: for engine tests that check
// what a transaction recorded.
#ifndef TPRD_TESTS_FAKES_RECORDING_JOURNAL_H_
#define TPRD_TESTS_FAKES_RECORDING_JOURNAL_H_

#include <functional>
#include <vector>

#include "daemon/engine/patch_recorder.h"

namespace tprd::testing {

class RecordingJournal : public engine::PatchRecorder {
 public:
  absl::Status RecordSite(const engine::Site& site) override {
    records.push_back(site);
    deferred.push_back(defer_sync_);
    sync_owed_ = sync_owed_ || defer_sync_;
    return absl::OkStatus();
  }
  void DeferSync(bool defer) override { defer_sync_ = defer; }
  absl::Status Sync() override {
    if (!sync_owed_) return absl::OkStatus();
    sync_owed_ = false;
    ++syncs;
    if (on_sync) on_sync();
    return absl::OkStatus();
  }
  std::vector<engine::Site> records;
  std::vector<bool> deferred;  // per record: made while its fsync was deferred
  int syncs = 0;               // Syncs that made deferred records durable
  std::function<void()> on_sync;

 private:
  bool defer_sync_ = false;
  bool sync_owed_ = false;
};

}  // namespace tprd::testing

#endif  // TPRD_TESTS_FAKES_RECORDING_JOURNAL_H_

// A PatchRecorder that keeps every site state it is told, in order: for engine tests that check
// what a transaction recorded.
#ifndef TPRD_TESTS_FAKES_RECORDING_JOURNAL_H_
#define TPRD_TESTS_FAKES_RECORDING_JOURNAL_H_

#include <vector>

#include "daemon/engine/patch_recorder.h"

namespace tprd::testing {

class RecordingJournal : public engine::PatchRecorder {
 public:
  absl::Status RecordSite(const engine::Site& site) override {
    records.push_back(site);
    return absl::OkStatus();
  }
  std::vector<engine::Site> records;
};

}  // namespace tprd::testing

#endif  // TPRD_TESTS_FAKES_RECORDING_JOURNAL_H_

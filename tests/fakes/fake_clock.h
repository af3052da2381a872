// A clock tests move by hand.
#ifndef TPRD_TESTS_FAKES_FAKE_CLOCK_H_
#define TPRD_TESTS_FAKES_FAKE_CLOCK_H_

#include "daemon/engine/clock.h"

namespace tprd::testing {

class FakeClock : public engine::Clock {
 public:
  absl::Time Now() override { return now_; }
  void SleepFor(absl::Duration d) override { now_ += d; }
  void Advance(absl::Duration d) { now_ += d; }

 private:
  absl::Time now_ = absl::UnixEpoch() + absl::Hours(24);
};

}  // namespace tprd::testing

#endif  // TPRD_TESTS_FAKES_FAKE_CLOCK_H_

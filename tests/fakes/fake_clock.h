// A clock tests move by hand.
#ifndef TPRD_TESTS_FAKES_FAKE_CLOCK_H_
#define TPRD_TESTS_FAKES_FAKE_CLOCK_H_

#include <functional>
#include <utility>

#include "daemon/engine/clock.h"

namespace tprd::testing {

class FakeClock : public engine::Clock {
 public:
  absl::Time Now() override { return now_; }
  void SleepFor(absl::Duration d) override {
    now_ += d;
    if (on_sleep_) on_sleep_();
  }
  void Advance(absl::Duration d) { now_ += d; }
  // Runs after every SleepFor: what the guest did while the code under test waited.
  void OnSleep(std::function<void()> hook) { on_sleep_ = std::move(hook); }

 private:
  std::function<void()> on_sleep_;
  absl::Time now_ = absl::UnixEpoch() + absl::Hours(24);
};

}  // namespace tprd::testing

#endif  // TPRD_TESTS_FAKES_FAKE_CLOCK_H_

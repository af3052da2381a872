// Time, behind an interface so the engine's time-bounded steps (the learning window) run
// against a fake clock in tests.
#ifndef TPRD_DAEMON_ENGINE_CLOCK_H_
#define TPRD_DAEMON_ENGINE_CLOCK_H_

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tprd::engine {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual absl::Time Now() = 0;
  // Waits `d` (a fake moves its time instead).
  virtual void SleepFor(absl::Duration d) = 0;
};

class RealClock : public Clock {
 public:
  absl::Time Now() override { return absl::Now(); }
  void SleepFor(absl::Duration d) override { absl::SleepFor(d); }
};

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_CLOCK_H_

// TPR access counts of one domain's session and the rates made from them (docs/design.md
// "Rates and metrics"). Pure: the caller hands in each sample with the time it was taken.
#ifndef TPRD_DAEMON_DOMAIN_ACCESS_RATES_H_
#define TPRD_DAEMON_DOMAIN_ACCESS_RATES_H_

#include <array>
#include <cstdint>
#include <optional>

#include "absl/time/time.h"

namespace tprd::daemon {

// Cumulative counts at one moment.
struct AccessCounts {
  absl::Time at;
  uint64_t without_apic = 0;  // the handlers served them without the APIC's MMIO register
  uint64_t to_apic = 0;       // reached the APIC: by the handlers, or unpatched and seen
  uint64_t trap_stops = 0;    // guest stops tprd handled
};

struct AccessRates {
  double without_apic_per_second = 0;
  double to_apic_per_second = 0;
  double trap_stops_per_second = 0;
};

// Rates over the last interval of at least `min_interval` between two samples. Counts that go
// down (a new session counting afresh) start a new baseline.
class AccessRateMeter {
 public:
  explicit AccessRateMeter(absl::Duration min_interval = absl::Seconds(1))
      : min_interval_(min_interval) {}

  void Add(const AccessCounts& counts);
  // nullopt until two samples at least min_interval apart were added.
  const std::optional<AccessRates>& rates() const { return rates_; }

 private:
  absl::Duration min_interval_;
  std::optional<AccessCounts> base_;
  std::optional<AccessRates> rates_;
};

// The enable's install-and-apply pause (engine::EnableReport::pause) of every enable of the
// session that changed the guest, for a Prometheus histogram.
struct PauseHistogram {
  // Upper bounds in seconds; counts[i] holds the pauses in (bounds[i-1], bounds[i]], and
  // counts.back() those above the last bound.
  static constexpr std::array<double, 8> kBounds = {0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5};
  std::array<uint64_t, kBounds.size() + 1> counts{};
  double sum_seconds = 0;
  uint64_t count = 0;

  // Inline: the test fakes (linked before the daemon library) record pauses too.
  void Add(absl::Duration pause) {
    const double seconds = absl::ToDoubleSeconds(pause);
    size_t bucket = 0;
    while (bucket < kBounds.size() && seconds > kBounds[bucket]) ++bucket;
    ++counts[bucket];
    sum_seconds += seconds;
    ++count;
  }
};

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_DOMAIN_ACCESS_RATES_H_

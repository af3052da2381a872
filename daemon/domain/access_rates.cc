#include "daemon/domain/access_rates.h"

namespace tprd::daemon {

void AccessRateMeter::Add(const AccessCounts& counts) {
  if (base_ && (counts.without_apic < base_->without_apic || counts.to_apic < base_->to_apic ||
                counts.trap_stops < base_->trap_stops || counts.at < base_->at)) {
    base_.reset();
    rates_.reset();
  }
  if (!base_) {
    base_ = counts;
    return;
  }
  const absl::Duration interval = counts.at - base_->at;
  if (interval < min_interval_) return;
  const double seconds = absl::ToDoubleSeconds(interval);
  rates_ = AccessRates{
      static_cast<double>(counts.without_apic - base_->without_apic) / seconds,
      static_cast<double>(counts.to_apic - base_->to_apic) / seconds,
      static_cast<double>(counts.trap_stops - base_->trap_stops) / seconds,
  };
  base_ = counts;
}

}  // namespace tprd::daemon

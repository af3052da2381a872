// Prometheus text exposition (format 0.0.4) of tprd's running domains: what GetMetrics answers,
// `tprctl metrics` prints and metrics_textfile holds. Names after Prometheus' conventions:
// counters end in _total, every family has a `domain` label (the libvirt name), sites by state
// are gauges, the enable's pause is a histogram. docs/usage.md lists every family.
#ifndef TPRD_DAEMON_METRICS_EXPOSITION_H_
#define TPRD_DAEMON_METRICS_EXPOSITION_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "daemon/actor/domain_actor.h"

namespace tprd::daemon {

// A label value as the format wants it: backslash, double quote and line feed escaped (`\\`,
// `\"`, `\n`); everything else as it is.
std::string EscapeLabelValue(absl::string_view value);

// Every family, with a sample per running domain in `domains` (others are left out).
std::string MetricsText(const std::vector<DomainSnapshot>& domains);

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_METRICS_EXPOSITION_H_

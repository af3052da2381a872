// The operator's intent for a domain: "keep this guest patched, with this strategy", kept in the
// domain's libvirt metadata so that it survives a reboot of the guest, a restart of tprd and a
// migration (docs/design.md, "The operator's intent"). One element in tprd's namespace:
//
//   <tprd:intent xmlns:tprd="https://github.com/tprd/tprd/intent/1" strategy="mmio"
//                discovery_budget_ms="10000"/>
//
// libvirt hands it back without its prefix (`<intent strategy="mmio"/>`). Operators may also
// write it by hand into the domain XML (docs/usage.md), so ParseIntentXml trusts nothing.
#ifndef TPRD_DAEMON_DOMAIN_INTENT_H_
#define TPRD_DAEMON_DOMAIN_INTENT_H_

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/domain/domain_controller.h"

namespace tprd::daemon {

// The namespace's trailing number is the element's version: a later incompatible form gets a
// new URI, and this tprd does not see it (libvirt looks metadata up by URI).
inline constexpr char kIntentNamespace[] = "https://github.com/tprd/tprd/intent/1";
inline constexpr char kIntentPrefix[] = "tprd";
// Longer metadata is refused unread: the element is a few dozen bytes.
inline constexpr size_t kMaxIntentXml = 4096;
inline constexpr uint32_t kMaxIntentBudgetMs = 86'400'000;  // tprctl's --budget bound

struct Intent {
  RequestedStrategy strategy = RequestedStrategy::kAuto;
  // The discovery budget asked for; zero: the daemon's default.
  absl::Duration discovery_budget = absl::ZeroDuration();

  bool operator==(const Intent&) const = default;
};

// "auto", "mmio", "cr8", "exact".
const char* RequestedStrategyWord(RequestedStrategy strategy);

// The element, without namespace or prefix (libvirt adds both from its key and URI).
std::string IntentToXml(const Intent& intent);

// The element as libvirt returns it (or as written by hand). INVALID_ARGUMENT, with a message
// that quotes at most a short escaped excerpt, for anything but one empty `intent` element with
// a known `strategy` and an optional `discovery_budget_ms`; namespace declarations are ignored.
absl::StatusOr<Intent> ParseIntentXml(std::string_view xml);

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_DOMAIN_INTENT_H_

// tprd's state for one domain (shared/design/style.md, Firecracker), as the domain's actor keeps
// it and readers see it. The state gates nothing by itself: the actor's command table
// (daemon/actor/actor_command.h) says which command may run in which state, and DomainActor
// checks that table before a command's body runs.
#ifndef TPRD_DAEMON_DOMAIN_DOMAIN_STATE_H_
#define TPRD_DAEMON_DOMAIN_DOMAIN_STATE_H_

#include <cstdint>

namespace tprd::daemon {

enum class DomainState : uint8_t {
  kUnpatched,       // running, nothing of ours in it
  kPatching,        // an enable is running
  kPatched,         // patched; the actor keeps it correct
  kExactWhileAway,  // patched but switched to exact: tprd detached (or is stopping)
  kGone,            // not running; its patches went with its memory
};
// For tables indexed by state (daemon/actor/actor_command.h).
inline constexpr int kDomainStateCount = static_cast<int>(DomainState::kGone) + 1;

inline const char* DomainStateName(DomainState state) {
  switch (state) {
    case DomainState::kUnpatched:
      return "unpatched";
    case DomainState::kPatching:
      return "patching";
    case DomainState::kPatched:
      return "patched";
    case DomainState::kExactWhileAway:
      return "exact-while-away";
    case DomainState::kGone:
      return "gone";
  }
  return "unknown";
}

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_DOMAIN_DOMAIN_STATE_H_

// tprd's state for one domain (shared/design/style.md, Firecracker): it gates which commands are
// legal.
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

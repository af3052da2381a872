// The daemon's view of the hypervisor's domain list and lifecycle, and the door to a domain's
// patching session. The real one adapts kvm-backend's LibvirtConnection; tests fake it.
#ifndef TPRD_DAEMON_DOMAIN_HYPERVISOR_H_
#define TPRD_DAEMON_DOMAIN_HYPERVISOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/domain/domain_controller.h"
#include "daemon/engine/patch_recorder.h"

namespace tprd::daemon {

struct DomainInfo {
  std::string name;
  std::string uuid;  // lower-case, with dashes
  int id = -1;       // libvirt ID while running, else -1
  bool running = false;
  // Paused by libvirt for a reason of its own (a save's, a migration's or a snapshot's copy, a
  // revert, an operator's suspend), not a stop of QEMU's own such as a gdbstub stop.
  bool held_paused = false;
};

enum class LifecycleKind : uint8_t {
  kStarted,
  kShutdown,
  kDestroyed,
  kCrashed,
  kRebooted,
  kMigrated,  // migrated away: the target's daemon adopts
  kSaved,     // stopped by a save or managedsave: its memory (tprd's blob in it) is in the image
  kResumed,   // running again after a pause (tprd's own stops resume it too: filter early)
  kReverted,  // running again on a snapshot's memory: what tprd knew of the guest is untrue
  // running here after a migration: it arrived (this host is the target), or the migration
  // failed and the source runs on. Handled as a start: its memory may hold tprd's blob.
  kArrived,
};
inline const char* LifecycleName(LifecycleKind kind) {
  switch (kind) {
    case LifecycleKind::kStarted:
      return "started";
    case LifecycleKind::kShutdown:
      return "shutdown";
    case LifecycleKind::kDestroyed:
      return "destroyed";
    case LifecycleKind::kCrashed:
      return "crashed";
    case LifecycleKind::kRebooted:
      return "rebooted";
    case LifecycleKind::kMigrated:
      return "migrated";
    case LifecycleKind::kSaved:
      return "saved";
    case LifecycleKind::kResumed:
      return "resumed";
    case LifecycleKind::kReverted:
      return "reverted to a snapshot";
    case LifecycleKind::kArrived:
      return "running here after a migration";
  }
  return "unknown";
}

struct LifecycleEvent {
  DomainInfo domain;
  LifecycleKind kind = LifecycleKind::kStarted;
  // kStarted from a saved state (a restore, a managedsave start): libvirt reports that start's
  // first resume as FROM_SNAPSHOT, i.e. as kReverted, though nothing was loaded after the start.
  bool from_saved_state = false;
};

class Hypervisor {
 public:
  virtual ~Hypervisor() = default;

  // Every defined domain. UNAVAILABLE when the hypervisor cannot be reached.
  virtual absl::StatusOr<std::vector<DomainInfo>> ListDomains() = 0;

  // By name, UUID or numeric ID. NOT_FOUND when no domain matches.
  virtual absl::StatusOr<DomainInfo> LookupDomain(const std::string& reference) = 0;

  // Opens a patching session for a running domain. `recorder` outlives the controller; the
  // controller reports every site state change to it before and after each guest write.
  virtual absl::StatusOr<std::unique_ptr<DomainController>> OpenController(
      const DomainInfo& domain, engine::PatchRecorder* recorder) = 0;

  // The operator's intent (daemon/domain/intent.h) in the domain's metadata, as the text of its
  // element; nullopt when the domain has none. The caller parses it: anyone who may edit the
  // domain may have written it. NOT_FOUND unknown domain, UNAVAILABLE hypervisor unreachable.
  virtual absl::StatusOr<std::optional<std::string>> ReadIntentXml(const std::string& uuid) = 0;
  // Records the element (`xml`) or removes it (nullopt; removing none succeeds), in the domain's
  // live definition and, when it is defined, its persistent one.
  virtual absl::Status WriteIntentXml(const std::string& uuid,
                                      const std::optional<std::string>& xml) = 0;

  // Lifecycle events arrive on the hypervisor's own thread; the handler must not block long.
  // Set once, before events are wanted; an implementation re-registers its own callbacks after
  // reconnecting so no event is silently lost.
  virtual void SetLifecycleHandler(std::function<void(const LifecycleEvent&)> handler) = 0;
};

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_DOMAIN_HYPERVISOR_H_

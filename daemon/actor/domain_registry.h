// Maps domain references (name, UUID or ID) to their actors. Actors are created when a running
// domain is first needed (a command, adoption at start) and kept while tprd runs, so a domain
// that stops keeps its "gone" state and history until it starts again.
#ifndef TPRD_DAEMON_ACTOR_DOMAIN_REGISTRY_H_
#define TPRD_DAEMON_ACTOR_DOMAIN_REGISTRY_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/actor/domain_actor.h"
#include "daemon/domain/hypervisor.h"
#include "daemon/events/event_bus.h"
#include "daemon/journal/journal.h"

namespace tprd::daemon {

class DomainRegistry {
 public:
  // Registers itself as the hypervisor's lifecycle handler. All pointers outlive the registry;
  // `journal` may be null.
  DomainRegistry(Hypervisor* hypervisor, Journal* journal, EventBus* bus,
                 DomainActorOptions actor_options);
  ~DomainRegistry();

  // Every domain the hypervisor knows, with tprd's view of it and its intent (sorted by name).
  absl::StatusOr<std::vector<DomainSnapshot>> ListDomains();

  // The snapshot of one domain with its intent, whether or not it has an actor. NOT_FOUND if
  // unknown.
  absl::StatusOr<DomainSnapshot> Describe(const std::string& reference);

  // The actor of a running domain (created if needed). NOT_FOUND unknown domain;
  // FAILED_PRECONDITION not running (and no actor yet); INVALID_ARGUMENT empty reference.
  absl::StatusOr<std::shared_ptr<DomainActor>> ActorFor(const std::string& reference);

  // Resolves a reference to its domain (NOT_FOUND / UNAVAILABLE / INVALID_ARGUMENT). A reference
  // that is empty, holds a NUL byte or is longer than kMaxDomainReference bytes is
  // INVALID_ARGUMENT without asking the hypervisor.
  absl::StatusOr<DomainInfo> Resolve(const std::string& reference);
  static constexpr size_t kMaxDomainReference = 1024;

  // Daemon start: every running domain whose name matches `name_glob` (fnmatch) gets an actor
  // that looks for tprd's blob and takes patched guests back; one without the blob gets its
  // intent applied. Failures are logged per domain; returns how many were adopted. The glob also
  // limits which domains' starts make tprd apply their intent (several tprds may share a host).
  absl::StatusOr<int> AdoptRunning(absl::Time deadline, const std::string& name_glob = "*");

  // DisablePatching: the domain's actor disables it (DomainActor::Disable); a domain that is not
  // running only has its intent removed.
  absl::StatusOr<DomainActor::DisableOutcome> Disable(const std::string& reference, bool force,
                                                      absl::Time deadline);

  // Orderly stop: every actor leaves its guest correct without tprd (exact, no traps) and
  // detaches. Returns the first error, after trying every domain.
  absl::Status DetachAll(const std::string& reason, absl::Time deadline);

  void OnLifecycle(const LifecycleEvent& event);

  // Fills the snapshot's intent (or intent_error) from the domain's metadata: the actors'
  // snapshots do not hold it (an operator may change it behind tprd's back).
  void ReadIntent(DomainSnapshot& snapshot);

 private:
  std::shared_ptr<DomainActor> FindActor(const std::string& uuid);
  // The domain's actor, made if it has none, running or not; null while closing.
  std::shared_ptr<DomainActor> MakeActor(const DomainInfo& domain);

  Hypervisor* const hypervisor_;
  Journal* const journal_;
  EventBus* const bus_;
  const DomainActorOptions actor_options_;

  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<DomainActor>> actors_ ABSL_GUARDED_BY(mu_);  // by UUID
  bool closing_ ABSL_GUARDED_BY(mu_) = false;           // DetachAll began
  std::string manage_glob_ ABSL_GUARDED_BY(mu_) = "*";  // AdoptRunning's name_glob
};

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_ACTOR_DOMAIN_REGISTRY_H_

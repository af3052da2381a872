// The event side of the libvirt connection (libvirt_connection.cc): libvirt's process-wide event
// loop, the state the connection shares with libvirt's callbacks, and the callbacks, which turn
// libvirt's lifecycle, reboot and close events into LibvirtEventSubscriber calls. Internal to
// kvm-backend.
#ifndef TPRD_KVM_BACKEND_LIBVIRT_EVENT_STREAM_H_
#define TPRD_KVM_BACKEND_LIBVIRT_EVENT_STREAM_H_

#include <libvirt/libvirt.h>

#include <memory>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "kvm-backend/libvirt_connection.h"

namespace tprd::backend {

// One process-wide libvirt event loop on its own thread; also stops libvirt printing errors.
void StartLibvirtEventLoopOnce();

// State shared with libvirt callbacks. Callbacks hold a shared_ptr to it (released by
// libvirt's free callback), so a callback that runs after the connection object is gone still
// reaches valid memory and finds no subscribers.
struct LibvirtSharedState {
  absl::Mutex mu;
  virConnectPtr conn ABSL_GUARDED_BY(mu) = nullptr;
  bool lost ABSL_GUARDED_BY(mu) = false;  // close callback fired; reconnect thread tears down
  bool stopping ABSL_GUARDED_BY(mu) = false;
  std::vector<int> callback_ids ABSL_GUARDED_BY(mu);

  // Separate lock: callbacks dispatch under it, API calls never hold it.
  absl::Mutex subscribers_mu;
  std::vector<LibvirtEventSubscriber*> subscribers ABSL_GUARDED_BY(subscribers_mu);

  template <typename F>
  void ForEachSubscriber(F f) {
    absl::MutexLock lock(&subscribers_mu);
    for (LibvirtEventSubscriber* s : subscribers) f(s);
  }
};

using LibvirtSharedStatePtr = std::shared_ptr<LibvirtSharedState>;

// Registers the close, lifecycle and reboot callbacks on `conn`, each holding a reference to
// `shared`. Returns the ids DeregisterEventCallbacks needs; on an error, undoes what it did.
absl::StatusOr<std::vector<int>> RegisterEventCallbacks(virConnectPtr conn,
                                                        const LibvirtSharedStatePtr& shared);
void DeregisterEventCallbacks(virConnectPtr conn, const std::vector<int>& callback_ids);

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_LIBVIRT_EVENT_STREAM_H_

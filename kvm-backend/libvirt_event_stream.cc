#include "kvm-backend/libvirt_event_stream.h"

#include <libvirt/virterror.h>

#include <mutex>
#include <thread>

#include "kvm-backend/libvirt_calls.h"

namespace tprd::backend {

std::string_view LibvirtDomainEventKindName(LibvirtDomainEvent::Kind kind) {
  switch (kind) {
    case LibvirtDomainEvent::Kind::kStarted:
      return "started";
    case LibvirtDomainEvent::Kind::kSuspended:
      return "suspended";
    case LibvirtDomainEvent::Kind::kResumed:
      return "resumed";
    case LibvirtDomainEvent::Kind::kShutdown:
      return "shutdown";
    case LibvirtDomainEvent::Kind::kStopped:
      return "stopped";
    case LibvirtDomainEvent::Kind::kCrashed:
      return "crashed";
    case LibvirtDomainEvent::Kind::kRebooted:
      return "rebooted";
    case LibvirtDomainEvent::Kind::kMigratedAway:
      return "migrated-away";
    case LibvirtDomainEvent::Kind::kMigrating:
      return "migrating";
    case LibvirtDomainEvent::Kind::kResumedAfterMigration:
      return "resumed-after-migration";
    case LibvirtDomainEvent::Kind::kReverted:
      return "reverted";
    case LibvirtDomainEvent::Kind::kOther:
      return "other";
  }
  return "?";
}

namespace {

// libvirt prints every error to stderr by default; tprd reports them as Status instead.
void IgnoreLibvirtError(void*, virErrorPtr) {}

LibvirtDomainEvent::Kind ToEventKind(int event, int detail) {
  switch (event) {
    case VIR_DOMAIN_EVENT_STARTED:
      return detail == VIR_DOMAIN_EVENT_STARTED_MIGRATED ? LibvirtDomainEvent::Kind::kMigrating
                                                         : LibvirtDomainEvent::Kind::kStarted;
    case VIR_DOMAIN_EVENT_SUSPENDED:
      return detail == VIR_DOMAIN_EVENT_SUSPENDED_MIGRATED ||
                     detail == VIR_DOMAIN_EVENT_SUSPENDED_POSTCOPY
                 ? LibvirtDomainEvent::Kind::kMigrating
                 : LibvirtDomainEvent::Kind::kSuspended;
    case VIR_DOMAIN_EVENT_RESUMED:
      if (detail == VIR_DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT) {
        return LibvirtDomainEvent::Kind::kReverted;
      }
      if (detail == VIR_DOMAIN_EVENT_RESUMED_MIGRATED) {
        return LibvirtDomainEvent::Kind::kResumedAfterMigration;
      }
      // Post-copy resumes the target before all of its memory is there.
      return detail == VIR_DOMAIN_EVENT_RESUMED_POSTCOPY ? LibvirtDomainEvent::Kind::kMigrating
                                                         : LibvirtDomainEvent::Kind::kResumed;
    case VIR_DOMAIN_EVENT_STOPPED:
      if (detail == VIR_DOMAIN_EVENT_STOPPED_MIGRATED)
        return LibvirtDomainEvent::Kind::kMigratedAway;
      if (detail == VIR_DOMAIN_EVENT_STOPPED_CRASHED) return LibvirtDomainEvent::Kind::kCrashed;
      return LibvirtDomainEvent::Kind::kStopped;
    case VIR_DOMAIN_EVENT_SHUTDOWN:
      return LibvirtDomainEvent::Kind::kShutdown;
    case VIR_DOMAIN_EVENT_CRASHED:
      return LibvirtDomainEvent::Kind::kCrashed;
    default:
      return LibvirtDomainEvent::Kind::kOther;
  }
}

void FreeSharedRef(void* opaque) { delete static_cast<LibvirtSharedStatePtr*>(opaque); }

int OnLifecycle(virConnectPtr, virDomainPtr domain, int event, int detail, void* opaque) {
  LibvirtSharedState& shared = **static_cast<LibvirtSharedStatePtr*>(opaque);
  LibvirtDomainEvent e;
  e.kind = ToEventKind(event, detail);
  e.uuid = DomainUuid(domain);
  const char* name = virDomainGetName(domain);
  e.name = name ? name : "";
  e.libvirt_event = event;
  e.libvirt_detail = detail;
  shared.ForEachSubscriber([&](LibvirtEventSubscriber* s) { s->OnDomainEvent(e); });
  return 0;
}

void OnReboot(virConnectPtr, virDomainPtr domain, void* opaque) {
  LibvirtSharedState& shared = **static_cast<LibvirtSharedStatePtr*>(opaque);
  LibvirtDomainEvent e;
  e.kind = LibvirtDomainEvent::Kind::kRebooted;
  e.uuid = DomainUuid(domain);
  const char* name = virDomainGetName(domain);
  e.name = name ? name : "";
  shared.ForEachSubscriber([&](LibvirtEventSubscriber* s) { s->OnDomainEvent(e); });
}

void OnClose(virConnectPtr, int /*reason*/, void* opaque) {
  LibvirtSharedState& shared = **static_cast<LibvirtSharedStatePtr*>(opaque);
  {
    absl::MutexLock lock(&shared.mu);
    shared.lost = true;
  }
  shared.ForEachSubscriber([](LibvirtEventSubscriber* s) { s->OnConnectionLost(); });
}

}  // namespace

// libvirt allows one default event loop implementation per process. It lives until the process
// exits.
void StartLibvirtEventLoopOnce() {
  static std::once_flag once;
  std::call_once(once, [] {
    virSetErrorFunc(nullptr, IgnoreLibvirtError);
    virEventRegisterDefaultImpl();
    std::thread([] {
      for (;;) virEventRunDefaultImpl();
    }).detach();
  });
}

absl::StatusOr<std::vector<int>> RegisterEventCallbacks(virConnectPtr conn,
                                                        const LibvirtSharedStatePtr& shared) {
  int close_ok = virConnectRegisterCloseCallback(conn, OnClose, new LibvirtSharedStatePtr(shared),
                                                 FreeSharedRef);
  int lifecycle = virConnectDomainEventRegisterAny(
      conn, nullptr, VIR_DOMAIN_EVENT_ID_LIFECYCLE, VIR_DOMAIN_EVENT_CALLBACK(OnLifecycle),
      new LibvirtSharedStatePtr(shared), FreeSharedRef);
  int reboot = virConnectDomainEventRegisterAny(conn, nullptr, VIR_DOMAIN_EVENT_ID_REBOOT,
                                                VIR_DOMAIN_EVENT_CALLBACK(OnReboot),
                                                new LibvirtSharedStatePtr(shared), FreeSharedRef);
  if (close_ok < 0 || lifecycle < 0 || reboot < 0) {
    absl::Status error = LibvirtError("register libvirt event callbacks");
    if (close_ok >= 0) virConnectUnregisterCloseCallback(conn, OnClose);
    if (lifecycle >= 0) virConnectDomainEventDeregisterAny(conn, lifecycle);
    if (reboot >= 0) virConnectDomainEventDeregisterAny(conn, reboot);
    return error;
  }
  return std::vector<int>{lifecycle, reboot};
}

void DeregisterEventCallbacks(virConnectPtr conn, const std::vector<int>& callback_ids) {
  virConnectUnregisterCloseCallback(conn, OnClose);
  for (int id : callback_ids) virConnectDomainEventDeregisterAny(conn, id);
}

}  // namespace tprd::backend

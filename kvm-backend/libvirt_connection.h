// tprd's view of libvirtd: domains, their state, the QEMU monitor (through libvirt-qemu) and
// lifecycle events. An interface so the daemon and QemuGuestVm are testable with
// tests/fakes/fake_libvirt_connection.h; LibvirtConnectionImpl is the real one
// (libvirt_connection.cc, its event side in libvirt_event_stream.cc).
//
// Domains are named by UUID string in every call after lookup: a UUID survives a libvirtd
// restart (a virDomainPtr does not) and is unique (names may be reused, IDs change at start).
#ifndef TPRD_KVM_BACKEND_LIBVIRT_CONNECTION_H_
#define TPRD_KVM_BACKEND_LIBVIRT_CONNECTION_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tprd::backend {

// libvirt's virDomainState, by name. The Libvirt prefix keeps these apart from the daemon's
// DomainState (daemon/domain/domain_state.h: patched, unpatched, ...), DomainInfo and DomainEvent.
enum class LibvirtDomainState : uint8_t {
  kNoState,
  kRunning,
  kBlocked,
  kPaused,
  kShuttingDown,
  kShutoff,
  kCrashed,
  kPmSuspended,
};
std::string_view LibvirtDomainStateName(LibvirtDomainState state);

struct LibvirtDomainInfo {
  std::string name;
  std::string uuid;  // canonical lower-case 36-character form
  int id = -1;       // -1 when the domain is not running
  LibvirtDomainState state = LibvirtDomainState::kNoState;
  // libvirt's state reason (virDomainPausedReason etc.): for kPaused, VIR_DOMAIN_PAUSED_USER (1)
  // means someone paused it through libvirt; VIR_DOMAIN_PAUSED_UNKNOWN (0) is what libvirt
  // reports when QEMU stopped on its own, which includes our gdbstub stopping it.
  int reason = 0;
};
inline constexpr int kPausedReasonUnknown = 0;
inline constexpr int kPausedReasonUser = 1;
// virDomainPausedReason values of libvirt jobs that copy the guest's state elsewhere: migration,
// save (also managedsave), dump, snapshot, postcopy.
inline constexpr int kPausedReasonMigration = 2;
inline constexpr int kPausedReasonSave = 3;
inline constexpr int kPausedReasonDump = 4;
inline constexpr int kPausedReasonSnapshot = 9;
inline constexpr int kPausedReasonPostcopy = 12;
inline bool PausedToCopyState(int reason) {
  return reason == kPausedReasonMigration || reason == kPausedReasonSave ||
         reason == kPausedReasonDump || reason == kPausedReasonSnapshot ||
         reason == kPausedReasonPostcopy;
}
// VIR_DOMAIN_PAUSED_FROM_SNAPSHOT: libvirt paused a running domain to load a snapshot's memory
// into it (`virsh snapshot-revert`); what tprd knew of the guest's memory is about to be untrue.
inline constexpr int kPausedReasonFromSnapshot = 7;
inline bool PausedToReplaceState(int reason) { return reason == kPausedReasonFromSnapshot; }

// A lifecycle event of one domain, from the event-loop thread.
struct LibvirtDomainEvent {
  enum class Kind : uint8_t {
    kStarted,
    kSuspended,     // paused (by a user, an I/O error, migration, ... or our gdbstub)
    kResumed,       // running again
    kShutdown,      // guest-initiated shutdown in progress
    kStopped,       // gone: shut off, destroyed, saved, QEMU failed
    kCrashed,       // guest crash (panic device)
    kRebooted,      // memory and patches are gone
    kMigratedAway,  // stopped here because it now runs on another host
    kMigrating,     // suspended or resumed for a migration (not the resume below)
    // Running here at the end of a migration: it finished on this host (the target), or failed
    // and the source runs on (libvirt's RESUMED/MIGRATED on either side). Its memory is whole.
    kResumedAfterMigration,
    kReverted,  // running again on a snapshot's memory (snapshot-revert of a running domain)
    kOther,     // defined/undefined/pmsuspended/...: see libvirt_event
  };
  Kind kind = Kind::kOther;
  std::string uuid;
  std::string name;
  int libvirt_event = -1;   // virDomainEventType, -1 for reboot
  int libvirt_detail = -1;  // event detail
};
std::string_view LibvirtDomainEventKindName(LibvirtDomainEvent::Kind kind);

// Receives events on the connection's event-loop thread. Implementations must return quickly
// and must not call Subscribe/Unsubscribe from inside a callback.
class LibvirtEventSubscriber {
 public:
  virtual ~LibvirtEventSubscriber() = default;
  virtual void OnDomainEvent(const LibvirtDomainEvent& event) = 0;
  // libvirtd went away; reconnecting in the background. Events may have been missed.
  virtual void OnConnectionLost() {}
  // Reconnected; event callbacks are registered again. Re-read any state you cache.
  virtual void OnConnectionRestored() {}
};

class LibvirtConnection {
 public:
  virtual ~LibvirtConnection() = default;

  // Every domain libvirt knows (running and defined).
  virtual absl::StatusOr<std::vector<LibvirtDomainInfo>> ListDomains() = 0;
  // By name, then UUID, then numeric ID. NOT_FOUND when none matches.
  virtual absl::StatusOr<LibvirtDomainInfo> LookupDomain(std::string_view name_uuid_or_id) = 0;
  // Current state and reason by UUID. NOT_FOUND when the domain no longer exists.
  virtual absl::StatusOr<LibvirtDomainInfo> GetDomain(std::string_view uuid) = 0;
  // PID of the domain's QEMU process (running domains, local connections only).
  virtual absl::StatusOr<int> QemuPid(std::string_view uuid) = 0;
  // A monitor command through virDomainQemuMonitorCommand; returns QEMU's reply text.
  virtual absl::StatusOr<std::string> HmpCommand(std::string_view uuid,
                                                 std::string_view command) = 0;
  virtual absl::StatusOr<std::string> QmpCommand(std::string_view uuid, std::string_view json) = 0;
  // A QMP command that passes `fd` to QEMU with it (virDomainQemuMonitorCommandWithFiles, libvirt
  // 8.2 or later): QEMU gets its own copy (SCM_RIGHTS), which a `getfd` in `json` names. The
  // caller keeps `fd` and closes it.
  virtual absl::StatusOr<std::string> QmpCommandWithFd(std::string_view uuid, std::string_view json,
                                                       int fd) = 0;

  // The domain's metadata element in namespace `uri` (virDomainGetMetadata), from the live
  // definition of a running domain, else the persistent one; nullopt when it has none. libvirt
  // returns the element without its prefix.
  virtual absl::StatusOr<std::optional<std::string>> GetMetadata(std::string_view uuid,
                                                                 std::string_view uri) = 0;
  // Sets the element `xml` (no prefix: libvirt gives it `prefix`) in namespace `uri`, or removes
  // it when `xml` is nullopt (removing what is not there succeeds): in the live definition of a
  // running domain and in the persistent one of a defined domain, so that it survives both a
  // restart and a migration.
  virtual absl::Status SetMetadata(std::string_view uuid, std::string_view uri,
                                   std::string_view prefix,
                                   const std::optional<std::string>& xml) = 0;

  // Subscribers stay registered across reconnects. Unsubscribe waits for a running callback.
  virtual void Subscribe(LibvirtEventSubscriber* subscriber) = 0;
  virtual void Unsubscribe(LibvirtEventSubscriber* subscriber) = 0;
  virtual bool IsConnected() = 0;
};

struct LibvirtConnectionOptions {
  std::string uri = "qemu:///system";
  // virConnectSetKeepAlive: a ping every interval; dead after `count` unanswered pings.
  int keepalive_interval_seconds = 5;
  unsigned keepalive_count = 3;
  absl::Duration reconnect_initial_backoff = absl::Milliseconds(100);
  absl::Duration reconnect_max_backoff = absl::Seconds(5);
  // Where libvirtd writes QEMU PID files (local qemu:///system).
  std::string qemu_pid_directory = "/run/libvirt/qemu";
};

// Connects (failing with UNAVAILABLE when libvirtd does not answer) and starts the process-wide
// libvirt event-loop thread and this connection's reconnect thread.
absl::StatusOr<std::unique_ptr<LibvirtConnection>> ConnectToLibvirt(
    const LibvirtConnectionOptions& options);

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_LIBVIRT_CONNECTION_H_

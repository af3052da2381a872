// In-memory LibvirtConnection for unit tests of code above the backend (daemon, QemuGuestVm
// logic): domains are added by the test, monitor commands answer from a scripted table or a
// handler, and events / connection loss are injected by the test.
#ifndef TPRD_TESTS_FAKES_FAKE_LIBVIRT_CONNECTION_H_
#define TPRD_TESTS_FAKES_FAKE_LIBVIRT_CONNECTION_H_

#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "kvm-backend/libvirt_connection.h"

namespace tprd::backend {

class FakeLibvirtConnection : public LibvirtConnection {
 public:
  // Answers a monitor command of a domain (uuid, command text, is_hmp).
  using MonitorHandler =
      std::function<absl::StatusOr<std::string>(const std::string&, const std::string&, bool)>;

  void AddDomain(LibvirtDomainInfo domain, int qemu_pid = 0);
  void RemoveDomain(const std::string& uuid);
  void SetState(const std::string& uuid, LibvirtDomainState state, int reason);
  // Exact-match reply for a command; checked before the handler.
  void SetMonitorReply(const std::string& command, std::string reply);
  void SetMonitorHandler(MonitorHandler handler);
  // Every monitor command sent, in order ("hmp: ..." / "qmp: ...").
  std::vector<std::string> monitor_log();

  // Delivers to subscribers synchronously on the caller's thread.
  void EmitEvent(const LibvirtDomainEvent& event);
  void SimulateConnectionLost();
  void SimulateConnectionRestored();

  absl::StatusOr<std::vector<LibvirtDomainInfo>> ListDomains() override;
  absl::StatusOr<LibvirtDomainInfo> LookupDomain(std::string_view name_uuid_or_id) override;
  absl::StatusOr<LibvirtDomainInfo> GetDomain(std::string_view uuid) override;
  absl::StatusOr<int> QemuPid(std::string_view uuid) override;
  absl::StatusOr<std::string> HmpCommand(std::string_view uuid, std::string_view command) override;
  absl::StatusOr<std::string> QmpCommand(std::string_view uuid, std::string_view json) override;
  // Answers and logs like QmpCommand; the descriptor is only checked to be open.
  absl::StatusOr<std::string> QmpCommandWithFd(std::string_view uuid, std::string_view json,
                                               int fd) override;
  // Metadata by (uuid, uri); the prefix is kept for the test to inspect.
  absl::StatusOr<std::optional<std::string>> GetMetadata(std::string_view uuid,
                                                         std::string_view uri) override;
  absl::Status SetMetadata(std::string_view uuid, std::string_view uri, std::string_view prefix,
                           const std::optional<std::string>& xml) override;
  // What SetMetadata last stored (or the test put there), without going through the interface.
  void PutMetadata(const std::string& uuid, const std::string& uri, std::string xml);
  std::optional<std::string> metadata_prefix(const std::string& uuid, const std::string& uri);
  // The next metadata call fails with this (then it is cleared).
  void FailNextMetadataCall(absl::Status error);

  void Subscribe(LibvirtEventSubscriber* subscriber) override;
  void Unsubscribe(LibvirtEventSubscriber* subscriber) override;
  bool IsConnected() override;

 private:
  absl::StatusOr<std::string> Monitor(std::string_view uuid, std::string_view command, bool hmp);

  std::mutex mu_;
  std::map<std::string, LibvirtDomainInfo> domains_ ABSL_GUARDED_BY(mu_);  // by uuid
  std::map<std::string, int> pids_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> replies_ ABSL_GUARDED_BY(mu_);
  MonitorHandler handler_ ABSL_GUARDED_BY(mu_);
  std::vector<std::string> monitor_log_ ABSL_GUARDED_BY(mu_);
  std::vector<LibvirtEventSubscriber*> subscribers_ ABSL_GUARDED_BY(mu_);
  struct Metadata {
    std::string prefix;
    std::string xml;
  };
  std::map<std::pair<std::string, std::string>, Metadata> metadata_ ABSL_GUARDED_BY(mu_);
  absl::Status metadata_error_ ABSL_GUARDED_BY(mu_);
  bool connected_ ABSL_GUARDED_BY(mu_) = true;
};

}  // namespace tprd::backend

#endif  // TPRD_TESTS_FAKES_FAKE_LIBVIRT_CONNECTION_H_

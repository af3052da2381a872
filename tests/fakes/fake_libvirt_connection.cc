#include "tests/fakes/fake_libvirt_connection.h"

#include <fcntl.h>

#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"

namespace tprd::backend {

void FakeLibvirtConnection::AddDomain(LibvirtDomainInfo domain, int qemu_pid) {
  std::lock_guard<std::mutex> lock(mu_);
  pids_[domain.uuid] = qemu_pid;
  domains_[domain.uuid] = std::move(domain);
}

void FakeLibvirtConnection::RemoveDomain(const std::string& uuid) {
  std::lock_guard<std::mutex> lock(mu_);
  domains_.erase(uuid);
  pids_.erase(uuid);
}

void FakeLibvirtConnection::SetState(const std::string& uuid, LibvirtDomainState state,
                                     int reason) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = domains_.find(uuid);
  if (it == domains_.end()) return;
  it->second.state = state;
  it->second.reason = reason;
}

void FakeLibvirtConnection::SetMonitorReply(const std::string& command, std::string reply) {
  std::lock_guard<std::mutex> lock(mu_);
  replies_[command] = std::move(reply);
}

void FakeLibvirtConnection::SetMonitorHandler(MonitorHandler handler) {
  std::lock_guard<std::mutex> lock(mu_);
  handler_ = std::move(handler);
}

std::vector<std::string> FakeLibvirtConnection::monitor_log() {
  std::lock_guard<std::mutex> lock(mu_);
  return monitor_log_;
}

void FakeLibvirtConnection::EmitEvent(const LibvirtDomainEvent& event) {
  std::vector<LibvirtEventSubscriber*> subscribers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    subscribers = subscribers_;
  }
  for (LibvirtEventSubscriber* s : subscribers) s->OnDomainEvent(event);
}

void FakeLibvirtConnection::SimulateConnectionLost() {
  std::vector<LibvirtEventSubscriber*> subscribers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    connected_ = false;
    subscribers = subscribers_;
  }
  for (LibvirtEventSubscriber* s : subscribers) s->OnConnectionLost();
}

void FakeLibvirtConnection::SimulateConnectionRestored() {
  std::vector<LibvirtEventSubscriber*> subscribers;
  {
    std::lock_guard<std::mutex> lock(mu_);
    connected_ = true;
    subscribers = subscribers_;
  }
  for (LibvirtEventSubscriber* s : subscribers) s->OnConnectionRestored();
}

absl::StatusOr<std::vector<LibvirtDomainInfo>> FakeLibvirtConnection::ListDomains() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!connected_) return absl::UnavailableError("fake libvirtd: not connected");
  std::vector<LibvirtDomainInfo> out;
  for (const auto& [uuid, domain] : domains_) out.push_back(domain);
  return out;
}

absl::StatusOr<LibvirtDomainInfo> FakeLibvirtConnection::LookupDomain(std::string_view key) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!connected_) return absl::UnavailableError("fake libvirtd: not connected");
  for (const auto& [uuid, domain] : domains_) {
    if (domain.name == key) return domain;
  }
  if (auto it = domains_.find(std::string(key)); it != domains_.end()) return it->second;
  for (const auto& [uuid, domain] : domains_) {
    if (domain.id >= 0 && absl::StrCat(domain.id) == key) return domain;
  }
  return absl::NotFoundError(
      absl::StrCat("no libvirt domain with name, UUID or ID '", std::string(key), "'"));
}

absl::StatusOr<LibvirtDomainInfo> FakeLibvirtConnection::GetDomain(std::string_view uuid) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!connected_) return absl::UnavailableError("fake libvirtd: not connected");
  auto it = domains_.find(std::string(uuid));
  if (it == domains_.end()) return absl::NotFoundError(absl::StrCat("domain ", std::string(uuid)));
  return it->second;
}

absl::StatusOr<int> FakeLibvirtConnection::QemuPid(std::string_view uuid) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = pids_.find(std::string(uuid));
  if (it == pids_.end() || it->second <= 0) {
    return absl::NotFoundError(absl::StrCat("no QEMU PID for ", std::string(uuid)));
  }
  return it->second;
}

absl::StatusOr<std::string> FakeLibvirtConnection::Monitor(std::string_view uuid,
                                                           std::string_view command, bool hmp) {
  MonitorHandler handler;
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (!connected_) return absl::UnavailableError("fake libvirtd: not connected");
    monitor_log_.push_back(absl::StrCat(hmp ? "hmp: " : "qmp: ", std::string(command)));
    if (domains_.find(std::string(uuid)) == domains_.end()) {
      return absl::NotFoundError(absl::StrCat("domain ", std::string(uuid)));
    }
    if (auto it = replies_.find(std::string(command)); it != replies_.end()) return it->second;
    handler = handler_;
  }
  if (handler) return handler(std::string(uuid), std::string(command), hmp);
  return absl::UnimplementedError(
      absl::StrCat("fake monitor has no reply for: ", std::string(command)));
}

absl::StatusOr<std::string> FakeLibvirtConnection::HmpCommand(std::string_view uuid,
                                                              std::string_view command) {
  return Monitor(uuid, command, true);
}

absl::StatusOr<std::string> FakeLibvirtConnection::QmpCommand(std::string_view uuid,
                                                              std::string_view json) {
  return Monitor(uuid, json, false);
}

absl::StatusOr<std::string> FakeLibvirtConnection::QmpCommandWithFd(std::string_view uuid,
                                                                    std::string_view json, int fd) {
  if (fcntl(fd, F_GETFD) == -1) {
    return absl::InvalidArgumentError(absl::StrCat("fake libvirtd: descriptor ", fd, " is closed"));
  }
  return Monitor(uuid, json, false);
}

absl::StatusOr<std::optional<std::string>> FakeLibvirtConnection::GetMetadata(
    std::string_view uuid, std::string_view uri) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!connected_) return absl::UnavailableError("fake libvirtd: not connected");
  if (!metadata_error_.ok()) return std::exchange(metadata_error_, absl::OkStatus());
  if (domains_.find(std::string(uuid)) == domains_.end()) {
    return absl::NotFoundError(absl::StrCat("domain ", std::string(uuid)));
  }
  auto it = metadata_.find({std::string(uuid), std::string(uri)});
  if (it == metadata_.end()) return std::nullopt;
  return std::optional<std::string>(it->second.xml);
}

absl::Status FakeLibvirtConnection::SetMetadata(std::string_view uuid, std::string_view uri,
                                                std::string_view prefix,
                                                const std::optional<std::string>& xml) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!connected_) return absl::UnavailableError("fake libvirtd: not connected");
  if (!metadata_error_.ok()) return std::exchange(metadata_error_, absl::OkStatus());
  if (domains_.find(std::string(uuid)) == domains_.end()) {
    return absl::NotFoundError(absl::StrCat("domain ", std::string(uuid)));
  }
  const std::pair<std::string, std::string> key{std::string(uuid), std::string(uri)};
  if (xml) {
    metadata_[key] = Metadata{std::string(prefix), *xml};
  } else {
    metadata_.erase(key);
  }
  return absl::OkStatus();
}

void FakeLibvirtConnection::PutMetadata(const std::string& uuid, const std::string& uri,
                                        std::string xml) {
  std::lock_guard<std::mutex> lock(mu_);
  metadata_[{uuid, uri}] = Metadata{"", std::move(xml)};
}

std::optional<std::string> FakeLibvirtConnection::metadata_prefix(const std::string& uuid,
                                                                  const std::string& uri) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = metadata_.find({uuid, uri});
  if (it == metadata_.end()) return std::nullopt;
  return it->second.prefix;
}

void FakeLibvirtConnection::FailNextMetadataCall(absl::Status error) {
  std::lock_guard<std::mutex> lock(mu_);
  metadata_error_ = std::move(error);
}

void FakeLibvirtConnection::Subscribe(LibvirtEventSubscriber* subscriber) {
  std::lock_guard<std::mutex> lock(mu_);
  subscribers_.push_back(subscriber);
}

void FakeLibvirtConnection::Unsubscribe(LibvirtEventSubscriber* subscriber) {
  std::lock_guard<std::mutex> lock(mu_);
  subscribers_.erase(std::remove(subscribers_.begin(), subscribers_.end(), subscriber),
                     subscribers_.end());
}

bool FakeLibvirtConnection::IsConnected() {
  std::lock_guard<std::mutex> lock(mu_);
  return connected_;
}

}  // namespace tprd::backend

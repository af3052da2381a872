// The Hypervisor over a libvirt connection: domain list and lookup, lifecycle events, and
// EngineDomainController sessions.
#ifndef TPRD_DAEMON_DOMAIN_LIBVIRT_HYPERVISOR_H_
#define TPRD_DAEMON_DOMAIN_LIBVIRT_HYPERVISOR_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "daemon/domain/engine_domain_controller.h"
#include "daemon/domain/hypervisor.h"
#include "kvm-backend/libvirt_connection.h"

namespace tprd::daemon {

class LibvirtHypervisor : public Hypervisor, private backend::LibvirtEventSubscriber {
 public:
  LibvirtHypervisor(std::unique_ptr<backend::LibvirtConnection> connection,
                    EngineControllerOptions options);
  ~LibvirtHypervisor() override;

  absl::StatusOr<std::vector<DomainInfo>> ListDomains() override;
  absl::StatusOr<DomainInfo> LookupDomain(const std::string& reference) override;
  absl::StatusOr<std::unique_ptr<DomainController>> OpenController(
      const DomainInfo& domain, engine::PatchRecorder* recorder) override;
  absl::StatusOr<std::optional<std::string>> ReadIntentXml(const std::string& uuid) override;
  absl::Status WriteIntentXml(const std::string& uuid,
                              const std::optional<std::string>& xml) override;
  void SetLifecycleHandler(std::function<void(const LifecycleEvent&)> handler) override;

 private:
  void OnDomainEvent(const backend::LibvirtDomainEvent& event) override;

  std::unique_ptr<backend::LibvirtConnection> connection_;
  const EngineControllerOptions options_;
  absl::Mutex mu_;
  std::function<void(const LifecycleEvent&)> handler_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_DOMAIN_LIBVIRT_HYPERVISOR_H_

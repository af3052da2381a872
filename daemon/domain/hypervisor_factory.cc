#include "daemon/domain/hypervisor_factory.h"

#include "daemon/domain/libvirt_hypervisor.h"
#include "kvm-backend/libvirt_connection.h"

namespace tprd::daemon {

absl::StatusOr<std::unique_ptr<Hypervisor>> MakeHypervisor(
    const std::string& connect_uri, const EngineControllerOptions& controller_options) {
  backend::LibvirtConnectionOptions options;
  options.uri = connect_uri;
  absl::StatusOr<std::unique_ptr<backend::LibvirtConnection>> connection =
      backend::ConnectToLibvirt(options);
  if (!connection.ok()) return connection.status();
  return std::make_unique<LibvirtHypervisor>(*std::move(connection), controller_options);
}

}  // namespace tprd::daemon

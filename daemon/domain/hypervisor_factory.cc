#include "daemon/domain/hypervisor_factory.h"

#include "daemon/domain/libvirt_hypervisor.h"
#include "kvm-backend/libvirt_connection.h"

namespace tprd::daemon {

absl::StatusOr<std::unique_ptr<Hypervisor>> MakeHypervisor(const std::string& connect_uri,
                                                           absl::Duration proving_window,
                                                           int mmio_write_stops_per_second) {
  backend::LibvirtConnectionOptions options;
  options.uri = connect_uri;
  absl::StatusOr<std::unique_ptr<backend::LibvirtConnection>> connection =
      backend::ConnectToLibvirt(options);
  if (!connection.ok()) return connection.status();
  EngineControllerOptions controller_options;
  controller_options.proving_window = proving_window;
  controller_options.mmio_write_stops_per_second = mmio_write_stops_per_second;
  return std::make_unique<LibvirtHypervisor>(*std::move(connection), controller_options);
}

}  // namespace tprd::daemon

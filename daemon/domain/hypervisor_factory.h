// Where tprd gets its Hypervisor: libvirt at `connect_uri`, with the engine's settings from the
// config (proving_window_s, mmio_write_stops_per_second, discovery).
#ifndef TPRD_DAEMON_DOMAIN_HYPERVISOR_FACTORY_H_
#define TPRD_DAEMON_DOMAIN_HYPERVISOR_FACTORY_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/domain/engine_domain_controller.h"
#include "daemon/domain/hypervisor.h"

namespace tprd::daemon {

absl::StatusOr<std::unique_ptr<Hypervisor>> MakeHypervisor(
    const std::string& connect_uri, const EngineControllerOptions& controller_options);

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_DOMAIN_HYPERVISOR_FACTORY_H_

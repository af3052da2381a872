// Where tprd gets its Hypervisor. The integrator points this at kvm-backend's
// LibvirtConnection (an adapter implementing daemon::Hypervisor); until then tprd runs with a
// hypervisor that answers UNAVAILABLE with a message saying so.
#ifndef TPRD_DAEMON_DOMAIN_HYPERVISOR_FACTORY_H_
#define TPRD_DAEMON_DOMAIN_HYPERVISOR_FACTORY_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "daemon/domain/hypervisor.h"

namespace tprd::daemon {

absl::StatusOr<std::unique_ptr<Hypervisor>> MakeHypervisor(const std::string& connect_uri,
                                                           absl::Duration proving_window);

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_DOMAIN_HYPERVISOR_FACTORY_H_

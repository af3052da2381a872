// What the connection (libvirt_connection.cc) and its event stream (libvirt_event_stream.cc)
// share to call libvirt's C API. Internal to kvm-backend: nothing above it sees libvirt's types.
#ifndef TPRD_KVM_BACKEND_LIBVIRT_CALLS_H_
#define TPRD_KVM_BACKEND_LIBVIRT_CALLS_H_

#include <libvirt/libvirt.h>

#include <string>
#include <string_view>

#include "absl/status/status.h"

namespace tprd::backend {

// libvirt's last error as a Status (NOT_FOUND, FAILED_PRECONDITION, UNAVAILABLE or INTERNAL by
// its code) whose message starts with `what`; clears that error.
absl::Status LibvirtError(std::string_view what);

// The domain's UUID in canonical form; empty when libvirt cannot say.
std::string DomainUuid(virDomainPtr domain);

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_LIBVIRT_CALLS_H_

#include "kvm-backend/libvirt_calls.h"

#include <libvirt/virterror.h>

#include "absl/strings/str_cat.h"

namespace tprd::backend {

absl::Status LibvirtError(std::string_view what) {
  virErrorPtr error = virGetLastError();
  std::string message =
      absl::StrCat(std::string(what), ": ", error && error->message ? error->message : "unknown");
  int code = error ? error->code : VIR_ERR_INTERNAL_ERROR;
  virResetLastError();
  switch (code) {
    case VIR_ERR_NO_DOMAIN:
      return absl::NotFoundError(message);
    case VIR_ERR_OPERATION_INVALID:
      return absl::FailedPreconditionError(message);
    case VIR_ERR_NO_CONNECT:
    case VIR_ERR_RPC:
    case VIR_ERR_SYSTEM_ERROR:
    case VIR_ERR_INVALID_CONN:
      return absl::UnavailableError(message);
    default:
      return absl::InternalError(message);
  }
}

std::string DomainUuid(virDomainPtr domain) {
  char uuid[VIR_UUID_STRING_BUFLEN] = {};
  if (virDomainGetUUIDString(domain, uuid) != 0) return "";
  return uuid;
}

}  // namespace tprd::backend

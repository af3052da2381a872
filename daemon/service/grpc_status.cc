#include "daemon/service/grpc_status.h"

#include <string>

namespace tprd::daemon {

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  const int code = static_cast<int>(status.code());
  // Both enums are google.rpc.Code; anything outside it is our bug, reported as INTERNAL.
  const grpc::StatusCode grpc_code =
      code > 0 && code <= static_cast<int>(grpc::StatusCode::UNAUTHENTICATED)
          ? static_cast<grpc::StatusCode>(code)
          : grpc::StatusCode::INTERNAL;
  return grpc::Status(grpc_code, std::string(status.message()));
}

}  // namespace tprd::daemon

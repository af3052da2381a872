// The one place absl::Status becomes grpc::Status. absl's canonical codes and gRPC's share
// their numbering (google.rpc.Code), so the code carries over and the message stays the
// person-readable one made where the error arose.
#ifndef TPRD_DAEMON_SERVICE_GRPC_STATUS_H_
#define TPRD_DAEMON_SERVICE_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace tprd::daemon {

grpc::Status ToGrpcStatus(const absl::Status& status);

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_SERVICE_GRPC_STATUS_H_

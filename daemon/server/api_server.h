// The gRPC server on a unix socket: tprd.v1.Tprd, grpc.health.v1 and server reflection.
// Access control is the socket file (a gRPC server cannot learn a unix peer's uid): mode 0660,
// group `tprd` when that group exists, in a directory created 0750.
#ifndef TPRD_DAEMON_SERVER_API_SERVER_H_
#define TPRD_DAEMON_SERVER_API_SERVER_H_

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tprd::daemon {

struct ApiServerOptions {
  std::string socket_path = "/run/tprd/tprd.sock";
  std::string group = "tprd";  // socket group, when it exists
};

class ApiServer {
 public:
  // Creates the socket's directory if missing, binds with mode 0660 and starts serving.
  // `service` outlives the server.
  static absl::StatusOr<std::unique_ptr<ApiServer>> Start(const ApiServerOptions& options,
                                                          grpc::Service* service);
  ~ApiServer();

  // Stops accepting calls; calls still running get until `deadline`, then are cancelled.
  void Shutdown(absl::Time deadline);

  const std::string& socket_path() const { return socket_path_; }
  std::string address() const { return "unix:" + socket_path_; }

 private:
  ApiServer(std::string socket_path, std::unique_ptr<grpc::Server> server)
      : socket_path_(std::move(socket_path)), server_(std::move(server)) {}

  const std::string socket_path_;
  std::unique_ptr<grpc::Server> server_;
  bool shut_down_ = false;
};

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_SERVER_API_SERVER_H_

#include "daemon/server/api_server.h"

#include <grp.h>
#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <optional>

#include "absl/strings/str_cat.h"
#include "daemon/log.h"

namespace tprd::daemon {
namespace {

std::optional<gid_t> GroupId(const std::string& name) {
  if (name.empty()) return std::nullopt;
  struct group entry;
  struct group* found = nullptr;
  char buffer[4096];
  if (getgrnam_r(name.c_str(), &entry, buffer, sizeof(buffer), &found) != 0 || found == nullptr) {
    return std::nullopt;
  }
  return found->gr_gid;
}

absl::Status PrepareDirectory(const std::string& directory, std::optional<gid_t> group) {
  struct stat info;
  if (::stat(directory.c_str(), &info) != 0) {
    if (errno != ENOENT) {
      return absl::UnavailableError(
          absl::StrCat("cannot inspect ", directory, ": ", std::strerror(errno)));
    }
    std::error_code error;
    std::filesystem::create_directories(std::filesystem::path(directory).parent_path(), error);
    if (::mkdir(directory.c_str(), 0750) != 0 && errno != EEXIST) {
      return absl::UnavailableError(
          absl::StrCat("cannot create socket directory ", directory, ": ", std::strerror(errno)));
    }
    ::chmod(directory.c_str(), 0750);  // mkdir's mode was filtered by the umask
    if (::stat(directory.c_str(), &info) != 0) {
      return absl::UnavailableError(absl::StrCat("cannot inspect ", directory));
    }
  } else if (!S_ISDIR(info.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat(directory, " is not a directory; choose another --socket path"));
  }
  // Members of the group must be able to enter a directory we own.
  if (group && info.st_uid == ::geteuid() && info.st_gid != *group) {
    if (::chown(directory.c_str(), static_cast<uid_t>(-1), *group) != 0) {
      LogWarning(absl::StrCat("cannot give ", directory, " to group: ", std::strerror(errno)));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<ApiServer>> ApiServer::Start(const ApiServerOptions& options,
                                                            grpc::Service* service) {
  const std::optional<gid_t> group = GroupId(options.group);
  const std::string directory = std::filesystem::path(options.socket_path).parent_path().string();
  if (!directory.empty()) {
    absl::Status prepared = PrepareDirectory(directory, group);
    if (!prepared.ok()) return prepared;
  }

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.AddListeningPort("unix:" + options.socket_path, grpc::InsecureServerCredentials());
  builder.RegisterService(service);

  // The socket's mode follows the umask at bind time: 0117 leaves rw for owner and group.
  const mode_t saved_umask = ::umask(0117);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  ::umask(saved_umask);
  if (server == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on unix:", options.socket_path,
                     "; check the directory exists and is writable, or pass --socket"));
  }
  if (::chmod(options.socket_path.c_str(), 0660) != 0) {
    LogWarning(
        absl::StrCat("cannot set mode 0660 on ", options.socket_path, ": ", std::strerror(errno)));
  }
  if (group && ::chown(options.socket_path.c_str(), static_cast<uid_t>(-1), *group) != 0) {
    LogWarning(absl::StrCat("cannot give ", options.socket_path, " to group ", options.group, ": ",
                            std::strerror(errno)));
  }
  if (auto* health = server->GetHealthCheckService()) {
    health->SetServingStatus(true);
  }
  return std::unique_ptr<ApiServer>(new ApiServer(options.socket_path, std::move(server)));
}

ApiServer::~ApiServer() {
  if (!shut_down_) Shutdown(absl::Now());
}

void ApiServer::Shutdown(absl::Time deadline) {
  if (shut_down_) return;
  shut_down_ = true;
  if (auto* health = server_->GetHealthCheckService()) health->SetServingStatus(false);
  server_->Shutdown(absl::ToChronoTime(deadline));
  server_->Wait();
  ::unlink(socket_path_.c_str());
}

}  // namespace tprd::daemon

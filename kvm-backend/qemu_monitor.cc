#include "kvm-backend/qemu_monitor.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tprd::backend {

absl::Status EnsurePrivateDirectory(const std::string& path) {
  if (path.empty() || path[0] != '/') {
    return absl::InvalidArgumentError(absl::StrCat("not an absolute path: ", path));
  }
  // Parents with the usual mode; only the last component must be private.
  for (size_t slash = path.find('/', 1); slash != std::string::npos;
       slash = path.find('/', slash + 1)) {
    std::string parent = path.substr(0, slash);
    if (mkdir(parent.c_str(), 0755) != 0 && errno != EEXIST) {
      return absl::PermissionDeniedError(
          absl::StrCat("cannot create ", parent, ": ", std::strerror(errno)));
    }
  }
  if (mkdir(path.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create ", path, ": ", std::strerror(errno)));
  }
  struct stat info {};
  if (lstat(path.c_str(), &info) != 0) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot stat ", path, ": ", std::strerror(errno)));
  }
  if (!S_ISDIR(info.st_mode)) {
    return absl::PermissionDeniedError(absl::StrCat(path, " is not a directory"));
  }
  if (info.st_uid != geteuid() || (info.st_mode & 0077) != 0) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "%s must be owned by uid %d with mode 0700 (is uid %d mode %o): others could reach "
        "the gdbstub socket",
        path, geteuid(), info.st_uid, info.st_mode & 07777));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> QemuMonitor::StartGdbServer(const std::string& socket_directory) {
  if (absl::Status s = EnsurePrivateDirectory(socket_directory); !s.ok()) return s;
  std::string path = absl::StrCat(socket_directory, "/", uuid_, ".sock");
  std::string command = absl::StrCat("gdbserver unix:", path, ",server=on,wait=off");
  struct stat info {};
  bool ours_exists = lstat(path.c_str(), &info) == 0;
  absl::StatusOr<std::string> reply = connection_->HmpCommand(uuid_, command);
  if (!reply.ok()) return reply.status();
  absl::Status started = CheckGdbserverReply(*reply);
  if (started.code() == absl::StatusCode::kAlreadyExists && ours_exists) {
    // Our socket is there: a previous tprd left its gdbstub running. Take it over.
    if (absl::Status s = StopGdbServer(); !s.ok()) return s;
    reply = connection_->HmpCommand(uuid_, command);
    if (!reply.ok()) return reply.status();
    started = CheckGdbserverReply(*reply);
  }
  if (!started.ok()) {
    return absl::Status(started.code(),
                        absl::StrCat("domain ", uuid_, ": ", started.message(),
                                     started.code() == absl::StatusCode::kAlreadyExists
                                         ? " (another debugger holds the gdbstub?)"
                                         : ""));
  }
  return path;
}

absl::Status QemuMonitor::StopGdbServer() {
  absl::StatusOr<std::string> reply = connection_->HmpCommand(uuid_, "gdbserver none");
  if (!reply.ok()) return reply.status();
  return CheckGdbserverReply(*reply);
}

absl::StatusOr<uint8_t> QemuMonitor::ReadTpr(int vcpu) {
  absl::StatusOr<std::string> reply =
      connection_->HmpCommand(uuid_, absl::StrCat("info lapic ", vcpu));
  if (!reply.ok()) return reply.status();
  return ParseLapicTpr(*reply);
}

absl::StatusOr<std::vector<engine::MemoryRegion>> QemuMonitor::MemoryMap() {
  absl::StatusOr<std::string> reply = connection_->HmpCommand(uuid_, "info mtree -f");
  if (!reply.ok()) return reply.status();
  return ParseMtreeFlat(*reply);
}

absl::StatusOr<uint64_t> QemuMonitor::GuestPhysicalToHostVirtual(uint64_t gpa) {
  absl::StatusOr<std::string> reply =
      connection_->HmpCommand(uuid_, absl::StrFormat("gpa2hva 0x%x", gpa));
  if (!reply.ok()) return reply.status();
  return ParseGpa2Hva(*reply);
}

absl::StatusOr<std::vector<QemuCpu>> QemuMonitor::Cpus() {
  absl::StatusOr<std::string> reply =
      connection_->QmpCommand(uuid_, R"({"execute":"query-cpus-fast"})");
  if (!reply.ok()) return reply.status();
  return ParseQueryCpusFast(*reply);
}

absl::StatusOr<engine::CpuFeatures> QemuMonitor::Features() {
  absl::StatusOr<std::vector<QemuCpu>> cpus = Cpus();
  if (!cpus.ok()) return cpus.status();
  if (cpus->empty()) return absl::NotFoundError("QEMU reports no vCPUs");
  const std::string& cpu = cpus->front().qom_path;
  engine::CpuFeatures features;
  absl::StatusOr<std::string> reply =
      connection_->QmpCommand(uuid_, QomGetCommand(cpu, "cr8legacy"));
  if (!reply.ok()) return reply.status();
  absl::StatusOr<bool> cr8legacy = ParseQomGetBool(*reply);
  if (!cr8legacy.ok()) return cr8legacy.status();
  features.cr8legacy = *cr8legacy;
  reply = connection_->QmpCommand(uuid_, QomGetCommand(cpu + "/lapic", "vapic"));
  if (!reply.ok()) return reply.status();
  absl::StatusOr<bool> vapic = ParseQomGetBool(*reply);
  if (!vapic.ok()) return vapic.status();
  features.qemu_vapic_active = *vapic;
  return features;
}

absl::StatusOr<QemuRunStatus> QemuMonitor::RunStatus() {
  absl::StatusOr<std::string> reply =
      connection_->QmpCommand(uuid_, R"({"execute":"query-status"})");
  if (!reply.ok()) return reply.status();
  return ParseQueryStatus(*reply);
}

}  // namespace tprd::backend

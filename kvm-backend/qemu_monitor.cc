#include "kvm-backend/qemu_monitor.h"

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <fstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tprd::backend {

namespace {
// Leftovers of the channels of tprd versions before 2026-12-06, which made QEMU listen on
// /run/tprd/gdb/UUID.sock (a gdbstub started with a device gets the chardev label "gdb").
bool IsOldTprdGdbSocket(const QemuChardev& chardev) {
  return chardev.label == "gdb" && absl::StrContains(chardev.filename, "/run/tprd/gdb/");
}
}  // namespace

bool IsRunningTprd(int pid) {
  // "PID (COMM) STATE ...": a zombie (a killed tprd not yet reaped) holds nothing.
  std::ifstream stat(absl::StrCat("/proc/", pid, "/stat"));
  std::string line;
  if (!stat || !std::getline(stat, line)) return false;
  const size_t open = line.find('('), close = line.rfind(')');
  if (open == std::string::npos || close == std::string::npos || close + 2 >= line.size()) {
    return false;
  }
  const char state = line[close + 2];
  return line.substr(open + 1, close - open - 1) == "tprd" && state != 'Z' && state != 'X';
}

absl::StatusOr<std::unique_ptr<UnixSocketStream>> QemuMonitor::StartGdbServer() {
  absl::StatusOr<std::string> listing =
      connection_->QmpCommand(uuid_, R"({"execute":"query-chardev"})");
  if (!listing.ok()) return listing.status();
  absl::StatusOr<std::vector<QemuChardev>> chardevs = ParseQueryChardev(*listing);
  if (!chardevs.ok()) return chardevs.status();
  for (const QemuChardev& chardev : *chardevs) {
    if (chardev.label == "gdb" && !IsOldTprdGdbSocket(chardev)) {
      return absl::AlreadyExistsError(
          absl::StrCat("domain ", uuid_, ": a gdbstub is already running on '", chardev.filename,
                       "' (another debugger holds the gdbstub?)"));
    }
    if (absl::StartsWith(chardev.label, kGdbChardevPrefix) && !chardev.frontend_open) {
      (void)connection_->QmpCommand(uuid_, ChardevRemoveCommand(chardev.label));
    }
    const std::optional<int> holder = TprdPidOfGdbChardev(chardev.label, kGdbChardevPrefix);
    if (chardev.frontend_open && holder && *holder != getpid() && tprd_running_(*holder)) {
      return absl::AlreadyExistsError(absl::StrCat(
          "domain ", uuid_, ": another tprd (pid ", *holder,
          ") holds its gdbstub; one tprd manages a domain: stop the other, or make the "
          "adopt_domains of the tprds on this host not overlap"));
    }
  }

  int pair[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair) != 0) {
    return absl::ResourceExhaustedError(absl::StrCat("socketpair: ", std::strerror(errno)));
  }
  absl::StatusOr<std::unique_ptr<UnixSocketStream>> ours =
      UnixSocketStream::FromConnectedFd(pair[0]);
  if (!ours.ok()) {
    close(pair[1]);
    return ours.status();
  }
  static std::atomic<uint64_t> next_channel{0};
  const std::string id = absl::StrCat(kGdbChardevPrefix, getpid(), "-", next_channel++);
  absl::StatusOr<std::string> reply =
      connection_->QmpCommandWithFd(uuid_, GetfdCommand(id), pair[1]);
  close(pair[1]);  // QEMU has its own copy now (or none, on failure)
  if (!reply.ok()) return reply.status();
  if (absl::Status s = CheckQmpSuccess(*reply); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("domain ", uuid_, ": getfd: ", s.message()));
  }
  reply = connection_->QmpCommand(uuid_, ChardevAddSocketFdCommand(id, id));
  absl::Status added = reply.ok() ? CheckQmpSuccess(*reply) : reply.status();
  if (!added.ok()) {
    (void)connection_->QmpCommand(uuid_, ClosefdCommand(id));
    return absl::Status(added.code(),
                        absl::StrCat("domain ", uuid_, ": chardev-add: ", added.message()));
  }
  reply = connection_->HmpCommand(uuid_, absl::StrCat("gdbserver chardev:", id));
  absl::Status started = reply.ok() ? CheckGdbserverReply(*reply) : reply.status();
  if (!started.ok()) {
    (void)connection_->QmpCommand(uuid_, ChardevRemoveCommand(id));
    return absl::Status(started.code(), absl::StrCat("domain ", uuid_, ": ", started.message()));
  }
  return ours;
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

absl::StatusOr<uint32_t> QemuMonitor::ReadAcpiPmTimer() {
  if (!pm_timer_port_) {
    absl::StatusOr<std::string> mtree = connection_->HmpCommand(uuid_, "info mtree");
    if (!mtree.ok()) return mtree.status();  // not cached: a failed call may work next time
    pm_timer_port_ = ParseAcpiPmTimerPort(*mtree);
  }
  if (!pm_timer_port_->ok()) return pm_timer_port_->status();
  absl::StatusOr<std::string> reply =
      connection_->HmpCommand(uuid_, absl::StrFormat("i /w 0x%x", **pm_timer_port_));
  if (!reply.ok()) return reply.status();
  return ParseIoPortReadLong(*reply);
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
  // Unknown (an old QEMU, a refused command) is not an error: the caller then picks what is safe
  // under either accelerator.
  reply = connection_->QmpCommand(uuid_, R"({"execute":"query-kvm"})");
  if (reply.ok()) {
    if (absl::StatusOr<bool> kvm = ParseQueryKvmEnabled(*reply); kvm.ok()) {
      features.accelerator = *kvm ? engine::Accelerator::kKvm : engine::Accelerator::kTcg;
    }
  }
  return features;
}

absl::StatusOr<QemuRunStatus> QemuMonitor::RunStatus() {
  absl::StatusOr<std::string> reply =
      connection_->QmpCommand(uuid_, R"({"execute":"query-status"})");
  if (!reply.ok()) return reply.status();
  return ParseQueryStatus(*reply);
}

}  // namespace tprd::backend

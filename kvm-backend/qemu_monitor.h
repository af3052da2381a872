// The QEMU monitor commands tprd needs, for one domain, through libvirt-qemu: the gdbstub on a
// private unix socket, the APIC's TPR, the memory map, guest-physical to host-virtual
// addresses, CPU properties and QEMU's run state.
#ifndef TPRD_KVM_BACKEND_QEMU_MONITOR_H_
#define TPRD_KVM_BACKEND_QEMU_MONITOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/engine/guest_vm.h"
#include "kvm-backend/core/monitor_parsers.h"
#include "kvm-backend/libvirt_connection.h"

namespace tprd::backend {

inline constexpr char kDefaultGdbSocketDirectory[] = "/run/tprd/gdb";

// Creates `path` (and parents) as a root-owned directory of mode 0700, or checks that the
// existing one is exactly that (a directory others can enter would let them reach the gdbstub):
// PERMISSION_DENIED otherwise, naming what is wrong.
absl::Status EnsurePrivateDirectory(const std::string& path);

class QemuMonitor {
 public:
  // `connection` must outlive the monitor.
  QemuMonitor(LibvirtConnection* connection, std::string uuid)
      : connection_(connection), uuid_(std::move(uuid)) {}

  // Starts the gdbstub on DIR/UUID.sock (HMP `gdbserver unix:...,server=on,wait=off`) and
  // returns the socket path. Never TCP: any local user could connect. If a gdbstub already
  // runs on our own socket (a previous tprd died), it is stopped and started again; one on any
  // other device is ALREADY_EXISTS (someone else is debugging the VM).
  absl::StatusOr<std::string> StartGdbServer(const std::string& socket_directory);
  // HMP `gdbserver none` (QEMU removes the socket file).
  absl::Status StopGdbServer();

  absl::StatusOr<uint8_t> ReadTpr(int vcpu);
  absl::StatusOr<std::vector<engine::MemoryRegion>> MemoryMap();
  absl::StatusOr<uint64_t> GuestPhysicalToHostVirtual(uint64_t gpa);
  absl::StatusOr<std::vector<QemuCpu>> Cpus();
  // cr8legacy of vCPU 0 and `vapic` of its local APIC (QEMU's own TPR patcher).
  absl::StatusOr<engine::CpuFeatures> Features();
  absl::StatusOr<QemuRunStatus> RunStatus();

  const std::string& uuid() const { return uuid_; }

 private:
  LibvirtConnection* connection_;
  std::string uuid_;
};

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_QEMU_MONITOR_H_

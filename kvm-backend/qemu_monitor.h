// The QEMU monitor commands tprd needs, for one domain, through libvirt-qemu: the gdbstub on a
// socketpair handed to QEMU, the APIC's TPR, the memory map, guest-physical to host-virtual
// addresses, CPU properties and QEMU's run state.
#ifndef TPRD_KVM_BACKEND_QEMU_MONITOR_H_
#define TPRD_KVM_BACKEND_QEMU_MONITOR_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/engine/guest_vm.h"
#include "kvm-backend/core/monitor_parsers.h"
#include "kvm-backend/core/unix_socket_stream.h"
#include "kvm-backend/libvirt_connection.h"

namespace tprd::backend {

// Ids of the chardevs tprd adds for its gdbstub channel: this prefix, then tprd's PID and a
// counter. A chardev with this prefix and no frontend is a leftover of a tprd that died between
// `chardev-add` and `gdbserver`; one with a frontend is a previous tprd's live channel.
inline constexpr char kGdbChardevPrefix[] = "tprd-gdb-";

// Whether `pid` is a running tprd (its /proc/PID/comm says so): whose gdbstub channel a tprd
// must not take over.
bool IsRunningTprd(int pid);

class QemuMonitor {
 public:
  // `connection` must outlive the monitor. `tprd_running` tells whether a process id found in
  // a tprd gdbstub chardev's id is a live tprd (tests give their own).
  QemuMonitor(LibvirtConnection* connection, std::string uuid,
              std::function<bool(int)> tprd_running = IsRunningTprd)
      : connection_(connection), uuid_(std::move(uuid)), tprd_running_(std::move(tprd_running)) {}

  // Starts the gdbstub on a channel nobody else can reach and returns tprd's end of it: tprd
  // makes a socketpair, passes one end to QEMU (`getfd` through
  // virDomainQemuMonitorCommandWithFiles), makes it a client socket chardev (`chardev-add`,
  // already connected) and starts the gdbstub on that chardev (HMP `gdbserver chardev:ID`).
  // No path, no listening socket, no TCP; works whatever user QEMU runs as. A previous tprd's
  // channel (a tprd killed outright) is replaced; one of another tprd that is still running is
  // ALREADY_EXISTS (two tprds would take the gdbstub from each other, each seeing its session
  // break), and so is a gdbstub on any other device (someone else is debugging the VM).
  absl::StatusOr<std::unique_ptr<UnixSocketStream>> StartGdbServer();
  // HMP `gdbserver none` (QEMU deletes the chardev the gdbstub used).
  absl::Status StopGdbServer();

  absl::StatusOr<uint8_t> ReadTpr(int vcpu);
  absl::StatusOr<std::vector<engine::MemoryRegion>> MemoryMap();
  absl::StatusOr<uint64_t> GuestPhysicalToHostVirtual(uint64_t gpa);
  absl::StatusOr<std::vector<QemuCpu>> Cpus();
  // cr8legacy of vCPU 0 and `vapic` of its local APIC (QEMU's own TPR patcher).
  absl::StatusOr<engine::CpuFeatures> Features();
  absl::StatusOr<QemuRunStatus> RunStatus();
  // The machine's ACPI PM timer: HMP `i /w` of its port, found once in `info mtree` (NOT_FOUND
  // when the machine has none).
  absl::StatusOr<uint32_t> ReadAcpiPmTimer();

  const std::string& uuid() const { return uuid_; }

 private:
  LibvirtConnection* connection_;
  std::string uuid_;
  std::function<bool(int)> tprd_running_;
  std::optional<absl::StatusOr<uint16_t>> pm_timer_port_;  // looked up at the first read
};

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_QEMU_MONITOR_H_

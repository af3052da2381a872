#include "kvm-backend/process_memory.h"

#include <sys/uio.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_format.h"

namespace tprd::backend {

absl::StatusOr<std::unique_ptr<ProcessMemory>> ProcessMemory::Create(int pid,
                                                                     QemuMonitor& monitor) {
  absl::StatusOr<std::vector<engine::MemoryRegion>> map = monitor.MemoryMap();
  if (!map.ok()) return map.status();
  absl::StatusOr<uint64_t> base = monitor.GuestPhysicalToHostVirtual(0);
  if (!base.ok()) return base.status();
  std::vector<Window> windows;
  for (const engine::MemoryRegion& region : *map) {
    if (region.name != "pc.ram" || region.end >= (uint64_t{1} << 32)) continue;
    absl::StatusOr<uint64_t> hva = monitor.GuestPhysicalToHostVirtual(region.start);
    if (!hva.ok() || *hva != *base + region.start) continue;  // not in the linear mapping
    if (!windows.empty() && windows.back().end + 1 == region.start &&
        windows.back().hva_of_start + (region.start - windows.back().start) == *hva) {
      windows.back().end = region.end;  // merge adjacent ranges of the same mapping
    } else {
      windows.push_back({region.start, region.end, *hva});
    }
  }
  if (windows.empty()) {
    return absl::NotFoundError("memory map has no pc.ram below 4 GiB in one mapping");
  }
  return std::make_unique<ProcessMemory>(pid, std::move(windows));
}

absl::StatusOr<std::unique_ptr<LiveMemoryReader>> OpenProcessMemory(LibvirtConnection* connection,
                                                                    const std::string& uuid) {
  absl::StatusOr<int> pid = connection->QemuPid(uuid);
  if (!pid.ok()) return pid.status();
  QemuMonitor monitor(connection, uuid);
  absl::StatusOr<std::unique_ptr<ProcessMemory>> memory = ProcessMemory::Create(*pid, monitor);
  if (!memory.ok()) return memory.status();
  return std::unique_ptr<LiveMemoryReader>(*std::move(memory));
}

absl::Status ProcessMemory::Read(uint64_t gpa, absl::Span<uint8_t> out) const {
  if (out.empty()) return absl::OkStatus();
  uint64_t last = gpa + out.size() - 1;
  if (last < gpa) return absl::OutOfRangeError("read wraps around the address space");
  const Window* window = nullptr;
  for (const Window& w : windows_) {
    if (gpa >= w.start && last <= w.end) window = &w;
  }
  if (window == nullptr) {
    return absl::OutOfRangeError(
        absl::StrFormat("guest physical 0x%x+0x%x is not inside one RAM window", gpa, out.size()));
  }
  size_t done = 0;
  while (done < out.size()) {
    iovec local{out.data() + done, out.size() - done};
    iovec remote{reinterpret_cast<void*>(window->hva_of_start + (gpa - window->start) + done),
                 out.size() - done};
    ssize_t n = process_vm_readv(pid_, &local, 1, &remote, 1, 0);
    if (n <= 0) {
      int error = n == 0 ? EFAULT : errno;
      std::string message =
          absl::StrFormat("process_vm_readv of QEMU pid %d at guest physical 0x%x: %s", pid_,
                          gpa + done, std::strerror(error));
      if (error == EPERM) return absl::PermissionDeniedError(message);
      if (error == ESRCH) return absl::UnavailableError(message);
      return absl::InternalError(message);
    }
    done += static_cast<size_t>(n);
  }
  return absl::OkStatus();
}

}  // namespace tprd::backend

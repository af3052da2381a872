// Reads of guest-physical memory that do not stop the guest (the gdbstub would). ProcessMemory
// is the real one; the daemon and QemuGuestVm open theirs through a LiveMemoryOpener so that
// their tests can hand in a fake.
#ifndef TPRD_KVM_BACKEND_LIVE_MEMORY_READER_H_
#define TPRD_KVM_BACKEND_LIVE_MEMORY_READER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace tprd::backend {

class LibvirtConnection;

class LiveMemoryReader {
 public:
  virtual ~LiveMemoryReader() = default;

  // Fills `out` from guest physical `gpa` while the guest may run: a racing guest write may
  // leave a mix of old and new bytes.
  virtual absl::Status Read(uint64_t gpa, absl::Span<uint8_t> out) const = 0;
};

// Opens a LiveMemoryReader of a running domain's guest memory; the real one is
// OpenProcessMemory (process_memory.h).
using LiveMemoryOpener = std::function<absl::StatusOr<std::unique_ptr<LiveMemoryReader>>(
    LibvirtConnection* connection, const std::string& uuid)>;

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_LIVE_MEMORY_READER_H_

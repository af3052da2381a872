// Reads of guest-physical memory that do not stop the guest (the gdbstub would). ProcessMemory
// is the real one; the daemon takes a LiveMemoryReader so its tests can hand in a fake.
#ifndef TPRD_KVM_BACKEND_LIVE_MEMORY_READER_H_
#define TPRD_KVM_BACKEND_LIVE_MEMORY_READER_H_

#include <cstdint>

#include "absl/status/status.h"
#include "absl/types/span.h"

namespace tprd::backend {

class LiveMemoryReader {
 public:
  virtual ~LiveMemoryReader() = default;

  // Fills `out` from guest physical `gpa` while the guest may run: a racing guest write may
  // leave a mix of old and new bytes.
  virtual absl::Status Read(uint64_t gpa, absl::Span<uint8_t> out) const = 0;
};

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_LIVE_MEMORY_READER_H_

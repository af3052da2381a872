// A LiveMemoryReader over bytes the test holds, for the tests of what opens one through a
// LiveMemoryOpener (QemuGuestVm, EngineDomainController): one window of guest-physical memory,
// or one error for every read. It remembers each read, so a test can tell which path served it.
#ifndef TPRD_TESTS_FAKES_FAKE_LIVE_MEMORY_READER_H_
#define TPRD_TESTS_FAKES_FAKE_LIVE_MEMORY_READER_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "kvm-backend/live_memory_reader.h"

namespace tprd::backend {

// One read the fake served or refused.
struct LiveMemoryRead {
  uint64_t gpa = 0;
  size_t size = 0;
};

class FakeLiveMemoryReader : public LiveMemoryReader {
 public:
  // Guest physical [first_gpa, first_gpa + bytes.size()) holds `bytes`; reads outside it are
  // OUT_OF_RANGE as ProcessMemory's are. A non-OK `error` fails every read. `reads` (not owned)
  // gets every read.
  FakeLiveMemoryReader(uint64_t first_gpa, std::vector<uint8_t> bytes, absl::Status error,
                       std::vector<LiveMemoryRead>* reads)
      : first_gpa_(first_gpa), bytes_(std::move(bytes)), error_(std::move(error)), reads_(reads) {}

  absl::Status Read(uint64_t gpa, absl::Span<uint8_t> out) const override;

 private:
  uint64_t first_gpa_;
  std::vector<uint8_t> bytes_;
  absl::Status error_;
  std::vector<LiveMemoryRead>* reads_;
};

}  // namespace tprd::backend

#endif  // TPRD_TESTS_FAKES_FAKE_LIVE_MEMORY_READER_H_

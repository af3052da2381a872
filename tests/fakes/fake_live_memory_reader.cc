#include "tests/fakes/fake_live_memory_reader.h"

#include <cstring>

namespace tprd::backend {

absl::Status FakeLiveMemoryReader::Read(uint64_t gpa, absl::Span<uint8_t> out) const {
  reads_->push_back({gpa, out.size()});
  if (!error_.ok()) return error_;
  if (gpa < first_gpa_ || gpa + out.size() > first_gpa_ + bytes_.size()) {
    return absl::OutOfRangeError("outside the fake's window");
  }
  std::memcpy(out.data(), bytes_.data() + (gpa - first_gpa_), out.size());
  return absl::OkStatus();
}

}  // namespace tprd::backend

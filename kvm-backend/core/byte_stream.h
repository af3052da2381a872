// A bidirectional byte stream to a peer (the gdbstub's socket). The protocol client sees only this
// interface: UnixSocketStream implements it for real, tests/fakes/fake_byte_stream.h in memory.
#ifndef TPRD_KVM_BACKEND_CORE_BYTE_STREAM_H_
#define TPRD_KVM_BACKEND_CORE_BYTE_STREAM_H_

#include <cstddef>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tprd::backend {

class ByteStream {
 public:
  virtual ~ByteStream() = default;

  // Writes every byte of `data`, or fails: DEADLINE_EXCEEDED if the peer does not take them by
  // `deadline`, UNAVAILABLE if the peer closed. A failed write may have sent a prefix.
  virtual absl::Status Write(std::string_view data, absl::Time deadline) = 0;

  // Returns between 1 and `max_bytes` bytes as soon as any are available. DEADLINE_EXCEEDED if
  // none arrive by `deadline` (a deadline in the past still takes bytes already waiting),
  // UNAVAILABLE once the peer closed and everything it sent was read.
  virtual absl::StatusOr<std::string> Read(size_t max_bytes, absl::Time deadline) = 0;

  // Closes our end. Idempotent; later calls fail with FAILED_PRECONDITION.
  virtual void Close() = 0;
};

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_CORE_BYTE_STREAM_H_

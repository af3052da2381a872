// ByteStream over a connected AF_UNIX stream socket (QEMU's gdbstub socket). The descriptor is
// non-blocking; every wait is a poll() bounded by the caller's deadline.
#ifndef TPRD_KVM_BACKEND_CORE_UNIX_SOCKET_STREAM_H_
#define TPRD_KVM_BACKEND_CORE_UNIX_SOCKET_STREAM_H_

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kvm-backend/core/byte_stream.h"

namespace tprd::backend {

class UnixSocketStream : public ByteStream {
 public:
  // Connects to the unix socket at `path`. NOT_FOUND if nothing listens there (no such file or
  // connection refused), DEADLINE_EXCEEDED if the connection is not accepted by `deadline`.
  static absl::StatusOr<std::unique_ptr<UnixSocketStream>> Connect(std::string_view path,
                                                                   absl::Time deadline);
  // Takes ownership of an already connected stream socket (e.g. one end of a socketpair) and makes
  // it non-blocking.
  static absl::StatusOr<std::unique_ptr<UnixSocketStream>> FromConnectedFd(int fd);

  ~UnixSocketStream() override;
  UnixSocketStream(const UnixSocketStream&) = delete;
  UnixSocketStream& operator=(const UnixSocketStream&) = delete;

  absl::Status Write(std::string_view data, absl::Time deadline) override;
  absl::StatusOr<std::string> Read(size_t max_bytes, absl::Time deadline) override;
  void Close() override;

 private:
  explicit UnixSocketStream(int fd) : fd_(fd) {}
  // Waits until `events` are ready on fd_ or `deadline` passes.
  absl::Status WaitFor(short events, absl::Time deadline, const char* what);

  int fd_ = -1;
};

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_CORE_UNIX_SOCKET_STREAM_H_

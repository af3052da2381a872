#include "kvm-backend/core/unix_socket_stream.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace tprd::backend {
namespace {

absl::Status ErrnoStatus(int err, std::string_view what) {
  std::string message = absl::StrCat(std::string(what), ": ", strerror(err));
  switch (err) {
    case ENOENT:
    case ECONNREFUSED:
      return absl::NotFoundError(message);
    case EPIPE:
    case ECONNRESET:
    case ENOTCONN:
      return absl::UnavailableError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    default:
      return absl::InternalError(message);
  }
}

// Milliseconds until `deadline` for poll(), rounded up so we never spin just before it.
int PollTimeoutMs(absl::Time deadline) {
  absl::Duration left = deadline - absl::Now();
  if (left <= absl::ZeroDuration()) return 0;
  int64_t ms = absl::ToInt64Milliseconds(absl::Ceil(left, absl::Milliseconds(1)));
  return static_cast<int>(std::min<int64_t>(ms, 60'000));
}

}  // namespace

absl::StatusOr<std::unique_ptr<UnixSocketStream>> UnixSocketStream::Connect(std::string_view path,
                                                                            absl::Time deadline) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.empty() || path.size() >= sizeof(address.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unix socket path is empty or too long: ", std::string(path)));
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus(errno, "socket(AF_UNIX)");
  std::unique_ptr<UnixSocketStream> stream(new UnixSocketStream(fd));
  const std::string context = absl::StrCat("connect to ", std::string(path));
  if (connect(fd, reinterpret_cast<const sockaddr*>(&address), sizeof(address)) == 0) {
    return stream;
  }
  if (errno != EINPROGRESS && errno != EAGAIN) return ErrnoStatus(errno, context);
  // A full listen backlog: wait for the peer to accept.
  if (absl::Status ready = stream->WaitFor(POLLOUT, deadline, context.c_str()); !ready.ok()) {
    return ready;
  }
  int error = 0;
  socklen_t length = sizeof(error);
  if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &error, &length) != 0) {
    return ErrnoStatus(errno, context);
  }
  if (error != 0) return ErrnoStatus(error, context);
  return stream;
}

absl::StatusOr<std::unique_ptr<UnixSocketStream>> UnixSocketStream::FromConnectedFd(int fd) {
  int flags = fcntl(fd, F_GETFL);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) {
    int err = errno;
    close(fd);
    return ErrnoStatus(err, "make socket non-blocking");
  }
  return std::unique_ptr<UnixSocketStream>(new UnixSocketStream(fd));
}

UnixSocketStream::~UnixSocketStream() { Close(); }

void UnixSocketStream::Close() {
  if (fd_ >= 0) {
    close(fd_);
    fd_ = -1;
  }
}

absl::Status UnixSocketStream::WaitFor(short events, absl::Time deadline, const char* what) {
  while (true) {
    pollfd entry{fd_, events, 0};
    int timeout_ms = PollTimeoutMs(deadline);
    int ready = poll(&entry, 1, timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, what);
    }
    // POLLHUP/POLLERR count as ready: the following read or write reports what happened.
    if (ready > 0) return absl::OkStatus();
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(what, ": no progress before the deadline"));
    }
  }
}

absl::Status UnixSocketStream::Write(std::string_view data, absl::Time deadline) {
  if (fd_ < 0) return absl::FailedPreconditionError("write on a closed stream");
  while (!data.empty()) {
    ssize_t sent = send(fd_, data.data(), data.size(), MSG_NOSIGNAL);
    if (sent > 0) {
      data.remove_prefix(static_cast<size_t>(sent));
      continue;
    }
    if (sent < 0 && errno == EINTR) continue;
    if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (absl::Status ready = WaitFor(POLLOUT, deadline, "write to socket"); !ready.ok()) {
        return ready;
      }
      continue;
    }
    return ErrnoStatus(sent < 0 ? errno : EPIPE, "write to socket");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> UnixSocketStream::Read(size_t max_bytes, absl::Time deadline) {
  if (fd_ < 0) return absl::FailedPreconditionError("read on a closed stream");
  if (max_bytes == 0) return absl::InvalidArgumentError("read of zero bytes");
  std::string buffer(max_bytes, '\0');
  while (true) {
    ssize_t got = recv(fd_, buffer.data(), buffer.size(), 0);
    if (got > 0) {
      buffer.resize(static_cast<size_t>(got));
      return buffer;
    }
    if (got == 0) return absl::UnavailableError("peer closed the socket");
    if (errno == EINTR) continue;
    if (errno != EAGAIN && errno != EWOULDBLOCK) return ErrnoStatus(errno, "read from socket");
    if (absl::Status ready = WaitFor(POLLIN, deadline, "read from socket"); !ready.ok()) {
      return ready;
    }
  }
}

}  // namespace tprd::backend

#include <stdlib.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <string>

#include "gtest/gtest.h"
#include "kvm-backend/core/unix_socket_stream.h"

namespace tprd::backend {
namespace {

TEST(UnixSocketStreamTest, ExchangesBytesAndReportsPeerClose) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, fds), 0);
  absl::StatusOr<std::unique_ptr<UnixSocketStream>> stream =
      UnixSocketStream::FromConnectedFd(fds[0]);
  ASSERT_TRUE(stream.ok()) << stream.status();
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  ASSERT_TRUE((*stream)->Write("$OK#9a", deadline).ok());
  char buffer[16] = {};
  ASSERT_EQ(read(fds[1], buffer, sizeof(buffer)), 6);
  EXPECT_EQ(std::string(buffer, 6), "$OK#9a");
  // Nothing sent yet: a deadline already past fails at once, without blocking.
  EXPECT_TRUE(absl::IsDeadlineExceeded((*stream)->Read(16, absl::Now()).status()));
  ASSERT_EQ(write(fds[1], "+", 1), 1);
  absl::StatusOr<std::string> got = (*stream)->Read(16, deadline);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, "+");
  close(fds[1]);
  EXPECT_TRUE(absl::IsUnavailable((*stream)->Read(16, deadline).status()));
  EXPECT_TRUE(absl::IsUnavailable((*stream)->Write("+", deadline)));
  (*stream)->Close();
  EXPECT_TRUE(absl::IsFailedPrecondition((*stream)->Read(16, deadline).status()));
}

TEST(UnixSocketStreamTest, ConnectsToAListeningSocketAndFailsWithoutOne) {
  char dir_template[] = "/tmp/tprd-gdb-test-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  const std::string path = std::string(dir_template) + "/sock";
  const absl::Time deadline = absl::Now() + absl::Seconds(5);
  EXPECT_TRUE(absl::IsNotFound(UnixSocketStream::Connect(path, deadline).status()));

  int listener = socket(AF_UNIX, SOCK_STREAM, 0);
  ASSERT_GE(listener, 0);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  path.copy(address.sun_path, sizeof(address.sun_path) - 1);
  ASSERT_EQ(bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
  ASSERT_EQ(listen(listener, 1), 0);
  absl::StatusOr<std::unique_ptr<UnixSocketStream>> stream =
      UnixSocketStream::Connect(path, deadline);
  ASSERT_TRUE(stream.ok()) << stream.status();
  int peer = accept(listener, nullptr, nullptr);
  ASSERT_GE(peer, 0);
  ASSERT_EQ(write(peer, "\x03", 1), 1);
  EXPECT_EQ(*(*stream)->Read(1, deadline), "\x03");
  close(peer);
  close(listener);
  unlink(path.c_str());
  rmdir(dir_template);
  EXPECT_FALSE(UnixSocketStream::Connect(std::string(200, 'x'), deadline).ok());
}

}  // namespace
}  // namespace tprd::backend

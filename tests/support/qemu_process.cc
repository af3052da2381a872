#include "tests/support/qemu_process.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

extern char** environ;

namespace tprd::testing {
namespace {

std::string DefaultQemuBinary() {
  // The Debian wrapper in /usr/bin only re-execs this; calling it directly keeps pid() the
  // QEMU process.
  const char* real = "/usr/libexec/qemu-system-i386";
  if (access(real, X_OK) == 0) return real;
  return "qemu-system-i386";
}

}  // namespace

std::vector<std::string> QemuCommandLine(const QemuOptions& options) {
  std::vector<std::string> args = {
      options.qemu_binary.empty() ? DefaultQemuBinary() : options.qemu_binary,
      "-kernel",
      options.kernel,
      "-smp",
      std::to_string(options.smp),
      "-m",
      std::to_string(options.memory_mib),
      "-display",
      "none",
      "-monitor",
      "none",
      "-serial",
      "stdio",
      "-no-reboot",
      "-accel",
      "tcg"};
  if (!options.append.empty()) args.insert(args.end(), {"-append", options.append});
  if (!options.initrd.empty()) args.insert(args.end(), {"-initrd", options.initrd});
  if (!options.cpu.empty()) args.insert(args.end(), {"-cpu", options.cpu});
  if (options.vapic_off) args.insert(args.end(), {"-global", "apic.vapic=off"});
  args.insert(args.end(), options.extra_args.begin(), options.extra_args.end());
  return args;
}

std::map<std::string, std::string> ParseSerialFields(std::string_view line) {
  std::map<std::string, std::string> fields;
  size_t pos = 0;
  bool first = true;
  while (pos < line.size()) {
    size_t end = line.find(' ', pos);
    if (end == std::string_view::npos) end = line.size();
    std::string_view word = line.substr(pos, end - pos);
    pos = end + 1;
    if (word.empty()) continue;
    size_t eq = word.find('=');
    if (first && eq == std::string_view::npos) {
      fields[""] = std::string(word);
    } else if (eq != std::string_view::npos) {
      fields[std::string(word.substr(0, eq))] = std::string(word.substr(eq + 1));
    }
    first = false;
  }
  return fields;
}

absl::StatusOr<std::unique_ptr<QemuProcess>> QemuProcess::Start(const QemuOptions& options) {
  if (options.kernel.empty()) return absl::InvalidArgumentError("QemuOptions.kernel is empty");
  if (access(options.kernel.c_str(), R_OK) != 0) {
    return absl::NotFoundError(absl::StrCat("guest kernel not readable: ", options.kernel));
  }
  int pipe_fds[2];
  if (pipe2(pipe_fds, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("pipe2: ", std::strerror(errno)));
  }
  std::vector<std::string> args = QemuCommandLine(options);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
  posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 2);
  pid_t pid = 0;
  int rc = posix_spawnp(&pid, argv[0], &actions, nullptr, argv.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(pipe_fds[1]);
  if (rc != 0) {
    close(pipe_fds[0]);
    return absl::UnavailableError(absl::StrCat("cannot start ", args[0], ": ", std::strerror(rc)));
  }
  return std::unique_ptr<QemuProcess>(new QemuProcess(pid, pipe_fds[0]));
}

QemuProcess::~QemuProcess() {
  Kill().IgnoreError();
  if (output_fd_ >= 0) close(output_fd_);
}

absl::Status QemuProcess::Kill() {
  if (exited_) return absl::OkStatus();
  if (kill(pid_, SIGKILL) != 0 && errno != ESRCH) {
    return absl::InternalError(absl::StrCat("kill ", pid_, ": ", std::strerror(errno)));
  }
  Reap(/*block=*/true);
  return absl::OkStatus();
}

void QemuProcess::Reap(bool block) {
  if (exited_) return;
  int status = 0;
  pid_t r;
  do {
    r = waitpid(pid_, &status, block ? 0 : WNOHANG);
  } while (r < 0 && errno == EINTR);
  if (r == pid_ || (r < 0 && errno == ECHILD)) {
    exited_ = true;
    exit_status_ = status;
  }
}

void QemuProcess::ReadSome(Clock::time_point deadline) {
  if (output_fd_ < 0) return;
  auto now = Clock::now();
  if (now >= deadline) return;
  auto wait = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - now).count();
  pollfd pfd = {output_fd_, POLLIN, 0};
  int ready = poll(&pfd, 1, static_cast<int>(std::min<long long>(wait + 1, 1000)));
  if (ready <= 0) return;
  char buf[4096];
  ssize_t n = read(output_fd_, buf, sizeof(buf));
  if (n < 0 && errno == EINTR) return;
  if (n <= 0) {
    // EOF: QEMU closed its output, so it is gone or going.
    close(output_fd_);
    output_fd_ = -1;
    if (!partial_.empty()) lines_.push_back(std::move(partial_));
    partial_.clear();
    Reap(/*block=*/true);
    return;
  }
  for (ssize_t i = 0; i < n; ++i) {
    char c = buf[i];
    if (c == '\n') {
      lines_.push_back(std::move(partial_));
      partial_.clear();
    } else if (c != '\r' && partial_.size() < 4096) {
      partial_.push_back(c);
    }
  }
}

absl::StatusOr<std::string> QemuProcess::WaitForLine(
    const std::function<bool(const std::string&)>& match, std::chrono::milliseconds timeout,
    size_t from_line) {
  const auto deadline = Clock::now() + timeout;
  size_t next = from_line;
  for (;;) {
    for (; next < lines_.size(); ++next) {
      if (match(lines_[next])) return lines_[next];
    }
    if (output_fd_ < 0) {
      return absl::UnavailableError(
          absl::StrCat("QEMU exited (status ", exit_status_, "); last lines:\n", LastLines()));
    }
    if (Clock::now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(
          "no matching serial line within ", timeout.count(), " ms; last lines:\n", LastLines()));
    }
    ReadSome(deadline);
  }
}

absl::StatusOr<std::string> QemuProcess::WaitForPrefix(std::string_view prefix,
                                                       std::chrono::milliseconds timeout,
                                                       size_t from_line) {
  std::string wanted(prefix);
  return WaitForLine(
      [&wanted](const std::string& line) { return line.compare(0, wanted.size(), wanted) == 0; },
      timeout, from_line);
}

void QemuProcess::ReadFor(std::chrono::milliseconds duration) {
  const auto deadline = Clock::now() + duration;
  while (output_fd_ >= 0 && Clock::now() < deadline) ReadSome(deadline);
}

std::string QemuProcess::LastLines(size_t count) const {
  size_t start = lines_.size() > count ? lines_.size() - count : 0;
  std::vector<std::string> tail(lines_.begin() + start, lines_.end());
  if (!partial_.empty()) tail.push_back(partial_ + " (partial)");
  return absl::StrJoin(tail, "\n");
}

}  // namespace tprd::testing

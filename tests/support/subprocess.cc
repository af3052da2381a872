#include "tests/support/subprocess.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <fstream>
#include <set>
#include <sstream>
#include <string_view>

extern char** environ;

namespace tprd::testing {
namespace {

std::vector<char*> Argv(const std::vector<std::string>& args) {
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  return argv;
}

std::string TempPath(const char* what) {
  static int counter = 0;
  return "/tmp/tprd-run-" + std::to_string(getpid()) + "-" + std::to_string(counter++) + "." + what;
}

// NAME of a NAME=VALUE entry.
std::string_view NameOf(std::string_view entry) { return entry.substr(0, entry.find('=')); }

std::vector<std::string> ChildEnv(const ChildEnvironment& environment) {
  std::set<std::string_view> dropped(environment.unset.begin(), environment.unset.end());
  for (const std::string& entry : environment.set) dropped.insert(NameOf(entry));
  std::vector<std::string> env;
  for (char** entry = environ; *entry != nullptr; ++entry) {
    if (dropped.count(NameOf(*entry)) == 0) env.emplace_back(*entry);
  }
  env.insert(env.end(), environment.set.begin(), environment.set.end());
  return env;
}

double Seconds() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<double>(ts.tv_sec) + ts.tv_nsec / 1e9;
}

}  // namespace

pid_t Spawn(const std::vector<std::string>& args, const std::string& out_path,
            const std::string& err_path) {
  std::vector<char*> argv = Argv(args);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                   0600);
  posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_APPEND,
                                   0600);
  pid_t pid = -1;
  if (posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ) != 0) pid = -1;
  posix_spawn_file_actions_destroy(&actions);
  return pid;
}

void Stop(pid_t pid, int grace_ms) {
  if (pid <= 0) return;
  kill(pid, SIGTERM);
  for (int waited = 0; waited < grace_ms; waited += 20) {
    if (waitpid(pid, nullptr, WNOHANG) == pid) return;
    usleep(20000);  // polling the child's exit, bounded by grace_ms
  }
  kill(pid, SIGKILL);
  waitpid(pid, nullptr, 0);
}

RunResult Run(const std::vector<std::string>& args) {
  const std::string out = TempPath("out"), err = TempPath("err");
  RunResult result;
  const double start = Seconds();
  pid_t pid = Spawn(args, out, err);
  if (pid > 0) {
    int status = 0;
    waitpid(pid, &status, 0);
    result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  result.seconds = Seconds() - start;
  result.out = ReadFile(out);
  result.err = ReadFile(err);
  unlink(out.c_str());
  unlink(err.c_str());
  return result;
}

std::string ReadFile(const std::string& path, uint64_t from) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "";
  in.seekg(static_cast<std::streamoff>(from));
  std::stringstream buffer;
  buffer << in.rdbuf();
  return buffer.str();
}

ChildProcess::ChildProcess(const std::vector<std::string>& args,
                           const ChildEnvironment& environment) {
  if (args.empty()) return;
  int out_pipe[2], err_pipe[2];
  if (::pipe2(out_pipe, O_CLOEXEC) != 0) return;
  if (::pipe2(err_pipe, O_CLOEXEC) != 0) {
    ::close(out_pipe[0]);
    ::close(out_pipe[1]);
    return;
  }
  const std::vector<std::string> env = ChildEnv(environment);
  std::vector<char*> argv = Argv(args), envp = Argv(env);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDIN_FILENO, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&actions, out_pipe[1], STDOUT_FILENO);
  posix_spawn_file_actions_adddup2(&actions, err_pipe[1], STDERR_FILENO);
  if (posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), envp.data()) != 0) pid_ = -1;
  posix_spawn_file_actions_destroy(&actions);
  ::close(out_pipe[1]);
  ::close(err_pipe[1]);
  out_fd_ = out_pipe[0];
  err_fd_ = err_pipe[0];
}

ChildProcess::~ChildProcess() {
  if (pid_ > 0 && !exit_code_) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  if (out_fd_ >= 0) ::close(out_fd_);
  if (err_fd_ >= 0) ::close(err_fd_);
}

std::vector<std::string> ChildProcess::OutLines() const {
  std::vector<std::string> lines;
  std::istringstream stream(out_);
  std::string line;
  while (std::getline(stream, line)) lines.push_back(line);
  if (!out_.empty() && out_.back() != '\n' && !lines.empty()) lines.pop_back();
  return lines;
}

bool ChildProcess::ReadUntil(const std::function<bool()>& done, Clock::time_point deadline) {
  while (!done()) {
    if (!ReadSome(deadline)) return done();
  }
  return true;
}

void ChildProcess::Signal(int signal_number) {
  if (pid_ > 0) ::kill(pid_, signal_number);
}

std::optional<int> ChildProcess::Wait(Clock::time_point deadline) {
  if (!started()) return std::nullopt;
  if (exit_code_) return exit_code_;
  while (out_fd_ >= 0 || err_fd_ >= 0) {
    if (!ReadSome(deadline)) return std::nullopt;
  }
  while (Clock::now() < deadline) {
    int status = 0;
    if (::waitpid(pid_, &status, WNOHANG) == pid_) {
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return exit_code_;
    }
    // The pipes are closed, so the child is exiting: yield briefly.
    ::poll(nullptr, 0, 10);
  }
  return std::nullopt;
}

bool ChildProcess::ReadSome(Clock::time_point deadline) {
  std::vector<pollfd> fds;
  if (out_fd_ >= 0) fds.push_back({out_fd_, POLLIN, 0});
  if (err_fd_ >= 0) fds.push_back({err_fd_, POLLIN, 0});
  if (fds.empty()) return false;
  const auto left =
      std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
  if (left <= 0) return false;
  if (::poll(fds.data(), fds.size(), static_cast<int>(left)) <= 0) return false;
  for (const pollfd& fd : fds) {
    if (fd.revents == 0) continue;
    char buffer[4096];
    const ssize_t got = ::read(fd.fd, buffer, sizeof buffer);
    const bool is_out = fd.fd == out_fd_;
    if (got > 0) {
      (is_out ? out_ : err_).append(buffer, static_cast<size_t>(got));
    } else {
      ::close(fd.fd);
      (is_out ? out_fd_ : err_fd_) = -1;
    }
  }
  return true;
}

uint64_t RssKib(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string key;
  while (in >> key) {
    if (key == "VmRSS:") {
      uint64_t kib = 0;
      in >> kib;
      return kib;
    }
    std::string rest;
    std::getline(in, rest);
  }
  return 0;
}

}  // namespace tprd::testing

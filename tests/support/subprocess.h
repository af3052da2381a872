// Child processes for tests and benchmarks: run a command to completion capturing its output,
// start one in the background and stop it, or run one whose output is read while it runs
// (ChildProcess). Used by the end-to-end tests (tprd, tprctl, virsh), tprctl_test and the
// benchmark harness.
#ifndef TPRD_TESTS_SUPPORT_SUBPROCESS_H_
#define TPRD_TESTS_SUPPORT_SUBPROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

namespace tprd::testing {

struct RunResult {
  int exit_code = -1;  // -1: not started, or killed by a signal
  std::string out;
  std::string err;
  double seconds = 0;  // wall time of the child
};

// Runs argv (argv[0] a path) to completion, stdin from /dev/null, capturing stdout and stderr.
// The child must bound itself (tprctl --timeout, virsh).
RunResult Run(const std::vector<std::string>& argv);

// Starts argv in the background, stdin from /dev/null, stdout to `out_path` and stderr to
// `err_path` (appending; they may be the same file); returns its pid or -1.
pid_t Spawn(const std::vector<std::string>& argv, const std::string& out_path,
            const std::string& err_path);
// SIGTERM, then SIGKILL after `grace_ms`; reaps it. Only for pids Spawn returned.
void Stop(pid_t pid, int grace_ms = 3000);

// The environment a ChildProcess gets: the test's own, without the variables named in `unset`,
// with the NAME=VALUE entries of `set` (which win over inherited ones).
struct ChildEnvironment {
  std::vector<std::string> set;
  std::vector<std::string> unset;
};

// A child with stdin from /dev/null and its stdout and stderr captured through pipes, read while
// it runs (a stream such as `tprctl watch`) or to its end. Every wait is bounded by a deadline.
// The destructor kills (SIGKILL) and reaps a child not waited for to its end.
class ChildProcess {
 public:
  using Clock = std::chrono::steady_clock;

  // argv[0] is a path. started() says whether it could be started.
  explicit ChildProcess(const std::vector<std::string>& argv,
                        const ChildEnvironment& environment = {});
  ~ChildProcess();
  ChildProcess(const ChildProcess&) = delete;
  ChildProcess& operator=(const ChildProcess&) = delete;

  bool started() const { return pid_ > 0; }
  pid_t pid() const { return pid_; }
  // Everything read so far.
  const std::string& out() const { return out_; }
  const std::string& err() const { return err_; }
  // Complete lines of stdout so far.
  std::vector<std::string> OutLines() const;

  // Reads output until `done` holds or `deadline`; returns whether `done` held.
  bool ReadUntil(const std::function<bool()>& done, Clock::time_point deadline);
  void Signal(int signal_number);
  // Reads the output to its end and reaps the child: its exit code (128 + the signal that ended
  // it), or nullopt if it did not end by `deadline`.
  std::optional<int> Wait(Clock::time_point deadline);

 private:
  // Waits for output on either pipe and appends it; false at the deadline or with both closed.
  bool ReadSome(Clock::time_point deadline);

  pid_t pid_ = -1;
  int out_fd_ = -1, err_fd_ = -1;
  std::string out_, err_;
  std::optional<int> exit_code_;
};

// Resident set size of a process in KiB (VmRSS), 0 if it cannot be read.
uint64_t RssKib(pid_t pid);

// The file's bytes from offset `from` on; empty if it cannot be read.
std::string ReadFile(const std::string& path, uint64_t from = 0);

}  // namespace tprd::testing

#endif  // TPRD_TESTS_SUPPORT_SUBPROCESS_H_

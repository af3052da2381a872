// Child processes for tests and benchmarks: run a command to completion capturing its output,
// or start one in the background and stop it. Used by the end-to-end tests (tprd, tprctl,
// virsh) and by the benchmark harness.
#ifndef TPRD_TESTS_SUPPORT_SUBPROCESS_H_
#define TPRD_TESTS_SUPPORT_SUBPROCESS_H_

#include <sys/types.h>

#include <cstdint>
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

// Resident set size of a process in KiB (VmRSS), 0 if it cannot be read.
uint64_t RssKib(pid_t pid);

// The file's bytes from offset `from` on; empty if it cannot be read.
std::string ReadFile(const std::string& path, uint64_t from = 0);

}  // namespace tprd::testing

#endif  // TPRD_TESTS_SUPPORT_SUBPROCESS_H_

// Runs qemu-system-i386 for a test and reads its serial console (COM1) line by line with
// bounded waits. No libvirt: tests that need the test guest running under plain QEMU use it.
#ifndef TPRD_TESTS_SUPPORT_QEMU_PROCESS_H_
#define TPRD_TESTS_SUPPORT_QEMU_PROCESS_H_

#include <sys/types.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace tprd::testing {

struct QemuOptions {
  std::string kernel;  // multiboot ELF for -kernel
  std::string append;  // multiboot command line (-append)
  std::string initrd;  // multiboot module(s) (-initrd), empty for none
  int smp = 1;
  int memory_mib = 64;
  std::string cpu;        // -cpu model, e.g. "qemu32,+cr8legacy"; empty: QEMU's default
  bool vapic_off = true;  // -global apic.vapic=off: QEMU's own TPR patcher stays out
  std::vector<std::string> extra_args;
  // Empty: /usr/libexec/qemu-system-i386 if present, else qemu-system-i386 from PATH.
  std::string qemu_binary;
};

// The full argument vector Start() would run (for logs and for callers that spawn QEMU
// themselves, e.g. through libvirt's qemu:commandline).
std::vector<std::string> QemuCommandLine(const QemuOptions& options);

// One "KEY k=v k=v ..." serial line split into its fields; the first word is stored under
// the key "" (e.g. "STAT").
std::map<std::string, std::string> ParseSerialFields(std::string_view line);

class QemuProcess {
 public:
  using Clock = std::chrono::steady_clock;

  // Spawns QEMU with -display none -monitor none -serial stdio -no-reboot -accel tcg; its
  // stdout and stderr both feed the line reader.
  static absl::StatusOr<std::unique_ptr<QemuProcess>> Start(const QemuOptions& options);

  // Kills QEMU (SIGKILL) and reaps it.
  ~QemuProcess();
  QemuProcess(const QemuProcess&) = delete;
  QemuProcess& operator=(const QemuProcess&) = delete;

  // Reads serial output until a line (already seen or new, from index `from_line` on)
  // satisfies `match` or `timeout` passes. DeadlineExceeded / Unavailable (QEMU exited)
  // carry the last lines seen.
  absl::StatusOr<std::string> WaitForLine(const std::function<bool(const std::string&)>& match,
                                          std::chrono::milliseconds timeout, size_t from_line = 0);
  absl::StatusOr<std::string> WaitForPrefix(std::string_view prefix,
                                            std::chrono::milliseconds timeout,
                                            size_t from_line = 0);

  // Reads whatever arrives within `duration` (returns early only if QEMU exits).
  void ReadFor(std::chrono::milliseconds duration);

  const std::vector<std::string>& lines() const { return lines_; }
  // The last `count` lines, newline-separated, for failure messages.
  std::string LastLines(size_t count = 20) const;

  pid_t pid() const { return pid_; }
  bool exited() const { return exited_; }
  absl::Status Kill();

 private:
  QemuProcess(pid_t pid, int output_fd) : pid_(pid), output_fd_(output_fd) {}
  // Waits for output until `deadline`; returns after at least one chunk or at the deadline.
  void ReadSome(Clock::time_point deadline);
  void Reap(bool block);

  pid_t pid_;
  int output_fd_;
  bool exited_ = false;
  int exit_status_ = 0;
  std::string partial_;
  std::vector<std::string> lines_;
};

}  // namespace tprd::testing

#endif  // TPRD_TESTS_SUPPORT_QEMU_PROCESS_H_

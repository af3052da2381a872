// Stop replies of the GDB remote protocol (`S`, `T`, `W`, `X`), as QEMU's gdbstub sends them
// after a stop, an interrupt, or in answer to `?`.
#ifndef TPRD_KVM_BACKEND_CORE_GDB_STOP_REPLY_H_
#define TPRD_KVM_BACKEND_CORE_GDB_STOP_REPLY_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "daemon/engine/guest_vm.h"

namespace tprd::backend {

// A thread id: `p<pid>.<tid>` with multiprocess extensions, `<tid>` without. QEMU numbers vCPU
// threads from 1, so vCPU index = tid - 1. -1 means "all", 0 "any".
struct GdbThreadId {
  int64_t pid = 1;
  int64_t tid = 1;

  int vcpu_index() const { return static_cast<int>(tid - 1); }
  // `p01.02` (multiprocess) or `02`.
  std::string ToString(bool multiprocess) const;
  bool operator==(const GdbThreadId&) const = default;
};

// Parses `p1.2`, `p01.-1`, `2`, `-1`. INVALID_ARGUMENT on anything else.
absl::StatusOr<GdbThreadId> ParseGdbThreadId(std::string_view text);

// QEMU's gdbstub uses GDB's signal numbers.
inline constexpr int kGdbSignalInt = 2;   // stopped on request (interrupt, attach)
inline constexpr int kGdbSignalTrap = 5;  // breakpoint or watchpoint

struct GdbStopReply {
  enum class Kind : uint8_t {
    kStopped,     // S or T: the target stopped with `signal`
    kExited,      // W: the process exited with `exit_code`: the VM is gone
    kTerminated,  // X: the process was killed by `signal`: the VM is gone
  };
  Kind kind = Kind::kStopped;
  int signal = 0;
  int exit_code = 0;
  std::optional<GdbThreadId> thread;
  // Set for `watch:`, `rwatch:` and `awatch:`; the PC then points after the access.
  std::optional<engine::WatchKind> watch;
  uint64_t watch_address = 0;
  bool software_breakpoint = false;  // swbreak
  bool hardware_breakpoint = false;  // hwbreak

  bool process_gone() const { return kind != Kind::kStopped; }
};

// True if `payload` starts like a stop reply (S, T, W or X followed by a hex digit).
bool LooksLikeGdbStopReply(std::string_view payload);

// Parses a stop reply. Unknown `name:value` pairs (register values, `core:`, ...) are skipped;
// malformed ones are INVALID_ARGUMENT. Never crashes on any input.
absl::StatusOr<GdbStopReply> ParseGdbStopReply(std::string_view payload);

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_CORE_GDB_STOP_REPLY_H_

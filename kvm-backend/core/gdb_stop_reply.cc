#include "kvm-backend/core/gdb_stop_reply.h"

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/engine/hex.h"
#include "kvm-backend/core/gdb_packet.h"

namespace tprd::backend {
namespace {

bool IsHexDigit(char c) { return engine::HexDigitValue(c) >= 0; }

// Parses 1-16 hex digits (ParseGdbHex). absl::SimpleHexAtoi accepts a sign and "0x": the wire
// format does not.
bool ParseHex(std::string_view text, uint64_t& value) {
  absl::StatusOr<uint64_t> parsed = ParseGdbHex(text);
  if (!parsed.ok()) return false;
  value = *parsed;
  return true;
}

// A thread id component: hex, or -1 ("all").
bool ParseThreadPart(std::string_view text, int64_t& value) {
  if (text == "-1") {
    value = -1;
    return true;
  }
  uint64_t parsed = 0;
  if (!ParseHex(text, parsed) || parsed > static_cast<uint64_t>(INT64_MAX)) return false;
  value = static_cast<int64_t>(parsed);
  return true;
}

absl::StatusOr<int> ParseSignal(std::string_view payload) {
  uint64_t value = 0;
  if (payload.size() < 3 || !ParseHex(payload.substr(1, 2), value)) {
    return absl::InvalidArgumentError(
        absl::StrCat("stop reply without a two-digit code: ", std::string(payload.substr(0, 16))));
  }
  return static_cast<int>(value);
}

}  // namespace

std::string GdbThreadId::ToString(bool multiprocess) const {
  auto part = [](int64_t v) { return v < 0 ? std::string("-1") : absl::StrFormat("%02x", v); };
  if (multiprocess) return absl::StrCat("p", part(pid), ".", part(tid));
  return part(tid);
}

absl::StatusOr<GdbThreadId> ParseGdbThreadId(std::string_view text) {
  GdbThreadId id;
  std::string_view rest = text;
  if (!rest.empty() && rest[0] == 'p') {
    rest.remove_prefix(1);
    size_t dot = rest.find('.');
    std::string_view pid = rest.substr(0, dot);
    if (!ParseThreadPart(pid, id.pid)) {
      return absl::InvalidArgumentError(absl::StrCat("bad thread id: ", std::string(text)));
    }
    // `pPID` alone means every thread of that process.
    if (dot == std::string_view::npos) {
      id.tid = -1;
      return id;
    }
    rest.remove_prefix(dot + 1);
  }
  if (!ParseThreadPart(rest, id.tid)) {
    return absl::InvalidArgumentError(absl::StrCat("bad thread id: ", std::string(text)));
  }
  return id;
}

bool LooksLikeGdbStopReply(std::string_view payload) {
  if (payload.size() < 3) return false;
  char kind = payload[0];
  return (kind == 'S' || kind == 'T' || kind == 'W' || kind == 'X') && IsHexDigit(payload[1]) &&
         IsHexDigit(payload[2]);
}

absl::StatusOr<GdbStopReply> ParseGdbStopReply(std::string_view payload) {
  if (payload.empty()) return absl::InvalidArgumentError("empty stop reply");
  GdbStopReply reply;
  absl::StatusOr<int> code = ParseSignal(payload);
  if (!code.ok()) return code.status();
  switch (payload[0]) {
    case 'S':
    case 'T':
      reply.kind = GdbStopReply::Kind::kStopped;
      reply.signal = *code;
      break;
    case 'W':
      reply.kind = GdbStopReply::Kind::kExited;
      reply.exit_code = *code;
      break;
    case 'X':
      reply.kind = GdbStopReply::Kind::kTerminated;
      reply.signal = *code;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("not a stop reply: ", std::string(payload.substr(0, 16))));
  }
  std::string_view rest = payload.substr(3);
  if (payload[0] == 'S') {
    if (!rest.empty()) return absl::InvalidArgumentError("S stop reply with trailing data");
    return reply;
  }
  if (payload[0] == 'W' || payload[0] == 'X') {
    // Optional `;process:PID`: the VM is gone either way.
    return reply;
  }
  for (std::string_view pair : SplitGdbFields(rest, ';', true)) {
    size_t colon = pair.find(':');
    if (colon == std::string_view::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat("stop reply field without a value: ", std::string(pair.substr(0, 32))));
    }
    std::string_view name = pair.substr(0, colon);
    std::string_view value = pair.substr(colon + 1);
    if (name == "thread") {
      absl::StatusOr<GdbThreadId> thread = ParseGdbThreadId(value);
      if (!thread.ok()) return thread.status();
      reply.thread = *thread;
    } else if (name == "watch" || name == "rwatch" || name == "awatch") {
      if (!ParseHex(value, reply.watch_address)) {
        return absl::InvalidArgumentError(
            absl::StrCat("bad watchpoint address: ", std::string(value.substr(0, 32))));
      }
      reply.watch = name == "watch"    ? engine::WatchKind::kWrite
                    : name == "rwatch" ? engine::WatchKind::kRead
                                       : engine::WatchKind::kAccess;
    } else if (name == "swbreak") {
      reply.software_breakpoint = true;
    } else if (name == "hwbreak") {
      reply.hardware_breakpoint = true;
    }
    // Anything else (register `NN:value`, `core:`, `library:`...) carries nothing we need.
  }
  return reply;
}

}  // namespace tprd::backend

// GdbClient's packet transport and stop bookkeeping: sending a packet and matching its ack and
// reply (Exchange), queueing the stops that arrive meanwhile, and running, stepping, interrupting
// and waiting for the VM. The commands built on Command() are in gdb_client_commands.cc.
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/engine/hex.h"
#include "daemon/engine/status_macros.h"
#include "kvm-backend/core/gdb_client.h"
#include "kvm-backend/core/gdb_client_errors.h"

namespace tprd::backend {
namespace {

using gdb_client_errors::Named;
using gdb_client_errors::WithContext;

constexpr size_t kReadBytes = 4096;

// `Exx`: the stub refused. QEMU uses errno-style numbers.
std::optional<int> ErrorCode(std::string_view reply) {
  if (reply.size() != 3 || reply[0] != 'E') return std::nullopt;
  absl::StatusOr<uint64_t> code = ParseGdbHex(reply.substr(1));
  if (!code.ok()) return std::nullopt;
  return static_cast<int>(*code);
}

absl::Status ErrorReplyStatus(std::string_view payload, int code) {
  std::string message = absl::StrFormat("gdbstub refused %s with E%02x", Named(payload), code);
  switch (code) {
    // QEMU writes errno values in decimal digits ("E14" is EFAULT 14), read here as hex.
    case 0x14:  // EFAULT
      return absl::NotFoundError(absl::StrCat(message, " (address not mapped)"));
    case 0x22:  // EINVAL
      return absl::InvalidArgumentError(absl::StrCat(message, " (invalid argument)"));
    default:
      return absl::InternalError(message);
  }
}

// Console output packets (`O` + hex) may arrive instead of a reply; they carry nothing for us.
bool IsConsoleOutput(std::string_view payload) {
  if (payload.size() < 3 || payload[0] != 'O' || payload.size() % 2 != 1) return false;
  return std::all_of(payload.begin() + 1, payload.end(),
                     [](char c) { return engine::HexDigitValue(c) >= 0; });
}

}  // namespace

GdbClient::GdbClient(std::unique_ptr<ByteStream> stream, GdbClientOptions options)
    : stream_(std::move(stream)), options_(options), parser_(options.max_payload_bytes) {}

GdbClient::~GdbClient() {
  if (stream_ != nullptr) stream_->Close();
}

absl::Status GdbClient::Break(absl::Status reason) {
  if (broken_.ok()) broken_ = reason;
  return reason;
}

absl::Status GdbClient::Usable(bool require_stopped) const {
  if (!broken_.ok()) {
    return absl::Status(
        broken_.code() == absl::StatusCode::kUnavailable ? absl::StatusCode::kUnavailable
                                                         : absl::StatusCode::kFailedPrecondition,
        absl::StrCat("gdbstub connection is unusable (reconnect): ", broken_.message()));
  }
  if (detached_) return absl::FailedPreconditionError("gdbstub session already detached");
  if (gone_) return absl::UnavailableError("the VM process is gone (gdbstub sent W/X)");
  if (require_stopped && running_) {
    return absl::FailedPreconditionError(
        "the VM is running: interrupt it and wait for the stop first");
  }
  return absl::OkStatus();
}

absl::Status GdbClient::WriteRaw(std::string_view bytes) {
  absl::Status written = stream_->Write(bytes, absl::Now() + options_.reply_timeout);
  if (!written.ok()) return Break(WithContext(written, "writing to the gdbstub"));
  return absl::OkStatus();
}

absl::StatusOr<GdbPacketEvent> GdbClient::NextEvent(absl::Time deadline) {
  while (events_.empty()) {
    absl::StatusOr<std::string> bytes = stream_->Read(kReadBytes, deadline);
    if (!bytes.ok()) return bytes.status();
    std::vector<GdbPacketEvent> fresh;
    parser_.Feed(*bytes, fresh);
    events_.insert(events_.end(), fresh.begin(), fresh.end());
    // A peer that sends noise forever must not keep us past the deadline.
    if (events_.empty() && absl::Now() >= deadline) {
      return absl::DeadlineExceededError("only noise from the gdbstub until the deadline");
    }
  }
  GdbPacketEvent event = std::move(events_.front());
  events_.pop_front();
  return event;
}

absl::Status GdbClient::HandleStopPacket(std::string_view payload) {
  absl::StatusOr<GdbStopReply> stop = ParseGdbStopReply(payload);
  if (!stop.ok()) {
    return Break(absl::DataLossError(
        absl::StrCat("malformed stop reply from the gdbstub: ", stop.status().message())));
  }
  if (stop->process_gone()) gone_ = true;
  pending_stops_.push_back(*stop);
  return absl::OkStatus();
}

absl::StatusOr<std::string> GdbClient::Exchange(std::string_view payload, ReplyMode mode,
                                                std::string* console) {
  const std::string packet = EncodeGdbPacket(payload);
  TPRD_RETURN_IF_ERROR(WriteRaw(packet));
  const absl::Time deadline = absl::Now() + options_.reply_timeout;
  bool acked = false;
  bool stop_before_ack = false;
  int retransmits = 0;
  int bad_packets = 0;
  while (true) {
    // Once a stop replaced the ack, the packet was probably eaten as an interrupt: wait only
    // briefly for a late ack before sending it again.
    absl::Time wait_until = deadline;
    if (!acked && stop_before_ack) {
      wait_until = std::min(deadline, absl::Now() + options_.ack_timeout_after_stop);
    }
    absl::StatusOr<GdbPacketEvent> event = NextEvent(wait_until);
    if (!event.ok()) {
      if (absl::IsDeadlineExceeded(event.status()) && !acked && stop_before_ack &&
          absl::Now() < deadline + options_.ack_timeout_after_stop &&
          retransmits < options_.max_retransmits) {
        ++retransmits;
        stop_before_ack = false;
        TPRD_RETURN_IF_ERROR(WriteRaw(packet));
        continue;
      }
      return Break(WithContext(
          event.status(), absl::StrCat("waiting for the gdbstub's answer to ", Named(payload))));
    }
    switch (event->kind) {
      case GdbPacketEvent::Kind::kAck:
        acked = true;
        if (mode == ReplyMode::kAckOnly) return std::string();
        break;
      case GdbPacketEvent::Kind::kNack:
        if (acked) break;  // a stray `-` after our packet was taken
        if (++retransmits > options_.max_retransmits) {
          return Break(absl::DataLossError(
              absl::StrCat("gdbstub rejected ", Named(payload), " ", retransmits, " times")));
        }
        TPRD_RETURN_IF_ERROR(WriteRaw(packet));
        break;
      case GdbPacketEvent::Kind::kNotification:
        break;
      case GdbPacketEvent::Kind::kBadChecksum:
        if (++bad_packets > options_.max_bad_packets) {
          return Break(absl::DataLossError(absl::StrCat("too many corrupt packets answering ",
                                                        Named(payload), ": ", event->payload)));
        }
        TPRD_RETURN_IF_ERROR(WriteRaw("-"));
        break;
      case GdbPacketEvent::Kind::kMalformed:
      case GdbPacketEvent::Kind::kOversized: {
        TPRD_RETURN_IF_ERROR(WriteRaw("+"));
        // The stream stays in step (the bad reply was consumed whole); only this command fails.
        const bool oversized = event->kind == GdbPacketEvent::Kind::kOversized;
        std::string message =
            absl::StrCat("unusable answer to ", Named(payload), ": ", event->payload);
        return oversized ? absl::ResourceExhaustedError(message) : absl::DataLossError(message);
      }
      case GdbPacketEvent::Kind::kPacket: {
        TPRD_RETURN_IF_ERROR(WriteRaw("+"));
        const std::string& reply = event->payload;
        if (mode == ReplyMode::kStopReply && acked && LooksLikeGdbStopReply(reply)) return reply;
        if (LooksLikeGdbStopReply(reply)) {
          // Not our answer: a stop (a host resume let the VM run into a breakpoint, or the VM
          // was running and our packet interrupted it). Keep it for WaitForStop.
          TPRD_RETURN_IF_ERROR(HandleStopPacket(reply));
          if (gone_) return Usable(false);
          if (!acked) stop_before_ack = true;
          break;
        }
        if (IsConsoleOutput(reply)) {
          if (console != nullptr) {
            for (size_t i = 1; i + 1 < reply.size(); i += 2) {
              console->push_back(static_cast<char>(engine::HexDigitValue(reply[i]) * 16 +
                                                   engine::HexDigitValue(reply[i + 1])));
            }
          }
          break;
        }
        if (mode == ReplyMode::kAckOnly) {
          return Break(absl::DataLossError(absl::StrCat("gdbstub sent ", Named(reply),
                                                        " where only an ack of ", Named(payload),
                                                        " was due")));
        }
        return reply;  // an answer without its ack first still answers
      }
    }
  }
}

absl::StatusOr<std::vector<std::string>> GdbClient::ExchangePipelined(
    const std::vector<std::string>& payloads) {
  TPRD_RETURN_IF_ERROR(Usable(true));
  std::string packets;
  for (const std::string& payload : payloads) packets += EncodeGdbPacket(payload);
  TPRD_RETURN_IF_ERROR(WriteRaw(packets));
  const absl::Time deadline = absl::Now() + options_.reply_timeout;
  std::vector<std::string> replies;
  replies.reserve(payloads.size());
  const auto out_of_step = [&](std::string_view what) {
    return Break(absl::DataLossError(
        absl::StrCat(std::string(what), " after ", replies.size(), " of ", payloads.size(),
                     " pipelined commands were answered (the next was ",
                     Named(payloads[replies.size()]), "): the stream is out of step")));
  };
  while (replies.size() < payloads.size()) {
    absl::StatusOr<GdbPacketEvent> event = NextEvent(deadline);
    if (!event.ok()) {
      return Break(WithContext(
          event.status(),
          absl::StrCat("waiting for the gdbstub's answer to ", Named(payloads[replies.size()]),
                       " (", replies.size(), " of ", payloads.size(), " pipelined answered)")));
    }
    switch (event->kind) {
      case GdbPacketEvent::Kind::kAck:
      case GdbPacketEvent::Kind::kNotification:
        break;
      case GdbPacketEvent::Kind::kNack:
        return out_of_step("the gdbstub rejected a packet");
      case GdbPacketEvent::Kind::kBadChecksum:
      case GdbPacketEvent::Kind::kMalformed:
      case GdbPacketEvent::Kind::kOversized:
        return out_of_step(absl::StrCat("an unusable answer (", event->payload, ")"));
      case GdbPacketEvent::Kind::kPacket: {
        TPRD_RETURN_IF_ERROR(WriteRaw("+"));
        if (LooksLikeGdbStopReply(event->payload)) {
          // The VM was running: one of our packets was taken as an interrupt.
          TPRD_RETURN_IF_ERROR(HandleStopPacket(event->payload));
          if (gone_) return Usable(false);
          return out_of_step("a stop came");
        }
        if (IsConsoleOutput(event->payload)) break;
        replies.push_back(event->payload);
        break;
      }
    }
  }
  return replies;
}

absl::StatusOr<std::vector<absl::Status>> GdbClient::CommandsExpectingOkPipelined(
    const std::vector<std::string>& payloads) {
  std::vector<absl::Status> out(payloads.size());
  if (payloads.empty()) return out;
  absl::StatusOr<std::vector<std::string>> replies = ExchangePipelined(payloads);
  if (!replies.ok()) return replies.status();
  for (size_t k = 0; k < payloads.size(); ++k) {
    const std::string& reply = (*replies)[k];
    if (std::optional<int> code = ErrorCode(reply)) {
      out[k] = ErrorReplyStatus(payloads[k], *code);
    } else if (reply.empty()) {
      out[k] = absl::UnimplementedError(
          absl::StrCat("gdbstub does not support ", Named(payloads[k]), " (empty reply)"));
    } else if (reply != "OK") {
      out[k] = absl::DataLossError(
          absl::StrCat("gdbstub answered ", Named(reply), " to ", Named(payloads[k]), ", not OK"));
    }
  }
  return out;
}

absl::StatusOr<std::vector<absl::Status>> GdbClient::WriteMemoryPipelined(
    absl::Span<const engine::MemoryWrite> writes) {
  std::vector<absl::Status> out(writes.size());
  std::vector<std::string> payloads;
  std::vector<size_t> sent;  // index in `writes` of each payload
  for (size_t i = 0; i < writes.size(); ++i) {
    const engine::MemoryWrite& w = writes[i];
    if (w.data.size() > max_write_in_one_packet()) {
      out[i] = absl::InvalidArgumentError(absl::StrFormat(
          "%d bytes at 0x%x do not fit one M packet (at most %d): refusing to split them",
          w.data.size(), w.address, max_write_in_one_packet()));
      continue;
    }
    if (w.data.empty()) continue;
    payloads.push_back(
        absl::StrFormat("M%x,%x:%s", w.address, w.data.size(), engine::HexEncode(w.data)));
    sent.push_back(i);
  }
  absl::StatusOr<std::vector<absl::Status>> answered = CommandsExpectingOkPipelined(payloads);
  if (!answered.ok()) return answered.status();
  for (size_t k = 0; k < sent.size(); ++k) out[sent[k]] = (*answered)[k];
  return out;
}

absl::StatusOr<std::vector<absl::Status>> GdbClient::InsertBreakpointsPipelined(
    absl::Span<const uint64_t> addresses) {
  std::vector<std::string> payloads;
  for (uint64_t address : addresses) payloads.push_back(absl::StrFormat("Z0,%x,1", address));
  return CommandsExpectingOkPipelined(payloads);
}

absl::StatusOr<std::string> GdbClient::CheckedReply(std::string_view payload, std::string reply) {
  if (std::optional<int> code = ErrorCode(reply)) return ErrorReplyStatus(payload, *code);
  if (reply.empty()) {
    return absl::UnimplementedError(
        absl::StrCat("gdbstub does not support ", Named(payload), " (empty reply)"));
  }
  return reply;
}

absl::StatusOr<std::string> GdbClient::Command(std::string_view payload) {
  TPRD_RETURN_IF_ERROR(Usable(true));
  absl::StatusOr<std::string> reply = Exchange(payload, ReplyMode::kReply);
  if (!reply.ok()) return reply;
  return CheckedReply(payload, *std::move(reply));
}

absl::StatusOr<std::string> GdbClient::MonitorCommand(std::string_view command) {
  TPRD_RETURN_IF_ERROR(Usable(true));
  const std::string payload = absl::StrCat(
      "qRcmd,", engine::HexEncode(absl::MakeConstSpan(
                    reinterpret_cast<const uint8_t*>(command.data()), command.size())));
  std::string output;
  absl::StatusOr<std::string> reply = Exchange(payload, ReplyMode::kReply, &output);
  if (!reply.ok()) return reply.status();
  if (std::optional<int> code = ErrorCode(*reply)) return ErrorReplyStatus(payload, *code);
  if (reply->empty()) {
    return absl::UnimplementedError("gdbstub has no monitor (empty reply to qRcmd)");
  }
  if (*reply != "OK") {
    return absl::DataLossError(absl::StrCat("gdbstub answered ", Named(*reply),
                                            " to monitor command ", std::string(command)));
  }
  return output;
}

absl::Status GdbClient::CommandExpectingOk(std::string_view payload) {
  absl::StatusOr<std::string> reply = Command(payload);
  if (!reply.ok()) return reply.status();
  if (*reply != "OK") {
    return absl::DataLossError(
        absl::StrCat("gdbstub answered ", Named(*reply), " to ", Named(payload), ", not OK"));
  }
  return absl::OkStatus();
}

absl::Status GdbClient::Continue() {
  TPRD_RETURN_IF_ERROR(Usable(true));
  if (!pending_stops_.empty()) {
    // Resuming would hide a stop the owner has not seen yet.
    return absl::FailedPreconditionError(
        "a stop is queued: take it with WaitForStop before continuing");
  }
  absl::StatusOr<std::string> acked = Exchange("c", ReplyMode::kAckOnly);
  if (!acked.ok()) return acked.status();
  running_ = true;
  return absl::OkStatus();
}

absl::Status GdbClient::Interrupt() {
  TPRD_RETURN_IF_ERROR(Usable(false));
  return WriteRaw(std::string_view(&kGdbInterrupt, 1));
}

absl::StatusOr<bool> GdbClient::AwaitStops(size_t queued, absl::Time deadline,
                                           std::string_view command) {
  int bad_packets = 0;
  while (pending_stops_.size() <= queued) {
    absl::StatusOr<GdbPacketEvent> event = NextEvent(deadline);
    if (!event.ok()) {
      if (absl::IsDeadlineExceeded(event.status())) return false;
      return Break(WithContext(event.status(), "waiting for the VM to stop"));
    }
    if (event->kind == GdbPacketEvent::Kind::kBadChecksum) {
      if (++bad_packets > options_.max_bad_packets) {
        return Break(absl::DataLossError("too many corrupt packets while waiting for a stop"));
      }
      TPRD_RETURN_IF_ERROR(WriteRaw("-"));
      continue;
    }
    if (event->kind == GdbPacketEvent::Kind::kMalformed ||
        event->kind == GdbPacketEvent::Kind::kOversized) {
      TPRD_RETURN_IF_ERROR(WriteRaw("+"));
      return Break(absl::DataLossError(
          absl::StrCat("unusable packet while waiting for a stop: ", event->payload)));
    }
    if (event->kind != GdbPacketEvent::Kind::kPacket) continue;  // acks, notifications
    // Any packet now means the VM stopped (or never ran), so acking cannot interrupt it.
    TPRD_RETURN_IF_ERROR(WriteRaw("+"));
    const std::string& payload = event->payload;
    if (LooksLikeGdbStopReply(payload)) {
      TPRD_RETURN_IF_ERROR(HandleStopPacket(payload));
      continue;
    }
    if (!command.empty()) {
      // A resume command is answered only by a stop, unless the stub refused it.
      if (std::optional<int> code = ErrorCode(payload)) return ErrorReplyStatus(command, *code);
      if (payload.empty()) {
        return absl::UnimplementedError(
            absl::StrCat("gdbstub does not support ", Named(command), " (empty reply)"));
      }
    }
    // Anything else (console output, a late answer) is dropped.
  }
  return true;
}

absl::StatusOr<std::optional<GdbStopReply>> GdbClient::WaitForStop(absl::Duration timeout) {
  if (pending_stops_.empty()) {
    TPRD_RETURN_IF_ERROR(Usable(false));
    absl::StatusOr<bool> stopped = AwaitStops(0, absl::Now() + timeout, {});
    if (!stopped.ok()) return stopped.status();
    if (!*stopped) return std::nullopt;
  }
  GdbStopReply stop = pending_stops_.front();
  pending_stops_.pop_front();
  running_ = false;
  return stop;
}

absl::StatusOr<GdbStepResult> GdbClient::StepThread(const GdbThreadId& thread,
                                                    absl::Duration timeout) {
  return RunThreadAlone(thread, 's', timeout);
}

absl::StatusOr<GdbStepResult> GdbClient::ContinueThread(const GdbThreadId& thread,
                                                        absl::Duration timeout) {
  return RunThreadAlone(thread, 'c', timeout);
}

absl::StatusOr<GdbStepResult> GdbClient::RunThreadAlone(const GdbThreadId& thread, char action,
                                                        absl::Duration timeout) {
  TPRD_RETURN_IF_ERROR(Usable(true));
  auto refuse_if_queued = [this]() -> absl::Status {
    if (pending_stops_.empty()) return absl::OkStatus();
    // Stepping would hide a stop the owner has not seen yet (as for Continue).
    return absl::FailedPreconditionError(
        "a stop is queued: take it with WaitForStop before stepping");
  };
  TPRD_RETURN_IF_ERROR(refuse_if_queued());
  const std::string id = thread.ToString(multiprocess_);
  // QEMU reports a stop caused by an interrupt for the continue thread, and clears single-step
  // after any stop only on that thread: it must be the stepped one.
  TPRD_RETURN_IF_ERROR(CommandExpectingOk(absl::StrCat("Hc", id)));
  TPRD_RETURN_IF_ERROR(refuse_if_queued());  // the VM ran after all: its stop came
  const std::string payload = absl::StrCat("vCont;", std::string(1, action), ":", id);
  absl::StatusOr<std::string> acked = Exchange(payload, ReplyMode::kAckOnly);
  if (!acked.ok()) return acked.status();
  running_ = true;
  // Stops queued while the packet waited for its ack came before the stub took it: not ours.
  const size_t earlier = pending_stops_.size();
  GdbStepResult result;
  absl::StatusOr<bool> stopped = AwaitStops(earlier, absl::Now() + timeout, payload);
  if (stopped.ok() && !*stopped) {
    // E.g. `hlt` with the interrupts that would end it masked by the step (or, continued, a
    // vCPU that met no breakpoint in time): stop it.
    result.interrupted = true;
    TPRD_RETURN_IF_ERROR(Interrupt());
    stopped = AwaitStops(earlier, absl::Now() + options_.reply_timeout, payload);
  }
  if (!stopped.ok()) {
    if (broken_.ok()) running_ = false;  // the stub refused the vCont: nothing ran
    return stopped.status();
  }
  if (!*stopped) {
    return absl::DeadlineExceededError(absl::StrCat(
        "thread ", id, " neither finished a step within ", absl::FormatDuration(timeout),
        " nor stopped within ", absl::FormatDuration(options_.reply_timeout),
        " of the interrupt: the VM may still run"));
  }
  result.stop = pending_stops_[earlier];
  pending_stops_.erase(pending_stops_.begin() + static_cast<ptrdiff_t>(earlier));
  running_ = false;
  result.completed = !result.stop.process_gone() && result.stop.signal == kGdbSignalTrap &&
                     result.stop.thread.has_value() && *result.stop.thread == thread;
  return result;
}

absl::StatusOr<GdbStopReply> GdbClient::QueryStopReason() {
  TPRD_RETURN_IF_ERROR(Usable(true));
  absl::StatusOr<std::string> reply = Exchange("?", ReplyMode::kStopReply);
  if (!reply.ok()) return reply.status();
  if (!LooksLikeGdbStopReply(*reply)) {
    return absl::DataLossError(absl::StrCat("gdbstub answered ", Named(*reply), " to `?`"));
  }
  absl::StatusOr<GdbStopReply> stop = ParseGdbStopReply(*reply);
  if (!stop.ok()) return WithContext(stop.status(), "answer to `?`");
  if (stop->process_gone()) gone_ = true;
  return stop;
}

}  // namespace tprd::backend

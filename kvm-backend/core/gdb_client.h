// A client of QEMU's gdbstub (GDB remote serial protocol) over a ByteStream. It knows QEMU's
// habits (measured, see docs/design-notes/gdb-client.md): an unsolicited stop at connect, no
// NoAck mode, at most 0x800 bytes per `m`, registers readable with `p` only after target.xml was
// read, `D;1` to detach after multiprocess+, and that any byte sent while the VM runs interrupts
// it.
//
// Not thread-safe: one owner (the domain's actor) calls it. Every read is bounded by a deadline.
// After a timeout, a lost connection or a desynchronised stream the client is "broken": every
// later call fails and the owner must reconnect (a late reply could otherwise be taken for the
// answer to the next command).
//
// Two source files: gdb_client_transport.cc (packet exchange, the stop queue, running and
// stepping) and gdb_client_commands.cc (handshake, threads, registers, memory, traps, detach).
#ifndef TPRD_KVM_BACKEND_CORE_GDB_CLIENT_H_
#define TPRD_KVM_BACKEND_CORE_GDB_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "daemon/engine/guest_vm.h"
#include "kvm-backend/core/byte_stream.h"
#include "kvm-backend/core/gdb_packet.h"
#include "kvm-backend/core/gdb_registers.h"
#include "kvm-backend/core/gdb_stop_reply.h"

namespace tprd::backend {

struct GdbClientOptions {
  // How long a command may wait for its reply (and a write for the peer to take it).
  absl::Duration reply_timeout = absl::Seconds(5);
  // How long to wait for the `+` of a packet after a stop reply arrived in its place: then the
  // VM was running (libvirt resumed it behind our back) and the packet's first byte was taken as
  // an interrupt, so the packet is sent again.
  absl::Duration ack_timeout_after_stop = absl::Milliseconds(500);
  // Resends of one packet the peer answers with `-` (or swallowed as an interrupt).
  int max_retransmits = 3;
  // Corrupt packets (bad checksum) tolerated while waiting for one reply.
  int max_bad_packets = 3;
  // Largest reply payload accepted; longer ones are discarded and the command fails.
  size_t max_payload_bytes = kDefaultMaxGdbPayload;
  // Largest `m` read (QEMU answers E22 above 0x800).
  size_t max_read_chunk = 0x800;
  // Cap on a target description (target.xml and includes), against a peer that never says `l`.
  size_t max_target_xml_bytes = 1 << 20;
};

// The stop that ended a StepThread.
struct GdbStepResult {
  GdbStopReply stop;
  // `stop` is a SIGTRAP stop of the stepped thread: QEMU finished the step (the stop may carry a
  // watchpoint hit of that vCPU), possibly just as it was interrupted. False when the interrupt
  // ended it (`stop` is then the interrupt's, T02) or `stop` belongs to another thread or says
  // the VM is gone.
  bool completed = false;
  // The step did not end within its timeout and the interrupt byte was sent.
  bool interrupted = false;
};

class GdbClient {
 public:
  explicit GdbClient(std::unique_ptr<ByteStream> stream, GdbClientOptions options = {});
  // Closes the stream without detaching (QEMU then leaves the VM stopped).
  ~GdbClient();
  GdbClient(const GdbClient&) = delete;
  GdbClient& operator=(const GdbClient&) = delete;

  // Handshake: qSupported (multiprocess+), target description and register layout, `?`.
  // Consumes the unsolicited stop QEMU sends when the VM was running (see attach_stop()).
  absl::Status Attach();
  bool multiprocess() const { return multiprocess_; }
  const GdbRegisterLayout& register_layout() const { return layout_; }
  // The stop QEMU sent on its own at connect: set only if the VM was running before we attached.
  const std::optional<GdbStopReply>& attach_stop() const { return attach_stop_; }
  // The answer to `?` during Attach.
  const std::optional<GdbStopReply>& initial_stop() const { return initial_stop_; }
  // Most bytes one `M` packet can carry with this peer (PacketSize and the read chunk).
  size_t max_write_in_one_packet() const;

  // vCPU threads (qfThreadInfo/qsThreadInfo), in the stub's order: p01.01, p01.02, ...
  absl::StatusOr<std::vector<GdbThreadId>> ListThreads();
  // `Hg`: later register and (virtual) memory accesses use this vCPU.
  absl::Status SelectThread(const GdbThreadId& thread);
  // Removes every breakpoint and watchpoint a previous client left armed on any vCPU. QEMU 7.2
  // clears them on `?` only for the continue thread (`Hc`), and `z0`/`z2..4` give up at the
  // first vCPU without the trap, so a killed client's traps on other vCPUs would outlive any
  // removal: select each thread for continue and ask `?` there. Leaves `Hc` on threads[0].
  absl::Status ClearTrapsOfEveryThread(const std::vector<GdbThreadId>& threads);

  // `g` of the selected thread, decoded with the target description.
  absl::StatusOr<engine::VcpuRegisters> ReadRegisters();
  // `p` / `P` by register name (eax, eip, cr3, cr8, ...), numbers from the target description.
  absl::StatusOr<uint64_t> ReadRegister(std::string_view name);
  absl::Status WriteRegister(std::string_view name, uint64_t value);

  // `m` in chunks of at most max_read_chunk bytes, pipelined when there are several (see
  // ExchangePipelined: a stop among the answers breaks the client). An unmapped address (E14) is
  // NOT_FOUND naming the address. Virtual addresses use the selected thread's page tables unless
  // physical mode.
  absl::Status ReadMemory(uint64_t address, absl::Span<uint8_t> out);
  // `M` in chunks of at most max_write_in_one_packet() bytes. A concurrent resume may see a
  // prefix of the data: for code that must change atomically use WriteMemoryInOnePacket.
  absl::Status WriteMemory(uint64_t address, absl::Span<const uint8_t> data);
  // One `M` packet or nothing: INVALID_ARGUMENT if `data` does not fit in one packet.
  absl::Status WriteMemoryInOnePacket(uint64_t address, absl::Span<const uint8_t> data);
  // One `M` packet per write, all sent before the first answer (see ExchangePipelined). Each
  // write's status: OK, or the stub's refusal as WriteMemoryInOnePacket says it; a write that
  // does not fit one packet is INVALID_ARGUMENT and not sent. The call fails when the exchange
  // broke (the client is then broken: which writes landed is unknown, read them back).
  absl::StatusOr<std::vector<absl::Status>> WriteMemoryPipelined(
      absl::Span<const engine::MemoryWrite> writes);
  // `Qqemu.PhyMemMode:1` / `:0`: m/M addresses are physical / virtual.
  absl::Status SetPhysicalMemoryMode(bool physical);

  // `Z0`/`z0` software breakpoints (x86 kind 1); any number may be armed at once.
  absl::Status InsertBreakpoint(uint64_t address);
  absl::Status RemoveBreakpoint(uint64_t address);
  // `Z0` for each address, pipelined (see ExchangePipelined): each insert's status, in order;
  // the call fails when the exchange broke.
  absl::StatusOr<std::vector<absl::Status>> InsertBreakpointsPipelined(
      absl::Span<const uint64_t> addresses);
  // `Z2`/`Z3`/`Z4` (write/read/access) watchpoints, on every vCPU.
  absl::Status InsertWatchpoint(uint64_t address, uint64_t length, engine::WatchKind kind);
  absl::Status RemoveWatchpoint(uint64_t address, uint64_t length, engine::WatchKind kind);

  // `c`: resumes every vCPU and returns once the stub acknowledged, without waiting for a stop.
  absl::Status Continue();
  // Single-steps `thread` while every other vCPU stays stopped: `Hc<thread>` then
  // `vCont;s:<thread>` (QEMU 7.2: gdb_continue_partial steps that vCPU only, with its sstep
  // flags, by default interrupts and timers masked). Hc first because QEMU reports an
  // interrupted stop for, and clears single-step only on, the continue thread; it stays `thread`.
  // Waits up to `timeout` for the step's stop; then sends the interrupt byte and waits up to
  // reply_timeout for the stop that follows (completed = false, interrupted = true).
  // FAILED_PRECONDITION while the VM runs or a stop is queued (like Continue); the stub's
  // refusal of the vCont (`E22` for an unknown thread, empty if unsupported) as for any command,
  // the VM then still stopped. DEADLINE_EXCEEDED if not even the interrupt produced a stop:
  // running() stays true (the stop may still come through WaitForStop; Interrupt again or
  // reconnect). Stops that arrived before the stub acked the vCont (the VM was resumed behind
  // our back) are not the step's: they stay queued for WaitForStop.
  absl::StatusOr<GdbStepResult> StepThread(const GdbThreadId& thread, absl::Duration timeout);
  // As StepThread, with `vCont;c:<thread>`: `thread` alone runs (interrupts and timers on, every
  // other vCPU stays stopped) until any stop, at most `timeout`, then is interrupted. completed
  // = a SIGTRAP stop of `thread` (a breakpoint or watchpoint it hit).
  absl::StatusOr<GdbStepResult> ContinueThread(const GdbThreadId& thread, absl::Duration timeout);
  // Sends the single byte 0x03 (anything else would be taken as an interrupt as well, and lost).
  // The resulting stop arrives through WaitForStop. Harmless if the VM already stopped.
  absl::Status Interrupt();
  // The next stop: queued ones first (stops that arrived while a command waited for its reply),
  // else waits up to `timeout`. nullopt on timeout (the VM still runs; the client stays usable).
  absl::StatusOr<std::optional<GdbStopReply>> WaitForStop(absl::Duration timeout);
  // `?`: why the VM is stopped now.
  absl::StatusOr<GdbStopReply> QueryStopReason();
  // `qRcmd` (gdb's `monitor`): QEMU runs `command` on the gdbstub's own HMP monitor and sends
  // its output as `O` packets before `OK`; returns that output. A round trip on this stream
  // (about 0.2 ms), against milliseconds through libvirt's monitor. The VM must be stopped (a
  // byte sent while it runs interrupts it). UNIMPLEMENTED when the stub has no monitor.
  absl::StatusOr<std::string> MonitorCommand(std::string_view command);
  // `D;1` (or `D` without multiprocess): removes nothing by itself, resumes the VM, ends the
  // session. The stream is closed afterwards.
  absl::Status Detach();

  bool running() const { return running_; }
  // Stops queued and not yet returned by WaitForStop.
  size_t pending_stops() const { return pending_stops_.size(); }
  // The reason the client became unusable, OK while usable.
  const absl::Status& broken_reason() const { return broken_; }

 private:
  enum class ReplyMode : uint8_t { kAckOnly, kReply, kStopReply };

  // Sends `payload` and waits for the ack and (per mode) the reply. Console output (`O`
  // packets) on the way is appended, decoded, to `console` when given, else dropped.
  absl::StatusOr<std::string> Exchange(std::string_view payload, ReplyMode mode,
                                       std::string* console = nullptr);
  // Sends `payloads` back to back, then takes their answers in order: one round trip for all.
  // QEMU's system-mode gdbstub handles a packet that arrives while its last answer waits for our
  // ack (it drops that answer's retransmission) and answers in order. Anything out of step (a
  // stop: the VM ran and took a packet's first byte as an interrupt; a nack; a corrupt or
  // unusable answer) breaks the client, since which packet went unanswered cannot be known.
  absl::StatusOr<std::vector<std::string>> ExchangePipelined(
      const std::vector<std::string>& payloads);
  // ExchangePipelined for commands whose only good answer is `OK`: each one's status as
  // CommandExpectingOk would give it.
  absl::StatusOr<std::vector<absl::Status>> CommandsExpectingOkPipelined(
      const std::vector<std::string>& payloads);
  // Exchange, then turns an `Exx` or empty reply into an error naming the command.
  absl::StatusOr<std::string> Command(std::string_view payload);
  // An `Exx` or empty `reply` to `payload` as the error naming the command; else the reply.
  static absl::StatusOr<std::string> CheckedReply(std::string_view payload, std::string reply);
  // One `m` packet after another, each waiting for its answer.
  absl::Status ReadMemoryInTurn(uint64_t address, absl::Span<uint8_t> out);
  // Decodes the answer to `request` (an `m`) into the front of `out`: how many bytes it held.
  static absl::StatusOr<size_t> TakeMemoryReply(std::string_view request, const std::string& reply,
                                                absl::Span<uint8_t> out);
  // A command whose only good answer is `OK`.
  absl::Status CommandExpectingOk(std::string_view payload);
  absl::StatusOr<GdbPacketEvent> NextEvent(absl::Time deadline);
  absl::Status WriteRaw(std::string_view bytes);
  absl::Status Usable(bool require_stopped) const;
  absl::Status Break(absl::Status reason);
  absl::StatusOr<std::string> ReadFeatureDocument(std::string_view annex);
  // StepThread ('s') and ContinueThread ('c').
  absl::StatusOr<GdbStepResult> RunThreadAlone(const GdbThreadId& thread, char action,
                                               absl::Duration timeout);
  absl::Status WriteMemoryPacket(uint64_t address, absl::Span<const uint8_t> data);
  absl::Status HandleStopPacket(std::string_view payload);
  // Reads packets until more than `queued` stops are queued (true) or `deadline` passed (false).
  // Other packets are dropped, except that with `command` set an `Exx` or empty packet is that
  // command's refusal, returned as its error (without breaking the client).
  absl::StatusOr<bool> AwaitStops(size_t queued, absl::Time deadline, std::string_view command);

  std::unique_ptr<ByteStream> stream_;
  GdbClientOptions options_;
  GdbPacketParser parser_;
  std::deque<GdbPacketEvent> events_;
  std::deque<GdbStopReply> pending_stops_;
  GdbRegisterLayout layout_;
  std::optional<GdbStopReply> attach_stop_;
  std::optional<GdbStopReply> initial_stop_;
  size_t peer_packet_size_ = 0x1000;
  bool attached_ = false;
  bool detached_ = false;
  bool multiprocess_ = false;
  bool running_ = false;
  bool gone_ = false;  // W/X seen: the VM process is gone
  absl::Status broken_;
};

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_CORE_GDB_CLIENT_H_

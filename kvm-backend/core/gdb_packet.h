// Framing of the GDB remote serial protocol: `$payload#cs` packets, `%payload#cs` notifications,
// `+`/`-` acknowledgements, `}` escapes and `*` run-length encoding. Pure and incremental: the
// parser takes bytes as they arrive and never fails on any input; garbage becomes events or
// counted stray bytes.
#ifndef TPRD_KVM_BACKEND_CORE_GDB_PACKET_H_
#define TPRD_KVM_BACKEND_CORE_GDB_PACKET_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "daemon/engine/hex.h"

namespace tprd::backend {

// Bigger than any reply we ask for (an `m` of 0x800 bytes is 0x1000 hex characters; the `g`
// packet of i386 is about 0x270), small enough that a broken peer cannot make us grow unbounded.
inline constexpr size_t kDefaultMaxGdbPayload = 64 * 1024;

// `$`, `#`, `}` and `*` inside a payload are sent as `}` followed by the byte XOR 0x20.
inline constexpr char kGdbEscape = '}';
inline constexpr uint8_t kGdbEscapeXor = 0x20;
// The byte a client sends (outside any packet) to interrupt a running target.
inline constexpr char kGdbInterrupt = '\x03';

// `$payload#cs` with the special bytes of `payload` escaped (QEMU undoes escapes of every
// packet it receives).
std::string EncodeGdbPacket(std::string_view payload);
// `$payload#cs` of a payload that is already escaped where needed (as a stub sends binary
// replies: only those carry escapes, which the command's decoder undoes).
std::string FrameGdbPacket(std::string_view escaped_payload);
// Escapes `$ # } *` in binary data (the inverse of UnescapeGdbBinary).
std::string EscapeGdbBinary(std::string_view data);
// Undoes `}` escapes of binary replies (qXfer). INVALID_ARGUMENT on a dangling `}`.
absl::StatusOr<std::string> UnescapeGdbBinary(std::string_view data);

// Splits protocol fields on `separator` (absl::StrSplit wants absl::string_view, which Debian
// builds as a type of its own). Empty fields are kept unless `skip_empty`.
std::vector<std::string_view> SplitGdbFields(std::string_view text, char separator,
                                             bool skip_empty);

// Memory and registers travel as tprd's one hex codec writes and reads them.
using engine::HexDecode;
using engine::HexEncode;
// A hex number of 1-16 digits, no sign or prefix (addresses, sizes, error codes).
absl::StatusOr<uint64_t> ParseGdbHex(std::string_view text);

struct GdbPacketEvent {
  enum class Kind : uint8_t {
    kAck,           // `+`
    kNack,          // `-`: the peer wants our last packet again
    kPacket,        // a `$` packet with a good checksum; payload is run-length expanded
    kNotification,  // a `%` packet with a good checksum (never acknowledged)
    kBadChecksum,   // a complete packet whose checksum did not match: answer `-`
    kMalformed,     // a complete packet that cannot be decoded (bad run-length): answer `+`
    kOversized,     // a complete packet longer than the limit, discarded: answer `+`
  };
  Kind kind = Kind::kAck;
  // kPacket/kNotification: the payload (escapes still in place); otherwise why it was rejected.
  std::string payload;

  bool operator==(const GdbPacketEvent&) const = default;
};

class GdbPacketParser {
 public:
  explicit GdbPacketParser(size_t max_payload_bytes = kDefaultMaxGdbPayload)
      : max_payload_bytes_(max_payload_bytes) {}

  // Consumes all of `bytes`, appending an event per completed item to `events`. A packet split
  // across calls is completed by later calls.
  void Feed(std::string_view bytes, std::vector<GdbPacketEvent>& events);

  // Bytes skipped outside any packet (noise before a `$`, a packet abandoned by a new `$`).
  uint64_t stray_bytes() const { return stray_bytes_; }
  // True while a packet has started but not ended.
  bool mid_packet() const { return state_ != State::kIdle; }
  // Drops a partial packet (after a timeout, say).
  void Reset();

 private:
  enum class State : uint8_t { kIdle, kBody, kChecksum };
  void StartPacket(bool notification);
  void FinishPacket(std::vector<GdbPacketEvent>& events);

  size_t max_payload_bytes_;
  State state_ = State::kIdle;
  bool notification_ = false;
  bool overflowed_ = false;
  std::string raw_;  // payload bytes as received (before run-length expansion)
  uint8_t sum_ = 0;
  char checksum_[2] = {0, 0};
  int checksum_chars_ = 0;
  uint64_t stray_bytes_ = 0;
};

// Expands `*` run-length encoding of a received payload (escapes are copied, not decoded).
// INVALID_ARGUMENT for a `*` with nothing to repeat or a bad count; RESOURCE_EXHAUSTED if the
// result would exceed `max_bytes`.
absl::StatusOr<std::string> ExpandGdbRunLength(std::string_view raw, size_t max_bytes);

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_CORE_GDB_PACKET_H_

// Feeds arbitrary bytes to the packet parser in arbitrary pieces: it must never crash, never
// hold more than its limit, and re-encoded payloads must parse back to themselves.
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "kvm-backend/core/gdb_packet.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  constexpr size_t kLimit = 256;
  tprd::backend::GdbPacketParser parser(kLimit);
  std::string_view input(reinterpret_cast<const char*>(data + 1), size - 1);
  const size_t piece = static_cast<size_t>(data[0]) + 1;  // first byte picks the split size
  std::vector<tprd::backend::GdbPacketEvent> events;
  for (size_t at = 0; at < input.size(); at += piece) parser.Feed(input.substr(at, piece), events);
  for (const tprd::backend::GdbPacketEvent& event : events) {
    if (event.kind == tprd::backend::GdbPacketEvent::Kind::kPacket) {
      if (event.payload.size() > kLimit) __builtin_trap();
      (void)tprd::backend::UnescapeGdbBinary(event.payload);
      (void)tprd::backend::HexDecode(event.payload);
    }
  }
  // Round trip: any payload survives escaping, framing and parsing.
  tprd::backend::GdbPacketParser round_trip(size * 2 + 16);
  std::vector<tprd::backend::GdbPacketEvent> back;
  round_trip.Feed(tprd::backend::EncodeGdbPacket(input), back);
  if (back.size() != 1 || back[0].kind != tprd::backend::GdbPacketEvent::Kind::kPacket) {
    __builtin_trap();
  }
  absl::StatusOr<std::string> unescaped = tprd::backend::UnescapeGdbBinary(back[0].payload);
  if (!unescaped.ok() || *unescaped != input) __builtin_trap();
  return 0;
}

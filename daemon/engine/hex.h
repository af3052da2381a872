// The one hex codec for bytes tprd writes or reads as text: journal files, gdb packets, JSON,
// messages and tprctl's input. Lower case out, either case in, two digits a byte.
#ifndef TPRD_DAEMON_ENGINE_HEX_H_
#define TPRD_DAEMON_ENGINE_HEX_H_

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace tprd::engine {

// "a18000feff"; with a separator between bytes, "a1 80 00 fe ff" (for people, in messages).
std::string HexEncode(absl::Span<const uint8_t> bytes, std::string_view separator = "");

// The value of one hex digit (either case), or -1 for any other character.
int HexDigitValue(char c);

// The bytes of `hex`, two digits (either case) a byte, no separators. INVALID_ARGUMENT on an
// odd length ("odd-length hex string of N") or a pair that is not two hex digits ("non-hex
// character at offset I", I the pair's first character).
absl::StatusOr<std::vector<uint8_t>> HexDecode(std::string_view hex);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_HEX_H_

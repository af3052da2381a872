// `tprctl decode`: classify one instruction and show its replacement. Needs no daemon.
#ifndef TPRD_CLI_DECODE_COMMAND_H_
#define TPRD_CLI_DECODE_COMMAND_H_

#include <CLI/CLI.hpp>
#include <cstdint>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace tprd::cli {

struct DecodeOptions {
  std::string address;
  std::string tpr = "0xfffe0080";
  std::string blob_va = "0x800e8000";
  bool json = false;
  std::vector<std::string> hex;  // joined; whitespace is ignored
};

// Registers the subcommand on `app`; `options` must outlive parsing and RunDecode.
CLI::App* AddDecodeCommand(CLI::App& app, DecodeOptions& options);

// Runs it. Returns the process exit code: 0 when the bytes were looked at (decodable or not),
// 2 with a one-line message on `err` for bad input.
int RunDecode(const DecodeOptions& options, std::ostream& out, std::ostream& err);

// Input parsing, exposed for tests. A number is 0x-prefixed hex or decimal, below 2^32.
absl::StatusOr<uint32_t> ParseAddress(const std::string& text);
// Hex bytes: even number of hex digits, 1 to 15 bytes, whitespace ignored.
absl::StatusOr<std::vector<uint8_t>> ParseHexBytes(const std::string& text);

}  // namespace tprd::cli

#endif  // TPRD_CLI_DECODE_COMMAND_H_

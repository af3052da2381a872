#include "cli/decode_command.h"

#include <cctype>
#include <ostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/engine/blob.h"
#include "daemon/engine/decode_report.h"
#include "daemon/engine/hex.h"

namespace tprd::cli {
namespace {

constexpr size_t kMaxInstructionBytes = 15;

}  // namespace

CLI::App* AddDecodeCommand(CLI::App& app, DecodeOptions& options) {
  CLI::App* command = app.add_subcommand(
      "decode", "Classify one instruction: TPR access, form, patchability, replacement bytes");
  command->add_option("--address", options.address, "Virtual address of the instruction")
      ->required();
  command->add_option("--tpr", options.tpr, "Virtual address of the TPR")->capture_default_str();
  command->add_option("--blob-va", options.blob_va, "Virtual address of the guest blob")
      ->capture_default_str();
  command->add_flag("--json", options.json, "Print one JSON object");
  command->add_option("HEX", options.hex, "Instruction bytes in hex, e.g. a18000feff")->required();
  return command;
}

absl::StatusOr<uint32_t> ParseAddress(const std::string& text) {
  const bool hex = text.size() > 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X');
  const std::string digits = hex ? text.substr(2) : text;
  if (digits.empty() || digits.size() > (hex ? 8u : 10u)) {
    return absl::InvalidArgumentError(absl::StrCat("bad address '", text, "'"));
  }
  uint64_t value = 0;
  for (char c : digits) {
    const int digit = hex ? engine::HexDigitValue(c)
                          : (std::isdigit(static_cast<unsigned char>(c)) ? c - '0' : -1);
    if (digit < 0) return absl::InvalidArgumentError(absl::StrCat("bad address '", text, "'"));
    value = value * (hex ? 16 : 10) + static_cast<uint64_t>(digit);
  }
  if (value > 0xFFFFFFFFull) {
    return absl::InvalidArgumentError(absl::StrCat("address '", text, "' is above 0xffffffff"));
  }
  return static_cast<uint32_t>(value);
}

absl::StatusOr<std::vector<uint8_t>> ParseHexBytes(const std::string& text) {
  std::string digits;
  for (char c : text) {
    if (std::isspace(static_cast<unsigned char>(c))) continue;
    if (engine::HexDigitValue(c) < 0) {
      return absl::InvalidArgumentError(absl::StrFormat("'%c' is not a hex digit", c));
    }
    digits.push_back(c);
  }
  if (digits.empty()) return absl::InvalidArgumentError("no instruction bytes given");
  if (digits.size() % 2 != 0) {
    return absl::InvalidArgumentError("odd number of hex digits (each byte needs two)");
  }
  if (digits.size() / 2 > kMaxInstructionBytes) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%d bytes given; an x86 instruction is at most 15", digits.size() / 2));
  }
  return engine::HexDecode(digits);  // every digit checked above: cannot fail
}

int RunDecode(const DecodeOptions& options, std::ostream& out, std::ostream& err) {
  std::string joined;
  for (const std::string& part : options.hex) joined += part;
  const absl::StatusOr<uint32_t> address = ParseAddress(options.address);
  const absl::StatusOr<uint32_t> tpr = ParseAddress(options.tpr);
  const absl::StatusOr<uint32_t> blob_va = ParseAddress(options.blob_va);
  const absl::StatusOr<std::vector<uint8_t>> bytes = ParseHexBytes(joined);
  for (const auto& [name, status] :
       {std::pair<const char*, absl::Status>{"--address", address.status()},
        {"--tpr", tpr.status()},
        {"--blob-va", blob_va.status()},
        {"HEX", bytes.status()}}) {
    if (!status.ok()) {
      err << "tprctl decode: " << name << ": " << status.message() << "\n";
      return 2;
    }
  }
  const absl::StatusOr<engine::HandlerTable> handlers = engine::HandlerTableForBlob(*blob_va);
  if (!handlers.ok()) {
    err << "tprctl decode: --blob-va: " << handlers.status().message() << "\n";
    return 2;
  }
  const engine::DecodeReport report = engine::BuildDecodeReport(*bytes, *address, *tpr, *handlers);
  if (options.json) {
    out << engine::DecodeReportJson(report) << "\n";
  } else {
    out << engine::DecodeReportText(report);
  }
  return 0;
}

}  // namespace tprd::cli

#include "kvm-backend/core/gdb_packet.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace tprd::backend {
namespace {

bool NeedsEscape(char c) { return c == '$' || c == '#' || c == '}' || c == '*'; }

// Run-length counts are printable characters; the repeat count is the character minus 29.
// `#` and `$` are excluded because they frame packets.
constexpr int kRunLengthBias = 29;

}  // namespace

std::string EscapeGdbBinary(std::string_view data) {
  std::string out;
  out.reserve(data.size());
  for (char c : data) {
    if (NeedsEscape(c)) {
      out.push_back(kGdbEscape);
      out.push_back(static_cast<char>(static_cast<uint8_t>(c) ^ kGdbEscapeXor));
    } else {
      out.push_back(c);
    }
  }
  return out;
}

absl::StatusOr<std::string> UnescapeGdbBinary(std::string_view data) {
  std::string out;
  out.reserve(data.size());
  for (size_t i = 0; i < data.size(); ++i) {
    if (data[i] != kGdbEscape) {
      out.push_back(data[i]);
      continue;
    }
    if (i + 1 == data.size())
      return absl::InvalidArgumentError("binary data ends inside an escape");
    out.push_back(static_cast<char>(static_cast<uint8_t>(data[++i]) ^ kGdbEscapeXor));
  }
  return out;
}

std::string EncodeGdbPacket(std::string_view payload) {
  return FrameGdbPacket(EscapeGdbBinary(payload));
}

std::string FrameGdbPacket(std::string_view body) {
  uint8_t sum = 0;
  for (char c : body) sum = static_cast<uint8_t>(sum + static_cast<uint8_t>(c));
  return absl::StrFormat("$%s#%02x", body, sum);
}

std::vector<std::string_view> SplitGdbFields(std::string_view text, char separator,
                                             bool skip_empty) {
  std::vector<std::string_view> fields;
  size_t start = 0;
  while (true) {
    size_t end = text.find(separator, start);
    std::string_view field =
        text.substr(start, end == std::string_view::npos ? std::string_view::npos : end - start);
    if (!field.empty() || !skip_empty) fields.push_back(field);
    if (end == std::string_view::npos) return fields;
    start = end + 1;
  }
}

absl::StatusOr<uint64_t> ParseGdbHex(std::string_view text) {
  if (text.empty() || text.size() > 16) {
    return absl::InvalidArgumentError(absl::StrCat("bad hex number of ", text.size(), " digits"));
  }
  uint64_t value = 0;
  for (char c : text) {
    int digit = engine::HexDigitValue(c);
    if (digit < 0) return absl::InvalidArgumentError("non-hex character in a number");
    value = value << 4 | static_cast<uint64_t>(digit);
  }
  return value;
}

absl::StatusOr<std::string> ExpandGdbRunLength(std::string_view raw, size_t max_bytes) {
  std::string out;
  out.reserve(std::min(raw.size(), max_bytes));
  for (size_t i = 0; i < raw.size(); ++i) {
    char c = raw[i];
    if (c == kGdbEscape) {
      // Copy the escape and the escaped byte verbatim: an escaped `*` is data, not a count.
      out.push_back(c);
      if (i + 1 < raw.size()) out.push_back(raw[++i]);
    } else if (c == '*') {
      if (out.empty()) return absl::InvalidArgumentError("run-length `*` with nothing to repeat");
      if (i + 1 == raw.size()) return absl::InvalidArgumentError("run-length `*` without a count");
      int count = static_cast<uint8_t>(raw[++i]) - kRunLengthBias;
      if (count < 3 || count > 126 - kRunLengthBias) {
        return absl::InvalidArgumentError(absl::StrFormat("bad run-length count %d", count));
      }
      if (out.size() + static_cast<size_t>(count) > max_bytes) {
        return absl::ResourceExhaustedError("run-length expansion exceeds the packet limit");
      }
      out.append(static_cast<size_t>(count), out.back());
    } else {
      out.push_back(c);
    }
    if (out.size() > max_bytes) {
      return absl::ResourceExhaustedError("run-length expansion exceeds the packet limit");
    }
  }
  return out;
}

void GdbPacketParser::Reset() {
  state_ = State::kIdle;
  raw_.clear();
  overflowed_ = false;
  checksum_chars_ = 0;
}

void GdbPacketParser::StartPacket(bool notification) {
  state_ = State::kBody;
  notification_ = notification;
  overflowed_ = false;
  raw_.clear();
  sum_ = 0;
  checksum_chars_ = 0;
}

void GdbPacketParser::FinishPacket(std::vector<GdbPacketEvent>& events) {
  state_ = State::kIdle;
  if (overflowed_) {
    events.push_back(
        {GdbPacketEvent::Kind::kOversized,
         absl::StrFormat("packet longer than %d bytes discarded", max_payload_bytes_)});
    raw_.clear();
    return;
  }
  int high = engine::HexDigitValue(checksum_[0]);
  int low = engine::HexDigitValue(checksum_[1]);
  if (high < 0 || low < 0 || static_cast<uint8_t>(high << 4 | low) != sum_) {
    events.push_back({GdbPacketEvent::Kind::kBadChecksum,
                      absl::StrFormat("checksum `%c%c` does not match computed %02x", checksum_[0],
                                      checksum_[1], sum_)});
    raw_.clear();
    return;
  }
  absl::StatusOr<std::string> payload = ExpandGdbRunLength(raw_, max_payload_bytes_);
  raw_.clear();
  if (payload.ok()) {
    events.push_back(
        {notification_ ? GdbPacketEvent::Kind::kNotification : GdbPacketEvent::Kind::kPacket,
         *std::move(payload)});
  } else if (absl::IsResourceExhausted(payload.status())) {
    events.push_back({GdbPacketEvent::Kind::kOversized, std::string(payload.status().message())});
  } else {
    events.push_back({GdbPacketEvent::Kind::kMalformed, std::string(payload.status().message())});
  }
}

void GdbPacketParser::Feed(std::string_view bytes, std::vector<GdbPacketEvent>& events) {
  for (char c : bytes) {
    switch (state_) {
      case State::kIdle:
        if (c == '$' || c == '%') {
          StartPacket(c == '%');
        } else if (c == '+') {
          events.push_back({GdbPacketEvent::Kind::kAck, ""});
        } else if (c == '-') {
          events.push_back({GdbPacketEvent::Kind::kNack, ""});
        } else {
          ++stray_bytes_;
        }
        break;
      case State::kBody:
        if (c == '#') {
          state_ = State::kChecksum;
        } else if (c == '$') {
          // A new start inside a packet: the old one was cut short; resynchronise on the new one.
          // (`%` is ordinary data inside a packet: it is not escaped.)
          stray_bytes_ += raw_.size() + 1;
          StartPacket(false);
        } else {
          sum_ = static_cast<uint8_t>(sum_ + static_cast<uint8_t>(c));
          if (raw_.size() < max_payload_bytes_) {
            raw_.push_back(c);
          } else {
            overflowed_ = true;
          }
        }
        break;
      case State::kChecksum:
        checksum_[checksum_chars_++] = c;
        if (checksum_chars_ == 2) FinishPacket(events);
        break;
    }
  }
}

}  // namespace tprd::backend

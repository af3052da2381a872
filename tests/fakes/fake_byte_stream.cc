#include "tests/fakes/fake_byte_stream.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kvm-backend/core/gdb_packet.h"

namespace tprd::backend {
namespace {

std::string Printable(std::string_view bytes) {
  std::string out;
  for (char c : bytes) {
    if (c >= 0x20 && c < 0x7f) {
      out.push_back(c);
    } else {
      out += absl::StrFormat("\\x%02x", static_cast<uint8_t>(c));
    }
  }
  return out;
}

}  // namespace

FakeByteStream& FakeByteStream::ExpectWrite(std::string bytes) {
  steps_.push_back({Step::Kind::kExpectWrite, std::move(bytes)});
  return *this;
}

FakeByteStream& FakeByteStream::Send(std::string bytes) {
  steps_.push_back({Step::Kind::kSend, std::move(bytes)});
  return *this;
}

FakeByteStream& FakeByteStream::Stall() {
  steps_.push_back({Step::Kind::kStall, ""});
  return *this;
}

FakeByteStream& FakeByteStream::ClosePeer() {
  steps_.push_back({Step::Kind::kClose, ""});
  return *this;
}

FakeByteStream& FakeByteStream::ExpectCommand(std::string_view request, std::string_view reply) {
  ExpectWrite(EncodeGdbPacket(request));
  Send(absl::StrCat("+", FrameGdbPacket(reply)));
  return ExpectWrite("+");
}

absl::Status FakeByteStream::Write(std::string_view data, absl::Time /*deadline*/) {
  if (closed_by_client_) return absl::FailedPreconditionError("write after Close");
  written_.append(data);
  while (!data.empty()) {
    if (steps_.empty() || steps_.front().kind != Step::Kind::kExpectWrite) {
      if (!steps_.empty() && steps_.front().kind == Step::Kind::kClose) {
        return absl::UnavailableError("peer closed");
      }
      failures_.push_back(absl::StrCat("unexpected write: ", Printable(data)));
      return absl::InternalError(failures_.back());
    }
    std::string& expected = steps_.front().bytes;
    size_t n = std::min(expected.size(), data.size());
    if (expected.compare(0, n, data.substr(0, n)) != 0) {
      failures_.push_back(absl::StrCat("wrote ", Printable(data.substr(0, n)), " but expected ",
                                       Printable(expected)));
      return absl::InternalError(failures_.back());
    }
    expected.erase(0, n);
    data.remove_prefix(n);
    if (expected.empty()) steps_.pop_front();
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> FakeByteStream::Read(size_t max_bytes, absl::Time /*deadline*/) {
  if (closed_by_client_) return absl::FailedPreconditionError("read after Close");
  if (steps_.empty() || steps_.front().kind == Step::Kind::kExpectWrite) {
    return absl::DeadlineExceededError("fake peer is silent");
  }
  Step& step = steps_.front();
  switch (step.kind) {
    case Step::Kind::kStall:
      steps_.pop_front();
      return absl::DeadlineExceededError("fake peer stalled");
    case Step::Kind::kClose:
      return absl::UnavailableError("fake peer closed the stream");
    default:
      break;
  }
  size_t n = std::min({max_bytes, max_read_chunk_, step.bytes.size()});
  std::string out = step.bytes.substr(0, n);
  step.bytes.erase(0, n);
  if (step.bytes.empty()) steps_.pop_front();
  return out;
}

}  // namespace tprd::backend

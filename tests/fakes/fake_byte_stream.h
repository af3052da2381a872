// A scripted peer for protocol clients. The script is a queue of steps consumed in order:
// bytes the client must write next, bytes the peer sends, a stall (the next read finds nothing
// until its deadline, with no real waiting), or the peer closing. Once the script is exhausted
// the peer is silent: reads return DEADLINE_EXCEEDED at once.
#ifndef TPRD_TESTS_FAKES_FAKE_BYTE_STREAM_H_
#define TPRD_TESTS_FAKES_FAKE_BYTE_STREAM_H_

#include <deque>
#include <string>
#include <string_view>
#include <vector>

#include "kvm-backend/core/byte_stream.h"

namespace tprd::backend {

class FakeByteStream : public ByteStream {
 public:
  // The client must write exactly these bytes next (possibly over several Write calls).
  FakeByteStream& ExpectWrite(std::string bytes);
  // The peer sends these bytes; reads return them (at most `max_read_chunk()` per read).
  FakeByteStream& Send(std::string bytes);
  // The next read waiting for data times out (DEADLINE_EXCEEDED) without sleeping.
  FakeByteStream& Stall();
  // The peer closes: reads return UNAVAILABLE from here on, writes too.
  FakeByteStream& ClosePeer();

  // Shorthand for one acknowledged exchange: expects `$request#cs`, sends `+$reply#cs` (reply
  // framed as is: escape binary replies yourself), expects our `+`.
  FakeByteStream& ExpectCommand(std::string_view request, std::string_view reply);

  // Deliver sent bytes at most `n` at a time (1 exercises every split of a packet).
  void set_max_read_chunk(size_t n) { max_read_chunk_ = n; }
  size_t max_read_chunk() const { return max_read_chunk_; }

  // Script problems seen so far (unexpected writes); empty when the client behaved.
  const std::vector<std::string>& failures() const { return failures_; }
  // True once every step was consumed.
  bool ScriptDone() const { return steps_.empty(); }
  // Everything the client wrote, in order.
  const std::string& written() const { return written_; }
  bool closed_by_client() const { return closed_by_client_; }

  absl::Status Write(std::string_view data, absl::Time deadline) override;
  absl::StatusOr<std::string> Read(size_t max_bytes, absl::Time deadline) override;
  void Close() override { closed_by_client_ = true; }

 private:
  struct Step {
    enum class Kind { kExpectWrite, kSend, kStall, kClose } kind;
    std::string bytes;
  };
  std::deque<Step> steps_;
  std::vector<std::string> failures_;
  std::string written_;
  size_t max_read_chunk_ = 1 << 20;
  bool closed_by_client_ = false;
};

}  // namespace tprd::backend

#endif  // TPRD_TESTS_FAKES_FAKE_BYTE_STREAM_H_

// GdbClient's commands, each one Command() or CommandExpectingOk() exchange or a bounded series
// of them: the handshake, threads, registers, memory, breakpoints, watchpoints and detach. The
// transport they rest on is in gdb_client_transport.cc.
#include <algorithm>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/engine/status_macros.h"
#include "kvm-backend/core/gdb_client.h"
#include "kvm-backend/core/gdb_client_errors.h"

namespace tprd::backend {
namespace {

using gdb_client_errors::Named;
using gdb_client_errors::WithContext;

// qfThreadInfo/qsThreadInfo rounds and target description documents we follow at most.
constexpr int kMaxThreadInfoRounds = 1024;
constexpr int kMaxXmlDocuments = 16;
// Room for `M<address>,<length>:` within one packet.
constexpr size_t kWriteHeaderBytes = 32;

char WatchpointType(engine::WatchKind kind) {
  switch (kind) {
    case engine::WatchKind::kWrite:
      return '2';
    case engine::WatchKind::kRead:
      return '3';
    case engine::WatchKind::kAccess:
      return '4';
  }
  return '4';
}

}  // namespace

absl::Status GdbClient::Attach() {
  if (attached_) return absl::FailedPreconditionError("already attached");
  TPRD_RETURN_IF_ERROR(Usable(true));
  absl::StatusOr<std::string> features =
      Command("qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+");
  if (!features.ok()) return WithContext(features.status(), "gdbstub handshake");
  // QEMU stops a running VM when we connect and says so before anything else.
  if (!pending_stops_.empty()) {
    attach_stop_ = pending_stops_.back();
    pending_stops_.clear();
  }
  bool has_target_xml = false;
  for (std::string_view feature : SplitGdbFields(*features, ';', true)) {
    if (feature == "multiprocess+") multiprocess_ = true;
    if (feature == "qXfer:features:read+") has_target_xml = true;
    constexpr std::string_view kPacketSize = "PacketSize=";
    if (feature.substr(0, kPacketSize.size()) == kPacketSize) {
      absl::StatusOr<uint64_t> size = ParseGdbHex(feature.substr(kPacketSize.size()));
      if (size.ok() && *size >= 64) peer_packet_size_ = static_cast<size_t>(*size);
    }
  }
  if (!has_target_xml) {
    return absl::FailedPreconditionError(
        "gdbstub offers no target description (qXfer:features:read): cannot know its registers");
  }

  std::vector<std::string> documents;
  std::vector<std::string> queue = {"target.xml"};
  size_t total_bytes = 0;
  for (size_t i = 0; i < queue.size(); ++i) {
    if (queue.size() > kMaxXmlDocuments) {
      return absl::FailedPreconditionError("target description includes too many documents");
    }
    absl::StatusOr<std::string> document = ReadFeatureDocument(queue[i]);
    if (!document.ok()) return document.status();
    total_bytes += document->size();
    if (total_bytes > options_.max_target_xml_bytes) {
      return absl::ResourceExhaustedError("target description is too large");
    }
    for (std::string& include : FindGdbXmlIncludes(*document)) {
      if (std::find(queue.begin(), queue.end(), include) == queue.end()) {
        queue.push_back(std::move(include));
      }
    }
    documents.push_back(*std::move(document));
  }
  absl::StatusOr<GdbRegisterLayout> layout = GdbRegisterLayout::FromTargetXml(documents);
  if (!layout.ok()) return layout.status();
  TPRD_RETURN_IF_ERROR(layout->CheckI386());
  layout_ = *std::move(layout);

  absl::StatusOr<GdbStopReply> stop = QueryStopReason();
  if (!stop.ok()) return WithContext(stop.status(), "gdbstub handshake");
  initial_stop_ = *stop;
  attached_ = true;
  return absl::OkStatus();
}

absl::StatusOr<std::string> GdbClient::ReadFeatureDocument(std::string_view annex) {
  if (annex.empty() || annex.find_first_of(":,#$*}") != std::string_view::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("target description names an unusable document: ", std::string(annex)));
  }
  // The reply carries `m`/`l`, escapes and the data within one packet.
  const size_t chunk = std::max<size_t>(64, std::min<size_t>(0xffb, peer_packet_size_ - 5));
  std::string document;
  while (true) {
    std::string request =
        absl::StrFormat("qXfer:features:read:%s:%x,%x", annex, document.size(), chunk);
    absl::StatusOr<std::string> reply = Command(request);
    if (!reply.ok()) return reply.status();
    char marker = (*reply)[0];
    if (marker != 'm' && marker != 'l') {
      return absl::DataLossError(
          absl::StrCat("gdbstub answered ", Named(*reply), " to ", Named(request)));
    }
    absl::StatusOr<std::string> data = UnescapeGdbBinary(std::string_view(*reply).substr(1));
    if (!data.ok()) return WithContext(data.status(), Named(request));
    document += *data;
    if (document.size() > options_.max_target_xml_bytes) {
      return absl::ResourceExhaustedError("target description is too large");
    }
    if (marker == 'l') return document;
    if (data->empty()) {
      return absl::DataLossError(
          absl::StrCat("gdbstub sent an empty `m` part of ", std::string(annex)));
    }
  }
}

size_t GdbClient::max_write_in_one_packet() const {
  size_t by_packet =
      peer_packet_size_ > kWriteHeaderBytes ? (peer_packet_size_ - kWriteHeaderBytes) / 2 : 1;
  return std::max<size_t>(1, std::min(options_.max_read_chunk, by_packet));
}

absl::StatusOr<std::vector<GdbThreadId>> GdbClient::ListThreads() {
  std::vector<GdbThreadId> threads;
  std::string request = "qfThreadInfo";
  for (int round = 0; round < kMaxThreadInfoRounds; ++round) {
    absl::StatusOr<std::string> reply = Command(request);
    if (!reply.ok()) return reply.status();
    if (*reply == "l") return threads;
    if ((*reply)[0] != 'm') {
      return absl::DataLossError(
          absl::StrCat("gdbstub answered ", Named(*reply), " to ", Named(request)));
    }
    for (std::string_view id : SplitGdbFields(std::string_view(*reply).substr(1), ',', false)) {
      absl::StatusOr<GdbThreadId> thread = ParseGdbThreadId(id);
      if (!thread.ok()) return WithContext(thread.status(), "thread list");
      threads.push_back(*thread);
    }
    request = "qsThreadInfo";
  }
  return absl::DataLossError("gdbstub's thread list does not end");
}

absl::Status GdbClient::SelectThread(const GdbThreadId& thread) {
  return CommandExpectingOk(absl::StrCat("Hg", thread.ToString(multiprocess_)));
}

absl::Status GdbClient::ClearTrapsOfEveryThread(const std::vector<GdbThreadId>& threads) {
  for (size_t i = threads.size(); i-- > 0;) {  // threads[0] last: the continue thread after
    TPRD_RETURN_IF_ERROR(
        CommandExpectingOk(absl::StrCat("Hc", threads[i].ToString(multiprocess_))));
    absl::StatusOr<GdbStopReply> stop = QueryStopReason();
    if (!stop.ok()) return WithContext(stop.status(), "clearing a previous client's traps");
  }
  return absl::OkStatus();
}

absl::StatusOr<engine::VcpuRegisters> GdbClient::ReadRegisters() {
  absl::StatusOr<std::string> reply = Command("g");
  if (!reply.ok()) return reply.status();
  return layout_.DecodeI386(*reply);
}

absl::StatusOr<uint64_t> GdbClient::ReadRegister(std::string_view name) {
  const GdbRegisterInfo* info = layout_.Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat("no register ", std::string(name)));
  }
  std::string request = absl::StrFormat("p%x", info->regnum);
  absl::StatusOr<std::string> reply = Command(request);
  if (!reply.ok()) return reply.status();
  if (reply->size() != static_cast<size_t>(info->bitsize / 4)) {
    return absl::DataLossError(absl::StrCat("gdbstub answered ", reply->size() / 2, " bytes to ",
                                            Named(request), " for ", std::string(name)));
  }
  absl::StatusOr<uint64_t> value = DecodeGdbRegisterValue(*reply);
  if (!value.ok()) return WithContext(value.status(), Named(request));
  return value;
}

absl::Status GdbClient::WriteRegister(std::string_view name, uint64_t value) {
  const GdbRegisterInfo* info = layout_.Find(name);
  if (info == nullptr) {
    return absl::NotFoundError(absl::StrCat("no register ", std::string(name)));
  }
  if (info->bitsize > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("register ", std::string(name), " is wider than 64 bits"));
  }
  return CommandExpectingOk(
      absl::StrFormat("P%x=%s", info->regnum,
                      EncodeGdbRegisterValue(value, static_cast<size_t>(info->bitsize / 8))));
}

absl::StatusOr<size_t> GdbClient::TakeMemoryReply(std::string_view request,
                                                  const std::string& reply,
                                                  absl::Span<uint8_t> out) {
  absl::StatusOr<std::vector<uint8_t>> bytes = HexDecode(reply);
  if (!bytes.ok()) return WithContext(bytes.status(), absl::StrCat("answer to ", Named(request)));
  if (bytes->size() > out.size()) {
    return absl::DataLossError(
        absl::StrCat("gdbstub answered ", bytes->size(), " bytes to ", Named(request)));
  }
  std::copy(bytes->begin(), bytes->end(), out.begin());
  return bytes->size();
}

absl::Status GdbClient::ReadMemoryInTurn(uint64_t address, absl::Span<uint8_t> out) {
  size_t done = 0;
  while (done < out.size()) {
    const size_t want = std::min(options_.max_read_chunk, out.size() - done);
    std::string request = absl::StrFormat("m%x,%x", address + done, want);
    absl::StatusOr<std::string> reply = Command(request);
    if (!reply.ok()) return reply.status();
    absl::StatusOr<size_t> got = TakeMemoryReply(request, *reply, out.subspan(done, want));
    if (!got.ok()) return got.status();
    // A short answer is a partial read (the rest is unreadable or will come with the next `m`).
    done += *got;
  }
  return absl::OkStatus();
}

absl::Status GdbClient::ReadMemory(uint64_t address, absl::Span<uint8_t> out) {
  const size_t chunk = options_.max_read_chunk;
  if (out.size() <= chunk) return ReadMemoryInTurn(address, out);
  // Several packets: pipelined, one round trip for all (the blob's read-back, issue 15). A chunk
  // answered short is finished on its own, as a read in turn would finish it.
  std::vector<std::string> payloads;
  for (size_t done = 0; done < out.size(); done += chunk) {
    payloads.push_back(
        absl::StrFormat("m%x,%x", address + done, std::min(chunk, out.size() - done)));
  }
  absl::StatusOr<std::vector<std::string>> replies = ExchangePipelined(payloads);
  if (!replies.ok()) return replies.status();
  for (size_t k = 0; k < payloads.size(); ++k) {
    const size_t done = k * chunk;
    const size_t want = std::min(chunk, out.size() - done);
    absl::StatusOr<std::string> reply = CheckedReply(payloads[k], (*replies)[k]);
    if (!reply.ok()) return reply.status();
    absl::StatusOr<size_t> got = TakeMemoryReply(payloads[k], *reply, out.subspan(done, want));
    if (!got.ok()) return got.status();
    if (*got < want) {
      TPRD_RETURN_IF_ERROR(
          ReadMemoryInTurn(address + done + *got, out.subspan(done + *got, want - *got)));
    }
  }
  return absl::OkStatus();
}

absl::Status GdbClient::WriteMemoryPacket(uint64_t address, absl::Span<const uint8_t> data) {
  return CommandExpectingOk(absl::StrFormat("M%x,%x:%s", address, data.size(), HexEncode(data)));
}

absl::Status GdbClient::WriteMemory(uint64_t address, absl::Span<const uint8_t> data) {
  const size_t chunk = max_write_in_one_packet();
  if (data.size() <= chunk) return WriteMemoryPacket(address, data);
  // Several packets: pipelined, one round trip for all (the blob's install, issue 15).
  std::vector<engine::MemoryWrite> writes;
  for (size_t done = 0; done < data.size(); done += chunk) {
    writes.push_back({address + done, data.subspan(done, std::min(chunk, data.size() - done))});
  }
  absl::StatusOr<std::vector<absl::Status>> written = WriteMemoryPipelined(writes);
  if (!written.ok()) return written.status();
  for (const absl::Status& s : *written) TPRD_RETURN_IF_ERROR(s);
  return absl::OkStatus();
}

absl::Status GdbClient::WriteMemoryInOnePacket(uint64_t address, absl::Span<const uint8_t> data) {
  if (data.empty()) return absl::OkStatus();
  if (data.size() > max_write_in_one_packet()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%d bytes at 0x%x do not fit one M packet (at most %d): refusing to split them",
        data.size(), address, max_write_in_one_packet()));
  }
  return WriteMemoryPacket(address, data);
}

absl::Status GdbClient::SetPhysicalMemoryMode(bool physical) {
  return CommandExpectingOk(physical ? "Qqemu.PhyMemMode:1" : "Qqemu.PhyMemMode:0");
}

absl::Status GdbClient::InsertBreakpoint(uint64_t address) {
  return CommandExpectingOk(absl::StrFormat("Z0,%x,1", address));
}

absl::Status GdbClient::RemoveBreakpoint(uint64_t address) {
  return CommandExpectingOk(absl::StrFormat("z0,%x,1", address));
}

absl::Status GdbClient::InsertWatchpoint(uint64_t address, uint64_t length,
                                         engine::WatchKind kind) {
  return CommandExpectingOk(absl::StrFormat("Z%c,%x,%x", WatchpointType(kind), address, length));
}

absl::Status GdbClient::RemoveWatchpoint(uint64_t address, uint64_t length,
                                         engine::WatchKind kind) {
  return CommandExpectingOk(absl::StrFormat("z%c,%x,%x", WatchpointType(kind), address, length));
}

absl::Status GdbClient::Detach() {
  // Plain `D` answers E22 once multiprocess+ was negotiated and leaves the VM stopped.
  TPRD_RETURN_IF_ERROR(CommandExpectingOk(multiprocess_ ? "D;1" : "D"));
  detached_ = true;
  stream_->Close();
  return absl::OkStatus();
}

}  // namespace tprd::backend

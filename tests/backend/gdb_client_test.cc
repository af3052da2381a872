#include "kvm-backend/core/gdb_client.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvm-backend/core/gdb_packet.h"
#include "tests/fakes/fake_byte_stream.h"
#include "tests/fakes/qemu_gdbstub_script.h"

namespace tprd::backend {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

// A `g` reply: register n (of the 25 32-bit ones) holds 0x1000 + n, cr3 holds 0x39000.
std::string GReply() {
  std::string hex;
  for (uint32_t n = 0; n < 25; ++n) hex += Le32(n == 21 ? 0x39000 : 0x1000 + n);
  hex += std::string(20, '0') + Le32(0x37f);  // st0, fctrl
  return hex;
}

class GdbClientTest : public ::testing::Test {
 protected:
  GdbClientTest() {
    auto stream = std::make_unique<FakeByteStream>();
    fake_ = stream.get();
    client_ = std::make_unique<GdbClient>(std::move(stream));
  }

  void ScriptHandshake(bool vm_was_running) { ScriptQemuGdbHandshake(*fake_, vm_was_running); }

  void Attach() {
    ScriptHandshake(false);
    ASSERT_TRUE(client_->Attach().ok());
  }

  void ExpectScriptDone() {
    EXPECT_THAT(fake_->failures(), IsEmpty());
    EXPECT_TRUE(fake_->ScriptDone());
  }

  FakeByteStream* fake_;
  std::unique_ptr<GdbClient> client_;
};

TEST_F(GdbClientTest, HandshakeConsumesUnsolicitedStopAndReadsLayout) {
  ScriptHandshake(true);
  absl::Status attached = client_->Attach();
  ASSERT_TRUE(attached.ok()) << attached;
  ExpectScriptDone();
  ASSERT_TRUE(client_->attach_stop().has_value());
  EXPECT_EQ(client_->attach_stop()->signal, kGdbSignalInt);
  EXPECT_EQ(client_->pending_stops(), 0u);
  EXPECT_TRUE(client_->multiprocess());
  const GdbRegisterLayout& layout = client_->register_layout();
  EXPECT_EQ(layout.Find("cs_base"), nullptr);  // commented out in the XML
  EXPECT_EQ(layout.Find("fs_base")->regnum, 16);
  EXPECT_EQ(layout.Find("fs_base")->g_offset, 64u);
  EXPECT_EQ(layout.Find("cr0")->regnum, 19);
  EXPECT_EQ(layout.Find("cr3")->regnum, 21);
  EXPECT_EQ(layout.Find("cr8")->regnum, 23);
  EXPECT_EQ(layout.Find("efer")->g_offset, 96u);
}

// gdb's `monitor`: the output comes as `O` packets (hex), each acked, then `OK`.
TEST_F(GdbClientTest, MonitorCommandCollectsTheConsoleOutputBeforeOk) {
  Attach();
  fake_
      ->ExpectWrite(EncodeGdbPacket("qRcmd,696e666f206c617069632031"))  // "info lapic 1"
      .Send(absl::StrCat("+", FrameGdbPacket("O54505220"), FrameGdbPacket("O307836380d0a")))
      .ExpectWrite("+")
      .ExpectWrite("+")
      .Send(FrameGdbPacket("OK"))
      .ExpectWrite("+");
  absl::StatusOr<std::string> output = client_->MonitorCommand("info lapic 1");
  ASSERT_TRUE(output.ok()) << output.status();
  EXPECT_EQ(*output, "TPR 0x68\r\n");
  ExpectScriptDone();
}

TEST_F(GdbClientTest, MonitorCommandOfAStubWithoutMonitorIsUnimplemented) {
  Attach();
  fake_->ExpectCommand("qRcmd,6869", "");
  EXPECT_TRUE(absl::IsUnimplemented(client_->MonitorCommand("hi").status()));
  EXPECT_TRUE(client_->broken_reason().ok());
  ExpectScriptDone();
}

TEST_F(GdbClientTest, HandshakeWithStoppedVmHasNoAttachStop) {
  Attach();
  ExpectScriptDone();
  EXPECT_FALSE(client_->attach_stop().has_value());
  EXPECT_EQ(client_->initial_stop()->thread->vcpu_index(), 0);
}

TEST_F(GdbClientTest, ThreadsSelectAndRegisters) {
  Attach();
  fake_->ExpectCommand("qfThreadInfo", "mp01.01,p01.02")
      .ExpectCommand("qsThreadInfo", "mp01.03")
      .ExpectCommand("qsThreadInfo", "l")
      .ExpectCommand("Hgp01.02", "OK")
      .ExpectCommand("g", GReply())
      .ExpectCommand("p17", Le32(0x20 >> 4))
      .ExpectCommand("P8=78563412", "OK")
      .ExpectCommand("P9=d5080000", "OK");  // eflags: register 9 in QEMU's i386 layout
  absl::StatusOr<std::vector<GdbThreadId>> threads = client_->ListThreads();
  ASSERT_TRUE(threads.ok()) << threads.status();
  ASSERT_EQ(threads->size(), 3u);
  EXPECT_EQ((*threads)[2].vcpu_index(), 2);
  ASSERT_TRUE(client_->SelectThread((*threads)[1]).ok());
  absl::StatusOr<engine::VcpuRegisters> regs = client_->ReadRegisters();
  ASSERT_TRUE(regs.ok()) << regs.status();
  EXPECT_EQ(regs->reg(engine::Gpr::kEax), 0x1000u);
  EXPECT_EQ(regs->reg(engine::Gpr::kEdi), 0x1007u);
  EXPECT_EQ(regs->eip, 0x1008u);
  EXPECT_EQ(regs->gs, 0x100fu);
  EXPECT_EQ(regs->fs_base, 0x1010u);
  EXPECT_EQ(regs->cr0, 0x1013u);
  EXPECT_EQ(regs->cr3, 0x39000u);
  EXPECT_EQ(regs->efer, 0x1018u);
  EXPECT_EQ(*client_->ReadRegister("cr8"), 2u);
  EXPECT_TRUE(client_->WriteRegister("eip", 0x12345678).ok());
  EXPECT_TRUE(client_->WriteRegister("eflags", 0x8D5).ok());
  ExpectScriptDone();
}

TEST_F(GdbClientTest, ShortGReplyIsAnError) {
  Attach();
  fake_->ExpectCommand("g", GReply().substr(0, 80));
  absl::StatusOr<engine::VcpuRegisters> regs = client_->ReadRegisters();
  EXPECT_TRUE(absl::IsDataLoss(regs.status())) << regs.status();
}

// Chunks of 0x800, every `m` sent before the first answer (one round trip for the blob's
// read-back); a chunk answered short is finished with an `m` of its own.
TEST_F(GdbClientTest, ReadsMemoryInPipelinedChunksOf0x800) {
  Attach();
  fake_->ExpectWrite(EncodeGdbPacket("m1000,800"))
      .ExpectWrite(EncodeGdbPacket("m1800,800"))
      .ExpectWrite(EncodeGdbPacket("m2000,10"))
      .Send(absl::StrCat("+", FrameGdbPacket(std::string(0x1000, 'a')), "+",
                         FrameGdbPacket(std::string(0x800, 'b')), "+",
                         FrameGdbPacket(std::string(0x20, 'c'))))
      .ExpectWrite("+")
      .ExpectWrite("+")
      .ExpectWrite("+")
      .ExpectCommand("m1c00,400", std::string(0x800, 'd'));
  std::vector<uint8_t> out(0x1010);
  absl::Status read = client_->ReadMemory(0x1000, absl::MakeSpan(out));
  ASSERT_TRUE(read.ok()) << read;
  EXPECT_EQ(out[0], 0xaa);
  EXPECT_EQ(out[0x800], 0xbb);
  EXPECT_EQ(out[0xbff], 0xbb);
  EXPECT_EQ(out[0xc00], 0xdd) << "the short chunk's rest, read on its own";
  EXPECT_EQ(out[0xfff], 0xdd);
  EXPECT_EQ(out[0x100f], 0xcc);
  ExpectScriptDone();
}

// A refused chunk fails the read naming its own command; the client stays usable.
TEST_F(GdbClientTest, PipelinedReadFailsOnARefusedChunkNamingIt) {
  Attach();
  fake_->ExpectWrite(EncodeGdbPacket("m1000,800"))
      .ExpectWrite(EncodeGdbPacket("m1800,8"))
      .Send(absl::StrCat("+", FrameGdbPacket(std::string(0x1000, 'a')), "+", FrameGdbPacket("E14")))
      .ExpectWrite("+")
      .ExpectWrite("+");
  std::vector<uint8_t> out(0x808);
  absl::Status read = client_->ReadMemory(0x1000, absl::MakeSpan(out));
  EXPECT_TRUE(absl::IsNotFound(read)) << read;
  EXPECT_THAT(std::string(read.message()), HasSubstr("m1800,8"));
  EXPECT_TRUE(client_->broken_reason().ok());
  ExpectScriptDone();
}

TEST_F(GdbClientTest, ReadsOfOneChunkWaitForEachAnswer) {
  Attach();
  fake_->ExpectCommand("m1000,800", std::string(0x1000, 'a'));
  std::vector<uint8_t> out(0x800);
  ASSERT_TRUE(client_->ReadMemory(0x1000, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out[0x7ff], 0xaa);
  ExpectScriptDone();
}

TEST_F(GdbClientTest, UnmappedAddressIsNotFoundNamingTheCommand) {
  Attach();
  fake_->ExpectCommand("mffe00080,4", "E14");
  std::vector<uint8_t> out(4);
  absl::Status status = client_->ReadMemory(0xffe00080, absl::MakeSpan(out));
  EXPECT_TRUE(absl::IsNotFound(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr("mffe00080,4"));
  EXPECT_THAT(status.message(), HasSubstr("not mapped"));
  // The connection stays usable after a refusal.
  fake_->ExpectCommand("Qqemu.PhyMemMode:1", "OK");
  EXPECT_TRUE(client_->SetPhysicalMemoryMode(true).ok());
  ExpectScriptDone();
}

TEST_F(GdbClientTest, WritesMemoryInPacketsThatFitAndRefusesToSplitOneSite) {
  Attach();
  // PacketSize 0x1000 leaves room for (0x1000 - 32) / 2 = 0x7f0 bytes per M packet.
  EXPECT_EQ(client_->max_write_in_one_packet(), 0x7f0u);
  std::vector<uint8_t> data(0x800, 0x90);
  // Both packets go out before the first answer (pipelined), then their answers come in order.
  fake_
      ->ExpectWrite(
          EncodeGdbPacket(absl::StrCat("M1000,7f0:", HexEncode(std::vector<uint8_t>(0x7f0, 0x90)))))
      .ExpectWrite(
          EncodeGdbPacket(absl::StrCat("M17f0,10:", HexEncode(std::vector<uint8_t>(0x10, 0x90)))))
      .Send(absl::StrCat("+", FrameGdbPacket("OK"), "+", FrameGdbPacket("OK")))
      .ExpectWrite("+")
      .ExpectWrite("+");
  absl::Status written = client_->WriteMemory(0x1000, data);
  EXPECT_TRUE(written.ok()) << written;
  EXPECT_TRUE(absl::IsInvalidArgument(client_->WriteMemoryInOnePacket(0x1000, data)));
  std::vector<uint8_t> site = {0xe8, 0x01, 0x02, 0x03, 0x04};
  fake_->ExpectCommand("M80001000,5:e801020304", "OK");
  EXPECT_TRUE(client_->WriteMemoryInOnePacket(0x80001000, site).ok());
  ExpectScriptDone();
}

// Sites written in one round trip: every M packet goes out before the first answer, and each
// answer (in order) is its write's status. A refusal fails only its own write.
TEST_F(GdbClientTest, PipelinedWritesSendEveryPacketFirstAndTakeTheAnswersInOrder) {
  Attach();
  const std::vector<uint8_t> a = {0xe8, 1, 2, 3, 4}, b = {0xe8, 5, 6, 7, 8}, c = {0x90};
  const std::vector<uint8_t> too_big(0x800, 0x90);
  const std::vector<engine::MemoryWrite> writes = {
      {0x80001000, a}, {0x80002000, b}, {0x80003000, too_big}, {0x80004000, c}};
  fake_->ExpectWrite(EncodeGdbPacket("M80001000,5:e801020304"))
      .ExpectWrite(EncodeGdbPacket("M80002000,5:e805060708"))
      .ExpectWrite(EncodeGdbPacket("M80004000,1:90"))
      .Send(absl::StrCat("+", FrameGdbPacket("OK"), "+", FrameGdbPacket("E0e")))
      .ExpectWrite("+")
      .ExpectWrite("+")
      .Send(absl::StrCat("+", FrameGdbPacket("OK")))
      .ExpectWrite("+");
  absl::StatusOr<std::vector<absl::Status>> results = client_->WriteMemoryPipelined(writes);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), 4u);
  EXPECT_TRUE((*results)[0].ok()) << (*results)[0];
  EXPECT_FALSE((*results)[1].ok());
  EXPECT_THAT(std::string((*results)[1].message()), HasSubstr("M80002000,5"));
  EXPECT_TRUE(absl::IsInvalidArgument((*results)[2])) << "not split, not sent";
  EXPECT_TRUE((*results)[3].ok()) << (*results)[3];
  EXPECT_TRUE(client_->broken_reason().ok());
  ExpectScriptDone();
}

// A stop among the answers: the VM ran and took a packet's first byte as an interrupt, so which
// write went unanswered is unknown. The client breaks rather than pair answers wrongly.
TEST_F(GdbClientTest, PipelinedWritesBreakTheClientWhenAStopComesAmongTheAnswers) {
  Attach();
  const std::vector<uint8_t> a = {0xe8, 1, 2, 3, 4}, b = {0xe8, 5, 6, 7, 8};
  const std::vector<engine::MemoryWrite> writes = {{0x80001000, a}, {0x80002000, b}};
  fake_->ExpectWrite(EncodeGdbPacket("M80001000,5:e801020304"))
      .ExpectWrite(EncodeGdbPacket("M80002000,5:e805060708"))
      .Send(FrameGdbPacket("T02thread:p01.01;"))
      .ExpectWrite("+");
  absl::StatusOr<std::vector<absl::Status>> results = client_->WriteMemoryPipelined(writes);
  ASSERT_FALSE(results.ok());
  EXPECT_THAT(std::string(results.status().message()), HasSubstr("out of step"));
  EXPECT_FALSE(client_->broken_reason().ok());
  EXPECT_FALSE(client_->ReadRegisters().ok()) << "a broken client refuses every later command";
  ExpectScriptDone();
}

// The enable's breakpoints in one round trip; a refusal fails only its own.
TEST_F(GdbClientTest, PipelinedBreakpointsAnswerEachInOrder) {
  Attach();
  fake_->ExpectWrite(EncodeGdbPacket("Z0,80501234,1"))
      .ExpectWrite(EncodeGdbPacket("Z0,80505678,1"))
      .ExpectWrite(EncodeGdbPacket("Z0,8050abcd,1"))
      .Send(absl::StrCat("+", FrameGdbPacket("OK"), "+", FrameGdbPacket("E22"), "+",
                         FrameGdbPacket("OK")))
      .ExpectWrite("+")
      .ExpectWrite("+")
      .ExpectWrite("+");
  const std::vector<uint64_t> addresses = {0x80501234, 0x80505678, 0x8050abcd};
  absl::StatusOr<std::vector<absl::Status>> set = client_->InsertBreakpointsPipelined(addresses);
  ASSERT_TRUE(set.ok()) << set.status();
  ASSERT_EQ(set->size(), 3u);
  EXPECT_TRUE((*set)[0].ok());
  EXPECT_TRUE(absl::IsInvalidArgument((*set)[1])) << (*set)[1];
  EXPECT_THAT(std::string((*set)[1].message()), HasSubstr("Z0,80505678,1"));
  EXPECT_TRUE((*set)[2].ok());
  ExpectScriptDone();
}

TEST_F(GdbClientTest, BreakpointsAndWatchpoints) {
  Attach();
  fake_->ExpectCommand("Z0,80501234,1", "OK")
      .ExpectCommand("Z0,80505678,1", "OK")
      .ExpectCommand("Z4,fffe0080,4", "OK")
      .ExpectCommand("Z2,fffe0080,4", "OK")
      .ExpectCommand("z3,fffe0080,4", "E22")
      .ExpectCommand("z0,80501234,1", "");
  EXPECT_TRUE(client_->InsertBreakpoint(0x80501234).ok());
  EXPECT_TRUE(client_->InsertBreakpoint(0x80505678).ok());
  EXPECT_TRUE(client_->InsertWatchpoint(0xfffe0080, 4, engine::WatchKind::kAccess).ok());
  EXPECT_TRUE(client_->InsertWatchpoint(0xfffe0080, 4, engine::WatchKind::kWrite).ok());
  EXPECT_TRUE(
      absl::IsInvalidArgument(client_->RemoveWatchpoint(0xfffe0080, 4, engine::WatchKind::kRead)));
  EXPECT_TRUE(absl::IsUnimplemented(client_->RemoveBreakpoint(0x80501234)));
  ExpectScriptDone();
}

TEST_F(GdbClientTest, ContinueWaitInterruptAndDetach) {
  Attach();
  fake_->ExpectWrite(EncodeGdbPacket("c")).Send("+");
  ASSERT_TRUE(client_->Continue().ok());
  EXPECT_TRUE(client_->running());
  // Commands are refused while the VM runs (their bytes would interrupt it).
  EXPECT_TRUE(absl::IsFailedPrecondition(client_->InsertBreakpoint(0x1000)));
  // Nothing yet: the wait times out and the client stays usable.
  absl::StatusOr<std::optional<GdbStopReply>> none = client_->WaitForStop(absl::Milliseconds(1));
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());
  fake_->Send(EncodeGdbPacket("T05thread:p01.02;awatch:fffe0080;")).ExpectWrite("+");
  absl::StatusOr<std::optional<GdbStopReply>> stop = client_->WaitForStop(absl::Seconds(1));
  ASSERT_TRUE(stop.ok() && stop->has_value()) << stop.status();
  EXPECT_EQ((*stop)->watch, engine::WatchKind::kAccess);
  EXPECT_EQ((*stop)->thread->vcpu_index(), 1);
  EXPECT_FALSE(client_->running());

  fake_->ExpectWrite(EncodeGdbPacket("c")).Send("+").ExpectWrite("\x03");
  fake_->Send(EncodeGdbPacket("T02thread:p01.01;")).ExpectWrite("+");
  ASSERT_TRUE(client_->Continue().ok());
  ASSERT_TRUE(client_->Interrupt().ok());
  stop = client_->WaitForStop(absl::Seconds(1));
  ASSERT_TRUE(stop.ok() && stop->has_value()) << stop.status();
  EXPECT_EQ((*stop)->signal, kGdbSignalInt);

  fake_->ExpectCommand("D;1", "OK");
  EXPECT_TRUE(client_->Detach().ok());
  EXPECT_TRUE(fake_->closed_by_client());
  ExpectScriptDone();
}

// vCont;s steps one vCPU; QEMU answers only with the stop, here carrying the watchpoint hit
// that vCPU had pending (QEMU reports it at this stop and clears it).
TEST_F(GdbClientTest, StepThreadReturnsTheStepsStopWithAWatchpointHit) {
  Attach();
  fake_->ExpectCommand("Hcp01.02", "OK")
      .ExpectWrite(EncodeGdbPacket("vCont;s:p01.02"))
      .Send("+")
      .Send(EncodeGdbPacket("T05thread:p01.02;watch:fffe0080;"))
      .ExpectWrite("+");
  absl::StatusOr<GdbStepResult> step = client_->StepThread({1, 2}, absl::Seconds(1));
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_TRUE(step->completed);
  EXPECT_FALSE(step->interrupted);
  EXPECT_EQ(step->stop.signal, kGdbSignalTrap);
  EXPECT_EQ(step->stop.thread->vcpu_index(), 1);
  EXPECT_EQ(step->stop.watch, engine::WatchKind::kWrite);
  EXPECT_EQ(step->stop.watch_address, 0xfffe0080u);
  EXPECT_FALSE(client_->running());
  EXPECT_EQ(client_->pending_stops(), 0u);
  // The VM is stopped again: commands work.
  fake_->ExpectCommand("p8", Le32(0x80501236));
  EXPECT_EQ(*client_->ReadRegister("eip"), 0x80501236u);
  ExpectScriptDone();
}

// A vCPU stepping into `hlt` with interrupts masked never finishes: after the timeout the client
// interrupts and returns the interrupt's stop as an incomplete step.
TEST_F(GdbClientTest, StepThatDoesNotFinishIsInterrupted) {
  Attach();
  fake_->ExpectCommand("Hcp01.01", "OK")
      .ExpectWrite(EncodeGdbPacket("vCont;s:p01.01"))
      .Send("+")
      .Stall()
      .ExpectWrite("\x03")
      .Send(EncodeGdbPacket("T02thread:p01.01;"))
      .ExpectWrite("+");
  absl::StatusOr<GdbStepResult> step = client_->StepThread({1, 1}, absl::Milliseconds(1));
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_FALSE(step->completed);
  EXPECT_TRUE(step->interrupted);
  EXPECT_EQ(step->stop.signal, kGdbSignalInt);
  EXPECT_FALSE(client_->running());
  EXPECT_TRUE(client_->broken_reason().ok());
  ExpectScriptDone();
}

// vCont;c runs one vCPU alone until its breakpoint (leaving cr8 wakes a halted CPU this way).
TEST_F(GdbClientTest, ContinueThreadRunsThatThreadAloneUntilItsStop) {
  Attach();
  fake_->ExpectCommand("Hcp01.02", "OK")
      .ExpectWrite(EncodeGdbPacket("vCont;c:p01.02"))
      .Send("+")
      .Send(EncodeGdbPacket("T05thread:p01.02;swbreak:;"))
      .ExpectWrite("+");
  absl::StatusOr<GdbStepResult> run = client_->ContinueThread({1, 2}, absl::Seconds(1));
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_TRUE(run->completed);
  EXPECT_FALSE(run->interrupted);
  EXPECT_EQ(run->stop.thread->vcpu_index(), 1);
  EXPECT_FALSE(client_->running());
  ExpectScriptDone();
}

// One that meets no stop in time is interrupted, as a step is.
TEST_F(GdbClientTest, ContinueThreadThatMeetsNoStopIsInterrupted) {
  Attach();
  fake_->ExpectCommand("Hcp01.01", "OK")
      .ExpectWrite(EncodeGdbPacket("vCont;c:p01.01"))
      .Send("+")
      .Stall()
      .ExpectWrite("\x03")
      .Send(EncodeGdbPacket("T02thread:p01.01;"))
      .ExpectWrite("+");
  absl::StatusOr<GdbStepResult> run = client_->ContinueThread({1, 1}, absl::Milliseconds(1));
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_FALSE(run->completed);
  EXPECT_TRUE(run->interrupted);
  EXPECT_FALSE(client_->running());
  ExpectScriptDone();
}

TEST_F(GdbClientTest, StepThatNotEvenTheInterruptStopsIsDeadlineExceeded) {
  Attach();
  fake_->ExpectCommand("Hcp01.01", "OK")
      .ExpectWrite(EncodeGdbPacket("vCont;s:p01.01"))
      .Send("+")
      .Stall()
      .ExpectWrite("\x03")
      .Stall();
  absl::StatusOr<GdbStepResult> step = client_->StepThread({1, 1}, absl::Milliseconds(1));
  EXPECT_TRUE(absl::IsDeadlineExceeded(step.status())) << step.status();
  // Not broken: the VM may still run, and its stop may still come.
  EXPECT_TRUE(client_->running());
  EXPECT_TRUE(client_->broken_reason().ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(client_->ReadRegister("eip").status()));
  fake_->Send(EncodeGdbPacket("T02thread:p01.01;")).ExpectWrite("+");
  absl::StatusOr<std::optional<GdbStopReply>> stop = client_->WaitForStop(absl::Seconds(1));
  ASSERT_TRUE(stop.ok() && stop->has_value()) << stop.status();
  EXPECT_FALSE(client_->running());
  ExpectScriptDone();
}

TEST_F(GdbClientTest, StepIsRefusedWhileRunningOrWithAQueuedStop) {
  Attach();
  fake_->ExpectWrite(EncodeGdbPacket("c")).Send("+");
  ASSERT_TRUE(client_->Continue().ok());
  // No byte may be sent: it would interrupt the VM.
  EXPECT_TRUE(absl::IsFailedPrecondition(client_->StepThread({1, 1}, absl::Seconds(1)).status()));
  fake_->Send(EncodeGdbPacket("T05thread:p01.02;")).ExpectWrite("+");
  absl::StatusOr<std::optional<GdbStopReply>> stop = client_->WaitForStop(absl::Seconds(1));
  ASSERT_TRUE(stop.ok() && stop->has_value()) << stop.status();
  // A stop that arrived while a command waited must be taken first.
  fake_->ExpectWrite(EncodeGdbPacket("m1000,4"))
      .Send(absl::StrCat("+", EncodeGdbPacket("T05thread:p01.01;")))
      .ExpectWrite("+")
      .Send(EncodeGdbPacket("01020304"))
      .ExpectWrite("+");
  std::vector<uint8_t> out(4);
  ASSERT_TRUE(client_->ReadMemory(0x1000, absl::MakeSpan(out)).ok());
  EXPECT_TRUE(absl::IsFailedPrecondition(client_->StepThread({1, 1}, absl::Seconds(1)).status()));
  EXPECT_EQ(client_->pending_stops(), 1u);
  ExpectScriptDone();
}

TEST_F(GdbClientTest, RefusedStepLeavesTheVmStoppedAndTheClientUsable) {
  Attach();
  fake_->ExpectCommand("Hcp01.05", "OK").ExpectCommand("vCont;s:p01.05", "E22");
  absl::StatusOr<GdbStepResult> step = client_->StepThread({1, 5}, absl::Seconds(1));
  EXPECT_TRUE(absl::IsInvalidArgument(step.status())) << step.status();
  EXPECT_THAT(step.status().message(), HasSubstr("vCont;s:p01.05"));
  EXPECT_FALSE(client_->running());
  fake_->ExpectCommand("Hgp01.01", "OK");
  EXPECT_TRUE(client_->SelectThread({1, 1}).ok());
  ExpectScriptDone();
}

// The VM ran behind our back and a vCPU hit a breakpoint before the stub took the vCont: that
// stop is not the step's and stays queued; the step's stop is the first after the ack.
TEST_F(GdbClientTest, StopBeforeTheStepsAckStaysQueued) {
  Attach();
  fake_->ExpectCommand("Hcp01.02", "OK")
      .ExpectWrite(EncodeGdbPacket("vCont;s:p01.02"))
      .Send(EncodeGdbPacket("T05thread:p01.01;swbreak:;"))
      .ExpectWrite("+")
      .Send("+")
      .Send(EncodeGdbPacket("T05thread:p01.02;"))
      .ExpectWrite("+");
  absl::StatusOr<GdbStepResult> step = client_->StepThread({1, 2}, absl::Seconds(1));
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_TRUE(step->completed);
  EXPECT_EQ(step->stop.thread->vcpu_index(), 1);
  EXPECT_FALSE(client_->running());
  ASSERT_EQ(client_->pending_stops(), 1u);
  absl::StatusOr<std::optional<GdbStopReply>> stop = client_->WaitForStop(absl::ZeroDuration());
  ASSERT_TRUE(stop.ok() && stop->has_value());
  EXPECT_EQ((*stop)->thread->vcpu_index(), 0);
  EXPECT_TRUE((*stop)->software_breakpoint);
  ExpectScriptDone();
}

TEST_F(GdbClientTest, StopArrivingInsteadOfAReplyIsQueued) {
  Attach();
  // The stub acks, then a stop (e.g. libvirt resumed the VM and it hit a watchpoint) arrives
  // before the answer.
  fake_->ExpectWrite(EncodeGdbPacket("m1000,4"))
      .Send(absl::StrCat("+", EncodeGdbPacket("T05thread:p01.01;watch:fffe0080;")))
      .ExpectWrite("+")
      .Send(EncodeGdbPacket("01020304"))
      .ExpectWrite("+");
  std::vector<uint8_t> out(4);
  ASSERT_TRUE(client_->ReadMemory(0x1000, absl::MakeSpan(out)).ok());
  EXPECT_EQ(out[3], 4);
  EXPECT_EQ(client_->pending_stops(), 1u);
  // Continuing would hide the stop.
  EXPECT_TRUE(absl::IsFailedPrecondition(client_->Continue()));
  absl::StatusOr<std::optional<GdbStopReply>> stop = client_->WaitForStop(absl::ZeroDuration());
  ASSERT_TRUE(stop.ok() && stop->has_value());
  EXPECT_EQ((*stop)->watch, engine::WatchKind::kWrite);
  ExpectScriptDone();
}

TEST_F(GdbClientTest, PacketEatenAsInterruptIsSentAgain) {
  Attach();
  // The VM was running (resumed behind our back): `$` interrupted it, the rest was ignored, no
  // ack came, only a stop. The client resends once the ack is overdue.
  fake_->ExpectWrite(EncodeGdbPacket("g"))
      .Send(EncodeGdbPacket("T02thread:p01.01;"))
      .ExpectWrite("+")
      .Stall()
      .ExpectCommand("g", GReply());
  absl::StatusOr<engine::VcpuRegisters> regs = client_->ReadRegisters();
  ASSERT_TRUE(regs.ok()) << regs.status();
  EXPECT_EQ(client_->pending_stops(), 1u);
  ExpectScriptDone();
}

TEST_F(GdbClientTest, BadChecksumIsNackedAndRetried) {
  Attach();
  fake_->ExpectWrite(EncodeGdbPacket("Hgp01.01"))
      .Send("+$OK#00")
      .ExpectWrite("-")
      .Send(EncodeGdbPacket("OK"))
      .ExpectWrite("+");
  EXPECT_TRUE(client_->SelectThread({1, 1}).ok());
  ExpectScriptDone();
}

// QEMU 7.2 clears a previous client's traps on `?` only for the continue thread: each vCPU is
// made the continue thread and asked in turn, the first vCPU last so that it stays selected.
TEST_F(GdbClientTest, ClearingTrapsAsksEveryThreadAsTheContinueThread) {
  Attach();
  fake_->ExpectCommand("Hcp01.03", "OK")
      .ExpectCommand("?", "T05thread:p01.03;")
      .ExpectCommand("Hcp01.02", "OK")
      .ExpectCommand("?", "T05thread:p01.02;")
      .ExpectCommand("Hcp01.01", "OK")
      .ExpectCommand("?", "T05thread:p01.01;");
  EXPECT_TRUE(client_->ClearTrapsOfEveryThread({{1, 1}, {1, 2}, {1, 3}}).ok());
  ExpectScriptDone();
}

TEST_F(GdbClientTest, ClearingTrapsStopsAtTheFirstRefusal) {
  Attach();
  fake_->ExpectCommand("Hcp01.02", "E22");
  absl::Status status = client_->ClearTrapsOfEveryThread({{1, 1}, {1, 2}});
  EXPECT_FALSE(status.ok());
  ExpectScriptDone();
}

TEST_F(GdbClientTest, EndlessBadChecksumsAreBounded) {
  Attach();
  fake_->ExpectWrite(EncodeGdbPacket("Hgp01.01")).Send("+");
  for (int i = 0; i < 3; ++i) fake_->Send("$OK#00").ExpectWrite("-");
  fake_->Send("$OK#00");
  absl::Status status = client_->SelectThread({1, 1});
  EXPECT_TRUE(absl::IsDataLoss(status)) << status;
  EXPECT_FALSE(client_->broken_reason().ok());
  EXPECT_FALSE(client_->SelectThread({1, 1}).ok());
}

TEST_F(GdbClientTest, NackedPacketIsRetransmittedBounded) {
  Attach();
  const std::string packet = EncodeGdbPacket("Hgp01.01");
  fake_->ExpectWrite(packet).Send("-").ExpectWrite(packet).Send(
      absl::StrCat("+", EncodeGdbPacket("OK")));
  fake_->ExpectWrite("+");
  EXPECT_TRUE(client_->SelectThread({1, 1}).ok());
  for (int i = 0; i < 4; ++i) fake_->ExpectWrite(packet).Send("-");
  EXPECT_TRUE(absl::IsDataLoss(client_->SelectThread({1, 1})));
  ExpectScriptDone();
}

TEST_F(GdbClientTest, SilentPeerTimesOutAndBreaksTheSession) {
  Attach();
  fake_->ExpectWrite(EncodeGdbPacket("g")).Send("+").Stall();
  absl::Status status = client_->ReadRegisters().status();
  EXPECT_TRUE(absl::IsDeadlineExceeded(status)) << status;
  EXPECT_THAT(status.message(), HasSubstr("`g`"));
  // A late answer could be mistaken for the next one: the session refuses further commands.
  EXPECT_TRUE(absl::IsFailedPrecondition(client_->ReadRegisters().status()));
}

TEST_F(GdbClientTest, TruncatedReplyThenSilenceTimesOut) {
  Attach();
  fake_->ExpectWrite(EncodeGdbPacket("g")).Send("+$0011");
  EXPECT_TRUE(absl::IsDeadlineExceeded(client_->ReadRegisters().status()));
}

TEST_F(GdbClientTest, PeerCloseIsUnavailable) {
  Attach();
  fake_->ExpectWrite(EncodeGdbPacket("g")).ClosePeer();
  EXPECT_TRUE(absl::IsUnavailable(client_->ReadRegisters().status()));
  EXPECT_TRUE(absl::IsUnavailable(client_->ReadRegisters().status()));
}

TEST_F(GdbClientTest, OversizedReplyFailsTheCommandOnly) {
  auto stream = std::make_unique<FakeByteStream>();
  fake_ = stream.get();
  GdbClientOptions options;
  options.max_payload_bytes = 0x400;
  client_ = std::make_unique<GdbClient>(std::move(stream), options);
  Attach();
  fake_->ExpectCommand("m1000,800", std::string(0x1000, 'a'));
  std::vector<uint8_t> out(0x800);
  EXPECT_TRUE(absl::IsResourceExhausted(client_->ReadMemory(0x1000, absl::MakeSpan(out))));
  fake_->ExpectCommand("Hgp01.01", "OK");
  EXPECT_TRUE(client_->SelectThread({1, 1}).ok());
  ExpectScriptDone();
}

TEST_F(GdbClientTest, MismatchedRepliesAreErrors) {
  Attach();
  fake_->ExpectCommand("m1000,4", "OK")
      .ExpectCommand("m1000,4", "0102030405")
      .ExpectCommand("Hgp01.01", "0102")
      .ExpectCommand("qfThreadInfo", "garbage");
  std::vector<uint8_t> out(4);
  EXPECT_FALSE(client_->ReadMemory(0x1000, absl::MakeSpan(out)).ok());
  EXPECT_FALSE(client_->ReadMemory(0x1000, absl::MakeSpan(out)).ok());
  EXPECT_TRUE(absl::IsDataLoss(client_->SelectThread({1, 1})));
  EXPECT_TRUE(absl::IsDataLoss(client_->ListThreads().status()));
  ExpectScriptDone();
}

TEST_F(GdbClientTest, ExitPacketEndsTheSession) {
  Attach();
  fake_->ExpectWrite(EncodeGdbPacket("c")).Send("+");
  ASSERT_TRUE(client_->Continue().ok());
  fake_->Send(EncodeGdbPacket("W00")).ExpectWrite("+");
  absl::StatusOr<std::optional<GdbStopReply>> stop = client_->WaitForStop(absl::Seconds(1));
  ASSERT_TRUE(stop.ok() && stop->has_value());
  EXPECT_TRUE((*stop)->process_gone());
  EXPECT_TRUE(absl::IsUnavailable(client_->ReadRegisters().status()));
}

TEST_F(GdbClientTest, EveryByteSplitOfTheHandshakeWorks) {
  fake_->set_max_read_chunk(1);
  ScriptHandshake(true);
  EXPECT_TRUE(client_->Attach().ok());
  ExpectScriptDone();
}

TEST_F(GdbClientTest, StubWithoutTargetDescriptionIsRefused) {
  fake_->ExpectCommand("qSupported:multiprocess+;swbreak+;hwbreak+;vContSupported+",
                       "PacketSize=1000");
  EXPECT_TRUE(absl::IsFailedPrecondition(client_->Attach()));
}

}  // namespace
}  // namespace tprd::backend

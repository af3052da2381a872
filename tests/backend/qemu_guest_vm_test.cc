// QemuGuestVm's own logic over a scripted gdbstub (FakeByteStream, handed in through
// QemuGuestVmOptions::open_gdb_stream), a fake process_vm_readv path (FakeLiveMemoryReader,
// through open_live_memory) and FakeLibvirtConnection: what Attach does before the VM is usable,
// which stops it keeps for later, which path serves a physical read, what it refuses, and what
// Detach leaves behind. No QEMU: tests/integration covers the real gdbstub.
#include "kvm-backend/qemu_guest_vm.h"

#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvm-backend/core/gdb_packet.h"
#include "tests/fakes/fake_byte_stream.h"
#include "tests/fakes/fake_libvirt_connection.h"
#include "tests/fakes/fake_live_memory_reader.h"
#include "tests/fakes/qemu_gdbstub_script.h"

namespace tprd::backend {
namespace {

using engine::StopEvent;
using ::testing::Contains;
using ::testing::IsEmpty;
using ::testing::Not;

constexpr char kUuid[] = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0";
constexpr char kStopGdbServer[] = "hmp: gdbserver none";

// 256 bytes of guest RAM whose values are their offsets.
std::vector<uint8_t> CountingBytes() {
  std::vector<uint8_t> bytes(0x100);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i);
  return bytes;
}

// What the VM owns in place of the gdbstub socket: it forwards to the test's script, which so
// outlives the VM's GdbClient (Detach destroys that) and can be checked afterwards.
class ForwardingByteStream : public ByteStream {
 public:
  explicit ForwardingByteStream(FakeByteStream* script) : script_(script) {}
  absl::Status Write(std::string_view data, absl::Time deadline) override {
    return script_->Write(data, deadline);
  }
  absl::StatusOr<std::string> Read(size_t max_bytes, absl::Time deadline) override {
    return script_->Read(max_bytes, deadline);
  }
  void Close() override { script_->Close(); }

 private:
  FakeByteStream* script_;
};

class QemuGuestVmTest : public ::testing::Test {
 protected:
  QemuGuestVmTest() {
    libvirt_.AddDomain({"xp", kUuid, 3, LibvirtDomainState::kRunning, 0});
    libvirt_.SetMonitorReply("gdbserver none", "Disabled gdbserver");
  }

  QemuGuestVmOptions Options() {
    QemuGuestVmOptions options;
    options.open_gdb_stream = [this](QemuMonitor&) -> absl::StatusOr<std::unique_ptr<ByteStream>> {
      ++streams_opened_;
      return std::make_unique<ForwardingByteStream>(&stub_);
    };
    // This fake libvirt reports no pauses: a resume reads its state at once. The wait for
    // libvirt's report is tested on its own (ResumeWaitsForLibvirtToReportItsStop...).
    options.libvirt_catch_up = absl::ZeroDuration();
    return options;
  }

  // Options() with a process_vm_readv path to this QEMU: guest physical [first_gpa, first_gpa +
  // bytes.size()) is readable without the gdbstub.
  QemuGuestVmOptions OptionsWithLiveMemory(uint64_t first_gpa, std::vector<uint8_t> bytes) {
    QemuGuestVmOptions options = Options();
    options.open_live_memory = [this, first_gpa, bytes](LibvirtConnection*, const std::string& uuid)
        -> absl::StatusOr<std::unique_ptr<LiveMemoryReader>> {
      live_memory_opened_.push_back(uuid);
      return std::make_unique<FakeLiveMemoryReader>(first_gpa, bytes, absl::OkStatus(),
                                                    &live_reads_);
    };
    return options;
  }

  // Attach over a stub with two vCPUs, each asked for the old traps' removal (`Hc` + `?`).
  void Attach(QemuGuestVmOptions options) {
    ScriptQemuGdbHandshake(stub_, /*vm_was_running=*/false);
    stub_.ExpectCommand("qfThreadInfo", "mp01.01,p01.02")
        .ExpectCommand("qsThreadInfo", "l")
        .ExpectCommand("Hcp01.02", "OK")
        .ExpectCommand("?", "T05thread:p01.02;")
        .ExpectCommand("Hcp01.01", "OK")
        .ExpectCommand("?", "T05thread:p01.01;");
    absl::StatusOr<std::unique_ptr<QemuGuestVm>> vm =
        QemuGuestVm::Attach(&libvirt_, kUuid, std::move(options));
    ASSERT_TRUE(vm.ok()) << vm.status();
    vm_ = *std::move(vm);
    ExpectScriptDone();
  }
  void Attach() { Attach(Options()); }

  // Resume, then a Stop() whose interrupt is answered by `stop` (from vCPU `vcpu`, whose eip is
  // then read back at `pc`).
  void ResumeThenStopWith(const std::string& stop, int vcpu, uint32_t pc) {
    stub_.ExpectWrite(EncodeGdbPacket("c")).Send("+");
    ASSERT_TRUE(vm_->Resume().ok());
    const std::string thread = vcpu == 0 ? "p01.01" : "p01.02";
    stub_.ExpectWrite("\x03")
        .Send(EncodeGdbPacket(stop))
        .ExpectWrite("+")
        .ExpectCommand(absl::StrCat("Hg", thread), "OK")
        .ExpectCommand("p8", Le32(pc));
    absl::Status stopped = vm_->Stop();
    ASSERT_TRUE(stopped.ok()) << stopped;
    ExpectScriptDone();
  }

  // libvirt reports an event of `kind` for the domain.
  void LibvirtReports(LibvirtDomainEvent::Kind kind) {
    LibvirtDomainEvent event;
    event.kind = kind;
    event.uuid = kUuid;
    event.name = "xp";
    libvirt_.EmitEvent(event);
  }

  // libvirt pauses the domain for `reason` and reports it (its SUSPENDED event).
  void LibvirtReportsPause(int reason) {
    libvirt_.SetState(kUuid, LibvirtDomainState::kPaused, reason);
    LibvirtReports(LibvirtDomainEvent::Kind::kSuspended);
  }

  // WaitForStop has no kept stop to return and asks the stub, which is silent.
  void ExpectNoStopKept() {
    absl::StatusOr<std::optional<StopEvent>> next = vm_->WaitForStop(absl::ZeroDuration());
    ASSERT_TRUE(next.ok()) << next.status();
    EXPECT_FALSE(next->has_value());
  }

  void ExpectScriptDone() {
    EXPECT_THAT(stub_.failures(), IsEmpty());
    EXPECT_TRUE(stub_.ScriptDone());
  }

  // Declared before vm_, which must go first (its destructor detaches through both).
  FakeLibvirtConnection libvirt_;
  FakeByteStream stub_;
  int streams_opened_ = 0;
  std::vector<std::string> live_memory_opened_;
  std::vector<LiveMemoryRead> live_reads_;
  std::unique_ptr<QemuGuestVm> vm_;
};

TEST_F(QemuGuestVmTest, AttachClearsOldTrapsOnEveryVcpuAndLeavesTheVmStopped) {
  Attach();
  absl::StatusOr<int> vcpus = vm_->VcpuCount();
  ASSERT_TRUE(vcpus.ok()) << vcpus.status();
  EXPECT_EQ(*vcpus, 2);
  EXPECT_EQ(streams_opened_, 1);
  // No PID from libvirt: no process_vm_readv path, reads of a running guest are refused.
  std::vector<uint8_t> byte(1);
  EXPECT_TRUE(absl::IsUnimplemented(vm_->ReadPhysicalLive(0x1000, absl::MakeSpan(byte))));
}

TEST_F(QemuGuestVmTest, AttachRefusesADomainThatDoesNotRunWithoutStartingAGdbstub) {
  libvirt_.SetState(kUuid, LibvirtDomainState::kShutoff, 0);
  absl::StatusOr<std::unique_ptr<QemuGuestVm>> vm =
      QemuGuestVm::Attach(&libvirt_, kUuid, Options());
  EXPECT_TRUE(absl::IsFailedPrecondition(vm.status())) << vm.status();
  EXPECT_EQ(streams_opened_, 0);
  EXPECT_THAT(libvirt_.monitor_log(), IsEmpty());
}

TEST_F(QemuGuestVmTest, AttachThatFailsAfterStartingTheGdbstubStopsIt) {
  stub_.ClosePeer();
  absl::StatusOr<std::unique_ptr<QemuGuestVm>> vm =
      QemuGuestVm::Attach(&libvirt_, kUuid, Options());
  EXPECT_FALSE(vm.ok());
  EXPECT_EQ(streams_opened_, 1);
  EXPECT_THAT(libvirt_.monitor_log(), Contains(kStopGdbServer));
}

// A gdbstub that could not be opened (another tprd's channel is live: ALREADY_EXISTS) is not
// ours to stop: `gdbserver none` would take the other tprd's session away (seen: its next packet
// failed with "broken pipe").
TEST_F(QemuGuestVmTest, AttachThatCannotOpenTheGdbstubStopsNoGdbstub) {
  QemuGuestVmOptions options = Options();
  options.open_gdb_stream = [](QemuMonitor&) -> absl::StatusOr<std::unique_ptr<ByteStream>> {
    return absl::AlreadyExistsError("another tprd (pid 4242) holds its gdbstub");
  };
  absl::StatusOr<std::unique_ptr<QemuGuestVm>> vm =
      QemuGuestVm::Attach(&libvirt_, kUuid, std::move(options));
  EXPECT_EQ(vm.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(libvirt_.monitor_log(), Not(Contains(kStopGdbServer)));
}

TEST_F(QemuGuestVmTest, StopKeepsARacedWatchpointHitThatTakeRacedWatchpointStopReturnsOnce) {
  Attach();
  ResumeThenStopWith("T05thread:p01.02;watch:fffe0080;", 1, 0x80501236);
  std::optional<StopEvent> raced = vm_->TakeRacedWatchpointStop();
  ASSERT_TRUE(raced.has_value());
  EXPECT_EQ(raced->kind, StopEvent::Kind::kWatchpoint);
  EXPECT_EQ(raced->vcpu, 1);
  EXPECT_EQ(raced->pc, 0x80501236u);
  EXPECT_EQ(raced->data_address, 0xfffe0080u);
  EXPECT_EQ(raced->watch, engine::WatchKind::kWrite);
  EXPECT_FALSE(vm_->TakeRacedWatchpointStop().has_value());
  ExpectNoStopKept();
}

TEST_F(QemuGuestVmTest, StopKeepsARacedBreakpointForWaitForStopNotForTheWatchpointTaker) {
  Attach();
  ResumeThenStopWith("T05thread:p01.01;swbreak:;", 0, 0x80401000);
  EXPECT_FALSE(vm_->TakeRacedWatchpointStop().has_value());
  absl::StatusOr<std::optional<StopEvent>> raced = vm_->WaitForStop(absl::ZeroDuration());
  ASSERT_TRUE(raced.ok() && raced->has_value()) << raced.status();
  EXPECT_EQ((*raced)->kind, StopEvent::Kind::kBreakpoint);
  EXPECT_EQ((*raced)->vcpu, 0);
  EXPECT_EQ((*raced)->pc, 0x80401000u);
  ExpectNoStopKept();
}

TEST_F(QemuGuestVmTest, TakeRacedTrapStopTakesARacedBreakpointOnceAndStepsWorkAgain) {
  Attach();
  ResumeThenStopWith("T05thread:p01.01;swbreak:;", 0, 0x80401000);
  absl::StatusOr<engine::StepResult> refused = vm_->StepVcpu(0, absl::Seconds(1));
  EXPECT_TRUE(absl::IsFailedPrecondition(refused.status())) << refused.status();
  std::optional<StopEvent> raced = vm_->TakeRacedTrapStop();
  ASSERT_TRUE(raced.has_value());
  EXPECT_EQ(raced->kind, StopEvent::Kind::kBreakpoint);
  EXPECT_EQ(raced->vcpu, 0);
  EXPECT_EQ(raced->pc, 0x80401000u);
  EXPECT_FALSE(vm_->TakeRacedTrapStop().has_value());
  ExpectNoStopKept();
}

TEST_F(QemuGuestVmTest, StopEndedByItsOwnInterruptKeepsNothing) {
  Attach();
  ResumeThenStopWith("T02thread:p01.01;", 0, 0x80401000);
  EXPECT_FALSE(vm_->TakeRacedWatchpointStop().has_value());
  ExpectNoStopKept();
}

TEST_F(QemuGuestVmTest, RunningOneVcpuIsRefusedWhileAStopIsPending) {
  Attach();
  ResumeThenStopWith("T05thread:p01.02;swbreak:;", 1, 0x80401000);
  absl::StatusOr<engine::StepResult> step = vm_->StepVcpu(0, absl::Seconds(1));
  EXPECT_TRUE(absl::IsFailedPrecondition(step.status())) << step.status();
  absl::StatusOr<StopEvent> run = vm_->RunVcpuAlone(0, absl::Seconds(1));
  EXPECT_TRUE(absl::IsFailedPrecondition(run.status())) << run.status();
  ExpectScriptDone();  // nothing reached the stub
}

// A step of vCPU 1 (eip then `pc`) answered by `stop`.
void ScriptStepOfVcpu1(FakeByteStream& stub, const std::string& stop, uint32_t pc) {
  stub.ExpectCommand("Hcp01.02", "OK")
      .ExpectWrite(EncodeGdbPacket("vCont;s:p01.02"))
      .Send("+")
      .Send(EncodeGdbPacket(stop))
      .ExpectWrite("+")
      .ExpectCommand("Hgp01.02", "OK")
      .ExpectCommand("p8", Le32(pc));
}

// After a step of vCPU 1 at 0x80501236 that reported a watchpoint hit: eflags 0x246 read, IF
// cleared, a breakpoint at the pc, and vCPU 1 run alone (its stop is each test's own).
void ScriptMaskedRunOfVcpu1AtItsPc(FakeByteStream& stub) {
  stub.ExpectCommand("p9", Le32(0x246))
      .ExpectCommand("P9=46000000", "OK")
      .ExpectCommand("Z0,80501236,1", "OK")
      .ExpectCommand("Hcp01.02", "OK")
      .ExpectWrite(EncodeGdbPacket("vCont;c:p01.02"))
      .Send("+");
}

// The whole of it: stopped there (its eip read as `pc_after`), the breakpoint removed, eflags
// restored and read back.
void ScriptTakingThePendingDebugInterrupt(FakeByteStream& stub, uint32_t pc_after) {
  ScriptMaskedRunOfVcpu1AtItsPc(stub);
  stub.Send(EncodeGdbPacket("T05thread:p01.02;"))
      .ExpectWrite("+")
      .ExpectCommand("Hgp01.02", "OK")
      .ExpectCommand("p8", Le32(pc_after))
      .ExpectCommand("z0,80501236,1", "OK")
      .ExpectCommand("P9=46020000", "OK")
      .ExpectCommand("p9", Le32(0x246));
}

// QEMU 7.2 leaves the debug interrupt of a stepped instruction's watchpoint hit pending; run
// later, the vCPU stops where no trap is (after a detach: for good, in QEMU's "debug" state).
// The step takes it at once: a breakpoint at the vCPU's own pc, that vCPU run alone with
// EFLAGS.IF clear (no device interrupt's handler may run before the access is fixed up), then
// its eflags restored and read back.
TEST_F(QemuGuestVmTest, StepThatReportsAWatchpointHitTakesTheDebugInterruptQemuLeftPending) {
  Attach();
  ScriptStepOfVcpu1(stub_, "T05thread:p01.02;awatch:fffe0080;", 0x80501236);
  ScriptTakingThePendingDebugInterrupt(stub_, 0x80501236);
  absl::StatusOr<engine::StepResult> step = vm_->StepVcpu(1, absl::Seconds(1));
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_TRUE(step->completed);
  EXPECT_TRUE(step->watchpoint_reported);
  EXPECT_EQ(step->pc, 0x80501236u);
  ExpectScriptDone();
  ExpectNoStopKept();
}

TEST_F(QemuGuestVmTest, StepWithoutAWatchpointHitRunsNothingMore) {
  Attach();
  ScriptStepOfVcpu1(stub_, "T05thread:p01.02;", 0x80501238);
  absl::StatusOr<engine::StepResult> step = vm_->StepVcpu(1, absl::Seconds(1));
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_TRUE(step->completed);
  EXPECT_FALSE(step->watchpoint_reported);
  ExpectScriptDone();
}

// The vCPU must not move while its pending interrupt is taken: if it does, that is said.
TEST_F(QemuGuestVmTest, TakingThePendingDebugInterruptRefusesAVcpuThatMoved) {
  Attach();
  ScriptStepOfVcpu1(stub_, "T05thread:p01.02;awatch:fffe0080;", 0x80501236);
  ScriptTakingThePendingDebugInterrupt(stub_, 0x80501240);
  absl::StatusOr<engine::StepResult> step = vm_->StepVcpu(1, absl::Seconds(1));
  EXPECT_TRUE(absl::IsInternal(step.status())) << step.status();
  ExpectScriptDone();
}

// The stub refuses the run: the breakpoint goes and the vCPU's interrupts are unmasked again
// at once, and the error is said.
TEST_F(QemuGuestVmTest, ARefusedRunWhileTakingThePendingInterruptStillRestoresTheVcpu) {
  Attach();
  ScriptStepOfVcpu1(stub_, "T05thread:p01.02;awatch:fffe0080;", 0x80501236);
  ScriptMaskedRunOfVcpu1AtItsPc(stub_);
  stub_.Send(EncodeGdbPacket("E22"))
      .ExpectWrite("+")
      .ExpectCommand("z0,80501236,1", "OK")
      .ExpectCommand("Hgp01.02", "OK")
      .ExpectCommand("P9=46020000", "OK")
      .ExpectCommand("p9", Le32(0x246));
  absl::StatusOr<engine::StepResult> step = vm_->StepVcpu(1, absl::Seconds(1));
  EXPECT_FALSE(step.ok());
  ExpectScriptDone();
  // Nothing is left to put back: Detach removes no breakpoint and writes no eflags.
  stub_.ExpectCommand("D;1", "OK");
  EXPECT_TRUE(vm_->Detach().ok());
  ExpectScriptDone();
}

TEST_F(QemuGuestVmTest, VcpuOutOfRangeIsInvalidArgument) {
  Attach();
  EXPECT_TRUE(absl::IsInvalidArgument(vm_->ReadRegisters(2).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(vm_->ReadRegisters(-1).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(vm_->StepVcpu(2, absl::Seconds(1)).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(vm_->RunVcpuAlone(-1, absl::Seconds(1)).status()));
  ExpectScriptDone();  // nothing reached the stub
}

TEST_F(QemuGuestVmTest, DetachRemovesTheTrapsItInsertedThenDetachesAndStopsTheGdbstub) {
  Attach();
  stub_.ExpectCommand("Z0,80401000,1", "OK")
      .ExpectCommand("Z0,80402000,1", "OK")
      .ExpectCommand("Z2,fffe0080,4", "OK")
      .ExpectCommand("z0,80402000,1", "OK");
  ASSERT_TRUE(vm_->SetBreakpoint(0x80401000).ok());
  ASSERT_TRUE(vm_->SetBreakpoint(0x80402000).ok());
  ASSERT_TRUE(vm_->SetWatchpoint(0xfffe0080, 4, engine::WatchKind::kWrite).ok());
  ASSERT_TRUE(vm_->RemoveBreakpoint(0x80402000).ok());
  ExpectScriptDone();

  // The removed breakpoint is not removed twice; `D;1` lets the VM run.
  stub_.ExpectCommand("z0,80401000,1", "OK")
      .ExpectCommand("z2,fffe0080,4", "OK")
      .ExpectCommand("D;1", "OK");
  absl::Status detached = vm_->Detach();
  EXPECT_TRUE(detached.ok()) << detached;
  ExpectScriptDone();
  EXPECT_TRUE(stub_.closed_by_client());
  EXPECT_EQ(libvirt_.monitor_log().back(), kStopGdbServer);
  EXPECT_TRUE(vm_->Detach().ok());  // idempotent
  EXPECT_TRUE(absl::IsFailedPrecondition(vm_->VcpuCount().status()));
}

// QEMU 7.2 cannot load a saved state taken in its "debug" run state (where a trap stop leaves
// it): when libvirt paused the domain to save it, the let-go takes QEMU to "paused" first.
TEST_F(QemuGuestVmTest, DetachForASaveTakesQemuOutOfItsDebugStateWithoutResumingIt) {
  Attach();
  ResumeThenStopWith("T05thread:p01.01;swbreak:;", 0, 0x80401000);
  LibvirtReportsPause(kPausedReasonSave);
  stub_.ExpectWrite(EncodeGdbPacket("c"))
      .Send("+")
      .ExpectWrite("\x03")
      .Send(EncodeGdbPacket("T02thread:p01.01;"))
      .ExpectWrite("+");
  absl::Status detached = vm_->Detach();
  EXPECT_TRUE(absl::IsFailedPrecondition(detached)) << detached;
  ExpectScriptDone();
  EXPECT_TRUE(stub_.closed_by_client()) << "no `D;1`: that would resume it";
}

// After an operator's pause the guest does not run at all, not even out of "debug".
TEST_F(QemuGuestVmTest, DetachFromAnOperatorsPauseLeavesQemuAsItIs) {
  Attach();
  ResumeThenStopWith("T05thread:p01.01;swbreak:;", 0, 0x80401000);
  LibvirtReportsPause(kPausedReasonUser);
  absl::Status detached = vm_->Detach();
  EXPECT_TRUE(absl::IsFailedPrecondition(detached)) << detached;
  ExpectScriptDone();
  EXPECT_TRUE(stub_.closed_by_client());
}

// libvirt reports our stop some time after it; an operator's suspend in that gap is recorded as
// the user's pause of this very stop (ciQq, 2026-12-07). The resume waits for libvirt's report
// and then does not undo the operator's pause.
TEST_F(QemuGuestVmTest, ResumeWaitsForLibvirtToReportItsStopAndKeepsASuspendMergedIntoIt) {
  QemuGuestVmOptions options = Options();
  options.libvirt_catch_up = absl::Seconds(30);
  Attach(std::move(options));  // stopped a running guest: libvirt still says running
  absl::Status resumed;
  std::thread resume([&] { resumed = vm_->Resume(); });
  // libvirt handles QEMU's STOP after the operator's `stop` set its pause reason.
  LibvirtReportsPause(kPausedReasonUser);
  resume.join();
  EXPECT_TRUE(absl::IsFailedPrecondition(resumed)) << resumed;
  ExpectScriptDone();  // no `c` was sent
}

// A report libvirt never sends (its event lost in a restart) costs the bound once, then libvirt's
// state decides as before.
TEST_F(QemuGuestVmTest, ResumeGoesOnWithLibvirtsStateWhenItsReportDoesNotCome) {
  QemuGuestVmOptions options = Options();
  options.libvirt_catch_up = absl::Milliseconds(1);
  Attach(std::move(options));
  stub_.ExpectWrite(EncodeGdbPacket("c")).Send("+");
  absl::Status resumed = vm_->Resume();
  EXPECT_TRUE(resumed.ok()) << resumed;
  ExpectScriptDone();
}

// libvirtd restarted under our stop: it never reported the stop, and on reconnecting took
// QEMU's "paused" for the user's pause. That "user" is ours: the guest must not stay stopped.
TEST_F(QemuGuestVmTest, ResumeTakesAUserPauseLibvirtNeverReportedForItsOwnStop) {
  QemuGuestVmOptions options = Options();
  options.libvirt_catch_up = absl::Milliseconds(1);
  Attach(std::move(options));
  libvirt_.SimulateConnectionLost();  // libvirtd restarting under our stop
  libvirt_.SetState(kUuid, LibvirtDomainState::kPaused, kPausedReasonUser);
  libvirt_.SimulateConnectionRestored();
  stub_.ExpectWrite(EncodeGdbPacket("c")).Send("+");
  absl::Status resumed = vm_->Resume();
  EXPECT_TRUE(resumed.ok()) << resumed;
  ExpectScriptDone();
}

// Without a libvirtd restart, an unreported "user" pause is an operator's suspend whose event
// is late (a loaded host): it holds (ciE 2026-12-07: tprd resumed such a suspend).
TEST_F(QemuGuestVmTest, ResumeKeepsAUserPauseWhoseEventIsLateWhenLibvirtdDidNotRestart) {
  QemuGuestVmOptions options = Options();
  options.libvirt_catch_up = absl::Milliseconds(1);
  Attach(std::move(options));
  libvirt_.SetState(kUuid, LibvirtDomainState::kPaused, kPausedReasonUser);
  absl::Status resumed = vm_->Resume();
  EXPECT_TRUE(absl::IsFailedPrecondition(resumed)) << resumed;
  ExpectScriptDone();  // no `c` was sent
}

TEST_F(QemuGuestVmTest, DetachLeavesADomainLibvirtPausedPausedWithoutDetachingThroughTheStub) {
  Attach();
  stub_.ExpectCommand("Z0,80401000,1", "OK");
  ASSERT_TRUE(vm_->SetBreakpoint(0x80401000).ok());
  LibvirtReportsPause(kPausedReasonUser);
  // `D;1` would resume it: the traps go, then the connection just closes.
  stub_.ExpectCommand("z0,80401000,1", "OK");
  // Said, so that a guest left stopped is explained in tprd's log.
  absl::Status detached = vm_->Detach();
  EXPECT_TRUE(absl::IsFailedPrecondition(detached)) << detached;
  EXPECT_THAT(std::string(detached.message()), ::testing::HasSubstr("stays paused"));
  ExpectScriptDone();
  EXPECT_TRUE(stub_.closed_by_client());
  EXPECT_EQ(libvirt_.monitor_log().back(), kStopGdbServer);
}

TEST_F(QemuGuestVmTest, ReadPhysicalInsideTheLiveWindowNeverReachesTheGdbstub) {
  Attach(OptionsWithLiveMemory(0x1000, CountingBytes()));
  EXPECT_EQ(live_memory_opened_, std::vector<std::string>{kUuid});
  std::vector<uint8_t> out(4);
  absl::Status read = vm_->ReadPhysical(0x1010, absl::MakeSpan(out));
  ASSERT_TRUE(read.ok()) << read;
  EXPECT_EQ(out, (std::vector<uint8_t>{0x10, 0x11, 0x12, 0x13}));
  EXPECT_EQ(vm_->fast_physical_reads(), 1u);
  ASSERT_EQ(live_reads_.size(), 1u);
  EXPECT_EQ(live_reads_[0].gpa, 0x1010u);
  EXPECT_EQ(live_reads_[0].size, 4u);
  ExpectScriptDone();  // nothing reached the stub
}

// A range the process_vm_readv path cannot serve (outside its RAM windows) is read through the
// gdbstub, in its physical-memory mode, which is switched on once.
TEST_F(QemuGuestVmTest, ReadPhysicalOutsideTheLiveWindowFallsBackToTheGdbstubsPhysicalMode) {
  Attach(OptionsWithLiveMemory(0x1000, CountingBytes()));
  stub_.ExpectCommand("Qqemu.PhyMemMode:1", "OK")
      .ExpectCommand("m10fe,4", "a1a2a3a4")
      .ExpectCommand("m2000,2", "b1b2");
  std::vector<uint8_t> straddling(4);
  absl::Status read = vm_->ReadPhysical(0x10fe, absl::MakeSpan(straddling));
  ASSERT_TRUE(read.ok()) << read;
  EXPECT_EQ(straddling, (std::vector<uint8_t>{0xa1, 0xa2, 0xa3, 0xa4}));
  std::vector<uint8_t> outside(2);
  read = vm_->ReadPhysical(0x2000, absl::MakeSpan(outside));
  ASSERT_TRUE(read.ok()) << read;
  EXPECT_EQ(outside, (std::vector<uint8_t>{0xb1, 0xb2}));
  EXPECT_EQ(vm_->fast_physical_reads(), 0u);
  EXPECT_EQ(live_reads_.size(), 2u);  // each tried the fast path first
  ExpectScriptDone();
}

// The guest is not stopped for a live read; an ordinary physical read of a running guest is
// refused instead.
TEST_F(QemuGuestVmTest, ReadPhysicalLiveReadsAGuestThatRunsThroughTheLiveReaderOnly) {
  Attach(OptionsWithLiveMemory(0x1000, CountingBytes()));
  stub_.ExpectWrite(EncodeGdbPacket("c")).Send("+");
  ASSERT_TRUE(vm_->Resume().ok());
  std::vector<uint8_t> out(2);
  absl::Status read = vm_->ReadPhysicalLive(0x10fe, absl::MakeSpan(out));
  ASSERT_TRUE(read.ok()) << read;
  EXPECT_EQ(out, (std::vector<uint8_t>{0xfe, 0xff}));
  EXPECT_TRUE(absl::IsOutOfRange(vm_->ReadPhysicalLive(0x1100, absl::MakeSpan(out))));
  EXPECT_TRUE(absl::IsFailedPrecondition(vm_->ReadPhysical(0x1000, absl::MakeSpan(out))));
  ExpectScriptDone();  // nothing but the resume reached the stub
}

TEST_F(QemuGuestVmTest, DomainGoneEventEndsTheWaitWithoutTheStub) {
  Attach();
  LibvirtReports(LibvirtDomainEvent::Kind::kStopped);
  absl::StatusOr<std::optional<StopEvent>> stop = vm_->WaitForStop(absl::Seconds(1));
  ASSERT_TRUE(stop.ok() && stop->has_value()) << stop.status();
  EXPECT_EQ((*stop)->kind, StopEvent::Kind::kGone);
  EXPECT_TRUE(absl::IsUnavailable(vm_->ReadRegisters(0).status()));
  ExpectScriptDone();
}

// After libvirt's reboot event the memory is a new boot's: a patch decided for the old boot (a
// call into its blob) crashed a new one. Every write is refused without reaching the stub;
// reads still work.
TEST_F(QemuGuestVmTest, NothingIsWrittenIntoAGuestLibvirtReportedRebooted) {
  Attach();
  LibvirtReports(LibvirtDomainEvent::Kind::kRebooted);
  const std::vector<uint8_t> call = {0xe8, 1, 2, 3, 4};
  EXPECT_TRUE(absl::IsAborted(vm_->WriteVirtual(0, 0x80501000, call)));
  const std::vector<engine::MemoryWrite> writes = {{0x80501000, call}};
  EXPECT_TRUE(absl::IsAborted(vm_->WriteVirtualMany(0, writes).status()));
  EXPECT_TRUE(absl::IsAborted(vm_->WritePhysical(0x501000, call)));
  absl::Status reg = vm_->WriteRegister(0, engine::WritableRegister::kEax, 0x20);
  EXPECT_TRUE(absl::IsAborted(reg)) << reg;
  EXPECT_THAT(std::string(reg.message()), ::testing::HasSubstr("rebooted"));
  ExpectScriptDone();  // not one packet
  stub_.ExpectCommand("Hgp01.01", "OK")
      .ExpectCommand("Qqemu.PhyMemMode:0", "OK")
      .ExpectCommand("m80501000,5", "e801020304");
  std::vector<uint8_t> back(5);
  absl::Status read = vm_->ReadVirtual(0, 0x80501000, absl::MakeSpan(back));
  EXPECT_TRUE(read.ok()) << read;
  ExpectScriptDone();
}

}  // namespace
}  // namespace tprd::backend

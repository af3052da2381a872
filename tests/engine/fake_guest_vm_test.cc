#include "tests/fakes/fake_guest_vm.h"

#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/page_table_builder.h"

namespace tprd::testing {
namespace {

using ::testing::ElementsAre;

std::vector<uint8_t> Read(FakeGuestVm& vm, uint32_t va, size_t n) {
  std::vector<uint8_t> out(n);
  absl::Status s = vm.ReadVirtual(0, va, absl::MakeSpan(out));
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

class FakeGuestVmTest : public ::testing::Test {
 protected:
  FakeGuestVmTest() : vm_(XpLikeVmOptions({.vcpu_count = 2})) {
    absl::StatusOr<PageTableBuilder> b = BuildXpLikeLayout(vm_, {.vcpu_count = 2});
    EXPECT_TRUE(b.ok()) << b.status();
  }
  FakeGuestVm vm_;
};

TEST_F(FakeGuestVmTest, AccessWhileRunningIsFailedPrecondition) {
  ASSERT_TRUE(vm_.running());
  std::vector<uint8_t> buf(4);
  EXPECT_EQ(vm_.ReadVirtual(0, 0x80001000, absl::MakeSpan(buf)).code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(vm_.WritePhysical(0x1000, buf).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(vm_.ReadRegisters(0).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(vm_.Stop().ok());
  EXPECT_TRUE(vm_.ReadVirtual(0, 0x80001000, absl::MakeSpan(buf)).ok());
  EXPECT_EQ(vm_.stop_calls(), 1);
}

TEST_F(FakeGuestVmTest, VirtualWritesGoThroughThePageTables) {
  ASSERT_TRUE(vm_.Stop().ok());
  const std::vector<uint8_t> bytes = {0xA1, 0x80, 0x00, 0xFE, 0xFF};
  // Crosses a page boundary.
  ASSERT_TRUE(vm_.WriteVirtual(0, 0x80002FFE, bytes).ok());
  EXPECT_EQ(vm_.BackdoorPhysicalBytes(0x2FFE, 5), bytes);
  EXPECT_EQ(Read(vm_, 0x80002FFE, 5), bytes);
  ASSERT_EQ(vm_.write_log().size(), 1u);
  EXPECT_THAT(vm_.write_log()[0].physical, ElementsAre(0x2FFE, 0x2FFF, 0x3000, 0x3001, 0x3002));
}

TEST_F(FakeGuestVmTest, UnmappedAndOutsideRamAreErrors) {
  ASSERT_TRUE(vm_.Stop().ok());
  std::vector<uint8_t> buf(4);
  EXPECT_EQ(vm_.ReadVirtual(0, 0x10000000, absl::MakeSpan(buf)).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(vm_.ReadPhysical(0x40000000, absl::MakeSpan(buf)).code(),
            absl::StatusCode::kOutOfRange);
  EXPECT_EQ(vm_.ReadVirtual(7, 0x80001000, absl::MakeSpan(buf)).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(vm_.write_log().empty());
}

TEST_F(FakeGuestVmTest, FailNthWriteCountsFromNowAndCanTear) {
  ASSERT_TRUE(vm_.Stop().ok());
  const std::vector<uint8_t> bytes = {1, 2, 3, 4, 5, 6};
  vm_.FailNthWrite(2, /*partial_bytes=*/3);
  EXPECT_TRUE(vm_.WriteVirtual(0, 0x80001000, bytes).ok());
  EXPECT_FALSE(vm_.WriteVirtual(0, 0x80002000, bytes).ok());
  EXPECT_TRUE(vm_.WriteVirtual(0, 0x80003000, bytes).ok());
  EXPECT_THAT(vm_.BackdoorPhysicalBytes(0x2000, 6), ElementsAre(1, 2, 3, 0, 0, 0));
  EXPECT_EQ(vm_.write_log().size(), 3u);
}

TEST_F(FakeGuestVmTest, FailNthReadAndStop) {
  vm_.FailNth(FakeGuestVm::Op::kStop, 1, absl::UnavailableError("gone"));
  EXPECT_FALSE(vm_.Stop().ok());
  EXPECT_TRUE(vm_.running());
  ASSERT_TRUE(vm_.Stop().ok());
  vm_.FailNthRead(1);
  std::vector<uint8_t> buf(1);
  EXPECT_EQ(vm_.ReadPhysical(0, absl::MakeSpan(buf)).code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(vm_.ReadPhysical(0, absl::MakeSpan(buf)).ok());
}

TEST_F(FakeGuestVmTest, HooksChangeStateBehindTheEnginesBack) {
  vm_.OnStop([](FakeGuestVm& vm) { vm.SetEip(1, 0x80001234); });
  ASSERT_TRUE(vm_.Stop().ok());
  absl::StatusOr<engine::VcpuRegisters> regs = vm_.ReadRegisters(1);
  ASSERT_TRUE(regs.ok());
  EXPECT_EQ(regs->eip, 0x80001234u);
  vm_.BeforeNthWrite(1, [](FakeGuestVm& vm) {
    const uint8_t b = 0xCC;
    ASSERT_TRUE(vm.BackdoorWritePhysical(0x5000, {&b, 1}).ok());
  });
  const uint8_t zero = 0;
  ASSERT_TRUE(vm_.WritePhysical(0x6000, {&zero, 1}).ok());
  EXPECT_THAT(vm_.BackdoorPhysicalBytes(0x5000, 1), ElementsAre(0xCC));
  EXPECT_EQ(vm_.write_log().size(), 1u);  // the hook's write is not the engine's
}

TEST_F(FakeGuestVmTest, HostPausedGuestIsNeverResumed) {
  vm_.SetHostPaused(true);
  EXPECT_FALSE(vm_.running());
  EXPECT_EQ(vm_.Resume().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(vm_.running());
  EXPECT_EQ(vm_.resume_calls(), 0);
}

TEST_F(FakeGuestVmTest, StopEventsTprAndDebugState) {
  vm_.QueueStopEvent({.kind = engine::StopEvent::Kind::kWatchpoint, .vcpu = 1, .pc = 0x80001005});
  absl::StatusOr<std::optional<engine::StopEvent>> event = vm_.WaitForStop(absl::Seconds(1));
  ASSERT_TRUE(event.ok());
  ASSERT_TRUE(event->has_value());
  EXPECT_EQ((*event)->pc, 0x80001005u);
  EXPECT_FALSE(vm_.running());
  ASSERT_TRUE(vm_.Resume().ok());
  event = vm_.WaitForStop(absl::Seconds(1));
  ASSERT_TRUE(event.ok());
  EXPECT_FALSE(event->has_value());  // nothing queued: a timeout

  ASSERT_TRUE(vm_.Stop().ok());
  vm_.SetTpr(1, 0xD1);
  absl::StatusOr<uint8_t> tpr = vm_.ReadTpr(1);
  ASSERT_TRUE(tpr.ok());
  EXPECT_EQ(*tpr, 0xD1);
  ASSERT_TRUE(vm_.SetBreakpoint(0x80001000).ok());
  EXPECT_EQ(vm_.breakpoints().count(0x80001000), 1u);
  EXPECT_TRUE(vm_.RemoveBreakpoint(0x80001000).ok());
  EXPECT_FALSE(vm_.RemoveBreakpoint(0x80001000).ok());
  ASSERT_TRUE(vm_.SetWatchpoint(0xFFFE0080, 4, engine::WatchKind::kWrite).ok());
  EXPECT_EQ(vm_.watchpoints().size(), 1u);
  ASSERT_TRUE(vm_.WriteRegister(0, engine::WritableRegister::kEcx, 42).ok());
  EXPECT_EQ(vm_.Registers(0).reg(engine::Gpr::kEcx), 42u);
}

TEST_F(FakeGuestVmTest, StepsAdvanceEipAndReportAPendingWatchpointHitOnce) {
  EXPECT_EQ(vm_.StepVcpu(1, absl::Seconds(1)).status().code(),
            absl::StatusCode::kFailedPrecondition);  // running
  ASSERT_TRUE(vm_.Stop().ok());
  EXPECT_EQ(vm_.StepVcpu(7, absl::Seconds(1)).status().code(), absl::StatusCode::kInvalidArgument);
  vm_.SetEip(1, 0x80001000);
  vm_.SetEip(0, 0x80002000);
  vm_.SetStepLength(6);
  vm_.SetPendingWatchpointHit(1);
  absl::StatusOr<engine::StepResult> step = vm_.StepVcpu(1, absl::Seconds(1));
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_TRUE(step->completed);
  EXPECT_TRUE(step->watchpoint_reported);
  EXPECT_EQ(step->pc, 0x80001006u);
  EXPECT_FALSE(vm_.pending_watchpoint_hit(1));
  step = vm_.StepVcpu(1, absl::Seconds(1));
  ASSERT_TRUE(step.ok());
  EXPECT_FALSE(step->watchpoint_reported);  // reported once
  EXPECT_EQ(step->pc, 0x8000100Cu);
  EXPECT_EQ(vm_.Registers(0).eip, 0x80002000u);  // the other vCPU did not run
  EXPECT_FALSE(vm_.running());

  // A step that never finishes (hlt, interrupts masked) keeps the hit pending.
  vm_.SetPendingWatchpointHit(0);
  vm_.OnStep([](FakeGuestVm&, int) { return false; });
  step = vm_.StepVcpu(0, absl::Seconds(1));
  ASSERT_TRUE(step.ok());
  EXPECT_FALSE(step->completed);
  EXPECT_FALSE(step->watchpoint_reported);
  EXPECT_EQ(step->pc, 0x80002000u);
  EXPECT_TRUE(vm_.pending_watchpoint_hit(0));

  vm_.FailNth(FakeGuestVm::Op::kStep, 1, absl::UnavailableError("injected"));
  EXPECT_EQ(vm_.StepVcpu(0, absl::Seconds(1)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(vm_.step_calls(), ElementsAre(1, 1, 0));
  EXPECT_EQ(vm_.op_count(FakeGuestVm::Op::kStep), 3);
}

TEST_F(FakeGuestVmTest, MemoryMapHasRamAndApic) {
  absl::StatusOr<std::vector<engine::MemoryRegion>> map = vm_.MemoryMap();
  ASSERT_TRUE(map.ok());
  ASSERT_EQ(map->size(), 2u);
  EXPECT_TRUE((*map)[0].ram);
  EXPECT_EQ((*map)[1].start, kApicPhysical);
  EXPECT_FALSE((*map)[1].ram);
}

TEST_F(FakeGuestVmTest, SnapshotIgnoresZeroPages) {
  const FakeGuestVm::MemorySnapshot before = vm_.Snapshot();
  ASSERT_TRUE(vm_.Stop().ok());
  const std::vector<uint8_t> zeros(16, 0);
  ASSERT_TRUE(vm_.WritePhysical(0x700000, zeros).ok());
  EXPECT_EQ(vm_.Snapshot(), before);
  const uint8_t one = 1;
  ASSERT_TRUE(vm_.WritePhysical(0x700000, {&one, 1}).ok());
  EXPECT_NE(vm_.Snapshot(), before);
}

}  // namespace
}  // namespace tprd::testing

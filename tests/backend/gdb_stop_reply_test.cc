#include "kvm-backend/core/gdb_stop_reply.h"

#include "gtest/gtest.h"

namespace tprd::backend {
namespace {

TEST(GdbStopReplyTest, ParsesQemuAttachStop) {
  absl::StatusOr<GdbStopReply> stop = ParseGdbStopReply("T02thread:01;");
  ASSERT_TRUE(stop.ok()) << stop.status();
  EXPECT_EQ(stop->kind, GdbStopReply::Kind::kStopped);
  EXPECT_EQ(stop->signal, kGdbSignalInt);
  ASSERT_TRUE(stop->thread.has_value());
  EXPECT_EQ(stop->thread->vcpu_index(), 0);
  EXPECT_FALSE(stop->watch.has_value());
}

TEST(GdbStopReplyTest, ParsesWatchpointsOnEachVcpu) {
  absl::StatusOr<GdbStopReply> stop = ParseGdbStopReply("T05thread:p01.02;awatch:ffe00080;");
  ASSERT_TRUE(stop.ok()) << stop.status();
  EXPECT_EQ(stop->signal, kGdbSignalTrap);
  EXPECT_EQ(stop->thread, (GdbThreadId{1, 2}));
  EXPECT_EQ(stop->thread->vcpu_index(), 1);
  EXPECT_EQ(stop->watch, engine::WatchKind::kAccess);
  EXPECT_EQ(stop->watch_address, 0xffe00080u);
  EXPECT_EQ(ParseGdbStopReply("T05watch:10;")->watch, engine::WatchKind::kWrite);
  EXPECT_EQ(ParseGdbStopReply("T05rwatch:10;")->watch, engine::WatchKind::kRead);
}

TEST(GdbStopReplyTest, ParsesBreakFlagsAndSkipsRegisters) {
  absl::StatusOr<GdbStopReply> stop =
      ParseGdbStopReply("T0508:00104000;swbreak:;thread:p01.01;core:0;");
  ASSERT_TRUE(stop.ok()) << stop.status();
  EXPECT_TRUE(stop->software_breakpoint);
  EXPECT_FALSE(stop->hardware_breakpoint);
  EXPECT_EQ(stop->thread->tid, 1);
  EXPECT_TRUE(ParseGdbStopReply("T05hwbreak:;")->hardware_breakpoint);
}

TEST(GdbStopReplyTest, ExitPacketsMeanTheProcessIsGone) {
  EXPECT_TRUE(ParseGdbStopReply("W00")->process_gone());
  EXPECT_EQ(ParseGdbStopReply("W01;process:1")->exit_code, 1);
  EXPECT_EQ(ParseGdbStopReply("X09")->kind, GdbStopReply::Kind::kTerminated);
  EXPECT_EQ(ParseGdbStopReply("S02")->signal, 2);
  EXPECT_FALSE(ParseGdbStopReply("S02")->process_gone());
}

TEST(GdbStopReplyTest, RejectsMalformed) {
  for (const char* bad : {"", "T", "T5", "Tzz", "OK", "E14", "T05thread:;", "T05thread:pzz.1;",
                          "T05awatch:xyz;", "T05awatch:;", "T05junk", "S02extra"}) {
    EXPECT_FALSE(ParseGdbStopReply(bad).ok()) << bad;
  }
  EXPECT_FALSE(LooksLikeGdbStopReply("OK"));
  EXPECT_FALSE(LooksLikeGdbStopReply("E14"));
  EXPECT_TRUE(LooksLikeGdbStopReply("T02thread:01;"));
}

TEST(GdbStopReplyTest, ThreadIds) {
  EXPECT_EQ(*ParseGdbThreadId("p01.0a"), (GdbThreadId{1, 10}));
  EXPECT_EQ(*ParseGdbThreadId("-1"), (GdbThreadId{1, -1}));
  EXPECT_EQ(ParseGdbThreadId("p1")->tid, -1);
  EXPECT_EQ((GdbThreadId{1, 2}).ToString(true), "p01.02");
  EXPECT_EQ((GdbThreadId{1, 2}).ToString(false), "02");
  EXPECT_EQ((GdbThreadId{1, -1}).ToString(true), "p01.-1");
  EXPECT_FALSE(ParseGdbThreadId("").ok());
  EXPECT_FALSE(ParseGdbThreadId("p.1").ok());
}

}  // namespace
}  // namespace tprd::backend

#include "kvm-backend/core/libvirt_pause_tracker.h"

#include <thread>

#include "gtest/gtest.h"

namespace tprd::backend {
namespace {

TEST(LibvirtPauseTrackerTest, NothingAwaitedBeforeTheFirstRun) {
  LibvirtPauseTracker tracker;
  EXPECT_TRUE(tracker.WaitCaughtUp(absl::ZeroDuration()));
}

TEST(LibvirtPauseTrackerTest, APauseReportedBeforeTheRunDoesNotCount) {
  LibvirtPauseTracker tracker;
  tracker.OnPauseReported();  // the previous stop's
  tracker.WillRun();
  EXPECT_FALSE(tracker.WaitCaughtUp(absl::ZeroDuration()));
}

TEST(LibvirtPauseTrackerTest, APauseReportedAfterTheRunEndsTheWait) {
  LibvirtPauseTracker tracker;
  tracker.WillRun();
  tracker.OnPauseReported();
  EXPECT_TRUE(tracker.WaitCaughtUp(absl::ZeroDuration()));
}

TEST(LibvirtPauseTrackerTest, AWaiterWakesWhenThePauseIsReported) {
  LibvirtPauseTracker tracker;
  tracker.WillRun();
  std::thread libvirt([&] { tracker.OnPauseReported(); });
  EXPECT_TRUE(tracker.WaitCaughtUp(absl::Seconds(30)));
  libvirt.join();
}

TEST(LibvirtPauseTrackerTest, ATimedOutWaitSettlesTheRunAsUnreportedUntilTheNextRun) {
  LibvirtPauseTracker tracker;
  tracker.WillRun();
  EXPECT_FALSE(tracker.WaitCaughtUp(absl::Milliseconds(1)));
  // libvirt may have lost the event (a restart): the next decision does not wait again, and
  // still knows that libvirt never reported this stop.
  EXPECT_FALSE(tracker.WaitCaughtUp(absl::Seconds(30)));
  tracker.WillRun();
  tracker.OnPauseReported();
  EXPECT_TRUE(tracker.WaitCaughtUp(absl::ZeroDuration()));
  EXPECT_TRUE(tracker.WaitCaughtUp(absl::ZeroDuration()));
}

TEST(LibvirtPauseTrackerTest, MarkedCaughtUpSettlesTheRunAsReported) {
  LibvirtPauseTracker tracker;
  tracker.WillRun();
  tracker.MarkCaughtUp();
  EXPECT_TRUE(tracker.WaitCaughtUp(absl::ZeroDuration()));
}

TEST(LibvirtPauseTrackerTest, AGoneDomainEndsTheWait) {
  LibvirtPauseTracker tracker;
  tracker.WillRun();
  tracker.OnGone();
  EXPECT_TRUE(tracker.WaitCaughtUp(absl::ZeroDuration()));
}

TEST(LibvirtPauseTrackerTest, ALostConnectionCountsUntilTheNextRun) {
  LibvirtPauseTracker tracker;
  tracker.WillRun();
  EXPECT_FALSE(tracker.ConnectionLostSinceRun());
  tracker.OnConnectionLost();
  EXPECT_TRUE(tracker.ConnectionLostSinceRun());
  tracker.WillRun();
  EXPECT_FALSE(tracker.ConnectionLostSinceRun());
}

}  // namespace
}  // namespace tprd::backend

// ApicTraceSampler over FakeLibvirtConnection, a fake clock and a temporary directory standing
// for /var/lib/libvirt/qemu: a fake "QEMU" that writes trace lines into the file `logfile` named
// while the events are on. What is counted, what is left behind, and when it refuses.
#include "kvm-backend/apic_trace_sampler.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_clock.h"
#include "tests/fakes/fake_libvirt_connection.h"

namespace tprd::backend {
namespace {

using ::testing::Contains;
using ::testing::HasSubstr;

constexpr char kUuid[] = "6f1c2f0e-0000-4000-8000-000000000007";
constexpr int kDomainId = 12;

class ApicTraceSamplerTest : public ::testing::Test {
 protected:
  ApicTraceSamplerTest() {
    root_ = std::filesystem::temp_directory_path() /
            absl::StrCat("tprd-apic-trace-test-", getpid(), "-", counter_++);
    std::filesystem::create_directories(root_ / "domain-1-other");
    std::filesystem::create_directories(root_ / absl::StrCat("domain-", kDomainId, "-guest"));
    domain_dir_ = (root_ / absl::StrCat("domain-", kDomainId, "-guest")).string();
    LibvirtDomainInfo domain;
    domain.uuid = kUuid;
    domain.name = "guest";
    domain.id = kDomainId;
    domain.state = LibvirtDomainState::kRunning;
    connection_.AddDomain(domain);
    connection_.SetMonitorHandler(
        [this](const std::string&, const std::string& command,
               bool) -> absl::StatusOr<std::string> { return Qemu(command); });
    // While the events are on, "the guest" makes 3 TPR reads, 2 TPR writes and one ICR write
    // per 50 ms of the fake clock.
    clock_.OnSleep([this] {
      if (!tracing_ || logfile_.empty() || logfile_ == "/dev/null") return;
      std::ofstream(logfile_, std::ios::app) << "1@1.0:apic_mem_readl 0x80 = 0x41\n"
                                                "1@1.0:apic_mem_readl 0x80 = 0x41\n"
                                                "1@1.0:apic_mem_readl 0x80 = 0x41\n"
                                                "1@1.0:apic_mem_writel 0x80 = 0x0\n"
                                                "1@1.0:apic_mem_writel 0x80 = 0x41\n"
                                                "1@1.0:apic_mem_writel 0x300 = 0xc40fd\n";
    });
  }
  ~ApicTraceSamplerTest() override {
    std::error_code ignored;
    std::filesystem::remove_all(root_, ignored);
  }

  // QEMU 7.2's HMP answers (success prints nothing).
  absl::StatusOr<std::string> Qemu(const std::string& command) {
    absl::string_view rest = command;
    if (command == "info trace-events apic_mem_*") {
      return absl::StrCat("apic_mem_writel : state ", tracing_ || already_on_ ? 1 : 0,
                          "\r\napic_mem_readl : state ", tracing_ ? 1 : 0, "\r\n");
    }
    if (absl::ConsumePrefix(&rest, "logfile ")) {
      if (!logfile_error_.empty()) return absl::StrCat(logfile_error_, "\r\n");
      logfile_ = std::string(rest);
      if (logfile_ != "/dev/null") std::ofstream(logfile_, std::ios::trunc).flush();
      return std::string();
    }
    if (command == "trace-event apic_mem_* on") {
      tracing_ = true;
      return std::string();
    }
    if (command == "trace-event apic_mem_* off") {
      if (fail_off_) return std::string("connection to QEMU lost\r\n");
      tracing_ = false;
      return std::string();
    }
    return absl::StrCat("unknown command: '", command, "'\r\n");
  }

  std::string TraceFile() const { return domain_dir_ + "/" + kApicTraceFileName; }

  static inline int counter_ = 0;
  std::filesystem::path root_;
  std::string domain_dir_;
  FakeLibvirtConnection connection_;
  testing::FakeClock clock_;
  bool tracing_ = false;
  bool already_on_ = false;
  bool fail_off_ = false;
  std::string logfile_;
  std::string logfile_error_;
};

TEST_F(ApicTraceSamplerTest, CountsTheWindowAndLeavesTheEventsOffTheLogOnDevNullAndNoFile) {
  ApicTraceSampler sampler(&connection_, kUuid, &clock_, {.libvirt_qemu_dir = root_.string()});
  absl::StatusOr<ApicTraceSample> sample = sampler.Sample(absl::Milliseconds(500));
  ASSERT_TRUE(sample.ok()) << sample.status();
  EXPECT_EQ(sample->count.tpr_reads, 30u) << "ten polls of 50 ms, 3 reads each";
  EXPECT_EQ(sample->count.tpr_writes, 20u);
  EXPECT_EQ(sample->count.other, 10u);
  EXPECT_EQ(sample->window, absl::Milliseconds(500));
  EXPECT_FALSE(tracing_) << "the events are off again";
  EXPECT_EQ(logfile_, "/dev/null");
  EXPECT_FALSE(std::filesystem::exists(TraceFile())) << "the trace file is removed";
  EXPECT_THAT(connection_.monitor_log(), Contains(absl::StrCat("hmp: logfile ", TraceFile())))
      << "the file is in the domain's own directory (domain-ID-NAME)";
}

TEST_F(ApicTraceSamplerTest, AFileGrowingPastTheCapEndsTheWindowEarly) {
  ApicTraceSampler sampler(&connection_, kUuid, &clock_,
                           {.libvirt_qemu_dir = root_.string(), .max_bytes = 500});
  absl::StatusOr<ApicTraceSample> sample = sampler.Sample(absl::Seconds(10));
  ASSERT_TRUE(sample.ok()) << sample.status();
  EXPECT_LT(sample->window, absl::Seconds(1)) << "stopped at the cap, not after 10 s";
  EXPECT_GT(sample->count.tpr_reads, 0u);
  EXPECT_FALSE(tracing_);
  EXPECT_FALSE(std::filesystem::exists(TraceFile()));
}

TEST_F(ApicTraceSamplerTest, EventsSomeoneElseSwitchedOnAreLeftAlone) {
  already_on_ = true;
  ApicTraceSampler sampler(&connection_, kUuid, &clock_, {.libvirt_qemu_dir = root_.string()});
  absl::StatusOr<ApicTraceSample> sample = sampler.Sample(absl::Milliseconds(500));
  EXPECT_EQ(sample.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(sample.status().message()), HasSubstr("already on"));
  for (const std::string& command : connection_.monitor_log()) {
    EXPECT_FALSE(absl::StartsWith(command, "hmp: logfile")) << "nothing changed: " << command;
    EXPECT_FALSE(absl::StartsWith(command, "hmp: trace-event")) << "nothing changed: " << command;
  }
}

TEST_F(ApicTraceSamplerTest, AFileQemuCannotOpenIsQemusWordsAndTheLogIsPutSomewhere) {
  logfile_error_ = "Error opening logfile /x: Permission denied";
  ApicTraceSampler sampler(&connection_, kUuid, &clock_, {.libvirt_qemu_dir = root_.string()});
  absl::StatusOr<ApicTraceSample> sample = sampler.Sample(absl::Milliseconds(500));
  EXPECT_FALSE(sample.ok());
  EXPECT_THAT(std::string(sample.status().message()), HasSubstr("Permission denied"));
  EXPECT_FALSE(tracing_) << "never switched on";
  EXPECT_THAT(connection_.monitor_log(), Contains("hmp: logfile /dev/null"));
}

TEST_F(ApicTraceSamplerTest, NoDomainDirectoryIsARefusalBeforeAnyCommand) {
  std::filesystem::remove_all(domain_dir_);
  ApicTraceSampler sampler(&connection_, kUuid, &clock_, {.libvirt_qemu_dir = root_.string()});
  absl::StatusOr<ApicTraceSample> sample = sampler.Sample(absl::Milliseconds(500));
  EXPECT_EQ(sample.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(sample.status().message()), HasSubstr("domain-12-"));
  EXPECT_TRUE(connection_.monitor_log().empty());
}

TEST_F(ApicTraceSamplerTest, NoLineAtAllIsNotAZeroRate) {
  clock_.OnSleep([] {});  // QEMU writes nothing (no APIC access, or no log backend)
  ApicTraceSampler sampler(&connection_, kUuid, &clock_, {.libvirt_qemu_dir = root_.string()});
  absl::StatusOr<ApicTraceSample> sample = sampler.Sample(absl::Milliseconds(200));
  EXPECT_EQ(sample.status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(tracing_);
  EXPECT_FALSE(std::filesystem::exists(TraceFile()));
}

// QEMU (or libvirt) failing the "off": the trace may still run, so the file stays as the marker
// the next look (CleanUpLeftover, at the next adopt or sample) finds and stops.
TEST_F(ApicTraceSamplerTest, AFailedStopKeepsTheFileAsTheMarkerForTheNextLook) {
  fail_off_ = true;
  ApicTraceSampler sampler(&connection_, kUuid, &clock_, {.libvirt_qemu_dir = root_.string()});
  absl::StatusOr<ApicTraceSample> sample = sampler.Sample(absl::Milliseconds(200));
  EXPECT_FALSE(sample.ok());
  EXPECT_TRUE(tracing_) << "QEMU refused the off";
  EXPECT_TRUE(std::filesystem::exists(TraceFile())) << "the marker stays";

  fail_off_ = false;
  ASSERT_TRUE(sampler.CleanUpLeftover().ok());
  EXPECT_FALSE(tracing_);
  EXPECT_FALSE(std::filesystem::exists(TraceFile()));
}

// A tprd killed during its sample left the events on and QEMU writing into the file: the next
// tprd's look at the domain turns them off and removes the file; without the file it sends
// nothing.
TEST_F(ApicTraceSamplerTest, ALeftoverSampleIsStoppedAndRemoved) {
  ApicTraceSampler sampler(&connection_, kUuid, &clock_, {.libvirt_qemu_dir = root_.string()});
  ASSERT_TRUE(sampler.CleanUpLeftover().ok());
  EXPECT_TRUE(connection_.monitor_log().empty()) << "no file, no command";

  logfile_ = TraceFile();
  tracing_ = true;
  std::ofstream(TraceFile()) << "1@1.0:apic_mem_readl 0x80 = 0x41\n";
  ASSERT_TRUE(sampler.CleanUpLeftover().ok());
  EXPECT_FALSE(tracing_);
  EXPECT_EQ(logfile_, "/dev/null");
  EXPECT_FALSE(std::filesystem::exists(TraceFile()));
}

}  // namespace
}  // namespace tprd::backend

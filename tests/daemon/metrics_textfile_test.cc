#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "daemon/metrics/textfile_writer.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/daemon/test_dir.h"

namespace tprd::daemon {
namespace {

// Records what would have been written; fails on demand.
class FakeMetricsFile : public MetricsFile {
 public:
  absl::Status Replace(const std::string& path, absl::string_view contents) override {
    if (!fail.ok()) return fail;
    writes.emplace_back(path, std::string(contents));
    return absl::OkStatus();
  }
  absl::Status fail = absl::OkStatus();
  std::vector<std::pair<std::string, std::string>> writes;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path);
  std::stringstream all;
  all << in.rdbuf();
  return all.str();
}

TEST(MetricsTextfileWriterTest, WritesWhatRenderGivesAndReportsFailures) {
  FakeMetricsFile file;
  int renders = 0;
  MetricsTextfileWriter writer(
      "/var/lib/node_exporter/tprd.prom", absl::Seconds(5),
      [&renders]() -> absl::StatusOr<std::string> {
        return "tprd_sites{domain=\"x\"} " + std::to_string(++renders) + "\n";
      },
      &file);
  ASSERT_TRUE(writer.WriteOnce().ok());
  ASSERT_EQ(file.writes.size(), 1u);
  EXPECT_EQ(file.writes[0].first, "/var/lib/node_exporter/tprd.prom");
  EXPECT_EQ(file.writes[0].second, "tprd_sites{domain=\"x\"} 1\n");
  file.fail = absl::UnavailableError("disk full");
  EXPECT_EQ(writer.WriteOnce().code(), absl::StatusCode::kUnavailable);
  file.fail = absl::OkStatus();
  ASSERT_TRUE(writer.WriteOnce().ok());
  EXPECT_EQ(file.writes.back().second, "tprd_sites{domain=\"x\"} 3\n");
}

TEST(MetricsTextfileWriterTest, ARenderFailureWritesNothing) {
  FakeMetricsFile file;
  MetricsTextfileWriter writer(
      "/tmp/x.prom", absl::Seconds(5),
      []() -> absl::StatusOr<std::string> { return absl::UnavailableError("libvirt is down"); },
      &file);
  EXPECT_EQ(writer.WriteOnce().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(file.writes.empty());
}

TEST(MetricsTextfileWriterTest, StartWritesAtOnceAndStopEndsTheThread) {
  FakeMetricsFile file;
  absl::Mutex mu;
  int renders = 0;
  MetricsTextfileWriter writer(
      "/tmp/x.prom", absl::Hours(1),
      [&]() -> absl::StatusOr<std::string> {
        absl::MutexLock lock(&mu);
        ++renders;
        return std::string("x 1\n");
      },
      &file);
  writer.Start();
  {
    absl::MutexLock lock(&mu);
    const bool written = mu.AwaitWithTimeout(absl::Condition(
                                                 +[](int* n) { return *n >= 1; }, &renders),
                                             absl::Seconds(30));
    ASSERT_TRUE(written) << "the first write comes at once, not after the interval";
  }
  writer.Stop();  // returns although the interval is an hour
}

TEST(AtomicMetricsFileTest, ReplacesTheFileReadableByOthersAndLeavesNoTemporary) {
  TestDir dir;
  const std::string path = dir.File("tprd.prom");
  AtomicMetricsFile file;
  ASSERT_TRUE(file.Replace(path, "first 1\n").ok());
  ASSERT_TRUE(file.Replace(path, "second 2\n").ok());
  EXPECT_EQ(ReadAll(path), "second 2\n");
  struct stat st {};
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0644u) << "node_exporter runs as another user";
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(dir.path())) {
    names.push_back(entry.path().filename().string());
  }
  EXPECT_THAT(names, ::testing::ElementsAre("tprd.prom"));
}

TEST(AtomicMetricsFileTest, AMissingDirectoryIsAnErrorThatNamesThePath) {
  AtomicMetricsFile file;
  absl::Status s = file.Replace("/nonexistent-tprd-dir/tprd.prom", "x 1\n");
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), ::testing::HasSubstr("/nonexistent-tprd-dir/tprd.prom"));
}

}  // namespace
}  // namespace tprd::daemon

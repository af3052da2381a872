#include "daemon/journal/journal.h"

#include <sys/stat.h>

#include <fstream>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/daemon/test_dir.h"

namespace tprd::daemon {
namespace {

engine::Site SampleSite() {
  engine::Site site;
  site.id = 7;
  site.address = 0x80501234;
  site.form = engine::Form::kMovRegFromMem;
  site.reg = engine::Gpr::kEsi;
  site.original = {0x8B, 0x35, 0x80, 0x00, 0xFE, 0xFF};
  site.patched = {0xE8, 0x01, 0x02, 0x03, 0x04, 0x90};
  site.state = engine::SiteState::kApplied;
  return site;
}

TEST(JournalTest, EntriesRoundTripThroughTheFile) {
  TestDir dir;
  const std::string path = dir.File(Journal::kFileName);
  auto journal = Journal::Open(path);
  ASSERT_TRUE(journal.ok()) << journal.status();

  JournalEntry operation;
  operation.time = absl::FromUnixSeconds(1700000000) + absl::Milliseconds(250);
  operation.domain_name = "winxp-01";
  operation.domain_uuid = "11111111-2222-3333-4444-555555555555";
  operation.event = "enable";
  operation.message = "started";
  ASSERT_TRUE((*journal)->Append(operation).ok());

  DomainInfo domain{"winxp-01", "11111111-2222-3333-4444-555555555555", 3, true};
  auto recorder = (*journal)->RecorderFor(domain);
  ASSERT_TRUE(recorder->RecordSite(SampleSite()).ok());

  std::vector<JournalSkip> skipped;
  auto entries = Journal::ReadAll(path, &skipped);
  ASSERT_TRUE(entries.ok()) << entries.status();
  EXPECT_TRUE(skipped.empty());
  ASSERT_EQ(entries->size(), 2u);
  EXPECT_EQ((*entries)[0].time, operation.time);
  EXPECT_EQ((*entries)[0].event, "enable");
  EXPECT_EQ((*entries)[0].message, "started");
  EXPECT_FALSE((*entries)[0].site.has_value());

  const JournalEntry& site_entry = (*entries)[1];
  EXPECT_EQ(site_entry.event, "site");
  EXPECT_EQ(site_entry.domain_name, "winxp-01");
  EXPECT_EQ(site_entry.domain_uuid, domain.uuid);
  ASSERT_TRUE(site_entry.site.has_value());
  const engine::Site expected = SampleSite();
  EXPECT_EQ(site_entry.site->id, expected.id);
  EXPECT_EQ(site_entry.site->address, expected.address);
  EXPECT_EQ(site_entry.site->form, expected.form);
  EXPECT_EQ(site_entry.site->reg, expected.reg);
  EXPECT_EQ(site_entry.site->original, expected.original);
  EXPECT_EQ(site_entry.site->patched, expected.patched);
  EXPECT_EQ(site_entry.site->state, expected.state);
}

TEST(JournalTest, AnAndMemZeroSiteRoundTrips) {
  TestDir dir;
  const std::string path = dir.File(Journal::kFileName);
  auto journal = Journal::Open(path);
  ASSERT_TRUE(journal.ok()) << journal.status();
  engine::Site site = SampleSite();
  site.form = engine::Form::kAndMemZero;
  site.reg = engine::Gpr::kEax;
  site.original = {0x83, 0x25, 0x80, 0x00, 0xFE, 0xFF, 0x00};
  site.patched = {0x66, 0x90, 0xE8, 0x01, 0x02, 0x03, 0x04};
  DomainInfo domain{"winxp-01", "11111111-2222-3333-4444-555555555555", 3, true};
  ASSERT_TRUE((*journal)->RecorderFor(domain)->RecordSite(site).ok());
  std::ifstream in(path);
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  EXPECT_THAT(line, ::testing::HasSubstr("\"form\":\"and_mem_zero\""));
  auto entries = Journal::ReadAll(path, nullptr);
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 1u);
  ASSERT_TRUE((*entries)[0].site.has_value());
  EXPECT_EQ((*entries)[0].site->form, engine::Form::kAndMemZero);
  EXPECT_EQ((*entries)[0].site->original, site.original);
  EXPECT_EQ((*entries)[0].site->patched, site.patched);
}

TEST(JournalTest, EachAppendIsOneCompleteLineOnDiskWhenItReturns) {
  TestDir dir;
  const std::string path = dir.File(Journal::kFileName);
  auto journal = Journal::Open(path);
  ASSERT_TRUE(journal.ok());
  JournalEntry entry;
  entry.time = absl::Now();
  entry.event = "detach";
  ASSERT_TRUE((*journal)->Append(entry).ok());
  // Read through an independent stream: nothing may sit in a user-space buffer.
  std::ifstream in(path);
  std::string line;
  ASSERT_TRUE(std::getline(in, line));
  EXPECT_THAT(line, ::testing::HasSubstr("\"event\":\"detach\""));
  EXPECT_FALSE(std::getline(in, line)) << "one append, one line";
}

// A record made while its fsync is deferred (tprd holds the guest stopped) is in the file when
// the call returns, as another process (a tprd started after a kill -9) reads it; Sync then
// makes it durable.
TEST(JournalTest, ADeferredRecordIsInTheFileAtOnceAndSyncedLater) {
  TestDir dir;
  const std::string path = dir.File(Journal::kFileName);
  auto journal = Journal::Open(path);
  ASSERT_TRUE(journal.ok());
  DomainInfo domain{"winxp-01", "11111111-2222-3333-4444-555555555555", 3, true};
  auto recorder = (*journal)->RecorderFor(domain);
  recorder->DeferSync(true);
  engine::Site site = SampleSite();
  site.state = engine::SiteState::kPending;
  ASSERT_TRUE(recorder->RecordSites({&site, 1}).ok());
  auto entries = Journal::ReadAll(path, nullptr);
  ASSERT_TRUE(entries.ok()) << entries.status();
  ASSERT_EQ(entries->size(), 1u);
  EXPECT_EQ((*entries)[0].site->state, engine::SiteState::kPending);
  recorder->DeferSync(false);
  EXPECT_TRUE(recorder->Sync().ok());
}

TEST(JournalTest, AppendsToAnExistingJournalAndKeepsItPrivate) {
  TestDir dir;
  const std::string path = dir.File(Journal::kFileName);
  JournalEntry entry;
  entry.time = absl::Now();
  entry.event = "adopt";
  for (int run = 0; run < 2; ++run) {
    auto journal = Journal::Open(path);
    ASSERT_TRUE(journal.ok());
    ASSERT_TRUE((*journal)->Append(entry).ok());
  }
  auto entries = Journal::ReadAll(path, nullptr);
  ASSERT_TRUE(entries.ok());
  EXPECT_EQ(entries->size(), 2u);
  struct stat info;
  ASSERT_EQ(::stat(path.c_str(), &info), 0);
  EXPECT_EQ(info.st_mode & 0007, 0u) << "the journal must not be world-readable";
}

TEST(JournalTest, StrategyRoundTripsAndTheLastOnePerDomainSurvivesAReopen) {
  TestDir dir;
  const std::string path = dir.File(Journal::kFileName);
  {
    auto journal = Journal::Open(path);
    ASSERT_TRUE(journal.ok());
    JournalEntry entry;
    entry.time = absl::Now();
    entry.domain_uuid = "u-1";
    entry.event = "enable";
    entry.strategy = engine::Strategy::kCr8;
    ASSERT_TRUE((*journal)->Append(entry).ok());
    entry.event = "lifecycle";  // names no strategy: changes nothing
    entry.strategy.reset();
    ASSERT_TRUE((*journal)->Append(entry).ok());
    entry.domain_uuid = "u-2";
    entry.event = "detach";
    entry.strategy = engine::Strategy::kMmio;
    ASSERT_TRUE((*journal)->Append(entry).ok());
    EXPECT_EQ((*journal)->LastStrategy("u-1"), engine::Strategy::kCr8);
  }
  auto journal = Journal::Open(path);
  ASSERT_TRUE(journal.ok());
  EXPECT_EQ((*journal)->LastStrategy("u-1"), engine::Strategy::kCr8);
  EXPECT_EQ((*journal)->LastStrategy("u-2"), engine::Strategy::kMmio);
  EXPECT_EQ((*journal)->LastStrategy("u-3"), std::nullopt);
  auto entries = Journal::ReadAll(path, nullptr);
  ASSERT_TRUE(entries.ok());
  ASSERT_EQ(entries->size(), 3u);
  EXPECT_EQ((*entries)[2].strategy, engine::Strategy::kMmio);
  EXPECT_EQ((*entries)[1].strategy, std::nullopt);
}

TEST(JournalTest, AppendAllWritesEveryLineAndAnUnknownStrategyIsRejectedOnRead) {
  TestDir dir;
  const std::string path = dir.File(Journal::kFileName);
  auto journal = Journal::Open(path);
  ASSERT_TRUE(journal.ok());
  std::vector<JournalEntry> batch(3);
  for (size_t i = 0; i < batch.size(); ++i) {
    batch[i].time = absl::Now();
    batch[i].event = absl::StrCat("e", i);
  }
  ASSERT_TRUE((*journal)->AppendAll(batch).ok());
  ASSERT_TRUE((*journal)->AppendAll({}).ok());
  auto entries = Journal::ReadAll(path, nullptr);
  ASSERT_TRUE(entries.ok());
  ASSERT_EQ(entries->size(), 3u);
  EXPECT_EQ((*entries)[2].event, "e2");
  EXPECT_FALSE(
      JournalEntryFromJson(R"({"time":"2026-01-01T00:00:00Z","event":"detach","strategy":"warp"})")
          .ok());
}

TEST(JournalTest, ReadingSkipsTornAndForeignLinesWithReasons) {
  TestDir dir;
  const std::string path = dir.File(Journal::kFileName);
  {
    auto journal = Journal::Open(path);
    ASSERT_TRUE(journal.ok());
    JournalEntry entry;
    entry.time = absl::Now();
    entry.event = "enable";
    ASSERT_TRUE((*journal)->Append(entry).ok());
  }
  {
    std::ofstream out(path, std::ios::app);
    out << "[1,2,3]\n";
    out << "{\"time\":\"2024-01-01T00:00:00Z\",\"event\":\"site\",\"site\":{\"id\":1}}\n";
    out << "{\"time\":\"2024-01-01T00:00:00Z\",\"event\":\"si";  // torn by a crash
  }
  std::vector<JournalSkip> skipped;
  auto entries = Journal::ReadAll(path, &skipped);
  ASSERT_TRUE(entries.ok());
  EXPECT_EQ(entries->size(), 1u);
  ASSERT_EQ(skipped.size(), 3u);
  EXPECT_EQ(skipped[0].line_number, 2);
  EXPECT_EQ(skipped[2].line_number, 4);
  for (const JournalSkip& skip : skipped) EXPECT_FALSE(skip.reason.empty());
}

TEST(JournalTest, OpenInAMissingDirectorySaysWhatToFix) {
  auto journal = Journal::Open("/nonexistent-tprd-dir/journal.jsonl");
  ASSERT_FALSE(journal.ok());
  EXPECT_THAT(std::string(journal.status().message()), ::testing::HasSubstr("state directory"));
}

}  // namespace
}  // namespace tprd::daemon

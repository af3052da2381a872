// The intent element: what tprd writes, what it accepts back from libvirt (and from operators
// who write it by hand), and that anything else is refused with a clear error, never a crash.
#include "daemon/domain/intent.h"

#include <random>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tprd::daemon {
namespace {

using ::testing::HasSubstr;

TEST(IntentXml, WritesOneEmptyElementWithTheStrategy) {
  EXPECT_EQ(IntentToXml(Intent{RequestedStrategy::kMmio, absl::ZeroDuration()}),
            "<intent strategy=\"mmio\"/>");
  EXPECT_EQ(IntentToXml(Intent{RequestedStrategy::kAuto, absl::Milliseconds(2500)}),
            "<intent strategy=\"auto\" discovery_budget_ms=\"2500\"/>");
}

TEST(IntentXml, ReadsBackWhatItWrites) {
  for (RequestedStrategy strategy : {RequestedStrategy::kAuto, RequestedStrategy::kMmio,
                                     RequestedStrategy::kCr8, RequestedStrategy::kExact}) {
    for (absl::Duration budget :
         {absl::ZeroDuration(), absl::Milliseconds(1), absl::Milliseconds(kMaxIntentBudgetMs)}) {
      const Intent intent{strategy, budget};
      auto parsed = ParseIntentXml(IntentToXml(intent));
      ASSERT_TRUE(parsed.ok()) << parsed.status();
      EXPECT_EQ(*parsed, intent);
    }
  }
}

// The forms libvirt returns (virsh metadata, checked by hand on libvirt 9.0) and the forms an
// operator may write in the domain XML.
TEST(IntentXml, AcceptsWhatLibvirtAndOperatorsWrite) {
  const char* accepted[] = {
      "<intent strategy=\"cr8\"/>",
      "<intent strategy=\"cr8\"/>\n",
      "  <intent strategy='cr8' ></intent>",
      "<intent\n  strategy = \"cr8\"\n/>",
      "<intent xmlns:tprd=\"https://github.com/tprd/tprd/intent/1\" strategy=\"cr8\"/>",
      "<tprd:intent xmlns:tprd=\"https://github.com/tprd/tprd/intent/1\" strategy=\"cr8\"/>",
      "<intent xmlns=\"https://github.com/tprd/tprd/intent/1\" strategy=\"cr8\"></intent >",
  };
  for (const char* xml : accepted) {
    auto parsed = ParseIntentXml(xml);
    ASSERT_TRUE(parsed.ok()) << xml << ": " << parsed.status();
    EXPECT_EQ(parsed->strategy, RequestedStrategy::kCr8) << xml;
    EXPECT_EQ(parsed->discovery_budget, absl::ZeroDuration()) << xml;
  }
}

TEST(IntentXml, RefusesAnythingElseWithAClearError) {
  const std::pair<const char*, const char*> refused[] = {
      {"", "does not start with an element"},
      {"strategy=\"mmio\"", "does not start with an element"},
      {"<other strategy=\"mmio\"/>", "not intent"},
      {"<intents strategy=\"mmio\"/>", "not intent"},
      {"<a:b:intent strategy=\"mmio\"/>", "not intent"},
      {"<intent/>", "no strategy attribute"},
      {"<intent strategy=\"fast\"/>", "none of auto, mmio, cr8, exact"},
      {"<intent strategy=\"MMIO\"/>", "none of auto, mmio, cr8, exact"},
      {"<intent strategy=\"a&amp;b\"/>", "none of auto, mmio, cr8, exact"},
      {"<intent strategy=\"mmio\" strategy=\"cr8\"/>", "given twice"},
      {"<intent strategy=\"mmio\" colour=\"red\"/>", "unknown attribute"},
      {"<intent xmlns:foo=\"urn:foo\" foo:bar=\"1\" strategy=\"mmio\"/>", "unknown attribute"},
      {"<intent strategy=mmio/>", "no quoted value"},
      {"<intent strategy=\"mmio/>", "no quoted value"},
      {"<intent strategy/>", "has no value"},
      {"<intent strategy=\"mmio\"", "not closed"},
      {"<intent strategy=\"mmio\"x=\"1\"/>", "unexpected text"},
      {"<intent strategy=\"mmio\"><child/></intent>", "must be empty"},
      {"<intent strategy=\"mmio\">text</intent>", "must be empty"},
      {"<intent strategy=\"mmio\"><!-- c --></intent>", "must be empty"},
      {"<intent strategy=\"mmio\"></other>", "must be empty"},
      {"<intent strategy=\"mmio\"></intent", "not closed"},
      {"<intent strategy=\"mmio\"/><intent strategy=\"cr8\"/>", "text follows"},
      {"<intent strategy=\"mmio\" discovery_budget_ms=\"0\"/>", "from 1 to"},
      {"<intent strategy=\"mmio\" discovery_budget_ms=\"-5\"/>", "from 1 to"},
      {"<intent strategy=\"mmio\" discovery_budget_ms=\"86400001\"/>", "from 1 to"},
      {"<intent strategy=\"mmio\" discovery_budget_ms=\"99999999999999999999\"/>", "from 1 to"},
      {"<intent strategy=\"mmio\" discovery_budget_ms=\" 5\"/>", "from 1 to"},
      {"<intent strategy=\"mmio\" discovery_budget_ms=\"5ms\"/>", "from 1 to"},
  };
  for (const auto& [xml, why] : refused) {
    auto parsed = ParseIntentXml(xml);
    ASSERT_FALSE(parsed.ok()) << xml;
    EXPECT_TRUE(absl::IsInvalidArgument(parsed.status())) << xml << ": " << parsed.status();
    EXPECT_THAT(parsed.status().message(), HasSubstr(why)) << xml;
    EXPECT_THAT(parsed.status().message(), HasSubstr("tprd's intent metadata")) << xml;
  }
}

TEST(IntentXml, QuotesHostileTextShortAndEscaped) {
  std::string hostile = "<intent strategy=\"";
  hostile += std::string("\x1b[2J\n\0\xff", 6);
  hostile += std::string(1000, 'A') + "\"/>";
  auto parsed = ParseIntentXml(hostile);
  ASSERT_FALSE(parsed.ok());
  const std::string message(parsed.status().message());
  EXPECT_LT(message.size(), 600u) << message;
  EXPECT_EQ(message.find('\x1b'), std::string::npos) << message;
  EXPECT_EQ(message.find('\0'), std::string::npos);
  EXPECT_EQ(message.find('\n'), std::string::npos) << message;
}

TEST(IntentXml, RefusesOversizedMetadataUnread) {
  const std::string big = "<intent strategy=\"mmio\"" + std::string(kMaxIntentXml, ' ') + "/>";
  auto parsed = ParseIntentXml(big);
  ASSERT_FALSE(parsed.ok());
  EXPECT_THAT(parsed.status().message(), HasSubstr("bytes long"));
}

// Garbage of every shape: an answer each time, never a crash (the sanitizer build runs this).
TEST(IntentXml, SurvivesRandomAndTruncatedInput) {
  const std::string valid =
      "<tprd:intent xmlns:tprd=\"https://github.com/tprd/tprd/intent/1\" strategy=\"exact\" "
      "discovery_budget_ms=\"15000\"></tprd:intent>";
  for (size_t cut = 0; cut <= valid.size(); ++cut) {
    auto parsed = ParseIntentXml(valid.substr(0, cut));
    EXPECT_EQ(parsed.ok(), cut == valid.size()) << valid.substr(0, cut);
  }
  std::mt19937 random(18);
  const std::string alphabet = "<>/=\"' \t\nintentstrategymmio:xmlns0123456789&;!-?\x80\xff";
  for (int round = 0; round < 20000; ++round) {
    std::string text = valid;
    const int edits = 1 + static_cast<int>(random() % 6);
    for (int e = 0; e < edits && !text.empty(); ++e) {
      const size_t at = random() % text.size();
      switch (random() % 3) {
        case 0:
          text[at] = alphabet[random() % alphabet.size()];
          break;
        case 1:
          text.erase(at, 1 + random() % 8);
          break;
        default:
          text.insert(at, 1, alphabet[random() % alphabet.size()]);
          break;
      }
    }
    auto parsed = ParseIntentXml(text);
    if (!parsed.ok()) {
      EXPECT_TRUE(absl::IsInvalidArgument(parsed.status())) << parsed.status();
    }
  }
}

}  // namespace
}  // namespace tprd::daemon

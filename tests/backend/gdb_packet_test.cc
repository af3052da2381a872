#include "kvm-backend/core/gdb_packet.h"

#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace tprd::backend {
namespace {

using Kind = GdbPacketEvent::Kind;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

std::vector<GdbPacketEvent> FeedAll(GdbPacketParser& parser, std::string_view bytes) {
  std::vector<GdbPacketEvent> events;
  parser.Feed(bytes, events);
  return events;
}

TEST(GdbPacketTest, EncodesWithChecksum) {
  EXPECT_EQ(EncodeGdbPacket("OK"), "$OK#9a");
  EXPECT_EQ(EncodeGdbPacket(""), "$#00");
  EXPECT_EQ(EncodeGdbPacket("m1000,4"), "$m1000,4#8e");
}

TEST(GdbPacketTest, EscapesSpecialBytes) {
  // `}` 0x7d followed by the byte XOR 0x20: # 0x23 -> 0x03, $ 0x24 -> 0x04, } -> ], * -> 0x0a.
  EXPECT_EQ(EscapeGdbBinary("a#b$c}d*"), std::string("a}\x03"
                                                     "b}\x04"
                                                     "c}]d}\x0a",
                                                     12));
  EXPECT_EQ(*UnescapeGdbBinary(EscapeGdbBinary("a#b$c}d*")), "a#b$c}d*");
  EXPECT_FALSE(UnescapeGdbBinary("abc}").ok());
}

TEST(GdbPacketTest, ParsesPacketsAcksAndNotifications) {
  GdbPacketParser parser;
  std::vector<GdbPacketEvent> events = FeedAll(parser, "+$OK#9a-%Stop:T05#00");
  ASSERT_EQ(events.size(), 4u);
  EXPECT_EQ(events[0].kind, Kind::kAck);
  EXPECT_EQ(events[1], (GdbPacketEvent{Kind::kPacket, "OK"}));
  EXPECT_EQ(events[2].kind, Kind::kNack);
  EXPECT_EQ(events[3].kind, Kind::kBadChecksum);
  std::string notification = EncodeGdbPacket("Stop:T05");
  notification[0] = '%';
  EXPECT_THAT(FeedAll(parser, notification),
              ElementsAre(GdbPacketEvent{Kind::kNotification, "Stop:T05"}));
}

TEST(GdbPacketTest, ParsesAcrossEverySplit) {
  const std::string wire = "+" + EncodeGdbPacket("T05thread:p01.02;") + EncodeGdbPacket("OK");
  for (size_t split = 0; split <= wire.size(); ++split) {
    GdbPacketParser parser;
    std::vector<GdbPacketEvent> events;
    parser.Feed(wire.substr(0, split), events);
    parser.Feed(wire.substr(split), events);
    EXPECT_THAT(events, ElementsAre(GdbPacketEvent{Kind::kAck, ""},
                                    GdbPacketEvent{Kind::kPacket, "T05thread:p01.02;"},
                                    GdbPacketEvent{Kind::kPacket, "OK"}))
        << "split at " << split;
  }
}

TEST(GdbPacketTest, ExpandsRunLength) {
  // `0* ` is `0` and 3 more (space is 32 = 29 + 3).
  GdbPacketParser parser;
  std::string raw = "0* 1";
  uint8_t sum = 0;
  for (char c : raw) sum += static_cast<uint8_t>(c);
  char wire[32];
  snprintf(wire, sizeof(wire), "$%s#%02x", raw.c_str(), sum);
  EXPECT_THAT(FeedAll(parser, wire), ElementsAre(GdbPacketEvent{Kind::kPacket, "00001"}));
  EXPECT_EQ(*ExpandGdbRunLength("x*\"", 100), std::string(6, 'x'));  // '"' = 34 -> 5 more
  EXPECT_FALSE(ExpandGdbRunLength("*!", 100).ok());                  // nothing to repeat
  EXPECT_FALSE(ExpandGdbRunLength("a*", 100).ok());                  // no count
  EXPECT_FALSE(ExpandGdbRunLength("a*\x01", 100).ok());              // negative count
  EXPECT_TRUE(absl::IsResourceExhausted(ExpandGdbRunLength("a*~a*~", 100).status()));
  // An escaped `*` is data, not a repeat.
  EXPECT_EQ(*ExpandGdbRunLength("}\x0a"
                                "b",
                                100),
            "}\x0a"
            "b");
}

TEST(GdbPacketTest, MalformedRunLengthIsAnEventNotACrash) {
  GdbPacketParser parser;
  std::vector<GdbPacketEvent> events = FeedAll(parser, "$*a#8b");
  ASSERT_EQ(events.size(), 1u);
  EXPECT_EQ(events[0].kind, Kind::kMalformed);
}

TEST(GdbPacketTest, SkipsStrayBytesAndResynchronisesOnNewStart) {
  GdbPacketParser parser;
  EXPECT_THAT(FeedAll(parser, "garbage\x03$trunc$OK#9a"),
              ElementsAre(GdbPacketEvent{Kind::kPacket, "OK"}));
  EXPECT_EQ(parser.stray_bytes(), 8u + 6u);
  EXPECT_FALSE(parser.mid_packet());
}

TEST(GdbPacketTest, PercentInsideAPacketIsData) {
  GdbPacketParser parser;
  EXPECT_THAT(FeedAll(parser, EncodeGdbPacket("a%b")),
              ElementsAre(GdbPacketEvent{Kind::kPacket, "a%b"}));
}

TEST(GdbPacketTest, RejectsOversizedPacketWithoutGrowing) {
  GdbPacketParser parser(16);
  std::string big = EncodeGdbPacket(std::string(100, 'a'));
  std::vector<GdbPacketEvent> events = FeedAll(parser, big + EncodeGdbPacket("OK"));
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].kind, Kind::kOversized);
  EXPECT_EQ(events[1], (GdbPacketEvent{Kind::kPacket, "OK"}));
}

TEST(GdbPacketTest, TruncatedPacketStaysPendingUntilReset) {
  GdbPacketParser parser;
  EXPECT_THAT(FeedAll(parser, "$OK#9"), IsEmpty());
  EXPECT_TRUE(parser.mid_packet());
  parser.Reset();
  EXPECT_FALSE(parser.mid_packet());
  EXPECT_THAT(FeedAll(parser, "a$OK#9a"), ElementsAre(GdbPacketEvent{Kind::kPacket, "OK"}));
}

TEST(GdbPacketTest, HexRoundTripAndErrors) {
  std::vector<uint8_t> bytes = {0x00, 0x7f, 0x80, 0xff};
  EXPECT_EQ(HexEncode(bytes), "007f80ff");
  EXPECT_EQ(*HexDecode("007F80ff"), bytes);
  EXPECT_FALSE(HexDecode("abc").ok());
  EXPECT_FALSE(HexDecode("zz").ok());
  EXPECT_EQ(*ParseGdbHex("ffe00080"), 0xffe00080u);
  EXPECT_FALSE(ParseGdbHex("").ok());
  EXPECT_FALSE(ParseGdbHex("0x1").ok());
  EXPECT_FALSE(ParseGdbHex("11112222333344445").ok());
}

TEST(GdbPacketTest, SplitsFields) {
  EXPECT_THAT(SplitGdbFields("a;;b;", ';', true), ElementsAre("a", "b"));
  EXPECT_THAT(SplitGdbFields("a,,b", ',', false), ElementsAre("a", "", "b"));
}

}  // namespace
}  // namespace tprd::backend

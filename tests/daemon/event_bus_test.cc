#include "daemon/events/event_bus.h"

#include "gtest/gtest.h"

namespace tprd::daemon {
namespace {

DomainEvent EventFor(const std::string& uuid, const std::string& message) {
  DomainEvent event;
  event.kind = DomainEvent::Kind::kState;
  event.time = absl::Now();
  event.domain.uuid = uuid;
  event.domain.name = "dom-" + uuid;
  event.message = message;
  return event;
}

TEST(EventBusTest, DomainSubscriptionSeesOnlyItsDomain) {
  EventBus bus;
  auto all = bus.Subscribe("");
  auto only_a = bus.Subscribe("a");
  bus.Publish(EventFor("a", "one"));
  bus.Publish(EventFor("b", "two"));

  auto first = all->Next(absl::Seconds(5));
  auto second = all->Next(absl::Seconds(5));
  ASSERT_TRUE(first && second);
  EXPECT_EQ(first->message, "one");
  EXPECT_EQ(second->message, "two");

  auto mine = only_a->Next(absl::Seconds(5));
  ASSERT_TRUE(mine);
  EXPECT_EQ(mine->message, "one");
  EXPECT_FALSE(only_a->Next(absl::ZeroDuration()).has_value());
}

TEST(EventBusTest, SlowSubscriberLosesOldestAndIsToldHowMany) {
  EventBus bus;
  auto slow = bus.Subscribe("", /*capacity=*/2);
  for (int i = 0; i < 5; ++i) bus.Publish(EventFor("a", std::to_string(i)));
  auto lost = slow->Next(absl::Seconds(5));
  ASSERT_TRUE(lost);
  EXPECT_EQ(lost->kind, DomainEvent::Kind::kEventsLost);
  EXPECT_NE(lost->message.find("3 events"), std::string::npos) << lost->message;
  EXPECT_EQ(slow->Next(absl::Seconds(5))->message, "3");
  EXPECT_EQ(slow->Next(absl::Seconds(5))->message, "4");
}

TEST(EventBusTest, DroppedSubscriptionLeavesTheBus) {
  EventBus bus;
  {
    auto subscription = bus.Subscribe("");
    EXPECT_EQ(bus.SubscriberCount(), 1u);
  }
  EXPECT_EQ(bus.SubscriberCount(), 0u);
  bus.Publish(EventFor("a", "nobody listens"));  // must not touch the freed subscription
}

}  // namespace
}  // namespace tprd::daemon

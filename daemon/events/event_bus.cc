#include "daemon/events/event_bus.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace tprd::daemon {

EventSubscription::EventSubscription(EventBus* bus, std::string domain_uuid, size_t capacity)
    : bus_(bus), domain_uuid_(std::move(domain_uuid)), capacity_(std::max<size_t>(capacity, 1)) {}

EventSubscription::~EventSubscription() { bus_->Unsubscribe(this); }

void EventSubscription::Deliver(const DomainEvent& event) {
  if (!domain_uuid_.empty() && event.domain.uuid != domain_uuid_) return;
  absl::MutexLock lock(&mu_);
  if (queue_.size() >= capacity_) {
    queue_.pop_front();
    ++lost_;
  }
  queue_.push_back(event);
}

std::optional<DomainEvent> EventSubscription::Next(absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || lost_; };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  if (lost_ > 0) {
    DomainEvent lost;
    lost.kind = DomainEvent::Kind::kEventsLost;
    lost.time = absl::Now();
    lost.message = absl::StrCat(lost_, " events dropped: this watcher fell behind");
    lost_ = 0;
    return lost;
  }
  if (queue_.empty()) return std::nullopt;
  DomainEvent event = std::move(queue_.front());
  queue_.pop_front();
  return event;
}

std::unique_ptr<EventSubscription> EventBus::Subscribe(const std::string& domain_uuid,
                                                       size_t capacity) {
  std::unique_ptr<EventSubscription> subscription(
      new EventSubscription(this, domain_uuid, capacity));
  absl::MutexLock lock(&mu_);
  subscriptions_.push_back(subscription.get());
  return subscription;
}

void EventBus::Publish(const DomainEvent& event) {
  absl::MutexLock lock(&mu_);
  for (EventSubscription* subscription : subscriptions_) subscription->Deliver(event);
}

size_t EventBus::SubscriberCount() {
  absl::MutexLock lock(&mu_);
  return subscriptions_.size();
}

void EventBus::Unsubscribe(EventSubscription* subscription) {
  absl::MutexLock lock(&mu_);
  subscriptions_.erase(std::remove(subscriptions_.begin(), subscriptions_.end(), subscription),
                       subscriptions_.end());
}

}  // namespace tprd::daemon

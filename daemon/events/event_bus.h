// Fan-out of domain events (site changes, state changes, lifecycle) to WatchEvents streams.
// Publishers never block on a slow subscriber: each subscription has a bounded queue and, when
// it overflows, drops the oldest events and reports how many were lost.
#ifndef TPRD_DAEMON_EVENTS_EVENT_BUS_H_
#define TPRD_DAEMON_EVENTS_EVENT_BUS_H_

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/domain/domain_controller.h"
#include "daemon/domain/domain_state.h"
#include "daemon/domain/hypervisor.h"

namespace tprd::daemon {

// What a WatchEvents subscriber gets. What it adds to ControllerEvent: when, which domain and in
// which state, and the events no session makes (state changes, lifecycle, lost events), so that
// one bus serves every domain.
struct DomainEvent {
  enum class Kind : uint8_t { kSite, kState, kLifecycle, kError, kEventsLost };
  Kind kind = Kind::kState;
  absl::Time time;
  DomainInfo domain;
  std::optional<engine::ManagedSite> site;  // kSite
  DomainState state = DomainState::kUnpatched;
  std::string lifecycle;  // kLifecycle: LifecycleName()
  std::string message;
};

class EventBus;

class EventSubscription {
 public:
  ~EventSubscription();
  EventSubscription(const EventSubscription&) = delete;
  EventSubscription& operator=(const EventSubscription&) = delete;

  // The next event, waiting up to `timeout`; nullopt on timeout. After overflow, the first
  // event returned is a kEventsLost saying how many were dropped.
  std::optional<DomainEvent> Next(absl::Duration timeout);

 private:
  friend class EventBus;
  EventSubscription(EventBus* bus, std::string domain_uuid, size_t capacity);
  void Deliver(const DomainEvent& event);

  EventBus* const bus_;
  const std::string domain_uuid_;  // empty: every domain
  const size_t capacity_;
  absl::Mutex mu_;
  std::deque<DomainEvent> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t lost_ ABSL_GUARDED_BY(mu_) = 0;
};

class EventBus {
 public:
  static constexpr size_t kDefaultCapacity = 1024;

  // `domain_uuid` empty: every domain's events.
  std::unique_ptr<EventSubscription> Subscribe(const std::string& domain_uuid,
                                               size_t capacity = kDefaultCapacity);
  void Publish(const DomainEvent& event);
  size_t SubscriberCount();

 private:
  friend class EventSubscription;
  void Unsubscribe(EventSubscription* subscription);

  absl::Mutex mu_;
  std::vector<EventSubscription*> subscriptions_ ABSL_GUARDED_BY(mu_);
};

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_EVENTS_EVENT_BUS_H_

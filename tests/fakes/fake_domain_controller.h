// In-memory stand-ins for a domain's patching session (FakeDomainController) and for the
// hypervisor's domain list (FakeHypervisor), for testing the daemon's actors, registry and
// service without a guest. Each fake domain's guest is a FakeGuest the test keeps a handle to,
// so it can script behaviour (errors, a slow enable, stop events) and inspect what the daemon
// did (sites, strategy word, detaches) even after the controller is gone.
#ifndef TPRD_TESTS_FAKES_FAKE_DOMAIN_CONTROLLER_H_
#define TPRD_TESTS_FAKES_FAKE_DOMAIN_CONTROLLER_H_

#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "daemon/domain/domain_controller.h"
#include "daemon/domain/hypervisor.h"
#include "daemon/engine/patch_recorder.h"

namespace tprd::fakes {

// The fake guest's truth, shared by the test and every controller opened on it.
struct FakeGuest {
  std::mutex mu;
  std::condition_variable changed;

  // What a scan finds: patchable candidates (Enable patches them all) ...
  std::vector<engine::ManagedSite> candidates;
  // ... and look-alikes it reports but never patches (each with its note saying why).
  std::vector<engine::ManagedSite> unpatchable;
  bool cr8legacy = false;

  // Guest memory: the blob's presence, its strategy word, the sites in its table.
  bool blob_present = false;
  engine::Strategy strategy_word = engine::Strategy::kExact;
  engine::Strategy chosen_strategy = engine::Strategy::kExact;  // what tprd keeps it at
  std::vector<engine::ManagedSite> sites;
  std::set<uint32_t> tampered;  // site ids whose bytes changed behind tprd's back
  bool traps_armed = false;
  // The session's "before" comes from an APIC trace (as the real one's under QEMU), not only the
  // learning window; or, with apic_trace_error set, the trace was refused with that message.
  bool apic_trace_before = false;
  std::string apic_trace_error;

  // Scripted behaviour.
  absl::Status open_error;    // OpenController fails with this
  absl::Status enable_error;  // Enable fails with this
  absl::Status poll_error;    // the next Poll fails with this (then it is cleared)
  bool hold_enable = false;   // Enable blocks until released (a busy actor)
  bool enable_entered = false;
  std::optional<engine::Strategy> last_adopt_hint;  // what the daemon passed to Adopt
  bool hold_adopt = false;  // Adopt blocks until released (a daemon still adopting at start)
  bool adopt_entered = false;
  std::deque<daemon::ControllerEvent> poll_events;  // the next Poll returns these

  // What the daemon did.
  int opens = 0, adopts = 0, enables = 0, polls = 0, detaches = 0, abandons = 0, interrupts = 0;
  std::string last_detach_reason;
  engine::PatchRecorder* recorder = nullptr;

  // Test helpers. Each waits at most `timeout` and returns whether the condition came true.
  bool WaitUntil(const std::function<bool()>& condition,
                 std::chrono::milliseconds timeout = std::chrono::seconds(10));
  void ReleaseEnable();
  void ReleaseAdopt();
  void PushPollEvent(daemon::ControllerEvent event);
};

// Adds `count` patchable candidates (ids from 0) of varied forms to `guest`.
void AddFakeCandidates(FakeGuest& guest, int count);

class FakeDomainController : public daemon::DomainController {
 public:
  FakeDomainController(std::shared_ptr<FakeGuest> guest, engine::PatchRecorder* recorder);

  absl::StatusOr<bool> Adopt(std::optional<daemon::RequestedStrategy> strategy_hint) override;
  absl::StatusOr<std::vector<engine::ManagedSite>> Enable(
      const daemon::EnableOptions& options) override;
  absl::StatusOr<daemon::RollbackResult> Rollback(const std::vector<uint32_t>& site_ids,
                                                  bool force) override;
  absl::StatusOr<std::vector<engine::ManagedSite>> ListSites() override;
  absl::StatusOr<std::vector<engine::ManagedSite>> Scan() override;
  daemon::ControllerStatus Status() override;
  absl::StatusOr<std::vector<daemon::ControllerEvent>> Poll(absl::Duration timeout) override;
  void Interrupt() override;
  absl::Status Detach(const std::string& reason) override;
  void Abandon(const std::string& reason) override;

 private:
  bool PatchedLocked() const;

  std::shared_ptr<FakeGuest> guest_;
  engine::PatchRecorder* recorder_;
  uint64_t traps_handled_ = 0;
  bool interrupted_ = false;  // guarded by guest_->mu
};

class FakeHypervisor : public daemon::Hypervisor {
 public:
  // Adds a domain (ID assigned when running) and returns its guest.
  std::shared_ptr<FakeGuest> AddDomain(const std::string& name, const std::string& uuid,
                                       bool running);
  // Changes a domain's running state and delivers the lifecycle event to the handler.
  // `from_saved_state`: a kStarted from a restore or a managedsave start.
  void EmitLifecycle(const std::string& name, daemon::LifecycleKind kind,
                     bool from_saved_state = false);
  // Delivers the event and leaves the domain's state as it was: libvirt's answer to a lookup
  // that ran before its event (QEMU closes the gdbstub as it exits, before libvirt reaps it).
  void DeliverLifecycleOnly(const std::string& name, daemon::LifecycleKind kind);
  // libvirt's lookup already answers `running` while its lifecycle event is still to come.
  void SetRunningWithoutEvent(const std::string& name, bool running);
  // libvirt holds the domain paused for a reason of its own (a copy of its state, a revert) until
  // its next running event.
  void SetHeldPaused(const std::string& name, bool held);
  void SetUnavailable(bool unavailable);
  // The domain's intent metadata as the daemon would read it (nullopt: none).
  void SetIntentXml(const std::string& name, std::optional<std::string> xml);
  std::optional<std::string> IntentXml(const std::string& name);
  // Intent reads and writes fail with this while it is not OK.
  void SetIntentError(absl::Status error);
  int intent_writes();

  absl::StatusOr<std::vector<daemon::DomainInfo>> ListDomains() override;
  absl::StatusOr<daemon::DomainInfo> LookupDomain(const std::string& reference) override;
  absl::StatusOr<std::unique_ptr<daemon::DomainController>> OpenController(
      const daemon::DomainInfo& domain, engine::PatchRecorder* recorder) override;
  absl::StatusOr<std::optional<std::string>> ReadIntentXml(const std::string& uuid) override;
  absl::Status WriteIntentXml(const std::string& uuid,
                              const std::optional<std::string>& xml) override;
  void SetLifecycleHandler(std::function<void(const daemon::LifecycleEvent&)> handler) override;

 private:
  struct Entry {
    daemon::DomainInfo info;
    std::shared_ptr<FakeGuest> guest;
    std::optional<std::string> intent_xml;
  };
  Entry* FindByUuid(const std::string& uuid);  // needs mu_
  std::mutex mu_;
  std::map<std::string, Entry> domains_;  // by name
  int next_id_ = 1;
  bool unavailable_ = false;
  absl::Status intent_error_;
  int intent_writes_ = 0;
  std::function<void(const daemon::LifecycleEvent&)> handler_;
};

}  // namespace tprd::fakes

#endif  // TPRD_TESTS_FAKES_FAKE_DOMAIN_CONTROLLER_H_

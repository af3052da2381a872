#include "tests/fakes/fake_domain_controller.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace tprd::fakes {

using daemon::ControllerEvent;
using daemon::ControllerStatus;
using daemon::DomainInfo;
using daemon::RequestedStrategy;
using engine::ManagedSite;

bool FakeGuest::WaitUntil(const std::function<bool()>& condition,
                          std::chrono::milliseconds timeout) {
  std::unique_lock<std::mutex> lock(mu);
  return changed.wait_for(lock, timeout, condition);
}

void FakeGuest::ReleaseEnable() {
  std::lock_guard<std::mutex> lock(mu);
  hold_enable = false;
  changed.notify_all();
}

void FakeGuest::ReleaseAdopt() {
  std::lock_guard<std::mutex> lock(mu);
  hold_adopt = false;
  changed.notify_all();
}

void FakeGuest::PushPollEvent(ControllerEvent event) {
  std::lock_guard<std::mutex> lock(mu);
  poll_events.push_back(std::move(event));
  changed.notify_all();
}

void AddFakeCandidates(FakeGuest& guest, int count) {
  for (int i = 0; i < count; ++i) {
    ManagedSite report;
    report.site.id = static_cast<uint32_t>(i);
    report.site.address = 0x80501000u + 0x40u * static_cast<uint32_t>(i);
    if (i % 2 == 0) {
      report.site.form = engine::Form::kMovEaxFromMoffs;
      report.site.original = {0xA1, 0x80, 0x00, 0xFE, 0xFF};
      report.site.patched = {0xE8, 0x10, 0x20, 0x30, 0x40};
      report.disassembly = "mov eax, dword ptr [0xFFFE0080]";
    } else {
      report.site.form = engine::Form::kMovMemFromReg;
      report.site.reg = engine::Gpr::kEcx;
      report.site.original = {0x89, 0x0D, 0x80, 0x00, 0xFE, 0xFF};
      report.site.patched = {0x51, 0xE8, 0x10, 0x20, 0x30, 0x40};
      report.disassembly = "mov dword ptr [0xFFFE0080], ecx";
    }
    report.site.state = engine::SiteState::kCandidate;
    guest.candidates.push_back(report);
  }
}

FakeDomainController::FakeDomainController(std::shared_ptr<FakeGuest> guest,
                                           engine::PatchRecorder* recorder)
    : guest_(std::move(guest)), recorder_(recorder) {}

bool FakeDomainController::PatchedLocked() const {
  return guest_->blob_present &&
         std::any_of(guest_->sites.begin(), guest_->sites.end(), [](const ManagedSite& s) {
           return s.site.state == engine::SiteState::kApplied;
         });
}

absl::StatusOr<bool> FakeDomainController::Adopt(
    std::optional<daemon::RequestedStrategy> strategy_hint) {
  std::unique_lock<std::mutex> lock(guest_->mu);
  guest_->last_adopt_hint.reset();
  if (strategy_hint) {
    switch (*strategy_hint) {
      case daemon::RequestedStrategy::kAuto:
        guest_->last_adopt_hint = engine::Strategy::kMmio;
        break;
      case daemon::RequestedStrategy::kMmio:
        guest_->last_adopt_hint = engine::Strategy::kMmio;
        break;
      case daemon::RequestedStrategy::kCr8:
        guest_->last_adopt_hint = engine::Strategy::kCr8;
        break;
      case daemon::RequestedStrategy::kExact:
        guest_->last_adopt_hint = engine::Strategy::kExact;
        break;
    }
  }
  guest_->adopt_entered = true;
  guest_->changed.notify_all();
  guest_->changed.wait(lock, [this] { return !guest_->hold_adopt; });
  guest_->adopt_entered = false;
  ++guest_->adopts;
  const bool patched = PatchedLocked();
  if (patched) {
    guest_->strategy_word = guest_->chosen_strategy;
    guest_->traps_armed = true;
  }
  guest_->changed.notify_all();
  return patched;
}

absl::StatusOr<std::vector<ManagedSite>> FakeDomainController::Enable(
    const daemon::EnableOptions& options) {
  std::unique_lock<std::mutex> lock(guest_->mu);
  ++guest_->enables;
  guest_->enable_entered = true;
  guest_->changed.notify_all();
  guest_->changed.wait(lock, [this] { return !guest_->hold_enable; });
  guest_->enable_entered = false;
  if (!guest_->enable_error.ok()) return guest_->enable_error;
  engine::Strategy strategy = engine::Strategy::kMmio;
  switch (options.strategy) {
    case RequestedStrategy::kAuto:  // mmio on every guest, as the real controller
      strategy = engine::Strategy::kMmio;
      break;
    case RequestedStrategy::kMmio:
      strategy = engine::Strategy::kMmio;
      break;
    case RequestedStrategy::kCr8:
      if (!guest_->cr8legacy) {
        return absl::FailedPreconditionError(
            "the guest CPU lacks cr8legacy; use --strategy mmio or add cr8legacy to its CPU");
      }
      strategy = engine::Strategy::kCr8;
      break;
    case RequestedStrategy::kExact:
      strategy = engine::Strategy::kExact;
      break;
  }
  if (options.dry_run) return guest_->candidates;
  std::vector<ManagedSite> done;
  for (const ManagedSite& candidate : guest_->candidates) {
    auto existing =
        std::find_if(guest_->sites.begin(), guest_->sites.end(),
                     [&](const ManagedSite& s) { return s.site.id == candidate.site.id; });
    if (existing != guest_->sites.end() && existing->site.state == engine::SiteState::kApplied) {
      done.push_back(*existing);  // already patched: enable is idempotent
      continue;
    }
    ManagedSite site = candidate;
    site.site.state = engine::SiteState::kPending;
    if (recorder_ != nullptr) {
      absl::Status recorded = recorder_->RecordSite(site.site);
      if (!recorded.ok()) return recorded;
    }
    site.site.state = engine::SiteState::kApplied;
    if (recorder_ != nullptr) {
      absl::Status recorded = recorder_->RecordSite(site.site);
      if (!recorded.ok()) return recorded;
    }
    if (existing != guest_->sites.end()) {
      *existing = site;
    } else {
      guest_->sites.push_back(site);
    }
    done.push_back(site);
  }
  guest_->blob_present = true;
  guest_->chosen_strategy = strategy;
  guest_->strategy_word = strategy;
  guest_->traps_armed = true;
  guest_->changed.notify_all();
  return done;
}

absl::StatusOr<daemon::RollbackResult> FakeDomainController::Rollback(
    const std::vector<uint32_t>& site_ids, bool force) {
  std::lock_guard<std::mutex> lock(guest_->mu);
  for (uint32_t id : site_ids) {
    const bool known = std::any_of(guest_->sites.begin(), guest_->sites.end(),
                                   [id](const ManagedSite& s) { return s.site.id == id; });
    if (!known) {
      return absl::NotFoundError(
          absl::StrCat("site ", id, " does not exist on this domain; list them with tprctl sites"));
    }
  }
  daemon::RollbackResult result;
  for (ManagedSite& site : guest_->sites) {
    const bool wanted = site_ids.empty() ||
                        std::find(site_ids.begin(), site_ids.end(), site.site.id) != site_ids.end();
    if (!wanted || site.site.state != engine::SiteState::kApplied) continue;
    if (guest_->tampered.count(site.site.id) > 0 && !force) {
      result.refused.push_back(
          {site.site.id, absl::StrCat("bytes at 0x", absl::Hex(site.site.address),
                                      " changed since patching; use --force to overwrite")});
      continue;
    }
    site.site.state = engine::SiteState::kRolledBack;
    if (recorder_ != nullptr) {
      absl::Status recorded = recorder_->RecordSite(site.site);
      if (!recorded.ok()) return recorded;
    }
    result.rolled_back.push_back(site.site.id);
  }
  guest_->changed.notify_all();
  return result;
}

absl::StatusOr<std::vector<ManagedSite>> FakeDomainController::ListSites() {
  std::lock_guard<std::mutex> lock(guest_->mu);
  return guest_->sites;
}

absl::StatusOr<std::vector<ManagedSite>> FakeDomainController::Scan() {
  std::lock_guard<std::mutex> lock(guest_->mu);
  std::vector<ManagedSite> found = guest_->candidates;
  found.insert(found.end(), guest_->unpatchable.begin(), guest_->unpatchable.end());
  return found;
}

ControllerStatus FakeDomainController::Status() {
  std::lock_guard<std::mutex> lock(guest_->mu);
  ControllerStatus status;
  status.patched = PatchedLocked();
  status.holds_blob = guest_->blob_present;
  status.strategy = guest_->strategy_word;
  status.requested_strategy = status.patched ? guest_->chosen_strategy : engine::Strategy::kExact;
  status.traps_handled = traps_handled_;
  if (status.patched) {
    // What a patched guest's session reports (numbers of the shape the e2e guest shows): the
    // learning window's 400 hits in 16 ms of guest time, and rates over the last second.
    status.learning_hits = 400;
    status.learning_run = absl::Milliseconds(16);
    status.tpr_accesses_per_second_before = 25000;
    if (guest_->apic_trace_before) {
      status.before_trace_tpr_reads = 105000;
      status.before_trace_tpr_writes = 70000;
      status.before_trace_window = absl::Milliseconds(500);
      status.tpr_accesses_per_second_before = 350000;
    }
    status.before_trace_error = guest_->apic_trace_error;
    status.rates = daemon::AccessRates{30000, 120, 2};
    status.tpr_accesses_per_second_after = 120;
    status.handler_accesses_without_apic = 90000;
    status.handler_accesses_to_apic = 300;
    status.unpatched_accesses_seen = 60;
    status.enable_pauses.Add(absl::Milliseconds(180));
  }
  return status;
}

absl::StatusOr<std::vector<ControllerEvent>> FakeDomainController::Poll(absl::Duration timeout) {
  std::unique_lock<std::mutex> lock(guest_->mu);
  ++guest_->polls;
  guest_->changed.notify_all();
  guest_->changed.wait_for(lock, absl::ToChronoNanoseconds(timeout), [this] {
    return interrupted_ || !guest_->poll_events.empty() || !guest_->poll_error.ok();
  });
  interrupted_ = false;
  if (!guest_->poll_error.ok()) {
    absl::Status error = guest_->poll_error;
    guest_->poll_error = absl::OkStatus();
    return error;
  }
  std::vector<ControllerEvent> events(guest_->poll_events.begin(), guest_->poll_events.end());
  guest_->poll_events.clear();
  for (const ControllerEvent& event : events) {
    ++traps_handled_;
    if (event.kind != ControllerEvent::Kind::kSiteChanged || !event.site) continue;
    auto existing =
        std::find_if(guest_->sites.begin(), guest_->sites.end(),
                     [&](const ManagedSite& s) { return s.site.id == event.site->site.id; });
    if (existing != guest_->sites.end()) {
      *existing = *event.site;
    } else {
      guest_->sites.push_back(*event.site);
    }
  }
  return events;
}

void FakeDomainController::Interrupt() {
  std::lock_guard<std::mutex> lock(guest_->mu);
  interrupted_ = true;
  ++guest_->interrupts;
  guest_->changed.notify_all();
}

absl::Status FakeDomainController::Detach(const std::string& reason) {
  std::lock_guard<std::mutex> lock(guest_->mu);
  ++guest_->detaches;
  guest_->last_detach_reason = reason;
  if (guest_->blob_present) guest_->strategy_word = engine::Strategy::kExact;
  guest_->traps_armed = false;
  guest_->changed.notify_all();
  return absl::OkStatus();
}

void FakeDomainController::Abandon(const std::string&) {
  std::lock_guard<std::mutex> lock(guest_->mu);
  ++guest_->abandons;
  guest_->changed.notify_all();
}

std::shared_ptr<FakeGuest> FakeHypervisor::AddDomain(const std::string& name,
                                                     const std::string& uuid, bool running) {
  std::lock_guard<std::mutex> lock(mu_);
  Entry entry;
  entry.info.name = name;
  entry.info.uuid = uuid;
  entry.info.running = running;
  entry.info.id = running ? next_id_++ : -1;
  entry.guest = std::make_shared<FakeGuest>();
  domains_[name] = entry;
  return entry.guest;
}

void FakeHypervisor::EmitLifecycle(const std::string& name, daemon::LifecycleKind kind,
                                   bool from_saved_state) {
  daemon::LifecycleEvent event;
  std::function<void(const daemon::LifecycleEvent&)> handler;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = domains_.find(name);
    if (it == domains_.end()) return;
    Entry& entry = it->second;
    const bool running =
        kind == daemon::LifecycleKind::kStarted || kind == daemon::LifecycleKind::kRebooted ||
        kind == daemon::LifecycleKind::kResumed || kind == daemon::LifecycleKind::kReverted ||
        kind == daemon::LifecycleKind::kArrived;
    if (running && !entry.info.running) entry.info.id = next_id_++;
    if (!running) entry.info.id = -1;
    entry.info.running = running;
    entry.info.held_paused = false;
    // A start may bring a restored guest, a resume keeps the memory, a revert brings whatever
    // the test left in the guest (the snapshot's memory); a migration and a save take the memory
    // along, and one fake guest stands for it on both sides (kMigrated and kArrived, kSaved and
    // the restore's kStarted): the rest reset it.
    if (kind != daemon::LifecycleKind::kStarted && kind != daemon::LifecycleKind::kResumed &&
        kind != daemon::LifecycleKind::kReverted && kind != daemon::LifecycleKind::kMigrated &&
        kind != daemon::LifecycleKind::kSaved && kind != daemon::LifecycleKind::kArrived) {
      // The guest's memory is gone (or reset): so are its patches.
      std::lock_guard<std::mutex> guest_lock(entry.guest->mu);
      entry.guest->blob_present = false;
      entry.guest->sites.clear();
      entry.guest->traps_armed = false;
    }
    event.domain = entry.info;
    event.kind = kind;
    event.from_saved_state = from_saved_state;
    handler = handler_;
  }
  if (handler) handler(event);
}

void FakeHypervisor::DeliverLifecycleOnly(const std::string& name, daemon::LifecycleKind kind) {
  daemon::LifecycleEvent event;
  std::function<void(const daemon::LifecycleEvent&)> handler;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = domains_.find(name);
    if (it == domains_.end()) return;
    event.domain = it->second.info;
    event.kind = kind;
    handler = handler_;
  }
  if (handler) handler(event);
}

void FakeHypervisor::SetRunningWithoutEvent(const std::string& name, bool running) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = domains_.find(name);
  if (it == domains_.end()) return;
  it->second.info.running = running;
  if (!running) it->second.info.id = -1;
}

void FakeHypervisor::SetHeldPaused(const std::string& name, bool held) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = domains_.find(name);
  if (it != domains_.end()) it->second.info.held_paused = held;
}

void FakeHypervisor::SetUnavailable(bool unavailable) {
  std::lock_guard<std::mutex> lock(mu_);
  unavailable_ = unavailable;
}

absl::StatusOr<std::vector<DomainInfo>> FakeHypervisor::ListDomains() {
  std::lock_guard<std::mutex> lock(mu_);
  if (unavailable_) {
    return absl::UnavailableError("cannot reach libvirt at test:///fake; is libvirtd running?");
  }
  std::vector<DomainInfo> domains;
  for (const auto& [name, entry] : domains_) domains.push_back(entry.info);
  return domains;
}

absl::StatusOr<DomainInfo> FakeHypervisor::LookupDomain(const std::string& reference) {
  std::lock_guard<std::mutex> lock(mu_);
  if (unavailable_) {
    return absl::UnavailableError("cannot reach libvirt at test:///fake; is libvirtd running?");
  }
  for (const auto& [name, entry] : domains_) {
    if (entry.info.name == reference || entry.info.uuid == reference ||
        (entry.info.id >= 0 && std::to_string(entry.info.id) == reference)) {
      return entry.info;
    }
  }
  return absl::NotFoundError(absl::StrCat("no domain named \"", reference,
                                          "\" (by name, UUID or ID); list them with "
                                          "tprctl domains"));
}

absl::StatusOr<std::unique_ptr<daemon::DomainController>> FakeHypervisor::OpenController(
    const DomainInfo& domain, engine::PatchRecorder* recorder) {
  std::shared_ptr<FakeGuest> guest;
  {
    std::lock_guard<std::mutex> lock(mu_);
    auto it = domains_.find(domain.name);
    if (it == domains_.end()) return absl::NotFoundError("domain vanished");
    guest = it->second.guest;
  }
  std::lock_guard<std::mutex> lock(guest->mu);
  ++guest->opens;
  guest->recorder = recorder;
  if (!guest->open_error.ok()) return guest->open_error;
  return std::unique_ptr<daemon::DomainController>(
      std::make_unique<FakeDomainController>(guest, recorder));
}

void FakeHypervisor::SetIntentXml(const std::string& name, std::optional<std::string> xml) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = domains_.find(name);
  if (it != domains_.end()) it->second.intent_xml = std::move(xml);
}

std::optional<std::string> FakeHypervisor::IntentXml(const std::string& name) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = domains_.find(name);
  return it == domains_.end() ? std::nullopt : it->second.intent_xml;
}

void FakeHypervisor::SetIntentError(absl::Status error) {
  std::lock_guard<std::mutex> lock(mu_);
  intent_error_ = std::move(error);
}

int FakeHypervisor::intent_writes() {
  std::lock_guard<std::mutex> lock(mu_);
  return intent_writes_;
}

FakeHypervisor::Entry* FakeHypervisor::FindByUuid(const std::string& uuid) {
  for (auto& [name, entry] : domains_) {
    if (entry.info.uuid == uuid) return &entry;
  }
  return nullptr;
}

absl::StatusOr<std::optional<std::string>> FakeHypervisor::ReadIntentXml(const std::string& uuid) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!intent_error_.ok()) return intent_error_;
  Entry* entry = FindByUuid(uuid);
  if (entry == nullptr) return absl::NotFoundError(absl::StrCat("no domain with UUID ", uuid));
  return entry->intent_xml;
}

absl::Status FakeHypervisor::WriteIntentXml(const std::string& uuid,
                                            const std::optional<std::string>& xml) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!intent_error_.ok()) return intent_error_;
  Entry* entry = FindByUuid(uuid);
  if (entry == nullptr) return absl::NotFoundError(absl::StrCat("no domain with UUID ", uuid));
  entry->intent_xml = xml;
  ++intent_writes_;
  return absl::OkStatus();
}

void FakeHypervisor::SetLifecycleHandler(
    std::function<void(const daemon::LifecycleEvent&)> handler) {
  std::lock_guard<std::mutex> lock(mu_);
  handler_ = std::move(handler);
}

}  // namespace tprd::fakes

#include "daemon/actor/domain_registry.h"

#include <fnmatch.h>

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "daemon/domain/intent.h"
#include "daemon/log.h"

namespace tprd::daemon {

DomainRegistry::DomainRegistry(Hypervisor* hypervisor, Journal* journal, EventBus* bus,
                               DomainActorOptions actor_options)
    : hypervisor_(hypervisor), journal_(journal), bus_(bus), actor_options_(actor_options) {
  hypervisor_->SetLifecycleHandler([this](const LifecycleEvent& event) { OnLifecycle(event); });
}

DomainRegistry::~DomainRegistry() {
  hypervisor_->SetLifecycleHandler(nullptr);
  std::map<std::string, std::shared_ptr<DomainActor>> actors;
  {
    absl::MutexLock lock(&mu_);
    actors.swap(actors_);
  }
  actors.clear();  // joins each actor thread outside the lock
}

absl::StatusOr<DomainInfo> DomainRegistry::Resolve(const std::string& reference) {
  if (reference.empty()) {
    return absl::InvalidArgumentError("no domain given: name it by name, UUID or ID");
  }
  // libvirt's C API ends a name at its first NUL: "winxp-01\0junk" would name winxp-01.
  if (reference.find('\0') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("domain reference '", absl::CHexEscape(reference.substr(0, 64)),
                     reference.size() > 64 ? "...'" : "'",
                     " contains a NUL byte; name the domain by name, UUID or ID"));
  }
  // No libvirt domain name is this long (its QEMU driver keeps NAME.xml files); refused before
  // libvirt is asked, and not echoed whole.
  if (reference.size() > kMaxDomainReference) {
    return absl::InvalidArgumentError(
        absl::StrCat("domain reference of ", reference.size(),
                     " bytes is longer than any libvirt name (at most ", kMaxDomainReference,
                     " bytes); name the domain by name, UUID or ID"));
  }
  return hypervisor_->LookupDomain(reference);
}

std::shared_ptr<DomainActor> DomainRegistry::FindActor(const std::string& uuid) {
  absl::MutexLock lock(&mu_);
  auto it = actors_.find(uuid);
  return it == actors_.end() ? nullptr : it->second;
}

void DomainRegistry::ReadIntent(DomainSnapshot& snapshot) {
  snapshot.intent.reset();
  snapshot.intent_error.clear();
  auto xml = hypervisor_->ReadIntentXml(snapshot.domain.uuid);
  if (!xml.ok()) {
    // A domain undefined since it was listed has no intent to show.
    if (!absl::IsNotFound(xml.status())) {
      snapshot.intent_error = absl::StrCat("cannot read the intent: ", xml.status().message());
    }
    return;
  }
  if (!xml->has_value()) return;
  absl::StatusOr<Intent> intent = ParseIntentXml(**xml);
  if (intent.ok()) {
    snapshot.intent = *intent;
  } else {
    snapshot.intent_error = std::string(intent.status().message());
  }
}

absl::StatusOr<std::vector<DomainSnapshot>> DomainRegistry::ListDomains() {
  auto domains = hypervisor_->ListDomains();
  if (!domains.ok()) return domains.status();
  std::vector<DomainSnapshot> snapshots;
  for (const DomainInfo& domain : *domains) {
    if (auto actor = FindActor(domain.uuid)) {
      DomainSnapshot snapshot = actor->Snapshot();
      snapshot.domain = domain;  // the hypervisor's word on running/ID is fresher
      snapshots.push_back(std::move(snapshot));
    } else {
      DomainSnapshot snapshot;
      snapshot.domain = domain;
      snapshot.state = domain.running ? DomainState::kUnpatched : DomainState::kGone;
      snapshots.push_back(std::move(snapshot));
    }
    ReadIntent(snapshots.back());
  }
  std::sort(snapshots.begin(), snapshots.end(),
            [](const DomainSnapshot& a, const DomainSnapshot& b) {
              return a.domain.name < b.domain.name;
            });
  return snapshots;
}

absl::StatusOr<DomainSnapshot> DomainRegistry::Describe(const std::string& reference) {
  auto domain = Resolve(reference);
  if (!domain.ok()) return domain.status();
  if (auto actor = FindActor(domain->uuid)) {
    DomainSnapshot snapshot = actor->Snapshot();
    snapshot.domain.running = domain->running;
    snapshot.domain.id = domain->id;
    ReadIntent(snapshot);
    return snapshot;
  }
  DomainSnapshot snapshot;
  snapshot.domain = *domain;
  snapshot.state = domain->running ? DomainState::kUnpatched : DomainState::kGone;
  ReadIntent(snapshot);
  return snapshot;
}

absl::StatusOr<std::shared_ptr<DomainActor>> DomainRegistry::ActorFor(
    const std::string& reference) {
  auto domain = Resolve(reference);
  if (!domain.ok()) return domain.status();
  absl::MutexLock lock(&mu_);
  auto it = actors_.find(domain->uuid);
  if (it != actors_.end()) return it->second;
  if (closing_) {
    return absl::UnavailableError("tprd is stopping; retry after it restarts");
  }
  if (!domain->running) {
    return absl::FailedPreconditionError(absl::StrCat("domain ", domain->name,
                                                      " is not running; start it (virsh start ",
                                                      domain->name, "), then retry"));
  }
  auto actor = std::make_shared<DomainActor>(*domain, hypervisor_, journal_, bus_, actor_options_);
  actors_.emplace(domain->uuid, actor);
  return actor;
}

absl::StatusOr<int> DomainRegistry::AdoptRunning(absl::Time deadline,
                                                 const std::string& name_glob) {
  {
    absl::MutexLock lock(&mu_);
    manage_glob_ = name_glob;
  }
  auto domains = hypervisor_->ListDomains();
  if (!domains.ok()) return domains.status();
  int adopted = 0;
  for (const DomainInfo& domain : *domains) {
    if (!domain.running) continue;
    if (fnmatch(name_glob.c_str(), domain.name.c_str(), 0) != 0) continue;
    auto actor = ActorFor(domain.uuid);
    if (!actor.ok()) {
      LogWarning(absl::StrCat(domain.name, ": cannot adopt: ", actor.status().message()));
      continue;
    }
    auto patched = (*actor)->Adopt(deadline);
    if (!patched.ok()) {
      LogWarning(absl::StrCat(domain.name, ": cannot adopt: ", patched.status().message()));
    } else if (*patched) {
      LogInfo(absl::StrCat(domain.name, ": adopted a patched guest"));
      ++adopted;
    }
  }
  return adopted;
}

absl::Status DomainRegistry::DetachAll(const std::string& reason, absl::Time deadline) {
  std::vector<std::shared_ptr<DomainActor>> actors;
  {
    absl::MutexLock lock(&mu_);
    closing_ = true;  // no new actors: they would not be detached
    for (const auto& [uuid, actor] : actors_) actors.push_back(actor);
  }
  absl::Status first_error;
  for (const auto& actor : actors) {
    absl::Status status = actor->Detach(reason, deadline);
    if (!status.ok()) {
      LogError(absl::StrCat(actor->Snapshot().domain.name, ": detach failed: ", status.message()));
      if (first_error.ok()) first_error = status;
    }
  }
  return first_error;
}

absl::StatusOr<DomainActor::DisableOutcome> DomainRegistry::Disable(const std::string& reference,
                                                                    bool force,
                                                                    absl::Time deadline) {
  auto domain = Resolve(reference);
  if (!domain.ok()) return domain.status();
  // Also for a domain that is not running: its actor (gone) has only the intent to forget.
  std::shared_ptr<DomainActor> actor = MakeActor(*domain);
  if (actor == nullptr) return absl::UnavailableError("tprd is stopping; retry after it restarts");
  return actor->Disable(force, deadline);
}

std::shared_ptr<DomainActor> DomainRegistry::MakeActor(const DomainInfo& domain) {
  absl::MutexLock lock(&mu_);
  if (closing_) return nullptr;
  auto [it, created] = actors_.emplace(domain.uuid, nullptr);
  if (created) {
    it->second = std::make_shared<DomainActor>(domain, hypervisor_, journal_, bus_, actor_options_);
  }
  return it->second;
}

void DomainRegistry::OnLifecycle(const LifecycleEvent& event) {
  std::string glob;
  {
    absl::MutexLock lock(&mu_);
    glob = manage_glob_;
  }
  // Another tprd on this host may own the domain's intent (adopt_domains), even when an
  // operator's command gave this tprd an actor for it.
  const bool ours = fnmatch(glob.c_str(), event.domain.name.c_str(), 0) == 0;
  if (auto actor = FindActor(event.domain.uuid)) {
    actor->OnLifecycle(event, /*apply_intent=*/ours);
    return;
  }
  // A domain tprd has not met starts (or boots again): its actor applies the intent it may have.
  // Made here from the event (asking libvirt on its event thread could stall it); the actor reads
  // the metadata on its own thread.
  if (ours && (event.kind == LifecycleKind::kStarted || event.kind == LifecycleKind::kRebooted ||
               event.kind == LifecycleKind::kReverted || event.kind == LifecycleKind::kArrived)) {
    if (std::shared_ptr<DomainActor> actor = MakeActor(event.domain)) {
      actor->OnLifecycle(event, /*apply_intent=*/true);
      return;
    }
  }
  // No actor: nothing of ours was in it; still tell watchers.
  DomainEvent published;
  published.kind = DomainEvent::Kind::kLifecycle;
  published.time = absl::Now();
  published.domain = event.domain;
  published.state = event.domain.running ? DomainState::kUnpatched : DomainState::kGone;
  published.lifecycle = LifecycleName(event.kind);
  published.message = absl::StrCat("domain ", event.domain.name, " ", published.lifecycle);
  bus_->Publish(published);
}

}  // namespace tprd::daemon

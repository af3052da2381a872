#include "daemon/domain/libvirt_hypervisor.h"

#include <libvirt/libvirt.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "daemon/domain/intent.h"

namespace tprd::daemon {
namespace {

DomainInfo ToDaemonInfo(const backend::LibvirtDomainInfo& info) {
  DomainInfo out;
  out.name = info.name;
  out.uuid = info.uuid;
  out.id = info.id;
  out.running = info.state == backend::LibvirtDomainState::kRunning ||
                info.state == backend::LibvirtDomainState::kPaused ||
                info.state == backend::LibvirtDomainState::kBlocked;
  out.held_paused = info.state == backend::LibvirtDomainState::kPaused &&
                    info.reason != backend::kPausedReasonUnknown;
  return out;
}

}  // namespace

LibvirtHypervisor::LibvirtHypervisor(std::unique_ptr<backend::LibvirtConnection> connection,
                                     EngineControllerOptions options)
    : connection_(std::move(connection)), options_(std::move(options)) {
  connection_->Subscribe(this);
}

LibvirtHypervisor::~LibvirtHypervisor() { connection_->Unsubscribe(this); }

absl::StatusOr<std::vector<DomainInfo>> LibvirtHypervisor::ListDomains() {
  absl::StatusOr<std::vector<backend::LibvirtDomainInfo>> domains = connection_->ListDomains();
  if (!domains.ok()) return domains.status();
  std::vector<DomainInfo> out;
  for (const backend::LibvirtDomainInfo& d : *domains) out.push_back(ToDaemonInfo(d));
  return out;
}

absl::StatusOr<DomainInfo> LibvirtHypervisor::LookupDomain(const std::string& reference) {
  absl::StatusOr<backend::LibvirtDomainInfo> domain = connection_->LookupDomain(reference);
  if (!domain.ok()) return domain.status();
  return ToDaemonInfo(*domain);
}

absl::StatusOr<std::unique_ptr<DomainController>> LibvirtHypervisor::OpenController(
    const DomainInfo& domain, engine::PatchRecorder* recorder) {
  if (!domain.running) {
    return absl::FailedPreconditionError(
        absl::StrCat("domain ", domain.name, " is not running; start it first"));
  }
  return std::make_unique<EngineDomainController>(connection_.get(), domain, recorder, options_);
}

absl::StatusOr<std::optional<std::string>> LibvirtHypervisor::ReadIntentXml(
    const std::string& uuid) {
  return connection_->GetMetadata(uuid, kIntentNamespace);
}

absl::Status LibvirtHypervisor::WriteIntentXml(const std::string& uuid,
                                               const std::optional<std::string>& xml) {
  return connection_->SetMetadata(uuid, kIntentNamespace, kIntentPrefix, xml);
}

void LibvirtHypervisor::SetLifecycleHandler(std::function<void(const LifecycleEvent&)> handler) {
  absl::MutexLock lock(&mu_);
  handler_ = std::move(handler);
}

void LibvirtHypervisor::OnDomainEvent(const backend::LibvirtDomainEvent& event) {
  LifecycleEvent out;
  switch (event.kind) {
    case backend::LibvirtDomainEvent::Kind::kStarted:
      out.kind = LifecycleKind::kStarted;
      break;
    case backend::LibvirtDomainEvent::Kind::kShutdown:
      out.kind = LifecycleKind::kShutdown;
      break;
    case backend::LibvirtDomainEvent::Kind::kStopped:
      // A save's stop keeps the guest's memory (and tprd's blob) in the image its restore loads.
      out.kind = event.libvirt_detail == VIR_DOMAIN_EVENT_STOPPED_SAVED ? LifecycleKind::kSaved
                                                                        : LifecycleKind::kDestroyed;
      break;
    case backend::LibvirtDomainEvent::Kind::kCrashed:
      out.kind = LifecycleKind::kCrashed;
      break;
    case backend::LibvirtDomainEvent::Kind::kRebooted:
      out.kind = LifecycleKind::kRebooted;
      break;
    case backend::LibvirtDomainEvent::Kind::kMigratedAway:
      out.kind = LifecycleKind::kMigrated;
      break;
    case backend::LibvirtDomainEvent::Kind::kResumed:
      out.kind = LifecycleKind::kResumed;
      break;
    case backend::LibvirtDomainEvent::Kind::kReverted:
      out.kind = LifecycleKind::kReverted;
      break;
    case backend::LibvirtDomainEvent::Kind::kResumedAfterMigration:
      out.kind = LifecycleKind::kArrived;
      break;
    default:
      return;  // suspend/resume and the rest are not lifecycle changes for the daemon
  }
  out.from_saved_state = event.kind == backend::LibvirtDomainEvent::Kind::kStarted &&
                         event.libvirt_detail == VIR_DOMAIN_EVENT_STARTED_RESTORED;
  out.domain.name = event.name;
  out.domain.uuid = event.uuid;
  out.domain.running = out.kind == LifecycleKind::kStarted ||
                       out.kind == LifecycleKind::kRebooted ||
                       out.kind == LifecycleKind::kResumed ||
                       out.kind == LifecycleKind::kReverted || out.kind == LifecycleKind::kArrived;
  std::function<void(const LifecycleEvent&)> handler;
  {
    absl::MutexLock lock(&mu_);
    handler = handler_;
  }
  if (handler) handler(out);
}

}  // namespace tprd::daemon

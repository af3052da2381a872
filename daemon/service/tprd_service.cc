#include "daemon/service/tprd_service.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "daemon/metrics/exposition.h"
#include "daemon/service/grpc_status.h"
#include "daemon/service/proto_convert.h"

namespace tprd::daemon {

TprdService::TprdService(DomainRegistry* registry, EventBus* bus, TprdServiceOptions options)
    : registry_(registry), bus_(bus), options_(options) {}

absl::Time TprdService::DeadlineOf(const grpc::ServerContext* context) const {
  const absl::Time cap = absl::Now() + options_.max_wait;
  const auto deadline = context->deadline();
  if (deadline == std::chrono::system_clock::time_point::max()) return cap;
  return std::min(cap, absl::FromChrono(deadline));
}

grpc::Status TprdService::ListDomains(grpc::ServerContext*, const tprd::v1::ListDomainsRequest*,
                                      tprd::v1::ListDomainsResponse* response) {
  auto domains = registry_->ListDomains();
  if (!domains.ok()) return ToGrpcStatus(domains.status());
  for (const DomainSnapshot& snapshot : *domains) ToProto(snapshot, response->add_domains());
  return grpc::Status::OK;
}

grpc::Status TprdService::GetMetrics(grpc::ServerContext*, const tprd::v1::GetMetricsRequest*,
                                     tprd::v1::GetMetricsResponse* response) {
  auto domains = registry_->ListDomains();
  if (!domains.ok()) return ToGrpcStatus(domains.status());
  response->set_text(MetricsText(*domains));
  return grpc::Status::OK;
}

grpc::Status TprdService::GetDomain(grpc::ServerContext*, const tprd::v1::GetDomainRequest* request,
                                    tprd::v1::DomainStatus* response) {
  auto snapshot = registry_->Describe(request->domain());
  if (!snapshot.ok()) return ToGrpcStatus(snapshot.status());
  ToProto(*snapshot, response);
  return grpc::Status::OK;
}

grpc::Status TprdService::EnablePatching(grpc::ServerContext* context,
                                         const tprd::v1::EnablePatchingRequest* request,
                                         tprd::v1::EnablePatchingResponse* response) {
  auto strategy = FromProto(request->strategy());
  if (!strategy.ok()) return ToGrpcStatus(strategy.status());
  auto actor = registry_->ActorFor(request->domain());
  if (!actor.ok()) return ToGrpcStatus(actor.status());
  EnableOptions options;
  options.strategy = *strategy;
  options.dry_run = request->dry_run();
  options.discovery_budget = request->discovery_budget_ms() > 0
                                 ? absl::Milliseconds(request->discovery_budget_ms())
                                 : options_.default_discovery_budget;
  std::optional<Intent> record;
  if (!request->dry_run() && !request->transient()) {
    // The budget as asked: an intent without one follows the daemon's default when applied.
    record =
        Intent{*strategy,
               absl::Milliseconds(std::min(request->discovery_budget_ms(), kMaxIntentBudgetMs))};
  }
  auto result = (*actor)->Enable(options, DeadlineOf(context), record);
  if (!result.ok()) return ToGrpcStatus(result.status());
  registry_->ReadIntent(result->after);
  ToProto(result->after, response->mutable_status());
  for (const engine::ManagedSite& site : result->sites) ToProto(site, response->add_sites());
  return grpc::Status::OK;
}

grpc::Status TprdService::Rollback(grpc::ServerContext* context,
                                   const tprd::v1::RollbackRequest* request,
                                   tprd::v1::RollbackResponse* response) {
  auto actor = registry_->ActorFor(request->domain());
  if (!actor.ok()) return ToGrpcStatus(actor.status());
  const std::vector<uint32_t> ids(request->site_ids().begin(), request->site_ids().end());
  auto outcome = (*actor)->Rollback(ids, request->force(), DeadlineOf(context));
  if (!outcome.ok()) return ToGrpcStatus(outcome.status());
  ToProto(outcome->result, response->mutable_rolled_back(), response->mutable_refused());
  registry_->ReadIntent(outcome->after);
  ToProto(outcome->after, response->mutable_status());
  return grpc::Status::OK;
}

grpc::Status TprdService::DisablePatching(grpc::ServerContext* context,
                                          const tprd::v1::DisablePatchingRequest* request,
                                          tprd::v1::DisablePatchingResponse* response) {
  auto outcome = registry_->Disable(request->domain(), request->force(), DeadlineOf(context));
  if (!outcome.ok()) return ToGrpcStatus(outcome.status());
  tprd::v1::RollbackResponse* rollback = response->mutable_rollback();
  ToProto(outcome->result, rollback->mutable_rolled_back(), rollback->mutable_refused());
  response->set_intent_removed(outcome->intent_removed);
  registry_->ReadIntent(outcome->after);
  ToProto(outcome->after, rollback->mutable_status());
  return grpc::Status::OK;
}

grpc::Status TprdService::ListSites(grpc::ServerContext*, const tprd::v1::ListSitesRequest* request,
                                    tprd::v1::ListSitesResponse* response) {
  auto snapshot = registry_->Describe(request->domain());
  if (!snapshot.ok()) return ToGrpcStatus(snapshot.status());
  ToProto(snapshot->domain, response->mutable_domain());
  std::vector<engine::ManagedSite> sites = snapshot->sites;
  std::sort(sites.begin(), sites.end(),
            [](const engine::ManagedSite& a, const engine::ManagedSite& b) {
              return a.site.id < b.site.id;
            });
  for (const engine::ManagedSite& site : sites) ToProto(site, response->add_sites());
  return grpc::Status::OK;
}

grpc::Status TprdService::Scan(grpc::ServerContext* context, const tprd::v1::ScanRequest* request,
                               tprd::v1::ScanResponse* response) {
  auto actor = registry_->ActorFor(request->domain());
  if (!actor.ok()) return ToGrpcStatus(actor.status());
  auto candidates = (*actor)->Scan(DeadlineOf(context));
  if (!candidates.ok()) return ToGrpcStatus(candidates.status());
  ToProto((*actor)->Snapshot().domain, response->mutable_domain());
  for (const engine::ManagedSite& candidate : *candidates) {
    auto* out = response->add_candidates();
    ToProto(candidate, out->mutable_site());
    out->set_patchable(candidate.note.empty());
    out->set_reason(candidate.note);
  }
  return grpc::Status::OK;
}

grpc::Status TprdService::WatchEvents(grpc::ServerContext* context,
                                      const tprd::v1::WatchEventsRequest* request,
                                      grpc::ServerWriter<tprd::v1::Event>* writer) {
  std::string uuid;
  if (!request->domain().empty()) {
    auto domain = registry_->Resolve(request->domain());
    if (!domain.ok()) return ToGrpcStatus(domain.status());
    uuid = domain->uuid;
  }
  auto subscription = bus_->Subscribe(uuid);
  // Headers now, so the client knows the stream is live before the first event.
  writer->SendInitialMetadata();
  while (!context->IsCancelled() && !stopping_.load()) {
    auto event = subscription->Next(options_.watch_check_interval);
    if (!event) continue;
    tprd::v1::Event message;
    ToProto(*event, &message);
    if (!writer->Write(message)) break;  // the client went away
  }
  return grpc::Status::OK;
}

}  // namespace tprd::daemon

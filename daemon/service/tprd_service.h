// tprd.v1.Tprd: translates requests into commands for domain actors and their typed results
// back into messages. Never touches a guest itself.
#ifndef TPRD_DAEMON_SERVICE_TPRD_SERVICE_H_
#define TPRD_DAEMON_SERVICE_TPRD_SERVICE_H_

#include <atomic>

#include "absl/time/time.h"
#include "daemon/actor/domain_registry.h"
#include "daemon/events/event_bus.h"
#include "tprd/v1/tprd.grpc.pb.h"

namespace tprd::daemon {

struct TprdServiceOptions {
  // Waits on an actor are bounded by the call's deadline, and by this when it has none.
  absl::Duration max_wait = absl::Minutes(10);
  // How often a WatchEvents stream checks for a cancelled client or a stopping server.
  absl::Duration watch_check_interval = absl::Milliseconds(200);
  // Discovery budget when the request leaves it 0.
  absl::Duration default_discovery_budget = absl::Seconds(10);
};

class TprdService final : public tprd::v1::Tprd::Service {
 public:
  TprdService(DomainRegistry* registry, EventBus* bus, TprdServiceOptions options = {});

  // Ends every WatchEvents stream (they return OK); call before Server::Shutdown.
  void StopStreams() { stopping_.store(true); }

  grpc::Status ListDomains(grpc::ServerContext* context,
                           const tprd::v1::ListDomainsRequest* request,
                           tprd::v1::ListDomainsResponse* response) override;
  grpc::Status GetDomain(grpc::ServerContext* context, const tprd::v1::GetDomainRequest* request,
                         tprd::v1::DomainStatus* response) override;
  grpc::Status EnablePatching(grpc::ServerContext* context,
                              const tprd::v1::EnablePatchingRequest* request,
                              tprd::v1::EnablePatchingResponse* response) override;
  grpc::Status Rollback(grpc::ServerContext* context, const tprd::v1::RollbackRequest* request,
                        tprd::v1::RollbackResponse* response) override;
  grpc::Status DisablePatching(grpc::ServerContext* context,
                               const tprd::v1::DisablePatchingRequest* request,
                               tprd::v1::DisablePatchingResponse* response) override;
  grpc::Status ListSites(grpc::ServerContext* context, const tprd::v1::ListSitesRequest* request,
                         tprd::v1::ListSitesResponse* response) override;
  grpc::Status Scan(grpc::ServerContext* context, const tprd::v1::ScanRequest* request,
                    tprd::v1::ScanResponse* response) override;
  grpc::Status GetMetrics(grpc::ServerContext* context, const tprd::v1::GetMetricsRequest* request,
                          tprd::v1::GetMetricsResponse* response) override;
  grpc::Status WatchEvents(grpc::ServerContext* context,
                           const tprd::v1::WatchEventsRequest* request,
                           grpc::ServerWriter<tprd::v1::Event>* writer) override;

 private:
  absl::Time DeadlineOf(const grpc::ServerContext* context) const;

  DomainRegistry* const registry_;
  EventBus* const bus_;
  const TprdServiceOptions options_;
  std::atomic<bool> stopping_{false};
};

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_SERVICE_TPRD_SERVICE_H_

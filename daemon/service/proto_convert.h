// Conversions between the daemon's types and tprd.v1 messages. The messages are a rung of their
// own: they are the API's vocabulary, and protobuf stays out of every layer below the service
// (actor, events, domain, engine), so this file is the one place that translates.
#ifndef TPRD_DAEMON_SERVICE_PROTO_CONVERT_H_
#define TPRD_DAEMON_SERVICE_PROTO_CONVERT_H_

#include "absl/status/statusor.h"
#include "daemon/actor/domain_actor.h"
#include "daemon/domain/domain_controller.h"
#include "daemon/events/event_bus.h"
#include "tprd/v1/tprd.pb.h"

namespace tprd::daemon {

void ToProto(const DomainInfo& domain, tprd::v1::DomainRef* out);
void ToProto(const engine::ManagedSite& site, tprd::v1::Site* out);
void ToProto(const DomainSnapshot& snapshot, tprd::v1::DomainStatus* out);
void ToProto(const DomainSnapshot& snapshot, tprd::v1::DomainSummary* out);
void ToProto(const DomainEvent& event, tprd::v1::Event* out);
// A rollback's result into a response's rolled_back and refused fields.
void ToProto(const RollbackResult& result, google::protobuf::RepeatedField<uint32_t>* rolled_back,
             google::protobuf::RepeatedPtrField<tprd::v1::SiteRefusal>* refused);
void ToProto(const Intent& intent, tprd::v1::Intent* out);
tprd::v1::Strategy ToProto(engine::Strategy strategy);
tprd::v1::Strategy ToProto(RequestedStrategy strategy);
tprd::v1::DomainState ToProto(DomainState state);
tprd::v1::Form ToProto(engine::Form form);
tprd::v1::SiteState ToProto(engine::SiteState state);

// INVALID_ARGUMENT for values outside the enum.
absl::StatusOr<RequestedStrategy> FromProto(tprd::v1::Strategy strategy);

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_SERVICE_PROTO_CONVERT_H_

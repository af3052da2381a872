#include "daemon/service/proto_convert.h"

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace tprd::daemon {

void ToProto(const DomainInfo& domain, tprd::v1::DomainRef* out) {
  out->set_name(domain.name);
  out->set_uuid(domain.uuid);
  out->set_id(domain.id);
}

tprd::v1::Strategy ToProto(engine::Strategy strategy) {
  switch (strategy) {
    case engine::Strategy::kExact:
      return tprd::v1::STRATEGY_EXACT;
    case engine::Strategy::kMmio:
      return tprd::v1::STRATEGY_MMIO;
    case engine::Strategy::kCr8:
      return tprd::v1::STRATEGY_CR8;
  }
  return tprd::v1::STRATEGY_UNSPECIFIED;
}

tprd::v1::DomainState ToProto(DomainState state) {
  switch (state) {
    case DomainState::kUnpatched:
      return tprd::v1::DOMAIN_STATE_UNPATCHED;
    case DomainState::kPatching:
      return tprd::v1::DOMAIN_STATE_PATCHING;
    case DomainState::kPatched:
      return tprd::v1::DOMAIN_STATE_PATCHED;
    case DomainState::kExactWhileAway:
      return tprd::v1::DOMAIN_STATE_EXACT_WHILE_AWAY;
    case DomainState::kGone:
      return tprd::v1::DOMAIN_STATE_GONE;
  }
  return tprd::v1::DOMAIN_STATE_UNSPECIFIED;
}

tprd::v1::Form ToProto(engine::Form form) {
  // The proto's numbers are the engine's (both fixed by the guest's site table).
  const int value = static_cast<int>(form);
  return tprd::v1::Form_IsValid(value) ? static_cast<tprd::v1::Form>(value)
                                       : tprd::v1::FORM_UNSPECIFIED;
}

tprd::v1::SiteState ToProto(engine::SiteState state) {
  switch (state) {
    case engine::SiteState::kCandidate:
      return tprd::v1::SITE_STATE_CANDIDATE;
    case engine::SiteState::kPending:
      return tprd::v1::SITE_STATE_PENDING;
    case engine::SiteState::kApplied:
      return tprd::v1::SITE_STATE_APPLIED;
    case engine::SiteState::kRolledBack:
      return tprd::v1::SITE_STATE_ROLLED_BACK;
  }
  return tprd::v1::SITE_STATE_UNSPECIFIED;
}

void ToProto(const engine::ManagedSite& managed, tprd::v1::Site* out) {
  const engine::Site& site = managed.site;
  out->set_id(site.id);
  out->set_address(site.address);
  out->set_form(ToProto(site.form));
  // Forms without a register operand report none.
  const bool has_register =
      site.form == engine::Form::kMovRegFromMem || site.form == engine::Form::kMovMemFromReg ||
      site.form == engine::Form::kMovEaxFromMoffs || site.form == engine::Form::kMovMoffsFromEax;
  out->set_register_(has_register ? std::string(engine::GprName(site.reg)) : "");
  out->set_original(std::string(site.original.begin(), site.original.end()));
  out->set_patched(std::string(site.patched.begin(), site.patched.end()));
  out->set_disassembly(managed.disassembly);
  out->set_state(ToProto(site.state));
  out->set_hits(managed.hits);
}

tprd::v1::Strategy ToProto(RequestedStrategy strategy) {
  switch (strategy) {
    case RequestedStrategy::kAuto:
      return tprd::v1::STRATEGY_AUTO;
    case RequestedStrategy::kMmio:
      return tprd::v1::STRATEGY_MMIO;
    case RequestedStrategy::kCr8:
      return tprd::v1::STRATEGY_CR8;
    case RequestedStrategy::kExact:
      return tprd::v1::STRATEGY_EXACT;
  }
  return tprd::v1::STRATEGY_AUTO;
}

void ToProto(const Intent& intent, tprd::v1::Intent* out) {
  out->set_strategy(ToProto(intent.strategy));
  out->set_discovery_budget_ms(
      static_cast<uint32_t>(absl::ToInt64Milliseconds(intent.discovery_budget)));
}

void ToProto(const DomainSnapshot& snapshot, tprd::v1::DomainStatus* out) {
  ToProto(snapshot.domain, out->mutable_domain());
  out->set_running(snapshot.domain.running);
  out->set_state(ToProto(snapshot.state));
  const bool has_strategy = snapshot.state == DomainState::kPatched ||
                            snapshot.state == DomainState::kPatching ||
                            snapshot.state == DomainState::kExactWhileAway;
  out->set_strategy(has_strategy ? ToProto(snapshot.state == DomainState::kExactWhileAway
                                               ? engine::Strategy::kExact
                                               : snapshot.status.strategy)
                                 : tprd::v1::STRATEGY_UNSPECIFIED);
  for (const engine::ManagedSite& site : snapshot.sites) {
    switch (site.site.state) {
      case engine::SiteState::kCandidate:
        out->set_sites_candidate(out->sites_candidate() + 1);
        break;
      case engine::SiteState::kPending:
        out->set_sites_pending(out->sites_pending() + 1);
        break;
      case engine::SiteState::kApplied:
        out->set_sites_applied(out->sites_applied() + 1);
        break;
      case engine::SiteState::kRolledBack:
        out->set_sites_rolled_back(out->sites_rolled_back() + 1);
        break;
    }
  }
  out->set_traps_handled(snapshot.status.traps_handled);
  out->set_proving_window_open(snapshot.status.proving_window_open);
  out->set_discovery(snapshot.status.discovery);
  out->set_candidate_breakpoints(snapshot.status.candidate_breakpoints);
  out->set_guard_mismatches(snapshot.status.guard_mismatches);
  out->set_tpr_accesses_per_second_before(snapshot.status.tpr_accesses_per_second_before);
  out->set_tpr_accesses_per_second_after(snapshot.status.tpr_accesses_per_second_after);
  if (const auto& rates = snapshot.status.rates) {
    out->set_rates_sampled(true);
    out->set_tpr_accesses_per_second_without_apic(rates->without_apic_per_second);
    out->set_trap_stops_per_second(rates->trap_stops_per_second);
  }
  out->set_handler_accesses_without_apic(snapshot.status.handler_accesses_without_apic);
  out->set_handler_accesses_to_apic(snapshot.status.handler_accesses_to_apic);
  out->set_unpatched_accesses_seen(snapshot.status.unpatched_accesses_seen);
  out->set_learning_window_hits(snapshot.status.learning_hits);
  out->set_learning_window_run_seconds(absl::ToDoubleSeconds(snapshot.status.learning_run));
  out->set_learning_window_guest_clock(snapshot.status.learning_run_guest_clock);
  out->set_before_trace_tpr_reads(snapshot.status.before_trace_tpr_reads);
  out->set_before_trace_tpr_writes(snapshot.status.before_trace_tpr_writes);
  out->set_before_trace_seconds(absl::ToDoubleSeconds(snapshot.status.before_trace_window));
  out->set_before_trace_error(snapshot.status.before_trace_error);
  out->set_last_error(!snapshot.last_error.empty() ? snapshot.last_error
                                                   : snapshot.status.last_error);
  out->set_busy_with(snapshot.busy_with);
  if (snapshot.intent) ToProto(*snapshot.intent, out->mutable_intent());
  out->set_intent_error(snapshot.intent_error);
  out->set_intent_progress(snapshot.intent_progress);
}

void ToProto(const DomainSnapshot& snapshot, tprd::v1::DomainSummary* out) {
  tprd::v1::DomainStatus status;
  ToProto(snapshot, &status);
  *out->mutable_domain() = status.domain();
  out->set_running(status.running());
  out->set_state(status.state());
  out->set_strategy(status.strategy());
  out->set_sites_applied(status.sites_applied());
  if (status.has_intent()) *out->mutable_intent() = status.intent();
  out->set_intent_error(status.intent_error());
}

void ToProto(const DomainEvent& event, tprd::v1::Event* out) {
  switch (event.kind) {
    case DomainEvent::Kind::kSite:
      out->set_kind(tprd::v1::Event::KIND_SITE);
      break;
    case DomainEvent::Kind::kState:
      out->set_kind(tprd::v1::Event::KIND_STATE);
      break;
    case DomainEvent::Kind::kLifecycle:
      out->set_kind(tprd::v1::Event::KIND_LIFECYCLE);
      break;
    case DomainEvent::Kind::kError:
      out->set_kind(tprd::v1::Event::KIND_ERROR);
      break;
    case DomainEvent::Kind::kEventsLost:
      out->set_kind(tprd::v1::Event::KIND_EVENTS_LOST);
      break;
  }
  out->set_time(absl::ToDoubleSeconds(event.time - absl::UnixEpoch()));
  if (event.kind != DomainEvent::Kind::kEventsLost) ToProto(event.domain, out->mutable_domain());
  if (event.site) ToProto(*event.site, out->mutable_site());
  out->set_state(ToProto(event.state));
  out->set_lifecycle(event.lifecycle);
  out->set_message(event.message);
}

void ToProto(const RollbackResult& result, google::protobuf::RepeatedField<uint32_t>* rolled_back,
             google::protobuf::RepeatedPtrField<tprd::v1::SiteRefusal>* refused) {
  for (uint32_t id : result.rolled_back) rolled_back->Add(id);
  for (const auto& refusal : result.refused) {
    tprd::v1::SiteRefusal* out = refused->Add();
    out->set_site_id(refusal.site_id);
    out->set_reason(refusal.reason);
  }
}

absl::StatusOr<RequestedStrategy> FromProto(tprd::v1::Strategy strategy) {
  switch (strategy) {
    case tprd::v1::STRATEGY_UNSPECIFIED:
    case tprd::v1::STRATEGY_AUTO:
      return RequestedStrategy::kAuto;
    case tprd::v1::STRATEGY_MMIO:
      return RequestedStrategy::kMmio;
    case tprd::v1::STRATEGY_CR8:
      return RequestedStrategy::kCr8;
    case tprd::v1::STRATEGY_EXACT:
      return RequestedStrategy::kExact;
    default:
      break;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown strategy ", static_cast<int>(strategy),
                                                 "; use auto, mmio, cr8 or exact"));
}

}  // namespace tprd::daemon

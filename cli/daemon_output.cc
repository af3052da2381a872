#include "cli/daemon_output.h"

#include <algorithm>
#include <cctype>
#include <string_view>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace tprd::cli {
namespace {

// Lower-case enum word without its prefix ("FORM_PUSH_MEM" -> "push_mem"); empty for the
// UNSPECIFIED value, "unknown(N)" for a value this tprctl does not know (a newer daemon).
std::string EnumWord(const std::string& full_name, std::string_view prefix, int value) {
  if (value == 0) return "";
  if (full_name.empty()) return absl::StrCat("unknown(", value, ")");
  std::string word = full_name.substr(std::min(prefix.size(), full_name.size()));
  for (char& c : word) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return word;
}

}  // namespace

Json OrNull(const std::string& text) { return text.empty() ? Json(nullptr) : Json(text); }

std::string StrategyWord(tprd::v1::Strategy value) {
  return EnumWord(tprd::v1::Strategy_Name(value), "STRATEGY_", value);
}
std::string DomainStateWord(tprd::v1::DomainState value) {
  return EnumWord(tprd::v1::DomainState_Name(value), "DOMAIN_STATE_", value);
}
std::string FormWord(tprd::v1::Form value) {
  return EnumWord(tprd::v1::Form_Name(value), "FORM_", value);
}
std::string SiteStateWord(tprd::v1::SiteState value) {
  return EnumWord(tprd::v1::SiteState_Name(value), "SITE_STATE_", value);
}
std::string EventKindWord(tprd::v1::Event::Kind value) {
  return EnumWord(tprd::v1::Event::Kind_Name(value), "KIND_", value);
}

std::string OrDash(const std::string& text) { return text.empty() ? "-" : text; }

std::string Address(uint32_t address) { return absl::StrFormat("0x%08x", address); }

namespace {

template <typename Message>
std::string IntentWordOf(const Message& message) {
  if (message.has_intent()) return StrategyWord(message.intent().strategy());
  return message.intent_error().empty() ? "-" : "invalid";
}

template <typename Message>
Json IntentJsonOf(const Message& message) {
  if (!message.has_intent()) return nullptr;
  return Json{{"strategy", OrNull(StrategyWord(message.intent().strategy()))},
              {"discovery_budget_ms", message.intent().discovery_budget_ms()}};
}

}  // namespace

std::string IntentWord(const tprd::v1::DomainSummary& summary) { return IntentWordOf(summary); }
std::string IntentWord(const tprd::v1::DomainStatus& status) { return IntentWordOf(status); }
Json IntentJson(const tprd::v1::DomainSummary& summary) { return IntentJsonOf(summary); }
Json IntentJson(const tprd::v1::DomainStatus& status) { return IntentJsonOf(status); }

Json SiteJson(const tprd::v1::Site& site) {
  return Json{{"id", site.id()},
              {"address", Address(site.address())},
              {"form", OrNull(FormWord(site.form()))},
              {"register", OrNull(site.register_())},
              {"original", absl::BytesToHexString(site.original())},
              {"patched", absl::BytesToHexString(site.patched())},
              {"disassembly", site.disassembly()},
              {"state", OrNull(SiteStateWord(site.state()))},
              {"hits", site.hits()}};
}

Json StatusJson(const tprd::v1::DomainStatus& status) {
  return Json{
      {"domain", status.domain().name()},
      {"uuid", status.domain().uuid()},
      {"id", status.domain().id()},
      {"running", status.running()},
      {"state", OrNull(DomainStateWord(status.state()))},
      {"strategy", OrNull(StrategyWord(status.strategy()))},
      {"sites_candidate", status.sites_candidate()},
      {"sites_pending", status.sites_pending()},
      {"sites_applied", status.sites_applied()},
      {"sites_rolled_back", status.sites_rolled_back()},
      {"traps_handled", status.traps_handled()},
      {"tpr_accesses_per_second_before", status.tpr_accesses_per_second_before()},
      {"tpr_accesses_per_second_after", status.tpr_accesses_per_second_after()},
      {"rates_sampled", status.rates_sampled()},
      {"tpr_accesses_per_second_without_apic", status.tpr_accesses_per_second_without_apic()},
      {"trap_stops_per_second", status.trap_stops_per_second()},
      {"handler_accesses_without_apic", status.handler_accesses_without_apic()},
      {"handler_accesses_to_apic", status.handler_accesses_to_apic()},
      {"unpatched_accesses_seen", status.unpatched_accesses_seen()},
      {"learning_window_hits", status.learning_window_hits()},
      {"learning_window_run_seconds", status.learning_window_run_seconds()},
      {"learning_window_guest_clock", status.learning_window_guest_clock()},
      {"before_trace_tpr_reads", status.before_trace_tpr_reads()},
      {"before_trace_tpr_writes", status.before_trace_tpr_writes()},
      {"before_trace_seconds", status.before_trace_seconds()},
      {"before_trace_error", status.before_trace_error()},
      {"last_error", status.last_error()},
      {"busy_with", status.busy_with()},
      {"proving_window_open", status.proving_window_open()},
      {"discovery", status.discovery()},
      {"candidate_breakpoints", status.candidate_breakpoints()},
      {"guard_mismatches", status.guard_mismatches()},
      {"intent", IntentJson(status)},
      {"intent_error", status.intent_error()},
      {"intent_progress", status.intent_progress()}};
}

void PrintSites(const google::protobuf::RepeatedPtrField<tprd::v1::Site>& sites,
                std::ostream& out) {
  Table table({"ID", "ADDRESS", "FORM", "REGISTER", "STATE", "HITS", "DISASSEMBLY"});
  for (const auto& site : sites) {
    table.Add({absl::StrCat(site.id()), Address(site.address()), OrDash(FormWord(site.form())),
               OrDash(site.register_()), OrDash(SiteStateWord(site.state())),
               absl::StrCat(site.hits()), site.disassembly()});
  }
  table.Print(out);
}

void PrintStatus(const tprd::v1::DomainStatus& status, std::ostream& out) {
  const auto& domain = status.domain();
  out << "domain:     " << domain.name() << " (id "
      << (domain.id() < 0 ? std::string("-") : absl::StrCat(domain.id())) << ", uuid "
      << domain.uuid() << ")\n";
  out << "running:    " << (status.running() ? "yes" : "no") << "\n";
  out << "state:      " << OrDash(DomainStateWord(status.state())) << "\n";
  out << "strategy:   " << OrDash(StrategyWord(status.strategy())) << "\n";
  out << absl::StrFormat("sites:      %u applied, %u pending, %u candidates, %u rolled back\n",
                         status.sites_applied(), status.sites_pending(), status.sites_candidate(),
                         status.sites_rolled_back());
  out << "traps:      " << status.traps_handled() << " handled";
  if (status.rates_sampled())
    out << absl::StrFormat(", %.1f/s now", status.trap_stops_per_second());
  out << "\n";
  // docs/design.md "Rates and metrics": what each number counts, and what it does not.
  out << "TPR accesses reaching the APIC: ";
  if (status.rates_sampled()) {
    const double now = status.tpr_accesses_per_second_after();
    const double without = status.tpr_accesses_per_second_without_apic();
    out << absl::StrFormat("%.0f/s now (of %.0f/s counted; %.0f/s served without it)", now,
                           now + without, without);
  } else {
    out << "not sampled yet";
  }
  out << "\n  before the first patch: ";
  if (status.before_trace_seconds() > 0) {
    // A lower bound too: the trace writes a line per access (docs/design.md).
    out << absl::StrFormat(
        "%.0f/s (QEMU's APIC trace: %u reads and %u writes of the TPR in %.0f ms; tracing slows "
        "the guest, so at least this)",
        status.tpr_accesses_per_second_before(), status.before_trace_tpr_reads(),
        status.before_trace_tpr_writes(), status.before_trace_seconds() * 1000);
  } else if (status.learning_window_run_seconds() > 0) {
    // A lower bound either way: each hit stopped the guest, and the stop's overhead is counted
    // as run time (docs/design.md "Rates and metrics").
    out << absl::StrFormat("at least %.0f/s (learning window: %u in %.1f ms of guest time, %s)",
                           status.tpr_accesses_per_second_before(), status.learning_window_hits(),
                           status.learning_window_run_seconds() * 1000,
                           status.learning_window_guest_clock()
                               ? "by the guest's ACPI PM timer, QEMU's stop at each hit included"
                               : "by tprd, gdbstub round trips included");
  } else {
    out << "not measured in this session";
  }
  if (!status.before_trace_error().empty()) {
    out << "\n  (no APIC trace: " << status.before_trace_error() << ")";
  }
  out << "\n";
  out << "intent:     " << IntentWord(status);
  if (status.has_intent() && status.intent().discovery_budget_ms() > 0) {
    out << " (discovery budget " << status.intent().discovery_budget_ms() << " ms)";
  }
  out << "\n";
  if (!status.intent_error().empty()) out << "intent err: " << status.intent_error() << "\n";
  if (!status.intent_progress().empty()) {
    out << "applying:   " << status.intent_progress() << "\n";
  }
  if (!status.busy_with().empty()) out << "busy with:  " << status.busy_with() << "\n";
  if (!status.discovery().empty()) {
    out << "discovery:  " << status.discovery();
    if (status.discovery() == "watchpoint") {
      out << " (no breakpoint on unproven bytes; a candidate is proven by its first TPR access)";
    } else {
      out << " (" << status.candidate_breakpoints() << " breakpoints set on candidates)";
    }
    out << "\n";
  }
  if (status.proving_window_open()) {
    out << (status.discovery() == "watchpoint"
                ? "proving:    open\n"
                : "proving:    open (every candidate waits at a breakpoint until it ends)\n");
  }
  if (status.guard_mismatches() > 0) {
    out << "guard:      " << status.guard_mismatches()
        << " stale shadow reads caught in the guest (it switched itself to exact)\n";
  }
  if (!status.last_error().empty()) out << "last error: " << status.last_error() << "\n";
}

void PrintJson(const Json& document, std::ostream& out) { out << document.dump() << "\n"; }

Json EventJson(const tprd::v1::Event& event) {
  return Json{{"kind", OrNull(EventKindWord(event.kind()))},
              {"time", event.time()},
              {"domain", event.domain().name()},
              {"state", OrNull(DomainStateWord(event.state()))},
              {"lifecycle", OrNull(event.lifecycle())},
              {"site", event.has_site() ? SiteJson(event.site()) : Json(nullptr)},
              {"message", event.message()}};
}

void PrintEventLine(const tprd::v1::Event& event, std::ostream& out) {
  const absl::Time time = absl::FromUnixNanos(static_cast<int64_t>(event.time() * 1e9));
  out << absl::FormatTime("%Y-%m-%d %H:%M:%E3S", time, absl::LocalTimeZone()) << "  "
      << OrDash(event.domain().name()) << "  " << OrDash(EventKindWord(event.kind())) << "  "
      << event.message() << "\n";
}

}  // namespace tprd::cli

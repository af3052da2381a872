#include "daemon/metrics/exposition.h"

#include <cstdint>
#include <functional>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_replace.h"

namespace tprd::daemon {
namespace {

// One family: its header, then a sample per domain that has one.
class Family {
 public:
  Family(std::string& out, absl::string_view name, absl::string_view type, absl::string_view help)
      : out_(out), name_(name) {
    absl::StrAppend(&out_, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
  }
  // `labels` already escaped and joined: `domain="x",state="y"`.
  void Sample(absl::string_view suffix, absl::string_view labels, absl::string_view value) {
    absl::StrAppend(&out_, name_, suffix, "{", labels, "} ", value, "\n");
  }

 private:
  std::string& out_;
  std::string name_;
};

std::string Label(absl::string_view key, absl::string_view value) {
  return absl::StrCat(key, "=\"", EscapeLabelValue(value), "\"");
}

// tprctl's words: lower case with underscores ("exact_while_away").
std::string StateWord(DomainState state) {
  return absl::StrReplaceAll(DomainStateName(state), {{"-", "_"}});
}

std::string StrategyWord(const DomainSnapshot& s) {
  switch (s.state) {
    case DomainState::kPatched:
    case DomainState::kPatching:
      return std::string(engine::StrategyName(s.status.strategy));
    case DomainState::kExactWhileAway:
      return "exact";
    default:
      return "";
  }
}

std::string Number(double value) { return absl::StrFormat("%.6g", value); }

}  // namespace

std::string EscapeLabelValue(absl::string_view value) {
  std::string out;
  out.reserve(value.size());
  for (char c : value) {
    switch (c) {
      case '\\':
        out += "\\\\";
        break;
      case '"':
        out += "\\\"";
        break;
      case '\n':
        out += "\\n";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string MetricsText(const std::vector<DomainSnapshot>& domains) {
  std::vector<const DomainSnapshot*> running;
  for (const DomainSnapshot& s : domains) {
    if (s.domain.running) running.push_back(&s);
  }
  std::string out;
  // A family with one sample per running domain: `value` gives it, or nullopt for none.
  auto per_domain =
      [&](absl::string_view name, absl::string_view type, absl::string_view help,
          const std::function<std::optional<std::string>(const DomainSnapshot&)>& value) {
        Family family(out, name, type, help);
        for (const DomainSnapshot* s : running) {
          if (std::optional<std::string> v = value(*s)) {
            family.Sample("", Label("domain", s->domain.name), *v);
          }
        }
      };

  {
    Family info(out, "tprd_domain_info", "gauge",
                "1 for every running domain: tprd's state and the strategy in effect");
    for (const DomainSnapshot* s : running) {
      info.Sample("",
                  absl::StrCat(Label("domain", s->domain.name), ",", Label("uuid", s->domain.uuid),
                               ",", Label("state", StateWord(s->state)), ",",
                               Label("strategy", StrategyWord(*s))),
                  "1");
    }
  }
  {
    Family sites(out, "tprd_sites", "gauge", "TPR sites tprd knows in the domain, by state");
    for (const DomainSnapshot* s : running) {
      uint64_t by_state[4] = {};  // candidate, pending, applied, rolled back (engine order)
      for (const engine::ManagedSite& site : s->sites) {
        const int i = static_cast<int>(site.site.state);
        if (i >= 0 && i < 4) ++by_state[i];
      }
      const std::pair<const char*, uint64_t> rows[] = {{"applied", by_state[2]},
                                                       {"pending", by_state[1]},
                                                       {"candidate", by_state[0]},
                                                       {"rolled_back", by_state[3]}};
      for (const auto& [state, count] : rows) {
        sites.Sample("", absl::StrCat(Label("domain", s->domain.name), ",", Label("state", state)),
                     absl::StrCat(count));
      }
    }
  }
  per_domain("tprd_tpr_accesses_without_apic_total", "counter",
             "TPR accesses tprd's handlers served without the APIC's MMIO register (shadow "
             "reads; CR8 writes under cr8), counted per CPU in the guest since tprd's blob went in",
             [](const DomainSnapshot& s) -> std::optional<std::string> {
               return absl::StrCat(s.status.handler_accesses_without_apic);
             });
  {
    Family reaching(out, "tprd_tpr_accesses_reaching_apic_total", "counter",
                    "TPR accesses that reached the APIC's MMIO register while tprd held the "
                    "domain: by=handlers (exact path, mmio writes, guard checks; counted in the "
                    "guest) or by=unpatched (seen by tprd's watchpoint: cr8 every access, mmio "
                    "writes only)");
    for (const DomainSnapshot* s : running) {
      const std::string domain = Label("domain", s->domain.name);
      reaching.Sample("", absl::StrCat(domain, ",by=\"handlers\""),
                      absl::StrCat(s->status.handler_accesses_to_apic));
      reaching.Sample("", absl::StrCat(domain, ",by=\"unpatched\""),
                      absl::StrCat(s->status.unpatched_accesses_seen));
    }
  }
  per_domain("tprd_tpr_accesses_reaching_apic_before_per_second", "gauge",
             "TPR accesses reaching the APIC per second before the first patch: watchpoint hits "
             "per second of guest run time in the enable's learning window (a lower bound); "
             "absent when not measured in this session",
             [](const DomainSnapshot& s) -> std::optional<std::string> {
               if (s.status.learning_run <= absl::ZeroDuration()) return std::nullopt;
               return Number(s.status.tpr_accesses_per_second_before);
             });
  per_domain("tprd_tpr_accesses_reaching_apic_per_second", "gauge",
             "TPR accesses reaching the APIC per second now (the last second or so): by the "
             "handlers and by unpatched instructions tprd's watchpoint saw",
             [](const DomainSnapshot& s) -> std::optional<std::string> {
               if (!s.status.rates) return std::nullopt;
               return Number(s.status.rates->to_apic_per_second);
             });
  per_domain("tprd_tpr_accesses_without_apic_per_second", "gauge",
             "TPR accesses tprd's handlers served without the APIC's MMIO register per second now",
             [](const DomainSnapshot& s) -> std::optional<std::string> {
               if (!s.status.rates) return std::nullopt;
               return Number(s.status.rates->without_apic_per_second);
             });
  per_domain("tprd_trap_stops_total", "counter",
             "Guest stops tprd handled (breakpoints, watchpoints) in this session",
             [](const DomainSnapshot& s) -> std::optional<std::string> {
               return absl::StrCat(s.status.traps_handled);
             });
  per_domain("tprd_trap_stops_per_second", "gauge", "Guest stops tprd handled per second now",
             [](const DomainSnapshot& s) -> std::optional<std::string> {
               if (!s.status.rates) return std::nullopt;
               return Number(s.status.rates->trap_stops_per_second);
             });
  per_domain("tprd_guard_mismatches_total", "counter",
             "mmio: stale shadow reads the guest's guard caught since the last enable (the guest "
             "then runs exact)",
             [](const DomainSnapshot& s) -> std::optional<std::string> {
               return absl::StrCat(s.status.guard_mismatches);
             });
  {
    Family pause(out, "tprd_enable_pause_seconds", "histogram",
                 "How long each enable of this session held the guest stopped to install the "
                 "blob and apply the proven sites");
    for (const DomainSnapshot* s : running) {
      const std::string domain = Label("domain", s->domain.name);
      const PauseHistogram& h = s->status.enable_pauses;
      uint64_t cumulative = 0;
      for (size_t i = 0; i < PauseHistogram::kBounds.size(); ++i) {
        cumulative += h.counts[i];
        pause.Sample("_bucket",
                     absl::StrCat(domain, ",le=\"", Number(PauseHistogram::kBounds[i]), "\""),
                     absl::StrCat(cumulative));
      }
      pause.Sample("_bucket", absl::StrCat(domain, ",le=\"+Inf\""), absl::StrCat(h.count));
      pause.Sample("_sum", domain, Number(h.sum_seconds));
      pause.Sample("_count", domain, absl::StrCat(h.count));
    }
  }
  per_domain("tprd_proving_window_open", "gauge",
             "1 while the proving window after an enable is open",
             [](const DomainSnapshot& s) -> std::optional<std::string> {
               return s.status.proving_window_open ? "1" : "0";
             });
  per_domain("tprd_domain_error", "gauge", "1 when the domain has a last error (tprctl status)",
             [](const DomainSnapshot& s) -> std::optional<std::string> {
               return s.last_error.empty() && s.status.last_error.empty() ? "0" : "1";
             });
  return out;
}

}  // namespace tprd::daemon

// tprd_bench's output: the markdown tables (results.md), the bar chart (cycles.svg) and each
// configuration's JSON (results.json).
#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/bench_util.h"
#include "bench/tpr_bench.h"

namespace tprd::bench {

Summary Field(const Result& r, double BenchSample::*field) {
  std::vector<double> v;
  for (const BenchSample& s : r.samples) v.push_back(s.*field);
  return Summarize(v);
}

json SummaryJson(const Summary& s) {
  return {{"n", s.n}, {"median", s.median}, {"min", s.min}, {"max", s.max}};
}

namespace {

const Result* Find(const std::vector<Result>& results, const std::string& name, int vcpus) {
  for (const Result& r : results) {
    if (r.config.name == name && r.vcpus == vcpus) return &r;
  }
  return nullptr;
}

std::string Ratio(double value, const Result* base, double BenchSample::*field) {
  if (base == nullptr || base->status != "ok" || base->samples.empty()) return "-";
  const double b = Field(*base, field).median;
  return b > 0 ? absl::StrFormat("%.2f", value / b) : "-";
}

std::string Cell(const Summary& s) {
  if (s.n == 0) return "-";
  return absl::StrFormat("%.1f (%.1f-%.1f)", s.median, s.min, s.max);
}

std::string Rate(const ExitWindow& w, bool reads) {
  if (!w.ok || w.seconds <= 0) return "-";
  return absl::StrFormat("%.0f", (reads ? w.reads : w.writes) / w.seconds);
}

}  // namespace

std::string Markdown(const std::vector<Result>& results, const json& extra) {
  std::string md;
  absl::StrAppend(&md, "### Cycles per operation (guest rdtsc; median over rounds, min-max)\n\n",
                  "| configuration | vCPUs | status | TPR read | /unpatched | /QEMU | TPR write | "
                  "/unpatched | /QEMU | mem read (floor) | mem write | rounds |\n",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Result& r : results) {
    const Result* base = Find(results, "unpatched", r.vcpus);
    const Result* qemu = Find(results, "qemu", r.vcpus);
    Summary rd = Field(r, &BenchSample::tpr_read), wr = Field(r, &BenchSample::tpr_write);
    absl::StrAppend(&md, "| ", r.config.label, " | ", r.vcpus, " | ", r.status, " | ", Cell(rd),
                    " | ", rd.n ? Ratio(rd.median, base, &BenchSample::tpr_read) : "-", " | ",
                    rd.n ? Ratio(rd.median, qemu, &BenchSample::tpr_read) : "-", " | ", Cell(wr),
                    " | ", wr.n ? Ratio(wr.median, base, &BenchSample::tpr_write) : "-", " | ",
                    wr.n ? Ratio(wr.median, qemu, &BenchSample::tpr_write) : "-", " | ",
                    Cell(Field(r, &BenchSample::mem_read)), " | ",
                    Cell(Field(r, &BenchSample::mem_write)), " | ", r.samples.size(), " |\n");
  }
  absl::StrAppend(&md, "\n### TPR accesses reaching QEMU's APIC emulation (per second, traced)\n\n",
                  "| configuration | vCPUs | reads/s before | reads/s after | writes/s before | "
                  "writes/s after | tprd enable | pause (ms) | at enable | convergence (s) | "
                  "sites applied | traps/s after |\n",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|\n");
  for (const Result& r : results) {
    const json& e = r.enable;
    auto num = [&](const char* key, const char* fmt, double scale = 1) -> std::string {
      if (!e.contains(key) || !e[key].is_number()) return "-";
      char buffer[64];
      std::snprintf(buffer, sizeof buffer, fmt, e[key].get<double>() * scale);
      return buffer;
    };
    const bool tprd = !r.config.strategy.empty();
    absl::StrAppend(&md, "| ", r.config.label, " | ", r.vcpus, " | ", Rate(r.exits_before, true),
                    " | ", tprd ? Rate(r.exits_after, true) : "-", " | ",
                    Rate(r.exits_before, false), " | ", tprd ? Rate(r.exits_after, false) : "-",
                    " | ", tprd ? (r.status == "refused" ? "refused" : "ok") : "-", " | ",
                    num("pause_us", "%.1f", 1e-3), " | ", num("applied_at_enable", "%.0f"), " | ",
                    num("convergence_s", "%.2f"), " | ", num("sites_applied", "%.0f"), " | ",
                    num("traps_per_s_after", "%.2f"), " |\n");
  }
  absl::StrAppend(&md,
                  "\n### tprd configurations after `tprctl rollback` (traps removed; last "
                  "BENCH rounds)\n\n| configuration | vCPUs | TPR read | TPR write | mem read | "
                  "guest-view stop at enable (ms) |\n|---|---|---|---|---|---|\n");
  for (const Result& r : results) {
    if (r.config.strategy.empty()) continue;
    std::vector<double> rd, wr, mr;
    for (const BenchSample& s : r.after_rollback) {
      rd.push_back(s.tpr_read);
      wr.push_back(s.tpr_write);
      mr.push_back(s.mem_read);
    }
    std::string guest = "-";
    if (r.enable.contains("guest_view_stopped_ms")) {
      guest = absl::StrFormat("%.0f", r.enable["guest_view_stopped_ms"].get<double>());
    }
    absl::StrAppend(&md, "| ", r.config.label, " | ", r.vcpus, " | ", Cell(Summarize(rd)), " | ",
                    Cell(Summarize(wr)), " | ", Cell(Summarize(mr)), " | ", guest, " |\n");
  }
  bool notes = false;
  for (const Result& r : results) {
    if (r.message.empty()) continue;
    if (!notes) absl::StrAppend(&md, "\n### Configurations that did not run normally\n");
    notes = true;
    absl::StrAppend(&md, "\n**", r.config.label, ", ", r.vcpus, " vCPU(s): ", r.status,
                    "**\n\n```\n", r.message, "\n```\n");
  }
  absl::StrAppend(&md, "\n### Guest self-checks during the measured period\n\n");
  for (const Result& r : results) {
    absl::StrAppend(&md, "- ", r.config.label, " x", r.vcpus, ": ", r.stat_lines, " STAT lines, ",
                    r.stat_fail_lines, " with fail>0, ", r.fail_lines,
                    " FAIL lines; load before/after: ", r.load_before, " / ", r.load_after, "\n");
    for (const std::string& f : r.first_fails) absl::StrAppend(&md, "  - `", f, "`\n");
  }
  if (extra.contains("pause_sweep")) {
    absl::StrAppend(
        &md,
        "\n### Pause of one enable vs sites patched in it (2 vCPUs, mmio, fresh "
        "domain each)\n\n| --budget (s) | learning hits | sites patched in the stop "
        "| pause (ms) | guest-view stop (ms) | enable call (s) | armed for first execution "
        "|\n|---|---|---|---|---|---|---|\n");
    for (const json& p : extra["pause_sweep"]) {
      if (p.contains("error")) {
        absl::StrAppend(&md, "| ", p.value("budget_s", ""),
                        " | error: ", p["error"].get<std::string>(), " | | | |\n");
        continue;
      }
      absl::StrAppend(&md, "| ", p.value("budget_s", ""), " | ", p.value("learning_hits", 0.0),
                      " | ", p.value("applied_at_enable", 0.0), " | ",
                      absl::StrFormat("%.2f", p.value("pause_us", 0.0) / 1e3), " | ",
                      absl::StrFormat("%.0f", p.value("guest_view_stopped_ms", -1.0)), " | ",
                      absl::StrFormat("%.2f", p.value("enable_call_s", 0.0)), " | ",
                      p.value("armed", 0.0), " |\n");
    }
  }
  if (extra.contains("scan")) {
    absl::StrAppend(&md, "\n### Scan\n\n```\n", extra["scan"].dump(2), "\n```\n");
  }
  if (extra.contains("daemon_load")) {
    absl::StrAppend(&md, "\n### Daemon under load\n\n```\n", extra["daemon_load"].dump(2),
                    "\n```\n");
  }
  return md;
}

// A grouped bar chart: per configuration and vCPU count, TPR read and TPR write cycles (median,
// whiskers min-max) and the plain memory read floor.
std::string Svg(const std::vector<Result>& results) {
  double top = 10;
  for (const Result& r : results) {
    for (const BenchSample& s : r.samples) top = std::max({top, s.tpr_read, s.tpr_write});
  }
  top *= 1.1;
  const int group = 70, left = 60, height = 320, bottom = 110;
  const int width = left + group * static_cast<int>(results.size()) + 140;
  auto y = [&](double v) { return 20 + height - v / top * height; };
  std::string svg = absl::StrFormat(
      "<svg xmlns='http://www.w3.org/2000/svg' width='%d' height='%d' font-family='sans-serif' "
      "font-size='11'>\n<rect width='100%%' height='100%%' fill='white'/>\n"
      "<text x='%d' y='14' font-size='13'>Cycles per operation under QEMU TCG (median, "
      "min-max)</text>\n",
      width, height + bottom + 20, left);
  for (int t = 0; t <= 5; ++t) {
    const double v = top * t / 5;
    absl::StrAppend(&svg, absl::StrFormat("<line x1='%d' x2='%d' y1='%.1f' y2='%.1f' "
                                          "stroke='#ddd'/><text x='%d' y='%.1f' "
                                          "text-anchor='end'>%.0f</text>\n",
                                          left, width - 140, y(v), y(v), left - 4, y(v) + 4, v));
  }
  int x = left + 8;
  for (const Result& r : results) {
    const struct {
      double BenchSample::*field;
      const char* color;
    } bars[] = {{&BenchSample::tpr_read, "#3b7dd8"},
                {&BenchSample::tpr_write, "#e07b39"},
                {&BenchSample::mem_read, "#888888"}};
    int bx = x;
    for (const auto& bar : bars) {
      Summary s = Field(r, bar.field);
      if (s.n > 0) {
        absl::StrAppend(&svg, absl::StrFormat("<rect x='%d' y='%.1f' width='16' height='%.1f' "
                                              "fill='%s'/>\n<line x1='%d' x2='%d' y1='%.1f' "
                                              "y2='%.1f' stroke='black'/>\n",
                                              bx, y(s.median), y(0) - y(s.median), bar.color,
                                              bx + 8, bx + 8, y(s.max), y(s.min)));
        absl::StrAppend(&svg, absl::StrFormat("<text transform='translate(%d,%.1f) rotate(-90)' "
                                              "font-size='9'>%.0f</text>\n",
                                              bx + 12, y(s.max) - 3, s.median));
      }
      bx += 17;
    }
    const std::string label =
        absl::StrCat(r.config.name, " x", r.vcpus, r.status == "ok" ? "" : " (" + r.status + ")");
    absl::StrAppend(&svg, absl::StrFormat("<text transform='translate(%d,%.1f) rotate(45)'>%s"
                                          "</text>\n",
                                          x + 4, y(0) + 12, label));
    x += group;
  }
  const int lx = width - 130;
  const char* names[] = {"TPR read", "TPR write", "mem read (floor)"};
  const char* colors[] = {"#3b7dd8", "#e07b39", "#888888"};
  for (int i = 0; i < 3; ++i) {
    absl::StrAppend(&svg,
                    absl::StrFormat("<rect x='%d' y='%d' width='12' height='12' "
                                    "fill='%s'/><text x='%d' y='%d'>%s</text>\n",
                                    lx, 40 + 18 * i, colors[i], lx + 16, 50 + 18 * i, names[i]));
  }
  absl::StrAppend(&svg, "</svg>\n");
  return svg;
}

namespace {

json SamplesJson(const std::vector<BenchSample>& samples) {
  json out = json::array();
  for (const BenchSample& s : samples) {
    out.push_back({{"tpr_read", s.tpr_read},
                   {"tpr_write", s.tpr_write},
                   {"mem_read", s.mem_read},
                   {"mem_write", s.mem_write}});
  }
  return out;
}

}  // namespace

json ResultJson(const Result& r) {
  json samples = SamplesJson(r.samples);
  json rolled = SamplesJson(r.after_rollback);
  return {{"config", r.config.name},
          {"after_rollback", rolled},
          {"label", r.config.label},
          {"vcpus", r.vcpus},
          {"vapic", !r.config.vapic_off},
          {"cr8legacy_cpu", r.config.cr8legacy_cpu},
          {"status", r.status},
          {"message", r.message},
          {"samples", samples},
          {"tpr_read", SummaryJson(Field(r, &BenchSample::tpr_read))},
          {"tpr_write", SummaryJson(Field(r, &BenchSample::tpr_write))},
          {"mem_read", SummaryJson(Field(r, &BenchSample::mem_read))},
          {"mem_write", SummaryJson(Field(r, &BenchSample::mem_write))},
          {"exits_before", r.exits_before.ToJson()},
          {"exits_after", r.exits_after.ToJson()},
          {"enable", r.enable},
          {"load_before", r.load_before},
          {"load_after", r.load_after},
          {"stat_lines", r.stat_lines},
          {"stat_fail_lines", r.stat_fail_lines},
          {"fail_lines", r.fail_lines},
          {"first_fails_after_enable", r.first_fails},
          {"seconds", r.seconds}};
}

}  // namespace tprd::bench

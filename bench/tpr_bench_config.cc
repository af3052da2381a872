// tprd_bench: one configuration of the test guest: boot it, warm up, count APIC exits, enable
// tprd (pause, convergence, traps), take the measured BENCH rounds, roll back.
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "bench/tpr_bench.h"

namespace tprd::bench {

std::unique_ptr<TestDomain> Harness::Boot(int vcpus, bool vapic_off, bool cr8cpu,
                                          std::string* error, const std::string& cmdline,
                                          int memory_mib) {
  TestDomainOptions o;
  o.kernel = testing::TestGuestElf();
  o.vcpus = vcpus;
  o.vapic_off = vapic_off;
  o.cr8legacy_cpu = cr8cpu;
  o.cmdline = cmdline;
  o.memory_mib = memory_mib;
  o.name_prefix = "tprd-bench";
  absl::StatusOr<std::unique_ptr<TestDomain>> d = TestDomain::Create(o);
  if (!d.ok()) {
    *error = std::string(d.status().message());
    return nullptr;
  }
  return std::move(*d);
}

Result Harness::RunConfig(const Config& config, int vcpus) {
  Result r;
  r.config = config;
  r.vcpus = vcpus;
  const double started = NowSeconds();
  r.load_before = LoadAverage();
  Say(absl::StrCat(config.name, " x", vcpus, ": booting (load ", r.load_before, ")"));
  std::string error;
  std::unique_ptr<TestDomain> domain = Boot(vcpus, config.vapic_off, config.cr8legacy_cpu, &error);
  if (!domain) {
    r.status = "error";
    r.message = error;
    return r;
  }
  const std::string name = domain->name();
  WaitOutcome died;
  auto crashed = [&](const std::string& when) {
    if (died.stalled) {
      r.status = "stalled";
      r.message = absl::StrCat("the domain stayed paused for 8 s ", when, ". tprd's log for it:\n",
                               tprd_.LogFor(name), "\nLast serial lines:\n", domain->LastLines(6));
      Say(absl::StrCat(config.name, " x", vcpus, ": STALLED ", when));
      return;
    }
    r.status = "crashed";
    r.message = absl::StrCat("the domain died ", when,
                             " (it has on_reboot=destroy: a guest reset, e.g. a triple "
                             "fault, ends it). Last serial lines:\n",
                             domain->LastLines(12), "QEMU log (", QemuLogPath(name), ") tail:\n",
                             Tail(ReadFile(QemuLogPath(name)), 6));
    Say(absl::StrCat(config.name, " x", vcpus, ": CRASHED ", when));
  };
  // Warm-up: the first BENCH line after boot is thrown away.
  std::optional<size_t> first = WaitLine(*domain, "BENCH ", 0, 120, &died);
  if (!first) {
    if (died) {
      crashed("before its first BENCH line");
    } else {
      r.status = "error";
      r.message = "no BENCH line within 120 s:\n" + domain->LastLines(12);
    }
    return r;
  }
  if (options_.trace_seconds > 0) {
    r.exits_before = CountExits(name, options_.trace_seconds);
  }
  size_t from = domain->Lines().size();
  absl::Time proven = absl::Now();
  if (!config.strategy.empty()) {
    if (!Enable(*domain, config.strategy, r)) return r;
    proven = absl::Now() + absl::Seconds(options_.proving_window_s + 1);
    from = domain->Lines().size();
    if (options_.trace_seconds > 0) {
      r.exits_after = CountExits(name, options_.trace_seconds);
    }
  }
  // One more warm-up BENCH line, after tprd's proving window, then the measured rounds.
  std::optional<size_t> warm = WaitLine(*domain, "BENCH ", from, 60, &died);
  while (warm && absl::Now() < proven && !g_interrupted) {
    warm = WaitLine(*domain, "BENCH ", *warm + 1, 60, &died);
  }
  size_t at = warm ? *warm + 1 : from;
  for (int i = 0; warm && i < options_.rounds && !g_interrupted; ++i) {
    std::optional<size_t> index = WaitLine(*domain, "BENCH ", at, 60, &died);
    if (!index) break;
    std::vector<std::string> lines = domain->Lines();
    if (std::optional<BenchSample> s = ParseBench(lines[*index])) r.samples.push_back(*s);
    at = *index + 1;
  }
  if (died) {
    crashed(absl::StrCat("after ", r.samples.size(), " measured BENCH rounds"));
  } else if (static_cast<int>(r.samples.size()) < options_.rounds && !g_interrupted) {
    r.status = "error";
    r.message = "BENCH lines stopped coming:\n" + domain->LastLines(12);
  }
  if (!config.strategy.empty()) {
    // Was tprd still in charge at the end of the measured rounds?
    std::optional<json> st = tprd_.CtlJson({"status", name});
    const std::string state = st ? st->value("state", "") : "unknown";
    r.enable["state_at_end"] = state;
    r.enable["strategy_at_end"] = st ? st->value("strategy", "") : "unknown";
    if (state != "patched" && r.status == "ok") {
      r.status = "degraded";
      r.message = absl::StrCat("tprd's state at the end of the rounds: ", state,
                               " (the rounds did not all run patched). tprd's log for it:\n",
                               tprd_.LogFor(name));
    }
  }
  // The guest's own checks over the measured period.
  std::vector<std::string> lines = domain->Lines();
  for (size_t i = r.enable_line; i < lines.size(); ++i) {
    if (absl::StartsWith(lines[i], "FAIL ") && r.first_fails.size() < 5) {
      r.first_fails.push_back(lines[i]);
    }
  }
  for (size_t i = from; i < lines.size(); ++i) {
    if (absl::StartsWith(lines[i], "STAT ")) {
      ++r.stat_lines;
      r.stat_fail_lines += ParseSerialFields(lines[i])["fail"] != "0";
    }
    r.fail_lines += absl::StartsWith(lines[i], "FAIL ");
  }
  r.load_after = LoadAverage();
  if (!config.strategy.empty() && r.status == "ok") {
    // After rollback (original bytes back, tprd's breakpoints and watchpoints removed): two
    // more rounds show what the traps alone cost the guest under TCG.
    RunResult rb = tprd_.Ctl({"rollback", name});
    r.enable["rollback_exit_code"] = rb.exit_code;
    const size_t after = domain->Lines().size();
    std::optional<size_t> w = WaitLine(*domain, "BENCH ", after, 60, &died);
    for (int i = 0; w && i < 2; ++i) {
      std::optional<size_t> index = WaitLine(*domain, "BENCH ", *w + 1, 60, &died);
      if (!index) break;
      if (std::optional<BenchSample> s = ParseBench(domain->Lines()[*index])) {
        r.after_rollback.push_back(*s);
      }
      w = index;
    }
  }
  (void)domain->Destroy();
  r.seconds = NowSeconds() - started;
  Say(absl::StrCat(config.name, " x", vcpus, ": ", r.status, ", ", r.samples.size(), " rounds, ",
                   absl::StrFormat("%.0f", r.seconds), " s"));
  return r;
}

// tprctl enable, then convergence (last site event from `tprctl watch`), then traps/s.
bool Harness::Enable(TestDomain& domain, const std::string& strategy, Result& r,
                     const std::string& budget) {
  const std::string name = domain.name();
  const std::string watch_path = absl::StrCat(dir_, "/watch-", name, ".jsonl");
  pid_t watch = Spawn(tprd_.ArgvWatch(name), watch_path, watch_path + ".err");
  usleep(300000);  // let the watch stream subscribe before the enable starts
  const uint64_t log_from = FileSize(tprd_.log_path());
  std::vector<std::string> args = {"--json", "enable", name, "--strategy", strategy};
  if (!budget.empty()) {
    args.push_back("--budget");
    args.push_back(budget);
  }
  // Guest-side cross-check: QEMU stops the guest's TSC while the VM is stopped, so the
  // guest's uptime_ms (rdtsc) falls behind the host clock by the time it was stopped. Each
  // STAT cpu=0 line (about 1/s) is timestamped on arrival (20 ms polls).
  std::atomic<bool> stop_probe{false};
  std::mutex stat_mu;
  std::vector<std::pair<double, double>> stat_times;  // host s, guest uptime s (stat_mu)
  auto last_stat = [&]() -> double {
    std::lock_guard<std::mutex> lock(stat_mu);
    return stat_times.empty() ? 0 : stat_times.back().first;
  };
  std::thread probe([&] {
    size_t seen = domain.Lines().size();
    while (!stop_probe) {
      std::vector<std::string> lines = domain.Lines();
      for (; seen < lines.size(); ++seen) {
        if (!absl::StartsWith(lines[seen], "STAT cpu=0 ")) continue;
        double uptime_ms = 0;
        if (absl::SimpleAtod(ParseSerialFields(lines[seen])["uptime_ms"], &uptime_ms)) {
          std::lock_guard<std::mutex> lock(stat_mu);
          stat_times.emplace_back(NowSeconds(), uptime_ms / 1e3);
        }
      }
      usleep(20000);
    }
  });
  // The probe needs one STAT line before the enable.
  for (int i = 0; i < 60 && last_stat() == 0; ++i) usleep(50000);
  r.enable_line = domain.Lines().size();
  const double t_enable = NowSeconds();
  RunResult e = tprd_.Ctl(args);
  const double t_enabled = NowSeconds();
  r.enable["strategy"] = strategy;
  r.enable["tprctl_seconds"] = e.seconds;
  r.enable["exit_code"] = e.exit_code;
  auto finish_probe = [&] {
    stop_probe = true;
    probe.join();
    // The STAT interval that holds the enable: host time minus guest time elapsed in it.
    for (size_t i = 1; i < stat_times.size(); ++i) {
      if (stat_times[i].first < t_enable) continue;
      const double host = stat_times[i].first - stat_times[i - 1].first;
      const double guest = stat_times[i].second - stat_times[i - 1].second;
      r.enable["guest_view_stopped_ms"] = (host - guest) * 1e3;
      r.enable["guest_view_interval_s"] = host;
      break;
    }
  };
  if (e.exit_code != 0) {
    finish_probe();
    Stop(watch);
    r.status = e.exit_code == 1 ? "refused" : "error";
    r.message = Trim(e.err.empty() ? e.out : e.err);
    Say(absl::StrCat(strategy, " x", r.vcpus, ": ", r.status, ": ", r.message));
    return false;
  }
  r.enable["enable_call_s"] = t_enabled - t_enable;
  // Wait for the STAT line after the enable (about 1 s), then stop the probe.
  for (int i = 0; i < 60 && last_stat() < t_enabled; ++i) {
    usleep(50000);
  }
  finish_probe();
  for (const auto& [k, v] : tprd_.EnableLogFields(name, log_from)) r.enable[k] = v;
  // Convergence: sites keep being patched at their first execution; wait until nothing
  // changed for 4 s (at most 60 s).
  int applied = -1;
  double last_change = NowSeconds();
  while (NowSeconds() - last_change < 4 && NowSeconds() - t_enable < 60 && !g_interrupted) {
    std::optional<json> sites = tprd_.CtlJson({"sites", name});
    const int now = sites ? AppliedCount(*sites) : applied;
    if (now != applied) {
      applied = now;
      last_change = NowSeconds();
    }
    usleep(250000);
  }
  Stop(watch);
  double last_site_event = 0;
  int site_events = 0;
  for (absl::string_view line : absl::StrSplit(ReadFile(watch_path), '\n', absl::SkipEmpty())) {
    json ev = json::parse(line, nullptr, false);
    if (ev.is_discarded() || ev.value("kind", "") != "site") continue;
    ++site_events;
    last_site_event = std::max(last_site_event, ev.value("time", 0.0));
  }
  r.enable["sites_applied"] = applied;
  r.enable["site_events"] = site_events;
  if (last_site_event > 0) r.enable["convergence_s"] = last_site_event - t_enable;
  // Traps per second after convergence.
  std::optional<json> s0 = tprd_.CtlJson({"status", name});
  const double t0 = NowSeconds();
  sleep(5);
  std::optional<json> s1 = tprd_.CtlJson({"status", name});
  const double t1 = NowSeconds();
  if (s0 && s1) {
    r.enable["traps_per_s_after"] =
        (s1->value("traps_handled", 0.0) - s0->value("traps_handled", 0.0)) / (t1 - t0);
    r.enable["traps_handled"] = s1->value("traps_handled", 0.0);
    r.enable["state"] = s1->value("state", "");
    r.enable["strategy_now"] = s1->value("strategy", "");
  }
  return true;
}

}  // namespace tprd::bench

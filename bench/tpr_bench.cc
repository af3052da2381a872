// tprd_bench: one run, one table. Boots the test guest (tests/guest) under QEMU TCG through
// libvirt in each configuration (unpatched, QEMU's own patcher, tprd mmio / cr8 / exact; 1 and
// 2 vCPUs), takes the guest's BENCH lines after a warm-up, counts the TPR accesses that reach
// QEMU's APIC emulation (trace events apic_mem_readl/writel), measures tprd's enable (pause,
// convergence, traps), scan throughput and daemon latency under load, and writes
// results.md, results.json and cycles.svg into --out. See docs/performance.md.
//
// Reports numbers; asserts nothing. A configuration that crashes or is refused is reported as
// such, with the evidence, and the run goes on.
#include <libvirt/libvirt.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"
#include "grpcpp/grpcpp.h"
#include "nlohmann/json.hpp"
#include "tests/support/libvirt_test_env.h"
#include "tests/support/qemu_process.h"
#include "tprd/v1/tprd.grpc.pb.h"

namespace tprd::bench {
namespace {

using nlohmann::json;
using testing::ParseSerialFields;
using testing::TestDomain;
using testing::TestDomainOptions;

volatile sig_atomic_t g_interrupted = 0;

struct Options {
  int rounds = 7;                   // BENCH lines per configuration after the warm-up
  double trace_seconds = 2;         // 0: no exits counting (no HMP logfile/trace-event at all)
  std::vector<int> vcpus = {1, 2};  // each exits-counting window
  std::string out = "bench-results";
  std::string only;  // comma-separated configuration names; empty: all
  bool pause = true, scan = true, load = true;
  int load_domains = 6;
  int load_clients = 100;
  double load_seconds = 10;
  std::string micro;  // path of tprd_micro_bench; empty: skip
  // tprd's proving_window_s: breakpoints on candidates that never ran are removed after it
  // (under TCG they slow their whole page). Rounds are measured only once it has passed.
  int proving_window_s = 10;
};

struct Config {
  std::string name;   // unpatched, qemu, mmio, cr8, exact
  std::string label;  // for the table
  bool vapic_off = true;
  bool cr8legacy_cpu = false;
  std::string strategy;  // tprd strategy; empty: tprd stays out
};

const std::vector<Config>& Configs() {
  static const std::vector<Config> configs = {
      {"unpatched", "unpatched (vapic off)", true, false, ""},
      {"qemu", "QEMU's patcher (vapic on)", false, false, ""},
      {"mmio", "tprd mmio", true, false, "mmio"},
      {"cr8", "tprd cr8 (cr8legacy CPU)", true, true, "cr8"},
      {"exact", "tprd exact", true, false, "exact"},
  };
  return configs;
}

void Say(const std::string& text) {
  std::fprintf(stderr, "[bench %s] %s\n",
               absl::FormatTime("%H:%M:%S", absl::Now(), absl::LocalTimeZone()).c_str(),
               text.c_str());
}

std::string Trim(std::string s) {
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r' || s.back() == ' ')) s.pop_back();
  return s;
}

std::string LoadAverage() { return Trim(ReadFile("/proc/loadavg")); }

// ---------------------------------------------------------------------------------------------
// libvirt helpers

bool DomainActive(const std::string& name) {
  virConnectPtr c = virConnectOpen("qemu:///system");
  if (c == nullptr) return false;
  virDomainPtr d = virDomainLookupByName(c, name.c_str());
  bool active = false;
  if (d != nullptr) {
    active = virDomainIsActive(d) == 1;
    virDomainFree(d);
  }
  virConnectClose(c);
  return active;
}

// 1 running, 2 paused (by libvirt, or stopped by a gdbstub nobody serves), 0 gone/other.
int DomainRunState(const std::string& name) {
  virConnectPtr c = virConnectOpen("qemu:///system");
  if (c == nullptr) return 0;
  virDomainPtr d = virDomainLookupByName(c, name.c_str());
  int result = 0;
  if (d != nullptr) {
    int state = 0, reason = 0;
    if (virDomainGetState(d, &state, &reason, 0) == 0) {
      result = state == VIR_DOMAIN_RUNNING ? 1 : state == VIR_DOMAIN_PAUSED ? 2 : 0;
    }
    virDomainFree(d);
  }
  virConnectClose(c);
  return result;
}

RunResult Hmp(const std::string& domain, const std::string& command) {
  return Run({"/usr/bin/virsh", "-q", "-c", "qemu:///system", "qemu-monitor-command", domain,
              "--hmp", command});
}

std::string QemuLogPath(const std::string& domain) {
  return absl::StrCat("/var/log/libvirt/qemu/", domain, ".log");
}

std::string Tail(const std::string& text, size_t lines) {
  std::vector<std::string> all = absl::StrSplit(text, '\n', absl::SkipEmpty());
  const size_t first = all.size() > lines ? all.size() - lines : 0;
  return absl::StrJoin(all.begin() + first, all.end(), "\n");
}

// ---------------------------------------------------------------------------------------------
// The guest

struct BenchSample {
  double tpr_read = 0, tpr_write = 0, mem_read = 0, mem_write = 0;
};

std::optional<BenchSample> ParseBench(const std::string& line) {
  if (!absl::StartsWith(line, "BENCH ")) return std::nullopt;
  std::map<std::string, std::string> f = ParseSerialFields(line);
  BenchSample s;
  if (!absl::SimpleAtod(f["tpr_read"], &s.tpr_read) ||
      !absl::SimpleAtod(f["tpr_write"], &s.tpr_write) ||
      !absl::SimpleAtod(f["mem_read"], &s.mem_read) ||
      !absl::SimpleAtod(f["mem_write"], &s.mem_write)) {
    return std::nullopt;
  }
  return s;
}

// Why a wait ended without its line: the domain died, or it stayed paused (stalled).
struct WaitOutcome {
  bool died = false;
  bool stalled = false;
  explicit operator bool() const { return died || stalled; }
};

// Waits for a line starting with `prefix` at index >= from; stops early when the domain dies
// or stays paused for 8 s. Returns the index, or nullopt (then *outcome says why, if it knows).

std::optional<size_t> WaitLine(TestDomain& domain, const std::string& prefix, size_t from,
                               double timeout_s, WaitOutcome* outcome) {
  const double deadline = NowSeconds() + timeout_s;
  int polls = 0;
  double paused_since = 0;
  while (!g_interrupted) {
    std::vector<std::string> lines = domain.Lines();
    for (size_t i = from; i < lines.size(); ++i) {
      if (absl::StartsWith(lines[i], prefix)) return i;
    }
    if (++polls % 10 == 0) {
      const int state = DomainRunState(domain.name());
      if (state == 0) {
        if (outcome) outcome->died = true;
        return std::nullopt;
      }
      if (state == 2 && paused_since == 0) paused_since = NowSeconds();
      if (state != 2) paused_since = 0;
      if (paused_since > 0 && NowSeconds() - paused_since > 8) {
        if (outcome) outcome->stalled = true;
        return std::nullopt;
      }
    }
    if (NowSeconds() > deadline) break;
    usleep(100000);
  }
  if (outcome && !DomainActive(domain.name())) outcome->died = true;
  return std::nullopt;
}

// ---------------------------------------------------------------------------------------------
// Counting TPR accesses that reach QEMU's APIC: QEMU's log trace backend, events
// apic_mem_readl/apic_mem_writel, switched on for a window with HMP `trace-event`, written to
// a file of our own with HMP `logfile`.

struct ExitWindow {
  bool ok = false;
  std::string error;
  double seconds = 0;
  uint64_t reads = 0, writes = 0, other = 0;
  json ToJson() const {
    json j = {{"ok", ok},
              {"seconds", seconds},
              {"tpr_reads", reads},
              {"tpr_writes", writes},
              {"other_apic", other}};
    if (ok && seconds > 0) {
      j["tpr_reads_per_s"] = reads / seconds;
      j["tpr_writes_per_s"] = writes / seconds;
    }
    if (!error.empty()) j["error"] = error;
    return j;
  }
};

ExitWindow CountExits(const std::string& domain, const std::string& dir, double seconds) {
  static int n = 0;
  ExitWindow w;
  const std::string path = absl::StrCat(dir, "/trace-", domain, "-", n++, ".log");
  RunResult r = Hmp(domain, absl::StrCat("logfile ", path));
  if (r.exit_code != 0) {
    w.error = "HMP logfile: " + Trim(r.err);
    return w;
  }
  const double t0 = NowSeconds();
  r = Hmp(domain, "trace-event apic_mem_* on");
  const double t1 = NowSeconds();
  if (r.exit_code != 0) {
    w.error = "HMP trace-event: " + Trim(r.err);
    return w;
  }
  usleep(static_cast<useconds_t>(seconds * 1e6));
  const double t2 = NowSeconds();
  r = Hmp(domain, "trace-event apic_mem_* off");
  const double t3 = NowSeconds();
  (void)Hmp(domain, "logfile /dev/null");
  // The window: from the middle of the "on" call to the middle of the "off" call.
  w.seconds = (t2 + t3) / 2 - (t0 + t1) / 2;
  TprTraceCount c = CountTprTrace(ReadFile(path));
  w.reads = c.reads;
  w.writes = c.writes;
  w.other = c.other;
  w.ok = r.exit_code == 0;
  if (!w.ok) w.error = "HMP trace-event off: " + Trim(r.err);
  std::error_code ignored;
  std::filesystem::remove(path, ignored);
  return w;
}

// ---------------------------------------------------------------------------------------------
// tprd and tprctl

class Tprd {
 public:
  Tprd(std::string dir, std::string tprd, std::string tprctl, int proving_window_s)
      : dir_(std::move(dir)),
        tprd_(std::move(tprd)),
        tprctl_(std::move(tprctl)),
        proving_window_s_(proving_window_s) {}
  ~Tprd() { Terminate(); }
  std::string socket() const { return dir_ + "/tprd.sock"; }
  std::string log_path() const { return dir_ + "/tprd.log"; }
  pid_t pid() const { return pid_; }

  bool Start() {
    // Its own settings (never /etc/tprd's), and only the bench's domains.
    const std::string config = dir_ + "/tprd.conf";
    std::FILE* f = std::fopen(config.c_str(), "w");
    if (f == nullptr) return false;
    std::fprintf(f, "proving_window_s = %d\n", proving_window_s_);
    std::fclose(f);
    pid_ = Spawn({tprd_, "--socket", socket(), "--state-dir", dir_ + "/state", "--config", config,
                  "--adopt-domains", "tprd-bench-*"},
                 log_path(), log_path());
    if (pid_ <= 0) return false;
    for (int i = 0; i < 300; ++i) {
      if (Ctl({"domains"}).exit_code == 0) return true;
      usleep(100000);
    }
    return false;
  }
  void Terminate() {
    Stop(pid_, 60000);
    pid_ = -1;
  }
  RunResult Ctl(const std::vector<std::string>& args, int timeout_s = 120) const {
    std::vector<std::string> full = {tprctl_, "--socket", socket(), "--timeout",
                                     std::to_string(timeout_s)};
    full.insert(full.end(), args.begin(), args.end());
    return Run(full);
  }
  std::optional<json> CtlJson(const std::vector<std::string>& args) const {
    std::vector<std::string> full = {"--json"};
    full.insert(full.end(), args.begin(), args.end());
    RunResult r = Ctl(full);
    if (r.exit_code != 0) return std::nullopt;
    json j = json::parse(r.out, nullptr, false);
    if (j.is_discarded()) return std::nullopt;
    return j;
  }
  std::vector<std::string> ArgvWatch(const std::string& domain) const {
    return {tprctl_, "--socket", socket(), "--json", "watch", domain};
  }

  // The daemon's "enabled, pause_us=..." log line for `domain` after byte `from` of its log.
  // tprd's log lines that name `domain`.
  std::string LogFor(const std::string& domain) const {
    std::string out;
    for (absl::string_view line : absl::StrSplit(ReadFile(log_path()), '\n')) {
      if (absl::StrContains(line, domain)) absl::StrAppend(&out, line, "\n");
    }
    return out;
  }

  std::map<std::string, double> EnableLogFields(const std::string& domain, uint64_t from) const {
    std::map<std::string, double> fields;
    const std::string text = ReadFile(log_path(), from);
    const std::string key = absl::StrCat("domain ", domain, ": enabled, ");
    size_t pos = text.rfind(key);
    if (pos == std::string::npos) return fields;
    const size_t eol = text.find('\n', pos);
    const std::string line = text.substr(pos + key.size(), eol - pos - key.size());
    for (absl::string_view kv : absl::StrSplit(line, ' ', absl::SkipEmpty())) {
      std::pair<std::string, std::string> p = absl::StrSplit(kv, absl::MaxSplits('=', 1));
      double v;
      if (absl::SimpleAtod(p.second, &v)) fields[p.first] = v;
    }
    return fields;
  }

 private:
  std::string dir_, tprd_, tprctl_;
  int proving_window_s_ = 10;
  pid_t pid_ = -1;
};

int AppliedCount(const json& sites) {
  int n = 0;
  for (const json& s : sites["sites"]) n += s.value("state", "") == "applied";
  return n;
}

// ---------------------------------------------------------------------------------------------
// One configuration

struct Result {
  Config config;
  int vcpus = 1;
  std::string status = "ok";  // ok, crashed, refused, error, skipped
  std::string message;        // refusal / error / crash evidence
  std::vector<BenchSample> samples;
  std::vector<BenchSample> after_rollback;
  size_t enable_line = 0;                // tprd configs: serial line index at the enable
  std::vector<std::string> first_fails;  // the guest's first FAIL lines after the enable  // tprd
                                         // configs: rounds after rollback
  ExitWindow exits_before, exits_after;
  json enable;  // tprd configs
  std::string load_before, load_after;
  int stat_lines = 0, stat_fail_lines = 0, fail_lines = 0;
  double seconds = 0;
};

Summary Field(const Result& r, double BenchSample::*field) {
  std::vector<double> v;
  for (const BenchSample& s : r.samples) v.push_back(s.*field);
  return Summarize(v);
}

json SummaryJson(const Summary& s) {
  return {{"n", s.n}, {"median", s.median}, {"min", s.min}, {"max", s.max}};
}

class Harness {
 public:
  Harness(Options options, std::string tprd, std::string tprctl, std::string dir)
      : options_(std::move(options)),
        dir_(dir),
        tprd_(dir, std::move(tprd), std::move(tprctl), options_.proving_window_s) {}

  bool StartTprd() { return tprd_.Start(); }
  Tprd& tprd() { return tprd_; }

  std::unique_ptr<TestDomain> Boot(int vcpus, bool vapic_off, bool cr8cpu, std::string* error,
                                   const std::string& cmdline = "", int memory_mib = 64) {
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

  Result RunConfig(const Config& config, int vcpus) {
    Result r;
    r.config = config;
    r.vcpus = vcpus;
    const double started = NowSeconds();
    r.load_before = LoadAverage();
    Say(absl::StrCat(config.name, " x", vcpus, ": booting (load ", r.load_before, ")"));
    std::string error;
    std::unique_ptr<TestDomain> domain =
        Boot(vcpus, config.vapic_off, config.cr8legacy_cpu, &error);
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
        r.message =
            absl::StrCat("the domain stayed paused for 8 s ", when, ". tprd's log for it:\n",
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
      r.exits_before = CountExits(name, dir_, options_.trace_seconds);
    }
    size_t from = domain->Lines().size();
    absl::Time proven = absl::Now();
    if (!config.strategy.empty()) {
      if (!Enable(*domain, config.strategy, r)) return r;
      proven = absl::Now() + absl::Seconds(options_.proving_window_s + 1);
      from = domain->Lines().size();
      if (options_.trace_seconds > 0) {
        r.exits_after = CountExits(name, dir_, options_.trace_seconds);
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
  bool Enable(TestDomain& domain, const std::string& strategy, Result& r,
              const std::string& budget = "") {
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

  // Pause versus sites patched in the enable's stop: fresh 2-vCPU mmio domains with shorter
  // discovery budgets (the learning window proves fewer sites).
  json PauseSweep() {
    json points = json::array();
    for (const char* budget : {"0.002", "0.01", "0.03", "0.1", "0.5"}) {
      if (g_interrupted) break;
      std::string error;
      std::unique_ptr<TestDomain> domain = Boot(2, true, false, &error);
      if (!domain) {
        points.push_back({{"budget_s", budget}, {"error", error}});
        continue;
      }
      WaitOutcome died;
      if (!WaitLine(*domain, "STAT cpu=1 ", 0, 120, &died)) {
        points.push_back({{"budget_s", budget}, {"error", "guest did not come up"}});
        continue;
      }
      Result r;
      r.vcpus = 2;
      if (Enable(*domain, "mmio", r, budget)) {
        json p = r.enable;
        p["budget_s"] = budget;
        points.push_back(p);
        Say(absl::StrCat("pause sweep budget ", budget, ": ", p.dump()));
      } else {
        points.push_back({{"budget_s", budget}, {"error", r.message}});
      }
      (void)domain->Destroy();
    }
    return points;
  }

  // tprctl scan: wall time of the call; bytes = the RAM the guest maps (BOOT ram_mapped).
  json Scan() {
    json out;
    std::string error;
    std::unique_ptr<TestDomain> domain = Boot(1, true, false, &error, "", 64);
    if (!domain) return {{"error", error}};
    WaitOutcome died;
    std::optional<size_t> boot = WaitLine(*domain, "BOOT ", 0, 120, &died);
    if (!boot || !WaitLine(*domain, "STAT cpu=0 ", 0, 60, &died)) {
      return {{"error", "guest did not come up"}};
    }
    std::map<std::string, std::string> f = ParseSerialFields(domain->Lines()[*boot]);
    uint64_t ram = 0;
    absl::string_view hex = f["ram_mapped"];
    absl::ConsumePrefix(&hex, "0x");
    (void)absl::SimpleHexAtoi(hex, &ram);
    std::vector<double> seconds;
    size_t candidates = 0;
    for (int i = 0; i < 5; ++i) {
      RunResult r = tprd_.Ctl({"--json", "scan", domain->name()});
      if (r.exit_code != 0) return {{"error", Trim(r.err)}};
      json j = json::parse(r.out, nullptr, false);
      if (!j.is_discarded()) candidates = j["candidates"].size();
      seconds.push_back(r.seconds);
    }
    Summary s = Summarize(seconds);
    out["ram_mapped_bytes"] = ram;
    out["candidates"] = candidates;
    out["seconds"] = SummaryJson(s);
    out["mb_per_s_median"] = s.median > 0 ? ram / 1e6 / s.median : 0;
    out["note"] =
        "end to end: tprctl process, gRPC, gdbstub attach/stop, page walk and classification of "
        "every mapped RAM page above 0x80000000, resume";
    (void)domain->Destroy();
    return out;
  }

  // Daemon latency: N patched 1-vCPU domains, C concurrent gRPC clients calling ListSites and
  // GetDomain for load_seconds; tprd's RSS before and after.
  json DaemonLoad() {
    json out;
    const uint64_t rss_idle = RssKib(tprd_.pid());
    std::vector<std::unique_ptr<TestDomain>> domains;
    int patched = 0;
    for (int i = 0; i < options_.load_domains && !g_interrupted; ++i) {
      std::string error;
      std::unique_ptr<TestDomain> d = Boot(1, true, false, &error, "nobench", 32);
      if (!d) {
        out["error"] = error;
        break;
      }
      domains.push_back(std::move(d));
    }
    for (auto& d : domains) {
      WaitOutcome died;
      if (!WaitLine(*d, "STAT cpu=0 ", 0, 120, &died)) continue;
      RunResult e = tprd_.Ctl({"enable", d->name(), "--strategy", "mmio"});
      patched += e.exit_code == 0;
    }
    sleep(3);
    const uint64_t rss_loaded = RssKib(tprd_.pid());
    out["domains"] = domains.size();
    out["patched"] = patched;
    out["rss_kib_idle"] = rss_idle;
    out["rss_kib_loaded"] = rss_loaded;
    if (patched > 0) {
      out["rss_kib_per_domain"] =
          (static_cast<double>(rss_loaded) - static_cast<double>(rss_idle)) / patched;
    }
    std::vector<std::string> names;
    for (auto& d : domains) names.push_back(d->name());
    if (names.empty()) return out;
    std::mutex mu;
    std::vector<double> list_ms, get_ms;
    uint64_t errors = 0;
    std::atomic<bool> stop{false};
    std::vector<std::thread> clients;
    for (int c = 0; c < options_.load_clients; ++c) {
      clients.emplace_back([&, c] {
        auto channel =
            grpc::CreateChannel("unix:" + tprd_.socket(), grpc::InsecureChannelCredentials());
        auto stub = tprd::v1::Tprd::NewStub(channel);
        std::mt19937 rng(c);
        std::vector<double> mine_list, mine_get;
        uint64_t mine_errors = 0;
        while (!stop) {
          const std::string& name = names[rng() % names.size()];
          const bool list = rng() % 2;
          grpc::ClientContext ctx;
          ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
          const double t0 = NowSeconds();
          grpc::Status st;
          if (list) {
            tprd::v1::ListSitesRequest req;
            req.set_domain(name);
            tprd::v1::ListSitesResponse resp;
            st = stub->ListSites(&ctx, req, &resp);
          } else {
            tprd::v1::GetDomainRequest req;
            req.set_domain(name);
            tprd::v1::DomainStatus resp;
            st = stub->GetDomain(&ctx, req, &resp);
          }
          const double ms = (NowSeconds() - t0) * 1e3;
          if (!st.ok()) {
            ++mine_errors;
            continue;
          }
          (list ? mine_list : mine_get).push_back(ms);
        }
        std::lock_guard<std::mutex> lock(mu);
        list_ms.insert(list_ms.end(), mine_list.begin(), mine_list.end());
        get_ms.insert(get_ms.end(), mine_get.begin(), mine_get.end());
        errors += mine_errors;
      });
    }
    usleep(static_cast<useconds_t>(options_.load_seconds * 1e6));
    stop = true;
    for (std::thread& t : clients) t.join();
    const uint64_t rss_after = RssKib(tprd_.pid());
    out["clients"] = options_.load_clients;
    out["seconds"] = options_.load_seconds;
    out["errors"] = errors;
    out["rss_kib_after_clients"] = rss_after;
    out["list_sites"] = {{"calls", list_ms.size()},
                         {"p50_ms", Percentile(list_ms, 50)},
                         {"p99_ms", Percentile(list_ms, 99)}};
    out["get_domain"] = {{"calls", get_ms.size()},
                         {"p50_ms", Percentile(get_ms, 50)},
                         {"p99_ms", Percentile(get_ms, 99)}};
    out["load"] = LoadAverage();
    for (auto& d : domains) (void)d->Destroy();
    return out;
  }

 private:
  Options options_;
  std::string dir_;
  Tprd tprd_;
};

// ---------------------------------------------------------------------------------------------
// Output

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

std::string Machine() {
  utsname u;
  uname(&u);
  std::string cpu;
  for (absl::string_view line : absl::StrSplit(ReadFile("/proc/cpuinfo"), '\n')) {
    if (absl::StartsWith(line, "model name")) {
      cpu = std::string(line.substr(line.find(':') + 2));
      break;
    }
  }
  return absl::StrCat(cpu, ", ", std::thread::hardware_concurrency(), " CPUs, ", u.sysname, " ",
                      u.release);
}

int Main(int argc, char** argv) {
  Options options;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string { return i + 1 < argc ? argv[++i] : ""; };
    if (a == "--rounds") {
      options.rounds = std::stoi(value());
    } else if (a == "--out") {
      options.out = value();
    } else if (a == "--only") {
      options.only = value();
    } else if (a == "--trace-seconds") {
      options.trace_seconds = std::stod(value());
    } else if (a == "--vcpus") {
      options.vcpus.clear();
      for (absl::string_view v : absl::StrSplit(value(), ',', absl::SkipEmpty())) {
        int n = 0;
        if (absl::SimpleAtoi(v, &n) && n > 0) options.vcpus.push_back(n);
      }
    } else if (a == "--no-pause") {
      options.pause = false;
    } else if (a == "--no-scan") {
      options.scan = false;
    } else if (a == "--no-load") {
      options.load = false;
    } else if (a == "--load-domains") {
      options.load_domains = std::stoi(value());
    } else if (a == "--load-clients") {
      options.load_clients = std::stoi(value());
    } else if (a == "--svg-from") {
      // Re-draws the chart of an earlier run: --svg-from results.json > cycles.svg
      json doc = json::parse(ReadFile(value()), nullptr, false);
      if (doc.is_discarded() || !doc.contains("results")) return 2;
      std::vector<Result> results;
      for (const json& j : doc["results"]) {
        Result r;
        r.config.name = j.value("config", "");
        r.config.label = j.value("label", "");
        r.vcpus = j.value("vcpus", 1);
        r.status = j.value("status", "");
        for (const json& x : j["samples"]) {
          r.samples.push_back({x.value("tpr_read", 0.0), x.value("tpr_write", 0.0),
                               x.value("mem_read", 0.0), x.value("mem_write", 0.0)});
        }
        results.push_back(std::move(r));
      }
      std::printf("%s", Svg(results).c_str());
      return 0;
    } else if (a == "--proving-window") {
      options.proving_window_s = std::stoi(value());
    } else if (a == "--micro") {
      options.micro = value();
    } else {
      std::fprintf(stderr,
                   "usage: tprd_bench [--rounds N] [--out DIR] [--only unpatched,qemu,mmio,cr8,"
                   "exact] [--trace-seconds S] [--vcpus 1,2] [--no-pause] [--no-scan] [--no-load] "
                   "[--load-domains N] [--load-clients N] [--proving-window S] [--micro PATH] | "
                   "--svg-from results.json\n");
      return 2;
    }
  }
  if (geteuid() != 0) {
    std::fprintf(stderr, "tprd_bench: run as root (qemu:///system, tprd's gdbstub sockets)\n");
    return 2;
  }
  signal(SIGINT, [](int) { g_interrupted = 1; });
  signal(SIGTERM, [](int) { g_interrupted = 1; });
  std::filesystem::create_directories(options.out);
  char dir_template[] = "/tmp/tprd-bench-XXXXXX";  // mkdtemp: mode 0700, root only
  if (mkdtemp(dir_template) == nullptr) return 1;
  const std::string dir = dir_template;

  const double started = NowSeconds();
  json doc;
  doc["started"] = absl::FormatTime(absl::RFC3339_sec, absl::Now(), absl::UTCTimeZone());
  doc["machine"] = Machine();
  doc["qemu"] = Trim(Run({"/usr/bin/qemu-system-i386", "--version"}).out.substr(0, 60));
  doc["libvirt"] = Trim(Run({"/usr/bin/virsh", "--version"}).out);
  doc["load_at_start"] = LoadAverage();
  doc["rounds"] = options.rounds;
  doc["trace_seconds"] = options.trace_seconds;

  Harness harness(options, TPRD_PATH, TPRCTL_PATH, dir);
  if (!harness.StartTprd()) {
    std::fprintf(stderr, "tprd_bench: tprd did not start (log %s/tprd.log)\n", dir.c_str());
    return 1;
  }
  Say(absl::StrCat("tprd pid ", harness.tprd().pid(), ", work dir ", dir));
  std::set<std::string> only;
  for (absl::string_view s : absl::StrSplit(options.only, ',', absl::SkipEmpty())) {
    only.insert(std::string(s));
  }
  std::vector<Result> results;
  for (const Config& c : Configs()) {
    if (!only.empty() && !only.count(c.name)) continue;
    for (int vcpus : options.vcpus) {
      if (g_interrupted) break;
      results.push_back(harness.RunConfig(c, vcpus));
    }
  }
  json extra;
  if (options.pause && !g_interrupted) extra["pause_sweep"] = harness.PauseSweep();
  if (options.scan && !g_interrupted) extra["scan"] = harness.Scan();
  if (options.load && !g_interrupted) extra["daemon_load"] = harness.DaemonLoad();
  if (!options.micro.empty() && !g_interrupted) {
    RunResult m = Run({options.micro, "--benchmark_format=json"});
    json j = json::parse(m.out, nullptr, false);
    if (!j.is_discarded()) extra["micro"] = j;
  }
  harness.tprd().Terminate();

  doc["load_at_end"] = LoadAverage();
  doc["seconds"] = NowSeconds() - started;
  doc["results"] = json::array();
  for (const Result& r : results) doc["results"].push_back(ResultJson(r));
  for (auto& [k, v] : extra.items()) doc[k] = v;
  const std::string md = absl::StrCat(
      "Machine: ", doc["machine"].get<std::string>(), "; ", doc["qemu"].get<std::string>(),
      "; libvirt ", doc["libvirt"].get<std::string>(), "; load at start ",
      doc["load_at_start"].get<std::string>(), ", at end ", doc["load_at_end"].get<std::string>(),
      "; ", options.rounds, " rounds per configuration; run took ",
      absl::StrFormat("%.0f", doc["seconds"].get<double>()), " s\n\n", Markdown(results, extra));
  std::ofstream(options.out + "/results.md") << md;
  std::ofstream(options.out + "/results.json") << doc.dump(2) << "\n";
  std::ofstream(options.out + "/cycles.svg") << Svg(results);
  std::printf("%s", md.c_str());
  std::fprintf(stderr, "tprd_bench: wrote %s/results.md, results.json, cycles.svg\n",
               options.out.c_str());
  std::error_code ignored;
  std::filesystem::copy_file(dir + "/tprd.log", options.out + "/tprd.log",
                             std::filesystem::copy_options::overwrite_existing, ignored);
  std::filesystem::remove_all(dir, ignored);
  return 0;
}

}  // namespace
}  // namespace tprd::bench

int main(int argc, char** argv) { return tprd::bench::Main(argc, argv); }

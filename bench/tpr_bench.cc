// tprd_bench: one run, one table. Boots the test guest (tests/guest) under QEMU TCG through
// libvirt in each configuration (unpatched, QEMU's own patcher, tprd mmio / cr8 / exact; 1 and
// 2 vCPUs), takes the guest's BENCH lines after a warm-up, counts the TPR accesses that reach
// QEMU's APIC emulation (trace events apic_mem_readl/writel), measures tprd's enable (pause,
// convergence, traps), scan throughput and daemon latency under load, and writes
// results.md, results.json and cycles.svg into --out. See docs/performance.md.
//
// Reports numbers; asserts nothing. A configuration that crashes or is refused is reported as
// such, with the evidence, and the run goes on.
//
// This file: the command line, the run and the files it writes. The rest is in tpr_bench_*.cc,
// declared in tpr_bench.h.
#include "bench/tpr_bench.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "bench/bench_util.h"

namespace tprd::bench {

volatile sig_atomic_t g_interrupted = 0;

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

namespace {

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

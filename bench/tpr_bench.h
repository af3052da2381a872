// Shared declarations of the tprd_bench harness (bench/tpr_bench*.cc): options and
// configurations, the guest and its serial lines, the tprd process, one configuration's result,
// the harness that measures, and the report writers.
#ifndef TPRD_BENCH_TPR_BENCH_H_
#define TPRD_BENCH_TPR_BENCH_H_

#include <signal.h>
#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bench/bench_util.h"
#include "nlohmann/json.hpp"
#include "tests/support/libvirt_test_env.h"
#include "tests/support/qemu_process.h"

namespace tprd::bench {

using nlohmann::json;
using testing::ParseSerialFields;
using testing::TestDomain;
using testing::TestDomainOptions;

// Set by SIGINT/SIGTERM (tpr_bench.cc): the run stops measuring and writes what it has.
extern volatile sig_atomic_t g_interrupted;

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

const std::vector<Config>& Configs();

// Progress line on stderr, with the time.
void Say(const std::string& text);
std::string Trim(std::string s);
std::string LoadAverage();

// ---------------------------------------------------------------------------------------------
// libvirt and the guest (tpr_bench_guest.cc)

std::string QemuLogPath(const std::string& domain);
std::string Tail(const std::string& text, size_t lines);

struct BenchSample {
  double tpr_read = 0, tpr_write = 0, mem_read = 0, mem_write = 0;
};

std::optional<BenchSample> ParseBench(const std::string& line);

// Why a wait ended without its line: the domain died, or it stayed paused (stalled).
struct WaitOutcome {
  bool died = false;
  bool stalled = false;
  explicit operator bool() const { return died || stalled; }
};

// Waits for a line starting with `prefix` at index >= from; stops early when the domain dies
// or stays paused for 8 s. Returns the index, or nullopt (then *outcome says why, if it knows).
std::optional<size_t> WaitLine(TestDomain& domain, const std::string& prefix, size_t from,
                               double timeout_s, WaitOutcome* outcome);

// Counting TPR accesses that reach QEMU's APIC: QEMU's log trace backend, events
// apic_mem_readl/apic_mem_writel, switched on for a window with HMP `trace-event`, written to
// a file in the domain's libvirt directory with HMP `logfile`.

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

ExitWindow CountExits(const std::string& domain, double seconds);

// ---------------------------------------------------------------------------------------------
// tprd and tprctl (tpr_bench_tprd.cc)

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

  bool Start();
  void Terminate();
  RunResult Ctl(const std::vector<std::string>& args, int timeout_s = 120) const;
  std::optional<json> CtlJson(const std::vector<std::string>& args) const;
  std::vector<std::string> ArgvWatch(const std::string& domain) const;

  // tprd's log lines that name `domain`.
  std::string LogFor(const std::string& domain) const;

  // The daemon's "enabled, pause_us=..." log line for `domain` after byte `from` of its log.
  std::map<std::string, double> EnableLogFields(const std::string& domain, uint64_t from) const;

 private:
  std::string dir_, tprd_, tprctl_;
  int proving_window_s_ = 10;
  pid_t pid_ = -1;
};

int AppliedCount(const json& sites);

// ---------------------------------------------------------------------------------------------
// One configuration (tpr_bench_config.cc; PauseSweep, Scan, DaemonLoad in tpr_bench_tprd.cc)

struct Result {
  Config config;
  int vcpus = 1;
  std::string status = "ok";  // ok, crashed, refused, error, skipped
  std::string message;        // refusal / error / crash evidence
  std::vector<BenchSample> samples;
  std::vector<BenchSample> after_rollback;  // tprd configs: rounds after rollback
  size_t enable_line = 0;                   // tprd configs: serial line index at the enable
  std::vector<std::string> first_fails;     // the guest's first FAIL lines after the enable
  ExitWindow exits_before, exits_after;
  json enable;  // tprd configs
  std::string load_before, load_after;
  int stat_lines = 0, stat_fail_lines = 0, fail_lines = 0;
  double seconds = 0;
};

Summary Field(const Result& r, double BenchSample::*field);
json SummaryJson(const Summary& s);

class Harness {
 public:
  Harness(Options options, std::string tprd, std::string tprctl, std::string dir)
      : options_(std::move(options)),
        dir_(dir),
        tprd_(dir, std::move(tprd), std::move(tprctl), options_.proving_window_s) {}

  bool StartTprd() { return tprd_.Start(); }
  Tprd& tprd() { return tprd_; }

  std::unique_ptr<TestDomain> Boot(int vcpus, bool vapic_off, bool cr8cpu, std::string* error,
                                   const std::string& cmdline = "", int memory_mib = 64);
  Result RunConfig(const Config& config, int vcpus);

  // tprctl enable, then convergence (last site event from `tprctl watch`), then traps/s.
  bool Enable(TestDomain& domain, const std::string& strategy, Result& r,
              const std::string& budget = "");

  // Pause versus sites patched in the enable's stop: fresh 2-vCPU mmio domains with shorter
  // discovery budgets (the learning window proves fewer sites).
  json PauseSweep();

  // tprctl scan: wall time of the call; bytes = the RAM the guest maps (BOOT ram_mapped).
  json Scan();

  // Daemon latency: N patched 1-vCPU domains, C concurrent gRPC clients calling ListSites and
  // GetDomain for load_seconds; tprd's RSS before and after.
  json DaemonLoad();

 private:
  Options options_;
  std::string dir_;
  Tprd tprd_;
};

// ---------------------------------------------------------------------------------------------
// Output (tpr_bench_report.cc)

std::string Markdown(const std::vector<Result>& results, const json& extra);

// A grouped bar chart: per configuration and vCPU count, TPR read and TPR write cycles (median,
// whiskers min-max) and the plain memory read floor.
std::string Svg(const std::vector<Result>& results);
json ResultJson(const Result& r);

}  // namespace tprd::bench

#endif  // TPRD_BENCH_TPR_BENCH_H_

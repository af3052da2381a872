// tprd_bench: the tprd process the bench runs (and tprctl calls to it), and the measurements
// of tprd itself: pause vs sites patched in the enable, scan throughput, daemon latency under load.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "bench/tpr_bench.h"
#include "grpcpp/grpcpp.h"
#include "tprd/v1/tprd.grpc.pb.h"

namespace tprd::bench {

// ---------------------------------------------------------------------------------------------
// tprd and tprctl

bool Tprd::Start() {
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

void Tprd::Terminate() {
  Stop(pid_, 60000);
  pid_ = -1;
}

RunResult Tprd::Ctl(const std::vector<std::string>& args, int timeout_s) const {
  std::vector<std::string> full = {tprctl_, "--socket", socket(), "--timeout",
                                   std::to_string(timeout_s)};
  full.insert(full.end(), args.begin(), args.end());
  return Run(full);
}

std::optional<json> Tprd::CtlJson(const std::vector<std::string>& args) const {
  std::vector<std::string> full = {"--json"};
  full.insert(full.end(), args.begin(), args.end());
  RunResult r = Ctl(full);
  if (r.exit_code != 0) return std::nullopt;
  json j = json::parse(r.out, nullptr, false);
  if (j.is_discarded()) return std::nullopt;
  return j;
}

std::vector<std::string> Tprd::ArgvWatch(const std::string& domain) const {
  return {tprctl_, "--socket", socket(), "--json", "watch", domain};
}

std::string Tprd::LogFor(const std::string& domain) const {
  std::string out;
  for (absl::string_view line : absl::StrSplit(ReadFile(log_path()), '\n')) {
    if (absl::StrContains(line, domain)) absl::StrAppend(&out, line, "\n");
  }
  return out;
}

std::map<std::string, double> Tprd::EnableLogFields(const std::string& domain,
                                                    uint64_t from) const {
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

int AppliedCount(const json& sites) {
  int n = 0;
  for (const json& s : sites["sites"]) n += s.value("state", "") == "applied";
  return n;
}

// ---------------------------------------------------------------------------------------------
// tprd's own costs

// Pause versus sites patched in the enable's stop: fresh 2-vCPU mmio domains with shorter
// discovery budgets (the learning window proves fewer sites).
json Harness::PauseSweep() {
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
json Harness::Scan() {
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
json Harness::DaemonLoad() {
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

}  // namespace tprd::bench

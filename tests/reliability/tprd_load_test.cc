// One tprd patching 20 small test-guest domains (1 vCPU, 32 MiB, QEMU TCG) and 100 concurrent
// gRPC clients calling ListSites for a minute: no error, every guest still correct, tprd's
// memory bounded. The latencies are printed (RESULT lines) for docs/reliability.md, not
// asserted: timings belong to benchmarks.
#include <grpcpp/grpcpp.h>
#include <sys/wait.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_support.h"
#include "tests/support/libvirt_test_env.h"
#include "tests/support/subprocess.h"
#include "tprd/v1/tprd.grpc.pb.h"

namespace tprd::testing {
namespace {

int EnvOr(const char* name, int fallback) {
  const char* value = std::getenv(name);
  return value != nullptr && std::atoi(value) > 0 ? std::atoi(value) : fallback;
}

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, static_cast<size_t>(p / 100.0 * v.size()))];
}

TEST(TprdLoad, TwentyPatchedDomainsAndAHundredClientsForAMinute) {
  const int domains_wanted = EnvOr("TPRD_LOAD_DOMAINS", 20);
  const int clients = EnvOr("TPRD_LOAD_CLIENTS", 100);
  const int seconds = EnvOr("TPRD_LOAD_SECONDS", 60);
  TprdProcess tprd(MakeTprdDir(), "proving_window_s = 5\n");
  tprd.Start();
  if (HasFatalFailure()) return;
  const uint64_t rss_idle = RssKib(tprd.pid());

  std::vector<std::unique_ptr<TestDomain>> domains;
  for (int i = 0; i < domains_wanted; ++i) {
    TestDomainOptions options;
    options.kernel = TestGuestElf();
    options.vcpus = 1;
    options.memory_mib = 32;
    options.cmdline = "nobench";
    absl::StatusOr<std::unique_ptr<TestDomain>> created = TestDomain::Create(options);
    ASSERT_TRUE(created.ok()) << "domain " << i << ": " << created.status();
    domains.push_back(*std::move(created));
  }
  for (auto& domain : domains) {
    ASSERT_TRUE(domain->WaitForPrefix("STAT cpu=0 ", absl::Seconds(300)).ok())
        << domain->name() << ":\n"
        << domain->LastLines();
  }
  // All enables at once: one actor per domain, so they run side by side.
  std::vector<std::pair<pid_t, std::string>> enables;
  for (auto& domain : domains) {
    const std::string log = domain->serial_path() + ".enable";
    enables.emplace_back(Spawn({TprctlPath(), "--socket", tprd.socket(), "--timeout", "300",
                                "enable", domain->name(), "--strategy", "mmio"},
                               log, log),
                         log);
  }
  for (size_t i = 0; i < enables.size(); ++i) {
    int status = 0;
    ASSERT_EQ(waitpid(enables[i].first, &status, 0), enables[i].first);  // tprctl bounds itself
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << domains[i]->name() << ": " << ReadFile(enables[i].second);
  }
  if (HasFailure()) return;
  // Patched, each with the sites its learning window proved (the rest wait at breakpoints;
  // under this load a 1-vCPU guest may take minutes to reach each of them).
  for (auto& domain : domains) {
    WaitForState(tprd, domain->name(), "patched", absl::Seconds(60), domain->name().c_str());
  }
  if (HasFailure()) return;
  const uint64_t rss_patched = RssKib(tprd.pid());

  std::mutex mu;
  std::vector<double> latencies_ms;
  std::atomic<uint64_t> errors{0};
  std::string first_error;
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  for (int c = 0; c < clients; ++c) {
    threads.emplace_back([&, c] {
      auto channel =
          grpc::CreateChannel("unix:" + tprd.socket(), grpc::InsecureChannelCredentials());
      auto stub = tprd::v1::Tprd::NewStub(channel);
      std::vector<double> mine;
      size_t next = static_cast<size_t>(c);
      while (!stop) {
        tprd::v1::ListSitesRequest request;
        request.set_domain(domains[next++ % domains.size()]->name());
        tprd::v1::ListSitesResponse response;
        grpc::ClientContext context;
        context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
        const absl::Time start = absl::Now();
        grpc::Status status = stub->ListSites(&context, request, &response);
        mine.push_back(absl::ToDoubleMilliseconds(absl::Now() - start));
        if (!status.ok() || response.sites_size() == 0) {
          ++errors;
          std::lock_guard<std::mutex> lock(mu);
          if (first_error.empty()) {
            first_error = status.ok() ? "no sites listed" : status.error_message();
          }
        }
      }
      std::lock_guard<std::mutex> lock(mu);
      latencies_ms.insert(latencies_ms.end(), mine.begin(), mine.end());
    });
  }
  // The load runs for its minute, sampling tprd's memory as it goes.
  uint64_t rss_peak = rss_patched;
  const absl::Time end = absl::Now() + absl::Seconds(seconds);
  while (absl::Now() < end) {
    absl::SleepFor(absl::Seconds(1));  // the sampling period, not a synchronisation
    rss_peak = std::max(rss_peak, RssKib(tprd.pid()));
  }
  stop = true;
  for (std::thread& t : threads) t.join();
  const uint64_t rss_after = RssKib(tprd.pid());

  EXPECT_EQ(errors.load(), 0u) << "first error: " << first_error;
  EXPECT_GT(latencies_ms.size(), static_cast<size_t>(clients)) << "every client got answers";
  // Bounded memory: the patched domains cost little each, and a minute of 100 clients leaves
  // no growth beyond gRPC's per-connection buffers (generous bounds: a leak of one allocation
  // per call would pass 100k calls and exceed them).
  EXPECT_LT(rss_patched, rss_idle + 2048u * static_cast<uint64_t>(domains.size()))
      << "more than 2 MiB per patched domain";
  EXPECT_LT(rss_peak, rss_patched + 64u * 1024u) << "RSS grew by over 64 MiB under the clients";
  for (auto& domain : domains) {
    for (const std::string& line : domain->Lines()) {
      EXPECT_NE(line.rfind("FAIL ", 0), 0u) << domain->name() << ": " << line;
      if (line.rfind("STAT ", 0) == 0) {
        EXPECT_NE(line.find(" fail=0"), std::string::npos) << domain->name() << ": " << line;
      }
    }
  }
  std::cout << "RESULT domains " << domains.size() << " patched, clients " << clients << " for "
            << seconds << " s: " << latencies_ms.size() << " ListSites calls, " << errors
            << " errors; latency p50 " << Percentile(latencies_ms, 50) << " ms, p99 "
            << Percentile(latencies_ms, 99) << " ms, max " << Percentile(latencies_ms, 100)
            << " ms\n"
            << "RESULT tprd RSS KiB: idle " << rss_idle << ", " << domains.size() << " patched "
            << rss_patched << " ("
            << (static_cast<double>(rss_patched) - static_cast<double>(rss_idle)) /
                   static_cast<double>(domains.size())
            << " per domain), peak under clients " << rss_peak << ", after " << rss_after << "\n";
  for (auto& domain : domains) {
    EXPECT_EQ(tprd.Ctl({"rollback", domain->name()}).exit_code, 0) << domain->name();
  }
  EXPECT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
}

}  // namespace
}  // namespace tprd::testing

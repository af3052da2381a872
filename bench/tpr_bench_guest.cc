// tprd_bench: libvirt helpers, the test guest's serial lines (BENCH samples, waiting for a
// line) and counting the TPR accesses that reach QEMU's APIC through its trace backend.
#include <libvirt/libvirt.h>
#include <unistd.h>

#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "bench/bench_util.h"
#include "bench/tpr_bench.h"
#include "kvm-backend/core/apic_trace_count.h"

namespace tprd::bench {
namespace {

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

// libvirt's own directory for the running domain (/var/lib/libvirt/qemu/domain-ID-NAME): QEMU
// runs as libvirt-qemu and can write there, unlike in the bench's directory (which is why the
// traced columns read 0 from 2026-12-06, when the test hosts stopped running QEMU as root).
std::optional<std::string> DomainLibvirtDirectory(const std::string& name) {
  virConnectPtr c = virConnectOpen("qemu:///system");
  if (c == nullptr) return std::nullopt;
  virDomainPtr d = virDomainLookupByName(c, name.c_str());
  int id = -1;
  if (d != nullptr) {
    id = static_cast<int>(virDomainGetID(d));
    virDomainFree(d);
  }
  virConnectClose(c);
  if (id <= 0) return std::nullopt;
  const std::string prefix = absl::StrCat("domain-", id, "-");
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/var/lib/libvirt/qemu", error)) {
    if (absl::StartsWith(entry.path().filename().string(), prefix) && entry.is_directory(error)) {
      return entry.path().string();
    }
  }
  return std::nullopt;
}

}  // namespace

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

ExitWindow CountExits(const std::string& domain, double seconds) {
  static int n = 0;
  ExitWindow w;
  const std::optional<std::string> dir = DomainLibvirtDirectory(domain);
  if (!dir) {
    w.error = "no libvirt directory for the running domain in /var/lib/libvirt/qemu";
    return w;
  }
  const std::string path = absl::StrCat(*dir, "/tprd-bench-trace-", n++, ".log");
  RunResult r = Hmp(domain, absl::StrCat("logfile ", path));
  // HMP prints QEMU's complaint (a file it cannot open) and still exits 0.
  if (r.exit_code != 0 || !Trim(r.out).empty()) {
    w.error = "HMP logfile: " + Trim(r.out) + Trim(r.err);
    (void)Hmp(domain, "logfile /dev/null");
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
  const backend::ApicTraceCount c = backend::CountApicTrace(ReadFile(path));
  w.reads = c.tpr_reads;
  w.writes = c.tpr_writes;
  w.other = c.other;
  w.ok = r.exit_code == 0 && std::filesystem::exists(path);
  if (r.exit_code != 0) {
    w.error = "HMP trace-event off: " + Trim(r.err);
  } else if (!w.ok) {
    w.error = "QEMU wrote no trace file at " + path;
  }
  std::error_code ignored;
  std::filesystem::remove(path, ignored);
  return w;
}

}  // namespace tprd::bench

// Shared support of the end-to-end tests on the HAL-shaped test guest (tests/hal-guest,
// docs/hal-guest.md), tprd_e2e_hal_test.cc and hal_e2e_lifecycle_cases.cc: the cases and
// their configuration (TPRD_HAL_SOAK, TPRD_HAL_SECONDS, TPRD_HAL_SEED), the guest's layout from
// its boot lines, tprd's blob as the guest holds it, tprctl status, the checks of the guest's
// serial lines, and the fixture HalE2e that boots the guest and runs, checks and rolls back tprd.
#ifndef TPRD_TESTS_E2E_HAL_E2E_H_
#define TPRD_TESTS_E2E_HAL_E2E_H_

#include <sys/types.h>

#include <cstdint>
#include <iostream>
#include <map>
#include <memory>
#include <ostream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_support.h"
#include "tests/support/libvirt_test_env.h"
#include "tests/support/qemu_process.h"

namespace tprd::testing {

using Fields = std::map<std::string, std::string>;

// ------------------------------------------------------------------------------ configuration

bool Soak();

// How long each case runs patched, in wall-clock seconds (TPRD_HAL_SECONDS), and at least how
// far the guest's own clock (STAT uptime_ms) must advance in that time on every CPU. The guest's
// clock stops while tprd holds it stopped at a trap; under cr8 this guest traps about a hundred
// times a second (its register-relative and cmp/test accesses are unpatchable by design), so a
// guest second can take several wall seconds.
int RunSeconds();
int GuestSeconds();

// tprd's proving window: short, so that every patched run crosses its end.
inline constexpr int kProvingWindowSeconds = 5;

uint32_t RandomSeed();

struct HalCase {
  std::string strategy;  // "cr8" or "mmio"
  int vcpus = 2;
  uint32_t seed = 1;
  bool random = false;
  // idle=heavy: every CPU halted most of the time, as on an idle machine (what leaving cr8 meets).
  bool idle = false;
  std::string discovery = std::string();  // tprd's `discovery`; empty: auto (breakpoints on TCG)
  // regrel=off: the register-relative path never runs, so no TPR writer tprd cannot patch (the
  // guest then makes no trap stop under mmio once its proving window is over).
  bool no_regrel = false;
};

std::string CaseName(const HalCase& c);

void PrintTo(const HalCase& c, std::ostream* os);

std::vector<HalCase> Cases(const std::string& strategy);

uint64_t Num(const Fields& f, const std::string& key);

bool StartsWith(const std::string& s, const std::string& prefix);

// Progress lines, with the seconds since the case started (for the report's timings).
absl::Time& CaseStart();
// Everything a case said, kept with its logs on failure (KeepLogs writes it as test.log) so that
// a FAIL line's guest uptime can be placed against enable, SIGTERM or rollback afterwards.
std::ostringstream& Narrative();
// Writes to stdout and to the narrative.
class SayStream {
 public:
  template <typename T>
  SayStream& operator<<(const T& value) {
    std::cout << value;
    Narrative() << value;
    return *this;
  }
  SayStream& operator<<(std::ostream& (*manipulator)(std::ostream&)) {
    manipulator(std::cout);
    manipulator(Narrative());
    return *this;
  }
};
SayStream& Say();

// ------------------------------------------------------------------------------ guest layout

// What the guest printed at boot: its SITE and FUNC lines, to name addresses in messages.
struct GuestLayout {
  struct Site {
    std::string name, form, kind;
    uint32_t va = 0;
    uint32_t len = 0;
  };
  struct Func {
    std::string name, tmpl;
    uint32_t va = 0, size = 0;
  };
  std::vector<Site> sites;  // decoys included
  std::vector<Func> funcs;
  uint32_t templates_first = 0, templates_end = 0, decoy_page = 0;
  uint32_t code_first = 0, code_end = 0;
  std::string variant;

  // "KfRaiseIrql.rd (A1) at 0x801234" or "KfRaiseIrql+0x12" or "0x801234".
  std::string Name(uint32_t va) const;
  const Site* SiteAt(uint32_t va) const {
    for (const Site& s : sites) {
      if (s.va == va) return &s;
    }
    return nullptr;
  }
};

GuestLayout ParseLayout(const std::vector<std::string>& lines);

// The sites tprd is expected to patch: TPR accesses of the placed copies in forms tprd patches
// (absolute address, no prefix: every form but regrel/cmp/test/icr), all of which the guest runs
// within milliseconds (hot: every round; rare: every 1-50 ms).
std::vector<const GuestLayout::Site*> PatchableRunSites(const GuestLayout& layout);

// ------------------------------------------------------------------------------ tprd's blob

// tprd's blob as the guest holds it, read from guest-physical memory through QEMU's monitor
// (`xp`), which works while tprd holds the gdbstub.
struct BlobState {
  bool found = false;
  uint32_t pa = 0, data_pa = 0;
  uint32_t strategy_word = 0;
  struct Cpu {
    uint8_t shadow = 0, enabled = 0;
    uint16_t reads = 0;
    uint32_t mismatches = 0;
  };
  std::vector<Cpu> cpus;
  std::string error;
};

// `xp /<count>wx <pa>` -> the words; empty on failure.
std::vector<uint32_t> ReadPhysicalWords(const std::string& domain, uint32_t pa, uint32_t count);

BlobState ReadBlobState(const std::string& domain, int vcpus);

std::string StrategyName(uint32_t word);

std::string Describe(const BlobState& blob);

// ------------------------------------------------------------------------------ tprctl status

struct Status {
  bool ok = false;
  std::string state, strategy, last_error, busy_with;
  bool proving_window_open = false;
  uint64_t traps_handled = 0;
  std::string raw;
};

Status GetStatus(TprdProcess& tprd, const std::string& domain);

// ------------------------------------------------------------------------------ serial checks

// Checks the guest's serial lines [from, to): every FAIL line and every STAT line whose failure
// counters rose above `baseline` (per CPU) is a test failure, named by `phase`. Returns the
// counters at the end of the range (the next phase's baseline) and, per CPU, its STAT lines.
struct PhaseResult {
  std::map<int, std::map<std::string, uint64_t>> counters;  // cpu -> counter -> value
  std::map<int, std::vector<Fields>> stats;
  int fail_lines = 0;
};

PhaseResult CheckPhase(const std::string& phase, const std::vector<std::string>& lines, size_t from,
                       size_t to, const GuestLayout& layout,
                       const std::map<int, std::map<std::string, uint64_t>>& baseline);

// Every CPU kept running its rounds during a phase: at least `min_stats` STAT lines, rounds and
// TPR reads rising from each line to the next, timer ticks (and IPIs, with more than one CPU)
// rising over the phase.
void ExpectProgress(const std::string& phase, const PhaseResult& result, int vcpus,
                    size_t min_stats);

// ------------------------------------------------------------------------------ the fixture

class HalE2e {
 public:
  explicit HalE2e(const HalCase& c) : case_(c) {
    CaseStart() = absl::Now();
    Narrative().str("");
  }

  TestDomain* domain() { return domain_.get(); }
  const GuestLayout& layout() const { return layout_; }
  // The failure counters the guest had before tprd came (per CPU).
  const std::map<int, std::map<std::string, uint64_t>>& baseline() const { return baseline_; }

  // Boots the guest and waits for STAT from every CPU; the guest alone must pass its checks.
  // `reboot_restarts`: a guest reset boots it again (libvirt on_reboot=restart).
  // `snapshot_disk`: a defined domain with a qcow2 disk, so that libvirt can take internal
  // snapshots with memory.
  void Boot(bool reboot_restarts = false, bool snapshot_disk = false);

  // After a guest reset: waits for the new boot's BOOT line (from serial line `from` on) and one
  // guest second of STAT lines from every CPU, checks the new boot alone and takes its counters
  // as the baseline. Returns the BOOT line's index.
  size_t WaitForReboot(size_t from);

  // Guest code the rollback must restore byte for byte: the copies' code area, and the
  // templates and decoys (never run; tprd must not patch them). Read through a gdbstub session
  // of our own, so only while no tprd holds the domain.
  std::vector<uint8_t> ReadGuestCode();

  // Waits (bounded) until every CPU printed a STAT line at index >= `from` with uptime_ms >=
  // `uptime_ms`. While waiting, `each_second` runs about once a second.
  template <typename Callback>
  bool WaitForUptime(size_t from, uint64_t uptime_ms, absl::Duration timeout, const char* when,
                     Callback each_second, absl::Time not_before = absl::InfinitePast()) {
    std::map<int, uint64_t> reached;
    absl::Time next_callback = absl::Now();
    const bool done = PollUntil(
        timeout,
        [&] {
          if (absl::Now() < not_before) {
            if (absl::Now() >= next_callback) {
              each_second();
              next_callback = absl::Now() + absl::Seconds(1);
            }
            return false;
          }
          if (absl::Now() >= next_callback) {
            each_second();
            next_callback = absl::Now() + absl::Seconds(1);
          }
          const std::vector<std::string> lines = domain_->Lines();
          for (size_t i = from; i < lines.size(); ++i) {
            if (!StartsWith(lines[i], "STAT ")) continue;
            Fields f = ParseSerialFields(lines[i]);
            reached[static_cast<int>(Num(f, "cpu"))] = Num(f, "uptime_ms");
          }
          for (int cpu = 0; cpu < case_.vcpus; ++cpu) {
            if (!reached.count(cpu) || reached[cpu] < uptime_ms) return false;
          }
          return true;
        },
        absl::Milliseconds(250));
    if (!done) {
      std::string behind;
      for (int cpu = 0; cpu < case_.vcpus; ++cpu) {
        absl::StrAppend(&behind, " cpu", cpu, "=",
                        reached.count(cpu) ? absl::StrCat(reached[cpu], "ms") : "no STAT");
      }
      ADD_FAILURE() << when << ": not every CPU reached guest uptime " << uptime_ms << " ms within "
                    << timeout << " (STAT uptimes:" << behind
                    << "); domain state: " << DomainRunStateAndReason(domain_->name())
                    << "\nvCPUs:\n"
                    << Virsh(
                           {"qemu-monitor-command", domain_->name(), "--hmp", "info registers -a"})
                           .out.substr(0, 6000)
                    << "\nlast serial lines:\n"
                    << domain_->LastLines(30);
    }
    return done;
  }
  bool WaitForUptime(size_t from, uint64_t uptime_ms, absl::Duration timeout, const char* when) {
    return WaitForUptime(from, uptime_ms, timeout, when, [] {});
  }

  // The highest uptime any CPU has reported so far.
  uint64_t Uptime();

  // After a snapshot revert (the guest's clock goes back to the snapshot's): waits for every CPU
  // to run `guest_seconds` of guest time from the first STAT line at index >= `from`, then checks
  // those lines against the boot's baseline and that every CPU made progress.
  void RunAfterRevert(size_t from, int guest_seconds, const char* when);

  // Runs the patched guest for `seconds` of wall time and at least `guest_seconds` of guest
  // time on every CPU, from serial line `from` on, polling tprctl status once a second
  // (strategy, last_error, proving window). Fails when the guest stalls.
  void RunPatched(TprdProcess& tprd, size_t from, int seconds, int guest_seconds, const char* when);

  // Addresses (0x........) in `text`, named by the guest's SITE/FUNC lines.
  std::string Annotate(const std::string& text) const;

  // Every site the guest runs in a form tprd patches is applied; nothing that is not a site
  // the guest runs (templates, decoys) is.
  void ExpectSitesPatched(TprdProcess& tprd, const char* when);

  // Rolls everything back, bounded, and checks the answer.
  void Rollback(TprdProcess& tprd, const char* when);

  // `tprctl --json watch DOMAIN` into watch.log, for the logs kept on failure. A watch ends with
  // its tprd: call again after a restart.
  void StartWatch(TprdProcess& tprd);
  void StopWatch();
  ~HalE2e();

  // The checks of the phases: [enable_from, rollback_from) patched, [rollback_from, transition)
  // the rollback and each CPU's first STAT after it, then kStatsAfterRollback STAT lines per CPU.
  void CheckAroundRollback(TprdProcess& tprd, size_t enable_from, size_t rollback_from,
                           size_t rollback_done, const char* label);

  // One line per CPU with the last STAT's counters (for the report).
  void SummarizeCounters(const char* label, const std::vector<std::string>& lines);

  // On failure: keeps tprd's log and the serial log where the report can find them.
  void KeepLogs(const TprdProcess* tprd, const std::string& test_name);

  std::map<int, std::map<std::string, uint64_t>> baseline_;

 private:
  HalCase case_;
  std::unique_ptr<TestDomain> domain_;
  GuestLayout layout_;
  std::string watch_dir_;
  pid_t watch_pid_ = -1;
};

std::string TestName();

// mmio_write_stops_per_second: the HAL-shaped guest's register-relative writer runs every
// 16-256 rounds, far more often than tprd's default limit lets mmio stop for it (by default tprd
// switches such a guest to exact within a second, correctly). Raised here so that mmio stays on
// and its soundness (the write watchpoint and the shadow resyncs) is what the run measures.
std::string TprdConfig(const HalCase& c);

}  // namespace tprd::testing

#endif  // TPRD_TESTS_E2E_HAL_E2E_H_

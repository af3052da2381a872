// tprd end to end on the HAL-shaped test guest (tests/hal-guest, docs/hal-guest.md): real
// libvirtd, real tprd and tprctl processes, hal-guest.elf booted as a transient libvirt domain
// with `seed=N`. The guest checks itself on every CPU, forever: every TPR read returns what that
// CPU last wrote (`wrong_reads`), no interrupt arrives while the TPR masks its class
// (`mask_violations`), a self-IPI sent while masked arrives exactly once after the TPR drops
// (`lost_interrupts`); any failure is also a `FAIL` line. These tests read every serial line
// after enable and require all three counters to stay 0 and no FAIL line, while patched, across
// the end of the proving window, at the rollback and after it.
//
// Cases (docs/hal-guest.md, "With tprd"):
//   Cr8/HalStrategyTest  : cr8legacy CPU, `enable --strategy cr8`, run, rollback, run on.
//   Mmio/HalStrategyTest : `enable --strategy mmio`: either refused at enable with the reason
//                          (a TPR writer tprd cannot patch), or accepted and then exactly as
//                          correct as cr8; the status's strategy must match the guest's word.
//   Cr8/HalKill9Test : cr8, kill -9 of tprd while patched, a new tprd adopts, run, rollback.
// Cases named `_watchpoint` run tprd with `discovery = watchpoint`, the discovery it picks on KVM
// hosts (never a breakpoint on unproven bytes; docs/design.md "Discovery on KVM hosts"), and at
// random moments of each patched run compare the unproven candidates' bytes, read through QEMU's
// monitor, with what the scan found, and require no breakpoint set on a candidate.
// TPRD_HAL_SOAK=1 runs more seeds and vCPU counts for longer; TPRD_HAL_SECONDS sets the
// patched run's wall-clock seconds; TPRD_HAL_SEED fixes the "random" seed (it is printed either
// way). On failure the serial log, tprd's log and `tprctl watch` events are kept in
// /tmp/tprd-e2e-hal-logs/.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "gtest/gtest.h"
#include "guest-rom/blob_layout.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_support.h"
#include "tests/support/libvirt_test_env.h"
#include "tests/support/qemu_process.h"
#include "tests/support/subprocess.h"

#ifndef TPRD_HAL_GUEST_ELF
#error "TPRD_HAL_GUEST_ELF must name build/tests/hal-guest/hal-guest.elf (tests/e2e/CMakeLists.txt)"
#endif

namespace tprd::testing {
namespace {

using Fields = std::map<std::string, std::string>;

std::string HalGuestElf() { return TPRD_HAL_GUEST_ELF; }

// ------------------------------------------------------------------------------ configuration

bool Soak() {
  const char* soak = std::getenv("TPRD_HAL_SOAK");
  return soak != nullptr && *soak != '\0' && std::string(soak) != "0";
}

// How long each case runs patched, in wall-clock seconds (TPRD_HAL_SECONDS), and at least how
// far the guest's own clock (STAT uptime_ms) must advance in that time on every CPU. The guest's
// clock stops while tprd holds it stopped at a trap; under cr8 this guest traps about a hundred
// times a second (its register-relative and cmp/test accesses are unpatchable by design), so a
// guest second can take several wall seconds.
int RunSeconds() {
  int seconds = 0;
  const char* env = std::getenv("TPRD_HAL_SECONDS");
  if (env != nullptr && absl::SimpleAtoi(env, &seconds) && seconds > 0) return seconds;
  return Soak() ? 90 : 15;
}
int GuestSeconds() { return Soak() ? 20 : 2; }

// tprd's proving window: short, so that every patched run crosses its end.
constexpr int kProvingWindowSeconds = 5;
// STAT lines per CPU after the rollback's transition that must show no new failure.
constexpr int kStatsAfterRollback = 3;
// A full rollback stops the guest a few times; it must not take longer than this.
constexpr absl::Duration kRollbackBound = absl::Seconds(30);
// The guest's counters of failed checks; each must stay 0.
const char* const kFailureCounters[] = {"wrong_reads", "mask_violations", "lost_interrupts"};

uint32_t RandomSeed() {
  static const uint32_t seed = [] {
    uint32_t s = 0;
    const char* env = std::getenv("TPRD_HAL_SEED");
    if (env != nullptr && absl::SimpleAtoi(env, &s) && s > 0) return s;
    std::random_device device;
    return 1 + device() % 999999;
  }();
  return seed;
}

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

std::string CaseName(const HalCase& c) {
  return absl::StrCat(c.strategy, "_smp", c.vcpus, c.random ? "_random" : "_seed",
                      c.random ? "" : absl::StrCat(c.seed), c.idle ? "_idle" : "",
                      c.discovery.empty() ? "" : "_", c.discovery, c.no_regrel ? "_noregrel" : "");
}

void PrintTo(const HalCase& c, std::ostream* os) { *os << CaseName(c) << " seed=" << c.seed; }

std::vector<HalCase> Cases(const std::string& strategy) {
  std::vector<HalCase> cases;
  if (!Soak()) {
    // Seed 3 places a hot writer across a page boundary (seed % 3 == 0, docs/hal-guest.md).
    cases = {{strategy, 1, 1}, {strategy, 2, 2}, {strategy, 4, 3}};
    // The discovery tprd picks on KVM hosts, forced here under TCG.
    cases.push_back({strategy, 2, 5, false, false, "watchpoint"});
    if (strategy == "cr8") {
      cases.push_back({strategy, 2, RandomSeed(), true});
      // Every CPU halted most of the time: what leaving cr8 meets on an idle machine.
      cases.push_back({strategy, 4, 7, false, true});
    }
  } else {
    for (int vcpus : {1, 2, 4}) {
      for (uint32_t seed = 1; seed <= 6; ++seed) cases.push_back({strategy, vcpus, seed});
      cases.push_back({strategy, vcpus, RandomSeed() + static_cast<uint32_t>(vcpus), true});
      cases.push_back({strategy, vcpus, 7, false, true});
      cases.push_back({strategy, vcpus, RandomSeed() + 3, true, false, "watchpoint"});
    }
  }
  return cases;
}

uint64_t Num(const Fields& f, const std::string& key) {
  auto it = f.find(key);
  uint64_t value = 0;
  if (it == f.end() || !absl::SimpleAtoi(it->second, &value)) {
    if (it != f.end() && it->second.rfind("0x", 0) == 0 &&
        absl::SimpleHexAtoi(it->second.substr(2), &value)) {
      return value;
    }
    return UINT64_MAX;
  }
  return value;
}

bool StartsWith(const std::string& s, const std::string& prefix) {
  return s.compare(0, prefix.size(), prefix) == 0;
}

// Progress lines, with the seconds since the case started (for the report's timings).
absl::Time& CaseStart() {
  static absl::Time start = absl::Now();
  return start;
}
// Everything a case said, kept with its logs on failure (KeepLogs writes it as test.log) so that
// a FAIL line's guest uptime can be placed against enable, SIGTERM or rollback afterwards.
std::ostringstream& Narrative() {
  static std::ostringstream narrative;
  return narrative;
}
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
SayStream& Say() {
  static SayStream say;
  return say << "[+" << absl::StrFormat("%.1f", absl::ToDoubleSeconds(absl::Now() - CaseStart()))
             << "s] ";
}

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
  std::string Name(uint32_t va) const {
    for (const Site& s : sites) {
      if (s.va == va) return absl::StrCat(s.name, " (", s.form, ") at 0x", absl::Hex(va));
      if (s.va < va && va <= s.va + s.len && s.kind != "decoy") {
        return absl::StrCat("0x", absl::Hex(va), " = ", s.name, " (", s.form, ")+", va - s.va,
                            va == s.va + s.len ? " (just after it)" : "");
      }
    }
    for (const Func& f : funcs) {
      if (f.va <= va && va < f.va + f.size) {
        return absl::StrCat("0x", absl::Hex(va), " = ", f.name, "+0x", absl::Hex(va - f.va));
      }
    }
    if (templates_first <= va && va < templates_end) {
      return absl::StrCat("0x", absl::Hex(va), " (in the templates in .rodata, never executed)");
    }
    // The guest's C code: its function, from the ELF's symbols.
    RunResult line =
        Run({"/usr/bin/addr2line", "-f", "-e", HalGuestElf(), absl::StrCat("0x", absl::Hex(va))});
    std::vector<std::string> words = absl::StrSplit(line.out, '\n', absl::SkipEmpty());
    if (line.exit_code == 0 && !words.empty() && words[0] != "??") {
      return absl::StrCat("0x", absl::Hex(va), " = in ", words[0], "() (C code)");
    }
    return absl::StrCat("0x", absl::Hex(va));
  }
  const Site* SiteAt(uint32_t va) const {
    for (const Site& s : sites) {
      if (s.va == va) return &s;
    }
    return nullptr;
  }
};

GuestLayout ParseLayout(const std::vector<std::string>& lines) {
  GuestLayout layout;
  for (const std::string& line : lines) {
    if (!StartsWith(line, "SITE ") && !StartsWith(line, "FUNC ") &&
        !StartsWith(line, "TEMPLATES ") && !StartsWith(line, "BOOT ") &&
        !StartsWith(line, "VARIANT ")) {
      continue;
    }
    Fields f = ParseSerialFields(line);
    if (f[""] == "SITE") {
      GuestLayout::Site s;
      s.name = f["name"];
      s.form = f["form"];
      s.kind = f["kind"];
      s.va = static_cast<uint32_t>(Num(f, "va"));
      s.len = f.count("len") ? static_cast<uint32_t>(Num(f, "len")) : 0;
      layout.sites.push_back(s);
    } else if (f[""] == "FUNC") {
      layout.funcs.push_back({f["name"], f["template"], static_cast<uint32_t>(Num(f, "va")),
                              static_cast<uint32_t>(Num(f, "size"))});
    } else if (f[""] == "TEMPLATES") {
      std::vector<std::string> range = absl::StrSplit(f["va"], '-');
      if (range.size() == 2) {
        absl::SimpleHexAtoi(range[0], &layout.templates_first);
        absl::SimpleHexAtoi(range[1], &layout.templates_end);
      }
      layout.decoy_page = static_cast<uint32_t>(Num(f, "decoy_page"));
    } else if (f[""] == "BOOT") {
      std::vector<std::string> range = absl::StrSplit(f["code"], '-');
      if (range.size() == 2) {
        absl::SimpleHexAtoi(range[0], &layout.code_first);
        absl::SimpleHexAtoi(range[1], &layout.code_end);
      }
    } else if (f[""] == "VARIANT") {
      layout.variant = line;
    }
  }
  return layout;
}

// The sites tprd is expected to patch: TPR accesses of the placed copies in forms tprd patches
// (absolute address, no prefix: every form but regrel/cmp/test/icr), all of which the guest runs
// within milliseconds (hot: every round; rare: every 1-50 ms).
std::vector<const GuestLayout::Site*> PatchableRunSites(const GuestLayout& layout) {
  std::vector<const GuestLayout::Site*> out;
  for (const GuestLayout::Site& s : layout.sites) {
    if (s.kind != "hot" && s.kind != "rare") continue;
    if (StartsWith(s.form, "regrel") || StartsWith(s.form, "cmp") || StartsWith(s.form, "test") ||
        StartsWith(s.form, "icr")) {
      continue;
    }
    out.push_back(&s);
  }
  return out;
}

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
std::vector<uint32_t> ReadPhysicalWords(const std::string& domain, uint32_t pa, uint32_t count) {
  return MonitorDump(domain, absl::StrCat("xp /", count, "wx 0x", absl::Hex(pa)))
      .value_or(std::vector<uint32_t>{});
}

BlobState ReadBlobState(const std::string& domain, int vcpus) {
  BlobState state;
  constexpr uint32_t kFirst = 0xC0000, kEnd = 0xF0000;
  std::vector<uint32_t> window = ReadPhysicalWords(domain, kFirst, (kEnd - kFirst) / 4);
  if (window.size() != (kEnd - kFirst) / 4) {
    state.error = absl::StrCat("xp of the legacy window gave ", window.size(), " words");
    return state;
  }
  for (uint32_t pa = kFirst; pa < kEnd; pa += 0x1000) {
    if (window[(pa - kFirst) / 4] != TPRD_BLOB_MAGIC) continue;
    state.found = true;
    state.pa = pa;
    state.data_pa = window[(pa - kFirst + TPRD_BLOB_HDR_DATA_PA) / 4];
    break;
  }
  if (!state.found) {
    state.error = "no blob magic in 0xC0000-0xEFFFF";
    return state;
  }
  const uint32_t strategy_pa = state.data_pa + (TPRD_BLOB_STRATEGY_WORD - TPRD_BLOB_DATA_OFFSET);
  const uint32_t percpu_pa = state.data_pa + (TPRD_BLOB_PERCPU_AREA - TPRD_BLOB_DATA_OFFSET);
  std::vector<uint32_t> word = ReadPhysicalWords(domain, strategy_pa, 1);
  if (word.size() != 1) {
    state.error = "cannot read the strategy word";
    return state;
  }
  state.strategy_word = word[0];
  std::vector<uint32_t> percpu =
      ReadPhysicalWords(domain, percpu_pa, static_cast<uint32_t>(2 * vcpus));
  for (size_t i = 0; i + 1 < percpu.size(); i += 2) {
    BlobState::Cpu cpu;
    cpu.shadow = static_cast<uint8_t>(percpu[i] & 0xFF);
    cpu.enabled = static_cast<uint8_t>((percpu[i] >> 8) & 0xFF);
    cpu.reads = static_cast<uint16_t>(percpu[i] >> 16);
    cpu.mismatches = percpu[i + 1];
    state.cpus.push_back(cpu);
  }
  return state;
}

std::string StrategyName(uint32_t word) {
  switch (word) {
    case TPRD_BLOB_STRATEGY_EXACT:
      return "exact";
    case TPRD_BLOB_STRATEGY_MMIO:
      return "mmio";
    case TPRD_BLOB_STRATEGY_CR8:
      return "cr8";
  }
  return absl::StrCat("unknown(", word, ")");
}

std::string Describe(const BlobState& blob) {
  if (!blob.found) return absl::StrCat("blob: ", blob.error);
  std::string out =
      absl::StrCat("blob at 0x", absl::Hex(blob.pa), ", data at 0x", absl::Hex(blob.data_pa),
                   ", strategy word = ", StrategyName(blob.strategy_word));
  for (size_t i = 0; i < blob.cpus.size(); ++i) {
    absl::StrAppend(&out, "; cpu", i, " shadow=0x", absl::Hex(blob.cpus[i].shadow),
                    " enabled=", blob.cpus[i].enabled,
                    " guard_mismatches=", blob.cpus[i].mismatches);
  }
  return out;
}

// ------------------------------------------------------------------------------ tprctl status

struct Status {
  bool ok = false;
  std::string state, strategy, last_error, busy_with;
  bool proving_window_open = false;
  uint64_t traps_handled = 0;
  std::string raw;
};

Status GetStatus(TprdProcess& tprd, const std::string& domain) {
  Status s;
  RunResult r = tprd.Ctl({"--json", "status", domain});
  s.raw = r.out + r.err;
  nlohmann::json doc = nlohmann::json::parse(r.out, nullptr, false);
  if (r.exit_code != 0 || doc.is_discarded() || !doc.is_object()) return s;
  s.ok = true;
  auto str = [&](const char* key) {
    return doc.contains(key) && doc[key].is_string() ? doc[key].get<std::string>() : "";
  };
  s.state = str("state");
  s.strategy = str("strategy");
  s.last_error = str("last_error");
  s.busy_with = str("busy_with");
  s.proving_window_open = doc.value("proving_window_open", false);
  s.traps_handled = doc.value("traps_handled", uint64_t{0});
  return s;
}

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
                       const std::map<int, std::map<std::string, uint64_t>>& baseline) {
  PhaseResult result;
  result.counters = baseline;
  std::set<std::pair<int, std::string>> reported;
  constexpr int kFailLinesShown = 12;
  for (size_t i = from; i < to && i < lines.size(); ++i) {
    const std::string& line = lines[i];
    if (StartsWith(line, "FAIL ")) {
      ++result.fail_lines;
      if (result.fail_lines <= kFailLinesShown) {
        Fields f = ParseSerialFields(line);
        std::string where;
        if (f.count("eip") && Num(f, "eip") != 0) {
          where = absl::StrCat(" [eip: ", layout.Name(static_cast<uint32_t>(Num(f, "eip"))), "]");
        }
        ADD_FAILURE() << phase << ": serial line " << i << ": " << line << where;
      }
      continue;
    }
    if (!StartsWith(line, "STAT ")) continue;
    Fields f = ParseSerialFields(line);
    const int cpu = static_cast<int>(Num(f, "cpu"));
    result.stats[cpu].push_back(f);
    for (const char* counter : kFailureCounters) {
      const uint64_t value = Num(f, counter);
      uint64_t before = 0;
      auto b = baseline.find(cpu);
      if (b != baseline.end() && b->second.count(counter)) before = b->second.at(counter);
      if (value > before && reported.insert({cpu, counter}).second) {
        ADD_FAILURE() << phase << ": cpu " << cpu << " " << counter << " rose from " << before
                      << " (serial line " << i << "): " << line;
      }
      result.counters[cpu][counter] = value;
    }
  }
  if (result.fail_lines > kFailLinesShown) {
    ADD_FAILURE() << phase << ": " << result.fail_lines << " FAIL lines in all (first "
                  << kFailLinesShown << " shown)";
  }
  return result;
}

// Every CPU kept running its rounds during a phase: at least `min_stats` STAT lines, rounds and
// TPR reads rising from each line to the next, timer ticks (and IPIs, with more than one CPU)
// rising over the phase.
void ExpectProgress(const std::string& phase, const PhaseResult& result, int vcpus,
                    size_t min_stats) {
  for (int cpu = 0; cpu < vcpus; ++cpu) {
    auto it = result.stats.find(cpu);
    const size_t count = it == result.stats.end() ? 0 : it->second.size();
    EXPECT_GE(count, min_stats) << phase << ": cpu " << cpu << " STAT lines";
    if (count < 2) continue;
    const std::vector<Fields>& s = it->second;
    for (size_t i = 1; i < s.size(); ++i) {
      EXPECT_GT(Num(s[i], "rounds"), Num(s[i - 1], "rounds"))
          << phase << ": cpu " << cpu << " made no round between STAT lines at uptime "
          << Num(s[i - 1], "uptime_ms") << " and " << Num(s[i], "uptime_ms");
      EXPECT_GT(Num(s[i], "tpr_reads"), Num(s[i - 1], "tpr_reads")) << phase << ": cpu " << cpu;
    }
    EXPECT_GT(Num(s.back(), "timer_ticks"), Num(s.front(), "timer_ticks"))
        << phase << ": cpu " << cpu << " timer stopped";
    if (vcpus > 1) {
      EXPECT_GT(Num(s.back(), "ipis"), Num(s.front(), "ipis"))
          << phase << ": cpu " << cpu << " received no IPI";
    }
  }
}

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
  void Boot(bool reboot_restarts = false, bool snapshot_disk = false) {
    Say() << "hal-guest: strategy " << case_.strategy << ", " << case_.vcpus << " vCPU(s), seed "
          << case_.seed
          << (case_.random ? " (random; rerun with "
                             "TPRD_HAL_SEED="
                           : "")
          << (case_.random ? absl::StrCat(case_.seed, ")") : "") << std::endl;
    ::testing::Test::RecordProperty("seed", static_cast<int>(case_.seed));
    TestDomainOptions options;
    options.kernel = HalGuestElf();
    options.vcpus = case_.vcpus;
    options.cmdline = absl::StrCat("seed=", case_.seed, case_.idle ? " idle=heavy" : "",
                                   case_.no_regrel ? " regrel=off" : "");
    options.cr8legacy_cpu = case_.strategy == "cr8";
    options.reboot_restarts = reboot_restarts;
    options.persistent = snapshot_disk;  // snapshots keep their metadata with a defined domain
    options.qcow2_disk = snapshot_disk;
    absl::StatusOr<std::unique_ptr<TestDomain>> created = TestDomain::Create(options);
    ASSERT_TRUE(created.ok()) << created.status();
    domain_ = *std::move(created);
    ASSERT_TRUE(WaitForUptime(0, 1000, absl::Seconds(180), "boot"));
    layout_ = ParseLayout(domain_->Lines());
    ASSERT_FALSE(layout_.sites.empty()) << domain_->LastLines(40);
    ASSERT_NE(layout_.code_first, 0u) << domain_->LastLines(40);
    ASSERT_NE(layout_.templates_first, 0u) << domain_->LastLines(40);
    Say() << "booted: " << layout_.variant << std::endl;
    const std::vector<std::string> lines = domain_->Lines();
    baseline_ =
        CheckPhase("before tprd (the guest alone)", lines, 0, lines.size(), layout_, {}).counters;
  }

  // After a guest reset: waits for the new boot's BOOT line (from serial line `from` on) and one
  // guest second of STAT lines from every CPU, checks the new boot alone and takes its counters
  // as the baseline. Returns the BOOT line's index.
  size_t WaitForReboot(size_t from) {
    size_t boot = from;
    absl::StatusOr<std::string> line =
        domain_->WaitForPrefix("BOOT ", absl::Seconds(120), from, &boot);
    EXPECT_TRUE(line.ok()) << "no new boot after the reset: " << line.status() << "\n"
                           << domain_->LastLines(30);
    if (!line.ok()) return from;
    if (!WaitForUptime(boot, 1000, absl::Seconds(180), "after the reset")) return boot;
    const std::vector<std::string> lines = domain_->Lines();
    baseline_ =
        CheckPhase("rebooted, before the next enable", lines, boot, lines.size(), layout_, {})
            .counters;
    return boot;
  }

  // Guest code the rollback must restore byte for byte: the copies' code area, and the
  // templates and decoys (never run; tprd must not patch them). Read through a gdbstub session
  // of our own, so only while no tprd holds the domain.
  std::vector<uint8_t> ReadGuestCode() {
    std::vector<uint8_t> out =
        ReadCode(domain_->uuid(), layout_.code_first & ~0xFFFu,
                 ((layout_.code_end + 0xFFF) & ~0xFFFu) - (layout_.code_first & ~0xFFFu));
    std::vector<uint8_t> templates = ReadCode(
        domain_->uuid(), layout_.templates_first & ~0xFFFu,
        ((std::max(layout_.templates_end, layout_.decoy_page + 0x1000) + 0xFFF) & ~0xFFFu) -
            (layout_.templates_first & ~0xFFFu));
    out.insert(out.end(), templates.begin(), templates.end());
    return out;
  }

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
  uint64_t Uptime() {
    uint64_t uptime = 0;
    for (const std::string& line : domain_->Lines()) {
      if (StartsWith(line, "STAT "))
        uptime = std::max(uptime, Num(ParseSerialFields(line), "uptime_ms"));
    }
    return uptime;
  }

  // After a snapshot revert (the guest's clock goes back to the snapshot's): waits for every CPU
  // to run `guest_seconds` of guest time from the first STAT line at index >= `from`, then checks
  // those lines against the boot's baseline and that every CPU made progress.
  void RunAfterRevert(size_t from, int guest_seconds, const char* when) {
    size_t first = from;
    absl::StatusOr<std::string> line =
        domain_->WaitForPrefix("STAT ", absl::Seconds(60), from, &first);
    ASSERT_TRUE(line.ok()) << when << ": no STAT line: " << line.status() << "\n"
                           << DomainRunStateAndReason(domain_->name()) << domain_->LastLines(20);
    const uint64_t start = Num(ParseSerialFields(*line), "uptime_ms");
    ASSERT_TRUE(WaitForUptime(from, start + static_cast<uint64_t>(guest_seconds) * 1000,
                              absl::Seconds(60 + guest_seconds * 20), when));
    const std::vector<std::string> lines = domain_->Lines();
    PhaseResult result = CheckPhase(when, lines, from, lines.size(), layout_, baseline_);
    ExpectProgress(when, result, case_.vcpus, 2);
  }

  // Runs the patched guest for `seconds` of wall time and at least `guest_seconds` of guest
  // time on every CPU, from serial line `from` on, polling tprctl status once a second
  // (strategy, last_error, proving window). Fails when the guest stalls.
  void RunPatched(TprdProcess& tprd, size_t from, int seconds, int guest_seconds,
                  const char* when) {
    const absl::Time start = absl::Now();
    const uint64_t uptime_start = Uptime();
    const uint64_t target = uptime_start + static_cast<uint64_t>(guest_seconds) * 1000;
    std::set<std::string> strategies, errors;
    bool window_closed = false;
    uint64_t traps = 0;
    // discovery = watchpoint: the candidates' bytes are compared at random moments, 1-4 s apart.
    std::mt19937 random(std::random_device{}());
    absl::Time next_bytes_check = start + absl::Milliseconds(random() % 2000);
    int bytes_checks = 0;
    const bool ran = WaitForUptime(
        from, target, absl::Seconds(seconds + guest_seconds * 20 + 60), when,
        [&] {
          if (!case_.discovery.empty() && absl::Now() >= next_bytes_check) {
            ExpectUnprovenBytesUnchanged(tprd, domain_->name(),
                                         absl::StrCat(when, ", check ", ++bytes_checks));
            next_bytes_check = absl::Now() + absl::Milliseconds(1000 + random() % 3000);
          }
          Status s = GetStatus(tprd, domain_->name());
          if (!s.ok) return;
          if (!s.strategy.empty()) strategies.insert(s.strategy);
          if (!s.last_error.empty()) errors.insert(s.last_error);
          if (!s.proving_window_open) window_closed = true;
          traps = s.traps_handled;
        },
        start + absl::Seconds(seconds));
    const absl::Duration took = absl::Now() - start;
    const uint64_t guest_ms = Uptime() - uptime_start;
    Say() << when << ": ran " << took << " wall, " << guest_ms << " ms guest time; strategies seen "
          << absl::StrJoin(strategies, ",") << ", traps handled " << traps << " ("
          << static_cast<int>(traps / std::max(1.0, absl::ToDoubleSeconds(took))) << "/s wall)"
          << std::endl;
    EXPECT_TRUE(ran) << tprd.LogTail(60);
    if (!case_.discovery.empty()) {
      ExpectUnprovenBytesUnchanged(tprd, domain_->name(), absl::StrCat(when, ", at its end"));
      Say() << when << ": compared the unproven candidates' bytes " << bytes_checks + 1 << " times"
            << std::endl;
    }
    EXPECT_EQ(strategies, std::set<std::string>{case_.strategy})
        << when << ": tprctl status reported another strategy (tprd switched away)\n"
        << tprd.LogTail(60);
    EXPECT_TRUE(errors.empty()) << when << ": tprd reported last_error(s):\n  "
                                << absl::StrJoin(errors, "\n  ") << "\n"
                                << Annotate(absl::StrJoin(errors, "\n")) << tprd.LogTail(60);
    if (seconds > kProvingWindowSeconds + 2) {
      EXPECT_TRUE(window_closed) << when << ": the proving window (" << kProvingWindowSeconds
                                 << " s) never closed";
    }
  }

  // Addresses (0x........) in `text`, named by the guest's SITE/FUNC lines.
  std::string Annotate(const std::string& text) const {
    std::string out;
    std::set<uint32_t> seen;
    static const std::regex hex("0x([0-9a-fA-F]{6,8})");
    for (auto it = std::sregex_iterator(text.begin(), text.end(), hex);
         it != std::sregex_iterator(); ++it) {
      uint32_t va = 0;
      if (!absl::SimpleHexAtoi((*it)[1].str(), &va) || va < 0x80000000u || va >= 0xFFFE0000u ||
          !seen.insert(va).second) {
        continue;
      }
      absl::StrAppend(&out, "  ", layout_.Name(va), "\n");
    }
    return out.empty() ? "" : absl::StrCat("addresses named:\n", out);
  }

  // Every site the guest runs in a form tprd patches is applied; nothing that is not a site
  // the guest runs (templates, decoys) is.
  void ExpectSitesPatched(TprdProcess& tprd, const char* when) {
    std::vector<SiteRow> rows = ListSites(tprd, domain_->name());
    std::map<uint32_t, std::string> state;
    for (const SiteRow& row : rows) state[row.address] = row.state;
    std::vector<std::string> missing;
    // mmio under discovery = watchpoint: its watchpoint sees writes only, so a reader the
    // learning window missed stays unpatched, correct (docs/design.md "Discovery on KVM hosts").
    const bool readers_may_wait = case_.discovery == "watchpoint" && case_.strategy == "mmio";
    size_t readers_unpatched = 0;
    for (const GuestLayout::Site* s : PatchableRunSites(layout_)) {
      const bool reader = s->name.size() > 3 && s->name.substr(s->name.size() - 3) == ".rd";
      if (state[s->va] != "applied" && readers_may_wait && reader) {
        ++readers_unpatched;
        continue;
      }
      if (state[s->va] != "applied") {
        missing.push_back(absl::StrCat(s->name, " (", s->form, ") at 0x", absl::Hex(s->va), ": ",
                                       state.count(s->va) ? state[s->va] : "unknown to tprd"));
      }
    }
    EXPECT_TRUE(missing.empty()) << when << ": sites the guest runs are not patched:\n  "
                                 << absl::StrJoin(missing, "\n  ");
    if (readers_may_wait) {
      Say() << when << ": " << readers_unpatched
            << " reader(s) the learning window missed stay unpatched (mmio, watchpoint)"
            << std::endl;
    }
    for (const SiteRow& row : rows) {
      if (row.state != "applied") continue;
      const GuestLayout::Site* s = layout_.SiteAt(row.address);
      EXPECT_TRUE(s != nullptr && s->kind != "decoy")
          << when << ": tprd patched " << layout_.Name(row.address)
          << ", which the guest never runs";
    }
  }

  // Rolls everything back, bounded, and checks the answer.
  void Rollback(TprdProcess& tprd, const char* when) {
    const absl::Time start = absl::Now();
    const uint64_t uptime = Uptime();
    RunResult rolled = tprd.Ctl({"--json", "rollback", domain_->name()});
    const absl::Duration took = absl::Now() - start;
    Say() << when << ": rollback from guest uptime " << uptime << " ms or later took " << took
          << ", exit " << rolled.exit_code << std::endl;
    ::testing::Test::RecordProperty("rollback_ms",
                                    static_cast<int>(absl::ToInt64Milliseconds(took)));
    EXPECT_EQ(rolled.exit_code, 0) << when << ": " << rolled.out << rolled.err << "\n"
                                   << Annotate(rolled.out + rolled.err) << tprd.LogTail(60);
    EXPECT_LT(took, kRollbackBound) << when << ": rollback took too long";
    nlohmann::json doc = nlohmann::json::parse(rolled.out, nullptr, false);
    if (!doc.is_discarded() && doc.contains("refused")) {
      EXPECT_TRUE(doc["refused"].empty()) << when << ": rollback refused sites: " << doc["refused"];
    }
    for (const SiteRow& row : ListSites(tprd, domain_->name())) {
      EXPECT_NE(row.state, "applied")
          << when << ": still applied after rollback: " << layout_.Name(row.address);
    }
    Status s = GetStatus(tprd, domain_->name());
    EXPECT_EQ(s.state, "unpatched") << when << ": after a full rollback: " << s.raw;
    EXPECT_TRUE(s.strategy.empty() || s.strategy == "exact")
        << when << ": after a full rollback: " << s.raw;
    // Leaving cr8 wakes each halted CPU alone so that its real TPR gets its low nibble back;
    // "vCPU N's TPR reads 0x40 instead of 0x41 ... it stayed halted" here is a wrong value
    // the guest may read (docs/design.md).
    EXPECT_EQ(s.last_error, "") << when << ": after the rollback: " << s.raw;
  }

  // `tprctl --json watch DOMAIN` into watch.log, for the logs kept on failure. A watch ends with
  // its tprd: call again after a restart.
  void StartWatch(TprdProcess& tprd) {
    StopWatch();
    if (watch_dir_.empty()) {
      char dir[] = "/tmp/tprd-e2e-hal-watch-XXXXXX";
      if (mkdtemp(dir) != nullptr) watch_dir_ = dir;
    }
    if (watch_dir_.empty()) return;
    watch_pid_ =
        Spawn({TprctlPath(), "--socket", tprd.socket(), "--json", "watch", domain_->name()},
              watch_dir_ + "/watch.log", watch_dir_ + "/watch.log");
  }
  void StopWatch() {
    if (watch_pid_ > 0) Stop(watch_pid_, 1000);
    watch_pid_ = -1;
  }
  ~HalE2e() {
    StopWatch();
    if (!watch_dir_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(watch_dir_, ignored);
    }
  }

  // The checks of the phases: [enable_from, rollback_from) patched, [rollback_from, transition)
  // the rollback and each CPU's first STAT after it, then kStatsAfterRollback STAT lines per CPU.
  void CheckAroundRollback(TprdProcess& tprd, size_t enable_from, size_t rollback_from,
                           size_t rollback_done, const char* label) {
    // Each CPU's first STAT line after the rollback ends the transition.
    size_t transition_end = rollback_done;
    for (int cpu = 0; cpu < case_.vcpus; ++cpu) {
      size_t index = 0;
      absl::StatusOr<std::string> stat = domain_->WaitForPrefix(
          absl::StrCat("STAT cpu=", cpu, " "), absl::Seconds(60), rollback_done, &index);
      ASSERT_TRUE(stat.ok()) << label << ": no STAT from cpu " << cpu
                             << " after the rollback: " << stat.status()
                             << "\ndomain state: " << DomainRunStateAndReason(domain_->name())
                             << "\nvCPUs:\n"
                             << Virsh({"qemu-monitor-command", domain_->name(), "--hmp",
                                       "info registers -a"})
                                    .out.substr(0, 8000)
                             << tprd.LogTail(40);
      transition_end = std::max(transition_end, index + 1);
    }
    // Then kStatsAfterRollback more from every CPU.
    for (int cpu = 0; cpu < case_.vcpus; ++cpu) {
      size_t index = transition_end;
      for (int n = 0; n < kStatsAfterRollback; ++n) {
        absl::StatusOr<std::string> stat = domain_->WaitForPrefix(
            absl::StrCat("STAT cpu=", cpu, " "), absl::Seconds(60), index, &index);
        ASSERT_TRUE(stat.ok()) << label << ": cpu " << cpu
                               << " after the rollback: " << stat.status();
        ++index;
      }
    }
    const std::vector<std::string> lines = domain_->Lines();
    PhaseResult patched = CheckPhase(absl::StrCat(label, ": while patched"), lines, enable_from,
                                     rollback_from, layout_, baseline_);
    ExpectProgress(absl::StrCat(label, ": while patched"), patched, case_.vcpus, 2);
    // Leaving cr8 gives every real TPR its low nibble back before the guest runs on
    // (docs/design.md, "Soundness of each strategy"): no read in the transition may be wrong.
    PhaseResult transition = CheckPhase(absl::StrCat(label, ": at the rollback"), lines,
                                        rollback_from, transition_end, layout_, patched.counters);
    PhaseResult after = CheckPhase(absl::StrCat(label, ": after the rollback"), lines,
                                   transition_end, lines.size(), layout_, transition.counters);
    ExpectProgress(absl::StrCat(label, ": after the rollback"), after, case_.vcpus,
                   kStatsAfterRollback);
    SummarizeCounters(label, lines);
  }

  // One line per CPU with the last STAT's counters (for the report).
  void SummarizeCounters(const char* label, const std::vector<std::string>& lines) {
    std::map<int, std::string> last;
    int fails = 0;
    for (const std::string& line : lines) {
      if (StartsWith(line, "FAIL ")) ++fails;
      if (!StartsWith(line, "STAT ")) continue;
      Fields f = ParseSerialFields(line);
      last[static_cast<int>(Num(f, "cpu"))] =
          absl::StrCat("rounds=", f["rounds"], " wrong_reads=", f["wrong_reads"],
                       " mask_violations=", f["mask_violations"],
                       " lost_interrupts=", f["lost_interrupts"], " uptime_ms=", f["uptime_ms"]);
    }
    for (const auto& [cpu, text] : last) {
      Say() << label << ": last STAT cpu=" << cpu << " " << text << std::endl;
    }
    Say() << label << ": FAIL lines in all: " << fails << std::endl;
  }

  // On failure: keeps tprd's log and the serial log where the report can find them.
  void KeepLogs(const TprdProcess* tprd, const std::string& test_name) {
    if (!::testing::Test::HasFailure() || domain_ == nullptr) return;
    const std::string dir = absl::StrCat("/tmp/tprd-e2e-hal-logs/", getpid(), "-", test_name);
    std::error_code error;
    std::filesystem::create_directories(dir, error);
    std::filesystem::copy_file(domain_->serial_path(), dir + "/serial.log",
                               std::filesystem::copy_options::overwrite_existing, error);
    if (tprd != nullptr) {
      std::filesystem::copy_file(tprd->log_path(), dir + "/tprd.log",
                                 std::filesystem::copy_options::overwrite_existing, error);
    }
    StopWatch();
    if (!watch_dir_.empty()) {
      std::filesystem::copy_file(watch_dir_ + "/watch.log", dir + "/watch.log",
                                 std::filesystem::copy_options::overwrite_existing, error);
    }
    Say() << "logs kept in " << dir << std::endl;
    std::ofstream(dir + "/test.log") << Narrative().str();
  }

  std::map<int, std::map<std::string, uint64_t>> baseline_;

 private:
  HalCase case_;
  std::unique_ptr<TestDomain> domain_;
  GuestLayout layout_;
  std::string watch_dir_;
  pid_t watch_pid_ = -1;
};

std::string TestName() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = absl::StrCat(info->test_suite_name(), ".", info->name());
  std::replace(name.begin(), name.end(), '/', '_');
  return name;
}

// mmio_write_stops_per_second: the HAL-shaped guest's register-relative writer runs every
// 16-256 rounds, far more often than tprd's default limit lets mmio stop for it (by default tprd
// switches such a guest to exact within a second, correctly). Raised here so that mmio stays on
// and its soundness (the write watchpoint and the shadow resyncs) is what the run measures.
std::string TprdConfig(const HalCase& c) {
  return absl::StrCat("proving_window_s = ", kProvingWindowSeconds,
                      "\nmmio_write_stops_per_second = 1000000\n",
                      c.discovery.empty() ? "" : absl::StrCat("discovery = ", c.discovery, "\n"));
}

// ------------------------------------------------------------------------------ cases 1 and 2

class HalStrategyTest : public ::testing::TestWithParam<HalCase> {};

TEST_P(HalStrategyTest, StaysCorrectWhilePatchedAcrossTheProvingWindowAndAfterRollback) {
  const HalCase& c = GetParam();
  HalE2e e2e(c);
  e2e.Boot();
  if (HasFatalFailure()) return;
  TestDomain& domain = *e2e.domain();
  const std::vector<uint8_t> code_before = e2e.ReadGuestCode();
  Say() << "read " << code_before.size() << " bytes of guest code" << std::endl;

  TprdProcess tprd(MakeTprdDir(), TprdConfig(c));
  absl::Cleanup keep_logs = [&] { e2e.KeepLogs(&tprd, TestName()); };
  tprd.Start();
  if (HasFatalFailure()) return;
  e2e.StartWatch(tprd);
  Say() << "tprd started" << std::endl;

  const size_t enable_from = domain.Lines().size();
  const absl::Time enable_start = absl::Now();
  RunResult enabled = tprd.Ctl({"--json", "enable", domain.name(), "--strategy", c.strategy});
  Say() << "enable --strategy " << c.strategy << ": exit " << enabled.exit_code << " after "
        << absl::Now() - enable_start << " (guest uptime " << e2e.Uptime() << " ms) " << enabled.err
        << std::endl;

  if (c.strategy == "mmio" && enabled.exit_code != 0) {
    // A refusal is acceptable only as tprd's answer at enable, with the reason: mmio is unsafe
    // because of a TPR writer tprd cannot patch. This guest has exactly one such writer, the
    // register-relative HalpRegRelWrite (`mov [ebx+0x80],eax`, docs/hal-guest.md).
    EXPECT_EQ(enabled.exit_code, 1) << enabled.out << enabled.err;
    EXPECT_NE(enabled.err.find("mmio is unsafe"), std::string::npos)
        << "the refusal does not say why: " << enabled.err;
    std::smatch m;
    static const std::regex address("0x([0-9a-fA-F]+)");
    uint32_t va = 0;
    if (std::regex_search(enabled.err, m, address)) absl::SimpleHexAtoi(m[1].str(), &va);
    const GuestLayout::Site* site = nullptr;
    for (const GuestLayout::Site& s : e2e.layout().sites) {
      if (s.va == va) site = &s;
    }
    Say() << "mmio refused, naming " << e2e.layout().Name(va) << std::endl;
    ASSERT_NE(site, nullptr) << "the refusal names no TPR access of the guest: " << enabled.err
                             << "\n"
                             << e2e.Annotate(enabled.err);
    EXPECT_TRUE(StartsWith(site->form, "regrel") && site->name.size() > 3 &&
                site->name.substr(site->name.size() - 3) == ".wr")
        << "mmio refused for " << site->name << " (" << site->form
        << "), which is not a TPR writer tprd cannot patch: " << enabled.err;
    // Refused means untouched: nothing patched, and the guest runs on correctly.
    Status s = GetStatus(tprd, domain.name());
    EXPECT_NE(s.state, "patched") << s.raw;
    for (const SiteRow& row : ListSites(tprd, domain.name())) {
      EXPECT_NE(row.state, "applied") << "refused, yet patched: " << e2e.layout().Name(row.address);
    }
    const uint64_t target = e2e.Uptime() + 3000;
    e2e.WaitForUptime(enable_from, target, absl::Seconds(60), "after the refusal");
    const std::vector<std::string> lines = domain.Lines();
    PhaseResult after = CheckPhase("after mmio was refused", lines, enable_from, lines.size(),
                                   e2e.layout(), e2e.baseline_);
    ExpectProgress("after mmio was refused", after, c.vcpus, 2);
    EXPECT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
    return;
  }
  ASSERT_EQ(enabled.exit_code, 0) << enabled.out << enabled.err << "\n"
                                  << e2e.Annotate(enabled.err) << tprd.LogTail(60);

  e2e.RunPatched(tprd, enable_from, RunSeconds(), GuestSeconds(), "patched");
  e2e.ExpectSitesPatched(tprd, "after the run");
  // The rates tprd shows for this guest (issue 14: on both test guests). Their values are
  // timings, printed and not asserted; that they are there, and counted, is asserted.
  {
    RunResult json = tprd.Ctl({"--json", "status", domain.name()});
    nlohmann::json doc = nlohmann::json::parse(json.out, nullptr, false);
    ASSERT_FALSE(doc.is_discarded()) << json.out << json.err;
    EXPECT_EQ(doc.value("rates_sampled", false), true) << "no rates after the run: " << json.out;
    EXPECT_GT(doc.value("learning_window_hits", uint64_t{0}), 0u)
        << "the enable's learning window counted no TPR access: " << json.out;
    EXPECT_GT(doc.value("before_trace_seconds", 0.0), 0.0)
        << "no APIC trace before the first patch: " << doc.value("before_trace_error", "") << "\n"
        << json.out;
    EXPECT_GT(doc.value("before_trace_tpr_reads", uint64_t{0}) +
                  doc.value("before_trace_tpr_writes", uint64_t{0}),
              0u)
        << "QEMU's APIC trace counted no TPR access before the enable: " << json.out;
    EXPECT_GT(doc.value("handler_accesses_without_apic", uint64_t{0}) +
                  doc.value("handler_accesses_to_apic", uint64_t{0}),
              0u)
        << "the guest's handlers counted no TPR access: " << json.out;
    RunResult text = tprd.Ctl({"status", domain.name()});
    for (absl::string_view line : absl::StrSplit(text.out, '\n')) {
      if (absl::StrContains(line, "/s")) Say() << "tprctl status: " << line << std::endl;
    }
    // tprctl metrics says the same "before" (sampled once, at the enable).
    RunResult metrics = tprd.Ctl({"metrics"});
    const std::string key = absl::StrCat(
        "tprd_tpr_accesses_reaching_apic_before_per_second{domain=\"", domain.name(), "\"} ");
    const size_t at = metrics.out.find(key);
    ASSERT_NE(at, std::string::npos) << "no " << key << "in tprctl metrics:\n" << metrics.out;
    double before_in_metrics = 0;
    const std::string value =
        metrics.out.substr(at + key.size(), metrics.out.find('\n', at) - at - key.size());
    ASSERT_TRUE(absl::SimpleAtod(value, &before_in_metrics)) << value;
    const double before = doc.value("tpr_accesses_per_second_before", 0.0);
    EXPECT_NEAR(before_in_metrics, before, before * 1e-5 + 1e-9) << metrics.out;
  }
  // What tprd reports and what the guest's handlers do: the strategy word in the guest.
  const BlobState blob = ReadBlobState(domain.name(), c.vcpus);
  const Status status = GetStatus(tprd, domain.name());
  Say() << Describe(blob) << std::endl;
  EXPECT_TRUE(blob.found) << blob.error;
  if (blob.found) {
    EXPECT_EQ(status.strategy, StrategyName(blob.strategy_word))
        << "tprctl status says " << status.strategy << " while the guest's handlers run "
        << StrategyName(blob.strategy_word) << ": " << Describe(blob);
    EXPECT_EQ(StrategyName(blob.strategy_word), c.strategy) << Describe(blob);
  }

  const size_t rollback_from = domain.Lines().size();
  e2e.Rollback(tprd, "rollback");
  const size_t rollback_done = domain.Lines().size();
  e2e.CheckAroundRollback(tprd, enable_from, rollback_from, rollback_done, c.strategy.c_str());
  Say() << "checked the STAT lines after the rollback" << std::endl;

  EXPECT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
  EXPECT_EQ(e2e.ReadGuestCode(), code_before) << "rollback restores the guest's code byte for byte";
  Say() << "done" << std::endl;
}

INSTANTIATE_TEST_SUITE_P(Cr8, HalStrategyTest, ::testing::ValuesIn(Cases("cr8")),
                         [](const auto& info) { return CaseName(info.param); });
INSTANTIATE_TEST_SUITE_P(Mmio, HalStrategyTest, ::testing::ValuesIn(Cases("mmio")),
                         [](const auto& info) { return CaseName(info.param); });

// ------------------------------------------------------------------------------ case 3

// Starts tprd and its event watch and enables `strategy` on the HAL guest (a fatal failure if
// the enable does not succeed).
void StartAndEnable(HalE2e& e2e, TprdProcess& tprd, const std::string& strategy) {
  tprd.Start();
  if (::testing::Test::HasFatalFailure()) return;
  e2e.StartWatch(tprd);
  // Transient: the reset test checks the guest stays unpatched until it enables again, which a
  // recorded intent would undo (docs/usage.md).
  RunResult enabled =
      tprd.Ctl({"--json", "enable", e2e.domain()->name(), "--strategy", strategy, "--transient"});
  ASSERT_EQ(enabled.exit_code, 0) << enabled.out << enabled.err << "\n"
                                  << e2e.Annotate(enabled.err) << tprd.LogTail(60);
  Say() << "enabled " << strategy << " by guest uptime " << e2e.Uptime() << " ms" << std::endl;
}

// Rolls everything back, checks the guest from `patched_from` through the rollback and after it,
// stops tprd, and compares the guest's code with `code_before` (read before tprd came).
void RollBackAndCompareCode(HalE2e& e2e, TprdProcess& tprd, size_t patched_from,
                            const std::vector<uint8_t>& code_before, const char* label) {
  const size_t rollback_from = e2e.domain()->Lines().size();
  e2e.Rollback(tprd, absl::StrCat(label, ": rollback").c_str());
  const size_t rollback_done = e2e.domain()->Lines().size();
  e2e.CheckAroundRollback(tprd, patched_from, rollback_from, rollback_done, label);
  EXPECT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
  EXPECT_EQ(e2e.ReadGuestCode(), code_before) << "rollback restores the guest's code byte for byte";
}

// kill -9 of tprd while patched under cr8: its traps stay armed in QEMU's gdbstub and the guest
// stops at the next hit; a new tprd adopts the guest (the strategy word still says cr8) and
// keeps it correct. The guest's checks must hold throughout: before, during and after.
class HalKill9Test : public ::testing::TestWithParam<HalCase> {};

TEST_P(HalKill9Test, KilledWhilePatchedUnderCr8AdoptedByANewTprdStaysCorrect) {
  const HalCase& c = GetParam();
  HalE2e e2e(c);
  e2e.Boot();
  if (HasFatalFailure()) return;
  TestDomain& domain = *e2e.domain();
  const std::vector<uint8_t> code_before = e2e.ReadGuestCode();

  TprdProcess tprd(MakeTprdDir(), TprdConfig(c));
  absl::Cleanup keep_logs = [&] { e2e.KeepLogs(&tprd, TestName()); };
  const size_t enable_from = domain.Lines().size();
  StartAndEnable(e2e, tprd, "cr8");
  if (HasFatalFailure()) return;

  const int kills = Soak() ? 3 : 1;
  for (int kill = 0; kill < kills; ++kill) {
    // Patched for a while (the hot sites are applied within milliseconds), then killed.
    e2e.RunPatched(tprd, domain.Lines().size(), 3, 1, "patched before kill -9");
    const size_t killed_at = domain.Lines().size();
    tprd.Kill();
    Say() << "kill -9 " << kill + 1 << "/" << kills << " at serial line " << killed_at
          << "; domain " << DomainRunState(domain.name()) << std::endl;
    // The armed traps stop the guest at its next hit; whether it did by now is only reported.
    PollUntil(absl::Seconds(10), [&] { return DomainRunState(domain.name()) == "paused"; });
    Say() << "after kill -9: domain " << DomainRunState(domain.name()) << std::endl;

    tprd.Start();  // adopts the domain (its --adopt-domains names this test's domains)
    if (HasFatalFailure()) return;
    e2e.StartWatch(tprd);
    WaitForState(tprd, domain.name(), "patched", absl::Seconds(60), "adopted");
    e2e.RunPatched(tprd, killed_at, RunSeconds(), GuestSeconds(), "adopted after kill -9");
  }
  e2e.ExpectSitesPatched(tprd, "adopted");
  const BlobState blob = ReadBlobState(domain.name(), c.vcpus);
  Say() << Describe(blob) << std::endl;
  EXPECT_EQ(StrategyName(blob.strategy_word), "cr8") << Describe(blob);

  const size_t rollback_from = domain.Lines().size();
  e2e.Rollback(tprd, "rollback after adopt");
  const size_t rollback_done = domain.Lines().size();
  e2e.CheckAroundRollback(tprd, enable_from, rollback_from, rollback_done, "kill -9");
  EXPECT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
  EXPECT_EQ(e2e.ReadGuestCode(), code_before) << "rollback restores the guest's code byte for byte";
}

// SIGTERM of tprd while patched: it leaves the guest on exact (under cr8 each CPU's real TPR gets
// its low nibble back first), the guest runs without tprd for a guest second, and a new tprd
// adopts it back to the strategy the operator chose (the journal remembers it; under mmio the
// alias of the APIC page is reused). The guest's checks must hold throughout.
class HalSigtermTest : public ::testing::TestWithParam<HalCase> {};

TEST_P(HalSigtermTest, StoppedWhilePatchedRunsExactThenANewTprdTakesItBack) {
  const HalCase& c = GetParam();
  HalE2e e2e(c);
  e2e.Boot();
  if (HasFatalFailure()) return;
  TestDomain& domain = *e2e.domain();
  const std::vector<uint8_t> code_before = e2e.ReadGuestCode();

  TprdProcess tprd(MakeTprdDir(), TprdConfig(c));
  absl::Cleanup keep_logs = [&] { e2e.KeepLogs(&tprd, TestName()); };
  const size_t enable_from = domain.Lines().size();
  StartAndEnable(e2e, tprd, c.strategy);
  if (HasFatalFailure()) return;
  e2e.RunPatched(tprd, domain.Lines().size(), 3, 1, "patched before SIGTERM");

  Say() << "SIGTERM at guest uptime " << e2e.Uptime() << " ms or later" << std::endl;
  EXPECT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
  // A CPU the detach could not give its real TPR back (PatchManager::Detach's DATA_LOSS).
  EXPECT_EQ(ReadFile(tprd.log_path()).find("left on exact, but"), std::string::npos)
      << tprd.LogTail();
  const BlobState away = ReadBlobState(domain.name(), c.vcpus);
  Say() << "after SIGTERM (guest uptime " << e2e.Uptime() << " ms): domain "
        << DomainRunState(domain.name()) << "; " << Describe(away) << std::endl;
  EXPECT_EQ(DomainRunState(domain.name()), "running") << "tprd left the guest stopped";
  EXPECT_EQ(StrategyName(away.strategy_word), "exact") << Describe(away);
  const size_t away_from = domain.Lines().size();
  e2e.WaitForUptime(away_from, e2e.Uptime() + 1000, absl::Seconds(60), "without tprd");

  tprd.Start();  // adopts the domain
  if (HasFatalFailure()) return;
  e2e.StartWatch(tprd);
  WaitForState(tprd, domain.name(), "patched", absl::Seconds(60), "adopted");
  e2e.RunPatched(tprd, domain.Lines().size(), RunSeconds(), GuestSeconds(),
                 "adopted after SIGTERM");
  const BlobState back = ReadBlobState(domain.name(), c.vcpus);
  Say() << Describe(back) << std::endl;
  EXPECT_EQ(StrategyName(back.strategy_word), c.strategy) << Describe(back);

  const size_t rollback_from = domain.Lines().size();
  e2e.Rollback(tprd, "rollback after the restart");
  const size_t rollback_done = domain.Lines().size();
  e2e.CheckAroundRollback(tprd, enable_from, rollback_from, rollback_done, "SIGTERM");
  EXPECT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
  EXPECT_EQ(e2e.ReadGuestCode(), code_before) << "rollback restores the guest's code byte for byte";
}

// `virsh save` while tprd stays attached to the HAL guest on mmio, after its proving window (the
// guest then makes no trap stop, so the save cannot land in QEMU's `debug` run state, which QEMU
// 7.2 cannot restore: docs/design.md "Saves and migrations"), then `virsh restore` with the same
// tprd running. tprd must see the save as a save (no lost session, no failed take-back), take the
// restored guest back from its blob with every site on mmio, the guest's checks must hold before,
// across and after, and the rollback must restore the code byte for byte.
class HalSaveTest : public ::testing::TestWithParam<HalCase> {};

TEST_P(HalSaveTest, SavedWhileAttachedRestoresCorrectAndIsTakenBack) {
  const HalCase& c = GetParam();
  HalE2e e2e(c);
  e2e.Boot();
  if (HasFatalFailure()) return;
  TestDomain& domain = *e2e.domain();
  const std::string name = domain.name();
  const std::vector<uint8_t> code_before = e2e.ReadGuestCode();

  TprdProcess tprd(MakeTprdDir(), TprdConfig(c));
  absl::Cleanup keep_logs = [&] { e2e.KeepLogs(&tprd, TestName()); };
  const size_t enable_from = domain.Lines().size();
  StartAndEnable(e2e, tprd, c.strategy);
  if (HasFatalFailure()) return;
  e2e.RunPatched(tprd, domain.Lines().size(), kProvingWindowSeconds + 3, 1,
                 "patched before the save");
  ASSERT_TRUE(WaitForProvingWindowEnd(tprd, name, absl::Seconds(60))) << tprd.LogTail(40);

  // The restore's QEMU opens the serial log afresh (libvirt truncates a file chardev without
  // append='on'): the lines up to the save are checked now, the new file's after the restore.
  const std::vector<std::string> lines_at_save = domain.Lines();
  CheckPhase("patched before the save", lines_at_save, enable_from, lines_at_save.size(),
             e2e.layout(), e2e.baseline());
  const std::string image = absl::StrCat("/var/lib/libvirt/qemu/save/", name, ".sav");
  RunResult saved = Virsh({"save", name, image});
  ASSERT_EQ(saved.exit_code, 0) << saved.out << saved.err << tprd.LogTail(40);
  EXPECT_TRUE(
      PollUntil(absl::Seconds(10),
                [&] {
                  return ReadFile(tprd.log_path()).find(absl::StrCat(name, ": gone: saved:")) !=
                         std::string::npos;
                }))
      << "tprd must see the save as a save\n"
      << tprd.LogTail(40);
  RunResult restored = Virsh({"restore", image});
  std::remove(image.c_str());
  ASSERT_EQ(restored.exit_code, 0) << restored.out << restored.err << "\n"
                                   << DomainRunStateAndReason(name) << tprd.LogTail(60);
  const size_t restored_from = std::min(lines_at_save.size(), domain.Lines().size());
  WaitForState(tprd, name, "patched", absl::Seconds(30), "restored");
  e2e.RunPatched(tprd, restored_from, RunSeconds(), GuestSeconds(), "restored while attached");
  e2e.ExpectSitesPatched(tprd, "restored while attached");
  const BlobState back = ReadBlobState(name, c.vcpus);
  Say() << Describe(back) << std::endl;
  EXPECT_EQ(StrategyName(back.strategy_word), c.strategy) << Describe(back);
  const std::string log = ReadFile(tprd.log_path());
  EXPECT_EQ(log.find("lost the session"), std::string::npos) << tprd.LogTail(60);
  EXPECT_EQ(log.find("cannot take it back"), std::string::npos) << tprd.LogTail(60);

  RollBackAndCompareCode(e2e, tprd, restored_from, code_before, "save");
}

// regrel=off: with the guest's register-relative TPR writer running, mmio keeps stopping the guest
// at it (about 250 stops a second on these variants), and a save that lands in one of those
// stops cannot be restored by QEMU 7.2 (measured: docs/design.md "Saves and migrations").
// The cases of the tests whose operation copies the guest's memory (save, snapshot): mmio with
// regrel=off.
HalCase CopyCase(int vcpus, uint32_t seed, bool random = false) {
  return HalCase{
      .strategy = "mmio", .vcpus = vcpus, .seed = seed, .random = random, .no_regrel = true};
}

std::vector<HalCase> SaveCases() {
  if (!Soak()) return {CopyCase(1, 5)};
  return {CopyCase(1, 5), CopyCase(2, 2), CopyCase(4, 3), CopyCase(2, RandomSeed() + 19, true)};
}

INSTANTIATE_TEST_SUITE_P(Hal, HalSaveTest, ::testing::ValuesIn(SaveCases()),
                         [](const auto& info) { return CaseName(info.param); });

// Snapshots with memory (internal, qcow2) of the HAL-shaped guest while tprd runs, then reverts
// of the running domain: to the snapshot from before the enable (tprd must show `unpatched` and
// write nothing from what it knew) and to the snapshot of the patched guest (its blob adopted,
// every site it runs patched again). The guest's checks hold after each revert and after the
// rollback, and the rollback restores its code byte for byte. mmio only, regrel=off, as
// HalSaveTest and for its reason (a snapshot's copy landing in a trap stop).
class HalSnapshotTest : public ::testing::TestWithParam<HalCase> {};

TEST_P(HalSnapshotTest, RevertsShowAndAdoptWhatTheSnapshotsMemoryHolds) {
  const HalCase& c = GetParam();
  HalE2e e2e(c);
  e2e.Boot(/*reboot_restarts=*/false, /*snapshot_disk=*/true);
  if (HasFatalFailure()) return;
  TestDomain& domain = *e2e.domain();
  const std::string name = domain.name();
  const std::vector<uint8_t> code_before = e2e.ReadGuestCode();
  RunResult before = Virsh({"snapshot-create-as", name, "before-enable"});
  ASSERT_EQ(before.exit_code, 0) << before.out << before.err;

  TprdProcess tprd(MakeTprdDir(), TprdConfig(c));
  absl::Cleanup keep_logs = [&] { e2e.KeepLogs(&tprd, TestName()); };
  const size_t enable_from = domain.Lines().size();
  StartAndEnable(e2e, tprd, c.strategy);
  if (HasFatalFailure()) return;
  e2e.RunPatched(tprd, enable_from, kProvingWindowSeconds + 3, 1, "patched before the snapshot");
  ASSERT_TRUE(WaitForProvingWindowEnd(tprd, name, absl::Seconds(60))) << tprd.LogTail(40);
  const std::vector<SiteRow> sites_patched = ListSites(tprd, name);

  RunResult patched = Virsh({"snapshot-create-as", name, "patched"});
  ASSERT_EQ(patched.exit_code, 0) << patched.out << patched.err << tprd.LogTail(40);
  WaitForState(tprd, name, "patched", absl::Seconds(30), "after the snapshot of the patched guest");
  {
    const std::vector<std::string> lines = domain.Lines();
    CheckPhase("patched, through the snapshot", lines, enable_from, lines.size(), e2e.layout(),
               e2e.baseline());
  }

  RunResult reverted = Virsh({"snapshot-revert", name, "before-enable"});
  ASSERT_EQ(reverted.exit_code, 0) << reverted.out << reverted.err << tprd.LogTail(40);
  size_t from = domain.Lines().size();
  WaitForState(tprd, name, "unpatched", absl::Seconds(30), "reverted to before the enable");
  for (const SiteRow& row : ListSites(tprd, name)) {
    EXPECT_NE(row.state, "applied")
        << e2e.layout().Name(row.address) << ": listed as applied from the old memory";
  }
  e2e.RunAfterRevert(from, 3, "reverted to before the enable");
  EXPECT_EQ(StatusField(tprd, name, "state"), "unpatched") << tprd.LogTail(40);

  reverted = Virsh({"snapshot-revert", name, "patched"});
  ASSERT_EQ(reverted.exit_code, 0) << reverted.out << reverted.err << tprd.LogTail(40);
  from = domain.Lines().size();
  WaitForState(tprd, name, "patched", absl::Seconds(30), "reverted to the patched snapshot");
  e2e.RunAfterRevert(from, 3, "reverted to the patched snapshot");
  e2e.ExpectSitesPatched(tprd, "reverted to the patched snapshot");
  size_t applied_before = 0, applied_after = 0;
  for (const SiteRow& row : sites_patched) applied_before += row.state == "applied";
  for (const SiteRow& row : ListSites(tprd, name)) applied_after += row.state == "applied";
  EXPECT_EQ(applied_after, applied_before) << "the snapshot's sites, adopted";
  // No check of tprd's log for "lost the session": libvirt may revert by restarting QEMU, and
  // then its stop event can come after tprd's 2 s grace (ciH: 2.15 s); tprd then takes the
  // guest back from a lost session, which is correct, with a warning (docs/design.md).

  RollBackAndCompareCode(e2e, tprd, from, code_before, "snapshot");
  for (const char* snapshot : {"patched", "before-enable"}) {
    RunResult deleted = Virsh({"snapshot-delete", name, snapshot});
    EXPECT_EQ(deleted.exit_code, 0) << deleted.out << deleted.err;
  }
}

std::vector<HalCase> SnapshotCases() {
  if (!Soak()) return {CopyCase(2, 4)};
  return {CopyCase(1, 1), CopyCase(2, 4), CopyCase(4, RandomSeed() + 23, true)};
}

INSTANTIATE_TEST_SUITE_P(Hal, HalSnapshotTest, ::testing::ValuesIn(SnapshotCases()),
                         [](const auto& info) { return CaseName(info.param); });

// A guest reset while patched: the patches go with the guest's memory, tprd says "unpatched"
// without an error, and its traps do not follow the guest into the new boot (under cr8 a trap
// left armed would stop the booting guest, or fix up reads of a guest with no blob). The new boot
// passes its checks alone, a second enable patches it, and the rollback leaves it correct.
class HalRebootTest : public ::testing::TestWithParam<HalCase> {};

TEST_P(HalRebootTest, ResetWhilePatchedLeavesNothingBehindAndEnableWorksAgain) {
  const HalCase& c = GetParam();
  HalE2e e2e(c);
  e2e.Boot(/*reboot_restarts=*/true);
  if (HasFatalFailure()) return;
  TestDomain& domain = *e2e.domain();

  TprdProcess tprd(MakeTprdDir(), TprdConfig(c));
  absl::Cleanup keep_logs = [&] { e2e.KeepLogs(&tprd, TestName()); };
  const size_t enable_from = domain.Lines().size();
  StartAndEnable(e2e, tprd, c.strategy);
  if (HasFatalFailure()) return;
  e2e.RunPatched(tprd, domain.Lines().size(), 3, 1, "patched before the reset");
  const size_t reset_from = domain.Lines().size();
  CheckPhase("patched before the reset", domain.Lines(), enable_from, reset_from, e2e.layout(),
             e2e.baseline());

  RunResult reset = Virsh({"reset", domain.name()});
  ASSERT_EQ(reset.exit_code, 0) << reset.out << reset.err;
  const size_t boot = e2e.WaitForReboot(reset_from);
  if (HasFailure()) return;
  WaitForState(tprd, domain.name(), "unpatched", absl::Seconds(30), "after the reset");
  const Status after_reset = GetStatus(tprd, domain.name());
  EXPECT_EQ(after_reset.last_error, "") << "the reset left an error behind: " << after_reset.raw;
  Say() << "rebooted at serial line " << boot << "; tprd says " << after_reset.state << std::endl;

  const size_t enable2_from = domain.Lines().size();
  RunResult enabled = tprd.Ctl({"--json", "enable", domain.name(), "--strategy", c.strategy});
  ASSERT_EQ(enabled.exit_code, 0) << enabled.out << enabled.err << tprd.LogTail(60);
  e2e.RunPatched(tprd, enable2_from, RunSeconds(), GuestSeconds(), "patched after the reset");
  e2e.ExpectSitesPatched(tprd, "patched after the reset");
  const size_t rollback_from = domain.Lines().size();
  e2e.Rollback(tprd, "rollback after the reset");
  const size_t rollback_done = domain.Lines().size();
  e2e.CheckAroundRollback(tprd, enable2_from, rollback_from, rollback_done, "reset");
  EXPECT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
}

std::vector<HalCase> RebootCases() {
  if (!Soak()) return {{"cr8", 2, 4}};
  return {{"cr8", 1, 1}, {"cr8", 4, 3}, {"mmio", 2, 2}, {"cr8", 2, RandomSeed() + 17, true}};
}

INSTANTIATE_TEST_SUITE_P(Hal, HalRebootTest, ::testing::ValuesIn(RebootCases()),
                         [](const auto& info) { return CaseName(info.param); });

std::vector<HalCase> SigtermCases() {
  // The idle case: systemd stopping tprd on an idle host meets halted CPUs under cr8, in the
  // proving window (where a breakpoint racing the detach's stop once kept every CPU from its
  // poke: docs/design.md).
  if (!Soak()) return {{"cr8", 2, 2}, {"mmio", 2, 3}, {"cr8", 4, 6, false, true}};
  return {{"cr8", 1, 1},
          {"cr8", 4, 3},
          {"mmio", 1, 1},
          {"mmio", 4, 2},
          {"cr8", 4, 6, false, true},
          {"cr8", 2, RandomSeed() + 11, true},
          {"mmio", 2, RandomSeed() + 13, true}};
}

INSTANTIATE_TEST_SUITE_P(Hal, HalSigtermTest, ::testing::ValuesIn(SigtermCases()),
                         [](const auto& info) { return CaseName(info.param); });

// One vCPU by default: it isolates the kill and the adopt from cr8's SMP trouble (see the
// Cr8/HalStrategyTest cases on 2 and 4 vCPUs); the soak adds SMP.
std::vector<HalCase> Kill9Cases() {
  // The watchpoint case: a killed tprd leaves only its TPR watchpoint behind (no breakpoint).
  if (!Soak()) return {{"cr8", 1, 1}, {"cr8", 2, 6, false, false, "watchpoint"}};
  return {{"cr8", 1, 1}, {"cr8", 2, 2}, {"cr8", 4, 3}, {"cr8", 2, RandomSeed() + 7, true}};
}

INSTANTIATE_TEST_SUITE_P(Cr8, HalKill9Test, ::testing::ValuesIn(Kill9Cases()),
                         [](const auto& info) { return CaseName(info.param); });

}  // namespace
}  // namespace tprd::testing

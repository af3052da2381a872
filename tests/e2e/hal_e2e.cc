#include "tests/e2e/hal_e2e.h"

#include <unistd.h>

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

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
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

std::string HalGuestElf() { return TPRD_HAL_GUEST_ELF; }

// STAT lines per CPU after the rollback's transition that must show no new failure.
constexpr int kStatsAfterRollback = 3;
// A full rollback stops the guest a few times; it must not take longer than this.
constexpr absl::Duration kRollbackBound = absl::Seconds(30);
// The guest's counters of failed checks; each must stay 0.
const char* const kFailureCounters[] = {"wrong_reads", "mask_violations", "lost_interrupts"};

}  // namespace

// ------------------------------------------------------------------------------ configuration

bool Soak() {
  const char* soak = std::getenv("TPRD_HAL_SOAK");
  return soak != nullptr && *soak != '\0' && std::string(soak) != "0";
}

int RunSeconds() {
  int seconds = 0;
  const char* env = std::getenv("TPRD_HAL_SECONDS");
  if (env != nullptr && absl::SimpleAtoi(env, &seconds) && seconds > 0) return seconds;
  return Soak() ? 90 : 15;
}
int GuestSeconds() { return Soak() ? 20 : 2; }

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

absl::Time& CaseStart() {
  static absl::Time start = absl::Now();
  return start;
}

std::ostringstream& Narrative() {
  static std::ostringstream narrative;
  return narrative;
}

SayStream& Say() {
  static SayStream say;
  return say << "[+" << absl::StrFormat("%.1f", absl::ToDoubleSeconds(absl::Now() - CaseStart()))
             << "s] ";
}

// ------------------------------------------------------------------------------ guest layout

std::string GuestLayout::Name(uint32_t va) const {
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

void HalE2e::Boot(bool reboot_restarts, bool snapshot_disk) {
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

size_t HalE2e::WaitForReboot(size_t from) {
  size_t boot = from;
  absl::StatusOr<std::string> line =
      domain_->WaitForPrefix("BOOT ", absl::Seconds(120), from, &boot);
  EXPECT_TRUE(line.ok()) << "no new boot after the reset: " << line.status() << "\n"
                         << domain_->LastLines(30);
  if (!line.ok()) return from;
  if (!WaitForUptime(boot, 1000, absl::Seconds(180), "after the reset")) return boot;
  const std::vector<std::string> lines = domain_->Lines();
  baseline_ = CheckPhase("rebooted, before the next enable", lines, boot, lines.size(), layout_, {})
                  .counters;
  return boot;
}

std::vector<uint8_t> HalE2e::ReadGuestCode() {
  std::vector<uint8_t> out =
      ReadCode(domain_->uuid(), layout_.code_first & ~0xFFFu,
               ((layout_.code_end + 0xFFF) & ~0xFFFu) - (layout_.code_first & ~0xFFFu));
  std::vector<uint8_t> templates =
      ReadCode(domain_->uuid(), layout_.templates_first & ~0xFFFu,
               ((std::max(layout_.templates_end, layout_.decoy_page + 0x1000) + 0xFFF) & ~0xFFFu) -
                   (layout_.templates_first & ~0xFFFu));
  out.insert(out.end(), templates.begin(), templates.end());
  return out;
}

uint64_t HalE2e::Uptime() {
  uint64_t uptime = 0;
  for (const std::string& line : domain_->Lines()) {
    if (StartsWith(line, "STAT "))
      uptime = std::max(uptime, Num(ParseSerialFields(line), "uptime_ms"));
  }
  return uptime;
}

void HalE2e::RunAfterRevert(size_t from, int guest_seconds, const char* when) {
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

void HalE2e::RunPatched(TprdProcess& tprd, size_t from, int seconds, int guest_seconds,
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

std::string HalE2e::Annotate(const std::string& text) const {
  std::string out;
  std::set<uint32_t> seen;
  static const std::regex hex("0x([0-9a-fA-F]{6,8})");
  for (auto it = std::sregex_iterator(text.begin(), text.end(), hex); it != std::sregex_iterator();
       ++it) {
    uint32_t va = 0;
    if (!absl::SimpleHexAtoi((*it)[1].str(), &va) || va < 0x80000000u || va >= 0xFFFE0000u ||
        !seen.insert(va).second) {
      continue;
    }
    absl::StrAppend(&out, "  ", layout_.Name(va), "\n");
  }
  return out.empty() ? "" : absl::StrCat("addresses named:\n", out);
}

void HalE2e::ExpectSitesPatched(TprdProcess& tprd, const char* when) {
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
          << " reader(s) the learning window missed stay unpatched (mmio, watchpoint)" << std::endl;
  }
  for (const SiteRow& row : rows) {
    if (row.state != "applied") continue;
    const GuestLayout::Site* s = layout_.SiteAt(row.address);
    EXPECT_TRUE(s != nullptr && s->kind != "decoy")
        << when << ": tprd patched " << layout_.Name(row.address) << ", which the guest never runs";
  }
}

void HalE2e::Rollback(TprdProcess& tprd, const char* when) {
  const absl::Time start = absl::Now();
  const uint64_t uptime = Uptime();
  RunResult rolled = tprd.Ctl({"--json", "rollback", domain_->name()});
  const absl::Duration took = absl::Now() - start;
  Say() << when << ": rollback from guest uptime " << uptime << " ms or later took " << took
        << ", exit " << rolled.exit_code << std::endl;
  ::testing::Test::RecordProperty("rollback_ms", static_cast<int>(absl::ToInt64Milliseconds(took)));
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

void HalE2e::StartWatch(TprdProcess& tprd) {
  StopWatch();
  if (watch_dir_.empty()) {
    char dir[] = "/tmp/tprd-e2e-hal-watch-XXXXXX";
    if (mkdtemp(dir) != nullptr) watch_dir_ = dir;
  }
  if (watch_dir_.empty()) return;
  watch_pid_ = Spawn({TprctlPath(), "--socket", tprd.socket(), "--json", "watch", domain_->name()},
                     watch_dir_ + "/watch.log", watch_dir_ + "/watch.log");
}

void HalE2e::StopWatch() {
  if (watch_pid_ > 0) Stop(watch_pid_, 1000);
  watch_pid_ = -1;
}

HalE2e::~HalE2e() {
  StopWatch();
  if (!watch_dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(watch_dir_, ignored);
  }
}

void HalE2e::CheckAroundRollback(TprdProcess& tprd, size_t enable_from, size_t rollback_from,
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
      absl::StatusOr<std::string> stat = domain_->WaitForPrefix(absl::StrCat("STAT cpu=", cpu, " "),
                                                                absl::Seconds(60), index, &index);
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
  PhaseResult after = CheckPhase(absl::StrCat(label, ": after the rollback"), lines, transition_end,
                                 lines.size(), layout_, transition.counters);
  ExpectProgress(absl::StrCat(label, ": after the rollback"), after, case_.vcpus,
                 kStatsAfterRollback);
  SummarizeCounters(label, lines);
}

void HalE2e::SummarizeCounters(const char* label, const std::vector<std::string>& lines) {
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

void HalE2e::KeepLogs(const TprdProcess* tprd, const std::string& test_name) {
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

std::string TestName() {
  const ::testing::TestInfo* info = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string name = absl::StrCat(info->test_suite_name(), ".", info->name());
  std::replace(name.begin(), name.end(), '/', '_');
  return name;
}

std::string TprdConfig(const HalCase& c) {
  return absl::StrCat("proving_window_s = ", kProvingWindowSeconds,
                      "\nmmio_write_stops_per_second = 1000000\n",
                      c.discovery.empty() ? "" : absl::StrCat("discovery = ", c.discovery, "\n"));
}

}  // namespace tprd::testing

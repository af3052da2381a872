#include "kvm-backend/core/monitor_parsers.h"

#include <algorithm>
#include <charconv>
#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

namespace tprd::backend {
namespace {

using Json = nlohmann::json;

// QEMU text is a peer's data: cap what we quote back in error messages.
std::string Excerpt(std::string_view text) {
  constexpr size_t kMax = 200;
  std::string out(text.substr(0, kMax));
  if (text.size() > kMax) out += "...";
  return out;
}

std::string_view Trim(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t' || s.front() == '\r')) {
    s.remove_prefix(1);
  }
  while (!s.empty() &&
         (s.back() == ' ' || s.back() == '\t' || s.back() == '\r' || s.back() == '\n')) {
    s.remove_suffix(1);
  }
  return s;
}

std::optional<uint64_t> ParseHex(std::string_view s) {
  if (s.size() >= 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) s.remove_prefix(2);
  if (s.empty() || s.size() > 16) return std::nullopt;
  uint64_t value = 0;
  auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value, 16);
  if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
  return value;
}

std::vector<std::string_view> Lines(std::string_view text) {
  std::vector<std::string_view> lines;
  for (absl::string_view line : absl::StrSplit(absl::string_view(text.data(), text.size()), '\n')) {
    lines.emplace_back(line.data(), line.size());
  }
  return lines;
}

std::vector<std::string_view> Words(std::string_view line) {
  std::vector<std::string_view> words;
  for (absl::string_view word : absl::StrSplit(absl::string_view(line.data(), line.size()),
                                               absl::ByAnyChar(" \t\r"), absl::SkipEmpty())) {
    words.emplace_back(word.data(), word.size());
  }
  return words;
}

// Parses `START-END (prio P, TYPE): NAME[ @OFFSET]` of a FlatView.
std::optional<engine::MemoryRegion> ParseFlatRange(std::string_view line) {
  line = Trim(line);
  size_t dash = line.find('-');
  size_t paren = line.find(" (prio ");
  size_t close = line.find("): ");
  if (dash == std::string_view::npos || paren == std::string_view::npos ||
      close == std::string_view::npos || !(dash < paren && paren < close)) {
    return std::nullopt;
  }
  std::optional<uint64_t> start = ParseHex(line.substr(0, dash));
  std::optional<uint64_t> end = ParseHex(line.substr(dash + 1, paren - dash - 1));
  if (!start || !end || *end < *start) return std::nullopt;
  std::string_view attrs = line.substr(paren + 7, close - paren - 7);  // "0, rom"
  size_t comma = attrs.find(", ");
  if (comma == std::string_view::npos) return std::nullopt;
  std::string_view type = attrs.substr(comma + 2);
  std::string_view name = line.substr(close + 3);
  if (size_t at = name.find(" @"); at != std::string_view::npos) name = name.substr(0, at);
  engine::MemoryRegion region;
  region.start = *start;
  region.end = *end;
  region.ram = type == "ram";
  // "rom" is RAM-backed and read-only for the guest (the chipset's shadowed legacy window);
  // "romd" is a device (flash) whose writes do not land in memory: not counted.
  region.rom = type == "rom";
  region.name = std::string(Trim(name));
  return region;
}

// QMP replies: {"return": ...} or {"error": {"class": ..., "desc": ...}}.
absl::StatusOr<Json> QmpReturn(std::string_view reply) {
  Json doc = Json::parse(reply.begin(), reply.end(), nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded() || !doc.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("QMP reply is not a JSON object: ", Excerpt(reply)));
  }
  if (auto error = doc.find("error"); error != doc.end()) {
    std::string error_class = "?";
    std::string desc = "?";
    if (error->is_object()) {
      if (auto c = error->find("class"); c != error->end() && c->is_string()) {
        error_class = c->get<std::string>();
      }
      if (auto d = error->find("desc"); d != error->end() && d->is_string()) {
        desc = d->get<std::string>();
      }
    }
    std::string message = absl::StrCat("QMP error ", Excerpt(error_class), ": ", Excerpt(desc));
    if (error_class == "DeviceNotFound" || desc.find("not found") != std::string::npos) {
      return absl::NotFoundError(message);
    }
    return absl::InternalError(message);
  }
  auto ret = doc.find("return");
  if (ret == doc.end()) {
    return absl::InvalidArgumentError(absl::StrCat("QMP reply has no return: ", Excerpt(reply)));
  }
  return *ret;
}

}  // namespace

absl::StatusOr<uint8_t> ParseLapicTpr(std::string_view hmp_output) {
  if (hmp_output.find("No CPU available") != std::string_view::npos) {
    return absl::NotFoundError("info lapic: no such CPU");
  }
  for (std::string_view line : Lines(hmp_output)) {
    std::vector<std::string_view> words = Words(line);
    for (size_t i = 0; i + 1 < words.size(); ++i) {
      if (words[i] != "TPR") continue;
      std::optional<uint64_t> tpr = ParseHex(words[i + 1]);
      if (!tpr || *tpr > 0xff) {
        return absl::InvalidArgumentError(
            absl::StrCat("info lapic: bad TPR value in: ", Excerpt(line)));
      }
      return static_cast<uint8_t>(*tpr);
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("info lapic: no TPR line in: ", Excerpt(hmp_output)));
}

std::optional<int> TprdPidOfGdbChardev(std::string_view label, std::string_view prefix) {
  if (label.substr(0, prefix.size()) != prefix) return std::nullopt;
  std::string_view rest = label.substr(prefix.size());
  const size_t dash = rest.find('-');
  if (dash == 0 || dash == std::string_view::npos || dash + 1 == rest.size()) return std::nullopt;
  int pid = 0;
  auto [end, ec] = std::from_chars(rest.data(), rest.data() + dash, pid);
  if (ec != std::errc() || end != rest.data() + dash || pid <= 0) return std::nullopt;
  for (char c : rest.substr(dash + 1)) {
    if (c < '0' || c > '9') return std::nullopt;
  }
  return pid;
}

absl::StatusOr<uint16_t> ParseAcpiPmTimerPort(std::string_view hmp_output) {
  bool in_io = false;
  for (std::string_view raw : Lines(hmp_output)) {
    std::string_view line = Trim(raw);
    if (line.rfind("address-space:", 0) == 0) {
      in_io = Trim(line.substr(std::string_view("address-space:").size())) == "I/O";
      continue;
    }
    if (!in_io) continue;
    // "0000000000000608-000000000000060b (prio 0, i/o): acpi-tmr"
    const size_t colon = line.rfind("): ");
    if (colon == std::string_view::npos || Trim(line.substr(colon + 3)) != "acpi-tmr") continue;
    const size_t dash = line.find('-');
    std::optional<uint64_t> start =
        dash == std::string_view::npos ? std::nullopt : ParseHex(line.substr(0, dash));
    if (!start || *start > 0xfffc) {
      return absl::InvalidArgumentError(
          absl::StrCat("info mtree: bad acpi-tmr region: ", Excerpt(line)));
    }
    return static_cast<uint16_t>(*start);
  }
  return absl::NotFoundError("the machine has no ACPI PM timer (no acpi-tmr I/O region)");
}

absl::StatusOr<uint32_t> ParseIoPortReadLong(std::string_view hmp_output) {
  std::string_view text = Trim(hmp_output);
  const size_t equals = text.find(" = ");
  if (text.rfind("portl[", 0) != 0 || equals == std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("i /w: unexpected reply: ", Excerpt(text)));
  }
  std::optional<uint64_t> value = ParseHex(Trim(text.substr(equals + 3)));
  if (!value || *value > 0xffffffffu) {
    return absl::InvalidArgumentError(absl::StrCat("i /w: bad value in: ", Excerpt(text)));
  }
  return static_cast<uint32_t>(*value);
}

absl::StatusOr<std::vector<engine::MemoryRegion>> ParseMtreeFlat(std::string_view hmp_output) {
  bool in_flatview = false;
  bool is_memory_view = false;
  bool found = false;
  std::vector<engine::MemoryRegion> regions;
  for (std::string_view raw : Lines(hmp_output)) {
    std::string_view line = Trim(raw);
    if (line.rfind("FlatView #", 0) == 0) {
      if (is_memory_view) break;  // the memory view ended
      in_flatview = true;
      continue;
    }
    if (!in_flatview) continue;
    if (line.rfind("AS \"memory\",", 0) == 0) {
      is_memory_view = true;
      found = true;
      continue;
    }
    if (!is_memory_view || line.empty() || line.rfind("AS ", 0) == 0 ||
        line.rfind("Root memory region", 0) == 0) {
      continue;
    }
    std::optional<engine::MemoryRegion> region = ParseFlatRange(line);
    if (!region) {
      if (line.rfind("No rendered FlatView", 0) == 0) continue;
      return absl::InvalidArgumentError(
          absl::StrCat("info mtree -f: unexpected line: ", Excerpt(line)));
    }
    regions.push_back(std::move(*region));
  }
  if (!found) {
    return absl::InvalidArgumentError("info mtree -f: no FlatView of address space \"memory\"");
  }
  if (regions.empty()) {
    return absl::InvalidArgumentError("info mtree -f: the \"memory\" FlatView has no ranges");
  }
  std::stable_sort(regions.begin(), regions.end(),
                   [](const auto& a, const auto& b) { return a.start < b.start; });
  return regions;
}

absl::StatusOr<uint64_t> ParseGpa2Hva(std::string_view hmp_output) {
  std::string_view text = Trim(hmp_output);
  if (text.find("No memory is mapped") != std::string_view::npos ||
      text.find("is not RAM") != std::string_view::npos) {
    return absl::NotFoundError(absl::StrCat("gpa2hva: ", Excerpt(text)));
  }
  constexpr std::string_view kMarker = " is 0x";
  size_t at = text.rfind(kMarker);
  if (text.rfind("Host virtual address for ", 0) != 0 || at == std::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat("gpa2hva: unexpected reply: ", Excerpt(text)));
  }
  std::optional<uint64_t> hva = ParseHex(text.substr(at + 4));
  if (!hva) {
    return absl::InvalidArgumentError(absl::StrCat("gpa2hva: bad address in: ", Excerpt(text)));
  }
  return *hva;
}

absl::Status CheckGdbserverReply(std::string_view hmp_output) {
  std::string_view text = Trim(hmp_output);
  if (text.rfind("Waiting for gdb connection", 0) == 0 || text == "Disabled gdbserver") {
    return absl::OkStatus();
  }
  if (text.find("duplicate yank instance") != std::string_view::npos) {
    return absl::AlreadyExistsError(
        absl::StrCat("gdbserver: a gdbstub is already running: ", Excerpt(text)));
  }
  return absl::InternalError(absl::StrCat("gdbserver: ", Excerpt(text)));
}

absl::StatusOr<std::vector<QemuCpu>> ParseQueryCpusFast(std::string_view qmp_reply) {
  absl::StatusOr<Json> ret = QmpReturn(qmp_reply);
  if (!ret.ok()) return ret.status();
  if (!ret->is_array()) return absl::InvalidArgumentError("query-cpus-fast: return not a list");
  std::vector<QemuCpu> cpus;
  for (const Json& entry : *ret) {
    if (!entry.is_object()) return absl::InvalidArgumentError("query-cpus-fast: bad entry");
    auto index = entry.find("cpu-index");
    auto path = entry.find("qom-path");
    if (index == entry.end() || !index->is_number_integer() || path == entry.end() ||
        !path->is_string()) {
      return absl::InvalidArgumentError("query-cpus-fast: entry lacks cpu-index or qom-path");
    }
    QemuCpu cpu;
    int64_t cpu_index = index->get<int64_t>();
    if (cpu_index < 0 || cpu_index > 4095) {
      return absl::InvalidArgumentError(absl::StrCat("query-cpus-fast: cpu-index ", cpu_index));
    }
    cpu.cpu_index = static_cast<int>(cpu_index);
    cpu.qom_path = path->get<std::string>();
    if (auto tid = entry.find("thread-id"); tid != entry.end() && tid->is_number_integer()) {
      cpu.host_thread_id = tid->get<int64_t>();
    }
    cpus.push_back(std::move(cpu));
  }
  std::sort(cpus.begin(), cpus.end(),
            [](const QemuCpu& a, const QemuCpu& b) { return a.cpu_index < b.cpu_index; });
  for (size_t i = 1; i < cpus.size(); ++i) {
    if (cpus[i].cpu_index == cpus[i - 1].cpu_index) {
      return absl::InvalidArgumentError("query-cpus-fast: duplicate cpu-index");
    }
  }
  return cpus;
}

absl::StatusOr<bool> ParseQomGetBool(std::string_view qmp_reply) {
  absl::StatusOr<Json> ret = QmpReturn(qmp_reply);
  if (!ret.ok()) return ret.status();
  if (!ret->is_boolean()) return absl::InvalidArgumentError("qom-get: value is not a boolean");
  return ret->get<bool>();
}

absl::StatusOr<QemuRunStatus> ParseQueryStatus(std::string_view qmp_reply) {
  absl::StatusOr<Json> ret = QmpReturn(qmp_reply);
  if (!ret.ok()) return ret.status();
  if (!ret->is_object()) return absl::InvalidArgumentError("query-status: return not an object");
  auto running = ret->find("running");
  auto status = ret->find("status");
  if (running == ret->end() || !running->is_boolean() || status == ret->end() ||
      !status->is_string()) {
    return absl::InvalidArgumentError("query-status: lacks running or status");
  }
  return QemuRunStatus{running->get<bool>(), status->get<std::string>()};
}

absl::StatusOr<bool> ParseQueryKvmEnabled(std::string_view qmp_reply) {
  absl::StatusOr<Json> ret = QmpReturn(qmp_reply);
  if (!ret.ok()) return ret.status();
  if (!ret->is_object()) return absl::InvalidArgumentError("query-kvm: return not an object");
  auto enabled = ret->find("enabled");
  if (enabled == ret->end() || !enabled->is_boolean()) {
    return absl::InvalidArgumentError("query-kvm: lacks enabled");
  }
  return enabled->get<bool>();
}

absl::StatusOr<std::vector<TraceEventState>> ParseTraceEventStates(std::string_view hmp_output) {
  constexpr std::string_view kSeparator = " : state ";
  std::vector<TraceEventState> events;
  for (std::string_view line : Lines(hmp_output)) {
    line = Trim(line);
    if (line.empty()) continue;
    const size_t at = line.find(kSeparator);
    const std::string_view state =
        at == std::string_view::npos ? std::string_view() : line.substr(at + kSeparator.size());
    if (at == 0 || at == std::string_view::npos || (state != "0" && state != "1")) {
      return absl::InvalidArgumentError(
          absl::StrCat("info trace-events: unexpected line \"", Excerpt(line), "\""));
    }
    events.push_back(TraceEventState{std::string(line.substr(0, at)), state == "1"});
  }
  return events;
}

absl::StatusOr<std::vector<QemuChardev>> ParseQueryChardev(std::string_view qmp_reply) {
  absl::StatusOr<Json> ret = QmpReturn(qmp_reply);
  if (!ret.ok()) return ret.status();
  if (!ret->is_array()) return absl::InvalidArgumentError("query-chardev: return not a list");
  std::vector<QemuChardev> chardevs;
  for (const Json& entry : *ret) {
    if (!entry.is_object()) return absl::InvalidArgumentError("query-chardev: bad entry");
    auto label = entry.find("label");
    auto filename = entry.find("filename");
    auto open = entry.find("frontend-open");
    if (label == entry.end() || !label->is_string() || filename == entry.end() ||
        !filename->is_string() || open == entry.end() || !open->is_boolean()) {
      return absl::InvalidArgumentError(
          "query-chardev: entry lacks label, filename or frontend-open");
    }
    chardevs.push_back(
        QemuChardev{label->get<std::string>(), filename->get<std::string>(), open->get<bool>()});
  }
  return chardevs;
}

namespace {
// replace: never throw on odd bytes; QEMU then refuses the name.
std::string DumpCommand(const Json& command) {
  return command.dump(-1, ' ', false, Json::error_handler_t::replace);
}
}  // namespace

std::string GetfdCommand(std::string_view fdname) {
  return DumpCommand({{"execute", "getfd"}, {"arguments", {{"fdname", std::string(fdname)}}}});
}

std::string ClosefdCommand(std::string_view fdname) {
  return DumpCommand({{"execute", "closefd"}, {"arguments", {{"fdname", std::string(fdname)}}}});
}

std::string ChardevAddSocketFdCommand(std::string_view id, std::string_view fdname) {
  Json addr = {{"type", "fd"}, {"data", {{"str", std::string(fdname)}}}};
  Json backend = {{"type", "socket"}, {"data", {{"addr", addr}, {"server", false}}}};
  return DumpCommand(
      {{"execute", "chardev-add"}, {"arguments", {{"id", std::string(id)}, {"backend", backend}}}});
}

std::string ChardevRemoveCommand(std::string_view id) {
  return DumpCommand({{"execute", "chardev-remove"}, {"arguments", {{"id", std::string(id)}}}});
}

absl::Status CheckQmpSuccess(std::string_view qmp_reply) { return QmpReturn(qmp_reply).status(); }

std::string QomGetCommand(std::string_view path, std::string_view property) {
  Json command = {
      {"execute", "qom-get"},
      {"arguments", {{"path", std::string(path)}, {"property", std::string(property)}}}};
  // replace: never throw on odd bytes; QEMU then reports the path as not found.
  return command.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace tprd::backend

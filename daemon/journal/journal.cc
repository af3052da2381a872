#include "daemon/journal/journal.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/engine/hex.h"
#include "daemon/engine/status_macros.h"

namespace tprd::daemon {
namespace {

using nlohmann::json;

std::string ErrnoText(int error) { return std::strerror(error); }

json SiteToJson(const engine::Site& site) {
  return json{
      {"id", site.id},
      {"address", absl::StrFormat("0x%08x", site.address)},
      {"form", std::string(engine::FormName(site.form))},
      {"register", std::string(engine::GprName(site.reg))},
      {"imm", site.imm},
      {"original", engine::HexEncode(site.original)},
      {"patched", engine::HexEncode(site.patched)},
      {"state", std::string(engine::SiteStateName(site.state))},
  };
}

absl::StatusOr<std::vector<uint8_t>> HexToBytes(const std::string& hex) {
  absl::StatusOr<std::vector<uint8_t>> bytes = engine::HexDecode(hex);
  if (!bytes.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("not a hex byte string: \"", hex, "\""));
  }
  return bytes;
}

absl::StatusOr<engine::SiteState> SiteStateFromName(const std::string& name) {
  for (auto state : {engine::SiteState::kCandidate, engine::SiteState::kPending,
                     engine::SiteState::kApplied, engine::SiteState::kRolledBack}) {
    if (engine::SiteStateName(state) == name) return state;
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown site state \"", name, "\""));
}

absl::StatusOr<engine::Gpr> GprFromName(const std::string& name) {
  for (int i = 0; i < engine::kGprCount; ++i) {
    if (engine::GprName(static_cast<engine::Gpr>(i)) == name) return static_cast<engine::Gpr>(i);
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown register \"", name, "\""));
}

absl::StatusOr<engine::Site> SiteFromJson(const json& j) {
  if (!j.is_object()) return absl::InvalidArgumentError("site is not an object");
  engine::Site site;
  site.id = j.at("id").get<uint32_t>();
  uint32_t address = 0;
  const std::string address_text = j.at("address").get<std::string>();
  if (!absl::SimpleHexAtoi(address_text, &address)) {
    return absl::InvalidArgumentError(absl::StrCat("bad site address \"", address_text, "\""));
  }
  site.address = address;
  const std::string form = j.at("form").get<std::string>();
  const auto parsed_form = engine::FormFromName(form);
  if (!parsed_form) return absl::InvalidArgumentError(absl::StrCat("unknown form \"", form, "\""));
  site.form = *parsed_form;
  auto reg = GprFromName(j.at("register").get<std::string>());
  if (!reg.ok()) return reg.status();
  site.reg = *reg;
  site.imm = j.value("imm", 0u);
  auto original = HexToBytes(j.at("original").get<std::string>());
  if (!original.ok()) return original.status();
  site.original = *std::move(original);
  auto patched = HexToBytes(j.at("patched").get<std::string>());
  if (!patched.ok()) return patched.status();
  site.patched = *std::move(patched);
  auto state = SiteStateFromName(j.at("state").get<std::string>());
  if (!state.ok()) return state.status();
  site.state = *state;
  return site;
}

class JournalRecorder : public engine::PatchRecorder {
 public:
  JournalRecorder(Journal* journal, DomainInfo domain)
      : journal_(journal), domain_(std::move(domain)) {}

  absl::Status RecordSite(const engine::Site& site) override { return RecordSites({&site, 1}); }

  absl::Status RecordSites(absl::Span<const engine::Site> sites) override {
    std::vector<JournalEntry> entries;
    for (const engine::Site& site : sites) entries.push_back(EntryFor(site));
    TPRD_RETURN_IF_ERROR(journal_->AppendAll(entries, /*sync=*/!defer_sync_));
    sync_owed_ = sync_owed_ || defer_sync_;
    return absl::OkStatus();
  }

  void DeferSync(bool defer) override { defer_sync_ = defer; }

  absl::Status Sync() override {
    if (!sync_owed_) return absl::OkStatus();
    TPRD_RETURN_IF_ERROR(journal_->Sync());
    sync_owed_ = false;
    return absl::OkStatus();
  }

 private:
  JournalEntry EntryFor(const engine::Site& site) const {
    JournalEntry entry;
    entry.time = absl::Now();
    entry.domain_name = domain_.name;
    entry.domain_uuid = domain_.uuid;
    entry.event = "site";
    entry.site = site;
    return entry;
  }

  Journal* const journal_;
  const DomainInfo domain_;
  bool defer_sync_ = false;
  bool sync_owed_ = false;
};

}  // namespace

std::string JournalEntryToJson(const JournalEntry& entry) {
  json j = {
      {"time", absl::FormatTime(absl::RFC3339_full, entry.time, absl::UTCTimeZone())},
      {"domain", entry.domain_name},
      {"uuid", entry.domain_uuid},
      {"event", entry.event},
  };
  if (entry.site) j["site"] = SiteToJson(*entry.site);
  if (!entry.message.empty()) j["message"] = entry.message;
  if (entry.strategy) j["strategy"] = std::string(engine::StrategyName(*entry.strategy));
  // Replacement of invalid UTF-8 keeps a guest-derived string from making the line unwritable.
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

absl::StatusOr<JournalEntry> JournalEntryFromJson(const std::string& line) {
  const json j = json::parse(line, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError("not a JSON object");
  // nlohmann reports type mismatches by exception; keep them inside this function.
  try {
    JournalEntry entry;
    std::string error;
    if (!absl::ParseTime(absl::RFC3339_full, j.at("time").get<std::string>(), &entry.time,
                         &error)) {
      return absl::InvalidArgumentError(absl::StrCat("bad time: ", error));
    }
    entry.domain_name = j.value("domain", "");
    entry.domain_uuid = j.value("uuid", "");
    entry.event = j.at("event").get<std::string>();
    entry.message = j.value("message", "");
    if (j.contains("strategy")) {
      const std::string name = j.at("strategy").get<std::string>();
      entry.strategy = engine::StrategyFromName(name);
      if (!entry.strategy) {
        return absl::InvalidArgumentError(absl::StrCat("unknown strategy \"", name, "\""));
      }
    }
    if (j.contains("site")) {
      auto site = SiteFromJson(j.at("site"));
      if (!site.ok()) return site.status();
      entry.site = *std::move(site);
    }
    return entry;
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(absl::StrCat("missing or mistyped field: ", e.what()));
  }
}

absl::StatusOr<std::unique_ptr<Journal>> Journal::Open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
  if (fd < 0) {
    const int error = errno;
    return absl::UnavailableError(absl::StrCat("cannot open journal ", path, ": ", ErrnoText(error),
                                               "; check that the state directory exists and is "
                                               "writable"));
  }
  std::unique_ptr<Journal> journal(new Journal(path, fd));
  // What earlier runs asked for (a restarted tprd adopts guests with it). Unreadable lines
  // were torn by a crash or are not ours: skipped here as by any reader.
  absl::StatusOr<std::vector<JournalEntry>> history = ReadAll(path, nullptr);
  if (history.ok()) {
    absl::MutexLock lock(&journal->mu_);
    for (const JournalEntry& entry : *history) journal->Remember(entry);
  }
  return journal;
}

void Journal::Remember(const JournalEntry& entry) {
  if (entry.strategy) last_strategy_[entry.domain_uuid] = *entry.strategy;
}

std::optional<engine::Strategy> Journal::LastStrategy(const std::string& domain_uuid) const {
  absl::MutexLock lock(&mu_);
  auto it = last_strategy_.find(domain_uuid);
  if (it == last_strategy_.end()) return std::nullopt;
  return it->second;
}

Journal::~Journal() {
  absl::MutexLock lock(&mu_);
  if (fd_ >= 0) ::close(fd_);
}

absl::Status Journal::Append(const JournalEntry& entry) { return AppendAll({entry}); }

absl::Status Journal::AppendAll(const std::vector<JournalEntry>& entries, bool sync) {
  if (entries.empty()) return absl::OkStatus();
  std::string line;
  for (const JournalEntry& entry : entries) absl::StrAppend(&line, JournalEntryToJson(entry), "\n");
  absl::MutexLock lock(&mu_);
  size_t written = 0;
  while (written < line.size()) {
    const ssize_t n = ::write(fd_, line.data() + written, line.size() - written);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int error = errno;
      return absl::UnavailableError(
          absl::StrCat("cannot write journal ", path_, ": ", ErrnoText(error)));
    }
    written += static_cast<size_t>(n);
  }
  if (sync) TPRD_RETURN_IF_ERROR(SyncLocked());
  for (const JournalEntry& entry : entries) Remember(entry);
  return absl::OkStatus();
}

absl::Status Journal::Sync() {
  absl::MutexLock lock(&mu_);
  return SyncLocked();
}

absl::Status Journal::SyncLocked() {
  if (::fsync(fd_) != 0) {
    const int error = errno;
    return absl::UnavailableError(
        absl::StrCat("cannot fsync journal ", path_, ": ", ErrnoText(error)));
  }
  return absl::OkStatus();
}

std::unique_ptr<engine::PatchRecorder> Journal::RecorderFor(const DomainInfo& domain) {
  return std::make_unique<JournalRecorder>(this, domain);
}

absl::StatusOr<std::vector<JournalEntry>> Journal::ReadAll(const std::string& path,
                                                           std::vector<JournalSkip>* skipped) {
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat("cannot read journal ", path));
  }
  std::vector<JournalEntry> entries;
  std::string line;
  int line_number = 0;
  while (std::getline(in, line)) {
    ++line_number;
    if (line.empty()) continue;
    auto entry = JournalEntryFromJson(line);
    if (!entry.ok()) {
      if (skipped) skipped->push_back({line_number, std::string(entry.status().message())});
      continue;
    }
    entries.push_back(*std::move(entry));
  }
  return entries;
}

}  // namespace tprd::daemon

// Append-only JSON-lines journal of what tprd did to guests (state dir, journal.jsonl), for
// audit and crash recovery. Each entry is one line, written with one write() and fsync'd before
// Append returns, so a site is on disk before the guest write it announces. Never the only
// copy of the truth: the guest's own site table is.
#ifndef TPRD_DAEMON_JOURNAL_JOURNAL_H_
#define TPRD_DAEMON_JOURNAL_JOURNAL_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "daemon/domain/hypervisor.h"
#include "daemon/engine/patch_recorder.h"
#include "daemon/engine/site.h"

namespace tprd::daemon {

struct JournalEntry {
  absl::Time time;
  std::string domain_name;
  std::string domain_uuid;
  // "site" (a site changed state), "lifecycle", "operation" (enable, rollback, detach, ...).
  std::string event;
  std::optional<engine::Site> site;  // "site" entries
  std::string message;
  // Operation entries: the strategy the operator's request amounts to ("enable": the one in
  // force, "rollback" of every site: exact, "detach": the one to restore when tprd adopts the
  // guest again, since a detached guest runs on exact).
  std::optional<engine::Strategy> strategy;
};

// Lines that could not be read back (a line torn by a crash, foreign bytes), with the reason.
struct JournalSkip {
  int line_number = 0;
  std::string reason;
};

class Journal {
 public:
  static constexpr char kFileName[] = "journal.jsonl";

  // Opens (creating, mode 0640) the journal file for appending.
  static absl::StatusOr<std::unique_ptr<Journal>> Open(const std::string& path);
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // Thread-safe. Returns only after the line is fsync'd.
  absl::Status Append(const JournalEntry& entry);
  // Thread-safe. All lines with one write and one fsync (a transaction's or an adopt's records).
  // With `sync` false the fsync is owed (see Sync): the lines are in the file, which a killed
  // tprd does not undo (the kernel keeps them); only a host crash could lose them.
  absl::Status AppendAll(const std::vector<JournalEntry>& entries, bool sync = true);
  // Thread-safe. fsyncs the file (every line written so far, every domain's).
  absl::Status Sync();

  // The strategy of the domain's last entry that names one (see JournalEntry::strategy), from
  // this file's whole history; nullopt when none does. Thread-safe.
  std::optional<engine::Strategy> LastStrategy(const std::string& domain_uuid) const;

  // A PatchRecorder that journals one domain's site changes. Must not outlive the journal.
  std::unique_ptr<engine::PatchRecorder> RecorderFor(const DomainInfo& domain);

  // Reads a journal back. Unreadable lines are skipped and listed in `skipped` (if given).
  static absl::StatusOr<std::vector<JournalEntry>> ReadAll(const std::string& path,
                                                           std::vector<JournalSkip>* skipped);

  const std::string& path() const { return path_; }

 private:
  Journal(std::string path, int fd) : path_(std::move(path)), fd_(fd) {}
  void Remember(const JournalEntry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SyncLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  mutable absl::Mutex mu_;
  int fd_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, engine::Strategy> last_strategy_ ABSL_GUARDED_BY(mu_);
};

// One entry as its JSON line (no newline), and back. Exposed for tests and tools.
std::string JournalEntryToJson(const JournalEntry& entry);
absl::StatusOr<JournalEntry> JournalEntryFromJson(const std::string& line);

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_JOURNAL_JOURNAL_H_

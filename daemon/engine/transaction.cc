#include "daemon/engine/transaction.h"

#include <algorithm>
#include <optional>

#include "absl/strings/str_format.h"
#include "daemon/engine/hex.h"

namespace tprd::engine {
namespace {

constexpr size_t kMaxSiteBytes = 15;  // the longest x86 instruction
// Sites closer than this share one read of the range covering them, up to kMaxSharedRead bytes
// (QEMU's gdbstub answers 2 KiB in one `m` packet here): the round trips of a stop are most of
// its cost (docs/performance.md).
constexpr uint64_t kSharedReadGap = 0x200;
constexpr uint64_t kMaxSharedRead = 0x800;

using Bytes = std::vector<uint8_t>;

bool Equal(absl::Span<const uint8_t> a, absl::Span<const uint8_t> b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin());
}

enum class Direction { kApply, kRollback };

// What one site's write moves between, and the records that describe either end.
struct Transition {
  Bytes before;
  Bytes after;
  SiteState before_state;
  SiteState after_state;
};

class Transaction {
 public:
  Transaction(GuestVm& vm, PatchRecorder& recorder, absl::Span<Site> sites, Direction direction,
              GuestStop stop, int vcpu, bool force, uint32_t handler_start, uint32_t handler_end,
              int max_retries, Clock* clock, std::function<void()> after_stop = nullptr)
      : vm_(vm),
        recorder_(recorder),
        sites_(sites),
        direction_(direction),
        stop_(stop),
        vcpu_(vcpu),
        force_(force),
        handler_start_(handler_start),
        handler_end_(handler_end),
        max_retries_(std::max(max_retries, 0)),
        clock_(clock),
        after_stop_(std::move(after_stop)) {}

  absl::StatusOr<TransactionReport> Run();

 private:
  // Per-site checks that need no guest access. Returns the skip reason, or nullopt.
  // `well_formed[j]` for every j < index: whether that earlier site passed this check.
  std::optional<std::string> Malformed(size_t index, const std::vector<bool>& well_formed) const;
  // Reads every vCPU's EIP. Error: the batch cannot be checked.
  absl::Status ReadEips();
  // Why the site may not be written now (a vCPU inside it or in the handlers), or nullopt.
  std::optional<std::string> Blocked(const Site& site) const;
  // The sites of one pass (none blocked), in three steps so that the records of the whole pass
  // cost two recorder calls (for the journal: two fsyncs), not two per site: every site's
  // transition is decided and its pending state recorded before the first guest write; each is
  // then written and read back; the outcomes are recorded together at the end.
  void ProcessSites(const std::vector<size_t>& indices);
  // Reads the site and decides: nullopt when it needs no write (already there, or skipped; its
  // outcome is set, and a record it needs is added to `records`).
  std::optional<Transition> Decide(size_t index, const absl::StatusOr<Bytes>& current);
  // Whether a site whose pending state is recorded may be written: its bytes (`current`, read
  // again after the pending records) are still the ones it was decided for. When not, the
  // outcome says why and the state to record is in `records_`.
  bool StillAsDecided(size_t index, const Transition& t, const absl::StatusOr<Bytes>& current);
  // After the pass's writes: the written site reads back as `back`, or is recovered.
  void ConfirmWrite(size_t index, const Transition& t, const absl::StatusOr<Bytes>& back);
  // The bytes of each site of `indices` (in that order), with one read for sites close together
  // (kSharedReadGap); a shared read that fails is made again site by site.
  std::vector<absl::StatusOr<Bytes>> ReadSites(const std::vector<size_t>& indices);
  // A record to make at the end of the pass: the site, the state, and what its outcome becomes.
  struct PendingRecord {
    size_t index;
    SiteState state;
    SiteOutcome::Kind kind;  // the outcome once recorded
    std::string reason;      // the outcome's reason once recorded (empty on success)
  };
  // Records `records` (one recorder call; on its failure, one call per site, so that each
  // site's state says what its record says). Sets states and outcomes; aborts on a failure.
  void RecordAll(std::vector<PendingRecord>& records);
  absl::Status Record(Site& site, SiteState state);
  // The write was not cleanly confirmed: find out what the guest holds and make it whole. The
  // state to record goes to `records_`.
  void Recover(size_t index, const Transition& t, const std::string& what);
  void Abort(absl::Status status);
  SiteOutcome& OutcomeOf(size_t index) { return report_.outcomes[index]; }
  absl::StatusOr<Bytes> ReadSite(const Site& site);

  GuestVm& vm_;
  PatchRecorder& recorder_;
  absl::Span<Site> sites_;
  const Direction direction_;
  const GuestStop stop_;
  const int vcpu_;
  const bool force_;
  const uint32_t handler_start_;
  const uint32_t handler_end_;
  const int max_retries_;
  Clock* const clock_;
  const std::function<void()> after_stop_;
  std::vector<std::pair<int, uint32_t>> eips_;  // (vCPU, EIP)
  std::vector<PendingRecord> records_;          // the current pass's records to make at its end
  TransactionReport report_;
};

std::optional<std::string> Transaction::Malformed(size_t index,
                                                  const std::vector<bool>& well_formed) const {
  const Site& site = sites_[index];
  if (site.original.empty() || site.original.size() > kMaxSiteBytes) {
    return absl::StrFormat("site length %d is not 1..%d", site.original.size(), kMaxSiteBytes);
  }
  if (site.patched.size() != site.original.size()) {
    return absl::StrFormat("patched bytes (%d) and original bytes (%d) differ in length",
                           site.patched.size(), site.original.size());
  }
  if (Equal(site.original, site.patched)) return std::string("patched bytes equal the original");
  if (uint64_t{site.address} + site.original.size() > 0x100000000ull) {
    return std::string("site wraps past 4 GiB");
  }
  // Overlap with an earlier well-formed site of the batch: the later one is refused, so no
  // byte is ever written by two sites. (Asking Malformed(j) again here made this 2^n in the
  // batch's size, with the guest stopped.)
  for (size_t j = 0; j < index; ++j) {
    const Site& other = sites_[j];
    if (!well_formed[j]) continue;
    const uint64_t a0 = site.address, a1 = a0 + site.original.size();
    const uint64_t b0 = other.address, b1 = b0 + other.original.size();
    if (a0 < b1 && b0 < a1)
      return absl::StrFormat("overlaps site %d at 0x%x", other.id, other.address);
  }
  return std::nullopt;
}

absl::Status Transaction::ReadEips() {
  eips_.clear();
  absl::StatusOr<int> count = vm_.VcpuCount();
  if (!count.ok()) return count.status();
  for (int v = 0; v < *count; ++v) {
    absl::StatusOr<VcpuRegisters> regs = vm_.ReadRegisters(v);
    if (!regs.ok()) {
      return absl::Status(regs.status().code(), absl::StrFormat("reading vCPU %d registers: %s", v,
                                                                regs.status().message()));
    }
    eips_.push_back({v, regs->eip});
  }
  return absl::OkStatus();
}

std::optional<std::string> Transaction::Blocked(const Site& site) const {
  const uint64_t start = site.address;
  const uint64_t end = start + site.original.size();
  for (const auto& [vcpu, eip] : eips_) {
    // At the first byte the instruction has not started; at `end` it has finished: both safe.
    if (start < eip && eip < end) {
      return absl::StrFormat("vCPU %d is inside the site (EIP 0x%x)", vcpu, eip);
    }
    if (direction_ == Direction::kRollback && handler_start_ < handler_end_ &&
        handler_start_ <= eip && eip < handler_end_) {
      return absl::StrFormat("vCPU %d is inside the handler code (EIP 0x%x)", vcpu, eip);
    }
  }
  return std::nullopt;
}

absl::Status Transaction::Record(Site& site, SiteState state) {
  Site copy = site;
  copy.state = state;
  absl::Status status = recorder_.RecordSite(copy);
  if (status.ok()) site.state = state;
  return status;
}

absl::StatusOr<Bytes> Transaction::ReadSite(const Site& site) {
  Bytes bytes(site.original.size());
  absl::Status status = vm_.ReadVirtual(vcpu_, site.address, absl::MakeSpan(bytes));
  if (!status.ok()) return status;
  return bytes;
}

void Transaction::Abort(absl::Status status) {
  report_.aborted = true;
  report_.abort_status = std::move(status);
}

void Transaction::Recover(size_t index, const Transition& t, const std::string& what) {
  Site& site = sites_[index];
  SiteOutcome& outcome = OutcomeOf(index);
  outcome.kind = SiteOutcome::Kind::kFailed;
  absl::StatusOr<Bytes> now = ReadSite(site);
  if (now.ok() && Equal(*now, t.after)) {
    records_.push_back({index, t.after_state,
                        direction_ == Direction::kApply ? SiteOutcome::Kind::kApplied
                                                        : SiteOutcome::Kind::kRolledBack,
                        ""});
    return;
  }
  std::string reason;
  if (now.ok() && Equal(*now, t.before)) {
    reason = absl::StrFormat("%s; bytes unchanged", what);
  } else {
    // Torn, or unknown because the re-read failed: one write of the old bytes makes the site
    // whole again (every vCPU is stopped, so nothing runs the bytes in between). A successful
    // write is trusted even if the check read fails.
    const std::string found = now.ok()
                                  ? "torn bytes " + HexEncode(*now, " ")
                                  : "re-read failed (" + std::string(now.status().message()) + ")";
    absl::Status restore = vm_.WriteVirtual(vcpu_, site.address, t.before);
    absl::StatusOr<Bytes> check = restore.ok() ? ReadSite(site) : absl::StatusOr<Bytes>(restore);
    if (!restore.ok() || (check.ok() && !Equal(*check, t.before))) {
      outcome.kind = SiteOutcome::Kind::kTorn;
      outcome.reason = absl::StrFormat(
          "%s; %s; restoring the old bytes failed (%s): left pending", what, found,
          restore.ok() ? "read back " + HexEncode(*check, " ") : std::string(restore.message()));
      return;
    }
    reason = absl::StrFormat("%s; %s; old bytes written back", what, found);
  }
  outcome.reason = reason;
  records_.push_back({index, t.before_state, SiteOutcome::Kind::kFailed, reason});
}

std::optional<Transition> Transaction::Decide(size_t index, const absl::StatusOr<Bytes>& current) {
  Site& site = sites_[index];
  SiteOutcome& outcome = OutcomeOf(index);
  if (!current.ok()) {
    outcome.kind = SiteOutcome::Kind::kFailed;
    outcome.reason = absl::StrFormat("reading the site failed: %s", current.status().message());
    return std::nullopt;
  }
  const bool apply = direction_ == Direction::kApply;
  const Bytes& target = apply ? site.patched : site.original;
  const Bytes& expected = apply ? site.original : site.patched;
  const SiteState target_state = apply ? SiteState::kApplied : SiteState::kRolledBack;

  if (Equal(*current, target)) {
    // Idempotent: already there. Record it unless the record already says so (or, for a
    // never-applied site, there is nothing to roll back).
    outcome.kind = apply ? SiteOutcome::Kind::kAlreadyApplied : SiteOutcome::Kind::kAlreadyOriginal;
    const bool record =
        apply ? site.state != SiteState::kApplied
              : (site.state == SiteState::kApplied || site.state == SiteState::kPending);
    if (record) records_.push_back({index, target_state, outcome.kind, ""});
    return std::nullopt;
  }
  Transition t;
  t.after = target;
  t.after_state = target_state;
  if (Equal(*current, expected)) {
    t.before = expected;
    t.before_state = apply ? (site.state == SiteState::kCandidate ? SiteState::kCandidate
                                                                  : SiteState::kRolledBack)
                           : SiteState::kApplied;
  } else if (!apply && force_) {
    t.before = *current;  // the user's call: whatever is there is replaced
    t.before_state = site.state == SiteState::kPending ? SiteState::kApplied : site.state;
  } else {
    outcome.kind = SiteOutcome::Kind::kSkipped;
    outcome.reason = absl::StrFormat("bytes changed since %s: expected %s, found %s",
                                     apply ? "classification" : "patching",
                                     HexEncode(expected, " "), HexEncode(*current, " "));
    return std::nullopt;
  }
  return t;
}

bool Transaction::StillAsDecided(size_t index, const Transition& t,
                                 const absl::StatusOr<Bytes>& current) {
  SiteOutcome& outcome = OutcomeOf(index);
  if (!current.ok() || !Equal(*current, t.before)) {
    outcome.kind = current.ok() ? SiteOutcome::Kind::kSkipped : SiteOutcome::Kind::kFailed;
    outcome.reason =
        current.ok()
            ? absl::StrFormat("bytes changed since %s: expected %s, found %s",
                              direction_ == Direction::kApply ? "classification" : "patching",
                              HexEncode(t.before, " "), HexEncode(*current, " "))
            : absl::StrFormat("reading the site failed: %s", current.status().message());
    records_.push_back({index, t.before_state, outcome.kind, outcome.reason});
    return false;
  }
  return true;
}

void Transaction::ConfirmWrite(size_t index, const Transition& t,
                               const absl::StatusOr<Bytes>& back) {
  if (!back.ok()) {
    Recover(index, t, absl::StrFormat("read-back failed: %s", back.status().message()));
    return;
  }
  if (!Equal(*back, t.after)) {
    Recover(index, t, absl::StrFormat("read back %s", HexEncode(*back, " ")));
    return;
  }
  records_.push_back({index, t.after_state,
                      direction_ == Direction::kApply ? SiteOutcome::Kind::kApplied
                                                      : SiteOutcome::Kind::kRolledBack,
                      ""});
}

std::vector<absl::StatusOr<Bytes>> Transaction::ReadSites(const std::vector<size_t>& indices) {
  std::vector<absl::StatusOr<Bytes>> out(indices.size(), absl::StatusOr<Bytes>(Bytes{}));
  std::vector<size_t> order(indices.size());  // positions in `indices`, by address
  for (size_t k = 0; k < order.size(); ++k) order[k] = k;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return sites_[indices[a]].address < sites_[indices[b]].address;
  });
  for (size_t k = 0; k < order.size();) {
    // One group: sites whose covering range stays within kMaxSharedRead, no gap over
    // kSharedReadGap.
    const uint64_t first = sites_[indices[order[k]]].address;
    uint64_t end = first + sites_[indices[order[k]]].original.size();
    size_t last = k + 1;
    for (; last < order.size(); ++last) {
      const Site& next = sites_[indices[order[last]]];
      const uint64_t next_end = std::max<uint64_t>(end, next.address + next.original.size());
      if (next.address > end + kSharedReadGap || next_end - first > kMaxSharedRead) break;
      end = next_end;
    }
    Bytes range(end - first);
    const bool shared =
        last - k > 1 &&
        vm_.ReadVirtual(vcpu_, static_cast<uint32_t>(first), absl::MakeSpan(range)).ok();
    for (size_t g = k; g < last; ++g) {
      const Site& site = sites_[indices[order[g]]];
      if (shared) {
        const auto from = range.begin() + static_cast<ptrdiff_t>(site.address - first);
        out[order[g]] = Bytes(from, from + static_cast<ptrdiff_t>(site.original.size()));
      } else {
        out[order[g]] = ReadSite(site);
      }
    }
    k = last;
  }
  return out;
}

void Transaction::RecordAll(std::vector<PendingRecord>& records) {
  if (records.empty()) return;
  std::vector<Site> copies;
  copies.reserve(records.size());
  for (const PendingRecord& r : records) {
    copies.push_back(sites_[r.index]);
    copies.back().state = r.state;
  }
  const bool together = recorder_.RecordSites(copies).ok();
  for (const PendingRecord& r : records) {
    Site& site = sites_[r.index];
    SiteOutcome& outcome = OutcomeOf(r.index);
    // After a failed batch some records may have landed and some not: each is made again alone,
    // so that the site's state is what its record says.
    absl::Status s = together ? absl::OkStatus() : Record(site, r.state);
    if (together) site.state = r.state;
    if (s.ok()) {
      outcome.kind = r.kind;
      outcome.reason = r.reason;
      continue;
    }
    outcome.kind = SiteOutcome::Kind::kFailed;
    const bool written =
        r.kind == SiteOutcome::Kind::kApplied || r.kind == SiteOutcome::Kind::kRolledBack;
    outcome.reason = r.reason.empty() ? absl::StrFormat("%srecording %s failed: %s",
                                                        written ? "written, but " : "",
                                                        SiteStateName(r.state), s.message())
                                      : absl::StrFormat("%s; recording %s failed: %s", r.reason,
                                                        SiteStateName(r.state), s.message());
    Abort(s);
  }
}

void Transaction::ProcessSites(const std::vector<size_t>& indices) {
  records_.clear();
  std::vector<std::pair<size_t, Transition>> to_write;
  const std::vector<absl::StatusOr<Bytes>> current = ReadSites(indices);
  for (size_t k = 0; k < indices.size(); ++k) {
    if (std::optional<Transition> t = Decide(indices[k], current[k])) {
      to_write.push_back({indices[k], *std::move(t)});
    }
  }
  // Intent first: every site to write is recorded pending before the first write.
  if (!to_write.empty()) {
    std::vector<Site> copies;
    for (const auto& [i, t] : to_write) {
      copies.push_back(sites_[i]);
      copies.back().state = SiteState::kPending;
    }
    if (absl::Status s = recorder_.RecordSites(copies); !s.ok()) {
      // Nothing is written. Some pending records may have landed: each site's own state is
      // recorded again, so that the records say what the (unchanged) bytes are.
      for (const auto& [i, t] : to_write) {
        SiteOutcome& outcome = OutcomeOf(i);
        outcome.kind = SiteOutcome::Kind::kFailed;
        outcome.reason =
            absl::StrFormat("recording pending failed, nothing written: %s", s.message());
        const SiteState own = sites_[i].state;
        if (absl::Status again = Record(sites_[i], own); !again.ok()) {
          sites_[i].state = SiteState::kPending;  // what a landed record may say
          outcome.reason += absl::StrFormat("; recording %s again failed: %s", SiteStateName(own),
                                            again.message());
        }
      }
      Abort(s);
      RecordAll(records_);  // the idempotent sites' records
      return;
    }
    for (const auto& [i, t] : to_write) sites_[i].state = SiteState::kPending;
  }
  // Each site's bytes are checked again right before the writes (the pending records came in
  // between), then every site is written, then read back.
  std::vector<size_t> indices_to_write;
  for (const auto& [i, t] : to_write) indices_to_write.push_back(i);
  const std::vector<absl::StatusOr<Bytes>> again = ReadSites(indices_to_write);
  std::vector<std::pair<size_t, const Transition*>> checked;
  std::vector<MemoryWrite> writes;
  for (size_t k = 0; k < to_write.size(); ++k) {
    const auto& [i, t] = to_write[k];
    if (!StillAsDecided(i, t, again[k])) continue;
    checked.push_back({i, &t});
    // One write per site: a concurrent resume (libvirt) never sees a half-written instruction.
    writes.push_back({sites_[i].address, t.after});
  }
  // All of them in one exchange (the gdbstub's answers pipelined): one round trip, not one each.
  const absl::StatusOr<std::vector<absl::Status>> results = vm_.WriteVirtualMany(vcpu_, writes);
  std::vector<std::pair<size_t, const Transition*>> written;
  std::vector<size_t> written_indices;
  for (size_t k = 0; k < checked.size(); ++k) {
    const auto& [i, t] = checked[k];
    const absl::Status& write = results.ok() ? (*results)[k] : results.status();
    if (!write.ok()) {
      Recover(i, *t, absl::StrFormat("write failed: %s", write.message()));
      continue;
    }
    written.push_back({i, t});
    written_indices.push_back(i);
  }
  const std::vector<absl::StatusOr<Bytes>> back = ReadSites(written_indices);
  for (size_t k = 0; k < written.size(); ++k)
    ConfirmWrite(written[k].first, *written[k].second, back[k]);
  RecordAll(records_);
}

absl::StatusOr<TransactionReport> Transaction::Run() {
  report_.outcomes.resize(sites_.size());
  for (size_t i = 0; i < sites_.size(); ++i) {
    report_.outcomes[i].site_id = sites_[i].id;
    report_.outcomes[i].address = sites_[i].address;
  }
  const bool own_stop = stop_ == GuestStop::kStopAndResume;
  if (own_stop) {
    if (absl::Status s = vm_.Stop(); !s.ok()) {
      return absl::Status(s.code(), absl::StrFormat("stopping the guest: %s", s.message()));
    }
    ++report_.stop_count;
  }
  bool stopped = true;

  std::vector<size_t> waiting;  // sites still to process, in input order
  std::vector<bool> well_formed(sites_.size(), false);
  for (size_t i = 0; i < sites_.size(); ++i) {
    if (std::optional<std::string> why = Malformed(i, well_formed)) {
      report_.outcomes[i].kind = SiteOutcome::Kind::kSkipped;
      report_.outcomes[i].reason = *why;
    } else {
      well_formed[i] = true;
      waiting.push_back(i);
    }
  }

  for (int attempt = 0; !waiting.empty() && !report_.aborted; ++attempt) {
    if (absl::Status s = ReadEips(); !s.ok()) {
      for (size_t i : waiting) {
        report_.outcomes[i].kind = SiteOutcome::Kind::kSkipped;
        report_.outcomes[i].reason =
            absl::StrFormat("cannot check where the vCPUs are: %s", s.message());
      }
      waiting.clear();
      break;
    }
    std::vector<size_t> blocked;
    std::vector<size_t> ready;
    for (size_t i : waiting) {
      if (report_.aborted) {
        blocked.push_back(i);
        continue;
      }
      if (std::optional<std::string> why = Blocked(sites_[i])) {
        report_.outcomes[i].kind = SiteOutcome::Kind::kSkipped;
        report_.outcomes[i].reason = *why;
        blocked.push_back(i);
        continue;
      }
      ready.push_back(i);
    }
    ProcessSites(ready);
    waiting = std::move(blocked);
    if (waiting.empty() || report_.aborted || !own_stop || attempt >= max_retries_) break;
    // Let the vCPUs run out of the sites and handlers, then look again.
    if (absl::Status s = vm_.Resume(); !s.ok()) {
      for (size_t i : waiting) {
        report_.outcomes[i].reason += absl::StrFormat("; retry impossible: %s", s.message());
      }
      break;
    }
    stopped = false;
    if (clock_ != nullptr) {
      clock_->SleepFor(
          std::min(absl::Milliseconds(1) * (1 << std::min(attempt, 5)), absl::Milliseconds(20)));
    }
    if (absl::Status s = vm_.Stop(); !s.ok()) {
      for (size_t i : waiting) {
        report_.outcomes[i].reason +=
            absl::StrFormat("; stopping to retry failed: %s", s.message());
      }
      break;
    }
    ++report_.stop_count;
    stopped = true;
    if (after_stop_) after_stop_();
  }
  if (report_.aborted) {
    for (size_t i : waiting) {
      report_.outcomes[i].kind = SiteOutcome::Kind::kSkipped;
      report_.outcomes[i].reason =
          absl::StrFormat("batch aborted: %s", report_.abort_status.message());
    }
  }
  for (size_t i = 0; i < sites_.size(); ++i) report_.outcomes[i].state = sites_[i].state;
  if (own_stop && stopped) report_.resume_status = vm_.Resume();
  return std::move(report_);
}

}  // namespace

std::string_view SiteOutcomeKindName(SiteOutcome::Kind kind) {
  switch (kind) {
    case SiteOutcome::Kind::kApplied:
      return "applied";
    case SiteOutcome::Kind::kAlreadyApplied:
      return "already_applied";
    case SiteOutcome::Kind::kRolledBack:
      return "rolled_back";
    case SiteOutcome::Kind::kAlreadyOriginal:
      return "already_original";
    case SiteOutcome::Kind::kSkipped:
      return "skipped";
    case SiteOutcome::Kind::kFailed:
      return "failed";
    case SiteOutcome::Kind::kTorn:
      return "torn";
  }
  return "unknown";
}

int TransactionReport::Count(SiteOutcome::Kind kind) const {
  return static_cast<int>(std::count_if(outcomes.begin(), outcomes.end(),
                                        [kind](const SiteOutcome& o) { return o.kind == kind; }));
}

absl::StatusOr<TransactionReport> ApplySites(GuestVm& vm, PatchRecorder& recorder,
                                             absl::Span<Site> sites, const ApplyOptions& options) {
  Transaction transaction(vm, recorder, sites, Direction::kApply, options.stop, options.vcpu, false,
                          0, 0, 0, nullptr);
  return transaction.Run();
}

absl::StatusOr<TransactionReport> RollbackSites(GuestVm& vm, PatchRecorder& recorder,
                                                absl::Span<Site> sites,
                                                const RollbackOptions& options) {
  Transaction transaction(vm, recorder, sites, Direction::kRollback, options.stop, options.vcpu,
                          options.force, options.handler_code_start, options.handler_code_end,
                          options.max_retries, options.clock, options.after_stop);
  return transaction.Run();
}

absl::StatusOr<std::unique_ptr<StoppedGuestScope>> StoppedGuestScope::Enter(GuestVm& vm) {
  if (absl::Status s = vm.Stop(); !s.ok()) return s;
  return std::unique_ptr<StoppedGuestScope>(new StoppedGuestScope(vm));
}

StoppedGuestScope::~StoppedGuestScope() {
  // A failure here (host paused, domain gone) leaves the guest as the host wants it.
  if (!resumed_) (void)vm_.Resume();
}

absl::Status StoppedGuestScope::Resume() {
  if (resumed_) return absl::OkStatus();
  resumed_ = true;
  return vm_.Resume();
}

}  // namespace tprd::engine

#include "kvm-backend/apic_trace_sampler.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <system_error>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "kvm-backend/core/monitor_parsers.h"

namespace tprd::backend {
namespace {

constexpr char kEvents[] = "apic_mem_*";

uint64_t FileSize(const std::string& path) {
  std::error_code error;
  const uintmax_t size = std::filesystem::file_size(path, error);
  return error ? 0 : static_cast<uint64_t>(size);
}

absl::StatusOr<ApicTraceCount> CountFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  ApicTraceCounter counter;
  std::vector<char> buffer(1 << 20);
  while (in) {
    in.read(buffer.data(), static_cast<std::streamsize>(buffer.size()));
    counter.Feed(std::string_view(buffer.data(), static_cast<size_t>(in.gcount())));
  }
  return counter.Finish();
}

}  // namespace

absl::StatusOr<std::string> ApicTraceSampler::DomainDirectory() {
  absl::StatusOr<LibvirtDomainInfo> domain = connection_->GetDomain(uuid_);
  if (!domain.ok()) return domain.status();
  if (domain->id < 0) return absl::FailedPreconditionError("the domain is not running");
  // libvirt names it domain-ID-SHORTNAME; the ID alone is unique among running domains.
  const std::string prefix = absl::StrCat("domain-", domain->id, "-");
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator(options_.libvirt_qemu_dir, error)) {
    if (absl::StartsWith(entry.path().filename().string(), prefix) && entry.is_directory(error)) {
      return entry.path().string();
    }
  }
  return absl::FailedPreconditionError(
      absl::StrCat("no ", prefix, "* directory in ", options_.libvirt_qemu_dir,
                   error ? absl::StrCat(" (", error.message(), ")") : std::string()));
}

absl::Status ApicTraceSampler::Quiet(const std::string& command) {
  absl::StatusOr<std::string> reply = connection_->HmpCommand(uuid_, command);
  if (!reply.ok()) return reply.status();
  const absl::string_view said = absl::StripAsciiWhitespace(*reply);
  if (!said.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("QEMU, to `", command, "`: ", said));
  }
  return absl::OkStatus();
}

absl::Status ApicTraceSampler::StopTracing() {
  absl::Status off = Quiet(absl::StrCat("trace-event ", kEvents, " off"));
  absl::Status log = Quiet("logfile /dev/null");
  return off.ok() ? log : off;
}

absl::StatusOr<ApicTraceSample> ApicTraceSampler::Sample(absl::Duration window) {
  absl::StatusOr<std::string> directory = DomainDirectory();
  if (!directory.ok()) return directory.status();
  const std::string path = absl::StrCat(*directory, "/", kApicTraceFileName);
  // A sample a killed tprd left running would otherwise look like someone else's trace.
  if (absl::Status s = CleanUpLeftover(); !s.ok()) return s;

  absl::StatusOr<std::string> listing =
      connection_->HmpCommand(uuid_, absl::StrCat("info trace-events ", kEvents));
  if (!listing.ok()) return listing.status();
  absl::StatusOr<std::vector<TraceEventState>> events = ParseTraceEventStates(*listing);
  if (!events.ok()) return events.status();
  bool has_read = false, has_write = false;
  for (const TraceEventState& e : *events) {
    if (e.enabled) {
      return absl::FailedPreconditionError(
          absl::StrCat("QEMU's trace event ", e.name,
                       " is already on (someone else traces the APIC); tprd leaves it alone"));
    }
    has_read |= e.name == "apic_mem_readl";
    has_write |= e.name == "apic_mem_writel";
  }
  if (!has_read || !has_write) {
    return absl::UnimplementedError("QEMU has no apic_mem_readl/apic_mem_writel trace events");
  }

  std::error_code ignored;
  std::filesystem::remove(path, ignored);
  // QEMU creates the file as its own user; a denial (DAC, AppArmor) is QEMU's message.
  if (absl::Status s = Quiet(absl::StrCat("logfile ", path)); !s.ok()) {
    (void)Quiet("logfile /dev/null");  // a failed open leaves QEMU's log nowhere: say where
    return s;
  }
  // The file is the marker of a trace that may still run: removed only once QEMU's log is off
  // it (a removed file QEMU still writes would grow unseen until the domain stops).
  bool stopped = false;
  bool stopped_ok = false;
  absl::Cleanup always_stop = [&] {
    if (!stopped) stopped_ok = StopTracing().ok();
    if (stopped_ok) std::filesystem::remove(path, ignored);
  };

  const absl::Time on_sent = clock_->Now();
  if (absl::Status s = Quiet(absl::StrCat("trace-event ", kEvents, " on")); !s.ok()) return s;
  const absl::Time on_done = clock_->Now();
  const absl::Time end = on_done + window;
  for (absl::Time now = on_done; now < end; now = clock_->Now()) {
    clock_->SleepFor(std::min(options_.poll, end - now));
    if (FileSize(path) >= options_.max_bytes) break;
  }
  const absl::Time off_sent = clock_->Now();
  stopped = true;
  const absl::Status stop_status = StopTracing();
  stopped_ok = stop_status.ok();
  const absl::Time off_done = clock_->Now();
  if (!stop_status.ok()) return stop_status;  // the file stays: the next look stops the trace

  absl::StatusOr<ApicTraceCount> count = CountFile(path);
  if (!count.ok()) return count.status();
  if (count->tpr_reads + count->tpr_writes + count->other == 0) {
    return absl::NotFoundError(
        "QEMU wrote no APIC trace line: no APIC access in the window, or its trace backend is "
        "not `log`");
  }
  ApicTraceSample sample;
  sample.count = *count;
  sample.window = (off_sent - on_sent + off_done - on_done) / 2;
  std::error_code removed;
  std::filesystem::remove(path, removed);
  if (removed)
    sample.leftover_file_error = absl::StrCat("cannot remove ", path, ": ", removed.message());
  return sample;
}

absl::Status ApicTraceSampler::CleanUpLeftover() {
  absl::StatusOr<std::string> directory = DomainDirectory();
  if (!directory.ok()) return absl::OkStatus();  // nothing of ours can be there
  const std::string path = absl::StrCat(*directory, "/", kApicTraceFileName);
  std::error_code error;
  if (!std::filesystem::exists(path, error)) return absl::OkStatus();
  absl::Status stopped = StopTracing();
  if (stopped.ok()) std::filesystem::remove(path, error);  // else the marker stays for next time
  return stopped;
}

}  // namespace tprd::backend

// Shared pieces of the end-to-end tests: a real tprd process on its own socket and state
// directory, the real tprctl, and checks on the test guest's serial output.
#ifndef TPRD_TESTS_E2E_E2E_SUPPORT_H_
#define TPRD_TESTS_E2E_E2E_SUPPORT_H_

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "daemon/engine/blob.h"
#include "tests/support/libvirt_test_env.h"
#include "tests/support/subprocess.h"

namespace tprd::testing {

// Polls `done` every `period` until it holds or `timeout` passes; false on timeout. For the
// state of another process (tprd, libvirt, QEMU): there is no event to wait on.
template <typename Predicate>
bool PollUntil(absl::Duration timeout, Predicate done,
               absl::Duration period = absl::Milliseconds(200)) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    if (done()) return true;
    if (absl::Now() > deadline) return false;
    absl::SleepFor(period);
  }
}

// Boots the test guest (2 vCPUs unless said; transient unless `persistent`) and waits for its
// first checks on every CPU. nullptr, with a test failure, when it does not come up.
std::unique_ptr<TestDomain> BootTestGuest(const std::string& cmdline, bool reboot_restarts,
                                          int vcpus = 2, bool persistent = false);

// `virsh -c qemu:///system ARGS...`
RunResult Virsh(const std::vector<std::string>& args);

// TPRD_TEST_DISCOVERY: the discovery policy forced on every tprd a test starts without choosing
// one ("" when not forced). Under "watchpoint", WaitForApplied also runs
// ExpectUnprovenBytesUnchanged.
std::string ForcedDiscovery();

// Keeps the domain's serial log with tprd's (TprdProcess) when the test failed or
// TPRD_E2E_KEEP_LOGS is set. Declare it after the domain, so that it runs first.
class KeepSerialLog {
 public:
  explicit KeepSerialLog(const TestDomain& domain) : domain_(domain) {}
  ~KeepSerialLog();
  KeepSerialLog(const KeepSerialLog&) = delete;
  KeepSerialLog& operator=(const KeepSerialLog&) = delete;

 private:
  const TestDomain& domain_;
};

class TprdProcess {
 public:
  // `config`: tprd.conf lines (e.g. "proving_window_s = 5\n"); never /etc/tprd's.
  explicit TprdProcess(std::string dir, std::string config = "")
      : dir_(std::move(dir)), config_(std::move(config)) {}
  ~TprdProcess();  // SIGKILL if still running, removes the directory
  TprdProcess(const TprdProcess&) = delete;
  TprdProcess& operator=(const TprdProcess&) = delete;

  std::string socket() const { return dir_ + "/tprd.sock"; }
  std::string log_path() const { return dir_ + "/tprd.log"; }

  // Starts tprd and waits (bounded) until tprctl reaches it. Fatal failures on error.
  void Start();
  // SIGTERM; returns tprd's exit code (-1 if it did not exit within 90 s).
  int Terminate();
  // SIGKILL, reaped: no chance to leave any guest tidy.
  void Kill();
  // The last lines of tprd's log, for failure messages.
  std::string LogTail(size_t lines = 30) const;

  RunResult Ctl(std::vector<std::string> args);

  pid_t pid() const { return pid_; }
  // The journal tprd keeps in its state directory.
  std::string journal_path() const { return dir_ + "/state/journal.jsonl"; }

 private:
  std::string dir_;
  std::string config_;
  pid_t pid_ = -1;
};

// The tprd and tprctl binaries of this build.
const char* TprdPath();
const char* TprctlPath();

// A fresh state directory for one TprdProcess (mkdtemp under /tmp, root-only).
std::string MakeTprdDir();

// Test-guest site name -> address, from the build's site table.
std::map<std::string, uint32_t> SitesByName();

// The hot sites: patchable TPR accesses the test guest runs continuously.
const std::vector<std::string>& HotSites();
// Sites tprd must never patch: unpatchable forms (run rarely) and decoys in data (never run).
const std::vector<std::string>& NeverPatchedSites();

// address -> state, from `tprctl --json sites DOMAIN`; empty when the call fails.
std::map<uint32_t, std::string> SiteStates(TprdProcess& tprd, const std::string& domain);

// Polls `tprctl sites` (bounded by `timeout`) until every named site is "applied".
// Returns the last states seen; fatal failure on timeout.
std::map<uint32_t, std::string> WaitForApplied(TprdProcess& tprd, const std::string& domain,
                                               const std::vector<std::string>& names,
                                               absl::Duration timeout, const char* when);

// A string field of `tprctl --json status DOMAIN` ("" when the call fails or it is absent).
std::string StatusField(TprdProcess& tprd, const std::string& domain, const std::string& key);

// Polls `tprctl --json status` (bounded) until the domain is patched and its proving window is
// closed: from then on no breakpoint is left on the guest's code pages but the writers' (under
// TCG a breakpoint makes every block on its page run one instruction at a time). A poll of
// another process's state: there is no event to wait on.
bool WaitForProvingWindowEnd(TprdProcess& tprd, const std::string& domain, absl::Duration timeout);

// Polls `tprctl --json status DOMAIN` until its "state" is `state` (bounded).
void WaitForState(TprdProcess& tprd, const std::string& domain, const std::string& state,
                  absl::Duration timeout, const char* when);

// Waits for `rounds` STAT lines per CPU after serial line `from`, all with fail=0, and no FAIL
// line anywhere in the log. On a stall the failure says the domain's run state (libvirt's and
// QEMU's), the vCPUs' registers and, given `tprd`, its log's tail.
void ExpectGuestPasses(TestDomain& domain, size_t from, const char* when, int vcpus = 2,
                       int rounds = 2, const TprdProcess* tprd = nullptr);

// Median tpr_read / tpr_write of `count` BENCH lines after serial line `from`.
struct BenchMedians {
  double tpr_read = 0;
  double tpr_write = 0;
  double mem_read = 0;
};
BenchMedians WaitForBench(TestDomain& domain, size_t from, int count, const char* when);

// Guest code bytes [first, first+size), read through a short gdbstub session of our own.
std::vector<uint8_t> ReadCode(const std::string& uuid, uint32_t first, uint32_t size);

// Writes `bytes` at guest virtual `va` and reads them back, through a short gdbstub session of
// our own (tprd must not hold the gdbstub). Stands in for guest code changed behind tprd.
void WriteCode(const std::string& uuid, uint32_t va, const std::vector<uint8_t>& bytes);

// What the guest holds, read in one short gdbstub session of our own (tprd must not hold it):
// code bytes and tprd's blob, if any, as tprd's own parser sees it.
struct GuestSnapshot {
  std::vector<uint8_t> code;               // [first, first + size)
  std::optional<engine::ParsedBlob> blob;  // the first valid blob in the legacy window
  std::string blob_error;                  // why a blob that was found is not valid
};
GuestSnapshot SnapshotGuest(const std::string& uuid, uint32_t first, uint32_t size);

// One row of `tprctl --json sites DOMAIN`.
struct SiteRow {
  uint32_t id = 0;
  uint32_t address = 0;
  std::string state;
  std::vector<uint8_t> original, patched;
};
// Fatal-free: an empty list (and a test failure) when the call fails.
std::vector<SiteRow> ListSites(TprdProcess& tprd, const std::string& domain);

// The test guest's code pages: from the first site's page to the end of the decoy table's.
struct CodeRange {
  uint32_t first = 0, size = 0;
};
CodeRange TestGuestCodeRange();

// The values an HMP memory dump (`x`, `xp`) of the domain prints, in order ("80100000: 0xa1 0x80
// ..." lines); nullopt when the monitor refused or printed anything else.
std::optional<std::vector<uint32_t>> MonitorDump(const std::string& domain,
                                                 const std::string& command);

// discovery = watchpoint (docs/design.md "Discovery on KVM hosts"): tprctl status reports the
// policy and no breakpoint ever set on a candidate, and the bytes of every site tprd has not
// applied read, through QEMU's monitor (`x`: the debugger's view of guest memory, where a
// breakpoint under KVM shows as int3), as the scan found them. Run it at random moments while
// the guest runs patched. Returns how many candidate bytes it compared.
size_t ExpectUnprovenBytesUnchanged(TprdProcess& tprd, const std::string& domain,
                                    const std::string& when);

// libvirt's state of the domain ("running", "paused", ...), from `virsh domstate`.
std::string DomainRunState(const std::string& name);
// "paused (user)", "running (unpaused)": for failure messages.
std::string DomainRunStateAndReason(const std::string& name);

}  // namespace tprd::testing

#endif  // TPRD_TESTS_E2E_E2E_SUPPORT_H_

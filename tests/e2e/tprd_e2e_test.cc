// tprd end to end: a real tprd process on its own socket and state directory, driven by the
// real tprctl, patching the test guest in a transient libvirt domain.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "kvm-backend/libvirt_connection.h"
#include "kvm-backend/qemu_guest_vm.h"
#include "nlohmann/json.hpp"
#include "tests/support/libvirt_test_env.h"
#include "tests/support/qemu_process.h"

extern char** environ;

namespace tprd::testing {
namespace {

struct Result {
  int exit_code = -1;
  std::string out;
};

// Runs argv to completion (bounded by its own --timeout), capturing stdout.
Result Run(const std::vector<std::string>& args) {
  std::string path = absl::StrCat(::testing::TempDir(), "/e2e-out-", getpid());
  std::vector<char*> argv;
  for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, 1, path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  pid_t pid;
  Result result;
  if (posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), environ) != 0) return result;
  posix_spawn_file_actions_destroy(&actions);
  int status = 0;
  waitpid(pid, &status, 0);
  result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  FILE* f = fopen(path.c_str(), "r");
  if (f != nullptr) {
    char buffer[4096];
    size_t n;
    while ((n = fread(buffer, 1, sizeof buffer, f)) > 0) result.out.append(buffer, n);
    fclose(f);
  }
  unlink(path.c_str());
  return result;
}

class TprdProcess {
 public:
  explicit TprdProcess(std::string dir) : dir_(std::move(dir)) {}
  ~TprdProcess() {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
  std::string socket() const { return dir_ + "/tprd.sock"; }

  // Starts tprd and waits (bounded) until tprctl reaches it.
  void Start() {
    std::vector<std::string> args = {TPRD_PATH, "--socket", socket(), "--state-dir",
                                     dir_ + "/state"};
    std::vector<char*> argv;
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    const std::string log = dir_ + "/tprd.log";
    posix_spawn_file_actions_addopen(&actions, 2, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
    ASSERT_EQ(posix_spawn(&pid_, argv[0], &actions, nullptr, argv.data(), environ), 0);
    posix_spawn_file_actions_destroy(&actions);
    const absl::Time deadline = absl::Now() + absl::Seconds(60);
    while (Ctl({"domains"}).exit_code != 0) {
      ASSERT_LT(absl::Now(), deadline) << "tprd did not answer within 60 s";
      int status;
      ASSERT_EQ(waitpid(pid_, &status, WNOHANG), 0) << "tprd exited";
      absl::SleepFor(absl::Milliseconds(100));  // polling a readiness probe, bounded above
    }
  }

  // SIGTERM; returns tprd's exit code (-1 if it did not exit within 90 s).
  int Terminate() {
    kill(pid_, SIGTERM);
    const absl::Time deadline = absl::Now() + absl::Seconds(90);
    int status = 0;
    while (waitpid(pid_, &status, WNOHANG) == 0) {
      if (absl::Now() > deadline) return -1;
      absl::SleepFor(absl::Milliseconds(100));
    }
    pid_ = -1;
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  Result Ctl(std::vector<std::string> args) {
    std::vector<std::string> full = {TPRCTL_PATH, "--socket", socket(), "--timeout", "120"};
    full.insert(full.end(), args.begin(), args.end());
    return Run(full);
  }

 private:
  std::string dir_;
  pid_t pid_ = -1;
};

std::map<std::string, uint32_t> SitesByName() {
  std::map<std::string, uint32_t> out;
  absl::StatusOr<std::vector<GuestSiteSymbol>> sites = ReadGuestSites(TestGuestSites());
  EXPECT_TRUE(sites.ok()) << sites.status();
  if (sites.ok()) {
    for (const GuestSiteSymbol& s : *sites) out[s.name] = s.address;
  }
  return out;
}

// address ("0x%08x") -> state, from `tprctl --json sites`.
std::map<uint32_t, std::string> SiteStates(TprdProcess& tprd, const std::string& domain) {
  std::map<uint32_t, std::string> states;
  Result r = tprd.Ctl({"--json", "sites", domain});
  if (r.exit_code != 0) return states;
  nlohmann::json doc = nlohmann::json::parse(r.out, nullptr, false);
  if (doc.is_discarded() || !doc.contains("sites")) return states;
  for (const auto& site : doc["sites"]) {
    states[std::stoul(site["address"].get<std::string>(), nullptr, 16)] =
        site["state"].get<std::string>();
  }
  return states;
}

// Waits for two STAT lines per CPU after line `from`, all with fail=0.
void ExpectGuestPasses(TestDomain& domain, size_t from, const char* when) {
  for (int cpu = 0; cpu < 2; ++cpu) {
    size_t index = from;
    for (int n = 0; n < 2; ++n) {
      absl::StatusOr<std::string> stat = domain.WaitForPrefix(absl::StrCat("STAT cpu=", cpu, " "),
                                                              absl::Seconds(60), index, &index);
      ASSERT_TRUE(stat.ok()) << when << ": " << stat.status();
      EXPECT_EQ(ParseSerialFields(*stat)["fail"], "0") << when << ": " << *stat;
      ++index;
    }
  }
  for (const std::string& line : domain.Lines()) {
    EXPECT_NE(line.rfind("FAIL ", 0), 0u) << when << ": " << line;
  }
}

std::vector<uint8_t> ReadCode(const std::string& uuid, uint32_t first, uint32_t size) {
  std::vector<uint8_t> bytes(size);
  absl::StatusOr<std::unique_ptr<backend::LibvirtConnection>> conn = backend::ConnectToLibvirt({});
  EXPECT_TRUE(conn.ok());
  if (!conn.ok()) return bytes;
  absl::StatusOr<std::unique_ptr<backend::QemuGuestVm>> vm =
      backend::QemuGuestVm::Attach(conn->get(), uuid);
  EXPECT_TRUE(vm.ok()) << vm.status();
  if (!vm.ok()) return bytes;
  EXPECT_TRUE((*vm)->Stop().ok());
  EXPECT_TRUE((*vm)->ReadVirtual(0, first, absl::MakeSpan(bytes)).ok());
  EXPECT_TRUE((*vm)->Detach().ok());
  return bytes;
}

TEST(TprdEndToEnd, EnableSurviveSigtermAdoptAndRollBackByteExact) {
  TestDomainOptions options;
  options.kernel = TestGuestElf();
  options.vcpus = 2;
  absl::StatusOr<std::unique_ptr<TestDomain>> created = TestDomain::Create(options);
  ASSERT_TRUE(created.ok()) << created.status();
  TestDomain& domain = **created;
  ASSERT_TRUE(domain.WaitForPrefix("STAT cpu=1 ", absl::Seconds(120)).ok());
  std::map<std::string, uint32_t> sites = SitesByName();
  const uint32_t text_first = sites["rd_a1_eax"] & ~0xFFFu;
  const uint32_t text_size = ((sites["decoy_ff6"] + 0x1000) & ~0xFFFu) - text_first;
  const std::vector<uint8_t> before = ReadCode(domain.uuid(), text_first, text_size);

  char dir_template[] = "/tmp/tprd-e2e-XXXXXX";
  ASSERT_NE(mkdtemp(dir_template), nullptr);
  TprdProcess tprd(dir_template);
  tprd.Start();
  if (HasFatalFailure()) return;

  EXPECT_EQ(tprd.Ctl({"enable", "no-such-domain-e2e"}).exit_code, 3);
  Result enabled = tprd.Ctl({"enable", domain.name(), "--strategy", "mmio"});
  ASSERT_EQ(enabled.exit_code, 0) << enabled.out;

  const std::vector<std::string> hot = {"rd_a1_eax", "rd_8b_edi", "rd_ff6_push",   "wr_a3_eax",
                                        "wr_89_ebp", "wr_c7_51",  "hal_raise_read"};
  const absl::Time deadline = absl::Now() + absl::Seconds(90);
  std::map<uint32_t, std::string> states;
  for (;;) {
    states = SiteStates(tprd, domain.name());
    bool all = true;
    for (const std::string& name : hot) all &= states[sites[name]] == "applied";
    if (all) break;
    ASSERT_LT(absl::Now(), deadline) << "hot sites not all applied within 90 s";
    absl::SleepFor(absl::Milliseconds(200));  // polling tprd's state, bounded above
  }
  for (const char* name : {"np_regrel_read", "np_cmp_imm", "np_3ea1", "decoy_a1", "decoy_c7"}) {
    EXPECT_NE(states[sites[name]], "applied") << name;
  }
  ExpectGuestPasses(domain, domain.Lines().size(), "patched");

  // SIGTERM: tprd leaves the guest correct on exact and exits 0; the guest runs on.
  ASSERT_EQ(tprd.Terminate(), 0);
  ExpectGuestPasses(domain, domain.Lines().size(), "after SIGTERM");

  // A new tprd adopts the patched guest: the same sites, still applied.
  tprd.Start();
  if (HasFatalFailure()) return;
  // Adoption runs in the background once tprd serves: wait for it, bounded.
  const absl::Time adopt_deadline = absl::Now() + absl::Seconds(60);
  std::map<uint32_t, std::string> adopted;
  for (;;) {
    adopted = SiteStates(tprd, domain.name());
    bool all = true;
    for (const std::string& name : hot) all &= adopted[sites[name]] == "applied";
    if (all || absl::Now() > adopt_deadline) break;
    absl::SleepFor(absl::Milliseconds(200));  // polling tprd's state, bounded above
  }
  for (const std::string& name : hot) EXPECT_EQ(adopted[sites[name]], "applied") << name;
  ExpectGuestPasses(domain, domain.Lines().size(), "adopted");

  Result rolled = tprd.Ctl({"rollback", domain.name()});
  EXPECT_EQ(rolled.exit_code, 0) << rolled.out;
  ASSERT_EQ(tprd.Terminate(), 0);
  EXPECT_EQ(ReadCode(domain.uuid(), text_first, text_size), before)
      << "rollback restores the code byte for byte";
  ExpectGuestPasses(domain, domain.Lines().size(), "rolled back");
}

}  // namespace
}  // namespace tprd::testing

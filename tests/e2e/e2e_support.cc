#include "tests/e2e/e2e_support.h"

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <mutex>
#include <string_view>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "daemon/engine/guest_site_table.h"
#include "daemon/engine/placement.h"
#include "gtest/gtest.h"
#include "kvm-backend/libvirt_connection.h"
#include "kvm-backend/qemu_guest_vm.h"
#include "nlohmann/json.hpp"
#include "tests/support/qemu_process.h"

namespace tprd::testing {
std::unique_ptr<TestDomain> BootTestGuest(const std::string& cmdline, bool reboot_restarts,
                                          int vcpus, bool persistent) {
  TestDomainOptions options;
  options.persistent = persistent;
  options.reboot_restarts = reboot_restarts;
  options.kernel = TestGuestElf();
  options.vcpus = vcpus;
  options.cmdline = cmdline;
  absl::StatusOr<std::unique_ptr<TestDomain>> created = TestDomain::Create(options);
  EXPECT_TRUE(created.ok()) << created.status();
  if (!created.ok()) return nullptr;
  absl::StatusOr<std::string> stat =
      (*created)->WaitForPrefix(absl::StrCat("STAT cpu=", vcpus - 1, " "), absl::Seconds(120));
  EXPECT_TRUE(stat.ok()) << stat.status();
  if (!stat.ok()) return nullptr;
  return *std::move(created);
}

RunResult Virsh(const std::vector<std::string>& args) {
  std::vector<std::string> full = {"/usr/bin/virsh", "-c", "qemu:///system"};
  full.insert(full.end(), args.begin(), args.end());
  return Run(full);
}

namespace {

// Where a test's logs are kept: when it failed, or always with TPRD_E2E_KEEP_LOGS set (soaks).
// Empty when they are not kept.
std::string KeptLogDir() {
  if (!::testing::Test::HasFailure() && std::getenv("TPRD_E2E_KEEP_LOGS") == nullptr) return "";
  const ::testing::TestInfo* test = ::testing::UnitTest::GetInstance()->current_test_info();
  std::string test_name = test != nullptr ? absl::StrCat(test->test_suite_name(), ".", test->name())
                                          : std::string("unknown");
  std::replace(test_name.begin(), test_name.end(), '/', '_');  // parameterized names
  const std::string kept = absl::StrCat("/tmp/tprd-e2e-logs/", getpid(), "-", test_name);
  std::error_code error;
  std::filesystem::create_directories(kept, error);
  return error ? "" : kept;
}

void KeepFile(const std::string& from, const std::string& name, const char* what) {
  const std::string kept = KeptLogDir();
  if (kept.empty()) return;
  std::error_code error;
  std::filesystem::copy_file(from, kept + "/" + name,
                             std::filesystem::copy_options::overwrite_existing, error);
  if (!error) std::cerr << what << " kept in " << kept << "/" << name << "\n";
}

}  // namespace

TprdProcess::~TprdProcess() {
  Kill();
  // The failure message holds only the log's tail.
  if (!dir_.empty()) KeepFile(log_path(), "tprd.log", "tprd's log");
  std::error_code ignored;
  std::filesystem::remove_all(dir_, ignored);
}

KeepSerialLog::~KeepSerialLog() {
  KeepFile(domain_.serial_path(), absl::StrCat("serial-", domain_.name(), ".log"),
           "the guest's serial log");
}

namespace {

// A test process killed by ctest's timeout leaves its tprd running (no destructor ran). Each
// test process kills the tprds of dead ones, found by their --adopt-domains tprd-it-<pid>-*,
// before it starts its own.
void KillTprdsOfDeadTestProcesses() {
  std::error_code error;
  for (const auto& entry : std::filesystem::directory_iterator("/proc", error)) {
    pid_t tprd = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &tprd)) continue;
    std::vector<std::string> argv = absl::StrSplit(ReadFile(entry.path() / "cmdline"), '\0');
    if (argv.empty() || argv[0] != TPRD_PATH) continue;
    for (size_t i = 0; i + 1 < argv.size(); ++i) {
      absl::string_view pattern = argv[i + 1];
      pid_t owner = 0;
      if (argv[i] == "--adopt-domains" && absl::ConsumePrefix(&pattern, "tprd-it-") &&
          absl::ConsumeSuffix(&pattern, "-*") && absl::SimpleAtoi(pattern, &owner) && owner > 0 &&
          ::kill(owner, 0) != 0 && errno == ESRCH) {
        std::cerr << "e2e: killing tprd " << tprd << ", left by dead test process " << owner
                  << "\n";
        ::kill(tprd, SIGKILL);
      }
    }
  }
}

}  // namespace

std::string ForcedDiscovery() {
  const char* discovery = std::getenv("TPRD_TEST_DISCOVERY");
  return discovery == nullptr ? "" : discovery;
}

void TprdProcess::Start() {
  static std::once_flag reaped;
  std::call_once(reaped, KillTprdsOfDeadTestProcesses);
  // Its own settings (never /etc/tprd's), and only this test process's domains: a tprd adopts
  // every domain holding a blob, and other tests, the demo or a bench may run theirs here.
  const std::string config = dir_ + "/tprd.conf";
  {
    std::ofstream out(config);
    out << config_;
    // TPRD_TEST_DISCOVERY forces a discovery policy on tests that do not choose one themselves:
    // ctest runs the reliability tests a second time under `watchpoint`, the policy KVM hosts get.
    if (!ForcedDiscovery().empty() && config_.find("discovery") == std::string::npos) {
      out << "\ndiscovery = " << ForcedDiscovery() << "\n";
    }
  }
  const std::vector<std::string> args = {
      TPRD_PATH,     "--socket",        socket(),
      "--state-dir", dir_ + "/state",   "--config",
      config,        "--adopt-domains", absl::StrCat("tprd-it-", getpid(), "-*")};
  // Ready means served and done adopting: tprd says READY=1 (sd_notify) only after its start-up
  // adopt, so a test sees the adopted state, not the moment before it.
  const std::string notify_path = dir_ + "/notify.sock";
  ::unlink(notify_path.c_str());
  const int notify = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  ASSERT_GE(notify, 0) << std::strerror(errno);
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  ASSERT_LT(notify_path.size(), sizeof(address.sun_path));
  std::memcpy(address.sun_path, notify_path.c_str(), notify_path.size());
  ASSERT_EQ(::bind(notify, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0)
      << notify_path << ": " << std::strerror(errno);
  ::setenv("NOTIFY_SOCKET", notify_path.c_str(), 1);
  pid_ = Spawn(args, log_path(), log_path());
  ::unsetenv("NOTIFY_SOCKET");
  if (pid_ <= 0) ::close(notify);
  ASSERT_GT(pid_, 0) << "cannot start " << TPRD_PATH;
  bool exited = false, ready = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(150);  // adopt is bounded at 2 min
  while (!ready && !exited && absl::Now() < deadline) {
    pollfd waiting{notify, POLLIN, 0};
    if (::poll(&waiting, 1, 200) > 0) {
      char message[512];
      const ssize_t n = ::recv(notify, message, sizeof(message) - 1, 0);
      if (n > 0)
        ready = std::string_view(message, static_cast<size_t>(n)).find("READY=1") !=
                std::string_view::npos;
    }
    int status;
    if (!ready && waitpid(pid_, &status, WNOHANG) != 0) exited = true;
  }
  ::close(notify);
  ::unlink(notify_path.c_str());
  if (exited) pid_ = -1;
  ASSERT_FALSE(exited) << "tprd exited during start-up:\n" << LogTail();
  ASSERT_TRUE(ready) << "tprd did not report READY=1 within 150 s:\n" << LogTail();
}

int TprdProcess::Terminate() {
  if (pid_ <= 0) return -1;
  kill(pid_, SIGTERM);
  int status = 0;
  const bool exited = PollUntil(absl::Seconds(90), [&] { return waitpid(pid_, &status, WNOHANG); });
  if (!exited) return -1;
  pid_ = -1;
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

void TprdProcess::Kill() {
  if (pid_ <= 0) return;
  kill(pid_, SIGKILL);
  waitpid(pid_, nullptr, 0);
  pid_ = -1;
}

std::string TprdProcess::LogTail(size_t lines) const {
  std::vector<std::string> all = absl::StrSplit(ReadFile(log_path()), '\n');
  const size_t first = all.size() > lines ? all.size() - lines : 0;
  std::string out;
  for (size_t i = first; i < all.size(); ++i) absl::StrAppend(&out, all[i], "\n");
  return out;
}

RunResult TprdProcess::Ctl(std::vector<std::string> args) {
  std::vector<std::string> full = {TPRCTL_PATH, "--socket", socket(), "--timeout", "120"};
  full.insert(full.end(), args.begin(), args.end());
  return Run(full);
}

const char* TprdPath() { return TPRD_PATH; }
const char* TprctlPath() { return TPRCTL_PATH; }

std::string MakeTprdDir() {
  char dir_template[] = "/tmp/tprd-e2e-XXXXXX";
  if (mkdtemp(dir_template) == nullptr) return "/tmp/tprd-e2e-fallback";
  return dir_template;
}

std::map<std::string, uint32_t> SitesByName() {
  std::map<std::string, uint32_t> out;
  absl::StatusOr<std::vector<GuestSiteSymbol>> sites = ReadGuestSites(TestGuestSites());
  EXPECT_TRUE(sites.ok()) << sites.status();
  if (sites.ok()) {
    for (const GuestSiteSymbol& s : *sites) out[s.name] = s.address;
  }
  return out;
}

const std::vector<std::string>& HotSites() {
  static const std::vector<std::string> hot = {"rd_a1_eax",      "rd_8b_edi",  "rd_ff6_push",
                                               "wr_a3_eax",      "wr_89_ebp",  "wr_c7_51",
                                               "hal_raise_read", "wr_and_zero"};
  return hot;
}

const std::vector<std::string>& NeverPatchedSites() {
  static const std::vector<std::string> never = {"np_regrel_read", "np_cmp_imm", "np_3ea1",
                                                 "np_es_8b_edx",   "decoy_a1",   "decoy_c7",
                                                 "decoy_and0"};
  return never;
}

std::map<uint32_t, std::string> SiteStates(TprdProcess& tprd, const std::string& domain) {
  std::map<uint32_t, std::string> states;
  RunResult r = tprd.Ctl({"--json", "sites", domain});
  if (r.exit_code != 0) return states;
  nlohmann::json doc = nlohmann::json::parse(r.out, nullptr, false);
  if (doc.is_discarded() || !doc.contains("sites")) return states;
  for (const auto& site : doc["sites"]) {
    states[std::stoul(site["address"].get<std::string>(), nullptr, 16)] =
        site["state"].get<std::string>();
  }
  return states;
}

std::map<uint32_t, std::string> WaitForApplied(TprdProcess& tprd, const std::string& domain,
                                               const std::vector<std::string>& names,
                                               absl::Duration timeout, const char* when) {
  const std::map<std::string, uint32_t> sites = SitesByName();
  std::map<uint32_t, std::string> states;
  const bool all = PollUntil(timeout, [&] {
    states = SiteStates(tprd, domain);
    return std::all_of(names.begin(), names.end(),
                       [&](const std::string& n) { return states[sites.at(n)] == "applied"; });
  });
  if (!all) {
    std::string missing;
    for (const std::string& n : names) {
      if (states[sites.at(n)] != "applied")
        absl::StrAppend(&missing, " ", n, "=", states[sites.at(n)]);
    }
    ADD_FAILURE() << when << ": not applied within " << timeout << ":" << missing << "\n"
                  << tprd.LogTail();
  } else if (ForcedDiscovery() == "watchpoint") {
    // The run under the KVM policy: every applied wait is also a moment to check that no
    // unproven candidate's bytes changed.
    ExpectUnprovenBytesUnchanged(tprd, domain, when);
  }
  return states;
}

std::string StatusField(TprdProcess& tprd, const std::string& domain, const std::string& key) {
  RunResult r = tprd.Ctl({"--json", "status", domain});
  nlohmann::json doc = nlohmann::json::parse(r.out, nullptr, false);
  if (r.exit_code != 0 || doc.is_discarded() || !doc[key].is_string()) return "";
  return doc[key].get<std::string>();
}

bool WaitForProvingWindowEnd(TprdProcess& tprd, const std::string& domain, absl::Duration timeout) {
  return PollUntil(timeout, [&] {
    RunResult status = tprd.Ctl({"--json", "status", domain});
    nlohmann::json doc = nlohmann::json::parse(status.out, nullptr, false);
    return status.exit_code == 0 && !doc.is_discarded() && doc["state"] == "patched" &&
           doc["proving_window_open"] == false;
  });
}

void WaitForState(TprdProcess& tprd, const std::string& domain, const std::string& state,
                  absl::Duration timeout, const char* when) {
  std::string last;
  const bool reached = PollUntil(timeout, [&] {
    RunResult r = tprd.Ctl({"--json", "status", domain});
    nlohmann::json doc = nlohmann::json::parse(r.out, nullptr, false);
    if (r.exit_code != 0 || doc.is_discarded() || !doc["state"].is_string()) {
      last = absl::StrCat("exit ", r.exit_code, ": ", r.err);
      return false;
    }
    last = doc["state"].get<std::string>();
    return last == state;
  });
  EXPECT_TRUE(reached) << when << ": domain state stayed " << last << ", wanted " << state << "\n"
                       << tprd.LogTail();
}

void ExpectGuestPasses(TestDomain& domain, size_t from, const char* when, int vcpus, int rounds,
                       const TprdProcess* tprd) {
  for (int cpu = 0; cpu < vcpus; ++cpu) {
    size_t index = from;
    for (int n = 0; n < rounds; ++n) {
      absl::StatusOr<std::string> stat = domain.WaitForPrefix(absl::StrCat("STAT cpu=", cpu, " "),
                                                              absl::Seconds(60), index, &index);
      ASSERT_TRUE(stat.ok())
          << when << ": " << stat.status()
          << "\nlibvirt: " << Virsh({"domstate", "--reason", domain.name()}).out << "QEMU: "
          << Virsh({"qemu-monitor-command", domain.name(), "{\"execute\":\"query-status\"}"}).out
          << "\nvCPUs:\n"
          << Virsh({"qemu-monitor-command", domain.name(), "--hmp", "info registers -a"}).out
          << (tprd != nullptr ? absl::StrCat("tprd:\n", tprd->LogTail(60)) : std::string());
      EXPECT_EQ(ParseSerialFields(*stat)["fail"], "0") << when << ": " << *stat;
      ++index;
    }
  }
  for (const std::string& line : domain.Lines()) {
    EXPECT_NE(line.rfind("FAIL ", 0), 0u) << when << ": " << line;
  }
}

BenchMedians WaitForBench(TestDomain& domain, size_t from, int count, const char* when) {
  std::vector<double> reads, writes, mems;
  size_t index = from;
  for (int n = 0; n < count; ++n) {
    absl::StatusOr<std::string> line =
        domain.WaitForPrefix("BENCH ", absl::Seconds(60), index, &index);
    if (!line.ok()) {
      ADD_FAILURE() << when << ": " << line.status();
      return {};
    }
    std::map<std::string, std::string> fields = ParseSerialFields(*line);
    reads.push_back(std::atof(fields["tpr_read"].c_str()));
    writes.push_back(std::atof(fields["tpr_write"].c_str()));
    mems.push_back(std::atof(fields["mem_read"].c_str()));
    ++index;
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v[v.size() / 2];
  };
  return {median(reads), median(writes), median(mems)};
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

void WriteCode(const std::string& uuid, uint32_t va, const std::vector<uint8_t>& bytes) {
  absl::StatusOr<std::unique_ptr<backend::LibvirtConnection>> conn = backend::ConnectToLibvirt({});
  ASSERT_TRUE(conn.ok()) << conn.status();
  absl::StatusOr<std::unique_ptr<backend::QemuGuestVm>> vm =
      backend::QemuGuestVm::Attach(conn->get(), uuid);
  ASSERT_TRUE(vm.ok()) << vm.status();
  EXPECT_TRUE((*vm)->Stop().ok());
  EXPECT_TRUE((*vm)->WriteVirtual(0, va, bytes).ok());
  std::vector<uint8_t> back(bytes.size());
  EXPECT_TRUE((*vm)->ReadVirtual(0, va, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, bytes) << "write at 0x" << std::hex << va << " did not read back";
  EXPECT_TRUE((*vm)->Detach().ok());
}

GuestSnapshot SnapshotGuest(const std::string& uuid, uint32_t first, uint32_t size) {
  GuestSnapshot out;
  out.code.resize(size);
  absl::StatusOr<std::unique_ptr<backend::LibvirtConnection>> conn = backend::ConnectToLibvirt({});
  EXPECT_TRUE(conn.ok()) << conn.status();
  if (!conn.ok()) return out;
  absl::StatusOr<std::unique_ptr<backend::QemuGuestVm>> vm =
      backend::QemuGuestVm::Attach(conn->get(), uuid);
  EXPECT_TRUE(vm.ok()) << vm.status();
  if (!vm.ok()) return out;
  EXPECT_TRUE((*vm)->Stop().ok());
  EXPECT_TRUE((*vm)->ReadVirtual(0, first, absl::MakeSpan(out.code)).ok());
  std::vector<uint8_t> window(engine::kLegacyWindowEnd - engine::kLegacyWindowFirst);
  EXPECT_TRUE((*vm)->ReadPhysical(engine::kLegacyWindowFirst, absl::MakeSpan(window)).ok());
  for (uint32_t offset = 0; offset + 4 <= window.size() && !out.blob; offset += 4096) {
    uint32_t magic;
    std::memcpy(&magic, window.data() + offset, 4);
    if (magic != TPRD_BLOB_MAGIC) continue;
    absl::StatusOr<engine::ParsedBlob> parsed = engine::ReadGuestBlob(
        **vm, 0, engine::kLowMemoryVirtualBase + engine::kLegacyWindowFirst + offset);
    if (parsed.ok()) {
      out.blob = *std::move(parsed);
    } else {
      out.blob_error = std::string(parsed.status().message());
    }
  }
  EXPECT_TRUE((*vm)->Detach().ok());
  return out;
}

std::vector<SiteRow> ListSites(TprdProcess& tprd, const std::string& domain) {
  std::vector<SiteRow> rows;
  RunResult r = tprd.Ctl({"--json", "sites", domain});
  EXPECT_EQ(r.exit_code, 0) << r.out << r.err;
  nlohmann::json doc = nlohmann::json::parse(r.out, nullptr, false);
  if (r.exit_code != 0 || doc.is_discarded() || !doc["sites"].is_array()) return rows;
  auto hex_bytes = [](const std::string& hex) {
    std::vector<uint8_t> bytes;
    for (size_t i = 0; i + 1 < hex.size(); i += 2) {
      bytes.push_back(static_cast<uint8_t>(std::stoul(hex.substr(i, 2), nullptr, 16)));
    }
    return bytes;
  };
  for (const auto& site : doc["sites"]) {
    SiteRow row;
    row.id = site["id"].get<uint32_t>();
    row.address = std::stoul(site["address"].get<std::string>(), nullptr, 16);
    row.state = site["state"].is_string() ? site["state"].get<std::string>() : "";
    row.original = hex_bytes(site["original"].get<std::string>());
    row.patched = hex_bytes(site["patched"].get<std::string>());
    rows.push_back(std::move(row));
  }
  return rows;
}

CodeRange TestGuestCodeRange() {
  std::map<std::string, uint32_t> sites = SitesByName();
  CodeRange range;
  range.first = sites["rd_a1_eax"] & ~0xFFFu;
  range.size = ((sites["decoy_ff6"] + 0x1000) & ~0xFFFu) - range.first;
  return range;
}

std::string DomainRunState(const std::string& name) {
  RunResult r = Virsh({"domstate", name});
  return std::string(absl::StripAsciiWhitespace(r.out));
}

std::string DomainRunStateAndReason(const std::string& name) {
  RunResult r = Virsh({"domstate", "--reason", name});
  return std::string(absl::StripAsciiWhitespace(r.out));
}

}  // namespace tprd::testing

namespace tprd::testing {
namespace {

// Guest virtual [va, va + size) through the monitor's `x` (vCPU 0's page tables); empty on
// failure, with a test failure.
std::vector<uint8_t> MonitorReadVirtual(const std::string& domain, uint32_t va, uint32_t size) {
  std::optional<std::vector<uint32_t>> values =
      MonitorDump(domain, absl::StrCat("x /", size, "xb 0x", absl::Hex(va)));
  std::vector<uint8_t> bytes;
  if (!values || values->size() != size) {
    ADD_FAILURE() << "monitor x /" << size << "xb at 0x" << std::hex << va << " failed";
    return bytes;
  }
  for (uint32_t v : *values) bytes.push_back(static_cast<uint8_t>(v));
  return bytes;
}

}  // namespace

std::optional<std::vector<uint32_t>> MonitorDump(const std::string& domain,
                                                 const std::string& command) {
  RunResult r = Virsh({"qemu-monitor-command", domain, "--hmp", command});
  if (r.exit_code != 0) return std::nullopt;
  std::vector<uint32_t> values;
  for (absl::string_view line : absl::StrSplit(r.out, '\n')) {
    const size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    for (absl::string_view word :
         absl::StrSplit(line.substr(colon + 1), ' ', absl::SkipWhitespace())) {
      uint32_t value = 0;
      if (!absl::ConsumePrefix(&word, "0x") || !absl::SimpleHexAtoi(word, &value)) {
        return std::nullopt;
      }
      values.push_back(value);
    }
  }
  return values;
}

size_t ExpectUnprovenBytesUnchanged(TprdProcess& tprd, const std::string& domain,
                                    const std::string& when) {
  RunResult status = tprd.Ctl({"--json", "status", domain});
  nlohmann::json doc = nlohmann::json::parse(status.out, nullptr, false);
  EXPECT_FALSE(doc.is_discarded()) << status.out << status.err;
  if (doc.is_discarded()) return 0;
  EXPECT_EQ(doc.value("discovery", std::string()), "watchpoint") << when << ": " << status.out;
  EXPECT_EQ(doc.value("candidate_breakpoints", -1), 0)
      << when << ": tprd set breakpoints on unproven candidates: " << status.out;
  const std::vector<SiteRow> before = ListSites(tprd, domain);
  // One read per page that holds an unproven site.
  std::map<uint32_t, std::vector<uint8_t>> pages;
  for (const SiteRow& row : before) {
    if (row.state == "applied") continue;
    for (uint32_t a = row.address & ~0xFFFu; a < row.address + row.original.size(); a += 0x1000) {
      pages[a];
    }
  }
  for (auto& [page, bytes] : pages) bytes = MonitorReadVirtual(domain, page, 0x1000);
  // A site applied between the listing and the read holds its patch: compare only those still
  // unapplied after the read (sites go from candidate to applied, not back, while patched).
  std::map<uint32_t, std::string> after;
  for (const SiteRow& row : ListSites(tprd, domain)) after[row.address] = row.state;
  size_t compared = 0;
  for (const SiteRow& row : before) {
    if (row.state == "applied" || after[row.address] == "applied") continue;
    for (size_t i = 0; i < row.original.size(); ++i) {
      const uint32_t a = row.address + static_cast<uint32_t>(i);
      const std::vector<uint8_t>& page = pages[a & ~0xFFFu];
      if (page.size() != 0x1000) continue;  // the read failed (reported)
      ++compared;
      EXPECT_EQ(page[a & 0xFFF], row.original[i])
          << when << ": byte " << i << " of the unproven site " << row.id << " at 0x" << std::hex
          << row.address << " changed (0xcc would be a breakpoint in guest memory)";
    }
  }
  return compared;
}

}  // namespace tprd::testing

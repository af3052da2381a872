// Who may talk to tprd and to the gdbstubs it opens, on the real thing: a tprd process with its
// socket in a production-like directory, tprctl run as a member of group `tprd` and as a user
// outside it, a test-guest domain under libvirtd/QEMU TCG (QEMU as libvirt-qemu, Debian's
// default) whose gdbstub runs on a socketpair with tprd, and no TCP listener in tprd or QEMU. Also
// the systemd unit's exposure score (systemd-analyze security). Needs root (creates a group and two
// system users, removed again if it created them). Results: docs/reliability.md, "Access".
#include <grp.h>
#include <netinet/in.h>
#include <pwd.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
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
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_support.h"
#include "tests/support/libvirt_test_env.h"
#include "tests/support/subprocess.h"

#ifndef TPRCTL_PATH
#error "TPRCTL_PATH is defined by tests/reliability/CMakeLists.txt"
#endif

namespace tprd::testing {
namespace {

constexpr int kExitUnreachable = 4;
constexpr char kGroup[] = "tprd";
constexpr char kMember[] = "tprdtest-member";
constexpr char kOutsider[] = "tprdtest-outsider";
// Where tprd versions before 2026-12-06 made QEMU listen for the gdbstub.
constexpr char kOldGdbDirectory[] = "/run/tprd/gdb";

std::optional<gid_t> GroupId(const std::string& name) {
  struct group* g = getgrnam(name.c_str());
  if (g == nullptr) return std::nullopt;
  return g->gr_gid;
}

struct User {
  uid_t uid = 0;
  gid_t gid = 0;
};
std::optional<User> LookupUser(const std::string& name) {
  struct passwd* p = getpwnam(name.c_str());
  if (p == nullptr) return std::nullopt;
  return User{p->pw_uid, p->pw_gid};
}

bool InGroup(const std::string& user, const std::string& group) {
  struct group* g = getgrnam(group.c_str());
  if (g == nullptr) return false;
  for (char** m = g->gr_mem; *m != nullptr; ++m) {
    if (user == *m) return true;
  }
  return false;
}

// The pid of the tprd process serving `socket` (its command line names it).
pid_t FindTprdPid(const std::string& socket) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    int pid = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &pid)) continue;
    std::vector<std::string> args =
        absl::StrSplit(ReadFile(entry.path().string() + "/cmdline"), '\0');
    if (args.empty() || !absl::EndsWith(args[0], "/tprd")) continue;
    if (std::find(args.begin(), args.end(), socket) != args.end()) return pid;
  }
  return -1;
}

// Inodes of the TCP sockets in state LISTEN (0A) in `pid`'s network namespace, v4 and v6.
std::set<std::string> ListeningTcpInodes(pid_t pid) {
  std::set<std::string> inodes;
  for (const char* table : {"tcp", "tcp6"}) {
    const std::string text = ReadFile(absl::StrCat("/proc/", pid, "/net/", table));
    bool header = true;
    for (absl::string_view line : absl::StrSplit(text, '\n', absl::SkipEmpty())) {
      if (header) {
        header = false;
        continue;
      }
      std::vector<absl::string_view> fields = absl::StrSplit(line, ' ', absl::SkipEmpty());
      // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
      if (fields.size() > 9 && fields[3] == "0A") inodes.insert(std::string(fields[9]));
    }
  }
  return inodes;
}

// "socket:[INODE]" targets of `pid`'s open descriptors that are listening TCP sockets.
std::vector<std::string> TcpListeners(pid_t pid) {
  const std::set<std::string> listening = ListeningTcpInodes(pid);
  std::vector<std::string> found;
  std::error_code error;
  for (const auto& fd :
       std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"), error)) {
    std::error_code link_error;
    std::string target = std::filesystem::read_symlink(fd.path(), link_error).string();
    absl::string_view inode = target;
    if (link_error || !absl::ConsumePrefix(&inode, "socket:[") || !absl::ConsumeSuffix(&inode, "]"))
      continue;
    if (listening.count(std::string(inode))) found.push_back(target);
  }
  return found;
}

// Connects to a unix socket as `user` (a forked child that drops to the user's uid and gid with
// no supplementary groups but the ones given): 0 on success, else the errno of the failure.
int ConnectAs(const User& user, const std::vector<gid_t>& groups, const std::string& path) {
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof(address.sun_path)) return ENAMETOOLONG;
  std::memcpy(address.sun_path, path.c_str(), path.size() + 1);
  const pid_t child = fork();
  if (child < 0) return errno;
  if (child == 0) {
    // Only async-signal-safe calls from here on.
    if (setgroups(groups.size(), groups.data()) != 0 || setgid(user.gid) != 0 ||
        setuid(user.uid) != 0) {
      _exit(200);
    }
    const int fd = socket(AF_UNIX, SOCK_STREAM, 0);
    if (fd < 0) _exit(201);
    if (connect(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) {
      _exit(errno > 0 && errno < 200 ? errno : 202);
    }
    _exit(0);
  }
  int status = 0;
  if (waitpid(child, &status, 0) != child || !WIFEXITED(status)) return -1;
  return WEXITSTATUS(status);
}

class TprdAccess : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) {
      GTEST_SKIP() << "needs root: creates group tprd and two system users, runs tprd as root "
                      "and tprctl as those users (CI runs as root)";
    }
    if (!std::filesystem::exists("/usr/bin/setpriv")) {
      GTEST_SKIP() << "needs setpriv (util-linux) to run tprctl as another user";
    }
    if (!GroupId(kGroup)) {
      const RunResult r = tprd::testing::Run({"/usr/sbin/groupadd", "--system", kGroup});
      ASSERT_EQ(r.exit_code, 0) << "groupadd " << kGroup << ": " << r.err;
      created_group_ = true;
    }
    for (const char* name : {kMember, kOutsider}) {
      if (!LookupUser(name)) {
        const RunResult r = tprd::testing::Run({"/usr/sbin/useradd", "--system", "--no-create-home",
                                                "--home-dir", "/nonexistent", "--shell",
                                                "/usr/sbin/nologin", "--user-group", name});
        ASSERT_EQ(r.exit_code, 0) << "useradd " << name << ": " << r.err;
        created_users_.push_back(name);
      }
    }
    // Idempotent membership: the member is in tprd, the outsider is not (a leftover of an
    // earlier run may say otherwise).
    if (!InGroup(kMember, kGroup)) {
      const RunResult r = tprd::testing::Run({"/usr/sbin/usermod", "-aG", kGroup, kMember});
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
    if (InGroup(kOutsider, kGroup)) {
      const RunResult r = tprd::testing::Run({"/usr/bin/gpasswd", "-d", kOutsider, kGroup});
      ASSERT_EQ(r.exit_code, 0) << r.err;
    }
    ASSERT_TRUE(InGroup(kMember, kGroup));
    ASSERT_FALSE(InGroup(kOutsider, kGroup));
    member_ = *LookupUser(kMember);
    outsider_ = *LookupUser(kOutsider);
    tprd_gid_ = *GroupId(kGroup);

    // Like production: a world-enterable parent (/run) and tprd's directory in it, 0750 root
    // (tmpfiles.d makes it root:tprd; here tprd itself must give it to the group).
    char base_template[] = "/tmp/tprd-access-XXXXXX";
    ASSERT_NE(mkdtemp(base_template), nullptr);
    base_ = base_template;
    ASSERT_EQ(chmod(base_.c_str(), 0755), 0);
    run_dir_ = base_ + "/run";
    ASSERT_EQ(mkdir(run_dir_.c_str(), 0750), 0);
    ASSERT_EQ(chmod(run_dir_.c_str(), 0750), 0);
    // The other users run a copy of tprctl from here: the checkout may sit below a directory
    // they cannot enter (CI clones into mode-0700 directories), which is not what this tests.
    tprctl_ = base_ + "/tprctl";
    std::error_code copy_error;
    std::filesystem::copy_file(TPRCTL_PATH, tprctl_, copy_error);
    ASSERT_FALSE(copy_error) << "copy " << TPRCTL_PATH << ": " << copy_error.message();
    ASSERT_EQ(chmod(tprctl_.c_str(), 0755), 0);
    tprd_ = std::make_unique<TprdProcess>(run_dir_, "proving_window_s = 5\n");
    tprd_->Start();
  }

  void TearDown() override {
    tprd_.reset();
    if (!base_.empty()) {
      std::error_code ignored;
      std::filesystem::remove_all(base_, ignored);
    }
    for (const std::string& name : created_users_) {
      const RunResult r = tprd::testing::Run({"/usr/sbin/userdel", name});
      EXPECT_EQ(r.exit_code, 0) << "userdel " << name << ": " << r.err;
    }
    if (created_group_) {
      const RunResult r = tprd::testing::Run({"/usr/sbin/groupdel", kGroup});
      EXPECT_EQ(r.exit_code, 0) << "groupdel " << kGroup << ": " << r.err;
    }
  }

  // tprctl ARGS as `user`; with the user's groups from /etc/group (member) or none (outsider).
  // The socket comes from TPRD_SOCKET, as an operator's environment would set it.
  RunResult CtlAs(const char* user, bool init_groups, const std::vector<std::string>& args) {
    std::vector<std::string> argv = {"/usr/bin/setpriv",
                                     absl::StrCat("--reuid=", user),
                                     absl::StrCat("--regid=", user),
                                     init_groups ? "--init-groups" : "--clear-groups",
                                     "/usr/bin/env",
                                     "TPRD_SOCKET=" + tprd_->socket(),
                                     tprctl_};
    argv.insert(argv.end(), args.begin(), args.end());
    return tprd::testing::Run(argv);
  }

  bool created_group_ = false;
  std::vector<std::string> created_users_;
  User member_, outsider_;
  gid_t tprd_gid_ = 0;
  std::string base_, run_dir_, tprctl_;
  std::unique_ptr<TprdProcess> tprd_;
};

TEST_F(TprdAccess, SocketIsForRootAndGroupTprdOnly) {
  struct stat socket_info {};
  ASSERT_EQ(lstat(tprd_->socket().c_str(), &socket_info), 0) << std::strerror(errno);
  EXPECT_TRUE(S_ISSOCK(socket_info.st_mode));
  EXPECT_EQ(socket_info.st_mode & 07777, 0660u) << std::oct << (socket_info.st_mode & 07777);
  EXPECT_EQ(socket_info.st_uid, 0u);
  EXPECT_EQ(socket_info.st_gid, tprd_gid_) << "the socket's group is not tprd";

  struct stat dir_info {};
  ASSERT_EQ(stat(run_dir_.c_str(), &dir_info), 0);
  EXPECT_EQ(dir_info.st_mode & 0007, 0u)
      << "others may enter " << run_dir_ << ": mode " << std::oct << (dir_info.st_mode & 07777);
  EXPECT_EQ(dir_info.st_gid, tprd_gid_) << "tprd did not give its directory to group tprd";
  EXPECT_EQ(dir_info.st_mode & 0050, 0050u) << "group tprd cannot enter " << run_dir_;

  // The socket itself, below gRPC: the outsider cannot even reach it; a member can connect.
  EXPECT_EQ(ConnectAs(outsider_, {}, tprd_->socket()), EACCES);
  EXPECT_EQ(ConnectAs(member_, {tprd_gid_}, tprd_->socket()), 0);
  EXPECT_EQ(ConnectAs(member_, {}, tprd_->socket()), EACCES) << "the group is what lets it in";

  // tprctl as the outsider: exit 4 (daemon unreachable), one plain line on what to do.
  const RunResult outsider = CtlAs(kOutsider, /*init_groups=*/false, {"domains"});
  EXPECT_EQ(outsider.exit_code, kExitUnreachable) << outsider.out << outsider.err;
  EXPECT_EQ(outsider.out, "");
  EXPECT_TRUE(absl::StartsWith(outsider.err, "tprctl: cannot reach tprd at " + tprd_->socket()))
      << outsider.err;
  EXPECT_TRUE(absl::StrContains(outsider.err, "permission denied")) << outsider.err;
  EXPECT_TRUE(absl::StrContains(outsider.err, "only root and members of group tprd"))
      << outsider.err;
  EXPECT_TRUE(absl::StrContains(outsider.err, absl::StrCat("usermod -aG tprd ", kOutsider)))
      << outsider.err;
  EXPECT_EQ(std::count(outsider.err.begin(), outsider.err.end(), '\n'), 1) << outsider.err;

  // The member: answered.
  const RunResult member = CtlAs(kMember, /*init_groups=*/true, {"domains"});
  EXPECT_EQ(member.exit_code, 0) << member.err << "\n" << tprd_->LogTail();
  EXPECT_TRUE(absl::StartsWith(member.out, "NAME")) << member.out;
  const RunResult member_json = CtlAs(kMember, /*init_groups=*/true, {"--json", "domains"});
  EXPECT_EQ(member_json.exit_code, 0) << member_json.err;
  EXPECT_TRUE(absl::StartsWith(member_json.out, "{\"domains\":")) << member_json.out;
}

TEST_F(TprdAccess, GdbstubHasNoAddressAndNothingListensOnTcp) {
  // The check below finds a listener when there is one: this process opens one.
  {
    const int fd = socket(AF_INET, SOCK_STREAM, 0);
    ASSERT_GE(fd, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)), 0);
    ASSERT_EQ(listen(fd, 1), 0);
    EXPECT_EQ(TcpListeners(getpid()).size(), 1u) << "the /proc/net/tcp check is broken";
    close(fd);
    EXPECT_TRUE(TcpListeners(getpid()).empty());
  }

  TestDomainOptions options;
  options.kernel = TestGuestElf();
  absl::StatusOr<std::unique_ptr<TestDomain>> created = TestDomain::Create(options);
  ASSERT_TRUE(created.ok()) << created.status();
  TestDomain& domain = **created;
  ASSERT_TRUE(domain.WaitForPrefix("STAT cpu=1 ", absl::Seconds(180)).ok()) << domain.LastLines();

  int qemu_pid = 0;
  {
    std::ifstream pid_file(absl::StrCat("/run/libvirt/qemu/", domain.name(), ".pid"));
    ASSERT_TRUE(pid_file >> qemu_pid) << "no pid file for " << domain.name();
  }
  ASSERT_GT(qemu_pid, 0);
  ASSERT_TRUE(std::filesystem::exists(absl::StrCat("/proc/", qemu_pid)));
  // A stock host: QEMU is not root (tests/setup-libvirt.sh leaves qemu.conf's user alone).
  struct stat qemu_info {};
  ASSERT_EQ(stat(absl::StrCat("/proc/", qemu_pid).c_str(), &qemu_info), 0);
  EXPECT_NE(qemu_info.st_uid, 0u) << "QEMU runs as root here: this host's qemu.conf sets user "
                                     "= \"root\", which is not Debian's default";

  const RunResult enabled = tprd_->Ctl({"enable", domain.name()});
  ASSERT_EQ(enabled.exit_code, 0) << enabled.err << "\n" << tprd_->LogTail();

  // The gdbstub runs on a chardev of tprd's own (a socketpair end tprd passed to QEMU): a
  // unix socket with no path, so no other process can connect to it; no `gdbserver DEVICE`
  // (label "gdb") and no socket file where older versions put one.
  const RunResult chardevs =
      tprd::testing::Run({"/usr/bin/virsh", "-c", "qemu:///system", "qemu-monitor-command",
                          domain.name(), R"({"execute":"query-chardev"})"});
  ASSERT_EQ(chardevs.exit_code, 0) << chardevs.err;
  EXPECT_TRUE(absl::StrContains(chardevs.out, R"("filename":"unix:","label":"tprd-gdb-)"))
      << chardevs.out;
  EXPECT_FALSE(absl::StrContains(chardevs.out, R"("label":"gdb")")) << chardevs.out;
  EXPECT_FALSE(
      std::filesystem::exists(absl::StrCat(kOldGdbDirectory, "/", domain.uuid(), ".sock")));

  // No TCP listener in tprd or in the domain's QEMU.
  const pid_t tprd_pid = FindTprdPid(tprd_->socket());
  ASSERT_GT(tprd_pid, 0);
  for (const auto& [who, pid] : {std::pair<const char*, pid_t>{"tprd", tprd_pid},
                                 std::pair<const char*, pid_t>{"QEMU", qemu_pid}}) {
    const std::vector<std::string> listeners = TcpListeners(pid);
    EXPECT_TRUE(listeners.empty())
        << who << " (pid " << pid << ") listens on TCP: " << absl::StrJoin(listeners, ", ");
  }

  const RunResult rolled = tprd_->Ctl({"rollback", domain.name()});
  EXPECT_EQ(rolled.exit_code, 0) << rolled.err;
}

// The unit's exposure as systemd-analyze scores it, offline (no systemd needs to run): it
// must not get worse than the score recorded in docs/reliability.md.
TEST(SystemdUnit, ExposureScoreDoesNotGetWorse) {
  constexpr double kThreshold = 1.5;  // the unit's score when this test was written (was 2.5)
  std::string analyze;
  for (const char* path : {"/usr/bin/systemd-analyze", "/bin/systemd-analyze"}) {
    if (std::filesystem::exists(path)) {
      analyze = path;
      break;
    }
  }
  if (analyze.empty()) {
    GTEST_SKIP() << "systemd-analyze is not installed (Debian package systemd); "
                    "tests/install-deps.sh installs it";
  }
  const std::string unit = std::string(TPRD_SOURCE_DIR) + "/deploy/tprd.service";
  const RunResult r =
      tprd::testing::Run({analyze, "security", "--offline=true",
                          absl::StrCat("--threshold=", static_cast<int>(kThreshold * 10)), unit});
  const std::string marker = "Overall exposure level for tprd.service: ";
  const size_t at = r.out.find(marker);
  ASSERT_NE(at, std::string::npos) << "no score in systemd-analyze's output:\n" << r.out << r.err;
  double score = -1;
  const std::string rest = r.out.substr(at + marker.size());
  ASSERT_TRUE(absl::SimpleAtod(rest.substr(0, rest.find(' ')), &score)) << rest;
  RecordProperty("exposure", absl::StrCat(score));
  std::cout << "systemd-analyze security: tprd.service exposure " << score << "\n";
  EXPECT_LE(score, kThreshold) << "the unit's hardening got worse:\n" << r.out;
  EXPECT_EQ(r.exit_code, 0) << "systemd-analyze refused the unit or its threshold:\n"
                            << r.out << r.err;
}

}  // namespace
}  // namespace tprd::testing

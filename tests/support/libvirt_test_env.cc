#include "tests/support/libvirt_test_env.h"

#include <libvirt/libvirt.h>
#include <libvirt/virterror.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "tests/support/subprocess.h"

#ifndef TPRD_GUEST_DIR
#error "TPRD_GUEST_DIR must name the build directory of tests/guest"
#endif

namespace tprd::testing {
namespace {

// Polling period for the serial log and libvirtd: short enough for quick tests, long enough
// not to load a busy 2-core machine.
constexpr absl::Duration kPollInterval = absl::Milliseconds(50);

std::string LastLibvirtError() {
  virErrorPtr error = virGetLastError();
  return error != nullptr && error->message != nullptr ? error->message : "unknown libvirt error";
}

// libvirt connection for one call; closed on scope exit.
class ScopedConnection {
 public:
  explicit ScopedConnection(const std::string& uri) : connection_(virConnectOpen(uri.c_str())) {}
  ~ScopedConnection() {
    if (connection_ != nullptr) virConnectClose(connection_);
  }
  virConnectPtr get() const { return connection_; }

 private:
  virConnectPtr connection_;
};

bool ProcessAlive(pid_t pid) { return ::kill(pid, 0) == 0 || errno != ESRCH; }

bool UndefineWithItsImages(virDomainPtr domain) {
  return virDomainUndefineFlags(domain, VIR_DOMAIN_UNDEFINE_MANAGED_SAVE |
                                            VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA) == 0;
}

// A test process killed by ctest's timeout runs no destructor: its transient domains keep
// running under TCG and load the machine for every later test. Each test process destroys the
// domains of dead ones (PREFIX-<pid>-<n> with no process <pid>) before it creates its first.
void DestroyDomainsOfDeadTestProcesses(virConnectPtr connection, const std::string& prefix) {
  virDomainPtr* domains = nullptr;
  // Inactive ones too: a persistent test domain may be shut off (a managed save) or defined.
  const int count = virConnectListAllDomains(connection, &domains, 0);
  for (int i = 0; i < count; ++i) {
    const char* name = virDomainGetName(domains[i]);
    absl::string_view rest = name != nullptr ? name : "";
    const bool ours = absl::ConsumePrefix(&rest, prefix + "-");
    const size_t dash = rest.find('-');
    int pid = 0;
    if (ours && dash != absl::string_view::npos && absl::SimpleAtoi(rest.substr(0, dash), &pid) &&
        pid > 0 && !ProcessAlive(pid)) {
      std::fprintf(stderr, "test env: destroying %s, left by dead test process %d\n", name, pid);
      if (virDomainIsActive(domains[i]) == 1) (void)virDomainDestroy(domains[i]);
      if (virDomainIsPersistent(domains[i]) == 1) (void)UndefineWithItsImages(domains[i]);
    }
    virDomainFree(domains[i]);
  }
  free(domains);
}

std::string XmlEscape(std::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '\'':
        out += "&apos;";
        break;
      case '"':
        out += "&quot;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

}  // namespace

std::string TestDomainXml(const TestDomainOptions& options, std::string_view name,
                          std::string_view serial_path) {
  std::string xml =
      absl::StrCat("<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>\n",
                   "  <name>", XmlEscape(name), "</name>\n", "  <memory unit='MiB'>",
                   options.memory_mib, "</memory>\n", "  <vcpu>", options.vcpus, "</vcpu>\n",
                   "  <os>\n    <type arch='i686' machine='pc'>hvm</type>\n    <kernel>",
                   XmlEscape(options.kernel), "</kernel>\n");
  if (!options.cmdline.empty()) {
    absl::StrAppend(&xml, "    <cmdline>", XmlEscape(options.cmdline), "</cmdline>\n");
  }
  absl::StrAppend(&xml, "  </os>\n");
  if (options.acpi) absl::StrAppend(&xml, "  <features><acpi/><apic/></features>\n");
  if (options.cr8legacy_cpu) {
    absl::StrAppend(&xml,
                    "  <cpu mode='custom'><model>qemu32</model>"
                    "<feature policy='require' name='cr8legacy'/></cpu>\n");
  }
  absl::StrAppend(&xml, "  <on_reboot>", options.reboot_restarts ? "restart" : "destroy",
                  "</on_reboot>\n  <on_crash>destroy</on_crash>\n",
                  "  <devices>\n    <serial type='file'><source path='", XmlEscape(serial_path),
                  "'/><target port='0'/></serial>\n", "    <video><model type='none'/></video>\n",
                  "    <memballoon model='none'/>\n");
  if (!options.disk_image.empty()) {
    absl::StrAppend(&xml,
                    "    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
                    "<source file='",
                    XmlEscape(options.disk_image), "'/><target dev='hda' bus='ide'/></disk>\n");
  }
  absl::StrAppend(&xml, "  </devices>\n");
  if (options.vapic_off) {
    absl::StrAppend(&xml,
                    "  <qemu:commandline><qemu:arg value='-global'/>"
                    "<qemu:arg value='apic.vapic=off'/></qemu:commandline>\n");
  }
  absl::StrAppend(&xml, "</domain>\n");
  return xml;
}

absl::StatusOr<std::unique_ptr<TestDomain>> TestDomain::Create(const TestDomainOptions& options) {
  static std::atomic<int> counter{0};
  if (options.kernel.empty() || !std::filesystem::exists(options.kernel)) {
    return absl::NotFoundError(absl::StrCat("test guest kernel '", options.kernel,
                                            "' does not exist (build target tpr-test-guest)"));
  }
  std::unique_ptr<TestDomain> domain(new TestDomain());
  domain->uri_ = options.uri;
  domain->name_ = absl::StrCat(options.name_prefix, "-", getpid(), "-", counter.fetch_add(1));
  std::string pattern = absl::StrCat("/tmp/", domain->name_, "-XXXXXX");
  if (mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp ", pattern, ": ", std::strerror(errno)));
  }
  domain->directory_ = pattern;
  domain->serial_path_ = absl::StrCat(pattern, "/serial.log");
  // QEMU runs as libvirt-qemu on a stock host: the kernel it opens must be reachable by that
  // user, wherever the checkout lives (CI clones into mode-0700 directories). So the domain
  // boots a copy in its own directory, which others may traverse but not list. (libvirt opens
  // the serial log itself and passes QEMU a descriptor.)
  if (chmod(pattern.c_str(), 0711) != 0) {
    return absl::InternalError(absl::StrCat("chmod ", pattern, ": ", std::strerror(errno)));
  }
  TestDomainOptions booted = options;
  booted.kernel = absl::StrCat(pattern, "/kernel.elf");
  std::error_code copy_error;
  std::filesystem::copy_file(options.kernel, booted.kernel, copy_error);
  if (copy_error || chmod(booted.kernel.c_str(), 0644) != 0) {
    return absl::InternalError(absl::StrCat("cannot copy the test guest kernel ", options.kernel,
                                            " to ", booted.kernel, ": ", copy_error.message()));
  }
  if (options.qcow2_disk) {
    booted.disk_image = absl::StrCat(pattern, "/disk.qcow2");
    RunResult made =
        Run({"/usr/bin/qemu-img", "create", "-q", "-f", "qcow2", booted.disk_image, "16M"});
    if (made.exit_code != 0) {
      return absl::InternalError(absl::StrCat("qemu-img create ", booted.disk_image, " (package ",
                                              "qemu-utils): ", made.out, made.err));
    }
  }
  const std::string xml = TestDomainXml(booted, domain->name_, domain->serial_path_);

  ScopedConnection connection(options.uri);
  if (connection.get() == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot connect to ", options.uri, ": ", LastLibvirtError()));
  }
  static std::once_flag reaped;
  std::call_once(reaped,
                 [&] { DestroyDomainsOfDeadTestProcesses(connection.get(), options.name_prefix); });
  domain->persistent_ = options.persistent;
  virDomainPtr created = nullptr;
  if (options.persistent) {
    created = virDomainDefineXML(connection.get(), xml.c_str());
    if (created == nullptr) {
      return absl::InternalError(absl::StrCat("virDomainDefineXML(", domain->name_,
                                              ") failed: ", LastLibvirtError(), "\nXML:\n", xml));
    }
    if (virDomainCreate(created) != 0) {
      const std::string error = LastLibvirtError();
      (void)UndefineWithItsImages(created);
      virDomainFree(created);
      return absl::InternalError(
          absl::StrCat("virDomainCreate(", domain->name_, ") failed: ", error));
    }
  } else {
    created = virDomainCreateXML(connection.get(), xml.c_str(), 0);
    if (created == nullptr) {
      return absl::InternalError(absl::StrCat("virDomainCreateXML(", domain->name_,
                                              ") failed: ", LastLibvirtError(), "\nXML:\n", xml));
    }
  }
  char uuid[VIR_UUID_STRING_BUFLEN] = {};
  const int uuid_result = virDomainGetUUIDString(created, uuid);
  virDomainFree(created);
  if (uuid_result != 0) {
    return absl::InternalError(absl::StrCat("virDomainGetUUIDString: ", LastLibvirtError()));
  }
  domain->uuid_ = uuid;
  return domain;
}

TestDomain::~TestDomain() {
  (void)Destroy();
  if (!directory_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(directory_, ignored);
  }
}

absl::Status TestDomain::Destroy() {
  if (destroyed_ || uuid_.empty()) return absl::OkStatus();
  ScopedConnection connection(uri_);
  if (connection.get() == nullptr) {
    return absl::UnavailableError(
        absl::StrCat("cannot connect to ", uri_, " to destroy ", name_, ": ", LastLibvirtError()));
  }
  virDomainPtr domain = virDomainLookupByUUIDString(connection.get(), uuid_.c_str());
  if (domain == nullptr) {
    destroyed_ = true;  // transient and already gone
    return absl::OkStatus();
  }
  if (persistent_) {
    // Shut off (a managed save) or running: either way it goes, with its images.
    if (virDomainIsActive(domain) == 1) (void)virDomainDestroy(domain);
    const bool undefined = UndefineWithItsImages(domain);
    const std::string error = undefined ? "" : LastLibvirtError();
    virDomainFree(domain);
    if (!undefined)
      return absl::InternalError(absl::StrCat("cannot undefine ", name_, ": ", error));
    destroyed_ = true;
    return absl::OkStatus();
  }
  const int result = virDomainDestroy(domain);
  std::string error = result != 0 ? LastLibvirtError() : "";
  virDomainFree(domain);
  if (result != 0) {
    // A domain that vanished between lookup and destroy is fine.
    ScopedConnection again(uri_);
    virDomainPtr still =
        again.get() != nullptr ? virDomainLookupByUUIDString(again.get(), uuid_.c_str()) : nullptr;
    if (still == nullptr) {
      destroyed_ = true;
      return absl::OkStatus();
    }
    virDomainFree(still);
    return absl::InternalError(absl::StrCat("virDomainDestroy(", name_, "): ", error));
  }
  destroyed_ = true;
  return absl::OkStatus();
}

std::vector<std::string> TestDomain::Lines() {
  std::ifstream in(serial_path_, std::ios::binary);
  std::stringstream buffer;
  buffer << in.rdbuf();
  std::string text = buffer.str();
  std::vector<std::string> lines;
  size_t start = 0;
  // Only complete lines: the last one may still be being written.
  for (size_t end = text.find('\n'); end != std::string::npos; end = text.find('\n', start)) {
    std::string line = text.substr(start, end - start);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    lines.push_back(std::move(line));
    start = end + 1;
  }
  return lines;
}

std::string TestDomain::LastLines(size_t count) {
  std::vector<std::string> lines = Lines();
  const size_t first = lines.size() > count ? lines.size() - count : 0;
  std::string out;
  for (size_t i = first; i < lines.size(); ++i) absl::StrAppend(&out, lines[i], "\n");
  return out;
}

absl::StatusOr<std::string> TestDomain::WaitForLine(
    const std::function<bool(const std::string&)>& match, absl::Duration timeout, size_t from_line,
    size_t* index) {
  const absl::Time deadline = absl::Now() + timeout;
  std::vector<std::string> lines;
  while (true) {
    lines = Lines();
    for (size_t i = from_line; i < lines.size(); ++i) {
      if (match(lines[i])) {
        if (index != nullptr) *index = i;
        return lines[i];
      }
    }
    if (absl::Now() >= deadline) break;
    absl::SleepFor(kPollInterval);  // polling a file QEMU appends to; bounded by the deadline
  }
  const size_t first = lines.size() > 20 ? lines.size() - 20 : 0;
  std::string last;
  for (size_t i = first; i < lines.size(); ++i) absl::StrAppend(&last, "  ", lines[i], "\n");
  return absl::DeadlineExceededError(absl::StrCat(
      "no matching serial line of ", name_, " from line ", from_line, " within ",
      absl::FormatDuration(timeout), " (", lines.size(), " lines; last ones:)\n", last));
}

absl::StatusOr<std::string> TestDomain::WaitForPrefix(std::string_view prefix,
                                                      absl::Duration timeout, size_t from_line,
                                                      size_t* index) {
  std::string wanted(prefix);
  return WaitForLine([&](const std::string& line) { return absl::StartsWith(line, wanted); },
                     timeout, from_line, index);
}

std::string TestGuestDir() { return TPRD_GUEST_DIR; }
std::string TestGuestElf() { return absl::StrCat(TPRD_GUEST_DIR, "/tpr-test-guest.elf"); }
std::string TestGuestSites() { return absl::StrCat(TPRD_GUEST_DIR, "/tpr-test-guest.sites"); }

absl::StatusOr<std::vector<GuestSiteSymbol>> ReadGuestSites(const std::string& path) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", path));
  std::vector<GuestSiteSymbol> sites;
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    std::vector<absl::string_view> words =
        absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (words.empty()) continue;
    GuestSiteSymbol site;
    absl::string_view hex = words[0];
    if (words.size() != 2 || !absl::ConsumePrefix(&hex, "0x") ||
        !absl::SimpleHexAtoi(hex, &site.address)) {
      return absl::InvalidArgumentError(
          absl::StrCat(path, ":", number, ": expected '0xADDRESS name', got '", line, "'"));
    }
    site.name = std::string(words[1]);
    sites.push_back(std::move(site));
  }
  return sites;
}

namespace {

bool LibvirtdAnswers(const std::string& uri) {
  virConnectPtr connection = virConnectOpen(uri.c_str());
  if (connection == nullptr) return false;
  unsigned long version = 0;
  const bool ok = virConnectGetLibVersion(connection, &version) == 0;
  virConnectClose(connection);
  return ok;
}

absl::StatusOr<pid_t> LibvirtdPid() {
  for (const char* path : {"/run/libvirtd.pid", "/var/run/libvirtd.pid"}) {
    std::ifstream in(path);
    pid_t pid = 0;
    if (in >> pid && pid > 0 && kill(pid, 0) == 0) return pid;
  }
  return absl::NotFoundError("no live libvirtd pid in /run/libvirtd.pid");
}

}  // namespace

absl::Status RestartLibvirtd(absl::Duration timeout, std::string_view uri_view) {
  const std::string uri(uri_view);
  const absl::Time deadline = absl::Now() + timeout;
  if (std::filesystem::exists("/run/systemd/system")) {
    if (std::system("systemctl restart libvirtd.service") != 0) {
      return absl::InternalError("systemctl restart libvirtd.service failed");
    }
  } else {
    absl::StatusOr<pid_t> pid = LibvirtdPid();
    if (!pid.ok()) return pid.status();
    if (kill(*pid, SIGTERM) != 0) {
      return absl::InternalError(absl::StrCat("kill libvirtd ", *pid, ": ", std::strerror(errno)));
    }
    while (kill(*pid, 0) == 0) {
      if (absl::Now() >= deadline) {
        return absl::DeadlineExceededError(absl::StrCat("libvirtd ", *pid, " did not exit"));
      }
      absl::SleepFor(kPollInterval);
    }
    if (std::system("libvirtd -d") != 0) return absl::InternalError("`libvirtd -d` failed");
  }
  while (!LibvirtdAnswers(uri)) {
    if (absl::Now() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat("libvirtd did not answer on ", uri,
                                                      " within ", absl::FormatDuration(timeout),
                                                      " after the restart"));
    }
    absl::SleepFor(absl::Milliseconds(200));
  }
  return absl::OkStatus();
}

}  // namespace tprd::testing

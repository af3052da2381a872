// A transient libvirt domain running the test guest (tests/guest) under QEMU TCG, for tests that
// need real libvirtd: the backend's integration tests and the daemon's end-to-end tests.
//
//   tprd::testing::TestDomainOptions o;
//   o.kernel = tprd::testing::TestGuestElf();  o.vcpus = 2;
//   auto domain = tprd::testing::TestDomain::Create(o);   // StatusOr<unique_ptr<TestDomain>>
//   auto boot = (*domain)->WaitForPrefix("BOOT ", absl::Seconds(60));
//   ... QemuGuestVm::Attach(connection, (*domain)->uuid()) ...
//
// The domain is destroyed (and its private directory removed) when the TestDomain goes away,
// also when the test fails half way.
#ifndef TPRD_TESTS_SUPPORT_LIBVIRT_TEST_ENV_H_
#define TPRD_TESTS_SUPPORT_LIBVIRT_TEST_ENV_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace tprd::testing {

struct TestDomainOptions {
  std::string kernel;   // multiboot ELF (<kernel>); see TestGuestElf()
  std::string cmdline;  // guest arguments (<cmdline>), e.g. "late=5"; empty for none
  int vcpus = 2;
  int memory_mib = 64;
  bool vapic_off = true;       // -global apic.vapic=off: QEMU's own TPR patcher stays out
  bool cr8legacy_cpu = false;  // <cpu> qemu32 with cr8legacy required (AltMovCr8)
  // <features><acpi/>: the machine gets ACPI's power-management device, whose PM timer tprd reads
  // as the guest's clock (as on Windows XP domains, which run with ACPI; off by default, as the
  // test guests have always run).
  bool acpi = false;
  // <on_reboot>restart: a reset reboots the guest. Off by default, so that a guest that
  // triple-faults ends its test instead of looping (QEMU runs with -no-reboot).
  bool reboot_restarts = false;
  // Defined (virDomainDefineXML) and then started, instead of created transient: what
  // `virsh managedsave` needs. Destroy() also undefines it, with its managed-save image.
  bool persistent = false;
  // A small qcow2 disk the guest never touches (qemu-img, from qemu-utils): where
  // `virsh snapshot-create-as` keeps an internal snapshot, memory included. Create() makes it in
  // the domain's directory and sets `disk_image`; TestDomainXml adds a disk for a non-empty one.
  bool qcow2_disk = false;
  std::string disk_image;
  std::string uri = "qemu:///system";
  std::string name_prefix = "tprd-it";  // names are PREFIX-<pid>-<n>
};

// The libvirt domain XML Create() uses (exposed for logs and tests of the XML itself).
std::string TestDomainXml(const TestDomainOptions& options, std::string_view name,
                          std::string_view serial_path);

class TestDomain {
 public:
  static absl::StatusOr<std::unique_ptr<TestDomain>> Create(const TestDomainOptions& options);
  ~TestDomain();  // Destroy(), ignoring errors, and removes the private directory
  TestDomain(const TestDomain&) = delete;
  TestDomain& operator=(const TestDomain&) = delete;

  // virDomainDestroy (and, if persistent, undefine); OK when the domain is already gone.
  // Idempotent.
  absl::Status Destroy();

  const std::string& name() const { return name_; }
  const std::string& uuid() const { return uuid_; }
  const std::string& serial_path() const { return serial_path_; }

  // Complete serial lines written so far (re-reads the log file).
  std::vector<std::string> Lines();
  // Polls the serial log until a complete line with index >= from_line satisfies `match`;
  // returns it and, in `index`, its line index. DEADLINE_EXCEEDED carries the last lines.
  absl::StatusOr<std::string> WaitForLine(const std::function<bool(const std::string&)>& match,
                                          absl::Duration timeout, size_t from_line = 0,
                                          size_t* index = nullptr);
  absl::StatusOr<std::string> WaitForPrefix(std::string_view prefix, absl::Duration timeout,
                                            size_t from_line = 0, size_t* index = nullptr);
  // The last `count` lines, newline-separated, for failure messages.
  std::string LastLines(size_t count = 20);

 private:
  TestDomain() = default;

  std::string uri_;
  std::string name_;
  std::string uuid_;
  std::string directory_;
  std::string serial_path_;
  bool persistent_ = false;
  bool destroyed_ = false;
};

// Directory of the built test guest (tests/guest in the build tree) and its images.
std::string TestGuestDir();
std::string TestGuestElf();    // tpr-test-guest.elf
std::string TestGuestSites();  // tpr-test-guest.sites

struct GuestSiteSymbol {
  uint32_t address = 0;
  std::string name;  // e.g. "wr_a3_eax"
};
// Parses a .sites file ("0xADDRESS name" per line).
absl::StatusOr<std::vector<GuestSiteSymbol>> ReadGuestSites(const std::string& path);

// Restarts libvirtd (systemctl when systemd runs it, else SIGTERM to its pid and `libvirtd -d`)
// and waits until `virsh -c uri version` answers. Running QEMU domains survive it.
absl::Status RestartLibvirtd(absl::Duration timeout, std::string_view uri = "qemu:///system");

}  // namespace tprd::testing

#endif  // TPRD_TESTS_SUPPORT_LIBVIRT_TEST_ENV_H_

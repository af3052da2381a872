// tprd end to end: what tprctl answers when an operation cannot or need not be done. Each
// refusal has its documented exit code (docs/usage.md) and a message that says what to do.
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_support.h"
#include "tests/support/libvirt_test_env.h"

namespace tprd::testing {
namespace {

constexpr int kExitFailed = 1;
constexpr int kExitNotFound = 3;

class TprdRefusals : public ::testing::Test {
 protected:
  void SetUp() override {
    tprd_ = std::make_unique<TprdProcess>(MakeTprdDir());
    tprd_->Start();
  }
  std::unique_ptr<TprdProcess> tprd_;
};

TEST_F(TprdRefusals, UnknownDomainIsNotFound) {
  for (const char* verb : {"enable", "status", "sites", "rollback", "scan"}) {
    RunResult r = tprd_->Ctl({verb, "no-such-domain-e2e"});
    EXPECT_EQ(r.exit_code, kExitNotFound) << verb << ": " << r.err;
    EXPECT_TRUE(absl::StrContains(r.err, "no-such-domain-e2e")) << verb << ": " << r.err;
  }
}

TEST_F(TprdRefusals, DomainThatIsNotRunningIsAFailedPrecondition) {
  TestDomainOptions options;
  options.kernel = TestGuestElf();
  const std::string name = absl::StrCat("tprd-e2e-off-", getpid());
  const std::string xml_path = absl::StrCat(::testing::TempDir(), "/", name, ".xml");
  {
    FILE* f = fopen(xml_path.c_str(), "w");
    ASSERT_NE(f, nullptr);
    const std::string xml = TestDomainXml(options, name, "/dev/null");
    fwrite(xml.data(), 1, xml.size(), f);
    fclose(f);
  }
  RunResult defined = Virsh({"define", xml_path});
  ASSERT_EQ(defined.exit_code, 0) << defined.err;
  RunResult r = tprd_->Ctl({"enable", name});
  Virsh({"undefine", name});
  unlink(xml_path.c_str());
  EXPECT_EQ(r.exit_code, kExitFailed) << r.out << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "not running")) << r.err;
}

TEST_F(TprdRefusals, QemusOwnPatcherActiveIsRefusedWithTheWayOut) {
  TestDomainOptions options;
  options.kernel = TestGuestElf();
  options.vcpus = 1;  // QEMU's patcher recurses forever on SMP `mov edi,[tpr]` (prior-art.md)
  options.vapic_off = false;
  absl::StatusOr<std::unique_ptr<TestDomain>> domain = TestDomain::Create(options);
  ASSERT_TRUE(domain.ok()) << domain.status();
  ASSERT_TRUE((*domain)->WaitForPrefix("STAT cpu=0 ", absl::Seconds(120)).ok());
  RunResult r = tprd_->Ctl({"enable", (*domain)->name()});
  EXPECT_EQ(r.exit_code, kExitFailed) << r.out << r.err;
  EXPECT_TRUE(absl::StrContains(r.err, "vapic=off")) << r.err;
  // Refused means untouched: the guest runs on under QEMU's patcher.
  EXPECT_EQ(DomainRunState((*domain)->name()), "running");
  ExpectGuestPasses(**domain, (*domain)->Lines().size(), "refused", /*vcpus=*/1);
}

TEST_F(TprdRefusals, ConcurrentAndRepeatedEnablesAreSafe) {
  TestDomainOptions options;
  options.kernel = TestGuestElf();
  absl::StatusOr<std::unique_ptr<TestDomain>> created = TestDomain::Create(options);
  ASSERT_TRUE(created.ok()) << created.status();
  TestDomain& domain = **created;
  ASSERT_TRUE(domain.WaitForPrefix("STAT cpu=1 ", absl::Seconds(120)).ok());

  // Two enables at once: one patches; the other either joins it (0) or is told the domain is
  // busy (1). Never two blobs, never an error left in the guest.
  RunResult first, second;
  std::thread racer([&] { second = tprd_->Ctl({"enable", domain.name(), "--strategy", "mmio"}); });
  first = tprd_->Ctl({"enable", domain.name(), "--strategy", "mmio"});
  racer.join();
  EXPECT_TRUE(first.exit_code == 0 || second.exit_code == 0)
      << first.err << " / " << second.err << tprd_->LogTail();
  for (const RunResult* r : {&first, &second}) {
    if (r->exit_code != 0) {
      EXPECT_EQ(r->exit_code, kExitFailed);
      EXPECT_TRUE(absl::StrContains(r->err, "busy")) << r->err;
    }
  }
  const std::map<uint32_t, std::string> patched =
      WaitForApplied(*tprd_, domain.name(), HotSites(), absl::Seconds(90), "raced enable");

  // Enabling a patched domain again is idempotent: same sites, same states.
  RunResult again = tprd_->Ctl({"enable", domain.name(), "--strategy", "mmio"});
  EXPECT_EQ(again.exit_code, 0) << again.err;
  const std::map<uint32_t, std::string> after = SiteStates(*tprd_, domain.name());
  for (const auto& [address, state] : patched) {
    if (state == "applied") {
      EXPECT_EQ(after.at(address), "applied") << std::hex << address;
    }
  }
  EXPECT_EQ(after.size(), patched.size()) << "a second enable must not add sites";
  ExpectGuestPasses(domain, domain.Lines().size(), "enabled twice");
  RunResult rolled = tprd_->Ctl({"rollback", domain.name()});
  EXPECT_EQ(rolled.exit_code, 0) << rolled.err;
}

}  // namespace
}  // namespace tprd::testing

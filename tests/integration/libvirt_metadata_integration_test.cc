// The intent's home against real libvirtd: LibvirtConnection's GetMetadata / SetMetadata on a
// running transient domain (live definition only) and on a defined domain that is not running
// (persistent definition only), checked against what `virsh dumpxml` shows. Needs root and
// libvirtd; run serially with the other integration tests (ctest -L integration).
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <memory>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "daemon/domain/intent.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kvm-backend/libvirt_connection.h"
#include "tests/support/libvirt_test_env.h"
#include "tests/support/subprocess.h"

namespace tprd::backend {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
using tprd::testing::RunResult;

constexpr char kUri[] = "qemu:///system";
constexpr char kIntent[] = "<intent strategy=\"mmio\" discovery_budget_ms=\"5000\"/>";
// How libvirt writes the element into the domain XML: our prefix, our namespace.
constexpr char kInDomainXml[] =
    "<tprd:intent xmlns:tprd=\"https://github.com/tprd/tprd/intent/1\" strategy=\"mmio\" "
    "discovery_budget_ms=\"5000\"/>";

RunResult Virsh(const std::vector<std::string>& args) {
  std::vector<std::string> full = {"/usr/bin/virsh", "-c", kUri};
  full.insert(full.end(), args.begin(), args.end());
  return tprd::testing::Run(full);
}

std::unique_ptr<LibvirtConnection> Connect() {
  LibvirtConnectionOptions options;
  options.uri = kUri;
  auto connection = ConnectToLibvirt(options);
  EXPECT_TRUE(connection.ok()) << connection.status();
  return connection.ok() ? *std::move(connection) : nullptr;
}

// Sets, reads back, checks the domain XML, removes, reads back nothing.
void RoundTrip(LibvirtConnection& connection, const std::string& uuid, const std::string& name,
               const std::vector<std::string>& dumpxml_flags) {
  const std::string uri = daemon::kIntentNamespace;
  auto none = connection.GetMetadata(uuid, uri);
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_EQ(*none, std::nullopt) << "a fresh domain has no intent";

  ASSERT_TRUE(connection.SetMetadata(uuid, uri, daemon::kIntentPrefix, kIntent).ok());
  auto read = connection.GetMetadata(uuid, uri);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, std::optional<std::string>(kIntent)) << "libvirt hands it back unprefixed";
  std::vector<std::string> dump = {"dumpxml"};
  dump.insert(dump.end(), dumpxml_flags.begin(), dumpxml_flags.end());
  dump.push_back(name);
  RunResult shown = Virsh(dump);
  ASSERT_EQ(shown.exit_code, 0) << shown.err;
  EXPECT_THAT(shown.out, HasSubstr(kInDomainXml));

  // Another namespace is not ours.
  auto other = connection.GetMetadata(uuid, "https://example.invalid/other/1");
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(*other, std::nullopt);

  ASSERT_TRUE(connection.SetMetadata(uuid, uri, daemon::kIntentPrefix, std::nullopt).ok());
  ASSERT_TRUE(connection.SetMetadata(uuid, uri, daemon::kIntentPrefix, std::nullopt).ok())
      << "removing none succeeds";
  auto gone = connection.GetMetadata(uuid, uri);
  ASSERT_TRUE(gone.ok()) << gone.status();
  EXPECT_EQ(*gone, std::nullopt);
  RunResult after = Virsh(dump);
  ASSERT_EQ(after.exit_code, 0) << after.err;
  EXPECT_THAT(after.out, Not(HasSubstr("tprd:intent")));
}

TEST(LibvirtMetadataIntegration, RunningTransientDomainKeepsItInItsLiveDefinition) {
  auto connection = Connect();
  ASSERT_NE(connection, nullptr);
  tprd::testing::TestDomainOptions options;
  options.kernel = tprd::testing::TestGuestElf();
  options.vcpus = 1;
  options.name_prefix = "tprd-it-intent";
  auto domain = tprd::testing::TestDomain::Create(options);
  ASSERT_TRUE(domain.ok()) << domain.status();
  RoundTrip(*connection, (*domain)->uuid(), (*domain)->name(), {});
}

// Defined, never started: only the persistent definition exists (LIVE would be refused).
TEST(LibvirtMetadataIntegration, DefinedDomainThatIsNotRunningKeepsItInItsPersistentDefinition) {
  auto connection = Connect();
  ASSERT_NE(connection, nullptr);
  const std::string name = absl::StrCat("tprd-it-intent-def-", ::getpid());
  const std::string path = absl::StrCat(::testing::TempDir(), "/", name, ".xml");
  {
    std::ofstream xml(path);
    xml << "<domain type='qemu'><name>" << name << "</name><memory unit='MiB'>16</memory>"
        << "<vcpu>1</vcpu><os><type arch='x86_64' machine='pc'>hvm</type></os></domain>\n";
  }
  RunResult defined = Virsh({"define", path});
  std::remove(path.c_str());
  ASSERT_EQ(defined.exit_code, 0) << defined.err;
  struct Undefine {
    std::string name;
    ~Undefine() { Virsh({"undefine", name}); }
  } undefine{name};

  auto info = connection->LookupDomain(name);
  ASSERT_TRUE(info.ok()) << info.status();
  ASSERT_EQ(info->id, -1);
  RoundTrip(*connection, info->uuid, name, {"--inactive"});

  // An operator's hand-written element reads back as tprd parses it.
  ASSERT_TRUE(connection
                  ->SetMetadata(info->uuid, daemon::kIntentNamespace, daemon::kIntentPrefix,
                                "<intent strategy='cr8'></intent>")
                  .ok());
  auto read = connection->GetMetadata(info->uuid, daemon::kIntentNamespace);
  ASSERT_TRUE(read.ok()) << read.status();
  EXPECT_EQ(*read, std::optional<std::string>("<intent strategy=\"cr8\"/>"));
}

}  // namespace
}  // namespace tprd::backend

// Guest memory changed behind tprd (real libvirtd, QEMU TCG, tprd and tprctl): a patched site
// overwritten while tprd was away is refused by rollback with the reason and restored by
// --force; a corrupt or forged blob is never adopted. The changes are written through a gdbstub
// session of the test's own while tprd is stopped (SIGTERM), as another tool would.
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "daemon/engine/blob.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/e2e/e2e_support.h"
#include "tests/support/libvirt_test_env.h"

namespace tprd::testing {
namespace {

std::optional<SiteRow> RowAt(const std::vector<SiteRow>& rows, uint32_t address) {
  for (const SiteRow& row : rows) {
    if (row.address == address) return row;
  }
  return std::nullopt;
}

TEST(TprdGuestChanges, RollbackRefusesASiteChangedBehindTprdAndForceRestoresIt) {
  std::unique_ptr<TestDomain> domain = BootTestGuest("nobench", false);
  ASSERT_NE(domain, nullptr);
  const CodeRange range = TestGuestCodeRange();
  const std::vector<uint8_t> pristine = ReadCode(domain->uuid(), range.first, range.size);
  TprdProcess tprd(MakeTprdDir(), "proving_window_s = 5\n");
  tprd.Start();
  if (HasFatalFailure()) return;
  RunResult enabled = tprd.Ctl({"enable", domain->name(), "--strategy", "mmio"});
  ASSERT_EQ(enabled.exit_code, 0) << enabled.out << enabled.err << tprd.LogTail();
  WaitForApplied(tprd, domain->name(), HotSites(), absl::Seconds(90), "enable");
  if (HasFailure()) return;
  const uint32_t address = SitesByName().at("rd_8b_edi");  // mov edi,[tpr]: 8B 3D tpr
  std::optional<SiteRow> site = RowAt(ListSites(tprd, domain->name()), address);
  ASSERT_TRUE(site && site->state == "applied");
  ASSERT_EQ(site->patched.size(), 6u);
  ASSERT_EQ(site->patched[0], 0x90) << "patched as nop; call get_tpr_edi";
  ASSERT_EQ(site->patched[1], 0xE8);

  // Another tool rewrites the site while tprd is away: "call get_tpr_edi; nop", the same
  // effect in other bytes, so the guest stays correct and only the bytes tell.
  ASSERT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
  int32_t rel;
  std::memcpy(&rel, site->patched.data() + 2, 4);
  rel += 1;  // the call moves one byte down; its target stays
  std::vector<uint8_t> changed = {0xE8, 0, 0, 0, 0, 0x90};
  std::memcpy(changed.data() + 1, &rel, 4);
  WriteCode(domain->uuid(), address, changed);
  if (HasFatalFailure()) return;

  tprd.Start();
  if (HasFatalFailure()) return;
  ExpectGuestPasses(*domain, domain->Lines().size(), "changed site, adopted");
  RunResult refused = tprd.Ctl({"rollback", domain->name(), "--site", std::to_string(site->id)});
  EXPECT_EQ(refused.exit_code, 1) << "a refused site is a failed operation\n"
                                  << refused.out << refused.err;
  EXPECT_NE(refused.out.find(absl::StrCat("site ", site->id, " not rolled back")),
            std::string::npos)
      << refused.out;
  EXPECT_NE(refused.out.find("bytes changed"), std::string::npos) << "the reason names the change\n"
                                                                  << refused.out;
  EXPECT_NE(refused.err.find("--force"), std::string::npos) << "and how to override\n"
                                                            << refused.err;
  std::optional<SiteRow> after = RowAt(ListSites(tprd, domain->name()), address);
  ASSERT_TRUE(after);
  EXPECT_EQ(after->state, "applied") << "a refused site keeps its state";

  RunResult forced =
      tprd.Ctl({"rollback", domain->name(), "--site", std::to_string(site->id), "--force"});
  EXPECT_EQ(forced.exit_code, 0) << forced.out << forced.err;
  after = RowAt(ListSites(tprd, domain->name()), address);
  ASSERT_TRUE(after);
  EXPECT_EQ(after->state, "rolled_back");
  ExpectGuestPasses(*domain, domain->Lines().size(), "changed site forced back");

  RunResult rolled = tprd.Ctl({"rollback", domain->name()});
  EXPECT_EQ(rolled.exit_code, 0) << rolled.out << rolled.err;
  ASSERT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
  EXPECT_TRUE(ReadCode(domain->uuid(), range.first, range.size) == pristine)
      << "--force wrote the original bytes back, and rollback the rest";
  ExpectGuestPasses(*domain, domain->Lines().size(), "rolled back");
}

// The blob's header as the guest holds it, damaged in one way each round: tprd must refuse to
// adopt it (its handlers and site table are not to be trusted), say why, and leave the guest
// running. The patched sites keep calling the blob's handler code, which the damage leaves
// alone, on the exact strategy that SIGTERM left.
TEST(TprdGuestChanges, ACorruptOrForgedBlobIsNeverAdopted) {
  std::unique_ptr<TestDomain> domain = BootTestGuest("nobench", false);
  ASSERT_NE(domain, nullptr);
  TprdProcess tprd(MakeTprdDir(), "proving_window_s = 5\n");
  tprd.Start();
  if (HasFatalFailure()) return;
  // --transient: no intent, so the restarted tprd only adopts (what this test is about); with an
  // intent it would enable the guest afresh next to a blob it cannot recognise.
  RunResult enabled = tprd.Ctl({"enable", domain->name(), "--strategy", "mmio", "--transient"});
  ASSERT_EQ(enabled.exit_code, 0) << enabled.out << enabled.err << tprd.LogTail();
  WaitForApplied(tprd, domain->name(), HotSites(), absl::Seconds(90), "enable");
  if (HasFailure()) return;
  ASSERT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
  const CodeRange range = TestGuestCodeRange();
  GuestSnapshot snapshot = SnapshotGuest(domain->uuid(), range.first, range.size);
  ASSERT_TRUE(snapshot.blob) << snapshot.blob_error;
  const uint32_t blob_va = snapshot.blob->placement.va;

  // The header and code page, which the checksum covers (docs/blob-format.md).
  const std::vector<uint8_t> page = ReadCode(domain->uuid(), blob_va, 0x1000);
  auto with = [&](uint32_t offset, uint32_t value, bool fix_checksum) {
    std::vector<uint8_t> damaged = page;
    std::memcpy(damaged.data() + offset, &value, 4);
    if (fix_checksum) {
      const uint32_t sum = engine::BlobChecksum(damaged);
      std::memcpy(damaged.data() + 0x10, &sum, 4);
    }
    return damaged;
  };
  uint32_t checksum;
  std::memcpy(&checksum, page.data() + 0x10, 4);
  struct Damage {
    const char* what;
    std::vector<uint8_t> page;
    bool reported;  // something that looks like a blob is there: its refusal is reported
  };
  const std::vector<Damage> damages = {
      {"bad magic", with(0x00, 0x4252505A, false), false},
      {"layout version from elsewhere", with(0x04, 0x7F, false), true},
      {"wrong checksum", with(0x10, ~checksum, false), true},
      // Forged: consistent checksum, handler code offset and a handler pointing anywhere.
      {"forged offsets", with(0x30, 0x7FFFFF00, true), true},
      {"forged handler address", with(0x54 + 8, 0x12345678, true), true},
  };
  for (const Damage& damage : damages) {
    SCOPED_TRACE(damage.what);
    WriteCode(domain->uuid(), blob_va, damage.page);
    if (HasFatalFailure()) return;
    tprd.Start();
    if (HasFatalFailure()) return;
    RunResult status = tprd.Ctl({"--json", "status", domain->name()});
    ASSERT_EQ(status.exit_code, 0) << status.err;
    nlohmann::json doc = nlohmann::json::parse(status.out, nullptr, false);
    ASSERT_FALSE(doc.is_discarded()) << status.out;
    EXPECT_NE(doc.value("state", std::string()), "patched") << "adopted a damaged blob\n"
                                                            << status.out;
    for (const auto& [address, state] : SiteStates(tprd, domain->name())) {
      EXPECT_NE(state, "applied") << "site 0x" << std::hex << address
                                  << " taken from a damaged blob's table";
    }
    if (damage.reported) {
      // The refusal is said where an operator looks: the domain's last error and tprd's log.
      const std::string error = doc.value("last_error", std::string());
      EXPECT_NE(error.find("blob"), std::string::npos) << status.out;
      EXPECT_NE(tprd.LogTail(200).find("nothing adopted"), std::string::npos) << tprd.LogTail();
    }
    EXPECT_EQ(DomainRunState(domain->name()), "running");
    ExpectGuestPasses(*domain, domain->Lines().size(), damage.what);
    ASSERT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
    WriteCode(domain->uuid(), blob_va, page);  // undo for the next round
    if (HasFatalFailure()) return;
  }
  // Undamaged again: adopted.
  tprd.Start();
  if (HasFatalFailure()) return;
  WaitForState(tprd, domain->name(), "patched", absl::Seconds(30), "undamaged blob");
  RunResult rolled = tprd.Ctl({"rollback", domain->name()});
  EXPECT_EQ(rolled.exit_code, 0) << rolled.out << rolled.err;
  EXPECT_EQ(tprd.Terminate(), 0) << tprd.LogTail();
}

}  // namespace
}  // namespace tprd::testing

// Property tests of the transactions: random batches of sites in random XP-like guests.
// - Apply then rollback is the identity on guest memory, and no byte outside the sites is ever
//   written.
// - With a random fault (failed read, failed or torn write, recorder error) at a random point,
//   every site ends fully original or fully patched, and the records say which.
// Seeds: TPRD_PROPERTY_SEED=N runs N, N+1, ...; every failure names its seed.
#include <cstdlib>
#include <map>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "daemon/engine/transaction.h"
#include "gtest/gtest.h"
#include "tests/fakes/fake_guest_vm.h"
#include "tests/fakes/page_table_builder.h"

namespace tprd::engine {
namespace {

using testing::FakeGuestVm;

constexpr int kIterations = 60;
constexpr uint64_t kLowMemory = 8u << 20;

class RecordingRecorder : public PatchRecorder {
 public:
  absl::Status RecordSite(const Site& site) override {
    if (fail_at_ > 0 && ++calls_ == fail_at_) return absl::InternalError("injected");
    latest_[site.id] = site.state;
    return absl::OkStatus();
  }
  void FailNth(int n) {
    fail_at_ = n;
    calls_ = 0;
  }
  std::optional<SiteState> Latest(uint32_t id) const {
    auto it = latest_.find(id);
    return it == latest_.end() ? std::nullopt : std::optional<SiteState>(it->second);
  }

 private:
  int fail_at_ = 0;
  int calls_ = 0;
  std::map<uint32_t, SiteState> latest_;
};

uint32_t BaseSeed() {
  const char* env = std::getenv("TPRD_PROPERTY_SEED");
  return env != nullptr ? static_cast<uint32_t>(std::strtoul(env, nullptr, 0)) : 20240601u;
}

std::vector<uint8_t> Le32(uint32_t v) {
  return {static_cast<uint8_t>(v), static_cast<uint8_t>(v >> 8), static_cast<uint8_t>(v >> 16),
          static_cast<uint8_t>(v >> 24)};
}

// A real TPR instruction of the given length and a same-length replacement (call rel32 to a
// random handler address, with push/nop first where the form has one).
void MakeSiteBytes(std::mt19937& rng, size_t length, uint32_t address, Site& site) {
  const std::vector<uint8_t> tpr = Le32(kDefaultTprVa);
  const uint32_t handler = 0x800C0000u + (rng() % 0x1000);
  const uint8_t reg = static_cast<uint8_t>(rng() % 8 == 4 ? 0 : rng() % 8);
  std::vector<uint8_t> original, prefix;
  if (length == 5) {
    original = {static_cast<uint8_t>(rng() % 2 ? 0xA1 : 0xA3)};
  } else if (length == 6) {
    switch (rng() % 3) {
      case 0:
        original = {0x8B, static_cast<uint8_t>(0x05 | reg << 3)};
        prefix = {0x90};
        break;
      case 1:
        original = {0x89, static_cast<uint8_t>(0x05 | reg << 3)};
        prefix = {static_cast<uint8_t>(0x50 + reg)};
        break;
      default:
        original = {0xFF, 0x35};
        prefix = {0x50};
        break;
    }
  } else {
    original = {0xC7, 0x05};
    prefix = {0x68};
  }
  original.insert(original.end(), tpr.begin(), tpr.end());
  std::vector<uint8_t> imm;
  if (length == 10) {
    imm = Le32(rng() % 256);
    original.insert(original.end(), imm.begin(), imm.end());
    prefix.insert(prefix.end(), imm.begin(), imm.end());
  }
  std::vector<uint8_t> patched = prefix;
  const uint32_t call_at = address + static_cast<uint32_t>(prefix.size());
  patched.push_back(0xE8);
  const std::vector<uint8_t> rel = Le32(handler - (call_at + 5));
  patched.insert(patched.end(), rel.begin(), rel.end());
  site.original = std::move(original);
  site.patched = std::move(patched);
}

struct World {
  FakeGuestVm vm;
  std::vector<Site> sites;
  RecordingRecorder recorder;
  FakeGuestVm::MemorySnapshot initial;
};

void BuildWorld(std::mt19937& rng, World& w) {
  testing::XpLikeOptions options{.pae = rng() % 2 == 0,
                                 .large_pages = rng() % 2 == 0,
                                 .low_memory_bytes = kLowMemory,
                                 .vcpu_count = 1 + static_cast<int>(rng() % 4)};
  w.vm = FakeGuestVm(testing::XpLikeVmOptions(options));
  ASSERT_TRUE(testing::BuildXpLikeLayout(w.vm, options).ok());
  // Random "code" in a window of a few pages, so sites sit among non-zero neighbours and may
  // straddle page boundaries.
  const uint32_t window = testing::kXpKernelBase + 0x100000 + (rng() % 64) * 4096;
  const uint32_t window_size = 4096 * (1 + rng() % 4);
  std::vector<uint8_t> code(window_size);
  for (uint8_t& b : code) b = static_cast<uint8_t>(rng());
  ASSERT_TRUE(w.vm.BackdoorWriteVirtual(0, window, code).ok());

  const int count = 1 + static_cast<int>(rng() % 24);
  std::vector<std::pair<uint32_t, uint32_t>> taken;  // [start, end)
  for (int attempt = 0; static_cast<int>(w.sites.size()) < count && attempt < 200; ++attempt) {
    const size_t lengths[] = {5, 6, 10};
    const size_t length = lengths[rng() % 3];
    const uint32_t address = window + rng() % (window_size - length);
    bool overlaps = false;
    for (const auto& [s, e] : taken) overlaps |= address < e && s < address + length;
    if (overlaps) continue;
    taken.push_back({address, address + static_cast<uint32_t>(length)});
    Site site;
    site.id = static_cast<uint32_t>(w.sites.size() + 1);
    site.address = address;
    MakeSiteBytes(rng, length, address, site);
    ASSERT_TRUE(w.vm.BackdoorWriteVirtual(0, address, site.original).ok());
    w.sites.push_back(std::move(site));
  }
  // vCPUs: mostly elsewhere, sometimes strictly inside a site.
  absl::StatusOr<int> vcpus = w.vm.VcpuCount();
  ASSERT_TRUE(vcpus.ok());
  for (int v = 0; v < *vcpus; ++v) {
    uint32_t eip = testing::kXpKernelBase + 0x200000 + rng() % 0x1000;
    if (rng() % 5 == 0 && !w.sites.empty()) {
      const Site& s = w.sites[rng() % w.sites.size()];
      eip = s.address + 1 + rng() % (s.original.size() - 1);
    }
    w.vm.SetEip(v, eip);
  }
  w.initial = w.vm.Snapshot();
}

std::vector<uint8_t> SiteBytes(FakeGuestVm& vm, const Site& s) {
  absl::StatusOr<std::vector<uint8_t>> b = vm.BackdoorVirtualBytes(0, s.address, s.original.size());
  return b.ok() ? *b : std::vector<uint8_t>{};
}

bool InsideASite(const std::vector<Site>& sites, uint32_t va) {
  for (const Site& s : sites) {
    if (va >= s.address && va < s.address + s.original.size()) return true;
  }
  return false;
}

void ExpectOnlySiteBytesWritten(World& w) {
  for (const FakeGuestVm::WriteRecord& write : w.vm.write_log()) {
    ASSERT_TRUE(write.is_virtual);
    for (size_t i = 0; i < write.bytes.size(); ++i) {
      EXPECT_TRUE(InsideASite(w.sites, static_cast<uint32_t>(write.address + i)))
          << "write outside every site at 0x" << std::hex << write.address + i;
    }
  }
}

void ExpectSitesWholeAndRecordsTrue(World& w) {
  for (const Site& s : w.sites) {
    const std::vector<uint8_t> now = SiteBytes(w.vm, s);
    const bool original = now == s.original, patched = now == s.patched;
    EXPECT_TRUE(original || patched) << "site " << s.id << " torn";
    const std::optional<SiteState> recorded = w.recorder.Latest(s.id);
    if (recorded == SiteState::kApplied) {
      EXPECT_TRUE(patched) << "site " << s.id << " recorded applied";
    } else if (recorded == SiteState::kRolledBack || recorded == SiteState::kCandidate ||
               !recorded.has_value()) {
      EXPECT_TRUE(original) << "site " << s.id << " recorded original";
    }
    if (recorded.has_value()) {
      EXPECT_EQ(*recorded, s.state) << "site " << s.id;
    }
  }
}

// Arms a random subset of single faults; each kind fires at most once.
void InjectRandomFaults(std::mt19937& rng, World& w, int site_count) {
  const int span = 3 * site_count + 2;
  if (rng() % 2) w.vm.FailNthRead(1 + static_cast<int>(rng() % span));
  if (rng() % 2) {
    w.vm.FailNthWrite(1 + static_cast<int>(rng() % (site_count + 1)), rng() % 11);
  }
  if (rng() % 3 == 0) w.recorder.FailNth(1 + static_cast<int>(rng() % (2 * site_count + 1)));
}

TEST(TransactionPropertyTest, ApplyThenRollbackIsTheIdentity) {
  const uint32_t base = BaseSeed();
  for (int i = 0; i < kIterations; ++i) {
    const uint32_t seed = base + static_cast<uint32_t>(i);
    SCOPED_TRACE(::testing::Message() << "seed " << seed << " (TPRD_PROPERTY_SEED=" << seed << ")");
    std::mt19937 rng(seed);
    World w;
    BuildWorld(rng, w);
    if (::testing::Test::HasFatalFailure()) return;

    absl::StatusOr<TransactionReport> applied =
        ApplySites(w.vm, w.recorder, absl::MakeSpan(w.sites));
    ASSERT_TRUE(applied.ok()) << applied.status();
    for (size_t k = 0; k < w.sites.size(); ++k) {
      const SiteOutcome& o = applied->outcomes[k];
      EXPECT_TRUE(o.kind == SiteOutcome::Kind::kApplied ||
                  (o.kind == SiteOutcome::Kind::kSkipped &&
                   o.reason.find("inside the site") != std::string::npos))
          << "site " << o.site_id << ": " << SiteOutcomeKindName(o.kind) << " " << o.reason;
    }
    EXPECT_EQ(w.vm.stop_calls(), 1);
    EXPECT_EQ(w.vm.resume_calls(), 1);
    ExpectSitesWholeAndRecordsTrue(w);

    absl::StatusOr<TransactionReport> rolled =
        RollbackSites(w.vm, w.recorder, absl::MakeSpan(w.sites));
    ASSERT_TRUE(rolled.ok()) << rolled.status();
    EXPECT_EQ(w.vm.Snapshot(), w.initial) << "memory differs after apply + rollback";
    ExpectOnlySiteBytesWritten(w);
    ExpectSitesWholeAndRecordsTrue(w);
  }
}

TEST(TransactionPropertyTest, RandomFaultsLeaveEverySiteWholeAndRecordsTrue) {
  const uint32_t base = BaseSeed() + 100000;
  for (int i = 0; i < kIterations; ++i) {
    const uint32_t seed = base + static_cast<uint32_t>(i);
    SCOPED_TRACE(::testing::Message()
                 << "seed " << seed << " (TPRD_PROPERTY_SEED=" << seed - 100000 << ")");
    std::mt19937 rng(seed);
    World w;
    BuildWorld(rng, w);
    if (::testing::Test::HasFatalFailure()) return;
    // vCPUs out of the way, so a clean second pass must finish the job.
    absl::StatusOr<int> vcpus = w.vm.VcpuCount();
    ASSERT_TRUE(vcpus.ok());
    for (int v = 0; v < *vcpus; ++v) w.vm.SetEip(v, 0x80200000);
    const int n = static_cast<int>(w.sites.size());
    const bool fault_in_rollback = rng() % 2 == 0;

    if (!fault_in_rollback) InjectRandomFaults(rng, w, n);
    absl::StatusOr<TransactionReport> applied =
        ApplySites(w.vm, w.recorder, absl::MakeSpan(w.sites));
    ASSERT_TRUE(applied.ok()) << applied.status();
    EXPECT_EQ(applied->Count(SiteOutcome::Kind::kTorn), 0);
    ExpectSitesWholeAndRecordsTrue(w);
    w.vm.ClearFaults();
    w.recorder.FailNth(0);
    // Finish applying cleanly, then every site is patched.
    ASSERT_TRUE(ApplySites(w.vm, w.recorder, absl::MakeSpan(w.sites)).ok());
    for (const Site& s : w.sites) EXPECT_EQ(SiteBytes(w.vm, s), s.patched) << "site " << s.id;

    if (fault_in_rollback) InjectRandomFaults(rng, w, n);
    absl::StatusOr<TransactionReport> rolled =
        RollbackSites(w.vm, w.recorder, absl::MakeSpan(w.sites));
    ASSERT_TRUE(rolled.ok()) << rolled.status();
    EXPECT_EQ(rolled->Count(SiteOutcome::Kind::kTorn), 0);
    ExpectSitesWholeAndRecordsTrue(w);
    w.vm.ClearFaults();
    w.recorder.FailNth(0);
    ASSERT_TRUE(RollbackSites(w.vm, w.recorder, absl::MakeSpan(w.sites)).ok());
    EXPECT_EQ(w.vm.Snapshot(), w.initial) << "memory differs after the clean rollback";
    ExpectOnlySiteBytesWritten(w);
    ExpectSitesWholeAndRecordsTrue(w);
    for (const Site& s : w.sites) EXPECT_EQ(s.state, SiteState::kRolledBack) << "site " << s.id;
  }
}

}  // namespace
}  // namespace tprd::engine

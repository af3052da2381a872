#include "daemon/engine/blob.h"

#include <Zydis/Zydis.h>

#include <algorithm>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "guest-rom/blob_image.h"

namespace tprd::engine {
namespace {

using ::testing::HasSubstr;

uint32_t LoadU32(const std::vector<uint8_t>& bytes, uint32_t offset) {
  return bytes[offset] | bytes[offset + 1] << 8 | bytes[offset + 2] << 16 |
         static_cast<uint32_t>(bytes[offset + 3]) << 24;
}

void StoreU32(std::vector<uint8_t>& bytes, uint32_t offset, uint32_t value) {
  for (int i = 0; i < 4; ++i) bytes[offset + i] = static_cast<uint8_t>(value >> (8 * i));
}

void Reseal(std::vector<uint8_t>& bytes) {
  StoreU32(bytes, TPRD_BLOB_HDR_CHECKSUM, BlobChecksum(bytes));
}

BlobPlacement XpPlacement() {
  BlobPlacement placement;
  placement.va = 0x800E8000;
  placement.pa = 0x000E8000;
  placement.tpr_va = kDefaultTprVa;
  placement.strategy = Strategy::kMmio;
  placement.cpu_count = 4;
  placement.guard_period = 64;
  return placement;
}

std::vector<BlobPlacement> SeveralPlacements() {
  std::vector<BlobPlacement> placements;
  for (auto [va, pa, tpr] : std::vector<std::tuple<uint32_t, uint32_t, uint32_t>>{
           {0x800E8000, 0x000E8000, 0xFFFE0080},
           {0x800C0000, 0x000C0000, 0xFFFE0080},
           {0xC0001000, 0x00001000, 0xFEE00080},
           {0x00100000, 0x00100000, 0xFFFE0080},
           {0xFFFF0000 - kBlobSize, 0xFFFF0000 - kBlobSize, 0x00000080},
       }) {
    BlobPlacement placement = XpPlacement();
    placement.va = va;
    placement.pa = pa;
    placement.tpr_va = tpr;
    placements.push_back(placement);
  }
  return placements;
}

TEST(BlobLayoutTest, FitsTheBudgetAndKeepsDataOffTheCodePage) {
  EXPECT_LE(kBlobSize, 12u * 1024);
  EXPECT_GE(kBlobMaxCpus, 32u);  // 32-bit Windows runs at most 32 processors
  EXPECT_GE(kBlobMaxSites, 256u);
  const BlobAddresses a = BlobAddressesAt(0x800E8000);
  EXPECT_EQ(a.data_start % 0x1000, 0u);
  EXPECT_LE(a.code_end, a.data_start);
  EXPECT_GE(a.code_start, a.va + TPRD_BLOB_HEADER_SIZE);
  EXPECT_GE(a.strategy_word, a.data_start);
  EXPECT_GE(a.percpu_area, a.strategy_word + 4);
  EXPECT_GE(a.percpu_stats, a.PerCpuEntry(kBlobMaxCpus));
  EXPECT_GE(a.site_table, a.PerCpuStatsEntry(kBlobMaxCpus));
  EXPECT_LE(a.SiteEntry(kBlobMaxSites), a.va + kBlobSize);
  EXPECT_EQ(a.end, a.va + kBlobSize);
}

TEST(BlobInstantiateTest, EveryRelocationPointsInsideTheBlobOrAtTheTpr) {
  for (const BlobPlacement& placement : SeveralPlacements()) {
    SCOPED_TRACE(absl::StrFormat("va 0x%08x", placement.va));
    auto blob = InstantiateBlob(placement);
    ASSERT_TRUE(blob.ok()) << blob.status();
    ASSERT_EQ(blob->bytes.size(), kBlobSize);
    for (uint32_t offset : tprd_blob_base_relocs) {
      const uint32_t value = LoadU32(blob->bytes, offset);
      EXPECT_GE(value, placement.va) << "reloc at 0x" << std::hex << offset;
      EXPECT_LT(value - placement.va, kBlobSize) << "reloc at 0x" << std::hex << offset;
      EXPECT_EQ(value - placement.va,
                LoadU32({tprd_blob_image, tprd_blob_image + kBlobSize}, offset));
    }
    for (uint32_t offset : tprd_blob_tpr_relocs) {
      EXPECT_EQ(LoadU32(blob->bytes, offset), placement.tpr_va) << std::hex << offset;
    }
    EXPECT_EQ(LoadU32(blob->bytes, TPRD_BLOB_HDR_BLOB_VA), placement.va);
    EXPECT_EQ(LoadU32(blob->bytes, TPRD_BLOB_HDR_BLOB_PA), placement.pa);
    EXPECT_EQ(LoadU32(blob->bytes, TPRD_BLOB_HDR_TPR_VA), placement.tpr_va);
  }
}

// The image in read-only shadowed memory, the data block apart in RAM (docs/design.md).
TEST(BlobInstantiateTest, DataBlockApartGetsEveryDataReference) {
  BlobPlacement placement = XpPlacement();
  placement.va = 0x800CC000;
  placement.pa = 0x000CC000;
  placement.data_va = 0x800E8040;
  placement.data_pa = 0x000E8040;
  auto blob = InstantiateBlob(placement);
  ASSERT_TRUE(blob.ok()) << blob.status();
  ASSERT_EQ(blob->data_block.size(), kBlobDataBlockSize);
  EXPECT_EQ(blob->addresses.strategy_word, placement.data_va);
  EXPECT_EQ(blob->addresses.PerCpuEntry(0),
            placement.data_va + (TPRD_BLOB_PERCPU_AREA - kBlobDataBlockOffset));
  EXPECT_EQ(blob->addresses.site_table, placement.va + TPRD_BLOB_SITE_TABLE)
      << "stays in the image";
  int into_data = 0;
  for (uint32_t offset : tprd_blob_base_relocs) {
    const uint32_t link = LoadU32({tprd_blob_image, tprd_blob_image + kBlobSize}, offset);
    const uint32_t value = LoadU32(blob->bytes, offset);
    if (link >= kBlobDataBlockOffset && link < kBlobDataBlockOffset + kBlobDataBlockSize) {
      ++into_data;
      EXPECT_EQ(value, placement.data_va + (link - kBlobDataBlockOffset)) << std::hex << offset;
    } else {
      EXPECT_EQ(value, placement.va + link) << std::hex << offset;
    }
  }
  EXPECT_GE(into_data, 3) << "the handlers' strategy/per-CPU references and hdr_data_va";
  EXPECT_EQ(LoadU32(blob->bytes, TPRD_BLOB_HDR_DATA_VA), placement.data_va);
  EXPECT_EQ(LoadU32(blob->bytes, TPRD_BLOB_HDR_DATA_PA), placement.data_pa);

  // Parsing needs the data block; with it, the placement round-trips.
  EXPECT_FALSE(ParseBlob(blob->bytes).ok());
  auto parsed = ParseBlob(blob->bytes, absl::MakeConstSpan(blob->data_block));
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->placement.data_va, placement.data_va);
  EXPECT_EQ(parsed->placement.strategy, Strategy::kMmio);
  EXPECT_TRUE(parsed->matches_this_build);

  BlobPlacement overlapping = placement;
  overlapping.data_va = placement.va + 0x2000;
  EXPECT_FALSE(InstantiateBlob(overlapping).ok());
}

TEST(BlobInstantiateTest, MovingTheBlobChangesOnlyRelocationsAndHeaderFields) {
  BlobPlacement first = XpPlacement();
  BlobPlacement second = first;
  second.va = 0xC0010000;
  auto a = InstantiateBlob(first);
  auto b = InstantiateBlob(second);
  ASSERT_TRUE(a.ok() && b.ok());
  std::set<uint32_t> may_differ;
  for (uint32_t offset : tprd_blob_base_relocs) {
    for (uint32_t i = 0; i < 4; ++i) may_differ.insert(offset + i);
  }
  for (uint32_t i = 0; i < 4; ++i) may_differ.insert(TPRD_BLOB_HDR_CHECKSUM + i);
  for (uint32_t i = 0; i < kBlobSize; ++i) {
    if (a->bytes[i] != b->bytes[i]) {
      EXPECT_TRUE(may_differ.count(i)) << "unexpected difference at 0x" << std::hex << i;
    }
  }
}

TEST(BlobInstantiateTest, HeaderCarriesPlacementAndChecksumVerifies) {
  const BlobPlacement placement = XpPlacement();
  auto blob = InstantiateBlob(placement);
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_EQ(LoadU32(blob->bytes, TPRD_BLOB_HDR_MAGIC), TPRD_BLOB_MAGIC);
  EXPECT_EQ(LoadU32(blob->bytes, TPRD_BLOB_HDR_CPU_COUNT), 4u);
  EXPECT_EQ(LoadU32(blob->bytes, TPRD_BLOB_HDR_GUARD_PERIOD), 64u);
  EXPECT_EQ(LoadU32(blob->bytes, TPRD_BLOB_STRATEGY_WORD), static_cast<uint32_t>(Strategy::kMmio));
  EXPECT_EQ(LoadU32(blob->bytes, TPRD_BLOB_HDR_CHECKSUM), BlobChecksum(blob->bytes));
  EXPECT_NE(BlobChecksum(blob->bytes), 0u);
  // Every CPU starts disabled (exact path) and the site table empty.
  for (uint32_t i = TPRD_BLOB_PERCPU_AREA; i < kBlobSize; ++i) ASSERT_EQ(blob->bytes[i], 0) << i;
}

// Pins the checksum to CRC-32 (IEEE) bit for bit: the value below came from the original
// bit-by-bit implementation. Only [0, data offset) counts, the checksum field as zero.
TEST(BlobChecksumTest, KnownValue) {
  static_assert(TPRD_BLOB_DATA_OFFSET == 0x1000 && TPRD_BLOB_HDR_CHECKSUM == 0x10,
                "the known value assumes this layout; recompute it if the layout changes");
  std::vector<uint8_t> bytes(TPRD_BLOB_DATA_OFFSET + 64);
  for (size_t i = 0; i < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(i * 7 + 3);
  EXPECT_EQ(BlobChecksum(bytes), 0xDB8BF097u);
  StoreU32(bytes, TPRD_BLOB_HDR_CHECKSUM, 0);
  bytes.back() ^= 0xFF;
  EXPECT_EQ(BlobChecksum(bytes), 0xDB8BF097u);
  EXPECT_EQ(BlobChecksum(std::vector<uint8_t>(TPRD_BLOB_DATA_OFFSET)), 0xC71C0011u);
}

// The bit-by-bit CRC-32 that blob.cc computed before it used zlib's crc32, kept here only as the
// reference the zlib one must match: the checksum is in every blob tprd placed in a guest.
uint32_t BitwiseCrc32WithFieldZeroed(absl::Span<const uint8_t> bytes, uint32_t skip_offset) {
  uint32_t crc = 0xFFFFFFFF;
  for (uint32_t i = 0; i < bytes.size(); ++i) {
    const uint8_t byte = (i >= skip_offset && i < skip_offset + 4) ? 0 : bytes[i];
    crc ^= byte;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ (0xEDB88320 & (0u - (crc & 1)));
  }
  return ~crc;
}

// The published CRC-32 check values, with the zeroed field past the end, and the same inputs
// with a field inside them counted as zero.
TEST(BlobChecksumTest, StandardCheckValues) {
  const std::vector<std::pair<std::string, uint32_t>> vectors = {
      {"", 0x00000000u},
      {"a", 0xE8B7BE43u},
      {"abc", 0x352441C2u},
      {"123456789", 0xCBF43926u},
      {"message digest", 0x20159D7Fu},
      {"The quick brown fox jumps over the lazy dog", 0x414FA339u},
  };
  for (const auto& [text, crc] : vectors) {
    const std::vector<uint8_t> bytes(text.begin(), text.end());
    const uint32_t past_end = static_cast<uint32_t>(bytes.size());
    EXPECT_EQ(Crc32WithFieldZeroed(bytes, past_end), crc) << '"' << text << '"';
    EXPECT_EQ(BitwiseCrc32WithFieldZeroed(bytes, past_end), crc) << '"' << text << '"';
  }
  // "1234" counted as zero is the CRC-32 of four zero bytes and "56789".
  const std::string digits = "123456789";
  const std::vector<uint8_t> bytes(digits.begin(), digits.end());
  std::vector<uint8_t> zeroed = bytes;
  std::fill(zeroed.begin(), zeroed.begin() + 4, 0);
  EXPECT_EQ(Crc32WithFieldZeroed(bytes, 0), Crc32WithFieldZeroed(zeroed, 10));
  EXPECT_EQ(Crc32WithFieldZeroed(bytes, 0), BitwiseCrc32WithFieldZeroed(bytes, 0));
}

// zlib's crc32 against the old implementation on random contents: every size up to a little
// past the field with the field at every place (before, across and past the end), random
// sizes and offsets, and whole blobs as BlobChecksum sees them.
TEST(BlobChecksumTest, MatchesTheBitwiseImplementationOnRandomBuffers) {
  std::mt19937 random(20261206);
  auto random_bytes = [&](size_t size) {
    std::vector<uint8_t> bytes(size);
    for (uint8_t& b : bytes) b = static_cast<uint8_t>(random());
    return bytes;
  };
  for (uint32_t size = 0; size <= 40; ++size) {
    const std::vector<uint8_t> bytes = random_bytes(size);
    for (uint32_t field = 0; field <= size + 4; ++field) {
      ASSERT_EQ(Crc32WithFieldZeroed(bytes, field), BitwiseCrc32WithFieldZeroed(bytes, field))
          << "size " << size << ", field at " << field;
    }
  }
  for (int i = 0; i < 300; ++i) {
    const std::vector<uint8_t> bytes = random_bytes(random() % 20000);
    const uint32_t field = static_cast<uint32_t>(random() % (bytes.size() + 8));
    ASSERT_EQ(Crc32WithFieldZeroed(bytes, field), BitwiseCrc32WithFieldZeroed(bytes, field))
        << "size " << bytes.size() << ", field at " << field;
  }
  for (int i = 0; i < 50; ++i) {
    const std::vector<uint8_t> blob = random_bytes(kBlobSize);
    ASSERT_EQ(BlobChecksum(blob), BitwiseCrc32WithFieldZeroed(
                                      absl::MakeConstSpan(blob).subspan(0, TPRD_BLOB_DATA_OFFSET),
                                      TPRD_BLOB_HDR_CHECKSUM));
  }
  absl::StatusOr<BlobInstance> blob = InstantiateBlob(XpPlacement());
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_EQ(BlobChecksum(blob->bytes),
            BitwiseCrc32WithFieldZeroed(
                absl::MakeConstSpan(blob->bytes).subspan(0, TPRD_BLOB_DATA_OFFSET),
                TPRD_BLOB_HDR_CHECKSUM));
}

TEST(BlobInstantiateTest, HandlerTableIsSymbolsPlusBase) {
  const BlobPlacement placement = XpPlacement();
  auto blob = InstantiateBlob(placement);
  ASSERT_TRUE(blob.ok());
  const HandlerTable& h = blob->handlers;
  const uint32_t va = placement.va;
  EXPECT_EQ(h.set_tpr, va + TPRD_BLOB_SET_TPR);
  EXPECT_EQ(h.set_tpr_eax, va + TPRD_BLOB_SET_TPR_EAX);
  EXPECT_EQ(h.get_tpr_stack, va + TPRD_BLOB_GET_TPR_STACK);
  EXPECT_EQ(h.get_tpr[int(Gpr::kEax)], va + TPRD_BLOB_GET_TPR_EAX);
  EXPECT_EQ(h.get_tpr[int(Gpr::kEcx)], va + TPRD_BLOB_GET_TPR_ECX);
  EXPECT_EQ(h.get_tpr[int(Gpr::kEdx)], va + TPRD_BLOB_GET_TPR_EDX);
  EXPECT_EQ(h.get_tpr[int(Gpr::kEbx)], va + TPRD_BLOB_GET_TPR_EBX);
  EXPECT_EQ(h.get_tpr[int(Gpr::kEsp)], 0u);
  EXPECT_EQ(h.get_tpr[int(Gpr::kEbp)], va + TPRD_BLOB_GET_TPR_EBP);
  EXPECT_EQ(h.get_tpr[int(Gpr::kEsi)], va + TPRD_BLOB_GET_TPR_ESI);
  EXPECT_EQ(h.get_tpr[int(Gpr::kEdi)], va + TPRD_BLOB_GET_TPR_EDI);
  EXPECT_EQ(h.and_tpr_zero, va + TPRD_BLOB_AND_TPR_ZERO);

  auto standalone = HandlerTableForBlob(va);
  ASSERT_TRUE(standalone.ok());
  EXPECT_EQ(standalone->set_tpr, h.set_tpr);
  EXPECT_EQ(standalone->get_tpr_stack, h.get_tpr_stack);
  EXPECT_EQ(standalone->and_tpr_zero, h.and_tpr_zero);
  for (int reg = 0; reg < kGprCount; ++reg) EXPECT_EQ(standalone->get_tpr[reg], h.get_tpr[reg]);
  // The header's own handler table says the same.
  for (int i = 0; i < TPRD_BLOB_HANDLER_COUNT; ++i) {
    const uint32_t slot = LoadU32(blob->bytes, TPRD_BLOB_HDR_HANDLERS + 4 * i);
    if (i == 2 + int(Gpr::kEsp)) {
      EXPECT_EQ(slot, 0u);
    } else {
      EXPECT_TRUE(blob->addresses.InHandlerCode(slot)) << i;
    }
  }
  // Distinct handlers: a get_tpr_<reg> that reuses another's entry would return the wrong reg.
  std::set<uint32_t> distinct = {h.set_tpr, h.set_tpr_eax, h.get_tpr_stack, h.and_tpr_zero};
  for (int reg = 0; reg < kGprCount; ++reg) {
    if (reg != int(Gpr::kEsp)) distinct.insert(h.get_tpr[reg]);
  }
  EXPECT_EQ(distinct.size(), 11u);

  EXPECT_FALSE(HandlerTableForBlob(0x800E8010).ok());
  EXPECT_FALSE(HandlerTableForBlob(0xFFFFF000).ok());
}

TEST(BlobInstantiateTest, RefusesPlacementsTheBlobCannotTake) {
  auto refused = [](std::function<void(BlobPlacement&)> change) {
    BlobPlacement placement = XpPlacement();
    change(placement);
    auto blob = InstantiateBlob(placement);
    return !blob.ok() && blob.status().code() == absl::StatusCode::kInvalidArgument;
  };
  EXPECT_TRUE(refused([](BlobPlacement& p) { p.va += 0x10; }));
  EXPECT_TRUE(refused([](BlobPlacement& p) { p.pa += 0x800; }));
  EXPECT_TRUE(refused([](BlobPlacement& p) { p.va = 0xFFFFE000; }));
  EXPECT_TRUE(refused([](BlobPlacement& p) { p.cpu_count = 0; }));
  EXPECT_TRUE(refused([](BlobPlacement& p) { p.cpu_count = kBlobMaxCpus + 1; }));
  EXPECT_TRUE(refused([](BlobPlacement& p) { p.guard_period = 0; }));
  EXPECT_TRUE(refused([](BlobPlacement& p) { p.guard_period = kBlobMaxGuardPeriod + 1; }));
  EXPECT_TRUE(refused([](BlobPlacement& p) { p.tpr_va = 0xFFFE0084; }));
  EXPECT_TRUE(refused([](BlobPlacement& p) { p.tpr_va = p.va + 0x1080; }));
  EXPECT_TRUE(refused([](BlobPlacement& p) { p.strategy = static_cast<Strategy>(9); }));
  EXPECT_FALSE(refused([](BlobPlacement& p) { p.cpu_count = kBlobMaxCpus; }));
}

Site MakeSite(uint32_t id, Form form, Gpr reg, std::vector<uint8_t> original) {
  Site site;
  site.id = id;
  site.address = 0x80010000 + id * 0x20;
  site.form = form;
  site.reg = reg;
  site.original = std::move(original);
  site.patched.assign(site.original.size(), 0x90);
  site.patched[site.patched.size() - 5] = 0xE8;
  site.state = SiteState::kApplied;
  return site;
}

std::vector<Site> OneSitePerForm() {
  return {
      MakeSite(0, Form::kMovEaxFromMoffs, Gpr::kEax, {0xA1, 0x80, 0x00, 0xFE, 0xFF}),
      MakeSite(1, Form::kMovMoffsFromEax, Gpr::kEax, {0xA3, 0x80, 0x00, 0xFE, 0xFF}),
      MakeSite(2, Form::kMovRegFromMem, Gpr::kEdi, {0x8B, 0x3D, 0x80, 0x00, 0xFE, 0xFF}),
      MakeSite(3, Form::kMovMemFromReg, Gpr::kEcx, {0x89, 0x0D, 0x80, 0x00, 0xFE, 0xFF}),
      MakeSite(4, Form::kMovMemFromImm, Gpr::kEax,
               {0xC7, 0x05, 0x80, 0x00, 0xFE, 0xFF, 0x41, 0x00, 0x00, 0x00}),
      MakeSite(5, Form::kAndMemZero, Gpr::kEax, {0x83, 0x25, 0x80, 0x00, 0xFE, 0xFF, 0x00}),
      MakeSite(255, Form::kPushMem, Gpr::kEax, {0xFF, 0x35, 0x80, 0x00, 0xFE, 0xFF}),
  };
}

TEST(BlobRecordsTest, SiteEntriesRoundTrip) {
  for (Site site : OneSitePerForm()) {
    site.state = SiteState::kPending;
    auto bytes = EncodeSiteEntry(site);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    auto back = DecodeSiteEntry(site.id, *bytes);
    ASSERT_TRUE(back.ok()) << back.status();
    ASSERT_TRUE(back->has_value());
    const Site& decoded = **back;
    EXPECT_EQ(decoded.id, site.id);
    EXPECT_EQ(decoded.address, site.address);
    EXPECT_EQ(decoded.form, site.form);
    EXPECT_EQ(decoded.reg, site.reg);
    EXPECT_EQ(decoded.state, SiteState::kPending);
    EXPECT_EQ(decoded.original, site.original);
    EXPECT_EQ(decoded.patched, site.patched);
    if (site.form == Form::kMovMemFromImm) {
      EXPECT_EQ(decoded.imm, 0x41u);
    }
  }
  std::array<uint8_t, kSiteEntrySize> unused{};
  auto empty = DecodeSiteEntry(7, unused);
  ASSERT_TRUE(empty.ok());
  EXPECT_FALSE(empty->has_value());
}

TEST(BlobRecordsTest, InsaneSiteEntriesAreRefused) {
  const Site good = OneSitePerForm()[2];  // mov edi,[tpr]
  auto refused = [&](std::function<void(Site&)> change) {
    Site site = good;
    change(site);
    return !EncodeSiteEntry(site).ok();
  };
  EXPECT_TRUE(refused([](Site& s) { s.patched.pop_back(); }));
  EXPECT_TRUE(refused([](Site& s) { s.original.clear(), s.patched.clear(); }));
  EXPECT_TRUE(refused([](Site& s) { s.original.resize(11), s.patched.resize(11); }));
  EXPECT_TRUE(refused([](Site& s) { s.form = static_cast<Form>(9); }));
  EXPECT_TRUE(refused([](Site& s) { s.form = Form::kMovMemFromImm; }));  // length 6, not 10
  EXPECT_TRUE(refused([](Site& s) { s.reg = Gpr::kEsp; }));
  EXPECT_TRUE(refused([](Site& s) { s.state = static_cast<SiteState>(4); }));
  EXPECT_TRUE(refused([](Site& s) { s.original[0] = 0x8A; }));
  EXPECT_TRUE(refused([](Site& s) { s.patched[1] = 0x90; }));         // no call rel32
  EXPECT_TRUE(refused([](Site& s) { s.form = Form::kAndMemZero; }));  // length 6, not 7

  // An and site must be the and with 0: the handler writes 0 whatever the immediate says.
  const Site and_zero = OneSitePerForm()[5];
  ASSERT_EQ(and_zero.form, Form::kAndMemZero);
  EXPECT_TRUE(EncodeSiteEntry(and_zero).ok());
  Site and_other = and_zero;
  and_other.original[6] = 0x0F;
  EXPECT_FALSE(EncodeSiteEntry(and_other).ok());
  and_other = and_zero;
  and_other.original[0] = 0x81;
  EXPECT_FALSE(EncodeSiteEntry(and_other).ok());

  auto bytes = EncodeSiteEntry(good);
  ASSERT_TRUE(bytes.ok());
  auto raw = *bytes;
  raw[TPRD_BLOB_SITE_ORIGINAL + 8] = 0xCC;  // a byte past the length
  EXPECT_THAT(std::string(DecodeSiteEntry(2, raw).status().message()), HasSubstr("past"));
  raw = *bytes;
  raw[TPRD_BLOB_SITE_REG] = 8;
  EXPECT_FALSE(DecodeSiteEntry(2, raw).ok());
  EXPECT_FALSE(DecodeSiteEntry(2, absl::MakeConstSpan(raw).subspan(1)).ok());
}

TEST(BlobRecordsTest, PerCpuEntriesRoundTrip) {
  PerCpuEntry entry{
      .shadow_tpr = 0xC1, .enabled = true, .reads_since_check = 0x1234, .mismatches = 0xDEADBEEF};
  const auto bytes = EncodePerCpuEntry(entry);
  EXPECT_EQ(bytes[TPRD_BLOB_PCPU_SHADOW], 0xC1);
  EXPECT_EQ(bytes[TPRD_BLOB_PCPU_ENABLED], 1);
  auto back = DecodePerCpuEntry(bytes);
  ASSERT_TRUE(back.ok());
  EXPECT_EQ(*back, entry);
  EXPECT_FALSE(DecodePerCpuEntry(absl::MakeConstSpan(bytes).subspan(1)).ok());
}

// A blob as a guest would hold it after an apply: CPUs enabled, a few sites recorded.
std::vector<uint8_t> LivedInBlob(const BlobPlacement& placement) {
  auto blob = InstantiateBlob(placement);
  EXPECT_TRUE(blob.ok());
  std::vector<uint8_t> bytes = blob->bytes;
  for (uint32_t cpu = 0; cpu < placement.cpu_count; ++cpu) {
    auto entry = EncodePerCpuEntry({.shadow_tpr = static_cast<uint8_t>(0x10 * cpu),
                                    .enabled = true,
                                    .reads_since_check = static_cast<uint16_t>(cpu),
                                    .mismatches = 0});
    std::copy(entry.begin(), entry.end(), bytes.begin() + TPRD_BLOB_PERCPU_AREA + cpu * 8);
  }
  for (const Site& site : OneSitePerForm()) {
    auto entry = EncodeSiteEntry(site);
    EXPECT_TRUE(entry.ok());
    std::copy(entry->begin(), entry->end(),
              bytes.begin() + TPRD_BLOB_SITE_TABLE + site.id * kSiteEntrySize);
  }
  return bytes;
}

TEST(BlobParseTest, ParseOfInstantiateRoundTrips) {
  for (BlobPlacement placement : SeveralPlacements()) {
    for (Strategy strategy : {Strategy::kExact, Strategy::kMmio, Strategy::kCr8}) {
      placement.strategy = strategy;
      const std::vector<uint8_t> bytes = LivedInBlob(placement);
      auto parsed = ParseBlob(bytes);
      ASSERT_TRUE(parsed.ok()) << parsed.status();
      EXPECT_EQ(parsed->placement.va, placement.va);
      EXPECT_EQ(parsed->placement.pa, placement.pa);
      EXPECT_EQ(parsed->placement.tpr_va, placement.tpr_va);
      EXPECT_EQ(parsed->placement.strategy, strategy);
      EXPECT_EQ(parsed->placement.cpu_count, placement.cpu_count);
      EXPECT_EQ(parsed->placement.guard_period, placement.guard_period);
      EXPECT_TRUE(parsed->matches_this_build);
      EXPECT_EQ(parsed->handlers.set_tpr, placement.va + TPRD_BLOB_SET_TPR);
      EXPECT_EQ(parsed->addresses.code_start, placement.va + TPRD_BLOB_CODE_START);
      ASSERT_EQ(parsed->cpus.size(), placement.cpu_count);
      EXPECT_EQ(parsed->cpus[3].shadow_tpr, 0x30);
      EXPECT_TRUE(parsed->cpus[3].enabled);
      ASSERT_EQ(parsed->sites.size(), OneSitePerForm().size());
      EXPECT_EQ(parsed->sites.back().id, 255u);
      EXPECT_EQ(parsed->sites.back().form, Form::kPushMem);
    }
  }
}

TEST(BlobParseTest, TheGuardFlippingToExactStillParses) {
  std::vector<uint8_t> bytes = LivedInBlob(XpPlacement());
  StoreU32(bytes, TPRD_BLOB_STRATEGY_WORD, TPRD_BLOB_STRATEGY_EXACT);
  StoreU32(bytes, TPRD_BLOB_PERCPU_AREA + TPRD_BLOB_PCPU_MISMATCHES, 3);
  auto parsed = ParseBlob(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->placement.strategy, Strategy::kExact);
  EXPECT_EQ(parsed->cpus[0].mismatches, 3u);
}

struct Corruption {
  const char* name;
  std::function<void(std::vector<uint8_t>&)> apply;
  bool reseal;           // recompute the checksum, so the check under test is the one that fires
  const char* expected;  // part of the reason
};

TEST(BlobParseTest, EveryCorruptionIsRejectedWithAReason) {
  auto set = [](uint32_t offset, uint32_t value) {
    return [=](std::vector<uint8_t>& b) { StoreU32(b, offset, value); };
  };
  const std::vector<Corruption> corruptions = {
      {"magic", set(TPRD_BLOB_HDR_MAGIC, 0x12345678), true, "magic"},
      {"version", set(TPRD_BLOB_HDR_LAYOUT_VERSION, 1), true, "version"},
      {"data block pa mismatch", set(TPRD_BLOB_HDR_DATA_PA, 0x1234), true, "physical address"},
      {"data block elsewhere, not read", set(TPRD_BLOB_HDR_DATA_VA, 0x800C0000), true,
       "data block"},
      {"header size", set(TPRD_BLOB_HDR_HEADER_SIZE, 0x40), true, "header size"},
      {"blob size", set(TPRD_BLOB_HDR_BLOB_SIZE, 0x2000), true, "blob size"},
      {"immutable size", set(TPRD_BLOB_HDR_IMMUTABLE_SIZE, 0x3000), true, "immutable"},
      {"checksum", set(TPRD_BLOB_HDR_CHECKSUM, 0), false, "checksum"},
      {"code byte", [](auto& b) { b[TPRD_BLOB_GET_TPR_EDI] ^= 0x01; }, false, "checksum"},
      {"header byte", [](auto& b) { b[TPRD_BLOB_HDR_CPU_COUNT] = 5; }, false, "checksum"},
      {"strategy offset out of range", set(TPRD_BLOB_HDR_STRATEGY_OFFSET, kBlobSize), true,
       "strategy word"},
      {"strategy offset on code page", set(TPRD_BLOB_HDR_STRATEGY_OFFSET, 0x100), true,
       "strategy word"},
      {"code end past the page", set(TPRD_BLOB_HDR_CODE_END_OFFSET, 0x1800), true, "handler code"},
      {"code end before start", set(TPRD_BLOB_HDR_CODE_END_OFFSET, 0x10), true, "handler code"},
      {"per-CPU area out of range", set(TPRD_BLOB_HDR_PERCPU_OFFSET, 0x2F00), true, "per-CPU area"},
      {"per-CPU max huge", set(TPRD_BLOB_HDR_PERCPU_MAX, 0xFFFFFFFF), true, "per-CPU area"},
      {"per-CPU entry size", set(TPRD_BLOB_HDR_PERCPU_ENTRY_SIZE, 16), true, "per-CPU area"},
      {"site table moved", set(TPRD_BLOB_HDR_SITES_OFFSET, 0x1300), true, "site table"},
      {"sites max too large", set(TPRD_BLOB_HDR_SITES_MAX, 1000), true, "site table"},
      {"site entry size", set(TPRD_BLOB_HDR_SITE_ENTRY_SIZE, 0x80000000), true, "site table"},
      {"cpu count zero", set(TPRD_BLOB_HDR_CPU_COUNT, 0), true, "CPU count"},
      {"cpu count above max", set(TPRD_BLOB_HDR_CPU_COUNT, kBlobMaxCpus + 1), true, "CPU count"},
      {"guard zero", set(TPRD_BLOB_HDR_GUARD_PERIOD, 0), true, "guard"},
      {"blob va unaligned", set(TPRD_BLOB_HDR_BLOB_VA, 0x800E8004), true, "aligned"},
      {"blob va wraps", set(TPRD_BLOB_HDR_BLOB_VA, 0xFFFFF000), true, "4 GiB"},
      {"tpr not at 0x080", set(TPRD_BLOB_HDR_TPR_VA, 0xFFFE0000), true, "TPR"},
      {"handler count", set(TPRD_BLOB_HDR_HANDLER_COUNT, 11), true, "handler count"},
      {"and handler outside code", set(TPRD_BLOB_HDR_HANDLERS + 4 * 11, 0x800E9000), true,
       "handler 11"},
      {"handler outside code", set(TPRD_BLOB_HDR_HANDLERS, 0x800E9000), true, "outside"},
      {"esp handler slot used", set(TPRD_BLOB_HDR_HANDLERS + 4 * (2 + int(Gpr::kEsp)), 0x800E8080),
       true, "handler 6"},
      {"strategy word unknown", set(TPRD_BLOB_STRATEGY_WORD, 7), false, "strategy word"},
      {"site form", [](auto& b) { b[TPRD_BLOB_SITE_TABLE + TPRD_BLOB_SITE_FORM] = 0; }, false,
       "site table entry 0"},
      {"site length", [](auto& b) { b[TPRD_BLOB_SITE_TABLE + TPRD_BLOB_SITE_LENGTH] = 200; }, false,
       "site table entry 0"},
      {"site state", [](auto& b) { b[TPRD_BLOB_SITE_TABLE + TPRD_BLOB_SITE_STATE] = 9; }, false,
       "site table entry 0"},
      {"stray bytes in an unused entry",
       [](auto& b) { b[TPRD_BLOB_SITE_TABLE + 100 * kSiteEntrySize + 3] = 1; }, false,
       "site table entry 100"},
      {"truncated by one", [](auto& b) { b.pop_back(); }, false, "truncated"},
      {"truncated header", [](auto& b) { b.resize(TPRD_BLOB_HEADER_SIZE - 1); }, false,
       "truncated"},
      {"empty", [](auto& b) { b.clear(); }, false, "truncated"},
      {"trailing byte", [](auto& b) { b.push_back(0); }, false, "trailing"},
  };
  for (const Corruption& corruption : corruptions) {
    SCOPED_TRACE(corruption.name);
    std::vector<uint8_t> bytes = LivedInBlob(XpPlacement());
    ASSERT_TRUE(ParseBlob(bytes).ok());
    corruption.apply(bytes);
    if (corruption.reseal) Reseal(bytes);
    auto parsed = ParseBlob(bytes);
    ASSERT_FALSE(parsed.ok());
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kDataLoss);
    EXPECT_THAT(std::string(parsed.status().message()), HasSubstr(corruption.expected));
  }
}

TEST(BlobParseTest, AResealedForeignCodeParsesButDoesNotMatchThisBuild) {
  std::vector<uint8_t> bytes = LivedInBlob(XpPlacement());
  bytes[TPRD_BLOB_CODE_END - 1] = 0xC2;  // some other build's code
  Reseal(bytes);
  auto parsed = ParseBlob(bytes);
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_FALSE(parsed->matches_this_build);
}

// ---- static checks of the handler code with Zydis -------------------------------------------

class HandlerCodeChecker {
 public:
  explicit HandlerCodeChecker(const BlobInstance& blob) : blob_(blob) {
    ZydisDecoderInit(&decoder_, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32);
  }

  // Walks every path from `entry`; records a failure for any rule broken on the way.
  // `interrupts_off_at_entry`: called under its caller's cli (it must return that way too).
  void CheckFunction(uint32_t entry, uint16_t expected_ret_imm, const std::string& name,
                     bool interrupts_off_at_entry = false) {
    if (std::count(call_stack_.begin(), call_stack_.end(), entry)) {
      Fail(name, entry, "calls itself (directly or through others)");
      return;
    }
    call_stack_.push_back(entry);
    struct State {
      uint32_t address;
      int depth;            // bytes pushed since entry
      bool interrupts_off;  // a cli since the last popf
    };
    std::vector<State> work = {{entry, 0, interrupts_off_at_entry}};
    std::map<uint32_t, std::pair<int, bool>> seen;
    while (!work.empty()) {
      State state = work.back();
      work.pop_back();
      if (auto it = seen.find(state.address); it != seen.end()) {
        if (it->second != std::make_pair(state.depth, state.interrupts_off)) {
          Fail(name, state.address, "reached with different stack depths or interrupt states");
        }
        continue;
      }
      seen[state.address] = {state.depth, state.interrupts_off};
      if (!blob_.addresses.InHandlerCode(state.address)) {
        Fail(name, state.address, "runs outside the handler code");
        continue;
      }
      const uint32_t offset = state.address - blob_.addresses.va;
      // Zydis rejects LOCK on mov to cr0; AMD's AltMovCr8 makes it mov cr8, r32 (no memory, no
      // stack effect). Accept exactly that encoding.
      if (state.address + 4 <= blob_.addresses.code_end && blob_.bytes[offset] == 0xF0 &&
          blob_.bytes[offset + 1] == 0x0F && blob_.bytes[offset + 2] == 0x22 &&
          (blob_.bytes[offset + 3] & 0xF8) == 0xC0) {
        ++instructions_checked_;
        ++cr8_writes_seen_;
        work.push_back({state.address + 4, state.depth, state.interrupts_off});
        continue;
      }
      ZydisDecodedInstruction insn;
      ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
      if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder_, blob_.bytes.data() + offset,
                                               blob_.addresses.code_end - state.address, &insn,
                                               ops))) {
        Fail(name, state.address, "does not decode");
        continue;
      }
      ++instructions_checked_;
      CheckMemoryOperands(name, state.address, insn, ops, state.interrupts_off);
      const uint32_t next = state.address + insn.length;
      uint32_t target = 0;
      const bool relative = insn.operand_count_visible == 1 &&
                            ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE && ops[0].imm.is_relative;
      if (relative) {
        ZyanU64 absolute = 0;
        ZydisCalcAbsoluteAddress(&insn, &ops[0], state.address, &absolute);
        target = static_cast<uint32_t>(absolute);
      }
      switch (insn.mnemonic) {
        case ZYDIS_MNEMONIC_PUSH:
        case ZYDIS_MNEMONIC_PUSHFD:
          work.push_back({next, state.depth + 4, state.interrupts_off});
          continue;
        case ZYDIS_MNEMONIC_POP:
          work.push_back({next, state.depth - 4, state.interrupts_off});
          continue;
        case ZYDIS_MNEMONIC_POPFD:
          work.push_back({next, state.depth - 4, false});
          continue;
        case ZYDIS_MNEMONIC_CLI:
          work.push_back({next, state.depth, true});
          continue;
        case ZYDIS_MNEMONIC_CALL:
          if (!relative) {
            Fail(name, state.address, "indirect call");
            continue;
          }
          CheckFunction(target, 0, name + ">" + absl::StrFormat("%x", target),
                        state.interrupts_off);
          work.push_back({next, state.depth, state.interrupts_off});
          continue;
        case ZYDIS_MNEMONIC_RET: {
          const uint16_t imm =
              insn.operand_count_visible == 1 ? static_cast<uint16_t>(ops[0].imm.value.u) : 0;
          ++returns_checked_;
          if (imm != expected_ret_imm) Fail(name, state.address, "wrong ret immediate");
          if (state.depth != 0) Fail(name, state.address, "stack not balanced at ret");
          if (state.interrupts_off != interrupts_off_at_entry) {
            Fail(name, state.address,
                 state.interrupts_off ? "returns with the cli in force"
                                      : "returns with interrupts on, called under a cli");
          }
          continue;
        }
        default:
          break;
      }
      if (insn.meta.category == ZYDIS_CATEGORY_UNCOND_BR ||
          insn.meta.category == ZYDIS_CATEGORY_COND_BR) {
        if (!relative) {
          Fail(name, state.address, "indirect jump");
          continue;
        }
        work.push_back({target, state.depth, state.interrupts_off});
        if (insn.meta.category == ZYDIS_CATEGORY_COND_BR) {
          work.push_back({next, state.depth, state.interrupts_off});
        }
        continue;
      }
      for (int i = 0; i < insn.operand_count; ++i) {
        if (ops[i].type == ZYDIS_OPERAND_TYPE_REGISTER && ops[i].reg.value == ZYDIS_REGISTER_ESP &&
            (ops[i].actions & ZYDIS_OPERAND_ACTION_MASK_WRITE)) {
          Fail(name, state.address, "changes esp other than by push/pop");
        }
      }
      work.push_back({next, state.depth, state.interrupts_off});
    }
    call_stack_.pop_back();
  }

  const std::vector<std::string>& failures() const { return failures_; }
  int instructions_checked() const { return instructions_checked_; }
  int returns_checked() const { return returns_checked_; }
  int cr8_writes_seen() const { return cr8_writes_seen_; }

 private:
  void CheckMemoryOperands(const std::string& name, uint32_t address,
                           const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops,
                           bool interrupts_off) {
    for (int i = 0; i < insn.operand_count; ++i) {
      const ZydisDecodedOperand& op = ops[i];
      if (op.type != ZYDIS_OPERAND_TYPE_MEMORY) continue;
      if (op.mem.type == ZYDIS_MEMOP_TYPE_AGEN) continue;  // lea computes, does not access
      const bool writes = op.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE;
      const uint32_t disp = static_cast<uint32_t>(op.mem.disp.value);
      const bool absolute =
          op.mem.base == ZYDIS_REGISTER_NONE && op.mem.index == ZYDIS_REGISTER_NONE;
      if (op.mem.segment == ZYDIS_REGISTER_FS && !interrupts_off) {
        Fail(name, address, "reads fs:[...] without cli");
      }
      // ebx holds the per-CPU entry pointer: only touched with interrupts off, within an entry
      // or within its counters (PCPU_STATS_DELTA further on).
      if (op.mem.base == ZYDIS_REGISTER_EBX) {
        if (!interrupts_off) Fail(name, address, "touches the per-CPU entry without cli");
        const bool in_entry = disp < kPerCpuEntrySize;
        const bool in_stats = disp >= uint32_t{TPRD_BLOB_PCPU_STATS_DELTA} &&
                              disp < uint32_t{TPRD_BLOB_PCPU_STATS_DELTA} + kPerCpuStatsSize;
        if (op.mem.index != ZYDIS_REGISTER_NONE || !(in_entry || in_stats)) {
          Fail(name, address, "ebx-relative access outside a per-CPU entry");
        }
      }
      // The fast read paths index the per-CPU area (and its counters) by the CPU number:
      // [percpu_area + field + cpu*8], with interrupts off and within one entry's fields.
      const bool per_cpu_indexed = op.mem.base == ZYDIS_REGISTER_NONE &&
                                   op.mem.index != ZYDIS_REGISTER_NONE &&
                                   op.mem.segment != ZYDIS_REGISTER_FS;
      if (per_cpu_indexed) {
        if (!interrupts_off) Fail(name, address, "indexes the per-CPU area without cli");
        const bool in_entry = disp >= blob_.addresses.percpu_area &&
                              disp < blob_.addresses.percpu_area + kPerCpuEntrySize;
        const bool in_stats = disp >= blob_.addresses.percpu_stats &&
                              disp < blob_.addresses.percpu_stats + kPerCpuStatsSize;
        if (op.mem.scale != kPerCpuEntrySize || !(in_entry || in_stats)) {
          Fail(name, address, "indexed access that is not a per-CPU entry field");
        }
      }
      if (!writes) continue;
      if (op.mem.base == ZYDIS_REGISTER_ESP || op.mem.base == ZYDIS_REGISTER_EBX ||
          per_cpu_indexed) {
        continue;
      }
      if (absolute && op.mem.segment != ZYDIS_REGISTER_FS &&
          ((disp >= blob_.addresses.data_start && disp < blob_.addresses.end) ||
           disp == tpr_va())) {
        continue;
      }
      // The TPR store through the data block's write address: mov ecx, [tpr_write_va] (8B 0D
      // imm32) right before mov [ecx], r32.
      if (op.mem.base == ZYDIS_REGISTER_ECX && op.mem.index == ZYDIS_REGISTER_NONE && disp == 0 &&
          LoadsTprWritePointerIntoEcx(address - 6)) {
        continue;
      }
      Fail(name, address, absl::StrFormat("stores to 0x%08x (code page or unknown)", disp));
    }
  }

  uint32_t tpr_va() const { return LoadU32(blob_.bytes, TPRD_BLOB_HDR_TPR_VA); }

  bool LoadsTprWritePointerIntoEcx(uint32_t address) const {
    if (address < blob_.addresses.code_start || address + 6 > blob_.addresses.code_end) {
      return false;
    }
    const uint32_t offset = address - blob_.addresses.va;
    return blob_.bytes[offset] == 0x8B && blob_.bytes[offset + 1] == 0x0D &&
           LoadU32(blob_.bytes, offset + 2) == blob_.addresses.tpr_write_va;
  }

  void Fail(const std::string& name, uint32_t address, const std::string& what) {
    failures_.push_back(absl::StrFormat("%s at 0x%08x: %s", name, address, what));
  }

  const BlobInstance& blob_;
  ZydisDecoder decoder_;
  std::vector<uint32_t> call_stack_;
  std::vector<std::string> failures_;
  int instructions_checked_ = 0;
  int returns_checked_ = 0;
  int cr8_writes_seen_ = 0;
};

TEST(BlobHandlerCodeTest, HandlersFollowTheStructuralRules) {
  for (Strategy strategy : {Strategy::kExact, Strategy::kMmio, Strategy::kCr8}) {
    BlobPlacement placement = XpPlacement();
    placement.strategy = strategy;
    auto blob = InstantiateBlob(placement);
    ASSERT_TRUE(blob.ok());
    HandlerCodeChecker checker(*blob);
    const HandlerTable& h = blob->handlers;
    checker.CheckFunction(h.set_tpr, 4, "set_tpr");
    checker.CheckFunction(h.set_tpr_eax, 0, "set_tpr_eax");
    checker.CheckFunction(h.get_tpr_stack, 0, "get_tpr_stack");
    checker.CheckFunction(h.and_tpr_zero, 0, "and_tpr_zero");
    for (int reg = 0; reg < kGprCount; ++reg) {
      if (reg == int(Gpr::kEsp)) continue;
      checker.CheckFunction(h.get_tpr[reg], 0,
                            "get_tpr_" + std::string(GprName(static_cast<Gpr>(reg))));
    }
    EXPECT_THAT(checker.failures(), ::testing::IsEmpty());
    EXPECT_GT(checker.instructions_checked(), 50);
    EXPECT_GE(checker.returns_checked(), 10);
    EXPECT_GT(checker.cr8_writes_seen(), 0);
  }
}

TEST(BlobHandlerCodeTest, CheckerCatchesASelfCallingHandler) {
  // QEMU's get_tpr_edi called itself. Build that defect into a copy: get_tpr_edi's call (on
  // its slow path) now targets get_tpr_edi. The checker must notice (else the test above proves
  // nothing).
  auto blob = InstantiateBlob(XpPlacement());
  ASSERT_TRUE(blob.ok());
  ZydisDecoder decoder;
  ZydisDecoderInit(&decoder, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32);
  uint32_t call_offset = TPRD_BLOB_GET_TPR_EDI;
  for (;;) {  // the first call in straight-line order from the entry
    ASSERT_LT(call_offset, TPRD_BLOB_CODE_END) << "get_tpr_edi calls nothing";
    ZydisDecodedInstruction insn;
    ASSERT_TRUE(ZYAN_SUCCESS(
        ZydisDecoderDecodeInstruction(&decoder, nullptr, blob->bytes.data() + call_offset,
                                      TPRD_BLOB_CODE_END - call_offset, &insn)));
    if (insn.mnemonic == ZYDIS_MNEMONIC_CALL) break;
    call_offset += insn.length;
  }
  ASSERT_EQ(blob->bytes[call_offset], 0xE8);
  StoreU32(blob->bytes, call_offset + 1, TPRD_BLOB_GET_TPR_EDI - (call_offset + 5));
  HandlerCodeChecker checker(*blob);
  checker.CheckFunction(blob->handlers.get_tpr[int(Gpr::kEdi)], 0, "get_tpr_edi");
  EXPECT_THAT(checker.failures(), ::testing::Contains(HasSubstr("calls itself")));
}

TEST(BlobHandlerCodeTest, CheckerCatchesAFastPathWithoutCli) {
  // get_tpr_eax's fast path starts pushf; cli. With the cli made a nop, its fs:[0x51] read and
  // its indexed per-CPU accesses run with interrupts on; the checker must say so.
  auto blob = InstantiateBlob(XpPlacement());
  ASSERT_TRUE(blob.ok());
  ASSERT_EQ(blob->bytes[TPRD_BLOB_GET_TPR_EAX], 0x9C);      // pushf
  ASSERT_EQ(blob->bytes[TPRD_BLOB_GET_TPR_EAX + 1], 0xFA);  // cli
  blob->bytes[TPRD_BLOB_GET_TPR_EAX + 1] = 0x90;
  HandlerCodeChecker checker(*blob);
  checker.CheckFunction(blob->handlers.get_tpr[int(Gpr::kEax)], 0, "get_tpr_eax");
  EXPECT_THAT(checker.failures(), ::testing::Contains(HasSubstr("fs:[...] without cli")));
  EXPECT_THAT(checker.failures(),
              ::testing::Contains(HasSubstr("indexes the per-CPU area without cli")));
}

TEST(BlobHandlerCodeTest, CheckerCatchesAStoreIntoTheCodePage) {
  auto blob = InstantiateBlob(XpPlacement());
  ASSERT_TRUE(blob.ok());
  // Redirect the guard's "flip to exact" store (mov dword [strategy_word], 0) to the header.
  bool redirected = false;
  for (uint32_t offset : tprd_blob_base_relocs) {
    if (offset >= TPRD_BLOB_CODE_START && blob->bytes[offset - 2] == 0xC7 &&
        LoadU32(blob->bytes, offset) == blob->addresses.strategy_word) {
      StoreU32(blob->bytes, offset, blob->addresses.va + TPRD_BLOB_HDR_CPU_COUNT);
      redirected = true;
    }
  }
  ASSERT_TRUE(redirected);
  HandlerCodeChecker checker(*blob);
  checker.CheckFunction(blob->handlers.get_tpr[int(Gpr::kEax)], 0, "get_tpr_eax");
  EXPECT_THAT(checker.failures(), ::testing::Contains(HasSubstr("code page")));
}

// ---- what the handlers leave: every path run symbolically, per strategy ---------------------
//
// The structural checker above proves the shape of the code; this one runs every path from an
// entry point (into the internal routines and back) on symbolic values: each register holds its
// value at entry, zero, or something unknown; EFLAGS hold the caller's flags, the flags of a
// zero result (CF OF SF AF = 0, ZF PF = 1: what `and dword [tpr], 0` leaves, AF as QEMU's TCG
// gives it), a comparison of the strategy word with a constant, or something unknown. The
// strategy word is the blob's, so a branch on it takes the strategy's way; every other branch
// (CPU in range, enabled, guard due) takes both. At each return to the caller the test checks
// the contract: registers, flags, stack, and what the path wrote to the shadow, the TPR or CR8.

struct Sym {
  enum class Kind {
    kUnknown,
    kZero,
    kEntryReg,      // n = the register
    kCallerSlot,    // a caller's stack slot, n = index from the bottom
    kCallerReturn,  // the caller's return address
    kReturn,        // an internal call's return address n
    kEntryFlags,    // EFLAGS as at entry (IF aside: the structural checker watches cli/popf)
    kZeroFlags,     // CF OF SF AF = 0, ZF PF = 1, the rest as at entry
    kStrategyCmp,   // flags of cmp strategy_word, n
    kTprPointer,    // the data block's TPR write address (the TPR or tprd's alias of it)
  };
  Kind kind = Kind::kUnknown;
  uint32_t n = 0;
  bool IsFlags() const {
    return kind == Kind::kEntryFlags || kind == Kind::kZeroFlags || kind == Kind::kStrategyCmp;
  }
  friend bool operator==(const Sym&, const Sym&) = default;
};

std::string SymName(const Sym& v) {
  switch (v.kind) {
    case Sym::Kind::kUnknown:
      return "unknown";
    case Sym::Kind::kZero:
      return "zero";
    case Sym::Kind::kEntryReg:
      return absl::StrFormat("entry %s", std::string(GprName(static_cast<Gpr>(v.n))));
    case Sym::Kind::kCallerSlot:
      return absl::StrFormat("caller slot %u", v.n);
    case Sym::Kind::kCallerReturn:
      return "caller return";
    case Sym::Kind::kReturn:
      return absl::StrFormat("return to 0x%x", v.n);
    case Sym::Kind::kEntryFlags:
      return "entry flags";
    case Sym::Kind::kZeroFlags:
      return "flags of a zero result";
    case Sym::Kind::kStrategyCmp:
      return absl::StrFormat("flags of cmp strategy, %u", v.n);
    case Sym::Kind::kTprPointer:
      return "the TPR write address";
  }
  return "?";
}

struct TprEvent {
  // kTprLoad: an MMIO read of the TPR. kCountNoApic / kCountApic: an increment of this CPU's
  // access counters (percpu_stats).
  enum class Kind { kShadowStore, kTprStore, kCr8Write, kTprLoad, kCountNoApic, kCountApic };
  Kind kind;
  Sym value;
};

struct SymPath {
  uint32_t eip = 0;
  std::array<Sym, kGprCount> regs;
  Sym flags{Sym::Kind::kEntryFlags};
  std::vector<Sym> stack;  // back() is [esp]
  std::vector<TprEvent> events;
  int steps = 0;
};

struct SymEnd {
  SymPath path;
  size_t caller_slots_left = 0;
};

class SymbolicRunner {
 public:
  SymbolicRunner(const BlobInstance& blob, Strategy strategy) : blob_(blob), strategy_(strategy) {
    ZydisDecoderInit(&decoder_, ZYDIS_MACHINE_MODE_LEGACY_32, ZYDIS_STACK_WIDTH_32);
  }

  // Every path from `entry` to its return to the caller, which pushed `caller_slots` dwords
  // before the call (1 for set_tpr's value and get_tpr_stack's slot).
  std::vector<SymEnd> Run(uint32_t entry, size_t caller_slots, const std::string& name) {
    SymPath start;
    start.eip = entry;
    for (uint32_t r = 0; r < kGprCount; ++r) start.regs[r] = {Sym::Kind::kEntryReg, r};
    for (uint32_t i = 0; i < caller_slots; ++i) start.stack.push_back({Sym::Kind::kCallerSlot, i});
    start.stack.push_back({Sym::Kind::kCallerReturn});
    std::vector<SymPath> work = {start};
    std::vector<SymEnd> ends;
    while (!work.empty()) {
      SymPath path = std::move(work.back());
      work.pop_back();
      Step(std::move(path), name, work, ends);
    }
    return ends;
  }

  const std::vector<std::string>& failures() const { return failures_; }

 private:
  static constexpr ZydisRegister kGprRegs[kGprCount] = {
      ZYDIS_REGISTER_EAX, ZYDIS_REGISTER_ECX, ZYDIS_REGISTER_EDX, ZYDIS_REGISTER_EBX,
      ZYDIS_REGISTER_ESP, ZYDIS_REGISTER_EBP, ZYDIS_REGISTER_ESI, ZYDIS_REGISTER_EDI};

  // The 32-bit register that holds `reg` (al, ax, eax -> 0), or -1.
  static int GprIndex(ZydisRegister reg) {
    const ZydisRegister full = ZydisRegisterGetLargestEnclosing(ZYDIS_MACHINE_MODE_LEGACY_32, reg);
    for (int i = 0; i < kGprCount; ++i) {
      if (kGprRegs[i] == full) return i;
    }
    return -1;
  }

  // A register operand's value: a part of a zero register is zero; a part of anything else is
  // only known when it is the whole register.
  static Sym RegValue(const SymPath& path, ZydisRegister reg) {
    const int index = GprIndex(reg);
    if (index < 0) return {};
    const Sym& whole = path.regs[index];
    if (whole.kind == Sym::Kind::kZero) return whole;
    return reg == kGprRegs[index] ? whole : Sym{};
  }

  // The stack slot an esp-relative operand names, or nullptr.
  static Sym* StackSlot(SymPath& path, const ZydisDecodedOperand& op) {
    if (op.type != ZYDIS_OPERAND_TYPE_MEMORY || op.mem.base != ZYDIS_REGISTER_ESP ||
        op.mem.index != ZYDIS_REGISTER_NONE) {
      return nullptr;
    }
    const uint32_t disp = static_cast<uint32_t>(op.mem.disp.value);
    if (disp % 4 != 0 || disp / 4 >= path.stack.size()) return nullptr;
    return &path.stack[path.stack.size() - 1 - disp / 4];
  }

  Sym OperandValue(SymPath& path, const ZydisDecodedOperand& op) {
    switch (op.type) {
      case ZYDIS_OPERAND_TYPE_REGISTER:
        return RegValue(path, op.reg.value);
      case ZYDIS_OPERAND_TYPE_IMMEDIATE:
        return op.imm.value.u == 0 ? Sym{Sym::Kind::kZero} : Sym{};
      case ZYDIS_OPERAND_TYPE_MEMORY:
        if (Sym* slot = StackSlot(path, op)) return *slot;
        if (op.mem.base == ZYDIS_REGISTER_NONE && op.mem.index == ZYDIS_REGISTER_NONE &&
            op.mem.segment != ZYDIS_REGISTER_FS && op.size == 32 &&
            static_cast<uint32_t>(op.mem.disp.value) == blob_.addresses.tpr_write_va) {
          return {Sym::Kind::kTprPointer};
        }
        return {};
      default:
        return {};
    }
  }

  void Fail(const std::string& name, uint32_t address, const std::string& what) {
    failures_.push_back(absl::StrFormat("%s at 0x%08x: %s", name, address, what));
  }

  // A store to memory: the stack slot it names, or a shadow/TPR event.
  void Store(SymPath& path, const ZydisDecodedOperand& op, Sym value) {
    if (Sym* slot = StackSlot(path, op)) {
      *slot = value;
      return;
    }
    const uint32_t disp = static_cast<uint32_t>(op.mem.disp.value);
    const bool absolute = op.mem.base == ZYDIS_REGISTER_NONE && op.mem.index == ZYDIS_REGISTER_NONE;
    if (absolute && op.mem.segment != ZYDIS_REGISTER_FS &&
        disp == LoadU32(blob_.bytes, TPRD_BLOB_HDR_TPR_VA)) {
      path.events.push_back({TprEvent::Kind::kTprStore, value});
    }
    const int base = GprIndex(op.mem.base);
    if (base >= 0 && op.mem.index == ZYDIS_REGISTER_NONE && disp == 0 &&
        path.regs[base].kind == Sym::Kind::kTprPointer) {
      path.events.push_back({TprEvent::Kind::kTprStore, value});
    }
    const bool shadow_by_pointer = op.mem.base == ZYDIS_REGISTER_EBX &&
                                   op.mem.index == ZYDIS_REGISTER_NONE &&
                                   disp == TPRD_BLOB_PCPU_SHADOW;
    const bool shadow_by_index = op.mem.base == ZYDIS_REGISTER_NONE &&
                                 op.mem.index != ZYDIS_REGISTER_NONE &&
                                 disp == blob_.addresses.percpu_area + TPRD_BLOB_PCPU_SHADOW;
    if ((shadow_by_pointer || shadow_by_index) && op.size == 8) {
      path.events.push_back({TprEvent::Kind::kShadowStore, value});
    }
    // The access counters, by the entry pointer or indexed by the CPU number.
    for (const auto& [field, kind] :
         {std::pair{uint32_t{TPRD_BLOB_PCPU_STAT_NO_APIC}, TprEvent::Kind::kCountNoApic},
          std::pair{uint32_t{TPRD_BLOB_PCPU_STAT_APIC}, TprEvent::Kind::kCountApic}}) {
      const bool by_pointer = op.mem.base == ZYDIS_REGISTER_EBX &&
                              op.mem.index == ZYDIS_REGISTER_NONE &&
                              disp == uint32_t{TPRD_BLOB_PCPU_STATS_DELTA} + field;
      const bool by_index = op.mem.base == ZYDIS_REGISTER_NONE &&
                            op.mem.index != ZYDIS_REGISTER_NONE &&
                            disp == blob_.addresses.percpu_stats + field;
      if (by_pointer || by_index) path.events.push_back({kind, {}});
    }
  }

  // A read of the TPR's own address: an MMIO access.
  void Load(SymPath& path, const ZydisDecodedOperand& op) {
    if (op.type != ZYDIS_OPERAND_TYPE_MEMORY || op.mem.type == ZYDIS_MEMOP_TYPE_AGEN ||
        !(op.actions & ZYDIS_OPERAND_ACTION_MASK_READ)) {
      return;
    }
    if (op.mem.base == ZYDIS_REGISTER_NONE && op.mem.index == ZYDIS_REGISTER_NONE &&
        op.mem.segment != ZYDIS_REGISTER_FS &&
        static_cast<uint32_t>(op.mem.disp.value) == LoadU32(blob_.bytes, TPRD_BLOB_HDR_TPR_VA)) {
      path.events.push_back({TprEvent::Kind::kTprLoad, {}});
    }
  }

  void Step(SymPath path, const std::string& name, std::vector<SymPath>& work,
            std::vector<SymEnd>& ends) {
    for (;;) {
      if (++path.steps > 500) return Fail(name, path.eip, "path longer than 500 instructions");
      if (!blob_.addresses.InHandlerCode(path.eip)) {
        return Fail(name, path.eip, "runs outside the handler code");
      }
      const uint32_t offset = path.eip - blob_.addresses.va;
      const uint8_t* code = blob_.bytes.data() + offset;
      // lock mov cr0, r32 = mov cr8, r32 (AltMovCr8): the real TPR gets r32's low nibble << 4.
      if (path.eip + 4 <= blob_.addresses.code_end && code[0] == 0xF0 && code[1] == 0x0F &&
          code[2] == 0x22 && (code[3] & 0xF8) == 0xC0) {
        path.events.push_back({TprEvent::Kind::kCr8Write, path.regs[code[3] & 7]});
        path.eip += 4;
        continue;
      }
      ZydisDecodedInstruction insn;
      ZydisDecodedOperand ops[ZYDIS_MAX_OPERAND_COUNT];
      if (!ZYAN_SUCCESS(ZydisDecoderDecodeFull(&decoder_, code, blob_.addresses.code_end - path.eip,
                                               &insn, ops))) {
        return Fail(name, path.eip, "does not decode");
      }
      const uint32_t here = path.eip;
      const uint32_t next = here + insn.length;
      uint32_t target = 0;
      if (insn.operand_count_visible == 1 && ops[0].type == ZYDIS_OPERAND_TYPE_IMMEDIATE &&
          ops[0].imm.is_relative) {
        ZyanU64 absolute = 0;
        ZydisCalcAbsoluteAddress(&insn, &ops[0], here, &absolute);
        target = static_cast<uint32_t>(absolute);
      }
      auto pop = [&]() -> std::optional<Sym> {
        if (path.stack.empty()) {
          Fail(name, here, "pops below the caller's stack");
          return std::nullopt;
        }
        Sym top = path.stack.back();
        path.stack.pop_back();
        return top;
      };
      path.eip = next;
      switch (insn.mnemonic) {
        case ZYDIS_MNEMONIC_PUSH:
          path.stack.push_back(OperandValue(path, ops[0]));
          continue;
        case ZYDIS_MNEMONIC_PUSHFD:
          path.stack.push_back(path.flags);
          continue;
        case ZYDIS_MNEMONIC_POP: {
          std::optional<Sym> top = pop();
          if (!top) return;
          const int index = GprIndex(ops[0].reg.value);
          if (ops[0].type != ZYDIS_OPERAND_TYPE_REGISTER || index < 0) {
            return Fail(name, here, "pop into something other than a register");
          }
          path.regs[index] = top->IsFlags() ? Sym{} : *top;
          continue;
        }
        case ZYDIS_MNEMONIC_POPFD: {
          std::optional<Sym> top = pop();
          if (!top) return;
          path.flags = top->IsFlags() ? *top : Sym{};
          continue;
        }
        case ZYDIS_MNEMONIC_CALL:
          path.stack.push_back({Sym::Kind::kReturn, next});
          path.eip = target;
          continue;
        case ZYDIS_MNEMONIC_RET: {
          std::optional<Sym> top = pop();
          if (!top) return;
          const uint32_t args =
              insn.operand_count_visible == 1 ? static_cast<uint32_t>(ops[0].imm.value.u) / 4 : 0;
          if (top->kind == Sym::Kind::kReturn) {
            for (uint32_t i = 0; i < args; ++i) {
              if (!pop()) return;
            }
            path.eip = top->n;
            continue;
          }
          if (top->kind != Sym::Kind::kCallerReturn) {
            return Fail(name, here, "returns to " + SymName(*top));
          }
          SymEnd end;
          for (uint32_t i = 0; i < args; ++i) {
            std::optional<Sym> arg = pop();
            if (!arg) return;
            if (arg->kind != Sym::Kind::kCallerSlot) return Fail(name, here, "stack not balanced");
          }
          for (const Sym& slot : path.stack) {
            if (slot.kind != Sym::Kind::kCallerSlot && slot.kind != Sym::Kind::kUnknown) {
              return Fail(name, here, "returns with its own stack slots left");
            }
          }
          end.caller_slots_left = path.stack.size();
          end.path = std::move(path);
          ends.push_back(std::move(end));
          return;
        }
        case ZYDIS_MNEMONIC_JMP:
          path.eip = target;
          continue;
        default:
          break;
      }
      if (insn.meta.category == ZYDIS_CATEGORY_COND_BR) {
        // A branch on cmp strategy_word, K: the blob's strategy decides je/jne.
        if (path.flags.kind == Sym::Kind::kStrategyCmp &&
            (insn.mnemonic == ZYDIS_MNEMONIC_JZ || insn.mnemonic == ZYDIS_MNEMONIC_JNZ)) {
          const bool equal = static_cast<uint32_t>(strategy_) == path.flags.n;
          const bool taken = (insn.mnemonic == ZYDIS_MNEMONIC_JZ) == equal;
          path.eip = taken ? target : next;
          continue;
        }
        SymPath branch = path;
        branch.eip = target;
        work.push_back(std::move(branch));
        continue;
      }
      Execute(path, insn, ops);
    }
  }

  // Everything that is neither stack nor control flow.
  void Execute(SymPath& path, const ZydisDecodedInstruction& insn, const ZydisDecodedOperand* ops) {
    const ZydisDecodedOperand& dst = ops[0];
    const bool two = insn.operand_count_visible == 2;
    const bool same_regs = two && dst.type == ZYDIS_OPERAND_TYPE_REGISTER &&
                           ops[1].type == ZYDIS_OPERAND_TYPE_REGISTER &&
                           dst.reg.value == ops[1].reg.value;
    std::optional<Sym> result;  // the new value of a register destination, if modelled
    std::optional<Sym> flags;   // the new flags, if modelled
    switch (insn.mnemonic) {
      case ZYDIS_MNEMONIC_MOV:
        result = OperandValue(path, ops[1]);
        break;
      case ZYDIS_MNEMONIC_MOVZX:
        result =
            OperandValue(path, ops[1]).kind == Sym::Kind::kZero ? Sym{Sym::Kind::kZero} : Sym{};
        break;
      case ZYDIS_MNEMONIC_SUB:
        // sub r,r: 0, and all six status flags defined (AF too: no borrow from bit 3).
        if (same_regs) result = Sym{Sym::Kind::kZero}, flags = Sym{Sym::Kind::kZeroFlags};
        break;
      case ZYDIS_MNEMONIC_XOR:
        if (same_regs) result = Sym{Sym::Kind::kZero};  // AF undefined: flags unknown
        break;
      case ZYDIS_MNEMONIC_CMP:
        if (same_regs) flags = Sym{Sym::Kind::kZeroFlags};
        if (two && dst.type == ZYDIS_OPERAND_TYPE_MEMORY && dst.mem.base == ZYDIS_REGISTER_NONE &&
            dst.mem.index == ZYDIS_REGISTER_NONE &&
            static_cast<uint32_t>(dst.mem.disp.value) == blob_.addresses.strategy_word &&
            ops[1].type == ZYDIS_OPERAND_TYPE_IMMEDIATE) {
          flags = Sym{Sym::Kind::kStrategyCmp, static_cast<uint32_t>(ops[1].imm.value.u)};
        }
        break;
      case ZYDIS_MNEMONIC_SHR:
      case ZYDIS_MNEMONIC_SHL:
      case ZYDIS_MNEMONIC_SAR:
        if (OperandValue(path, dst).kind == Sym::Kind::kZero) result = Sym{Sym::Kind::kZero};
        break;
      default:
        break;
    }
    for (int i = 0; i < insn.operand_count; ++i) Load(path, ops[i]);
    // Registers and memory the instruction writes.
    for (int i = 0; i < insn.operand_count; ++i) {
      const ZydisDecodedOperand& op = ops[i];
      if (!(op.actions & ZYDIS_OPERAND_ACTION_MASK_WRITE)) continue;
      if (op.type == ZYDIS_OPERAND_TYPE_REGISTER) {
        const int index = GprIndex(op.reg.value);
        if (index < 0 || index == int(Gpr::kEsp)) continue;
        const bool whole = op.reg.value == kGprRegs[index];
        path.regs[index] = (i == 0 && result && whole) ? *result : Sym{};
      } else if (op.type == ZYDIS_OPERAND_TYPE_MEMORY && op.mem.type != ZYDIS_MEMOP_TYPE_AGEN) {
        Store(path, op, i == 0 && result ? *result : Sym{});
      }
    }
    // EFLAGS: any status flag, DF or TF written and not modelled makes them unknown.
    constexpr uint32_t kTracked = ZYDIS_CPUFLAG_CF | ZYDIS_CPUFLAG_PF | ZYDIS_CPUFLAG_AF |
                                  ZYDIS_CPUFLAG_ZF | ZYDIS_CPUFLAG_SF | ZYDIS_CPUFLAG_OF |
                                  ZYDIS_CPUFLAG_DF | ZYDIS_CPUFLAG_TF;
    const ZydisAccessedFlags* f = insn.cpu_flags;
    const uint32_t written =
        f == nullptr ? 0 : (f->modified | f->set_0 | f->set_1 | f->undefined) & kTracked;
    if (flags) {
      path.flags = *flags;
    } else if (written != 0) {
      path.flags = Sym{};
    }
  }

  const BlobInstance& blob_;
  Strategy strategy_;
  ZydisDecoder decoder_;
  std::vector<std::string> failures_;
};

// What one entry point promises (docs/blob-format.md "Handlers").
struct HandlerContract {
  std::string name;
  uint32_t entry;
  size_t caller_slots;        // dwords the site pushes before the call
  size_t caller_slots_left;   // after the return (set_tpr pops its argument)
  std::optional<Gpr> output;  // the register that returns the TPR
  Sym::Kind flags_at_return;  // kEntryFlags, or kZeroFlags for and_tpr_zero
  bool writes_zero = false;   // and_tpr_zero: TPR := 0
  bool writes = false;        // may write the TPR at all
};

std::vector<HandlerContract> Contracts(const HandlerTable& h) {
  std::vector<HandlerContract> contracts = {
      {"set_tpr", h.set_tpr, 1, 0, std::nullopt, Sym::Kind::kEntryFlags, false, true},
      {"set_tpr_eax", h.set_tpr_eax, 0, 0, std::nullopt, Sym::Kind::kEntryFlags, false, true},
      {"get_tpr_stack", h.get_tpr_stack, 1, 1, std::nullopt, Sym::Kind::kEntryFlags},
      {"and_tpr_zero", h.and_tpr_zero, 0, 0, std::nullopt, Sym::Kind::kZeroFlags, true, true},
  };
  for (int reg = 0; reg < kGprCount; ++reg) {
    if (reg == int(Gpr::kEsp)) continue;
    contracts.push_back({"get_tpr_" + std::string(GprName(static_cast<Gpr>(reg))), h.get_tpr[reg],
                         0, 0, static_cast<Gpr>(reg), Sym::Kind::kEntryFlags});
  }
  return contracts;
}

// The access counters (docs/blob-format.md "Layout version 5") on every path: at most one
// count; a path that counts kApic makes exactly one MMIO access of the TPR and one that counts
// kNoApic none; a path that counts nothing is the plain MMIO access of a CPU out of range or not
// enabled. Under mmio and cr8 some path of every handler counts kNoApic (reads: the shadow;
// writes: CR8 under cr8). (tpr_read_slow branches on a register copy of the strategy word, so
// the runner also walks its other strategies' branches: exact is not checked for their absence.)
void CountBreaches(const std::vector<SymEnd>& ends, Strategy strategy,
                   const HandlerContract& contract,
                   const std::function<void(size_t, const std::string&)>& breach) {
  bool some_no_apic = false;
  for (size_t p = 0; p < ends.size(); ++p) {
    int no_apic = 0, apic = 0, mmio = 0;
    for (const TprEvent& event : ends[p].path.events) {
      no_apic += event.kind == TprEvent::Kind::kCountNoApic;
      apic += event.kind == TprEvent::Kind::kCountApic;
      mmio += event.kind == TprEvent::Kind::kTprLoad || event.kind == TprEvent::Kind::kTprStore;
    }
    some_no_apic |= no_apic > 0;
    if (no_apic + apic > 1) breach(p, absl::StrFormat("counts %d times", no_apic + apic));
    if (apic == 1 && mmio != 1) breach(p, absl::StrFormat("counts an APIC access, makes %d", mmio));
    if (no_apic == 1 && mmio != 0) {
      breach(p, absl::StrFormat("counts an access without the APIC, makes %d", mmio));
    }
    if (no_apic + apic == 0 && mmio != 1) breach(p, "counts nothing and is not the plain access");
  }
  const bool may_skip_apic =
      strategy != Strategy::kExact && !(strategy == Strategy::kMmio && contract.writes);
  if (may_skip_apic && !some_no_apic) breach(0, "no path counts an access without the APIC");
}

// Every way the contract is broken on any path, as sentences; empty when kept.
std::vector<std::string> ContractBreaches(const BlobInstance& blob, Strategy strategy,
                                          const HandlerContract& contract) {
  SymbolicRunner runner(blob, strategy);
  const std::vector<SymEnd> ends = runner.Run(contract.entry, contract.caller_slots, contract.name);
  std::vector<std::string> breaches = runner.failures();
  auto breach = [&](size_t path, const std::string& what) {
    breaches.push_back(absl::StrFormat("%s (%s) path %u: %s", contract.name,
                                       std::string(StrategyName(strategy)), path, what));
  };
  if (ends.empty()) breach(0, "no path returns");
  CountBreaches(ends, strategy, contract, breach);
  bool cr8_writes = false, mmio_writes = false, shadow_writes = false;
  for (size_t p = 0; p < ends.size(); ++p) {
    const SymPath& path = ends[p].path;
    for (int reg = 0; reg < kGprCount; ++reg) {
      if (reg == int(Gpr::kEsp) || contract.output == static_cast<Gpr>(reg)) continue;
      const Sym entry{Sym::Kind::kEntryReg, static_cast<uint32_t>(reg)};
      if (!(path.regs[reg] == entry)) {
        breach(p, absl::StrFormat("%s holds %s", std::string(GprName(static_cast<Gpr>(reg))),
                                  SymName(path.regs[reg])));
      }
    }
    if (path.flags.kind != contract.flags_at_return) {
      breach(p, absl::StrFormat("EFLAGS at return are %s, not %s", SymName(path.flags),
                                SymName(Sym{contract.flags_at_return})));
    }
    if (ends[p].caller_slots_left != contract.caller_slots_left) {
      breach(p, absl::StrFormat("%u caller slots left, not %u", ends[p].caller_slots_left,
                                contract.caller_slots_left));
    }
    int real_writes = 0;
    for (const TprEvent& event : path.events) {
      if (event.kind == TprEvent::Kind::kTprLoad || event.kind == TprEvent::Kind::kCountNoApic ||
          event.kind == TprEvent::Kind::kCountApic) {
        continue;  // CountBreaches
      }
      if (event.kind == TprEvent::Kind::kShadowStore) {
        shadow_writes = true;
        // Real TPR first: the host may set a stopped CPU's shadow from its real TPR at any
        // instruction (docs/design.md "mmio"), which a shadow-first writer would undo.
        if (contract.writes && real_writes == 0) breach(p, "writes the shadow before the real TPR");
      } else {
        ++real_writes;
        (event.kind == TprEvent::Kind::kCr8Write ? cr8_writes : mmio_writes) = true;
      }
      if (contract.writes_zero && event.value.kind != Sym::Kind::kZero) {
        breach(p, "writes " + SymName(event.value) + " where the and wrote 0");
      }
    }
    // Reads may refresh the shadow (exact path), never write the real TPR.
    if (!contract.writes && real_writes != 0) breach(p, "a read writes the real TPR");
    if (contract.writes && real_writes != 1) {
      breach(p, absl::StrFormat("writes the real TPR %d times, not once", real_writes));
    }
  }
  if (contract.writes) {
    // An enabled CPU in range: CR8 under cr8, the MMIO TPR otherwise, then the shadow.
    if (!shadow_writes) breach(0, "no path writes the shadow");
    if (strategy == Strategy::kCr8 && !cr8_writes) breach(0, "no path writes CR8 under cr8");
    if (strategy != Strategy::kCr8 && cr8_writes) breach(0, "writes CR8 under another strategy");
    if (!mmio_writes) breach(0, "no path writes the MMIO TPR (CPU out of range or disabled)");
  }
  return breaches;
}

TEST(BlobRecordsTest, PerCpuStatsDecode) {
  std::array<uint8_t, kPerCpuStatsSize> bytes{};
  bytes[TPRD_BLOB_PCPU_STAT_NO_APIC] = 0x01;
  bytes[TPRD_BLOB_PCPU_STAT_NO_APIC + 3] = 0x80;
  bytes[TPRD_BLOB_PCPU_STAT_APIC + 1] = 0x02;
  auto stats = DecodePerCpuStats(bytes);
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->no_apic, 0x80000001u);
  EXPECT_EQ(stats->apic, 0x200u);
  EXPECT_FALSE(DecodePerCpuStats(absl::MakeConstSpan(bytes).subspan(1)).ok());
}

TEST(BlobHandlerContractTest, EveryHandlerKeepsRegistersFlagsAndStackUnderEveryStrategy) {
  for (Strategy strategy : {Strategy::kExact, Strategy::kMmio, Strategy::kCr8}) {
    BlobPlacement placement = XpPlacement();
    placement.strategy = strategy;
    auto blob = InstantiateBlob(placement);
    ASSERT_TRUE(blob.ok());
    for (const HandlerContract& contract : Contracts(blob->handlers)) {
      SCOPED_TRACE(contract.name + " " + std::string(StrategyName(strategy)));
      EXPECT_THAT(ContractBreaches(*blob, strategy, contract), ::testing::IsEmpty());
    }
  }
}

// and dword [tpr], 0 leaves CF OF SF AF = 0, ZF PF = 1 (AF as TCG's `and`), every other flag
// and register as they were, and the TPR 0: shadow 0, then CR8 0 (cr8) or MMIO 0.
TEST(BlobHandlerContractTest, AndTprZeroWritesZeroAndLeavesTheFlagsOfAnAnd) {
  for (Strategy strategy : {Strategy::kExact, Strategy::kMmio, Strategy::kCr8}) {
    SCOPED_TRACE(std::string(StrategyName(strategy)));
    BlobPlacement placement = XpPlacement();
    placement.strategy = strategy;
    auto blob = InstantiateBlob(placement);
    ASSERT_TRUE(blob.ok());
    SymbolicRunner runner(*blob, strategy);
    const std::vector<SymEnd> ends = runner.Run(blob->handlers.and_tpr_zero, 0, "and_tpr_zero");
    EXPECT_THAT(runner.failures(), ::testing::IsEmpty());
    // CPU out of range, CPU disabled, enabled: three ways out under every strategy.
    EXPECT_EQ(ends.size(), 3u);
    int enabled_paths = 0;
    for (const SymEnd& end : ends) {
      EXPECT_EQ(end.path.flags.kind, Sym::Kind::kZeroFlags);
      std::vector<TprEvent> writes;  // the counters aside (CountBreaches)
      for (const TprEvent& event : end.path.events) {
        if (event.kind == TprEvent::Kind::kTprStore || event.kind == TprEvent::Kind::kCr8Write ||
            event.kind == TprEvent::Kind::kShadowStore) {
          writes.push_back(event);
        }
      }
      if (writes.size() != 2) continue;
      ++enabled_paths;
      EXPECT_EQ(writes[0].kind,
                strategy == Strategy::kCr8 ? TprEvent::Kind::kCr8Write : TprEvent::Kind::kTprStore);
      EXPECT_EQ(writes[1].kind, TprEvent::Kind::kShadowStore);
      for (const TprEvent& event : writes) EXPECT_EQ(event.value.kind, Sym::Kind::kZero);
    }
    EXPECT_EQ(enabled_paths, 1);
  }
}

// The checker must see a broken and_tpr_zero (else the tests above prove nothing). Its code is
// push eax; sub eax,eax; call tpr_write_core; pop eax; ret.
TEST(BlobHandlerContractTest, CheckerCatchesBrokenAndHandlers) {
  auto blob = InstantiateBlob(XpPlacement());
  ASSERT_TRUE(blob.ok());
  const uint32_t at = TPRD_BLOB_AND_TPR_ZERO;
  ASSERT_EQ(blob->bytes[at], 0x50);      // push eax
  ASSERT_EQ(blob->bytes[at + 1], 0x29);  // sub eax, eax
  ASSERT_EQ(blob->bytes[at + 2], 0xC0);
  ASSERT_EQ(blob->bytes[at + 3], 0xE8);  // call tpr_write_core
  ASSERT_EQ(blob->bytes[at + 8], 0x58);  // pop eax
  const HandlerContract contract = Contracts(blob->handlers)[3];
  ASSERT_EQ(contract.name, "and_tpr_zero");
  auto breaches_with = [&](std::function<void(std::vector<uint8_t>&)> mutate) {
    BlobInstance broken = *blob;
    mutate(broken.bytes);
    std::vector<std::string> all;
    for (Strategy strategy : {Strategy::kExact, Strategy::kMmio, Strategy::kCr8}) {
      for (std::string& b : ContractBreaches(broken, strategy, contract)) all.push_back(b);
    }
    return all;
  };
  ASSERT_THAT(breaches_with([](auto&) {}), ::testing::IsEmpty());
  using ::testing::Contains;
  // xor eax,eax zeroes too, but leaves AF undefined: not the flags chosen for the and.
  EXPECT_THAT(breaches_with([&](auto& b) { b[at + 1] = 0x31; }),
              Contains(HasSubstr("EFLAGS at return are unknown")));
  // No zeroing at all: the caller's eax is written and the caller's flags come back.
  EXPECT_THAT(breaches_with([&](auto& b) { b[at + 1] = 0x90, b[at + 2] = 0x90; }),
              Contains(HasSubstr("writes entry eax where the and wrote 0")));
  EXPECT_THAT(breaches_with([&](auto& b) { b[at + 1] = 0x90, b[at + 2] = 0x90; }),
              Contains(HasSubstr("EFLAGS at return are entry flags")));
  // pop ecx instead of pop eax: eax keeps the 0, ecx gets eax.
  EXPECT_THAT(breaches_with([&](auto& b) { b[at + 8] = 0x59; }),
              Contains(HasSubstr("eax holds zero")));
  EXPECT_THAT(breaches_with([&](auto& b) { b[at + 8] = 0x59; }),
              Contains(HasSubstr("ecx holds entry eax")));
  // ret in place of pop eax: it returns to the saved eax.
  EXPECT_THAT(breaches_with([&](auto& b) { b[at + 8] = 0xC3; }),
              Contains(HasSubstr("returns to entry eax")));
}

// The same checker on tpr_write_core, which every writer calls: without its pushf, its popf
// takes a return address for EFLAGS and the stack is off by one; every writer must show it.
TEST(BlobHandlerContractTest, CheckerCatchesAWriteCoreThatLosesTheFlags) {
  auto blob = InstantiateBlob(XpPlacement());
  ASSERT_TRUE(blob.ok());
  ASSERT_EQ(blob->bytes[TPRD_BLOB_TPR_WRITE_CORE], 0x9C);
  BlobInstance broken = *blob;
  broken.bytes[TPRD_BLOB_TPR_WRITE_CORE] = 0x90;
  const std::vector<HandlerContract> contracts = Contracts(broken.handlers);
  for (const HandlerContract& contract : contracts) {
    if (!contract.writes) continue;
    SCOPED_TRACE(contract.name);
    EXPECT_THAT(ContractBreaches(broken, Strategy::kMmio, contract),
                ::testing::Not(::testing::IsEmpty()));
  }
}

// The counting rules must see a fast path that stopped counting, and one that counts twice.
TEST(BlobHandlerContractTest, CheckerCatchesWrongCounting) {
  BlobPlacement placement = XpPlacement();
  placement.strategy = Strategy::kMmio;
  auto blob = InstantiateBlob(placement);
  ASSERT_TRUE(blob.ok());
  // get_tpr_eax's fast path: incl percpu_stats+NO_APIC(,%eax,8) = FF 04 C5 disp32.
  const uint32_t start = blob->handlers.get_tpr[0] - blob->addresses.va;
  const uint32_t disp = blob->addresses.percpu_stats + TPRD_BLOB_PCPU_STAT_NO_APIC;
  uint32_t at = 0;
  for (uint32_t i = start; i + 7 <= TPRD_BLOB_CODE_END && at == 0; ++i) {
    if (blob->bytes[i] == 0xFF && blob->bytes[i + 1] == 0x04 && blob->bytes[i + 2] == 0xC5 &&
        LoadU32(blob->bytes, i + 3) == disp) {
      at = i;
    }
  }
  ASSERT_NE(at, 0u) << "the fast path's count not found";
  const HandlerContract contract = Contracts(blob->handlers)[4];  // get_tpr_eax
  ASSERT_EQ(contract.name, "get_tpr_eax");
  EXPECT_THAT(ContractBreaches(*blob, Strategy::kMmio, contract), ::testing::IsEmpty());

  BlobInstance silent = *blob;
  for (int i = 0; i < 7; ++i) silent.bytes[at + i] = 0x90;
  EXPECT_THAT(ContractBreaches(silent, Strategy::kMmio, contract),
              ::testing::Contains(HasSubstr("counts nothing and is not the plain access")));

  // Counting the APIC field instead: a shadow read counted as an APIC access it never made.
  BlobInstance wrong = *blob;
  const uint32_t apic = blob->addresses.percpu_stats + TPRD_BLOB_PCPU_STAT_APIC;
  for (int i = 0; i < 4; ++i) wrong.bytes[at + 3 + i] = static_cast<uint8_t>(apic >> (8 * i));
  EXPECT_THAT(ContractBreaches(wrong, Strategy::kMmio, contract),
              ::testing::Contains(HasSubstr("counts an APIC access, makes 0")));
}

}  // namespace
}  // namespace tprd::engine

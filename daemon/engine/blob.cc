#include "daemon/engine/blob.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "guest-rom/blob_image.h"

namespace tprd::engine {
namespace {

constexpr uint32_t kPageSize = 0x1000;
constexpr uint32_t kTprPageOffset = 0x080;  // the TPR's offset in the APIC page

uint32_t LoadU32(absl::Span<const uint8_t> bytes, uint32_t offset) {
  return bytes[offset] | bytes[offset + 1] << 8 | bytes[offset + 2] << 16 |
         static_cast<uint32_t>(bytes[offset + 3]) << 24;
}

void StoreU32(uint8_t* bytes, uint32_t value) {
  for (int i = 0; i < 4; ++i) bytes[i] = static_cast<uint8_t>(value >> (8 * i));
}

absl::Status Rejected(const std::string& reason) {
  return absl::DataLossError(absl::StrCat("guest blob rejected: ", reason));
}

std::optional<Strategy> StrategyFromWord(uint32_t word) {
  switch (word) {
    case TPRD_BLOB_STRATEGY_EXACT:
      return Strategy::kExact;
    case TPRD_BLOB_STRATEGY_MMIO:
      return Strategy::kMmio;
    case TPRD_BLOB_STRATEGY_CR8:
      return Strategy::kCr8;
    default:
      return std::nullopt;
  }
}

// The blob's own strategy constants must be engine::Strategy's values.
static_assert(TPRD_BLOB_STRATEGY_EXACT == static_cast<uint32_t>(Strategy::kExact));
static_assert(TPRD_BLOB_STRATEGY_MMIO == static_cast<uint32_t>(Strategy::kMmio));
static_assert(TPRD_BLOB_STRATEGY_CR8 == static_cast<uint32_t>(Strategy::kCr8));
static_assert(TPRD_BLOB_HANDLER_COUNT == 4 + kGprCount);
static_assert(TPRD_BLOB_DATA_OFFSET % kPageSize == 0 && TPRD_BLOB_TOTAL_SIZE % kPageSize == 0);

// Handler offsets in header order (set_tpr, set_tpr_eax, get_tpr[8], get_tpr_stack,
// and_tpr_zero); 0 = none.
constexpr uint32_t kHandlerOffsets[TPRD_BLOB_HANDLER_COUNT] = {
    TPRD_BLOB_SET_TPR,
    TPRD_BLOB_SET_TPR_EAX,
    TPRD_BLOB_GET_TPR_EAX,
    TPRD_BLOB_GET_TPR_ECX,
    TPRD_BLOB_GET_TPR_EDX,
    TPRD_BLOB_GET_TPR_EBX,
    0,
    TPRD_BLOB_GET_TPR_EBP,
    TPRD_BLOB_GET_TPR_ESI,
    TPRD_BLOB_GET_TPR_EDI,
    TPRD_BLOB_GET_TPR_STACK,
    TPRD_BLOB_AND_TPR_ZERO,
};

HandlerTable HandlerTableFromSlots(const uint32_t (&slots)[TPRD_BLOB_HANDLER_COUNT]) {
  HandlerTable table;
  table.set_tpr = slots[0];
  table.set_tpr_eax = slots[1];
  for (int reg = 0; reg < kGprCount; ++reg) table.get_tpr[reg] = slots[2 + reg];
  table.get_tpr_stack = slots[2 + kGprCount];
  table.and_tpr_zero = slots[3 + kGprCount];
  return table;
}

absl::Status ValidatePlacement(const BlobPlacement& placement) {
  if (placement.va % kPageSize != 0 || placement.pa % kPageSize != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "blob va 0x%08x / pa 0x%08x must be page aligned", placement.va, placement.pa));
  }
  if (static_cast<uint64_t>(placement.va) + kBlobSize > (uint64_t{1} << 32) ||
      static_cast<uint64_t>(placement.pa) + kBlobSize > (uint64_t{1} << 32)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("blob at va 0x%08x pa 0x%08x would cross 4 GiB (size 0x%x)", placement.va,
                        placement.pa, kBlobSize));
  }
  if ((placement.tpr_va & 0xFFF) != kTprPageOffset) {
    return absl::InvalidArgumentError(
        absl::StrFormat("TPR address 0x%08x is not at offset 0x080 of a page", placement.tpr_va));
  }
  if (placement.tpr_va >= placement.va && placement.tpr_va - placement.va < kBlobSize) {
    return absl::InvalidArgumentError(
        absl::StrFormat("TPR address 0x%08x lies inside the blob", placement.tpr_va));
  }
  if (placement.cpu_count < 1 || placement.cpu_count > kBlobMaxCpus) {
    return absl::InvalidArgumentError(
        absl::StrFormat("CPU count %u out of range 1..%u", placement.cpu_count, kBlobMaxCpus));
  }
  if (placement.guard_period < 1 || placement.guard_period > kBlobMaxGuardPeriod) {
    return absl::InvalidArgumentError(absl::StrFormat("guard period %u out of range 1..%u",
                                                      placement.guard_period, kBlobMaxGuardPeriod));
  }
  if (!StrategyFromWord(static_cast<uint32_t>(placement.strategy)).has_value()) {
    return absl::InvalidArgumentError("unknown strategy");
  }
  if (placement.data_apart()) {
    const uint64_t data_end = static_cast<uint64_t>(placement.data_va) + kBlobDataBlockSize;
    if (placement.data_va % 64 != 0 || placement.data_pa % 64 != 0 || data_end > (1ull << 32) ||
        static_cast<uint64_t>(placement.data_pa) + kBlobDataBlockSize > (1ull << 32)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "data block va 0x%08x / pa 0x%08x must be 64-byte aligned and below 4 GiB",
          placement.data_va, placement.data_pa));
    }
    if (placement.data_va < placement.va + kBlobSize && data_end > placement.va) {
      return absl::InvalidArgumentError(
          absl::StrFormat("data block at 0x%08x overlaps the blob", placement.data_va));
    }
    if (placement.tpr_va >= placement.data_va && placement.tpr_va < data_end) {
      return absl::InvalidArgumentError(
          absl::StrFormat("TPR address 0x%08x lies inside the data block", placement.tpr_va));
    }
  }
  return absl::OkStatus();
}

// Length and first opcode byte of each form's original instruction
// (shared/design/prior-art.md).
struct FormShape {
  Form form;
  uint32_t length;
  uint8_t opcode;
  bool has_register;
};
constexpr FormShape kFormShapes[] = {
    {Form::kMovEaxFromMoffs, 5, 0xA1, false}, {Form::kMovMoffsFromEax, 5, 0xA3, false},
    {Form::kMovRegFromMem, 6, 0x8B, true},    {Form::kMovMemFromReg, 6, 0x89, true},
    {Form::kMovMemFromImm, 10, 0xC7, false},  {Form::kPushMem, 6, 0xFF, false},
    {Form::kAndMemZero, 7, 0x83, false},
};

const FormShape* ShapeOf(uint8_t form) {
  for (const FormShape& shape : kFormShapes) {
    if (static_cast<uint8_t>(shape.form) == form) return &shape;
  }
  return nullptr;
}

}  // namespace

BlobAddresses BlobAddressesAt(uint32_t va, uint32_t data_va) {
  if (data_va == 0) data_va = va + kBlobDataBlockOffset;
  BlobAddresses addresses;
  addresses.va = va;
  addresses.end = va + kBlobSize;
  addresses.code_start = va + TPRD_BLOB_CODE_START;
  addresses.code_end = va + TPRD_BLOB_CODE_END;
  addresses.tpr_poke = va + TPRD_BLOB_TPR_POKE;
  addresses.data_start = va + TPRD_BLOB_DATA_OFFSET;
  addresses.data_block = data_va;
  addresses.strategy_word = data_va + (TPRD_BLOB_STRATEGY_WORD - kBlobDataBlockOffset);
  addresses.tpr_write_va = data_va + (TPRD_BLOB_TPR_WRITE_VA - kBlobDataBlockOffset);
  addresses.percpu_area = data_va + (TPRD_BLOB_PERCPU_AREA - kBlobDataBlockOffset);
  addresses.percpu_stats = data_va + (TPRD_BLOB_PERCPU_STATS - kBlobDataBlockOffset);
  addresses.site_table = va + TPRD_BLOB_SITE_TABLE;
  return addresses;
}

absl::StatusOr<HandlerTable> HandlerTableForBlob(uint32_t blob_va) {
  if (blob_va % kPageSize != 0 ||
      static_cast<uint64_t>(blob_va) + kBlobSize > (uint64_t{1} << 32)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("blob va 0x%08x must be page aligned and leave 0x%x bytes below 4 GiB",
                        blob_va, kBlobSize));
  }
  uint32_t slots[TPRD_BLOB_HANDLER_COUNT];
  for (int i = 0; i < TPRD_BLOB_HANDLER_COUNT; ++i) {
    slots[i] = kHandlerOffsets[i] == 0 ? 0 : blob_va + kHandlerOffsets[i];
  }
  return HandlerTableFromSlots(slots);
}

uint32_t Crc32WithFieldZeroed(absl::Span<const uint8_t> bytes, uint32_t field_offset) {
  static constexpr uint8_t kZeros[4] = {};
  const size_t skip_begin = std::min<size_t>(field_offset, bytes.size());
  const size_t skip_end = std::min<size_t>(uint64_t{field_offset} + 4, bytes.size());
  uLong crc = crc32(0L, Z_NULL, 0);
  // crc32() with a null buffer returns the initial value: pass only non-empty ranges.
  if (skip_begin > 0) crc = crc32(crc, bytes.data(), skip_begin);
  if (skip_end > skip_begin) crc = crc32(crc, kZeros, skip_end - skip_begin);
  if (bytes.size() > skip_end) crc = crc32(crc, bytes.data() + skip_end, bytes.size() - skip_end);
  return static_cast<uint32_t>(crc);
}

uint32_t BlobChecksum(absl::Span<const uint8_t> blob) {
  if (blob.size() < TPRD_BLOB_DATA_OFFSET) return 0;
  return Crc32WithFieldZeroed(blob.subspan(0, TPRD_BLOB_DATA_OFFSET), TPRD_BLOB_HDR_CHECKSUM);
}

absl::StatusOr<BlobInstance> InstantiateBlob(const BlobPlacement& placement) {
  if (absl::Status valid = ValidatePlacement(placement); !valid.ok()) return valid;
  BlobInstance instance;
  instance.bytes.assign(tprd_blob_image, tprd_blob_image + kBlobSize);
  uint8_t* bytes = instance.bytes.data();
  const uint32_t data_va =
      placement.data_apart() ? placement.data_va : placement.va + kBlobDataBlockOffset;
  const uint32_t data_pa =
      placement.data_apart() ? placement.data_pa : placement.pa + kBlobDataBlockOffset;
  for (uint32_t offset : tprd_blob_base_relocs) {
    // Linked at base 0, the stored value is the target's offset: references into the data
    // block follow the data block, the rest the image.
    const uint32_t target = LoadU32(instance.bytes, offset);
    const bool into_data =
        target >= kBlobDataBlockOffset && target < kBlobDataBlockOffset + kBlobDataBlockSize;
    StoreU32(bytes + offset,
             into_data ? data_va + (target - kBlobDataBlockOffset) : placement.va + target);
  }
  for (uint32_t offset : tprd_blob_tpr_relocs) {
    StoreU32(bytes + offset,
             LoadU32(instance.bytes, offset) + (placement.tpr_va - TPRD_BLOB_LINK_TPR_VA));
  }
  StoreU32(bytes + TPRD_BLOB_HDR_BLOB_PA, placement.pa);
  StoreU32(bytes + TPRD_BLOB_HDR_DATA_PA, data_pa);
  StoreU32(bytes + TPRD_BLOB_HDR_CPU_COUNT, placement.cpu_count);
  StoreU32(bytes + TPRD_BLOB_HDR_GUARD_PERIOD, placement.guard_period);
  StoreU32(bytes + TPRD_BLOB_STRATEGY_WORD, static_cast<uint32_t>(placement.strategy));
  StoreU32(bytes + TPRD_BLOB_HDR_CHECKSUM, BlobChecksum(instance.bytes));
  if (placement.data_apart()) {
    instance.data_block.assign(instance.bytes.begin() + kBlobDataBlockOffset,
                               instance.bytes.begin() + kBlobDataBlockOffset + kBlobDataBlockSize);
  }

  auto handlers = HandlerTableForBlob(placement.va);
  if (!handlers.ok()) return handlers.status();
  instance.handlers = *handlers;
  instance.addresses = BlobAddressesAt(placement.va, data_va);
  return instance;
}

std::array<uint8_t, kPerCpuEntrySize> EncodePerCpuEntry(const PerCpuEntry& entry) {
  std::array<uint8_t, kPerCpuEntrySize> bytes{};
  bytes[TPRD_BLOB_PCPU_SHADOW] = entry.shadow_tpr;
  bytes[TPRD_BLOB_PCPU_ENABLED] = entry.enabled ? 1 : 0;
  bytes[TPRD_BLOB_PCPU_READS] = static_cast<uint8_t>(entry.reads_since_check);
  bytes[TPRD_BLOB_PCPU_READS + 1] = static_cast<uint8_t>(entry.reads_since_check >> 8);
  StoreU32(bytes.data() + TPRD_BLOB_PCPU_MISMATCHES, entry.mismatches);
  return bytes;
}

absl::StatusOr<PerCpuEntry> DecodePerCpuEntry(absl::Span<const uint8_t> bytes) {
  if (bytes.size() != kPerCpuEntrySize) {
    return absl::InvalidArgumentError(
        absl::StrFormat("per-CPU entry is %u bytes, got %u", kPerCpuEntrySize, bytes.size()));
  }
  PerCpuEntry entry;
  entry.shadow_tpr = bytes[TPRD_BLOB_PCPU_SHADOW];
  entry.enabled = bytes[TPRD_BLOB_PCPU_ENABLED] != 0;
  entry.reads_since_check =
      static_cast<uint16_t>(bytes[TPRD_BLOB_PCPU_READS] | bytes[TPRD_BLOB_PCPU_READS + 1] << 8);
  entry.mismatches = LoadU32(bytes, TPRD_BLOB_PCPU_MISMATCHES);
  return entry;
}

absl::StatusOr<PerCpuStats> DecodePerCpuStats(absl::Span<const uint8_t> bytes) {
  if (bytes.size() != kPerCpuStatsSize) {
    return absl::InvalidArgumentError(
        absl::StrFormat("per-CPU counters are %u bytes, got %u", kPerCpuStatsSize, bytes.size()));
  }
  return PerCpuStats{LoadU32(bytes, TPRD_BLOB_PCPU_STAT_NO_APIC),
                     LoadU32(bytes, TPRD_BLOB_PCPU_STAT_APIC)};
}

absl::StatusOr<std::optional<Site>> DecodeSiteEntry(uint32_t id, absl::Span<const uint8_t> bytes) {
  auto bad = [id](const std::string& reason) {
    return absl::DataLossError(absl::StrFormat("site table entry %u: %s", id, reason));
  };
  if (bytes.size() != kSiteEntrySize) {
    return bad(absl::StrFormat("%u bytes, expected %u", bytes.size(), kSiteEntrySize));
  }
  if (std::all_of(bytes.begin(), bytes.end(), [](uint8_t b) { return b == 0; })) {
    return std::nullopt;
  }
  const uint32_t length = bytes[TPRD_BLOB_SITE_LENGTH];
  const FormShape* shape = ShapeOf(bytes[TPRD_BLOB_SITE_FORM]);
  if (shape == nullptr) return bad(absl::StrCat("unknown form ", bytes[TPRD_BLOB_SITE_FORM]));
  if (length != shape->length) {
    return bad(absl::StrFormat("length %u, form %s has %u", length,
                               std::string(FormName(shape->form)), shape->length));
  }
  const uint8_t reg = bytes[TPRD_BLOB_SITE_REG];
  if (reg >= kGprCount) return bad(absl::StrCat("unknown register ", reg));
  if (!shape->has_register && reg != static_cast<uint8_t>(Gpr::kEax)) {
    return bad(
        absl::StrCat("form ", std::string(FormName(shape->form)), " has no register, got ", reg));
  }
  if (shape->has_register && reg == static_cast<uint8_t>(Gpr::kEsp)) {
    return bad("esp as the register (the classifier never patches it)");
  }
  const uint8_t state = bytes[TPRD_BLOB_SITE_STATE];
  if (state > static_cast<uint8_t>(SiteState::kRolledBack)) {
    return bad(absl::StrCat("unknown state ", state));
  }
  const uint8_t* original = bytes.data() + TPRD_BLOB_SITE_ORIGINAL;
  const uint8_t* patched = bytes.data() + TPRD_BLOB_SITE_PATCHED;
  for (uint32_t i = length; i < kSiteBytesMax; ++i) {
    if (original[i] != 0 || patched[i] != 0) return bad("nonzero bytes past the length");
  }
  if (original[0] != shape->opcode) {
    return bad(absl::StrFormat("original bytes start with 0x%02x, form %s starts with 0x%02x",
                               original[0], std::string(FormName(shape->form)), shape->opcode));
  }
  if (patched[length - 5] != 0xE8) return bad("patched bytes do not end in a call rel32");
  // The handler writes 0: an and site whose immediate is anything else would change meaning.
  if (shape->form == Form::kAndMemZero && original[length - 1] != 0) {
    return bad("original bytes of and_mem_zero do not end in the immediate 0");
  }

  Site site;
  site.id = id;
  site.address = LoadU32(bytes, TPRD_BLOB_SITE_VA);
  site.form = shape->form;
  site.reg = static_cast<Gpr>(reg);
  site.state = static_cast<SiteState>(state);
  site.original.assign(original, original + length);
  site.patched.assign(patched, patched + length);
  if (site.form == Form::kMovMemFromImm) site.imm = LoadU32(site.original, 6);
  return site;
}

absl::StatusOr<std::array<uint8_t, kSiteEntrySize>> EncodeSiteEntry(const Site& site) {
  if (site.original.empty() || site.original.size() > kSiteBytesMax ||
      site.patched.size() != site.original.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "site %u: original (%u) and patched (%u) bytes must have the same length, 1..%u", site.id,
        site.original.size(), site.patched.size(), kSiteBytesMax));
  }
  std::array<uint8_t, kSiteEntrySize> bytes{};
  StoreU32(bytes.data() + TPRD_BLOB_SITE_VA, site.address);
  bytes[TPRD_BLOB_SITE_LENGTH] = static_cast<uint8_t>(site.original.size());
  bytes[TPRD_BLOB_SITE_FORM] = static_cast<uint8_t>(site.form);
  bytes[TPRD_BLOB_SITE_REG] = static_cast<uint8_t>(site.reg);
  bytes[TPRD_BLOB_SITE_STATE] = static_cast<uint8_t>(site.state);
  std::copy(site.original.begin(), site.original.end(), bytes.begin() + TPRD_BLOB_SITE_ORIGINAL);
  std::copy(site.patched.begin(), site.patched.end(), bytes.begin() + TPRD_BLOB_SITE_PATCHED);
  // Only write what a reader would accept back.
  auto decoded = DecodeSiteEntry(site.id, bytes);
  if (!decoded.ok()) return absl::InvalidArgumentError(decoded.status().message());
  if (!decoded->has_value()) {
    return absl::InvalidArgumentError(absl::StrCat("site ", site.id, " encodes as unused"));
  }
  return bytes;
}

std::optional<uint32_t> BlobHeaderDataVa(absl::Span<const uint8_t> bytes) {
  if (bytes.size() < TPRD_BLOB_HDR_DATA_VA + 4) return std::nullopt;
  return LoadU32(bytes, TPRD_BLOB_HDR_DATA_VA);
}

absl::StatusOr<ParsedBlob> ParseBlob(absl::Span<const uint8_t> bytes,
                                     std::optional<absl::Span<const uint8_t>> data_block) {
  if (bytes.size() < TPRD_BLOB_HEADER_SIZE) {
    return Rejected(absl::StrFormat("truncated: %u bytes, the header alone is %u", bytes.size(),
                                    TPRD_BLOB_HEADER_SIZE));
  }
  auto field = [&](uint32_t offset) { return LoadU32(bytes, offset); };
  if (field(TPRD_BLOB_HDR_MAGIC) != TPRD_BLOB_MAGIC) {
    return Rejected(absl::StrFormat("bad magic 0x%08x", field(TPRD_BLOB_HDR_MAGIC)));
  }
  if (field(TPRD_BLOB_HDR_LAYOUT_VERSION) != kBlobLayoutVersion) {
    return Rejected(absl::StrFormat("layout version %u, this tprd knows %u",
                                    field(TPRD_BLOB_HDR_LAYOUT_VERSION), kBlobLayoutVersion));
  }
  if (field(TPRD_BLOB_HDR_HEADER_SIZE) != TPRD_BLOB_HEADER_SIZE) {
    return Rejected(absl::StrFormat("header size %u, expected %u", field(TPRD_BLOB_HDR_HEADER_SIZE),
                                    TPRD_BLOB_HEADER_SIZE));
  }
  const uint32_t blob_size = field(TPRD_BLOB_HDR_BLOB_SIZE);
  if (blob_size != kBlobSize) {
    return Rejected(absl::StrFormat("blob size 0x%x, expected 0x%x", blob_size, kBlobSize));
  }
  if (bytes.size() != blob_size) {
    return Rejected(absl::StrFormat("%s: have %u bytes, the blob is %u",
                                    bytes.size() < blob_size ? "truncated" : "trailing bytes",
                                    bytes.size(), blob_size));
  }
  const uint32_t immutable_size = field(TPRD_BLOB_HDR_IMMUTABLE_SIZE);
  if (immutable_size != TPRD_BLOB_DATA_OFFSET) {
    return Rejected(absl::StrFormat("immutable size 0x%x, expected 0x%x", immutable_size,
                                    TPRD_BLOB_DATA_OFFSET));
  }
  if (const uint32_t sum = BlobChecksum(bytes); sum != field(TPRD_BLOB_HDR_CHECKSUM)) {
    return Rejected(
        absl::StrFormat("checksum 0x%08x, computed 0x%08x", field(TPRD_BLOB_HDR_CHECKSUM), sum));
  }

  // Offsets and sizes: within the blob, writable parts on the writable pages, then exactly this
  // build's layout (the version promises it; anything else is not a blob we can drive).
  struct Region {
    const char* name;
    uint32_t offset, count, entry_size, expected_offset, expected_count, expected_entry_size;
    bool writable;
  };
  const Region regions[] = {
      {"strategy word", field(TPRD_BLOB_HDR_STRATEGY_OFFSET), 1, 4, TPRD_BLOB_STRATEGY_WORD, 1, 4,
       true},
      {"handler code", field(TPRD_BLOB_HDR_CODE_OFFSET),
       field(TPRD_BLOB_HDR_CODE_END_OFFSET) - field(TPRD_BLOB_HDR_CODE_OFFSET), 1,
       TPRD_BLOB_CODE_START, TPRD_BLOB_CODE_END - TPRD_BLOB_CODE_START, 1, false},
      {"per-CPU area", field(TPRD_BLOB_HDR_PERCPU_OFFSET), field(TPRD_BLOB_HDR_PERCPU_MAX),
       field(TPRD_BLOB_HDR_PERCPU_ENTRY_SIZE), TPRD_BLOB_PERCPU_AREA, kBlobMaxCpus,
       kPerCpuEntrySize, true},
      {"site table", field(TPRD_BLOB_HDR_SITES_OFFSET), field(TPRD_BLOB_HDR_SITES_MAX),
       field(TPRD_BLOB_HDR_SITE_ENTRY_SIZE), TPRD_BLOB_SITE_TABLE, kBlobMaxSites, kSiteEntrySize,
       true},
  };
  for (const Region& region : regions) {
    const uint64_t end = region.offset + static_cast<uint64_t>(region.count) * region.entry_size;
    const bool inside = region.writable
                            ? region.offset >= immutable_size && end <= blob_size
                            : region.offset >= TPRD_BLOB_HEADER_SIZE && end <= immutable_size &&
                                  field(TPRD_BLOB_HDR_CODE_END_OFFSET) >= region.offset;
    if (!inside) {
      return Rejected(absl::StrFormat("%s [0x%x, 0x%x) lies outside its part of the blob",
                                      region.name, region.offset, end));
    }
    if (region.offset != region.expected_offset || region.count != region.expected_count ||
        region.entry_size != region.expected_entry_size) {
      return Rejected(absl::StrFormat(
          "%s at 0x%x (%u x %u bytes) differs from layout %u (0x%x, %u x %u)", region.name,
          region.offset, region.count, region.entry_size, kBlobLayoutVersion,
          region.expected_offset, region.expected_count, region.expected_entry_size));
    }
  }

  ParsedBlob parsed;
  BlobPlacement& placement = parsed.placement;
  placement.va = field(TPRD_BLOB_HDR_BLOB_VA);
  placement.pa = field(TPRD_BLOB_HDR_BLOB_PA);
  placement.tpr_va = field(TPRD_BLOB_HDR_TPR_VA);
  placement.cpu_count = field(TPRD_BLOB_HDR_CPU_COUNT);
  placement.guard_period = field(TPRD_BLOB_HDR_GUARD_PERIOD);
  // The image's own placement first, so a corrupt address is named as such.
  if (absl::Status valid = ValidatePlacement(placement); !valid.ok()) {
    return Rejected(std::string(valid.message()));
  }
  // The data block: inside the image, or apart where the header says (and then supplied).
  const uint32_t header_data_va = field(TPRD_BLOB_HDR_DATA_VA);
  absl::Span<const uint8_t> data = bytes.subspan(kBlobDataBlockOffset, kBlobDataBlockSize);
  if (header_data_va != placement.va + kBlobDataBlockOffset) {
    placement.data_va = header_data_va;
    placement.data_pa = field(TPRD_BLOB_HDR_DATA_PA);
    if (!data_block.has_value()) {
      return Rejected(
          absl::StrFormat("its data block lives apart at 0x%08x and was not read", header_data_va));
    }
    if (data_block->size() != kBlobDataBlockSize) {
      return Rejected(absl::StrFormat("data block is %u bytes, expected %u", data_block->size(),
                                      kBlobDataBlockSize));
    }
    data = *data_block;
  } else if (field(TPRD_BLOB_HDR_DATA_PA) != placement.pa + kBlobDataBlockOffset) {
    return Rejected("the data block's physical address does not match the blob's");
  }
  auto data_field = [&](uint32_t offset) { return LoadU32(data, offset - kBlobDataBlockOffset); };
  const uint32_t strategy_word = data_field(TPRD_BLOB_STRATEGY_WORD);
  const std::optional<Strategy> strategy = StrategyFromWord(strategy_word);
  if (!strategy.has_value()) {
    return Rejected(absl::StrFormat("unknown strategy word %u", strategy_word));
  }
  placement.strategy = *strategy;
  // Where the handlers store the TPR: the TPR itself, or an alias tprd made (another page; the
  // engine checks that it still maps the APIC before trusting it).
  parsed.tpr_write_va = data_field(TPRD_BLOB_TPR_WRITE_VA);
  if (parsed.tpr_write_va % 4 != 0 || (parsed.tpr_write_va & 0xFFF) != (placement.tpr_va & 0xFFF)) {
    return Rejected(absl::StrFormat("TPR write address 0x%08x is not the TPR's offset in a page",
                                    parsed.tpr_write_va));
  }
  if (absl::Status valid = ValidatePlacement(placement); !valid.ok()) {
    return Rejected(std::string(valid.message()));
  }
  parsed.addresses = BlobAddressesAt(placement.va, header_data_va);

  if (field(TPRD_BLOB_HDR_HANDLER_COUNT) != TPRD_BLOB_HANDLER_COUNT) {
    return Rejected(absl::StrFormat("handler count %u, expected %u",
                                    field(TPRD_BLOB_HDR_HANDLER_COUNT), TPRD_BLOB_HANDLER_COUNT));
  }
  uint32_t slots[TPRD_BLOB_HANDLER_COUNT];
  for (int i = 0; i < TPRD_BLOB_HANDLER_COUNT; ++i) {
    slots[i] = field(TPRD_BLOB_HDR_HANDLERS + 4 * i);
    const bool unused = kHandlerOffsets[i] == 0;
    if (unused ? slots[i] != 0 : !parsed.addresses.InHandlerCode(slots[i])) {
      return Rejected(absl::StrFormat("handler %d at 0x%08x is outside the code [0x%08x, 0x%08x)",
                                      i, slots[i], parsed.addresses.code_start,
                                      parsed.addresses.code_end));
    }
  }
  parsed.handlers = HandlerTableFromSlots(slots);

  for (uint32_t cpu = 0; cpu < placement.cpu_count; ++cpu) {
    auto entry = DecodePerCpuEntry(data.subspan(
        TPRD_BLOB_PERCPU_AREA - kBlobDataBlockOffset + cpu * kPerCpuEntrySize, kPerCpuEntrySize));
    if (!entry.ok()) return Rejected(std::string(entry.status().message()));
    parsed.cpus.push_back(*entry);
  }
  for (uint32_t id = 0; id < kBlobMaxSites; ++id) {
    auto site = DecodeSiteEntry(
        id, bytes.subspan(TPRD_BLOB_SITE_TABLE + id * kSiteEntrySize, kSiteEntrySize));
    if (!site.ok()) return Rejected(std::string(site.status().message()));
    if (site->has_value()) parsed.sites.push_back(**site);
  }

  auto rebuilt = InstantiateBlob(placement);
  parsed.matches_this_build =
      rebuilt.ok() &&
      std::equal(bytes.begin(), bytes.begin() + TPRD_BLOB_DATA_OFFSET, rebuilt->bytes.begin());
  return parsed;
}

}  // namespace tprd::engine

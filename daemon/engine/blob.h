// The guest handler blob (guest-rom/blob.s, docs/blob-format.md): instantiating it for a
// placement in a guest, parsing a copy read back from a guest, and the records the engine keeps
// in its writable pages (per-CPU entries, site table entries).
//
// Every layout fact comes from the generated guest-rom/blob_layout.h; nothing is kept by hand.
#ifndef TPRD_DAEMON_ENGINE_BLOB_H_
#define TPRD_DAEMON_ENGINE_BLOB_H_

#include <array>
#include <cstdint>
#include <optional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "daemon/engine/site.h"
#include "guest-rom/blob_layout.h"

namespace tprd::engine {

inline constexpr uint32_t kBlobSize = TPRD_BLOB_TOTAL_SIZE;
inline constexpr uint32_t kBlobLayoutVersion = TPRD_BLOB_LAYOUT_VERSION;
inline constexpr uint32_t kBlobMaxCpus = TPRD_BLOB_PCPU_MAX;
inline constexpr uint32_t kBlobMaxSites = TPRD_BLOB_SITE_MAX;
inline constexpr uint32_t kBlobDefaultGuardPeriod = TPRD_BLOB_DEFAULT_GUARD_PERIOD;
inline constexpr uint32_t kBlobMaxGuardPeriod = TPRD_BLOB_MAX_GUARD_PERIOD;
inline constexpr uint32_t kPerCpuEntrySize = TPRD_BLOB_PCPU_SIZE;
inline constexpr uint32_t kPerCpuStatsSize = TPRD_BLOB_PCPU_STAT_SIZE;
inline constexpr uint32_t kSiteEntrySize = TPRD_BLOB_SITE_SIZE;
inline constexpr uint32_t kSiteBytesMax = TPRD_BLOB_SITE_BYTES_MAX;
// The data block: the only bytes the handlers write (strategy word, per-CPU area). It sits at
// offset kBlobDataBlockOffset of the image, or apart from it (BlobPlacement::data_va).
inline constexpr uint32_t kBlobDataBlockOffset = TPRD_BLOB_STRATEGY_WORD;
inline constexpr uint32_t kBlobDataBlockSize = TPRD_BLOB_SITE_TABLE - TPRD_BLOB_STRATEGY_WORD;

// Where the blob goes and how it starts out. va and pa must be page aligned (the writable
// pages must not share a page with the code, nor the code with anything else).
struct BlobPlacement {
  uint32_t va = 0;  // guest virtual address of the blob's first byte
  uint32_t pa = 0;  // guest physical address of the same byte
  uint32_t tpr_va = kDefaultTprVa;
  Strategy strategy = Strategy::kExact;
  uint32_t cpu_count = 1;  // 1..kBlobMaxCpus; CPUs numbered >= this take the exact path
  uint32_t guard_period = kBlobDefaultGuardPeriod;  // mmio guard: check every Nth read, 1..65535
  // Where the data block lives. 0: inside the image (va + kBlobDataBlockOffset). Else apart
  // (docs/design.md "Placement"): 64-byte aligned, not overlapping the image.
  uint32_t data_va = 0;
  uint32_t data_pa = 0;
  bool data_apart() const { return data_va != 0 && data_va != va + kBlobDataBlockOffset; }
};

// Guest virtual addresses inside a blob placed at `va`.
struct BlobAddresses {
  uint32_t va = 0;          // first byte
  uint32_t end = 0;         // one past the last byte (va + kBlobSize; 0 if that wraps to 4 GiB)
  uint32_t code_start = 0;  // handler code [code_start, code_end): no rollback while an EIP is in
  uint32_t code_end = 0;
  uint32_t tpr_poke = 0;       // mov [tpr], eax: stepped by tprd to set a CPU's real TPR
  uint32_t data_start = 0;     // first writable byte (page aligned); the checksum covers [va, here)
  uint32_t data_block = 0;     // the data block's first byte (inside the image or apart)
  uint32_t strategy_word = 0;  // u32, engine::Strategy
  uint32_t tpr_write_va = 0;   // u32: where the handlers store the TPR (the TPR, or an alias)
  uint32_t percpu_area = 0;
  uint32_t percpu_stats = 0;  // the per-CPU access counters (PerCpuStats), after percpu_area
  uint32_t site_table = 0;

  uint32_t PerCpuEntry(uint32_t cpu) const { return percpu_area + cpu * kPerCpuEntrySize; }
  uint32_t PerCpuShadow(uint32_t cpu) const { return PerCpuEntry(cpu) + TPRD_BLOB_PCPU_SHADOW; }
  uint32_t PerCpuEnabled(uint32_t cpu) const { return PerCpuEntry(cpu) + TPRD_BLOB_PCPU_ENABLED; }
  uint32_t PerCpuReads(uint32_t cpu) const { return PerCpuEntry(cpu) + TPRD_BLOB_PCPU_READS; }
  uint32_t PerCpuMismatches(uint32_t cpu) const {
    return PerCpuEntry(cpu) + TPRD_BLOB_PCPU_MISMATCHES;
  }
  uint32_t PerCpuStatsEntry(uint32_t cpu) const { return percpu_stats + cpu * kPerCpuStatsSize; }
  uint32_t SiteEntry(uint32_t id) const { return site_table + id * kSiteEntrySize; }
  bool InHandlerCode(uint32_t eip) const { return eip >= code_start && eip < code_end; }
};

// Addresses for a blob at `va` whose data block is at `data_va` (0: inside the image). No
// validation beyond arithmetic: see InstantiateBlob.
BlobAddresses BlobAddressesAt(uint32_t va, uint32_t data_va = 0);

// The handler addresses for a blob at `blob_va` (tprctl decode --blob-va). Fails if the blob
// would not fit below 4 GiB or va is not page aligned.
absl::StatusOr<HandlerTable> HandlerTableForBlob(uint32_t blob_va);

struct BlobInstance {
  std::vector<uint8_t> bytes;  // kBlobSize bytes to copy to placement.va
  // kBlobDataBlockSize bytes for placement.data_va when the data block lives apart (empty
  // otherwise: it is inside `bytes`).
  std::vector<uint8_t> data_block;
  HandlerTable handlers;
  BlobAddresses addresses;
};

// Relocates the blob to the placement, fills in its header and checksum. Every CPU's entry
// starts disabled (exact path) and every site entry unused: the engine enables CPUs once it has
// set their shadows. INVALID_ARGUMENT for a placement the blob cannot take.
absl::StatusOr<BlobInstance> InstantiateBlob(const BlobPlacement& placement);

// CRC-32 (IEEE) of the immutable part [0, immutable size) of `blob`, with the checksum field
// taken as zero. `blob` must hold at least that many bytes (else 0).
uint32_t BlobChecksum(absl::Span<const uint8_t> blob);
// zlib's CRC-32 (IEEE) of `bytes`, the 4 bytes at `field_offset` (a checksum field itself)
// counted as zero. BlobChecksum's arithmetic, apart so that a test can check it on any input.
uint32_t Crc32WithFieldZeroed(absl::Span<const uint8_t> bytes, uint32_t field_offset);

// One CPU's entry in the per-CPU area.
struct PerCpuEntry {
  uint8_t shadow_tpr = 0;
  bool enabled = false;
  // mmio guard: shadow reads left before the next check (the handlers count down; 0 means
  // "check at the next read", which is what InitPerCpu writes). The name predates the down count.
  uint16_t reads_since_check = 0;
  uint32_t mismatches = 0;  // mmio guard checks that found the shadow stale
  friend bool operator==(const PerCpuEntry&, const PerCpuEntry&) = default;
};
std::array<uint8_t, kPerCpuEntrySize> EncodePerCpuEntry(const PerCpuEntry& entry);
// Fails only on a wrong size. Any nonzero enabled byte counts as enabled, as in the handlers.
absl::StatusOr<PerCpuEntry> DecodePerCpuEntry(absl::Span<const uint8_t> bytes);

// One CPU's access counters (docs/blob-format.md "Per-CPU counters"): u32s the handlers increment
// with interrupts off and that wrap; the host adds differences.
struct PerCpuStats {
  uint32_t no_apic = 0;  // TPR accesses served without the APIC's MMIO register (shadow, CR8)
  uint32_t apic = 0;     // TPR accesses the handlers made to the APIC's MMIO register
  friend bool operator==(const PerCpuStats&, const PerCpuStats&) = default;
};
// Fails only on a wrong size.
absl::StatusOr<PerCpuStats> DecodePerCpuStats(absl::Span<const uint8_t> bytes);

// A site table entry holds a Site's id (its index), address, form, register, state, original
// and patched bytes (1..kSiteBytesMax, equal lengths). imm is not stored: it is re-derived from
// the original bytes of a kMovMemFromImm site.
absl::StatusOr<std::array<uint8_t, kSiteEntrySize>> EncodeSiteEntry(const Site& site);
// nullopt for an unused (all-zero) entry; an error with the reason for an entry that is not
// sane (unknown form, register or state; length not 5, 6, 7 or 10 as the form says; bytes past
// the length; an and_mem_zero whose immediate is not 0).
absl::StatusOr<std::optional<Site>> DecodeSiteEntry(uint32_t id, absl::Span<const uint8_t> bytes);

// A blob read back from a guest, validated.
struct ParsedBlob {
  BlobPlacement placement;  // from the header; strategy is the current strategy word
  BlobAddresses addresses;
  HandlerTable handlers;
  std::vector<PerCpuEntry> cpus;  // placement.cpu_count entries
  uint32_t tpr_write_va = 0;      // the data block's TPR write address (tpr_va or an alias)
  std::vector<Site> sites;        // every used site table entry, by id
  // The code and header are exactly what this build's InstantiateBlob makes for the placement
  // (false: a blob from another tprd build with the same layout version).
  bool matches_this_build = false;
};

// Validates everything before trusting anything: size, magic, layout version, checksum, every
// header offset and size within the blob and equal to this build's layout, handler addresses
// inside the code, CPU count and guard period in range, strategy word known, every site entry
// sane. DATA_LOSS with the reason otherwise.
// A blob whose header places the data block apart needs that block's bytes in `data_block`
// (read from the header's hdr_data_va); without them it is rejected.
absl::StatusOr<ParsedBlob> ParseBlob(
    absl::Span<const uint8_t> bytes,
    std::optional<absl::Span<const uint8_t>> data_block = std::nullopt);
// The data block address a blob image's header names (no validation: ParseBlob validates).
std::optional<uint32_t> BlobHeaderDataVa(absl::Span<const uint8_t> bytes);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_BLOB_H_

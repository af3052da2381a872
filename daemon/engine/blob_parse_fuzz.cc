// Fuzzes ParseBlob and the record decoders with hostile guest bytes. Half the inputs are raw;
// the other half overlay the input on a valid blob and re-seal its checksum, so the checks
// behind the checksum (offsets, sizes, counts, site entries) are reached too.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "daemon/engine/blob.h"

namespace {

const std::vector<uint8_t>& ValidBlob() {
  static const std::vector<uint8_t> bytes = [] {
    tprd::engine::BlobPlacement placement;
    placement.va = 0x800E8000;
    placement.pa = 0xE8000;
    placement.strategy = tprd::engine::Strategy::kMmio;
    placement.cpu_count = 4;
    auto blob = tprd::engine::InstantiateBlob(placement);
    return blob.ok() ? blob->bytes : std::vector<uint8_t>();
  }();
  return bytes;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const absl::Span<const uint8_t> input(data + 1, size - 1);
  if ((data[0] & 1) == 0 || ValidBlob().empty()) {
    (void)tprd::engine::ParseBlob(input);
    (void)tprd::engine::DecodePerCpuEntry(input);
    (void)tprd::engine::DecodeSiteEntry(0, input);
    return 0;
  }
  // Overlay: the first two input bytes pick the offset (in 4-byte steps), the rest are written.
  std::vector<uint8_t> blob = ValidBlob();
  if (input.size() < 2) return 0;
  const size_t offset = ((input[0] | input[1] << 8) * 4u) % blob.size();
  const size_t count = std::min(input.size() - 2, blob.size() - offset);
  std::copy_n(input.begin() + 2, count, blob.begin() + offset);
  const uint32_t sum = tprd::engine::BlobChecksum(blob);
  for (int i = 0; i < 4; ++i)
    blob[TPRD_BLOB_HDR_CHECKSUM + i] = static_cast<uint8_t>(sum >> (8 * i));
  auto parsed = tprd::engine::ParseBlob(blob);
  if (parsed.ok()) {
    // Whatever parses must re-encode: every site it returns is one EncodeSiteEntry accepts.
    for (const auto& site : parsed->sites) {
      if (!tprd::engine::EncodeSiteEntry(site).ok()) __builtin_trap();
    }
    if (parsed->placement.cpu_count > tprd::engine::kBlobMaxCpus) __builtin_trap();
  }
  return 0;
}

// tprd's blob in one guest: finding one an earlier session left there, installing a new one,
// and the writes into it that keep it working (per-CPU entries, the strategy word), each read
// back. The blob's layout is blob.h's, where it goes placement.h's; when to write what is
// PatchManager's. The guest must be stopped for every write. Not thread-safe: one owner
// (PatchManager) calls everything.
#ifndef TPRD_DAEMON_ENGINE_BLOB_INSTALLATION_H_
#define TPRD_DAEMON_ENGINE_BLOB_INSTALLATION_H_

#include <cstdint>
#include <functional>
#include <optional>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "daemon/engine/blob.h"
#include "daemon/engine/guest_profile.h"
#include "daemon/engine/guest_vm.h"
#include "daemon/engine/site.h"

namespace tprd::engine {

class BlobInstallation {
 public:
  explicit BlobInstallation(GuestVm& vm) : vm_(vm) {}

  // Whether a blob is in the guest (installed, or taken over); the accessors need one.
  bool installed() const { return installed_.has_value(); }
  const BlobAddresses& addresses() const { return installed_->addresses; }
  const HandlerTable& handlers() const { return installed_->handlers; }
  const BlobPlacement& placement() const { return installed_->placement; }

  // tprd's blob in the legacy window, validated; nullopt when there is none. A forged or corrupt
  // one is never trusted: `skipped` hears why, and the search goes on.
  absl::StatusOr<std::optional<ParsedBlob>> Find(
      const std::function<void(const absl::Status&)>& skipped);
  // From now on the blob `Find` returned is this guest's (its sites are the caller's).
  void Take(const ParsedBlob& blob);
  // Places a new blob and writes it, strategy word exact; `guard_period` is mmio's guard's.
  absl::Status Install(const GuestProfile& profile, uint32_t guard_period);
  // Install's two halves, timed apart by the enable: where the blob goes (reads only), then
  // writing it there.
  // `memory_map`: see FindPlacement.
  absl::StatusOr<BlobPlacement> Place(const GuestProfile& profile, uint32_t guard_period,
                                      const std::vector<MemoryRegion>* memory_map = nullptr);
  absl::Status InstallAt(const BlobPlacement& placement);
  // Every profiled CPU's per-CPU entry enabled, its shadow from the real TPR when
  // `from_real_tpr` (or when it was never enabled). `clear_guard_evidence`: the operator asked
  // for a strategy again, so the guard's mismatch counters of an earlier rejection are reset.
  // `cr8_missed_writes` (adopting cr8): a shadow whose real TPR is not its high nibble follows
  // the real TPR.
  absl::Status InitPerCpu(const std::optional<GuestProfile>& profile, bool from_real_tpr,
                          bool clear_guard_evidence = false, bool cr8_missed_writes = false);
  std::optional<PerCpuEntry> ReadPerCpuEntry(uint8_t processor_number);
  absl::Status WriteStrategyWord(Strategy strategy);
  // Writes guest memory through vCPU 0's page tables and reads it back.
  absl::Status WriteVerified(uint32_t va, absl::Span<const uint8_t> bytes);
  // Guest physical address of a byte of the data block (strategy word, per-CPU area).
  uint64_t DataBlockPhysical(uint32_t va) const;

 private:
  struct Installed {
    BlobAddresses addresses;
    HandlerTable handlers;
    BlobPlacement placement;
  };

  GuestVm& vm_;
  std::optional<Installed> installed_;
};

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_BLOB_INSTALLATION_H_

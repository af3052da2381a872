// The guest's own record of its patches: the site table inside the handler blob. The guest
// carries the truth about what was patched, so a restarted daemon (or one on a migration
// target) can list and roll back what it finds there.
#ifndef TPRD_DAEMON_ENGINE_GUEST_SITE_TABLE_H_
#define TPRD_DAEMON_ENGINE_GUEST_SITE_TABLE_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/engine/blob.h"
#include "daemon/engine/guest_vm.h"
#include "daemon/engine/patch_recorder.h"
#include "daemon/engine/site.h"

namespace tprd::engine {

// A PatchRecorder that writes each site's record into the site table of the blob at blob_va,
// through `vcpu`'s page tables (the blob is mapped alike on every vCPU), and reads it back: a
// record that does not read back exactly fails the call. The guest must be stopped.
class GuestSiteTable : public PatchRecorder {
 public:
  GuestSiteTable(GuestVm& vm, int vcpu, uint32_t blob_va);

  // Site ids index the table: id >= kBlobMaxSites is INVALID_ARGUMENT, written nowhere.
  absl::Status RecordSite(const Site& site) override;
  // Records with consecutive ids are written in one write and read back in one read (a site
  // id appearing twice: its last record wins, as site by site).
  absl::Status RecordSites(absl::Span<const Site> sites) override;

 private:
  GuestVm& vm_;
  int vcpu_;
  BlobAddresses addresses_;
};

// Reads the whole blob at blob_va and validates it (ParseBlob), including that its header says
// it lives at blob_va. DATA_LOSS for a blob that is corrupt or not ours.
absl::StatusOr<ParsedBlob> ReadGuestBlob(GuestVm& vm, int vcpu, uint32_t blob_va);

// Every used site record of the blob at blob_va, by id (adopt after a daemon restart).
absl::StatusOr<std::vector<Site>> ReadGuestSiteTable(GuestVm& vm, int vcpu, uint32_t blob_va);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_GUEST_SITE_TABLE_H_

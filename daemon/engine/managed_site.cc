#include "daemon/engine/managed_site.h"

#include "absl/strings/str_cat.h"
#include "daemon/engine/blob.h"

namespace tprd::engine {

std::optional<std::string> CannotPatch(const ManagedSite& managed) {
  if (managed.site.id >= kBlobMaxSites) {
    return absl::StrCat("the guest's site table is full (", kBlobMaxSites, " sites)");
  }
  if (managed.site.patched.empty()) {
    return managed.note.empty() ? std::string("no replacement planned") : managed.note;
  }
  return std::nullopt;
}

}  // namespace tprd::engine

#include "daemon/domain/hypervisor_factory.h"

#include "absl/strings/str_cat.h"

namespace tprd::daemon {
namespace {

// Placeholder until the libvirt adapter is wired in: every call explains
// itself.
class UnwiredHypervisor : public Hypervisor {
public:
  explicit UnwiredHypervisor(std::string uri) : uri_(std::move(uri)) {}

  absl::StatusOr<std::vector<DomainInfo>> ListDomains() override {
    return Error();
  }
  absl::StatusOr<DomainInfo> LookupDomain(const std::string &) override {
    return Error();
  }
  absl::StatusOr<std::unique_ptr<DomainController>>
  OpenController(const DomainInfo &, engine::PatchRecorder *) override {
    return Error();
  }
  void
  SetLifecycleHandler(std::function<void(const LifecycleEvent &)>) override {}

private:
  absl::Status Error() const {
    return absl::UnavailableError(absl::StrCat(
        "this tprd build has no libvirt backend wired in, so ", uri_,
        " cannot be reached; rebuild with the kvm-backend adapter "
        "(daemon/domain/"
        "hypervisor_factory.cc)"));
  }
  std::string uri_;
};

} // namespace

absl::StatusOr<std::unique_ptr<Hypervisor>>
MakeHypervisor(const std::string &connect_uri) {
  return std::make_unique<UnwiredHypervisor>(connect_uri);
}

} // namespace tprd::daemon

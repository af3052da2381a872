// Is this guest one tprd can patch? 32-bit protected mode with paging on every vCPU, a Windows
// KPCR per vCPU (self pointer at +0x1C, unique processor number at +0x51), the local APIC
// mapped in the kernel's address space. Each failure is a refusal with a reason.
#ifndef TPRD_DAEMON_ENGINE_GUEST_PROFILE_H_
#define TPRD_DAEMON_ENGINE_GUEST_PROFILE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "daemon/engine/guest_vm.h"
#include "daemon/engine/page_walker.h"

namespace tprd::engine {

inline constexpr uint64_t kApicBasePhysical = 0xFEE00000;
inline constexpr uint32_t kTprOffset = 0x80;
inline constexpr uint32_t kKernelSpaceStart = 0x80000000;
inline constexpr uint32_t kKpcrSelfOffset = 0x1C;
inline constexpr uint32_t kKpcrNumberOffset = 0x51;

struct VcpuProfile {
  int vcpu = 0;
  uint32_t kpcr = 0;             // FS base, verified by the KPCR self pointer
  uint8_t processor_number = 0;  // fs:[0x51]: the index of the vCPU's per-CPU entry
  PagingRegisters paging;
  uint32_t eip = 0;
};

struct GuestProfile {
  std::vector<VcpuProfile> vcpus;       // by vCPU index
  uint32_t tpr_va = 0;                  // the TPR's virtual address in the kernel's address space
  std::vector<uint32_t> apic_mappings;  // every kernel virtual page mapping the APIC page
  bool pae = false;
};

// Why a vCPU cannot be profiled right now; kUserMode may pass if the guest runs a little.
enum class ProfileFailure : uint8_t { kNone, kUserMode, kUnfit };

// Checks every vCPU and finds the TPR address. The guest must be stopped. FAILED_PRECONDITION
// with the reason for a guest tprd cannot patch; `failure` (optional) says whether retrying
// after the guest ran a little can help (a vCPU was in user mode, where FS is not the KPCR).
absl::StatusOr<GuestProfile> CheckGuestProfile(GuestVm& vm, int max_cpus,
                                               ProfileFailure* failure = nullptr);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_GUEST_PROFILE_H_

#include "daemon/engine/guest_profile.h"

#include <array>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"

namespace tprd::engine {
namespace {

constexpr uint64_t kEferLma = 1u << 10;

absl::Status Unfit(ProfileFailure* failure, ProfileFailure kind, std::string message) {
  if (failure != nullptr) *failure = kind;
  return absl::FailedPreconditionError(std::move(message));
}

absl::StatusOr<uint32_t> ReadU32(GuestVm& vm, int vcpu, uint32_t va) {
  std::array<uint8_t, 4> bytes;
  if (absl::Status s = vm.ReadVirtual(vcpu, va, absl::MakeSpan(bytes)); !s.ok()) return s;
  uint32_t value;
  std::memcpy(&value, bytes.data(), 4);
  return value;
}

}  // namespace

absl::StatusOr<GuestProfile> CheckGuestProfile(GuestVm& vm, int max_cpus, ProfileFailure* failure) {
  if (failure != nullptr) *failure = ProfileFailure::kNone;
  absl::StatusOr<int> count = vm.VcpuCount();
  if (!count.ok()) return count.status();
  if (*count < 1 || *count > max_cpus) {
    return Unfit(failure, ProfileFailure::kUnfit,
                 absl::StrCat("the guest has ", *count, " vCPUs; tprd handles 1 to ", max_cpus));
  }
  GuestProfile profile;
  std::set<uint8_t> numbers;
  for (int v = 0; v < *count; ++v) {
    absl::StatusOr<VcpuRegisters> regs = vm.ReadRegisters(v);
    if (!regs.ok()) return regs.status();
    if ((regs->cr0 & (kCr0Pe | kCr0Pg)) != (kCr0Pe | kCr0Pg)) {
      return Unfit(failure, ProfileFailure::kUnfit,
                   absl::StrCat("vCPU ", v, " is not in protected mode with paging (cr0=0x",
                                absl::Hex(regs->cr0),
                                "): the guest has not booted far enough, try again once it runs"));
    }
    if (regs->efer & kEferLma) {
      return Unfit(failure, ProfileFailure::kUnfit,
                   absl::StrCat("vCPU ", v,
                                " runs in long mode: 64-bit guests use CR8 and need no patching"));
    }
    if ((regs->cs & 3) == 3) {
      return Unfit(failure, ProfileFailure::kUserMode,
                   absl::StrCat("vCPU ", v, " is in user mode, where FS is not the KPCR"));
    }
    VcpuProfile cpu;
    cpu.vcpu = v;
    cpu.kpcr = regs->fs_base;
    cpu.paging = PagingRegisters::From(*regs);
    cpu.eip = regs->eip;
    absl::StatusOr<uint32_t> self = ReadU32(vm, v, cpu.kpcr + kKpcrSelfOffset);
    if (cpu.kpcr == 0 || !self.ok() || *self != cpu.kpcr) {
      return Unfit(
          failure, ProfileFailure::kUnfit,
          absl::StrCat("vCPU ", v, " has no Windows KPCR at its FS base 0x", absl::Hex(cpu.kpcr),
                       " (the self pointer at +0x1C does not match): not a 32-bit "
                       "Windows XP/2003 guest"));
    }
    std::array<uint8_t, 1> number;
    if (absl::Status s = vm.ReadVirtual(v, cpu.kpcr + kKpcrNumberOffset, absl::MakeSpan(number));
        !s.ok()) {
      return s;
    }
    cpu.processor_number = number[0];
    if (cpu.processor_number >= max_cpus || !numbers.insert(cpu.processor_number).second) {
      return Unfit(failure, ProfileFailure::kUnfit,
                   absl::StrCat("vCPU ", v, " has KPCR processor number ", cpu.processor_number,
                                ", which is out of range or shared with another vCPU"));
    }
    profile.vcpus.push_back(cpu);
  }
  profile.pae = (profile.vcpus[0].paging.cr4 & kCr4Pae) != 0;

  GuestVmPhysicalReader memory(vm);
  absl::StatusOr<ReverseLookupResult> apic = FindVirtualMappings(
      memory, profile.vcpus[0].paging, kApicBasePhysical, kKernelSpaceStart, 0xFFFFFFFF);
  if (!apic.ok()) return apic.status();
  for (const VirtualMapping& m : apic->mappings) profile.apic_mappings.push_back(m.va);
  if (profile.apic_mappings.empty()) {
    return Unfit(failure, ProfileFailure::kUnfit,
                 "the local APIC (physical 0xFEE00000) is not mapped in the kernel's address "
                 "space: no TPR accesses to patch");
  }
  // Windows maps it at 0xFFFE0000; prefer that, else the highest mapping (nearest to it).
  uint32_t apic_va = profile.apic_mappings.back();
  for (uint32_t va : profile.apic_mappings) {
    if (va == 0xFFFE0000) apic_va = va;
  }
  profile.tpr_va = apic_va + kTprOffset;
  for (const VcpuProfile& cpu : profile.vcpus) {
    absl::StatusOr<Translation> t = TranslateVirtual(memory, cpu.paging, profile.tpr_va);
    if (!t.ok()) return t.status();
    if (!t->present() || t->physical_address != kApicBasePhysical + kTprOffset) {
      return Unfit(failure, ProfileFailure::kUnfit,
                   absl::StrCat("vCPU ", cpu.vcpu, " does not map the TPR at 0x",
                                absl::Hex(profile.tpr_va), " like vCPU 0 does"));
    }
  }
  return profile;
}

}  // namespace tprd::engine

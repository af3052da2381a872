// The register layout a gdbstub describes in its target description (qXfer:features:read of
// target.xml and the files it includes), and decoding of `g`/`p` replies with it. QEMU's i386
// layout is eax..gs, fs_base, gs_base, k_gs_base, cr0, cr2, cr3, cr4, cr8, efer, then FPU/SSE;
// we read positions from the XML instead of assuming them, and check what we need is there.
#ifndef TPRD_KVM_BACKEND_CORE_GDB_REGISTERS_H_
#define TPRD_KVM_BACKEND_CORE_GDB_REGISTERS_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "daemon/engine/guest_vm.h"

namespace tprd::backend {

struct GdbRegisterInfo {
  std::string name;
  int regnum = 0;  // the number `p`/`P` use
  int bitsize = 0;
  size_t g_offset = 0;  // byte offset in the `g` packet's data
};

// `href` values of `<xi:include href="..."/>` elements, outside comments, in document order.
std::vector<std::string> FindGdbXmlIncludes(std::string_view xml);

class GdbRegisterLayout {
 public:
  // Collects every `<reg>` of `documents` (target.xml and its includes, any order of documents
  // given in include order). A `<reg>` without regnum follows the previous one. Fails on
  // registers with missing/odd sizes, duplicate numbers, or no registers at all.
  static absl::StatusOr<GdbRegisterLayout> FromTargetXml(absl::Span<const std::string> documents);

  const std::vector<GdbRegisterInfo>& registers() const { return registers_; }
  // nullptr if the target has no register of that name.
  const GdbRegisterInfo* Find(std::string_view name) const;
  // Bytes of register data in a full `g` reply.
  size_t g_bytes() const { return g_bytes_; }

  // OK if every register VcpuRegisters holds exists with 32 bits (efer: 32 or 64).
  absl::Status CheckI386() const;
  // Decodes a `g` reply. Registers past the end of a short reply or sent as `xx` (unavailable)
  // are errors if VcpuRegisters needs them.
  absl::StatusOr<engine::VcpuRegisters> DecodeI386(std::string_view g_hex) const;

 private:
  std::vector<GdbRegisterInfo> registers_;  // sorted by regnum
  size_t g_bytes_ = 0;
};

// A register value as `p` returns it: target byte order (little-endian), up to 8 bytes.
absl::StatusOr<uint64_t> DecodeGdbRegisterValue(std::string_view hex);
// The inverse, for `P`: `bytes` bytes of `value`, little-endian hex.
std::string EncodeGdbRegisterValue(uint64_t value, size_t bytes);

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_CORE_GDB_REGISTERS_H_

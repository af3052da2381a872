// Fuzzes the page walker with garbage page tables: the input is a small physical memory whose
// first bytes choose the paging registers. No crash, no sanitizer report, whatever the tables.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "daemon/engine/page_walker.h"

namespace {

class BufferMemory : public tprd::engine::PhysicalMemoryReader {
 public:
  explicit BufferMemory(std::vector<uint8_t> bytes) : bytes_(std::move(bytes)) {}
  absl::Status ReadPhysical(uint64_t pa, absl::Span<uint8_t> out) override {
    if (pa > bytes_.size() || out.size() > bytes_.size() - pa) {
      return absl::OutOfRangeError("outside the buffer");
    }
    std::memcpy(out.data(), bytes_.data() + pa, out.size());
    return absl::OkStatus();
  }

 private:
  std::vector<uint8_t> bytes_;
};

uint32_t Take32(const uint8_t*& data, size_t& size) {
  uint32_t value = 0;
  const size_t n = size < 4 ? size : 4;
  std::memcpy(&value, data, n);
  data += n;
  size -= n;
  return value;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  tprd::engine::PagingRegisters paging;
  paging.cr0 = Take32(data, size) | tprd::engine::kCr0Pg | tprd::engine::kCr0Pe;
  paging.cr3 = Take32(data, size) & 0x3FFFu;  // keep the root inside a small memory
  paging.cr4 = Take32(data, size);
  paging.efer = Take32(data, size);
  paging.physical_address_bits = static_cast<int>(Take32(data, size) % 64);
  const uint32_t va = Take32(data, size);
  // Physical memory: the rest of the input, repeated up to 16 KiB so tables exist.
  std::vector<uint8_t> memory(16 * 1024, 0);
  for (size_t i = 0; size > 0 && i < memory.size(); ++i) memory[i] = data[i % size];
  BufferMemory reader(std::move(memory));
  (void)tprd::engine::TranslateVirtual(reader, paging, va);
  (void)tprd::engine::FindVirtualMappings(reader, paging, va & 0x3FFFu, va & 0xFFC00000u,
                                          (va & 0xFFC00000u) | 0x3FFFFFu);
  return 0;
}

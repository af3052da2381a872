// x86 page-table entry bits and page sizes (Intel SDM vol. 3, 4.3 and 4.4): one set for the page
// walker, the address-space walk and the TPR alias.
#ifndef TPRD_DAEMON_ENGINE_PAGING_BITS_H_
#define TPRD_DAEMON_ENGINE_PAGING_BITS_H_

#include <cstdint>

namespace tprd::engine::pte {

inline constexpr uint64_t kPresent = 1u << 0;
inline constexpr uint64_t kWritable = 1u << 1;
inline constexpr uint64_t kUser = 1u << 2;
inline constexpr uint64_t kWriteThrough = 1u << 3;  // PWT
inline constexpr uint64_t kCacheDisable = 1u << 4;  // PCD
inline constexpr uint64_t kAccessed = 1u << 5;
inline constexpr uint64_t kDirty = 1u << 6;
inline constexpr uint64_t kLargePage = 1u << 7;            // PS, in a PDE (or a PDPTE)
inline constexpr uint64_t kNoExecute = uint64_t{1} << 63;  // XD, PAE only

inline constexpr uint32_t kSmallPageBytes = 4096;
inline constexpr uint32_t kPaeLargePageBytes = 2u << 20;
inline constexpr uint32_t kNonPaeLargePageBytes = 4u << 20;

}  // namespace tprd::engine::pte

#endif  // TPRD_DAEMON_ENGINE_PAGING_BITS_H_

// What GdbClient's two source files share: how an error names a command and adds context.
// Internal to GdbClient (gdb_client_transport.cc, gdb_client_commands.cc).
#ifndef TPRD_KVM_BACKEND_CORE_GDB_CLIENT_ERRORS_H_
#define TPRD_KVM_BACKEND_CORE_GDB_CLIENT_ERRORS_H_

#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace tprd::backend::gdb_client_errors {

// The command as errors name it: long `M` packets are cut.
inline std::string Named(std::string_view payload) {
  constexpr size_t kShown = 48;
  if (payload.size() <= kShown) return absl::StrCat("`", std::string(payload), "`");
  return absl::StrCat("`", std::string(payload.substr(0, kShown)), "...`");
}

inline absl::Status WithContext(const absl::Status& status, std::string_view context) {
  return absl::Status(status.code(), absl::StrCat(std::string(context), ": ", status.message()));
}

}  // namespace tprd::backend::gdb_client_errors

#endif  // TPRD_KVM_BACKEND_CORE_GDB_CLIENT_ERRORS_H_

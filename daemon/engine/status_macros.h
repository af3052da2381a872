// Early return of a failed absl::Status, for code that checks many guest operations in a row.
#ifndef TPRD_DAEMON_ENGINE_STATUS_MACROS_H_
#define TPRD_DAEMON_ENGINE_STATUS_MACROS_H_

#include "absl/status/status.h"

#define TPRD_RETURN_IF_ERROR(expr)            \
  do {                                        \
    if (absl::Status _s = (expr); !_s.ok()) { \
      return _s;                              \
    }                                         \
  } while (0)

#endif  // TPRD_DAEMON_ENGINE_STATUS_MACROS_H_

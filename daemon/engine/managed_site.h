// A site as one domain's patching session keeps it: the site itself, what tprd knows about it
// (its disassembly, how often it ran, why it is not patched) and whether a breakpoint waits on it.
// The daemon reports sites as this type too (DomainController, snapshots, events); only the
// service translates it, into tprd.v1.Site.
#ifndef TPRD_DAEMON_ENGINE_MANAGED_SITE_H_
#define TPRD_DAEMON_ENGINE_MANAGED_SITE_H_

#include <cstdint>
#include <optional>
#include <string>

#include "daemon/engine/site.h"

namespace tprd::engine {

struct ManagedSite {
  Site site;                // state kCandidate = armed, waiting for its first execution
  std::string disassembly;  // the original instruction
  uint64_t hits = 0;        // breakpoint and watchpoint stops attributed to it
  bool armed = false;       // an execution breakpoint is set on it (TrapSet keeps this)
  std::string note;         // why it is not patched, when it is not
};

// Why a candidate can never be patched in this session (no slot in the guest's site table, or
// no replacement planned), or nullopt.
std::optional<std::string> CannotPatch(const ManagedSite& managed);

}  // namespace tprd::engine

#endif  // TPRD_DAEMON_ENGINE_MANAGED_SITE_H_

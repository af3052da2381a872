// Logging for a daemon under journald: one line per event on stderr. Under systemd
// (JOURNAL_STREAM set) each line carries a syslog priority prefix ("<6>"), which journald turns
// into the entry's priority; elsewhere a readable "tprd: info:" prefix.
#ifndef TPRD_DAEMON_LOG_H_
#define TPRD_DAEMON_LOG_H_

#include <string>

namespace tprd::daemon {

void LogError(const std::string& message);
void LogWarning(const std::string& message);
void LogInfo(const std::string& message);
void LogDebug(const std::string& message);
// Debug lines are dropped unless enabled (config `log_level = debug`).
void SetLogDebug(bool enabled);

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_LOG_H_

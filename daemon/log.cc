#include "daemon/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>

namespace tprd::daemon {
namespace {

std::atomic<bool> debug_enabled{false};

void Emit(int priority, const char* label, const std::string& message) {
  static const bool journald = std::getenv("JOURNAL_STREAM") != nullptr;
  static std::mutex mu;
  std::string line;
  // Newlines would split one event into several journal entries.
  for (char c : message) line.push_back(c == '\n' ? ' ' : c);
  std::lock_guard<std::mutex> lock(mu);
  if (journald) {
    std::fprintf(stderr, "<%d>%s\n", priority, line.c_str());
  } else {
    std::fprintf(stderr, "tprd: %s: %s\n", label, line.c_str());
  }
  std::fflush(stderr);
}

}  // namespace

void LogError(const std::string& message) { Emit(3, "error", message); }
void LogWarning(const std::string& message) { Emit(4, "warning", message); }
void LogInfo(const std::string& message) { Emit(6, "info", message); }
void LogDebug(const std::string& message) {
  if (debug_enabled.load()) Emit(7, "debug", message);
}
void SetLogDebug(bool enabled) { debug_enabled.store(enabled); }

}  // namespace tprd::daemon

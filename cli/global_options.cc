#include "cli/global_options.h"

namespace tprd::cli {

void AddGlobalOptions(CLI::App& app, GlobalOptions& options) {
  app.fallthrough();
  app.add_option("--socket", options.socket, "tprd's unix socket")
      ->envname(kSocketEnvironmentVariable)
      ->capture_default_str();
  app.add_flag("--json", options.json, "Print one JSON document (watch: one object per line)");
  app.add_option("--timeout", options.timeout_seconds,
                 "Seconds each call may take (default 60 for enable, rollback and scan, "
                 "10 for the rest)")
      ->check(CLI::PositiveNumber);
}

}  // namespace tprd::cli

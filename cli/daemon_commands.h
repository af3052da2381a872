// tprctl's commands that talk to tprd over gRPC: domains, status, metrics, enable, sites,
// rollback, disable, scan, watch. Only in the full build (they need tprd_proto and gRPC); the
// header itself needs neither, so main can hold the options unconditionally.
#ifndef TPRD_CLI_DAEMON_COMMANDS_H_
#define TPRD_CLI_DAEMON_COMMANDS_H_

#include <CLI/CLI.hpp>
#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "cli/global_options.h"

namespace tprd::cli {

// tprctl's exit codes (docs/usage.md).
enum ExitCode : int {
  kExitOk = 0,
  kExitFailed = 1,       // the operation failed (daemon said so, or partly refused)
  kExitUsage = 2,        // bad command line or a request the daemon called malformed
  kExitNotFound = 3,     // unknown domain or site
  kExitUnreachable = 4,  // no daemon at the socket, or no permission to use it
};

struct DaemonCommandOptions {
  std::string domain;  // name, UUID or ID; empty for `watch` means every domain
  std::string strategy = "auto";
  bool dry_run = false;
  bool transient = false;     // enable: record no intent
  double budget_seconds = 0;  // 0: the daemon's default
  std::vector<uint32_t> site_ids;
  bool force = false;
};

class DaemonCommands {
 public:
  // Registers the subcommands on `app`. `global` and this object must outlive Run.
  DaemonCommands(CLI::App& app, const GlobalOptions& global);

  // Whether the parsed command line named one of these commands.
  bool Parsed() const;

  // Runs the parsed command against tprd; returns the process exit code. Results go to `out`,
  // errors as one line "tprctl: ..." to `err`.
  int Run(std::ostream& out, std::ostream& err);

 private:
  const GlobalOptions& global_;
  DaemonCommandOptions options_;
  CLI::App* domains_ = nullptr;
  CLI::App* status_ = nullptr;
  CLI::App* metrics_ = nullptr;
  CLI::App* enable_ = nullptr;
  CLI::App* sites_ = nullptr;
  CLI::App* rollback_ = nullptr;
  CLI::App* disable_ = nullptr;
  CLI::App* scan_ = nullptr;
  CLI::App* watch_ = nullptr;
};

}  // namespace tprd::cli

#endif  // TPRD_CLI_DAEMON_COMMANDS_H_

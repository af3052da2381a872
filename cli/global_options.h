// tprctl's options that come before the command: where tprd is, output format, deadline.
// Built in every configuration (decode honours --json too); needs no gRPC.
#ifndef TPRD_CLI_GLOBAL_OPTIONS_H_
#define TPRD_CLI_GLOBAL_OPTIONS_H_

#include <CLI/CLI.hpp>
#include <string>

namespace tprd::cli {

inline constexpr char kDefaultSocketPath[] = "/run/tprd/tprd.sock";
inline constexpr char kSocketEnvironmentVariable[] = "TPRD_SOCKET";

struct GlobalOptions {
  // --socket, else $TPRD_SOCKET, else kDefaultSocketPath. A "unix:" prefix is accepted.
  std::string socket = kDefaultSocketPath;
  bool json = false;
  // Deadline of each call in seconds; 0 means the command's own default.
  double timeout_seconds = 0;
};

// Registers --socket, --json and --timeout on `app`, which must also let its subcommands' unknown
// options fall through to it (so `tprctl sites --json D` works like `tprctl --json sites D`).
void AddGlobalOptions(CLI::App& app, GlobalOptions& options);

}  // namespace tprd::cli

#endif  // TPRD_CLI_GLOBAL_OPTIONS_H_

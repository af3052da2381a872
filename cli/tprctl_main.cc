// tprctl: the command-line client of tprd. One file per command group registers its
// subcommands here; main only parses and dispatches.
#include <CLI/CLI.hpp>
#include <iostream>

#include "cli/decode_command.h"
#include "cli/global_options.h"
#ifdef TPRD_HAVE_DAEMON_COMMANDS
#include "cli/daemon_commands.h"
#endif

namespace {

// Usage errors exit 2 (CLI11's own codes start at 100); --help exits 0.
constexpr int kUsageError = 2;

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"tprctl: inspect and control tprd, the TPR patching daemon"};
  app.require_subcommand(1);

  // Before the subcommands: they inherit fallthrough to the global options.
  tprd::cli::GlobalOptions global_options;
  tprd::cli::AddGlobalOptions(app, global_options);

  tprd::cli::DecodeOptions decode_options;
  CLI::App* decode = tprd::cli::AddDecodeCommand(app, decode_options);
#ifdef TPRD_HAVE_DAEMON_COMMANDS
  tprd::cli::DaemonCommands daemon_commands(app, global_options);
#endif

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "tprctl: " << e.what() << " (see tprctl --help)\n";
    return kUsageError;
  }

  if (decode->parsed()) {
    decode_options.json = decode_options.json || global_options.json;
    return tprd::cli::RunDecode(decode_options, std::cout, std::cerr);
  }
#ifdef TPRD_HAVE_DAEMON_COMMANDS
  if (daemon_commands.Parsed()) return daemon_commands.Run(std::cout, std::cerr);
#endif
  std::cerr << "tprctl: no command given (see tprctl --help)\n";
  return kUsageError;
}

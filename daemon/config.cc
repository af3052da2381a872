#include "daemon/config.h"

#include <CLI/CLI.hpp>
#include <cstdlib>
#include <fstream>
#include <optional>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace tprd::daemon {
namespace {

std::string Unquote(std::string value) {
  if (value.size() >= 2 && value.front() == '"' && value.back() == '"') {
    return value.substr(1, value.size() - 2);
  }
  return value;
}

absl::Status ApplySetting(const std::string& key, const std::string& value, Config* config) {
  if (key == "connect") {
    config->connect = value;
  } else if (key == "socket") {
    config->socket = value;
  } else if (key == "socket_group") {
    config->socket_group = value;
  } else if (key == "state_dir") {
    config->state_dir = value;
  } else if (key == "metrics_textfile") {
    if (!value.empty() && value.front() != '/') {
      return absl::InvalidArgumentError(
          absl::StrCat("metrics_textfile must be an absolute path, not \"", value, "\""));
    }
    config->metrics_textfile = value;
  } else if (key == "adopt_domains") {
    if (value.empty()) return absl::InvalidArgumentError("adopt_domains must not be empty");
    config->adopt_domains = value;
  } else if (key == "poll_interval_ms" || key == "stop_timeout_s" || key == "proving_window_s" ||
             key == "mmio_write_stops_per_second" || key == "intent_retry_s" ||
             key == "intent_retry_interval_ms") {
    int number = 0;
    if (!absl::SimpleAtoi(value, &number) || number <= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(key, " must be a positive whole number, not \"", value, "\""));
    }
    if (key == "poll_interval_ms") {
      config->poll_interval = absl::Milliseconds(number);
    } else if (key == "proving_window_s") {
      config->proving_window = absl::Seconds(number);
    } else if (key == "mmio_write_stops_per_second") {
      config->mmio_write_stops_per_second = number;
    } else if (key == "intent_retry_s") {
      config->intent_retry_window = absl::Seconds(number);
    } else if (key == "intent_retry_interval_ms") {
      config->intent_retry_interval = absl::Milliseconds(number);
    } else {
      config->stop_timeout = absl::Seconds(number);
    }
  } else if (key == "before_trace_ms") {
    int number = 0;
    if (!absl::SimpleAtoi(value, &number) || number < 0 || number > 10000) {
      return absl::InvalidArgumentError(absl::StrCat(
          "before_trace_ms must be a whole number from 0 to 10000, not \"", value, "\""));
    }
    config->before_trace = absl::Milliseconds(number);
  } else if (key == "discovery") {
    if (value == "auto") {
      config->discovery.reset();
    } else if (std::optional<engine::Discovery> d = engine::DiscoveryFromName(value)) {
      config->discovery = *d;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("discovery must be auto, breakpoints or watchpoint, not \"", value, "\""));
    }
  } else if (key == "log_level") {
    if (value != "info" && value != "debug") {
      return absl::InvalidArgumentError(
          absl::StrCat("log_level must be info or debug, not \"", value, "\""));
    }
    config->debug = value == "debug";
  } else {
    return absl::InvalidArgumentError(absl::StrCat(
        "unknown setting \"", key,
        "\"; known: connect, socket, socket_group, state_dir, poll_interval_ms, stop_timeout_s, "
        "log_level, adopt_domains, proving_window_s, discovery, mmio_write_stops_per_second, "
        "intent_retry_s, intent_retry_interval_ms, before_trace_ms, metrics_textfile"));
  }
  return absl::OkStatus();
}

// What the command line gave; an option's count says whether it was given at all.
struct Flags {
  std::string connect, socket, state_dir, config, adopt_domains;
};

bool LooksLikeFlag(const std::string& arg) { return arg.size() > 1 && arg.front() == '-'; }

absl::Status UnknownArgument(const std::string& arg) {
  return absl::InvalidArgumentError(absl::StrCat("unknown argument \"", arg, "\""));
}

// The command line as CLI11 is to parse it (reversed, as App::parse wants it), and --help or
// --version when one ended it.
struct SeparatedArgs {
  std::vector<std::string> reversed;
  std::optional<CommandLineAction> then;
};

// CLI11 2.1 (Debian 12) would read `--socket=` (empty) and `--socket --x` by taking the next
// argument, whatever it is, as the value, `-c=URI` as "=URI", and a value glued to a short flag
// (`-cURI`; so `-connect=URI` connects to "onnect=URI"). So before CLI11 parses, each option that
// takes a value is split from its value here: after `=` the value is exactly what follows, even
// empty or starting with '-' (as tprd read it before CLI11); a separate value must exist and must
// not look like a flag (before CLI11, tprd took any next argument). As before CLI11, a single-dash
// argument is a whole flag name or unknown, --help/-h/--version take no `=value`, and the first of
// them ends the command line: what follows is not read, what precedes must parse.
absl::StatusOr<SeparatedArgs> SeparateValues(const CLI::App& app,
                                             const std::vector<std::string>& args) {
  SeparatedArgs separated;
  std::vector<std::string> in_order;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--") {  // the rest are positional (and so unknown) for CLI11 to report
      in_order.insert(in_order.end(), args.begin() + i, args.end());
      break;
    }
    const size_t equals = arg.find('=');
    const std::string name = arg.substr(0, equals);
    const CLI::Option* option = LooksLikeFlag(name) ? app.get_option_no_throw(name) : nullptr;
    if (option == nullptr) {
      if (arg.size() > 2 && arg[0] == '-' && arg[1] != '-') return UnknownArgument(arg);
      in_order.push_back(arg);
      continue;
    }
    if (option->get_items_expected_max() == 0) {  // --help, -h, --version
      if (equals != std::string::npos) return UnknownArgument(arg);
      separated.then =
          option == app.get_help_ptr() ? CommandLineAction::kHelp : CommandLineAction::kVersion;
      break;
    }
    in_order.push_back(name);
    if (equals != std::string::npos) {
      in_order.push_back(arg.substr(equals + 1));
    } else if (i + 1 < args.size() && !LooksLikeFlag(args[i + 1])) {
      in_order.push_back(args[++i]);
    } else if (i + 1 < args.size()) {
      return absl::InvalidArgumentError(
          absl::StrCat(option->get_name(), " needs a value, not the flag \"", args[i + 1],
                       "\" (write ", option->get_name(), "=", args[i + 1], " for that value)"));
    } else {
      return absl::InvalidArgumentError(absl::StrCat(option->get_name(), " needs a value"));
    }
  }
  separated.reversed.assign(in_order.rbegin(), in_order.rend());
  return separated;
}

}  // namespace

absl::Status ApplyConfigText(const std::string& text, const std::string& origin, Config* config) {
  std::istringstream in(text);
  std::string line;
  int number = 0;
  while (std::getline(in, line)) {
    ++number;
    const size_t comment = line.find('#');
    if (comment != std::string::npos) line.resize(comment);
    const std::string trimmed(absl::StripAsciiWhitespace(line));
    if (trimmed.empty()) continue;
    const size_t equals = trimmed.find('=');
    if (equals == std::string::npos) {
      return absl::InvalidArgumentError(
          absl::StrCat(origin, ":", number, ": expected `key = value`, got \"", trimmed, "\""));
    }
    const std::string key(absl::StripAsciiWhitespace(trimmed.substr(0, equals)));
    const std::string value =
        Unquote(std::string(absl::StripAsciiWhitespace(trimmed.substr(equals + 1))));
    absl::Status applied = ApplySetting(key, value, config);
    if (!applied.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(origin, ":", number, ": ", applied.message()));
    }
  }
  return absl::OkStatus();
}

absl::Status ApplyConfigFile(const std::string& path, Config* config) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read config file ", path));
  std::stringstream text;
  text << in.rdbuf();
  return ApplyConfigText(text.str(), path, config);
}

std::string UsageText() {
  return "usage: tprd [--connect URI] [--socket PATH] [--state-dir DIR] [--config FILE]\n"
         "            [--adopt-domains GLOB]\n"
         "  --connect URI     libvirt URI (default qemu:///system; LIBVIRT_DEFAULT_URI also)\n"
         "  --socket PATH     API socket (default /run/tprd/tprd.sock)\n"
         "  --state-dir DIR   journal directory (default /var/lib/tprd)\n"
         "  --config FILE     settings file (default /etc/tprd/tprd.conf if present)\n"
         "  --adopt-domains GLOB  adopt at start only domains whose name matches (default *)\n"
         "  --help, --version\n";
}

absl::StatusOr<CommandLineAction> ParseCommandLine(const std::vector<std::string>& args,
                                                   Config* config) {
  // UsageText() is the help; CLI11 only parses (so its option descriptions stay empty).
  CLI::App app{"tprd"};
  Flags flags;
  try {
    app.option_defaults()->multi_option_policy(CLI::MultiOptionPolicy::TakeLast);
    app.set_version_flag("--version", kVersionText);
    app.add_option("-c,--connect", flags.connect);
    app.add_option("--socket", flags.socket);
    app.add_option("--state-dir", flags.state_dir);
    app.add_option("--config", flags.config);
    app.add_option("--adopt-domains", flags.adopt_domains);
    absl::StatusOr<SeparatedArgs> separated = SeparateValues(app, args);
    if (!separated.ok()) return separated.status();
    app.parse(separated->reversed);
    if (separated->then) return *separated->then;
  } catch (const CLI::ExtrasError&) {
    const std::vector<std::string> extras = app.remaining();
    return absl::InvalidArgumentError(
        absl::StrCat(extras.size() == 1 ? "unknown argument \"" : "unknown arguments \"",
                     absl::StrJoin(extras, "\", \""), "\""));
  } catch (const CLI::Error& error) {
    return absl::InvalidArgumentError(error.what());
  }
  // Environment below the file, the file below the flags.
  if (const char* uri = std::getenv("LIBVIRT_DEFAULT_URI"); uri != nullptr && *uri != '\0') {
    config->connect = uri;
  }
  if (app.count("--config") > 0) {
    config->config_file = flags.config;
    absl::Status read = ApplyConfigFile(flags.config, config);
    if (!read.ok()) return read;
  } else {
    absl::Status read = ApplyConfigFile(kDefaultConfigFile, config);
    if (!read.ok() && !absl::IsNotFound(read)) return read;
    if (read.ok()) config->config_file = kDefaultConfigFile;
  }
  if (app.count("--connect") > 0) config->connect = flags.connect;
  if (app.count("--socket") > 0) config->socket = flags.socket;
  if (app.count("--state-dir") > 0) config->state_dir = flags.state_dir;
  if (app.count("--adopt-domains") > 0) {
    if (flags.adopt_domains.empty()) {
      return absl::InvalidArgumentError("--adopt-domains needs a pattern");
    }
    config->adopt_domains = flags.adopt_domains;
  }
  return CommandLineAction::kRun;
}

}  // namespace tprd::daemon

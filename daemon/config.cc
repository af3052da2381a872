#include "daemon/config.h"

#include <fstream>
#include <map>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

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
  } else if (key == "adopt_domains") {
    if (value.empty()) return absl::InvalidArgumentError("adopt_domains must not be empty");
    config->adopt_domains = value;
  } else if (key == "poll_interval_ms" || key == "stop_timeout_s" || key == "proving_window_s" ||
             key == "mmio_write_stops_per_second") {
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
    } else {
      config->stop_timeout = absl::Seconds(number);
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
        "log_level, adopt_domains, proving_window_s, mmio_write_stops_per_second"));
  }
  return absl::OkStatus();
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
  std::map<std::string, std::string> flags;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    if (arg == "--help" || arg == "-h") return CommandLineAction::kHelp;
    if (arg == "--version") return CommandLineAction::kVersion;
    std::string name = arg, value;
    const size_t equals = arg.find('=');
    if (equals != std::string::npos) {
      name = arg.substr(0, equals);
      value = arg.substr(equals + 1);
    }
    if (name == "-c") name = "--connect";
    if (name != "--connect" && name != "--socket" && name != "--state-dir" && name != "--config" &&
        name != "--adopt-domains") {
      return absl::InvalidArgumentError(absl::StrCat("unknown argument \"", arg, "\""));
    }
    if (equals == std::string::npos) {
      if (i + 1 >= args.size()) {
        return absl::InvalidArgumentError(absl::StrCat(name, " needs a value"));
      }
      value = args[++i];
    }
    flags[name] = value;
  }
  // Environment below the file, the file below the flags.
  if (const char* uri = std::getenv("LIBVIRT_DEFAULT_URI"); uri != nullptr && *uri != '\0') {
    config->connect = uri;
  }
  if (auto it = flags.find("--config"); it != flags.end()) {
    config->config_file = it->second;
    absl::Status read = ApplyConfigFile(it->second, config);
    if (!read.ok()) return read;
  } else {
    absl::Status read = ApplyConfigFile(kDefaultConfigFile, config);
    if (!read.ok() && !absl::IsNotFound(read)) return read;
    if (read.ok()) config->config_file = kDefaultConfigFile;
  }
  if (auto it = flags.find("--connect"); it != flags.end()) config->connect = it->second;
  if (auto it = flags.find("--socket"); it != flags.end()) config->socket = it->second;
  if (auto it = flags.find("--state-dir"); it != flags.end()) config->state_dir = it->second;
  if (auto it = flags.find("--adopt-domains"); it != flags.end()) {
    if (it->second.empty()) return absl::InvalidArgumentError("--adopt-domains needs a pattern");
    config->adopt_domains = it->second;
  }
  return CommandLineAction::kRun;
}

}  // namespace tprd::daemon

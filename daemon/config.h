// tprd's settings: defaults, then the config file, then the command line (last wins).
//
// Config file format: one `key = value` per line; `#` starts a comment; blank lines ignored;
// values may be quoted with "...". Keys:
//   connect          libvirt URI                         (default qemu:///system)
//   socket           API socket path                     (default /run/tprd/tprd.sock)
//   socket_group     group given the socket              (default tprd, when it exists)
//   state_dir        journal and state                   (default /var/lib/tprd)
//   poll_interval_ms longest a patched domain's actor waits in one Poll (default 1000)
//   stop_timeout_s   time to detach every guest on SIGTERM (default 60)
//   log_level        info | debug                        (default info)
//   proving_window_s how long breakpoints wait on candidates not yet run (default 60); after
//                    that only mmio's writers keep theirs
//   discovery        auto | breakpoints | watchpoint (default auto): how a candidate is proven
//                    to be code before it is patched. breakpoints: an execution breakpoint on
//                    each; watchpoint: never a breakpoint on bytes not proven to be code, only
//                    the TPR watchpoint (KVM writes breakpoints into guest memory as int3). auto:
//                    breakpoints when QEMU reports TCG, watchpoint otherwise (KVM, or unknown)
//   adopt_domains    shell glob of domain names adopted at start (default *: every domain);
//                    operators' commands reach any domain either way; also which domains'
//                    recorded intent tprd applies
//   intent_retry_s   how long tprd keeps trying to apply a domain's intent after it starts or
//                    reboots (default 300): its kernel must boot before there is anything to patch
//   intent_retry_interval_ms  how often it tries meanwhile (default 2000)
//   before_trace_ms  how long an enable that places tprd's blob first traces QEMU's APIC
//                    emulation to count the TPR accesses reaching it, before anything is
//                    patched (default 500; 0: not at all; docs/design.md "Rates and metrics")
//   metrics_textfile absolute path of a file tprd rewrites atomically every 5 s with its
//                    Prometheus exposition, for node_exporter's textfile collector (a *.prom
//                    file in its directory); empty (default): none
#ifndef TPRD_DAEMON_CONFIG_H_
#define TPRD_DAEMON_CONFIG_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/engine/site.h"

namespace tprd::daemon {

struct Config {
  std::string connect = "qemu:///system";
  std::string socket = "/run/tprd/tprd.sock";
  std::string socket_group = "tprd";
  std::string state_dir = "/var/lib/tprd";
  std::string config_file;  // empty: /etc/tprd/tprd.conf if it exists
  absl::Duration poll_interval = absl::Seconds(1);
  absl::Duration stop_timeout = absl::Seconds(60);
  absl::Duration proving_window = absl::Seconds(60);
  std::optional<engine::Discovery> discovery;  // nullopt: auto (by the domain's accelerator)
  // mmio: stops at TPR writes tprd cannot patch tolerated per second before the domain goes to
  // exact (engine::EnableRequest::unpatched_write_stops_per_second_limit).
  int mmio_write_stops_per_second = 200;
  bool debug = false;
  std::string adopt_domains = "*";
  absl::Duration intent_retry_window = absl::Minutes(5);
  absl::Duration intent_retry_interval = absl::Seconds(2);
  absl::Duration before_trace = absl::Milliseconds(500);
  std::string metrics_textfile;
  absl::Duration metrics_textfile_interval = absl::Seconds(5);
};

inline constexpr char kDefaultConfigFile[] = "/etc/tprd/tprd.conf";

// Applies `key = value` lines to `config`. INVALID_ARGUMENT names the line and what is wrong.
absl::Status ApplyConfigText(const std::string& text, const std::string& origin, Config* config);

// Reads a config file into `config`. NOT_FOUND if it does not exist.
absl::Status ApplyConfigFile(const std::string& path, Config* config);

inline constexpr char kVersionText[] = "tprd 0.1.0";

// Parses `tprd [--connect URI] [--socket PATH] [--state-dir DIR] [--config FILE]
// [--adopt-domains GLOB]` (plus -h/--help and --version, reported through the action; the first
// of them ends the command line) with CLI11, as tprctl does. A value follows its flag as
// `--flag VALUE` (VALUE must not look like a flag) or `--flag=VALUE` (anything, even empty),
// never glued to a short flag; `-c` is --connect; a flag given twice keeps its last value. Reads
// the config file first so flags win. INVALID_ARGUMENT names the bad argument; a config file's
// errors come back as ApplyConfigFile returns them. Never throws.
enum class CommandLineAction { kRun, kHelp, kVersion };
absl::StatusOr<CommandLineAction> ParseCommandLine(const std::vector<std::string>& args,
                                                   Config* config);

std::string UsageText();

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_CONFIG_H_

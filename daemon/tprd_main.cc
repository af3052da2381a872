// tprd: the host daemon. Serves tprd.v1 on a unix socket, one actor per domain, and on
// SIGTERM/SIGINT leaves every patched guest correct without it (exact, no traps) before exit 0.
#include <signal.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "daemon/actor/domain_registry.h"
#include "daemon/config.h"
#include "daemon/domain/hypervisor_factory.h"
#include "daemon/events/event_bus.h"
#include "daemon/journal/journal.h"
#include "daemon/log.h"
#include "daemon/metrics/exposition.h"
#include "daemon/metrics/textfile_writer.h"
#include "daemon/server/api_server.h"
#include "daemon/service/tprd_service.h"

#ifdef TPRD_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

namespace tprd::daemon {
namespace {

// sd_notify is a no-op without NOTIFY_SOCKET, so calling it unconditionally is safe.
void Notify(const std::string& state) {
#ifdef TPRD_HAVE_SYSTEMD
  sd_notify(0, state.c_str());
#else
  (void)state;
#endif
}

absl::Status PrepareStateDir(const std::string& dir) {
  std::error_code error;
  std::filesystem::create_directories(dir, error);
  if (error) {
    return absl::UnavailableError(
        absl::StrCat("cannot create state directory ", dir, ": ", error.message()));
  }
  return absl::OkStatus();
}

int Run(const Config& config) {
  SetLogDebug(config.debug);
  // Signals are taken synchronously by this thread; every thread started later inherits the
  // mask, so no other thread is interrupted by them.
  sigset_t stop_signals;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGTERM);
  sigaddset(&stop_signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &stop_signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  absl::Status state_dir = PrepareStateDir(config.state_dir);
  if (!state_dir.ok()) {
    LogError(std::string(state_dir.message()));
    return 1;
  }
  auto journal = Journal::Open(config.state_dir + "/" + Journal::kFileName);
  if (!journal.ok()) {
    LogError(std::string(journal.status().message()));
    return 1;
  }
  EngineControllerOptions controller_options;
  controller_options.proving_window = config.proving_window;
  controller_options.mmio_write_stops_per_second = config.mmio_write_stops_per_second;
  controller_options.discovery = config.discovery;
  controller_options.before_trace = config.before_trace;
  auto hypervisor = MakeHypervisor(config.connect, controller_options);
  if (!hypervisor.ok()) {
    LogError(absl::StrCat("cannot use ", config.connect, ": ", hypervisor.status().message()));
    return 1;
  }
  EventBus bus;
  DomainActorOptions actor_options;
  actor_options.poll_interval = config.poll_interval;
  actor_options.intent_retry_window = config.intent_retry_window;
  actor_options.intent_retry_interval = config.intent_retry_interval;
  auto registry =
      std::make_unique<DomainRegistry>(hypervisor->get(), journal->get(), &bus, actor_options);
  TprdService service(registry.get(), &bus);
  ApiServerOptions server_options;
  server_options.socket_path = config.socket;
  server_options.group = config.socket_group;
  auto server = ApiServer::Start(server_options, &service);
  if (!server.ok()) {
    LogError(std::string(server.status().message()));
    return 1;
  }
  LogInfo(absl::StrCat("serving on ", (*server)->address(), ", libvirt ", config.connect,
                       ", state in ", config.state_dir,
                       config.config_file.empty() ? "" : ", config ", config.config_file));

  // The exposition for node_exporter's textfile collector, from the start (adopts included).
  AtomicMetricsFile metrics_file;
  std::unique_ptr<MetricsTextfileWriter> textfile;
  if (!config.metrics_textfile.empty()) {
    textfile = std::make_unique<MetricsTextfileWriter>(
        config.metrics_textfile, config.metrics_textfile_interval,
        [&registry]() -> absl::StatusOr<std::string> {
          auto domains = registry->ListDomains();
          if (!domains.ok()) return domains.status();
          return MetricsText(*domains);
        },
        &metrics_file);
    textfile->Start();
    LogInfo(absl::StrCat("writing metrics to ", config.metrics_textfile, " every ",
                         absl::FormatDuration(config.metrics_textfile_interval)));
  }

  // Take back guests a previous tprd patched (and any left stopped at a trap by a kill -9).
  auto adopted = registry->AdoptRunning(absl::Now() + absl::Minutes(2), config.adopt_domains);
  if (!adopted.ok()) {
    LogWarning(absl::StrCat("adopting running domains failed: ", adopted.status().message()));
  }
  const int adopted_count = adopted.ok() ? *adopted : 0;
  Notify(absl::StrCat("READY=1\nSTATUS=serving on ", (*server)->address(), "; ", adopted_count,
                      " patched domain(s) adopted"));

  int signal_number = 0;
  while (sigwait(&stop_signals, &signal_number) != 0) {
  }
  LogInfo(absl::StrCat("received ", strsignal(signal_number),
                       "; leaving every patched guest on the exact strategy"));
  Notify("STOPPING=1\nSTATUS=detaching from guests");
  service.StopStreams();
  if (textfile) textfile->Stop();
  absl::Status detached =
      registry->DetachAll(absl::StrCat("tprd stopping (", strsignal(signal_number), ")"),
                          absl::Now() + config.stop_timeout);
  // The file's last word: every guest let go (exact while away), not the numbers of a moment
  // before.
  if (textfile) (void)textfile->WriteOnce();
  (*server)->Shutdown(absl::Now() + absl::Seconds(2));
  registry.reset();
  if (!detached.ok()) {
    LogError(absl::StrCat("some guests could not be detached cleanly: ", detached.message(),
                          "; a restarted tprd adopts them"));
    return 1;
  }
  LogInfo("stopped");
  return 0;
}

}  // namespace
}  // namespace tprd::daemon

int main(int argc, char** argv) {
  using tprd::daemon::CommandLineAction;
  tprd::daemon::Config config;
  std::vector<std::string> args(argv + 1, argv + argc);
  auto action = tprd::daemon::ParseCommandLine(args, &config);
  if (!action.ok()) {
    std::cerr << "tprd: " << action.status().message() << "\n" << tprd::daemon::UsageText();
    return 2;
  }
  if (*action == CommandLineAction::kHelp) {
    std::cout << tprd::daemon::UsageText();
    return 0;
  }
  if (*action == CommandLineAction::kVersion) {
    std::cout << tprd::daemon::kVersionText << "\n";
    return 0;
  }
  return tprd::daemon::Run(config);
}

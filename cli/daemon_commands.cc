#include "cli/daemon_commands.h"

#include <errno.h>
#include <grpcpp/grpcpp.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <cmath>
#include <memory>
#include <nlohmann/json.hpp>
#include <ostream>
#include <string_view>
#include <thread>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "cli/daemon_output.h"
#include "tprd/v1/tprd.grpc.pb.h"

namespace tprd::cli {
namespace {

// Default deadlines: commands that work on a guest may wait for discovery and the domain's
// actor; reads answer from a snapshot.
constexpr double kGuestCommandTimeoutSeconds = 60;
constexpr double kReadTimeoutSeconds = 10;
// An enable's deadline also covers its discovery budget plus this margin.
constexpr double kEnableMarginSeconds = 30;

std::string SocketPath(const GlobalOptions& global) {
  std::string_view path = global.socket;
  if (path.substr(0, 5) == "unix:") path.remove_prefix(5);
  return std::string(path);
}

// Well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, nothing above U+10FFFF).
bool IsUtf8(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto byte = [&](size_t at) { return static_cast<unsigned char>(text[at]); };
    const unsigned char lead = byte(i);
    size_t length = 0;
    uint32_t min = 0, code = 0;
    if (lead < 0x80) {
      ++i;
      continue;
    } else if ((lead & 0xE0) == 0xC0) {
      length = 2, min = 0x80, code = lead & 0x1F;
    } else if ((lead & 0xF0) == 0xE0) {
      length = 3, min = 0x800, code = lead & 0x0F;
    } else if ((lead & 0xF8) == 0xF0) {
      length = 4, min = 0x10000, code = lead & 0x07;
    } else {
      return false;
    }
    if (i + length > text.size()) return false;
    for (size_t k = 1; k < length; ++k) {
      if ((byte(i + k) & 0xC0) != 0x80) return false;
      code = (code << 6) | (byte(i + k) & 0x3F);
    }
    if (code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return false;
    i += length;
  }
  return true;
}

// The caller's login name, for the usermod hint; "NAME" when it has none.
std::string UserName() {
  struct passwd entry;
  struct passwd* found = nullptr;
  char buffer[4096];
  if (::getpwuid_r(::getuid(), &entry, buffer, sizeof(buffer), &found) != 0 || found == nullptr) {
    return "NAME";
  }
  return found->pw_name;
}

std::string UnreachableMessage(const std::string& socket, const std::string& why) {
  return absl::StrCat("cannot reach tprd at ", socket, ": ", why,
                      " (is tprd running? are you in group tprd?)");
}

// No permission on the socket or its directory: say who may use tprd and how to become one.
std::string PermissionMessage(const std::string& socket) {
  return absl::StrCat("cannot reach tprd at ", socket,
                      ": permission denied: only root and members of group tprd may use tprd; "
                      "run tprctl as root, or have an administrator run `usermod -aG tprd ",
                      UserName(), "` and log in again");
}

// The daemon's socket must exist and be usable before gRPC gets to say something vaguer.
bool CheckSocket(const std::string& socket, std::ostream& err) {
  struct stat info;
  if (::stat(socket.c_str(), &info) != 0) {
    if (errno == EACCES || errno == EPERM) {
      err << "tprctl: " << PermissionMessage(socket) << "\n";
    } else {
      err << "tprctl: " << UnreachableMessage(socket, ::strerror(errno)) << "\n";
    }
    return false;
  }
  if (!S_ISSOCK(info.st_mode)) {
    err << "tprctl: " << UnreachableMessage(socket, "not a socket") << "\n";
    return false;
  }
  if (::access(socket.c_str(), R_OK | W_OK) != 0) {
    if (errno == EACCES || errno == EPERM) {
      err << "tprctl: " << PermissionMessage(socket) << "\n";
    } else {
      err << "tprctl: " << UnreachableMessage(socket, ::strerror(errno)) << "\n";
    }
    return false;
  }
  return true;
}

// One call's plumbing: the channel, and turning a failed status into a message and exit code.
class Client {
 public:
  Client(const GlobalOptions& global, double default_timeout_seconds)
      : socket_(SocketPath(global)),
        timeout_seconds_(global.timeout_seconds > 0 ? global.timeout_seconds
                                                    : default_timeout_seconds),
        channel_(grpc::CreateChannel("unix:" + socket_, grpc::InsecureChannelCredentials())),
        stub_(tprd::v1::Tprd::NewStub(channel_)) {}

  tprd::v1::Tprd::Stub& stub() { return *stub_; }

  // Every unary call carries a deadline.
  void SetDeadline(grpc::ClientContext& context) const {
    context.set_deadline(std::chrono::system_clock::now() +
                         std::chrono::milliseconds(static_cast<int64_t>(timeout_seconds_ * 1000)));
  }

  int Fail(const grpc::Status& status, std::ostream& err) {
    const std::string& message = status.error_message();
    switch (status.error_code()) {
      case grpc::StatusCode::NOT_FOUND:
        err << "tprctl: " << message << "\n";
        return kExitNotFound;
      case grpc::StatusCode::INVALID_ARGUMENT:
        err << "tprctl: " << message << "\n";
        return kExitUsage;
      case grpc::StatusCode::UNAVAILABLE:
        // A connected channel means tprd itself answered (libvirt down, tprd stopping).
        if (channel_->GetState(false) == GRPC_CHANNEL_READY) {
          err << "tprctl: " << message << "\n";
        } else {
          err << "tprctl: " << UnreachableMessage(socket_, message) << "\n";
        }
        return kExitUnreachable;
      case grpc::StatusCode::PERMISSION_DENIED:
      case grpc::StatusCode::UNAUTHENTICATED:
        err << "tprctl: tprd at " << socket_ << " refused access: " << message
            << " (are you in group tprd?)\n";
        return kExitUnreachable;
      case grpc::StatusCode::DEADLINE_EXCEEDED:
        err << "tprctl: no answer from tprd within " << timeout_seconds_ << " s (" << message
            << "); an operation already started still completes: check `tprctl status`, or "
               "raise --timeout\n";
        return kExitFailed;
      default:
        err << "tprctl: " << message << "\n";
        return kExitFailed;
    }
  }

 private:
  const std::string socket_;
  const double timeout_seconds_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<tprd::v1::Tprd::Stub> stub_;
};

using Stub = tprd::v1::Tprd::Stub;

template <typename Request, typename Response>
using UnaryMethod = grpc::Status (Stub::*)(grpc::ClientContext*, const Request&, Response*);

// The call every command but watch makes: one unary call under the command's deadline. Returns
// kExitOk with `response` filled, or the failure's exit code after writing its message to `err`.
template <typename Request, typename Response>
int CallTprd(const GlobalOptions& global, double default_timeout_seconds,
             UnaryMethod<Request, Response> method, const Request& request, Response* response,
             std::ostream& err) {
  Client client(global, default_timeout_seconds);
  grpc::ClientContext context;
  client.SetDeadline(context);
  grpc::Status status = (client.stub().*method)(&context, request, response);
  return status.ok() ? kExitOk : client.Fail(status, err);
}

int RunDomains(const GlobalOptions& global, std::ostream& out, std::ostream& err) {
  tprd::v1::ListDomainsResponse response;
  const int called = CallTprd(global, kReadTimeoutSeconds, &Stub::ListDomains,
                              tprd::v1::ListDomainsRequest(), &response, err);
  if (called != kExitOk) return called;
  if (global.json) {
    Json domains = Json::array();
    for (const auto& summary : response.domains()) {
      domains.push_back(Json{{"name", summary.domain().name()},
                             {"uuid", summary.domain().uuid()},
                             {"id", summary.domain().id()},
                             {"running", summary.running()},
                             {"state", OrNull(DomainStateWord(summary.state()))},
                             {"strategy", OrNull(StrategyWord(summary.strategy()))},
                             {"sites_applied", summary.sites_applied()},
                             {"intent", IntentJson(summary)},
                             {"intent_error", summary.intent_error()}});
    }
    PrintJson(Json{{"domains", domains}}, out);
    return kExitOk;
  }
  Table table({"NAME", "ID", "STATE", "STRATEGY", "SITES", "INTENT", "UUID"});
  for (const auto& summary : response.domains()) {
    const int id = summary.domain().id();
    table.Add({summary.domain().name(), id < 0 ? "-" : absl::StrCat(id),
               OrDash(DomainStateWord(summary.state())), OrDash(StrategyWord(summary.strategy())),
               absl::StrCat(summary.sites_applied()), IntentWord(summary),
               summary.domain().uuid()});
  }
  table.Print(out);
  return kExitOk;
}

int RunStatus(const GlobalOptions& global, const DaemonCommandOptions& options, std::ostream& out,
              std::ostream& err) {
  tprd::v1::GetDomainRequest request;
  request.set_domain(options.domain);
  tprd::v1::DomainStatus response;
  const int called =
      CallTprd(global, kReadTimeoutSeconds, &Stub::GetDomain, request, &response, err);
  if (called != kExitOk) return called;
  if (global.json) {
    PrintJson(StatusJson(response), out);
  } else {
    PrintStatus(response, out);
  }
  return kExitOk;
}

tprd::v1::Strategy StrategyFromWord(const std::string& word) {
  if (word == "mmio") return tprd::v1::STRATEGY_MMIO;
  if (word == "cr8") return tprd::v1::STRATEGY_CR8;
  if (word == "exact") return tprd::v1::STRATEGY_EXACT;
  return tprd::v1::STRATEGY_AUTO;  // the parser admits only these four words
}

int RunEnable(const GlobalOptions& global, const DaemonCommandOptions& options, std::ostream& out,
              std::ostream& err) {
  tprd::v1::EnablePatchingRequest request;
  request.set_domain(options.domain);
  request.set_strategy(StrategyFromWord(options.strategy));
  request.set_dry_run(options.dry_run);
  request.set_discovery_budget_ms(
      static_cast<uint32_t>(std::llround(options.budget_seconds * 1000)));
  request.set_transient(options.transient);
  tprd::v1::EnablePatchingResponse response;
  const int called = CallTprd(
      global, std::max(kGuestCommandTimeoutSeconds, options.budget_seconds + kEnableMarginSeconds),
      &Stub::EnablePatching, request, &response, err);
  if (called != kExitOk) return called;
  if (global.json) {
    Json sites = Json::array();
    for (const auto& site : response.sites()) sites.push_back(SiteJson(site));
    PrintJson(Json{{"domain", response.status().domain().name()},
                   {"dry_run", options.dry_run},
                   {"status", StatusJson(response.status())},
                   {"sites", sites}},
              out);
    return kExitOk;
  }
  const tprd::v1::DomainStatus& after = response.status();
  if (options.dry_run) {
    out << after.domain().name() << ": dry run, nothing written; " << response.sites_size()
        << " sites would be patched\n";
  } else {
    out << after.domain().name() << ": " << OrDash(DomainStateWord(after.state())) << ", strategy "
        << OrDash(StrategyWord(after.strategy())) << ", " << after.sites_applied()
        << " sites applied, " << after.sites_candidate() << " armed for first execution\n";
  }
  if (response.sites_size() > 0) PrintSites(response.sites(), out);
  return kExitOk;
}

int RunSites(const GlobalOptions& global, const DaemonCommandOptions& options, std::ostream& out,
             std::ostream& err) {
  tprd::v1::ListSitesRequest request;
  request.set_domain(options.domain);
  tprd::v1::ListSitesResponse response;
  const int called =
      CallTprd(global, kReadTimeoutSeconds, &Stub::ListSites, request, &response, err);
  if (called != kExitOk) return called;
  if (global.json) {
    Json sites = Json::array();
    for (const auto& site : response.sites()) sites.push_back(SiteJson(site));
    PrintJson(Json{{"domain", response.domain().name()}, {"sites", sites}}, out);
  } else if (response.sites_size() == 0) {
    out << response.domain().name() << ": no sites\n";
  } else {
    PrintSites(response.sites(), out);
  }
  return kExitOk;
}

// What rollback and disable print: the sites restored and refused, the state after. Some sites
// left alone is a partial failure: scripts must not assume the guest is clean.
int PrintRollback(const GlobalOptions& global, const tprd::v1::RollbackResponse& response,
                  const std::string& intent_note, Json extra, std::ostream& out,
                  std::ostream& err) {
  const int code = response.refused_size() > 0 ? kExitFailed : kExitOk;
  if (global.json) {
    Json refused = Json::array();
    for (const auto& refusal : response.refused()) {
      refused.push_back(Json{{"id", refusal.site_id()}, {"reason", refusal.reason()}});
    }
    Json document = Json{{"domain", response.status().domain().name()}};
    document.update(extra);
    document["rolled_back"] =
        Json(std::vector<uint32_t>(response.rolled_back().begin(), response.rolled_back().end()));
    document["refused"] = refused;
    document["status"] = StatusJson(response.status());
    PrintJson(document, out);
    return code;
  }
  out << response.status().domain().name() << ": " << intent_note << "rolled back "
      << response.rolled_back_size() << " sites";
  if (response.rolled_back_size() > 0) {
    out << " (" << absl::StrJoin(response.rolled_back(), " ") << ")";
  }
  out << "; state " << OrDash(DomainStateWord(response.status().state())) << "\n";
  for (const auto& refusal : response.refused()) {
    out << "site " << refusal.site_id() << " not rolled back: " << refusal.reason() << "\n";
  }
  if (code != kExitOk) {
    err << "tprctl: " << response.refused_size()
        << " sites were not rolled back (see above; --force overwrites changed bytes)\n";
  }
  return code;
}

int RunRollback(const GlobalOptions& global, const DaemonCommandOptions& options, std::ostream& out,
                std::ostream& err) {
  tprd::v1::RollbackRequest request;
  request.set_domain(options.domain);
  for (uint32_t id : options.site_ids) request.add_site_ids(id);
  request.set_force(options.force);
  tprd::v1::RollbackResponse response;
  const int called =
      CallTprd(global, kGuestCommandTimeoutSeconds, &Stub::Rollback, request, &response, err);
  if (called != kExitOk) return called;
  return PrintRollback(global, response, "", Json::object(), out, err);
}

int RunDisable(const GlobalOptions& global, const DaemonCommandOptions& options, std::ostream& out,
               std::ostream& err) {
  tprd::v1::DisablePatchingRequest request;
  request.set_domain(options.domain);
  request.set_force(options.force);
  tprd::v1::DisablePatchingResponse response;
  const int called = CallTprd(global, kGuestCommandTimeoutSeconds, &Stub::DisablePatching, request,
                              &response, err);
  if (called != kExitOk) return called;
  return PrintRollback(global, response.rollback(),
                       response.intent_removed() ? "intent removed, " : "no intent was recorded, ",
                       Json{{"intent_removed", response.intent_removed()}}, out, err);
}

int RunScan(const GlobalOptions& global, const DaemonCommandOptions& options, std::ostream& out,
            std::ostream& err) {
  tprd::v1::ScanRequest request;
  request.set_domain(options.domain);
  tprd::v1::ScanResponse response;
  const int called =
      CallTprd(global, kGuestCommandTimeoutSeconds, &Stub::Scan, request, &response, err);
  if (called != kExitOk) return called;
  if (global.json) {
    Json candidates = Json::array();
    for (const auto& candidate : response.candidates()) {
      Json entry = SiteJson(candidate.site());
      entry["patchable"] = candidate.patchable();
      entry["reason"] = candidate.reason();
      candidates.push_back(std::move(entry));
    }
    PrintJson(Json{{"domain", response.domain().name()}, {"candidates", candidates}}, out);
    return kExitOk;
  }
  if (response.candidates_size() == 0) {
    out << response.domain().name() << ": no TPR accesses found\n";
    return kExitOk;
  }
  Table table({"ID", "ADDRESS", "FORM", "PATCHABLE", "REASON", "DISASSEMBLY"});
  for (const auto& candidate : response.candidates()) {
    const tprd::v1::Site& site = candidate.site();
    table.Add({absl::StrCat(site.id()), Address(site.address()), OrDash(FormWord(site.form())),
               candidate.patchable() ? "yes" : "no", OrDash(candidate.reason()),
               site.disassembly()});
  }
  table.Print(out);
  return kExitOk;
}

// Streams until the daemon ends the stream or the user interrupts (SIGINT/SIGTERM), which is a
// normal end: exit 0. The signals are taken by a thread of our own, because gRPC's blocking read
// can only be ended by cancelling the call from elsewhere.
int RunWatch(const GlobalOptions& global, const DaemonCommandOptions& options, std::ostream& out,
             std::ostream& err) {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGUSR1);  // our own "stream over" wake-up for the waiter
  // Before any gRPC thread exists, so they all inherit the mask.
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  Client client(global, kReadTimeoutSeconds);
  grpc::ClientContext context;  // no deadline: a watch runs until interrupted
  std::atomic<bool> interrupted{false};
  std::thread waiter([&] {
    int signal_number = 0;
    if (sigwait(&signals, &signal_number) != 0 || signal_number == SIGUSR1) return;
    interrupted.store(true);
    context.TryCancel();
  });

  tprd::v1::WatchEventsRequest request;
  request.set_domain(options.domain);
  auto reader = client.stub().WatchEvents(&context, request);
  tprd::v1::Event event;
  while (reader->Read(&event)) {
    if (global.json) {
      PrintJson(EventJson(event), out);
    } else {
      PrintEventLine(event, out);
    }
    out.flush();  // one line per event as it happens, also into a pipe
  }
  grpc::Status status = reader->Finish();
  if (!interrupted.load()) pthread_kill(waiter.native_handle(), SIGUSR1);
  waiter.join();
  if (interrupted.load() || status.ok()) return kExitOk;
  return client.Fail(status, err);
}

// Prometheus text exposition (format 0.0.4) of every running domain, as tprd makes it
// (GetMetrics): the same text tprd's metrics_textfile holds.
int RunMetrics(const GlobalOptions& global, std::ostream& out, std::ostream& err) {
  tprd::v1::GetMetricsResponse metrics;
  const int called = CallTprd(global, kReadTimeoutSeconds, &Stub::GetMetrics,
                              tprd::v1::GetMetricsRequest(), &metrics, err);
  if (called != kExitOk) return called;
  out << metrics.text();
  return kExitOk;
}

}  // namespace

DaemonCommands::DaemonCommands(CLI::App& app, const GlobalOptions& global) : global_(global) {
  const auto add_domain = [this](CLI::App* command) {
    command->add_option("DOMAIN", options_.domain, "Domain name, UUID or ID")->required();
  };
  domains_ = app.add_subcommand("domains", "List libvirt domains with their patch state");
  status_ = app.add_subcommand("status", "Show one domain's patch status");
  add_domain(status_);
  metrics_ = app.add_subcommand(
      "metrics", "Print every running domain's status as Prometheus text exposition");
  enable_ = app.add_subcommand("enable", "Find and patch the domain's TPR accesses");
  add_domain(enable_);
  enable_->add_option("--strategy", options_.strategy, "How handlers reach the real TPR")
      ->check(CLI::IsMember({"auto", "mmio", "cr8", "exact"}))
      ->capture_default_str();
  enable_->add_flag("--dry-run", options_.dry_run, "Report what would be patched; write nothing");
  enable_->add_flag("--transient", options_.transient,
                    "Patch this boot only: record no intent in the domain's metadata");
  enable_
      ->add_option("--budget", options_.budget_seconds,
                   "Seconds discovery may take (0: the daemon's default)")
      ->check(CLI::Range(0.0, 86400.0));
  sites_ = app.add_subcommand("sites", "List the TPR sites tprd knows for a domain");
  add_domain(sites_);
  rollback_ = app.add_subcommand(
      "rollback",
      "Restore original bytes (all sites or --site IDs); keeps the intent, so the guest's next "
      "start or reboot patches it again (see disable)");
  add_domain(rollback_);
  rollback_->add_option("--site", options_.site_ids, "Only this site id (repeatable)");
  rollback_->add_flag("--force", options_.force,
                      "Restore even where the guest changed the patched bytes");
  disable_ = app.add_subcommand(
      "disable",
      "Forget the intent (tprd no longer patches the domain when it starts or reboots) "
      "and restore every site's original bytes");
  add_domain(disable_);
  disable_->add_flag("--force", options_.force,
                     "Restore even where the guest changed the patched bytes");
  scan_ = app.add_subcommand("scan", "Report candidate TPR sites in guest code; change nothing");
  add_domain(scan_);
  watch_ = app.add_subcommand("watch", "Stream site and lifecycle events until Ctrl-C");
  watch_->add_option("DOMAIN", options_.domain, "Only this domain (name, UUID or ID)");
}

bool DaemonCommands::Parsed() const {
  for (const CLI::App* command :
       {domains_, status_, metrics_, enable_, sites_, rollback_, disable_, scan_, watch_}) {
    if (command->parsed()) return true;
  }
  return false;
}

int DaemonCommands::Run(std::ostream& out, std::ostream& err) {
  // The API's strings are proto3 strings: gRPC would refuse the request with a bare INTERNAL.
  if (!IsUtf8(options_.domain)) {
    err << "tprctl: domain name '" << absl::CHexEscape(options_.domain)
        << "' is not valid UTF-8; name the domain by its libvirt name, UUID or ID\n";
    return kExitUsage;
  }
  if (!CheckSocket(SocketPath(global_), err)) return kExitUnreachable;
  if (domains_->parsed()) return RunDomains(global_, out, err);
  if (status_->parsed()) return RunStatus(global_, options_, out, err);
  if (metrics_->parsed()) return RunMetrics(global_, out, err);
  if (enable_->parsed()) return RunEnable(global_, options_, out, err);
  if (sites_->parsed()) return RunSites(global_, options_, out, err);
  if (rollback_->parsed()) return RunRollback(global_, options_, out, err);
  if (disable_->parsed()) return RunDisable(global_, options_, out, err);
  if (scan_->parsed()) return RunScan(global_, options_, out, err);
  if (watch_->parsed()) return RunWatch(global_, options_, out, err);
  err << "tprctl: no command given (see tprctl --help)\n";
  return kExitUsage;
}

}  // namespace tprd::cli

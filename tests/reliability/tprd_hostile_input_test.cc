// Hostile API input against a real tprd process over a real gRPC channel on its unix socket,
// with one real test-guest domain under libvirtd/QEMU TCG so that names, UUIDs and site ids
// exist. Every malformed call gets its exact status code; after each group the daemon still
// answers (ListDomains, grpc.health.v1 SERVING), its process lives, and the real domain is as it
// was (state, strategy, sites, last error; the guest keeps running and passing its checks).
// Results: docs/reliability.md, "Hostile input".
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <iostream>
#include <map>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/notification.h"
#include "absl/time/clock.h"
#include "gtest/gtest.h"
#include "tests/e2e/e2e_support.h"
#include "tests/support/libvirt_test_env.h"
#include "tests/support/subprocess.h"
#include "tprd/v1/tprd.grpc.pb.h"

#ifndef TPRCTL_PATH
#error "TPRCTL_PATH is defined by tests/reliability/CMakeLists.txt"
#endif

namespace tprd::testing {
namespace {

using grpc::StatusCode;

std::string CodeName(StatusCode code) {
  static const char* const names[] = {"OK",
                                      "CANCELLED",
                                      "UNKNOWN",
                                      "INVALID_ARGUMENT",
                                      "DEADLINE_EXCEEDED",
                                      "NOT_FOUND",
                                      "ALREADY_EXISTS",
                                      "PERMISSION_DENIED",
                                      "RESOURCE_EXHAUSTED",
                                      "FAILED_PRECONDITION",
                                      "ABORTED",
                                      "OUT_OF_RANGE",
                                      "UNIMPLEMENTED",
                                      "INTERNAL",
                                      "UNAVAILABLE",
                                      "DATA_LOSS",
                                      "UNAUTHENTICATED"};
  const int index = static_cast<int>(code);
  return index >= 0 && index < 17 ? names[index] : absl::StrCat("code ", index);
}

// "CODE: message", the message cut to 200 bytes, for failure output.
std::string Describe(const grpc::Status& status) {
  std::string message = status.error_message();
  if (message.size() > 200)
    message = absl::StrCat(message.substr(0, 200), "... (", message.size(), " bytes)");
  return absl::StrCat(CodeName(status.error_code()), ": ", message);
}

// The pid of the tprd process serving `socket` (its command line names it).
pid_t FindTprdPid(const std::string& socket) {
  for (const auto& entry : std::filesystem::directory_iterator("/proc")) {
    int pid = 0;
    if (!absl::SimpleAtoi(entry.path().filename().string(), &pid)) continue;
    const std::string cmdline = ReadFile(entry.path().string() + "/cmdline");
    std::vector<std::string> args = absl::StrSplit(cmdline, '\0');
    if (args.empty() || !absl::EndsWith(args[0], "/tprd")) continue;
    if (std::find(args.begin(), args.end(), socket) != args.end()) return pid;
  }
  return -1;
}

// Alive and not a zombie (TprdProcess, our child, reaps it only when asked to).
bool ProcessAlive(pid_t pid) {
  if (pid <= 0 || kill(pid, 0) != 0) return false;
  const std::string stat = ReadFile(absl::StrCat("/proc/", pid, "/stat"));
  const size_t paren = stat.rfind(')');
  return paren != std::string::npos && paren + 2 < stat.size() && stat[paren + 2] != 'Z' &&
         stat[paren + 2] != 'X';
}

int ThreadCount(pid_t pid) {
  const std::string status = ReadFile(absl::StrCat("/proc/", pid, "/status"));
  for (absl::string_view line : absl::StrSplit(status, '\n')) {
    int threads = 0;
    if (absl::ConsumePrefix(&line, "Threads:") &&
        absl::SimpleAtoi(absl::StripAsciiWhitespace(line), &threads)) {
      return threads;
    }
  }
  return -1;
}

// Open file descriptors of `pid` that are sockets.
int SocketCount(pid_t pid) {
  int sockets = 0;
  std::error_code error;
  for (const auto& fd :
       std::filesystem::directory_iterator(absl::StrCat("/proc/", pid, "/fd"), error)) {
    std::error_code link_error;
    const std::string target = std::filesystem::read_symlink(fd.path(), link_error).string();
    if (!link_error && absl::StartsWith(target, "socket:")) ++sockets;
  }
  return sockets;
}

void Deadline(grpc::ClientContext* context, int seconds = 30) {
  context->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

// A channel of its own (no subchannel shared with other channels of this process): one client.
std::shared_ptr<grpc::Channel> NewChannel(const std::string& socket) {
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  return grpc::CreateCustomChannel("unix:" + socket, grpc::InsecureChannelCredentials(), args);
}

// The bits of a domain's status a malformed call must not change.
struct StatusView {
  tprd::v1::DomainState state = tprd::v1::DOMAIN_STATE_UNSPECIFIED;
  tprd::v1::Strategy strategy = tprd::v1::STRATEGY_UNSPECIFIED;
  std::string last_error;
  std::string busy_with;
  bool running = false;
  bool operator==(const StatusView& o) const {
    return state == o.state && strategy == o.strategy && last_error == o.last_error &&
           busy_with == o.busy_with && running == o.running;
  }
};
std::ostream& operator<<(std::ostream& out, const StatusView& v) {
  return out << "{state " << tprd::v1::DomainState_Name(v.state) << ", strategy "
             << tprd::v1::Strategy_Name(v.strategy) << ", running " << v.running << ", last_error '"
             << v.last_error << "', busy_with '" << v.busy_with << "'}";
}

class HostileInput : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    TestDomainOptions options;
    options.kernel = TestGuestElf();
    options.vcpus = 2;
    absl::StatusOr<std::unique_ptr<TestDomain>> created = TestDomain::Create(options);
    ASSERT_TRUE(created.ok()) << created.status();
    domain_ = created->release();
    ASSERT_TRUE(domain_->WaitForPrefix("STAT cpu=1 ", absl::Seconds(180)).ok())
        << domain_->LastLines();
    tprd_ = new TprdProcess(MakeTprdDir(), "proving_window_s = 5\n");
    tprd_->Start();
    pid_ = FindTprdPid(tprd_->socket());
    ASSERT_GT(pid_, 0) << "cannot find tprd serving " << tprd_->socket();
    channel_ = new std::shared_ptr<grpc::Channel>(NewChannel(tprd_->socket()));
    stub_ = tprd::v1::Tprd::NewStub(*channel_).release();
  }

  static void TearDownTestSuite() {
    delete stub_;
    stub_ = nullptr;
    delete channel_;
    channel_ = nullptr;
    if (tprd_ != nullptr) {
      const int code = tprd_->Terminate();
      EXPECT_EQ(code, 0) << "tprd did not stop cleanly after the hostile input:\n"
                         << tprd_->LogTail();
    }
    delete tprd_;
    tprd_ = nullptr;
    delete domain_;
    domain_ = nullptr;
  }

  void SetUp() override {
    ASSERT_NE(stub_, nullptr) << "suite set-up failed";
    ASSERT_TRUE(ProcessAlive(pid_)) << "tprd died before this test:\n" << tprd_->LogTail();
  }

  static const std::string& name() { return domain_->name(); }
  static const std::string& uuid() { return domain_->uuid(); }
  static tprd::v1::Tprd::Stub& stub() { return *stub_; }

  static StatusView View() {
    tprd::v1::GetDomainRequest request;
    request.set_domain(name());
    tprd::v1::DomainStatus response;
    grpc::ClientContext context;
    Deadline(&context);
    const grpc::Status status = stub().GetDomain(&context, request, &response);
    EXPECT_TRUE(status.ok()) << Describe(status);
    StatusView view;
    view.state = response.state();
    view.strategy = response.strategy();
    view.last_error = response.last_error();
    view.busy_with = response.busy_with();
    view.running = response.running();
    return view;
  }

  // The daemon answers, is SERVING, lives, and the real domain is exactly as `before`; the guest
  // still runs and passes its own checks (a STAT line per vCPU with fail=0 after this point).
  static void ExpectDaemonHealthy(const StatusView& before, const char* after) {
    SCOPED_TRACE(after);
    ASSERT_TRUE(ProcessAlive(pid_)) << "tprd died:\n" << tprd_->LogTail();
    {
      tprd::v1::ListDomainsResponse response;
      grpc::ClientContext context;
      Deadline(&context, 10);
      const grpc::Status status =
          stub().ListDomains(&context, tprd::v1::ListDomainsRequest(), &response);
      ASSERT_TRUE(status.ok()) << Describe(status) << "\n" << tprd_->LogTail();
      bool listed = false;
      for (const auto& d : response.domains()) listed |= d.domain().uuid() == uuid();
      EXPECT_TRUE(listed) << "ListDomains lost " << name();
    }
    EXPECT_EQ(HealthStatus(), "SERVING");
    EXPECT_EQ(View(), before) << "a malformed call changed " << name();
    // Running, not left stopped: a patched guest is stopped for a moment at each of tprd's trap
    // stops (mmio keeps a write watchpoint for writers it cannot patch), so the state is polled.
    EXPECT_TRUE(PollUntil(absl::Seconds(10), [] { return DomainRunState(name()) == "running"; }))
        << name() << " stays " << DomainRunState(name());
    ExpectGuestPasses(*domain_, domain_->Lines().size(), after, /*vcpus=*/2, /*rounds=*/1);
    EXPECT_TRUE(ProcessAlive(pid_));
  }

  // grpc.health.v1.Health/Check for the whole server: "SERVING", "NOT_SERVING" or the error.
  static std::string HealthStatus() {
    grpc::GenericStub generic(*channel_);
    grpc::ClientContext context;
    Deadline(&context, 10);
    grpc::Slice empty("", 0);
    grpc::ByteBuffer request(&empty, 1);  // empty HealthCheckRequest: the server as a whole
    grpc::ByteBuffer response;
    absl::Notification done;
    grpc::Status status;
    generic.UnaryCall(&context, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request,
                      &response, [&](grpc::Status s) {
                        status = std::move(s);
                        done.Notify();
                      });
    if (!done.WaitForNotificationWithTimeout(absl::Seconds(15))) return "no answer in 15 s";
    if (!status.ok()) return Describe(status);
    std::vector<grpc::Slice> slices;
    if (!response.Dump(&slices).ok()) return "unreadable response";
    std::string bytes;
    for (const auto& slice : slices)
      bytes.append(reinterpret_cast<const char*>(slice.begin()), slice.size());
    // HealthCheckResponse.status is field 1: 08 01 = SERVING, 08 02 = NOT_SERVING.
    if (bytes == std::string("\x08\x01", 2)) return "SERVING";
    if (bytes == std::string("\x08\x02", 2)) return "NOT_SERVING";
    return absl::StrCat("unexpected response of ", bytes.size(), " bytes");
  }

  // One call of every method that takes a domain reference; the status each returned.
  static std::map<std::string, grpc::Status> EveryMethod(const std::string& reference) {
    std::map<std::string, grpc::Status> out;
    {
      tprd::v1::GetDomainRequest request;
      request.set_domain(reference);
      tprd::v1::DomainStatus response;
      grpc::ClientContext context;
      Deadline(&context);
      out["GetDomain"] = stub().GetDomain(&context, request, &response);
    }
    {
      tprd::v1::ListSitesRequest request;
      request.set_domain(reference);
      tprd::v1::ListSitesResponse response;
      grpc::ClientContext context;
      Deadline(&context);
      out["ListSites"] = stub().ListSites(&context, request, &response);
    }
    {
      // dry_run: even if a reference resolved by mistake, nothing would be written.
      tprd::v1::EnablePatchingRequest request;
      request.set_domain(reference);
      request.set_dry_run(true);
      tprd::v1::EnablePatchingResponse response;
      grpc::ClientContext context;
      Deadline(&context);
      out["EnablePatching"] = stub().EnablePatching(&context, request, &response);
    }
    {
      tprd::v1::RollbackRequest request;
      request.set_domain(reference);
      request.add_site_ids(4000000000u);
      tprd::v1::RollbackResponse response;
      grpc::ClientContext context;
      Deadline(&context);
      out["Rollback"] = stub().Rollback(&context, request, &response);
    }
    {
      // Resolved like the others (DomainRegistry::Resolve) before it changes anything.
      tprd::v1::DisablePatchingRequest request;
      request.set_domain(reference);
      tprd::v1::DisablePatchingResponse response;
      grpc::ClientContext context;
      Deadline(&context);
      out["DisablePatching"] = stub().DisablePatching(&context, request, &response);
    }
    {
      tprd::v1::ScanRequest request;
      request.set_domain(reference);
      tprd::v1::ScanResponse response;
      grpc::ClientContext context;
      Deadline(&context);
      out["Scan"] = stub().Scan(&context, request, &response);
    }
    if (!reference.empty()) {  // an empty WatchEvents domain means every domain: valid
      out["WatchEvents"] = WatchStatus(reference);
    }
    return out;
  }

  // A WatchEvents stream for `reference` that is expected to be refused: its final status.
  static grpc::Status WatchStatus(const std::string& reference) {
    tprd::v1::WatchEventsRequest request;
    request.set_domain(reference);
    grpc::ClientContext context;
    Deadline(&context, 10);
    std::unique_ptr<grpc::ClientReader<tprd::v1::Event>> reader =
        stub().WatchEvents(&context, request);
    tprd::v1::Event event;
    while (reader->Read(&event)) {
    }
    return reader->Finish();
  }

  static void ExpectEveryMethod(const std::string& reference, StatusCode code,
                                const std::string& what, size_t max_message = 1024) {
    for (const auto& [method, status] : EveryMethod(reference)) {
      EXPECT_EQ(status.error_code(), code)
          << method << " with " << what << ": " << Describe(status);
      EXPECT_LE(status.error_message().size(), max_message)
          << method << " with " << what << ": the message echoes too much";
      EXPECT_FALSE(status.error_message().empty()) << method << " with " << what;
    }
  }

  static TestDomain* domain_;
  static TprdProcess* tprd_;
  static pid_t pid_;
  static std::shared_ptr<grpc::Channel>* channel_;
  static tprd::v1::Tprd::Stub* stub_;
};

TestDomain* HostileInput::domain_ = nullptr;
TprdProcess* HostileInput::tprd_ = nullptr;
pid_t HostileInput::pid_ = -1;
std::shared_ptr<grpc::Channel>* HostileInput::channel_ = nullptr;
tprd::v1::Tprd::Stub* HostileInput::stub_ = nullptr;

TEST_F(HostileInput, UnknownDomainsAreNotFound) {
  const StatusView before = View();
  ASSERT_EQ(before.state, tprd::v1::DOMAIN_STATE_UNPATCHED);
  const std::vector<std::string> unknown = {
      "no-such-domain",
      "00000000-0000-0000-0000-000000000000",  // UUID-shaped
      "999999",                                // ID-shaped
      "-1",
      "99999999999999999999",  // overflows an int
      name() + " ",            // almost the real name
      " " + name(),
      name().substr(0, name().size() - 1),
      uuid().substr(0, 35),  // UUID less one digit
      "../../etc/passwd",
      "%s%s%s%n",
      "' OR 1=1 --",
      "tprd-it-*",  // a glob: names are not patterns
  };
  for (const std::string& reference : unknown) {
    ExpectEveryMethod(reference, StatusCode::NOT_FOUND, absl::StrCat("'", reference, "'"));
  }
  ExpectDaemonHealthy(before, "after unknown domains");
}

TEST_F(HostileInput, EmptyFieldsAndInvalidEnumsAreInvalidArguments) {
  const StatusView before = View();
  ExpectEveryMethod("", StatusCode::INVALID_ARGUMENT, "an empty domain");

  for (int strategy : {5, 99, -1, 1 << 30}) {
    for (const std::string& reference : {name(), uuid(), std::string("no-such-domain")}) {
      tprd::v1::EnablePatchingRequest request;
      request.set_domain(reference);
      request.set_strategy(static_cast<tprd::v1::Strategy>(strategy));
      tprd::v1::EnablePatchingResponse response;
      grpc::ClientContext context;
      Deadline(&context);
      const grpc::Status status = stub().EnablePatching(&context, request, &response);
      EXPECT_EQ(status.error_code(), StatusCode::INVALID_ARGUMENT)
          << "strategy " << strategy << " on " << reference << ": " << Describe(status);
      EXPECT_TRUE(absl::StrContains(status.error_message(), "strategy")) << Describe(status);
    }
  }

  // Rollback of nothing in particular on an unpatched domain: nothing to do, done.
  {
    tprd::v1::RollbackRequest request;
    request.set_domain(name());
    tprd::v1::RollbackResponse response;
    grpc::ClientContext context;
    Deadline(&context);
    const grpc::Status status = stub().Rollback(&context, request, &response);
    EXPECT_TRUE(status.ok()) << Describe(status);
    EXPECT_EQ(response.rolled_back_size(), 0);
    EXPECT_EQ(response.status().state(), tprd::v1::DOMAIN_STATE_UNPATCHED);
  }
  ExpectDaemonHealthy(before, "after empty fields and invalid enums");
}

TEST_F(HostileInput, HugeRepeatedFieldsAreHandled) {
  const StatusView before = View();
  // 100000 site ids, none of which exists (the domain holds no patches): NOT_FOUND, and the
  // message names one id, not all of them.
  for (const std::string& reference : {name(), uuid()}) {
    tprd::v1::RollbackRequest request;
    request.set_domain(reference);
    for (uint32_t id = 0; id < 100000; ++id) request.add_site_ids(id);
    tprd::v1::RollbackResponse response;
    grpc::ClientContext context;
    Deadline(&context);
    const grpc::Status status = stub().Rollback(&context, request, &response);
    EXPECT_EQ(status.error_code(), StatusCode::NOT_FOUND) << Describe(status);
    EXPECT_LE(status.error_message().size(), 1024u) << Describe(status);
  }
  // The same list on an unknown or empty domain: the domain is checked first.
  for (const auto& [reference, code] : std::vector<std::pair<std::string, StatusCode>>{
           {"no-such-domain", StatusCode::NOT_FOUND}, {"", StatusCode::INVALID_ARGUMENT}}) {
    tprd::v1::RollbackRequest request;
    request.set_domain(reference);
    for (uint32_t id = 0; id < 100000; ++id) request.add_site_ids(0xFFFFFFFFu - id);
    tprd::v1::RollbackResponse response;
    grpc::ClientContext context;
    Deadline(&context);
    const grpc::Status status = stub().Rollback(&context, request, &response);
    EXPECT_EQ(status.error_code(), code) << "'" << reference << "': " << Describe(status);
  }
  // Over gRPC's 4 MiB receive limit (1.1 million 5-byte varints): gRPC itself refuses it.
  {
    tprd::v1::RollbackRequest request;
    request.set_domain(name());
    for (uint32_t id = 0; id < 1100000; ++id) request.add_site_ids(0xFFFFFFFFu - id);
    ASSERT_GT(request.ByteSizeLong(), 4u << 20);
    tprd::v1::RollbackResponse response;
    grpc::ClientContext context;
    Deadline(&context);
    const grpc::Status status = stub().Rollback(&context, request, &response);
    EXPECT_EQ(status.error_code(), StatusCode::RESOURCE_EXHAUSTED) << Describe(status);
  }
  ExpectDaemonHealthy(before, "after huge repeated fields");
}

TEST_F(HostileInput, VeryLongStringsAreRefusedShortly) {
  const StatusView before = View();
  // Longer than any libvirt domain name can be: refused before libvirt is asked, and the
  // message does not echo the whole string.
  for (size_t size : {size_t{4096}, size_t{64} << 10, size_t{1} << 20}) {
    ExpectEveryMethod(std::string(size, 'a'), StatusCode::INVALID_ARGUMENT,
                      absl::StrCat("a ", size, "-byte domain"));
    ExpectEveryMethod(name() + std::string(size, 'x'), StatusCode::INVALID_ARGUMENT,
                      absl::StrCat("the real name plus ", size, " bytes"));
  }
  // Over gRPC's default 4 MiB receive limit: gRPC refuses the message before tprd sees it.
  {
    tprd::v1::GetDomainRequest request;
    request.set_domain(std::string(5u << 20, 'a'));
    tprd::v1::DomainStatus response;
    grpc::ClientContext context;
    Deadline(&context);
    const grpc::Status status = stub().GetDomain(&context, request, &response);
    EXPECT_EQ(status.error_code(), StatusCode::RESOURCE_EXHAUSTED) << Describe(status);
    std::cout << "5 MiB domain name: " << Describe(status) << "\n";
  }
  ExpectDaemonHealthy(before, "after very long strings");
}

TEST_F(HostileInput, NulBytesAndNonUtf8InDomainNames) {
  const StatusView before = View();
  // A NUL byte would cut the name short at libvirt's C API: "real-name\0junk" must not name
  // the real domain.
  const std::vector<std::string> with_nul = {
      name() + std::string("\0junk", 5),
      name() + std::string(1, '\0'),
      std::string(1, '\0') + name(),
      uuid() + std::string("\0", 1),
      std::string("\0", 1),
  };
  for (const std::string& reference : with_nul) {
    ExpectEveryMethod(reference, StatusCode::INVALID_ARGUMENT, "a name with a NUL byte");
  }
  // Not UTF-8: a proto3 string field that does not parse. gRPC's protobuf layer refuses the
  // request (INTERNAL, its own code for a request it cannot parse) before tprd's code runs.
  const std::vector<std::string> not_utf8 = {
      "\xff\xfe",       name() + "\xc3",
      "\xc0\xaf",        // overlong '/'
      "\xed\xa0\x80",    // a UTF-16 surrogate
      name() + "\x80x",  // stray continuation byte
  };
  for (const std::string& reference : not_utf8) {
    for (const auto& [method, status] : EveryMethod(reference)) {
      EXPECT_EQ(status.error_code(), StatusCode::INTERNAL)
          << method << " with a non-UTF-8 name: " << Describe(status);
      if (method == "GetDomain" && reference == not_utf8.front()) {
        std::cout << "non-UTF-8 domain name: " << Describe(status) << "\n";
      }
    }
  }
  // Control characters are valid UTF-8 and no domain's name: NOT_FOUND.
  ExpectEveryMethod(name() + "\n", StatusCode::NOT_FOUND, "a name with a newline");
  ExpectEveryMethod("\x1b[2J", StatusCode::NOT_FOUND, "an escape sequence");
  ExpectDaemonHealthy(before, "after NUL bytes and non-UTF-8");
}

TEST_F(HostileInput, WatchStreamsOpenedAndDroppedByManyClients) {
  const StatusView before = View();
  const int threads_before = ThreadCount(pid_);
  const int sockets_before = SocketCount(pid_);
  ASSERT_GT(threads_before, 0);
  constexpr int kClients = 100;
  for (int round = 0; round < 2; ++round) {
    struct Client {
      std::shared_ptr<grpc::Channel> channel;
      std::unique_ptr<tprd::v1::Tprd::Stub> stub;
      std::unique_ptr<grpc::ClientContext> context;
      std::unique_ptr<grpc::ClientReader<tprd::v1::Event>> reader;
    };
    std::vector<Client> clients(kClients);
    for (int i = 0; i < kClients; ++i) {
      Client& c = clients[i];
      c.channel = NewChannel(tprd_->socket());
      c.stub = tprd::v1::Tprd::NewStub(c.channel);
      c.context = std::make_unique<grpc::ClientContext>();
      Deadline(c.context.get(), 120);
      tprd::v1::WatchEventsRequest request;
      // Half watch the real domain, half every domain.
      if (i % 2 == 0) request.set_domain(i % 4 == 0 ? name() : uuid());
      c.reader = c.stub->WatchEvents(c.context.get(), request);
      // Headers arrive once the subscription is live in tprd.
      c.reader->WaitForInitialMetadata();
    }
    // All 100 are connected at once.
    EXPECT_GE(SocketCount(pid_), sockets_before + kClients / 2)
        << "tprd holds fewer sockets than there are watchers";
    // Round 0: every client cancels its stream. Round 1: clients just go away (context, stub
    // and channel destroyed without reading to the end).
    for (Client& c : clients) {
      if (round == 0) {
        c.context->TryCancel();
        tprd::v1::Event event;
        while (c.reader->Read(&event)) {
        }
        const grpc::Status status = c.reader->Finish();
        EXPECT_EQ(status.error_code(), StatusCode::CANCELLED) << Describe(status);
      } else {
        c.reader.reset();
        c.stub.reset();
        c.channel.reset();
      }
    }
    clients.clear();
    // tprd lets go of every stream: its threads and sockets go back to where they were.
    int threads = 0, sockets = 0;
    const bool released = PollUntil(absl::Seconds(30), [&] {
      threads = ThreadCount(pid_);
      sockets = SocketCount(pid_);
      return threads <= threads_before + 4 && sockets <= sockets_before + 4;
    });
    EXPECT_TRUE(released) << "round " << round << ": after 100 dropped watchers tprd has "
                          << threads << " threads (" << threads_before << " before) and " << sockets
                          << " sockets (" << sockets_before << " before)";
  }
  // Clients that die: `tprctl watch` processes killed with SIGKILL while their streams are
  // open (the kernel closes their sockets; no cancel is ever sent).
  constexpr int kKilled = 20;
  std::vector<pid_t> watchers;
  const std::string log = tprd_->log_path() + ".watchers";
  for (int i = 0; i < kKilled; ++i) {
    const pid_t pid = Spawn({TPRCTL_PATH, "--socket", tprd_->socket(), "watch", name()}, log, log);
    ASSERT_GT(pid, 0);
    watchers.push_back(pid);
  }
  int sockets = 0;
  const bool connected = PollUntil(absl::Seconds(60), [&] {
    sockets = SocketCount(pid_);
    return sockets >= sockets_before + kKilled;
  });
  EXPECT_TRUE(connected) << "only " << sockets - sockets_before << " of " << kKilled
                         << " tprctl watchers connected:\n"
                         << ReadFile(log);
  for (pid_t pid : watchers) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
  }
  int threads = 0;
  const bool released = PollUntil(absl::Seconds(30), [&] {
    threads = ThreadCount(pid_);
    sockets = SocketCount(pid_);
    return threads <= threads_before + 4 && sockets <= sockets_before + 4;
  });
  EXPECT_TRUE(released) << "after " << kKilled << " killed watchers tprd has " << threads
                        << " threads (" << threads_before << " before) and " << sockets
                        << " sockets (" << sockets_before << " before)";
  ExpectDaemonHealthy(before, "after 220 dropped watchers");
}

TEST_F(HostileInput, ManyConcurrentMalformedCalls) {
  const StatusView before = View();
  constexpr int kThreads = 50;
  constexpr int kCallsPerThread = 40;
  constexpr int kKinds = 11;
  // One call of kind `kind`; true when its status is the one that kind must get.
  auto call = [&](int kind, int n, std::string* detail) -> bool {
    grpc::ClientContext context;
    Deadline(&context, 60);
    grpc::Status status;
    std::set<StatusCode> allowed;
    switch (kind) {
      case 0: {
        tprd::v1::GetDomainRequest r;
        r.set_domain(absl::StrCat("no-such-domain-", n));
        tprd::v1::DomainStatus out;
        status = stub().GetDomain(&context, r, &out);
        allowed = {StatusCode::NOT_FOUND};
        break;
      }
      case 1: {
        tprd::v1::ListSitesRequest r;
        tprd::v1::ListSitesResponse out;
        status = stub().ListSites(&context, r, &out);
        allowed = {StatusCode::INVALID_ARGUMENT};
        break;
      }
      case 2: {
        tprd::v1::EnablePatchingRequest r;
        r.set_domain(name());
        r.set_strategy(static_cast<tprd::v1::Strategy>(99));
        tprd::v1::EnablePatchingResponse out;
        status = stub().EnablePatching(&context, r, &out);
        allowed = {StatusCode::INVALID_ARGUMENT};
        break;
      }
      case 3: {
        // Unknown ids on the real domain. Rollbacks are commands to its actor: one that
        // arrives while another runs is told the domain is busy.
        tprd::v1::RollbackRequest r;
        r.set_domain(n % 2 ? name() : uuid());
        r.add_site_ids(1000000u + n);
        tprd::v1::RollbackResponse out;
        status = stub().Rollback(&context, r, &out);
        allowed = {StatusCode::NOT_FOUND, StatusCode::FAILED_PRECONDITION};
        if (status.error_code() == StatusCode::FAILED_PRECONDITION &&
            !absl::StrContains(status.error_message(), "busy")) {
          allowed.clear();
        }
        break;
      }
      case 4: {
        tprd::v1::ScanRequest r;
        r.set_domain(name() + std::string("\0", 1));
        tprd::v1::ScanResponse out;
        status = stub().Scan(&context, r, &out);
        allowed = {StatusCode::INVALID_ARGUMENT};
        break;
      }
      case 5: {
        tprd::v1::EnablePatchingRequest r;
        r.set_domain(std::string(64 << 10, 'e'));
        r.set_strategy(tprd::v1::STRATEGY_EXACT);
        tprd::v1::EnablePatchingResponse out;
        status = stub().EnablePatching(&context, r, &out);
        allowed = {StatusCode::INVALID_ARGUMENT};
        break;
      }
      case 6: {
        // Not a bare number: libvirt IDs count up with every domain start, so by the time this
        // runs in the README test command a running domain (this test's own, seen in CI) can
        // have ID n, and its watch then streams until the deadline.
        tprd::v1::WatchEventsRequest r;
        r.set_domain(absl::StrCat("no-such-domain-", n));
        status = WatchStatus(r.domain());
        allowed = {StatusCode::NOT_FOUND};
        break;
      }
      case 7: {
        tprd::v1::RollbackRequest r;
        for (int i = 0; i < 1000; ++i) r.add_site_ids(i);
        tprd::v1::RollbackResponse out;
        status = stub().Rollback(&context, r, &out);
        allowed = {StatusCode::INVALID_ARGUMENT};
        break;
      }
      case 8: {
        tprd::v1::GetDomainRequest r;
        r.set_domain("\xff\xfe\xfd");
        tprd::v1::DomainStatus out;
        status = stub().GetDomain(&context, r, &out);
        allowed = {StatusCode::INTERNAL};
        break;
      }
      case 9: {
        // A well-formed call among the bad ones: served.
        tprd::v1::ListDomainsResponse out;
        status = stub().ListDomains(&context, tprd::v1::ListDomainsRequest(), &out);
        allowed = {StatusCode::OK};
        break;
      }
      default: {
        tprd::v1::GetDomainRequest r;
        r.set_domain(name());
        tprd::v1::DomainStatus out;
        status = stub().GetDomain(&context, r, &out);
        allowed = {StatusCode::OK};
        if (status.ok() && out.state() != before.state) allowed.clear();
        break;
      }
    }
    if (allowed.count(status.error_code())) return true;
    *detail = absl::StrCat("kind ", kind, ": ", Describe(status));
    return false;
  };

  std::mutex mu;
  std::vector<std::string> wrong;
  std::map<std::string, int> codes;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < kCallsPerThread; ++i) {
        const int n = t * kCallsPerThread + i;
        std::string detail;
        const bool right = call((t + i) % kKinds, n, &detail);
        std::lock_guard<std::mutex> lock(mu);
        if (!right && wrong.size() < 20) wrong.push_back(detail);
        ++codes[right ? "as expected" : "wrong"];
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(codes["as expected"], kThreads * kCallsPerThread);
  for (const std::string& w : wrong) ADD_FAILURE() << w;
  ExpectDaemonHealthy(before, "after 2000 concurrent malformed calls");
}

// Last: the domain patched, then malformed calls that must not touch it. A Rollback naming one
// real site and one unknown id is refused as a whole.
TEST_F(HostileInput, MalformedCallsLeaveAPatchedDomainAlone) {
  // A watcher opened first sees the enable.
  auto watch_context = std::make_unique<grpc::ClientContext>();
  Deadline(watch_context.get(), 300);
  tprd::v1::WatchEventsRequest watch_request;
  watch_request.set_domain(name());
  auto watcher = stub().WatchEvents(watch_context.get(), watch_request);
  watcher->WaitForInitialMetadata();

  {
    tprd::v1::EnablePatchingRequest request;
    request.set_domain(name());
    request.set_strategy(tprd::v1::STRATEGY_MMIO);
    tprd::v1::EnablePatchingResponse response;
    grpc::ClientContext context;
    Deadline(&context, 300);
    const grpc::Status status = stub().EnablePatching(&context, request, &response);
    ASSERT_TRUE(status.ok()) << Describe(status) << "\n" << tprd_->LogTail();
  }
  tprd::v1::Event event;
  ASSERT_TRUE(watcher->Read(&event)) << "the watcher saw nothing of the enable";
  EXPECT_EQ(event.domain().uuid(), uuid());
  watch_context->TryCancel();
  while (watcher->Read(&event)) {
  }
  EXPECT_EQ(watcher->Finish().error_code(), StatusCode::CANCELLED);

  WaitForApplied(*tprd_, name(), HotSites(), absl::Seconds(120), "enable");
  const std::map<std::string, uint32_t> by_name = SitesByName();
  const std::map<uint32_t, std::string> states_before = SiteStates(*tprd_, name());
  // Site id of a hot site, from ListSites.
  uint32_t real_id = 0;
  {
    tprd::v1::ListSitesRequest request;
    request.set_domain(name());
    tprd::v1::ListSitesResponse response;
    grpc::ClientContext context;
    Deadline(&context);
    ASSERT_TRUE(stub().ListSites(&context, request, &response).ok());
    bool found = false;
    for (const auto& site : response.sites()) {
      if (site.address() == by_name.at("rd_a1_eax")) {
        real_id = site.id();
        found = true;
        EXPECT_EQ(site.state(), tprd::v1::SITE_STATE_APPLIED);
      }
    }
    ASSERT_TRUE(found) << "rd_a1_eax is not among the sites";
  }
  const StatusView before = View();
  ASSERT_EQ(before.state, tprd::v1::DOMAIN_STATE_PATCHED);
  ASSERT_EQ(before.strategy, tprd::v1::STRATEGY_MMIO);

  auto rollback = [&](const std::vector<uint32_t>& ids, const std::string& reference) {
    tprd::v1::RollbackRequest request;
    request.set_domain(reference);
    for (uint32_t id : ids) request.add_site_ids(id);
    tprd::v1::RollbackResponse response;
    grpc::ClientContext context;
    Deadline(&context, 60);
    const grpc::Status status = stub().Rollback(&context, request, &response);
    EXPECT_EQ(response.rolled_back_size(), 0) << "a refused rollback restored sites";
    return status;
  };
  // One real id and one unknown: refused as a whole, the real one stays applied.
  for (uint32_t bogus : {4000000000u, 0xFFFFFFFFu, 100000u}) {
    const grpc::Status status = rollback({real_id, bogus}, name());
    EXPECT_EQ(status.error_code(), StatusCode::NOT_FOUND) << Describe(status);
    EXPECT_TRUE(absl::StrContains(status.error_message(), absl::StrCat(bogus))) << Describe(status);
  }
  // 100000 ids: the real one over and over, an unknown one last.
  {
    std::vector<uint32_t> ids(99999, real_id);
    ids.push_back(777777u);
    const grpc::Status status = rollback(ids, uuid());
    EXPECT_EQ(status.error_code(), StatusCode::NOT_FOUND) << Describe(status);
  }
  // The real id on a reference that only looks like the domain.
  {
    const grpc::Status status = rollback({real_id}, name() + std::string("\0", 1));
    EXPECT_EQ(status.error_code(), StatusCode::INVALID_ARGUMENT) << Describe(status);
  }
  // Strategy switches that must not happen: an invalid enum, and exact through a NUL name.
  {
    tprd::v1::EnablePatchingRequest request;
    request.set_domain(name());
    request.set_strategy(static_cast<tprd::v1::Strategy>(99));
    tprd::v1::EnablePatchingResponse response;
    grpc::ClientContext context;
    Deadline(&context);
    EXPECT_EQ(stub().EnablePatching(&context, request, &response).error_code(),
              StatusCode::INVALID_ARGUMENT);
  }
  {
    tprd::v1::EnablePatchingRequest request;
    request.set_domain(name() + std::string("\0x", 2));
    request.set_strategy(tprd::v1::STRATEGY_EXACT);
    tprd::v1::EnablePatchingResponse response;
    grpc::ClientContext context;
    Deadline(&context);
    EXPECT_EQ(stub().EnablePatching(&context, request, &response).error_code(),
              StatusCode::INVALID_ARGUMENT);
  }
  ExpectDaemonHealthy(before, "after malformed calls on the patched domain");
  const std::map<uint32_t, std::string> states_after = SiteStates(*tprd_, name());
  for (const auto& [address, state] : states_before) {
    if (state == "applied") {
      EXPECT_EQ(states_after.count(address) ? states_after.at(address) : "missing", "applied")
          << std::hex << "site at 0x" << address;
    }
  }

  // Leave it as found: a real rollback of everything.
  const RunResult rolled = tprd_->Ctl({"rollback", name()});
  EXPECT_EQ(rolled.exit_code, 0) << rolled.err;
  WaitForState(*tprd_, name(), "unpatched", absl::Seconds(60), "final rollback");
}

}  // namespace
}  // namespace tprd::testing

#include "kvm-backend/qemu_guest_vm.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "daemon/engine/status_macros.h"
#include "kvm-backend/core/monitor_parsers.h"
#include "kvm-backend/core/unix_socket_stream.h"

namespace tprd::backend {
namespace {

const char* RegisterName(engine::WritableRegister reg) {
  switch (reg) {
    case engine::WritableRegister::kEax:
      return "eax";
    case engine::WritableRegister::kEcx:
      return "ecx";
    case engine::WritableRegister::kEdx:
      return "edx";
    case engine::WritableRegister::kEbx:
      return "ebx";
    case engine::WritableRegister::kEsp:
      return "esp";
    case engine::WritableRegister::kEbp:
      return "ebp";
    case engine::WritableRegister::kEsi:
      return "esi";
    case engine::WritableRegister::kEdi:
      return "edi";
    case engine::WritableRegister::kEip:
      return "eip";
    case engine::WritableRegister::kEflags:
      // By name, like the others: GdbRegisterLayout finds its `P` number in QEMU's target
      // description (9 in the i386 layout) and CheckI386 made sure it is there, 32 bits wide.
      return "eflags";
  }
  return "?";
}

bool PausedByHost(const LibvirtDomainInfo& info) {
  // libvirt records PAUSED_UNKNOWN when QEMU stopped by itself, which is what our gdbstub
  // stops look like; every other reason is libvirt's (user, migration, save, I/O error, ...).
  return info.state == LibvirtDomainState::kPaused && info.reason != kPausedReasonUnknown;
}

}  // namespace

absl::StatusOr<std::unique_ptr<ByteStream>> StartGdbServerOnSocketpair(QemuMonitor& monitor) {
  absl::StatusOr<std::unique_ptr<UnixSocketStream>> stream = monitor.StartGdbServer();
  if (!stream.ok()) return stream.status();
  return std::unique_ptr<ByteStream>(*std::move(stream));
}

QemuGuestVm::QemuGuestVm(LibvirtConnection* connection, std::string uuid,
                         QemuGuestVmOptions options)
    : connection_(connection),
      uuid_(std::move(uuid)),
      options_(std::move(options)),
      monitor_(connection, uuid_) {}

absl::StatusOr<std::unique_ptr<QemuGuestVm>> QemuGuestVm::Attach(LibvirtConnection* connection,
                                                                 const std::string& uuid,
                                                                 QemuGuestVmOptions options) {
  absl::StatusOr<LibvirtDomainInfo> info = connection->GetDomain(uuid);
  if (!info.ok()) return info.status();
  if (info->state != LibvirtDomainState::kRunning && info->state != LibvirtDomainState::kPaused) {
    return absl::FailedPreconditionError(
        absl::StrCat("domain ", info->name, " is ",
                     std::string(LibvirtDomainStateName(info->state)), ", not running or paused"));
  }
  std::unique_ptr<QemuGuestVm> vm(new QemuGuestVm(connection, uuid, std::move(options)));
  connection->Subscribe(vm.get());
  absl::StatusOr<std::unique_ptr<ByteStream>> stream = vm->options_.open_gdb_stream(vm->monitor_);
  if (!stream.ok()) {
    // No gdbstub of ours to stop: the one running (another tprd's, another debugger's) is left
    // alone. Without this, the destructor's `gdbserver none` took another tprd's session away.
    vm->detached_ = true;
    return stream.status();
  }
  auto fail = [&](absl::Status status) {
    (void)vm->monitor_.StopGdbServer();  // leave no gdbstub behind
    vm->detached_ = true;
    return status;
  };
  vm->gdb_ = std::make_unique<GdbClient>(std::move(*stream), vm->options_.gdb);
  // The gdbstub's connect stops a running guest: libvirt reports that stop as any other.
  if (info->state == LibvirtDomainState::kRunning) vm->libvirt_pauses_.WillRun();
  if (absl::Status s = vm->gdb_->Attach(); !s.ok()) return fail(s);
  absl::StatusOr<std::vector<GdbThreadId>> threads = vm->gdb_->ListThreads();
  if (!threads.ok()) return fail(threads.status());
  if (threads->empty()) return fail(absl::InternalError("gdbstub lists no vCPU threads"));
  // A tprd killed outright leaves its traps armed on every vCPU; none of them is ours.
  if (absl::Status s = vm->gdb_->ClearTrapsOfEveryThread(*threads); !s.ok()) return fail(s);
  vm->threads_ = std::move(*threads);
  // The fast path is optional: without it (not root, remote libvirtd) reads use the gdbstub.
  absl::StatusOr<std::unique_ptr<LiveMemoryReader>> memory =
      vm->options_.open_live_memory(connection, uuid);
  if (memory.ok()) vm->process_memory_ = *std::move(memory);
  return vm;
}

QemuGuestVm::~QemuGuestVm() {
  (void)Detach();
  connection_->Unsubscribe(this);
}

void QemuGuestVm::OnConnectionLost() { libvirt_pauses_.OnConnectionLost(); }

void QemuGuestVm::OnDomainEvent(const LibvirtDomainEvent& event) {
  if (event.uuid != uuid_) return;
  if (event.kind == LibvirtDomainEvent::Kind::kStopped ||
      event.kind == LibvirtDomainEvent::Kind::kCrashed ||
      event.kind == LibvirtDomainEvent::Kind::kMigratedAway) {
    {
      absl::MutexLock lock(&events_mu_);
      gone_reason_ = absl::StrCat("domain ", event.name, " is gone (libvirt event ",
                                  std::string(LibvirtDomainEventKindName(event.kind)), ", detail ",
                                  event.libvirt_detail, ")");
    }
    libvirt_pauses_.OnGone();
  }
  if (event.kind == LibvirtDomainEvent::Kind::kRebooted) {
    absl::MutexLock lock(&events_mu_);
    rebooted_ = true;
  }
  // A migration's pause is one too (SUSPENDED, detail MIGRATED or POSTCOPY).
  if (event.kind == LibvirtDomainEvent::Kind::kSuspended ||
      event.kind == LibvirtDomainEvent::Kind::kMigrating) {
    libvirt_pauses_.OnPauseReported();
  }
}

absl::Status QemuGuestVm::NotRebooted() const {
  absl::MutexLock lock(&events_mu_);
  if (!rebooted_) return absl::OkStatus();
  return absl::AbortedError(absl::StrCat(
      "domain ", uuid_,
      " rebooted under this session (libvirt's reboot event): tprd writes nothing into the new "
      "boot"));
}

absl::Status QemuGuestVm::Gone() const {
  absl::MutexLock lock(&events_mu_);
  if (gone_reason_.empty()) return absl::OkStatus();
  return absl::UnavailableError(gone_reason_);
}

absl::Status QemuGuestVm::CheckUsable(bool require_stopped) {
  if (detached_) return absl::FailedPreconditionError("session detached");
  TPRD_RETURN_IF_ERROR(Gone());
  if (!gdb_->broken_reason().ok()) {
    return absl::UnavailableError(
        absl::StrCat("gdbstub session lost: ", gdb_->broken_reason().message()));
  }
  if (require_stopped && gdb_->running()) {
    return absl::FailedPreconditionError("the guest runs: Stop() it first");
  }
  return absl::OkStatus();
}

absl::Status QemuGuestVm::SelectVcpu(int vcpu) {
  if (vcpu < 0 || vcpu >= static_cast<int>(threads_.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("no vCPU ", vcpu, " (domain has ", threads_.size(), ")"));
  }
  if (vcpu == selected_vcpu_) return absl::OkStatus();
  TPRD_RETURN_IF_ERROR(gdb_->SelectThread(threads_[vcpu]));
  selected_vcpu_ = vcpu;
  return absl::OkStatus();
}

absl::Status QemuGuestVm::SetPhysicalMode(bool physical) {
  if (physical_mode_ == physical) return absl::OkStatus();
  TPRD_RETURN_IF_ERROR(gdb_->SetPhysicalMemoryMode(physical));
  physical_mode_ = physical;
  return absl::OkStatus();
}

absl::StatusOr<LibvirtDomainInfo> QemuGuestVm::HostStateOfOurStop() {
  absl::StatusOr<LibvirtDomainInfo> info = connection_->GetDomain(uuid_);
  if (!info.ok()) return info;
  // Paused for no reason of libvirt's own: libvirt has handled our stop (the common case, no
  // wait). "Running": it has not yet, and an operator's suspend may still merge into the stop
  // (docs/design.md, "A suspend during a tprd stop"). "User": an operator's suspend merged into
  // it, or a libvirtd that restarted under the stop guessed so when it reconnected; only the
  // former is reported by an event.
  const bool lagging = info->state == LibvirtDomainState::kRunning;
  const bool user = info->state == LibvirtDomainState::kPaused && info->reason == kPausedReasonUser;
  if (!lagging && !user) {
    libvirt_pauses_.MarkCaughtUp();
    return info;
  }
  // A lost event costs the bound once, and nothing while tprd knows libvirtd is away.
  const bool reported = libvirt_pauses_.WaitCaughtUp(
      connection_->IsConnected() ? options_.libvirt_catch_up : absl::ZeroDuration());
  if (lagging) info = connection_->GetDomain(uuid_);
  if (info.ok() && !reported && libvirt_pauses_.ConnectionLostSinceRun() &&
      info->state == LibvirtDomainState::kPaused && info->reason == kPausedReasonUser) {
    // libvirt never saw this stop happen: a libvirtd that restarted under it took QEMU's
    // "paused" for the user's pause when it reconnected. It is ours (ciA 2026-12-07: the guest
    // stayed stopped after a libvirtd restart). Without a restart an unreported "user" pause is
    // an operator's suspend whose event is late (ciE: tprd resumed it).
    info->reason = kPausedReasonUnknown;
  }
  return info;
}

absl::Status QemuGuestVm::CheckNotPausedByHost() {
  absl::StatusOr<LibvirtDomainInfo> info = HostStateOfOurStop();
  if (!info.ok()) return info.status();
  if (PausedByHost(*info)) {
    return absl::FailedPreconditionError(
        absl::StrCat("domain ", info->name, " is paused by libvirt (reason ", info->reason,
                     "); tprd does not resume it: resume it with virsh resume first"));
  }
  return absl::OkStatus();
}

void QemuGuestVm::NoteRunState(const GdbStopReply& reply) {
  debug_run_state_ = !reply.process_gone() && reply.signal == kGdbSignalTrap;
}

absl::Status QemuGuestVm::LeaveDebugRunState() {
  // Every trap of ours is removed by now, so the interrupt is the only thing that can stop the
  // guest again; it ran for the round trip of one packet (tens of microseconds). A watchpoint
  // hit QEMU still held from before may still end it in "debug": try again.
  for (int attempt = 0; debug_run_state_ && attempt < 3; ++attempt) {
    libvirt_pauses_.WillRun();
    TPRD_RETURN_IF_ERROR(gdb_->Continue());
    TPRD_RETURN_IF_ERROR(gdb_->Interrupt());
    absl::StatusOr<std::optional<GdbStopReply>> stop = gdb_->WaitForStop(options_.stop_timeout);
    if (!stop.ok()) return stop.status();
    if (!stop->has_value()) {
      return absl::DeadlineExceededError(
          absl::StrCat("domain ", uuid_, " did not stop again within ",
                       absl::FormatDuration(options_.stop_timeout), " of leaving the debug state"));
    }
    NoteRunState(**stop);
  }
  if (debug_run_state_) {
    return absl::InternalError(
        "QEMU stayed in its debug run state: a save or migration of this domain would fail");
  }
  return absl::OkStatus();
}

engine::StopEvent QemuGuestVm::ToStopEvent(const GdbStopReply& reply) {
  NoteRunState(reply);
  engine::StopEvent event;
  if (reply.process_gone()) {
    event.kind = engine::StopEvent::Kind::kGone;
    return event;
  }
  event.vcpu = reply.thread ? reply.thread->vcpu_index() : 0;
  selected_vcpu_ = -1;  // QEMU switches its current thread to the one that stopped
  if (reply.watch) {
    event.kind = engine::StopEvent::Kind::kWatchpoint;
    event.watch = *reply.watch;
    event.data_address = static_cast<uint32_t>(reply.watch_address);
  } else if (reply.signal == kGdbSignalTrap) {
    event.kind = engine::StopEvent::Kind::kBreakpoint;
  } else {
    absl::StatusOr<LibvirtDomainInfo> info = connection_->GetDomain(uuid_);
    event.kind = info.ok() && PausedByHost(*info) ? engine::StopEvent::Kind::kPausedByHost
                                                  : engine::StopEvent::Kind::kInterrupted;
  }
  if (event.vcpu >= 0 && event.vcpu < static_cast<int>(threads_.size()) &&
      SelectVcpu(event.vcpu).ok()) {
    absl::StatusOr<uint64_t> eip = gdb_->ReadRegister("eip");
    if (eip.ok()) event.pc = static_cast<uint32_t>(*eip);
  }
  return event;
}

absl::Status QemuGuestVm::Stop() {
  TPRD_RETURN_IF_ERROR(CheckUsable(false));
  if (!gdb_->running()) return absl::OkStatus();
  TPRD_RETURN_IF_ERROR(gdb_->Interrupt());
  absl::StatusOr<std::optional<GdbStopReply>> stop = gdb_->WaitForStop(options_.stop_timeout);
  if (!stop.ok()) {
    TPRD_RETURN_IF_ERROR(Gone());
    return stop.status();
  }
  if (!stop->has_value()) {
    TPRD_RETURN_IF_ERROR(Gone());
    return absl::DeadlineExceededError(absl::StrCat("domain ", uuid_, " did not stop within ",
                                                    absl::FormatDuration(options_.stop_timeout)));
  }
  engine::StopEvent event = ToStopEvent(**stop);
  // A breakpoint or watchpoint that raced with the interrupt is kept for WaitForStop.
  if (event.kind != engine::StopEvent::Kind::kInterrupted) pending_stop_ = event;
  if (event.kind == engine::StopEvent::Kind::kGone)
    return Gone().ok() ? absl::UnavailableError("domain gone") : Gone();
  return absl::OkStatus();
}

std::optional<engine::StopEvent> QemuGuestVm::TakeRacedTrapStop() {
  if (!pending_stop_ || (pending_stop_->kind != engine::StopEvent::Kind::kWatchpoint &&
                         pending_stop_->kind != engine::StopEvent::Kind::kBreakpoint)) {
    return std::nullopt;
  }
  std::optional<engine::StopEvent> event = pending_stop_;
  pending_stop_.reset();
  return event;
}

std::optional<engine::StopEvent> QemuGuestVm::TakeRacedWatchpointStop() {
  if (!pending_stop_ || pending_stop_->kind != engine::StopEvent::Kind::kWatchpoint) {
    return std::nullopt;
  }
  return TakeRacedTrapStop();
}

absl::Status QemuGuestVm::Resume() {
  TPRD_RETURN_IF_ERROR(CheckUsable(false));
  if (gdb_->running()) return absl::OkStatus();
  TPRD_RETURN_IF_ERROR(CheckNotPausedByHost());
  // A vCPU left with its interrupts masked would never take one again.
  TPRD_RETURN_IF_ERROR(RestoreClearedEflags());
  selected_vcpu_ = -1;
  libvirt_pauses_.WillRun();
  TPRD_RETURN_IF_ERROR(gdb_->Continue());
  debug_run_state_ = false;
  return absl::OkStatus();
}

absl::StatusOr<std::optional<engine::StopEvent>> QemuGuestVm::WaitForStop(absl::Duration timeout) {
  if (pending_stop_) {
    std::optional<engine::StopEvent> event = pending_stop_;
    pending_stop_.reset();
    return event;
  }
  if (absl::Status gone = Gone(); !gone.ok()) {
    engine::StopEvent event;
    event.kind = engine::StopEvent::Kind::kGone;
    return std::optional<engine::StopEvent>(event);
  }
  TPRD_RETURN_IF_ERROR(CheckUsable(false));
  // Wait in slices so a destroyed domain (whose gdbstub may just go quiet) ends the wait soon.
  absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    absl::Duration slice = std::min(options_.liveness_check_interval, deadline - absl::Now());
    if (slice < absl::ZeroDuration()) slice = absl::ZeroDuration();
    absl::StatusOr<std::optional<GdbStopReply>> stop = gdb_->WaitForStop(slice);
    if (!Gone().ok() || (!stop.ok() && !connection_->GetDomain(uuid_).ok())) {
      engine::StopEvent event;
      event.kind = engine::StopEvent::Kind::kGone;
      return std::optional<engine::StopEvent>(event);
    }
    if (!stop.ok()) return stop.status();
    if (stop->has_value()) return std::optional<engine::StopEvent>(ToStopEvent(**stop));
    if (absl::Now() >= deadline) return std::optional<engine::StopEvent>();
  }
}

absl::StatusOr<int> QemuGuestVm::VcpuCount() {
  TPRD_RETURN_IF_ERROR(CheckUsable(false));
  return static_cast<int>(threads_.size());
}

absl::StatusOr<engine::VcpuRegisters> QemuGuestVm::ReadRegisters(int vcpu) {
  TPRD_RETURN_IF_ERROR(CheckUsable(true));
  TPRD_RETURN_IF_ERROR(SelectVcpu(vcpu));
  return gdb_->ReadRegisters();
}

absl::Status QemuGuestVm::WriteRegister(int vcpu, engine::WritableRegister reg, uint32_t value) {
  TPRD_RETURN_IF_ERROR(NotRebooted());
  TPRD_RETURN_IF_ERROR(CheckUsable(true));
  TPRD_RETURN_IF_ERROR(SelectVcpu(vcpu));
  return gdb_->WriteRegister(RegisterName(reg), value);
}

absl::Status QemuGuestVm::ReadVirtual(int vcpu, uint32_t va, absl::Span<uint8_t> out) {
  TPRD_RETURN_IF_ERROR(CheckUsable(true));
  TPRD_RETURN_IF_ERROR(SelectVcpu(vcpu));
  TPRD_RETURN_IF_ERROR(SetPhysicalMode(false));
  return gdb_->ReadMemory(va, out);
}

absl::Status QemuGuestVm::WriteVirtual(int vcpu, uint32_t va, absl::Span<const uint8_t> data) {
  TPRD_RETURN_IF_ERROR(NotRebooted());
  TPRD_RETURN_IF_ERROR(CheckUsable(true));
  TPRD_RETURN_IF_ERROR(SelectVcpu(vcpu));
  TPRD_RETURN_IF_ERROR(SetPhysicalMode(false));
  return gdb_->WriteMemory(va, data);
}

absl::StatusOr<std::vector<absl::Status>> QemuGuestVm::WriteVirtualMany(
    int vcpu, absl::Span<const engine::MemoryWrite> writes) {
  TPRD_RETURN_IF_ERROR(NotRebooted());
  TPRD_RETURN_IF_ERROR(CheckUsable(true));
  TPRD_RETURN_IF_ERROR(SelectVcpu(vcpu));
  TPRD_RETURN_IF_ERROR(SetPhysicalMode(false));
  return gdb_->WriteMemoryPipelined(writes);
}

absl::Status QemuGuestVm::ReadPhysical(uint64_t pa, absl::Span<uint8_t> out) {
  TPRD_RETURN_IF_ERROR(CheckUsable(true));
  if (process_memory_ && process_memory_->Read(pa, out).ok()) {
    ++fast_physical_reads_;
    return absl::OkStatus();
  }
  TPRD_RETURN_IF_ERROR(SetPhysicalMode(true));
  return gdb_->ReadMemory(pa, out);
}

absl::Status QemuGuestVm::ReadPhysicalLive(uint64_t pa, absl::Span<uint8_t> out) {
  TPRD_RETURN_IF_ERROR(CheckUsable(false));
  if (!process_memory_) {
    return absl::UnimplementedError("no process_vm_readv path to this QEMU (not local, not root)");
  }
  return process_memory_->Read(pa, out);
}

absl::Status QemuGuestVm::WritePhysical(uint64_t pa, absl::Span<const uint8_t> data) {
  TPRD_RETURN_IF_ERROR(NotRebooted());
  TPRD_RETURN_IF_ERROR(CheckUsable(true));
  TPRD_RETURN_IF_ERROR(SetPhysicalMode(true));
  return gdb_->WriteMemory(pa, data);
}

absl::StatusOr<std::vector<engine::MemoryRegion>> QemuGuestVm::MemoryMap() {
  TPRD_RETURN_IF_ERROR(CheckUsable(false));
  return monitor_.MemoryMap();
}

absl::StatusOr<uint8_t> QemuGuestVm::ReadTpr(int vcpu) {
  TPRD_RETURN_IF_ERROR(CheckUsable(false));
  // Stopped, the gdbstub's own monitor answers in a round trip on our stream: the enable's
  // stop read each vCPU's TPR through libvirt's monitor at 1.5-7 ms a vCPU, most of the stop
  // (docs/performance.md). Running, a byte on the stream would interrupt the guest.
  if (!gdb_->running() && gdbstub_monitor_) {
    absl::StatusOr<std::string> lapic = gdb_->MonitorCommand(absl::StrCat("info lapic ", vcpu));
    if (lapic.ok()) return ParseLapicTpr(*lapic);
    if (!absl::IsUnimplemented(lapic.status())) return lapic.status();
    gdbstub_monitor_ = false;  // this QEMU has none: libvirt's from now on
  }
  return monitor_.ReadTpr(vcpu);
}

absl::StatusOr<uint32_t> QemuGuestVm::ReadAcpiPmTimer() {
  TPRD_RETURN_IF_ERROR(CheckUsable(false));
  return monitor_.ReadAcpiPmTimer();
}

absl::StatusOr<engine::CpuFeatures> QemuGuestVm::Features() {
  TPRD_RETURN_IF_ERROR(CheckUsable(false));
  return monitor_.Features();
}

absl::Status QemuGuestVm::SetBreakpoint(uint32_t va) {
  TPRD_RETURN_IF_ERROR(CheckUsable(true));
  TPRD_RETURN_IF_ERROR(gdb_->InsertBreakpoint(va));
  breakpoints_.insert(va);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<absl::Status>> QemuGuestVm::SetBreakpoints(
    absl::Span<const uint32_t> vas) {
  TPRD_RETURN_IF_ERROR(CheckUsable(true));
  const std::vector<uint64_t> addresses(vas.begin(), vas.end());
  absl::StatusOr<std::vector<absl::Status>> inserted = gdb_->InsertBreakpointsPipelined(addresses);
  if (!inserted.ok()) return inserted.status();
  for (size_t k = 0; k < vas.size(); ++k) {
    if ((*inserted)[k].ok()) breakpoints_.insert(vas[k]);
  }
  return inserted;
}

absl::Status QemuGuestVm::RemoveBreakpoint(uint32_t va) {
  TPRD_RETURN_IF_ERROR(CheckUsable(true));
  TPRD_RETURN_IF_ERROR(gdb_->RemoveBreakpoint(va));
  breakpoints_.erase(va);
  return absl::OkStatus();
}

absl::Status QemuGuestVm::SetWatchpoint(uint32_t va, uint32_t length, engine::WatchKind kind) {
  TPRD_RETURN_IF_ERROR(CheckUsable(true));
  TPRD_RETURN_IF_ERROR(gdb_->InsertWatchpoint(va, length, kind));
  watchpoints_.insert({va, length, kind});
  return absl::OkStatus();
}

absl::Status QemuGuestVm::RemoveWatchpoint(uint32_t va, uint32_t length, engine::WatchKind kind) {
  TPRD_RETURN_IF_ERROR(CheckUsable(true));
  TPRD_RETURN_IF_ERROR(gdb_->RemoveWatchpoint(va, length, kind));
  watchpoints_.erase({va, length, kind});
  return absl::OkStatus();
}

absl::Status QemuGuestVm::CheckCanRunAlone(int vcpu) {
  TPRD_RETURN_IF_ERROR(CheckUsable(true));
  if (vcpu < 0 || vcpu >= static_cast<int>(threads_.size())) {
    return absl::InvalidArgumentError(
        absl::StrCat("no vCPU ", vcpu, " (domain has ", threads_.size(), ")"));
  }
  if (pending_stop_) {
    // A second foreign stop from the run would have nowhere to go.
    return absl::FailedPreconditionError(
        "a stop is pending: take it with WaitForStop before running one vCPU");
  }
  return absl::OkStatus();
}

absl::StatusOr<engine::StepResult> QemuGuestVm::StepVcpu(int vcpu, absl::Duration timeout) {
  TPRD_RETURN_IF_ERROR(CheckCanRunAlone(vcpu));
  libvirt_pauses_.WillRun();
  absl::StatusOr<GdbStepResult> step = gdb_->StepThread(threads_[vcpu], timeout);
  selected_vcpu_ = -1;  // QEMU switches its current thread to the one that stopped
  if (!step.ok()) {
    TPRD_RETURN_IF_ERROR(Gone());
    return step.status();
  }
  engine::StepResult result;
  NoteRunState(step->stop);
  result.completed = step->completed;
  if (step->completed) {
    result.watchpoint_reported = step->stop.watch.has_value();
  } else {
    engine::StopEvent event = ToStopEvent(step->stop);
    if (event.kind == engine::StopEvent::Kind::kGone) {
      pending_stop_ = event;
      return Gone().ok() ? absl::UnavailableError("domain gone") : Gone();
    }
    // Our interrupt's stop says nothing; another vCPU's trap or a host pause is kept.
    if (event.kind != engine::StopEvent::Kind::kInterrupted) pending_stop_ = event;
  }
  TPRD_RETURN_IF_ERROR(SelectVcpu(vcpu));
  absl::StatusOr<uint64_t> eip = gdb_->ReadRegister("eip");
  if (!eip.ok()) return eip.status();
  result.pc = static_cast<uint32_t>(*eip);
  if (result.completed && result.watchpoint_reported) {
    TPRD_RETURN_IF_ERROR(ConsumeStaleDebugInterrupt(vcpu, result.pc, timeout));
  }
  return result;
}

absl::Status QemuGuestVm::ConsumeStaleDebugInterrupt(int vcpu, uint32_t pc,
                                                     absl::Duration timeout) {
  // QEMU 7.2 (TCG): when a single-stepped instruction hits a watchpoint, QEMU re-runs it and
  // raises the vCPU's debug interrupt, but the step's own debug exception ends it first and the
  // stop reports the hit; the raised interrupt stays pending. It fires at that vCPU's next run
  // as a stop no trap explains, and after tprd has detached, with no debugger to resume it, the
  // guest stays stopped in QEMU's "debug" state (seen in the HAL guest's cr8 SIGTERM case,
  // QEMU's gdbstub trace; docs/design.md). So it is taken now: the vCPU runs alone with a
  // breakpoint at its own pc, which stops it before any instruction whether or not the
  // interrupt was pending (QEMU checks pending interrupts, then breakpoints, before a block),
  // and with EFLAGS.IF clear meanwhile, so that no device interrupt runs its handler first
  // (the caller has not fixed up the access yet). A step cannot do it: it would run the
  // instruction at pc when nothing was pending.
  constexpr uint64_t kEflagsIf = 1u << 9;
  TPRD_RETURN_IF_ERROR(SelectVcpu(vcpu));
  absl::StatusOr<uint64_t> eflags = gdb_->ReadRegister("eflags");
  if (!eflags.ok()) return eflags.status();
  if (*eflags & kEflagsIf) {
    // Recorded first: whatever fails from here on, Resume and Detach put it back.
    eflags_to_restore_ = {vcpu, *eflags};
    TPRD_RETURN_IF_ERROR(gdb_->WriteRegister("eflags", *eflags & ~kEflagsIf));
  }
  const bool own_breakpoint = !breakpoints_.count(pc);
  if (own_breakpoint) {
    if (absl::Status inserted = gdb_->InsertBreakpoint(pc); !inserted.ok()) {
      (void)RestoreClearedEflags();
      return inserted;
    }
    breakpoints_.insert(pc);  // so that Detach removes it should the removal below not happen
  }
  libvirt_pauses_.WillRun();
  absl::StatusOr<GdbStepResult> run = gdb_->ContinueThread(threads_[vcpu], timeout);
  selected_vcpu_ = -1;
  std::optional<engine::StopEvent> event;
  if (run.ok()) event = ToStopEvent(run->stop);  // the stopped vCPU's eip, read first
  // Undone whatever happened, while the session can still do it.
  absl::Status undone = absl::OkStatus();
  if (gdb_->broken_reason().ok() && !gdb_->running()) {
    if (own_breakpoint) {
      undone = gdb_->RemoveBreakpoint(pc);
      if (undone.ok()) breakpoints_.erase(pc);
    }
    if (absl::Status restored = RestoreClearedEflags(); undone.ok()) undone = restored;
  }
  if (!run.ok()) {
    TPRD_RETURN_IF_ERROR(Gone());
    return run.status();
  }
  if (event->kind == engine::StopEvent::Kind::kGone) {
    pending_stop_ = event;
    return Gone().ok() ? absl::UnavailableError("domain gone") : Gone();
  }
  if (!run->completed) {
    // Not this vCPU's stop at its pc: a host pause, or its run timed out (it cannot, with the
    // breakpoint in front of it). Kept for WaitForStop like any foreign stop.
    if (event->kind != engine::StopEvent::Kind::kInterrupted) pending_stop_ = event;
  } else if (event->pc != pc) {
    return absl::InternalError(absl::StrCat("vCPU ", vcpu, " ran from 0x", absl::Hex(pc), " to 0x",
                                            absl::Hex(event->pc),
                                            " while tprd cleared its pending debug interrupt"));
  }
  return undone;
}

absl::Status QemuGuestVm::RestoreClearedEflags() {
  if (!eflags_to_restore_) return absl::OkStatus();
  const auto [vcpu, value] = *eflags_to_restore_;
  TPRD_RETURN_IF_ERROR(SelectVcpu(vcpu));
  TPRD_RETURN_IF_ERROR(gdb_->WriteRegister("eflags", value));
  absl::StatusOr<uint64_t> back = gdb_->ReadRegister("eflags");
  if (!back.ok()) return back.status();
  if (*back != value) {
    return absl::DataLossError(absl::StrCat("vCPU ", vcpu, "'s eflags read back 0x",
                                            absl::Hex(*back), " after tprd restored 0x",
                                            absl::Hex(value)));
  }
  eflags_to_restore_.reset();
  return absl::OkStatus();
}

absl::StatusOr<engine::StopEvent> QemuGuestVm::RunVcpuAlone(int vcpu, absl::Duration timeout) {
  TPRD_RETURN_IF_ERROR(CheckCanRunAlone(vcpu));
  libvirt_pauses_.WillRun();
  absl::StatusOr<GdbStepResult> run = gdb_->ContinueThread(threads_[vcpu], timeout);
  selected_vcpu_ = -1;
  if (!run.ok()) {
    TPRD_RETURN_IF_ERROR(Gone());
    return run.status();
  }
  engine::StopEvent event = ToStopEvent(run->stop);
  if (event.kind == engine::StopEvent::Kind::kGone) {
    pending_stop_ = event;
    return Gone().ok() ? absl::UnavailableError("domain gone") : Gone();
  }
  return event;
}

absl::Status QemuGuestVm::Detach() {
  if (detached_) return absl::OkStatus();
  detached_ = true;
  absl::Status first_error;
  auto note = [&](absl::Status s) {
    if (!s.ok() && first_error.ok()) first_error = s;
  };
  if (Gone().ok() && gdb_ && gdb_->broken_reason().ok()) {
    if (gdb_->running()) {
      note(gdb_->Interrupt());
      absl::StatusOr<std::optional<GdbStopReply>> stop = gdb_->WaitForStop(options_.stop_timeout);
      if (!stop.ok()) note(stop.status());
      if (stop.ok() && stop->has_value()) NoteRunState(**stop);
    }
    note(RestoreClearedEflags());
    for (uint32_t va : breakpoints_) note(gdb_->RemoveBreakpoint(va));
    for (const auto& [va, length, kind] : watchpoints_) {
      note(gdb_->RemoveWatchpoint(va, length, kind));
    }
    breakpoints_.clear();
    watchpoints_.clear();
    if (physical_mode_ == true) note(gdb_->SetPhysicalMemoryMode(false));
    // D;1 resumes the VM. A VM libvirt holds paused must stay paused: just disconnect (QEMU
    // then leaves it stopped, and libvirt still owns its resume).
    absl::StatusOr<LibvirtDomainInfo> info = HostStateOfOurStop();
    if (info.ok() && PausedByHost(*info)) {
      // Only for a copy of the state: after an operator's pause the guest must not run at all
      // (a backup may be taking its disk), so QEMU may stay in "debug" (docs/design.md).
      if (PausedToCopyState(info->reason)) note(LeaveDebugRunState());
      gdb_.reset();
      // Said, not hidden: a guest tprd leaves stopped must be explainable from its log.
      note(absl::FailedPreconditionError(
          absl::StrCat("domain ", info->name, " stays paused: libvirt holds it paused (reason ",
                       info->reason, "), so tprd let go without resuming it")));
    } else {
      note(gdb_->Detach());
    }
  }
  gdb_.reset();
  if (Gone().ok()) note(monitor_.StopGdbServer());
  return first_error;
}

}  // namespace tprd::backend

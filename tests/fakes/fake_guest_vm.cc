#include "tests/fakes/fake_guest_vm.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace tprd::testing {
namespace {

constexpr uint64_t kPageSize = 4096;

}  // namespace

FakeGuestVm::FakeGuestVm(const Options& options)
    : ram_bytes_(options.ram_bytes),
      vcpus_(static_cast<size_t>(std::max(options.vcpu_count, 0))),
      running_(options.start_running) {
  if (ram_bytes_ > 0) {
    MemoryRegion ram;
    ram.end = ram_bytes_ - 1;
    ram.ram = true;
    ram.name = "ram";
    memory_map_.push_back(ram);
  }
}

std::optional<FakeGuestVm::Injection> FakeGuestVm::Count(Op op) {
  std::optional<Injection> fired;
  for (auto it = injections_.begin(); it != injections_.end();) {
    if (it->op == op && --it->remaining == 0) {
      if (!fired) fired = *it;
      it = injections_.erase(it);
    } else {
      ++it;
    }
  }
  if (!fired) ++op_counts_[static_cast<size_t>(op)];
  return fired;
}

void FakeGuestVm::FailNth(Op op, int n, absl::Status status, size_t partial_bytes) {
  injections_.push_back({op, std::max(n, 1), std::move(status), partial_bytes});
}

void FakeGuestVm::BeforeNthWrite(int n, std::function<void(FakeGuestVm&)> hook) {
  write_hooks_.push_back({std::max(n, 1), false, std::move(hook)});
}

void FakeGuestVm::AfterNthWrite(int n, std::function<void(FakeGuestVm&)> hook) {
  write_hooks_.push_back({std::max(n, 1), true, std::move(hook)});
}

void FakeGuestVm::ClearFaults() {
  injections_.clear();
  write_hooks_.clear();
  on_stop_ = nullptr;
}

void FakeGuestVm::RunWriteHooks(bool after) {
  std::vector<std::function<void(FakeGuestVm&)>> due;
  for (auto it = write_hooks_.begin(); it != write_hooks_.end();) {
    if (it->after != after) {
      ++it;
      continue;
    }
    if (--it->remaining == 0) {
      due.push_back(std::move(it->hook));
      it = write_hooks_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& hook : due) hook(*this);
}

absl::Status FakeGuestVm::RequireStopped(const char* what) const {
  if (running_) {
    return absl::FailedPreconditionError(absl::StrFormat("%s while the guest runs", what));
  }
  return absl::OkStatus();
}

absl::Status FakeGuestVm::CheckVcpu(int vcpu) const {
  if (vcpu < 0 || static_cast<size_t>(vcpu) >= vcpus_.size()) {
    return absl::InvalidArgumentError(absl::StrFormat("no vCPU %d", vcpu));
  }
  return absl::OkStatus();
}

absl::Status FakeGuestVm::Stop() {
  if (auto failure = Count(Op::kStop)) return failure->status;
  ++stop_calls_;
  if (running_ && race_next_stop_) {
    raced_stop_ = race_next_stop_;
    race_next_stop_.reset();
  }
  running_ = false;
  if (on_stop_) on_stop_(*this);
  return absl::OkStatus();
}

absl::Status FakeGuestVm::RequireNoRacedStop() const {
  if (!raced_stop_) return absl::OkStatus();
  return absl::FailedPreconditionError(
      "a stop is pending: take it with WaitForStop before running one vCPU");
}

std::optional<StopEvent> FakeGuestVm::TakeRacedWatchpointStop() {
  if (!raced_stop_ || raced_stop_->kind != StopEvent::Kind::kWatchpoint) return std::nullopt;
  return TakeRacedTrapStop();
}

std::optional<StopEvent> FakeGuestVm::TakeRacedTrapStop() {
  if (!raced_stop_ || (raced_stop_->kind != StopEvent::Kind::kWatchpoint &&
                       raced_stop_->kind != StopEvent::Kind::kBreakpoint)) {
    return std::nullopt;
  }
  std::optional<StopEvent> event = raced_stop_;
  raced_stop_.reset();
  return event;
}

absl::Status FakeGuestVm::Resume() {
  if (host_paused_) {
    return absl::FailedPreconditionError("the host paused this domain; not resuming it");
  }
  if (auto failure = Count(Op::kResume)) return failure->status;
  ++resume_calls_;
  running_ = true;
  if (pm_timer_) *pm_timer_ += pm_ticks_per_resume_;
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> FakeGuestVm::ReadAcpiPmTimer() {
  if (!pm_timer_) return absl::NotFoundError("the machine has no ACPI PM timer");
  if (!running_) ++pm_timer_reads_while_stopped_;
  return *pm_timer_ & engine::kAcpiPmTimerMask;
}

void FakeGuestVm::SetHostPaused(bool paused) {
  host_paused_ = paused;
  if (paused) running_ = false;
}

absl::StatusOr<std::optional<StopEvent>> FakeGuestVm::WaitForStop(absl::Duration) {
  if (!running_) return absl::FailedPreconditionError("WaitForStop while the guest is stopped");
  if (raced_stop_) {
    std::optional<StopEvent> event = raced_stop_;
    raced_stop_.reset();
    running_ = false;
    return event;
  }
  if (stop_events_.empty()) return std::optional<StopEvent>();
  StopEvent event = stop_events_.front();
  stop_events_.pop_front();
  running_ = false;
  if (event.kind == StopEvent::Kind::kPausedByHost) host_paused_ = true;
  return std::optional<StopEvent>(event);
}

absl::StatusOr<int> FakeGuestVm::VcpuCount() { return static_cast<int>(vcpus_.size()); }

absl::StatusOr<VcpuRegisters> FakeGuestVm::ReadRegisters(int vcpu) {
  if (absl::Status s = RequireStopped("ReadRegisters"); !s.ok()) return s;
  if (absl::Status s = CheckVcpu(vcpu); !s.ok()) return s;
  if (auto failure = Count(Op::kReadRegisters)) return failure->status;
  return vcpus_[vcpu].regs;
}

absl::Status FakeGuestVm::WriteRegister(int vcpu, WritableRegister reg, uint32_t value) {
  if (absl::Status s = RequireStopped("WriteRegister"); !s.ok()) return s;
  if (absl::Status s = CheckVcpu(vcpu); !s.ok()) return s;
  if (auto failure = Count(Op::kWriteRegister)) return failure->status;
  VcpuRegisters& regs = vcpus_[vcpu].regs;
  if (reg == WritableRegister::kEip) {
    regs.eip = value;
  } else if (reg == WritableRegister::kEflags) {
    regs.eflags = value;
  } else {
    regs.gpr[static_cast<int>(reg)] = value;  // kEax..kEdi share Gpr's order
  }
  return absl::OkStatus();
}

bool FakeGuestVm::Accessible(uint64_t pa, size_t size) const {
  if (size == 0) return true;
  const uint64_t last = pa + size - 1;
  if (last < pa) return false;
  // Byte by byte region lookup is too slow for page-sized reads: check region coverage instead.
  uint64_t cursor = pa;
  while (true) {
    bool advanced = false;
    for (const MemoryRegion& r : memory_map_) {
      if (r.start <= cursor && cursor <= r.end) {
        if (r.end >= last) return true;
        cursor = r.end + 1;
        advanced = true;
        break;
      }
    }
    if (!advanced) return false;
  }
}

uint8_t FakeGuestVm::LoadByte(uint64_t pa) const {
  auto it = pages_.find(pa / kPageSize);
  return it == pages_.end() ? 0 : it->second[pa % kPageSize];
}

void FakeGuestVm::StoreByte(uint64_t pa, uint8_t value) {
  auto it = pages_.find(pa / kPageSize);
  if (it == pages_.end()) {
    if (value == 0) return;  // stays sparse
    it = pages_.emplace(pa / kPageSize, Page{}).first;
  }
  it->second[pa % kPageSize] = value;
}

absl::Status FakeGuestVm::BackdoorReadPhysical(uint64_t pa, absl::Span<uint8_t> out) const {
  if (!Accessible(pa, out.size())) {
    return absl::OutOfRangeError(
        absl::StrFormat("physical 0x%x+%d is outside guest memory", pa, out.size()));
  }
  // A page at a time: the scans read megabytes, and a lookup per byte made the sanitizer
  // build's engine tests take minutes.
  for (size_t done = 0; done < out.size();) {
    const uint64_t at = pa + done;
    const size_t n = std::min<size_t>(out.size() - done, kPageSize - at % kPageSize);
    auto it = pages_.find(at / kPageSize);
    if (it == pages_.end()) {
      std::fill_n(out.begin() + done, n, uint8_t{0});
    } else {
      std::copy_n(it->second.begin() + at % kPageSize, n, out.begin() + done);
    }
    done += n;
  }
  return absl::OkStatus();
}

absl::Status FakeGuestVm::BackdoorWritePhysical(uint64_t pa, absl::Span<const uint8_t> data) {
  if (!Accessible(pa, data.size())) {
    return absl::OutOfRangeError(
        absl::StrFormat("physical 0x%x+%d is outside guest memory", pa, data.size()));
  }
  for (size_t i = 0; i < data.size(); ++i) StoreByte(pa + i, data[i]);
  return absl::OkStatus();
}

std::vector<uint8_t> FakeGuestVm::BackdoorPhysicalBytes(uint64_t pa, size_t size) const {
  std::vector<uint8_t> bytes(size);
  if (!BackdoorReadPhysical(pa, absl::MakeSpan(bytes)).ok()) return {};
  return bytes;
}

void FakeGuestVm::BackdoorWrite32(uint64_t pa, uint32_t value) {
  for (int i = 0; i < 4; ++i) StoreByte(pa + i, static_cast<uint8_t>(value >> (8 * i)));
}

void FakeGuestVm::BackdoorWrite64(uint64_t pa, uint64_t value) {
  for (int i = 0; i < 8; ++i) StoreByte(pa + i, static_cast<uint8_t>(value >> (8 * i)));
}

uint64_t FakeGuestVm::BackdoorRead64(uint64_t pa) const {
  uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value |= uint64_t{LoadByte(pa + i)} << (8 * i);
  return value;
}

absl::StatusOr<std::vector<uint64_t>> FakeGuestVm::TranslateRange(int vcpu, uint32_t va,
                                                                  size_t size) {
  if (absl::Status s = CheckVcpu(vcpu); !s.ok()) return s;
  if (size > 0 && uint64_t{va} + size - 1 > 0xFFFFFFFFu) {
    return absl::OutOfRangeError(absl::StrFormat("virtual 0x%x+%d wraps past 4 GiB", va, size));
  }
  // The hypervisor's own translation, not an engine access: neither counted nor failed.
  FakeGuestVmBackdoorReader reader(*this);
  const engine::PagingRegisters paging = engine::PagingRegisters::From(vcpus_[vcpu].regs);
  std::vector<uint64_t> physical;
  physical.reserve(size);
  size_t done = 0;
  while (done < size) {
    const uint32_t at = va + static_cast<uint32_t>(done);
    absl::StatusOr<engine::Translation> t = engine::TranslateVirtual(reader, paging, at);
    if (!t.ok()) return t.status();
    if (!t->present()) {
      return absl::NotFoundError(
          absl::StrFormat("virtual 0x%x is not mapped on vCPU %d", at, vcpu));
    }
    const size_t in_page = std::min<size_t>(size - done, kPageSize - (at % kPageSize));
    for (size_t i = 0; i < in_page; ++i) physical.push_back(t->physical_address + i);
    done += in_page;
  }
  for (uint64_t pa : physical) {
    if (!Accessible(pa, 1)) {
      return absl::OutOfRangeError(
          absl::StrFormat("virtual 0x%x maps physical 0x%x outside guest memory", va, pa));
    }
  }
  return physical;
}

absl::Status FakeGuestVm::BackdoorWriteVirtual(int vcpu, uint32_t va,
                                               absl::Span<const uint8_t> data) {
  absl::StatusOr<std::vector<uint64_t>> physical = TranslateRange(vcpu, va, data.size());
  if (!physical.ok()) return physical.status();
  for (size_t i = 0; i < data.size(); ++i) StoreByte((*physical)[i], data[i]);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> FakeGuestVm::BackdoorVirtualBytes(int vcpu, uint32_t va,
                                                                       size_t size) {
  absl::StatusOr<std::vector<uint64_t>> physical = TranslateRange(vcpu, va, size);
  if (!physical.ok()) return physical.status();
  std::vector<uint8_t> bytes;
  for (uint64_t pa : *physical) bytes.push_back(LoadByte(pa));
  return bytes;
}

absl::Status FakeGuestVm::ReadVirtual(int vcpu, uint32_t va, absl::Span<uint8_t> out) {
  if (absl::Status s = RequireStopped("ReadVirtual"); !s.ok()) return s;
  absl::StatusOr<std::vector<uint64_t>> physical = TranslateRange(vcpu, va, out.size());
  if (!physical.ok()) return physical.status();
  if (auto failure = Count(Op::kReadMemory)) return failure->status;
  for (size_t i = 0; i < out.size(); ++i) out[i] = LoadByte((*physical)[i]);
  return absl::OkStatus();
}

absl::Status FakeGuestVm::ReadPhysicalLive(uint64_t pa, absl::Span<uint8_t> out) {
  if (!live_reads_available_) return absl::UnimplementedError("no live reads (fake)");
  if (running_) ++live_reads_while_running_;
  if (!Accessible(pa, out.size())) {
    return absl::OutOfRangeError(
        absl::StrFormat("physical 0x%x+%d is outside guest memory", pa, out.size()));
  }
  if (auto failure = Count(Op::kReadMemory)) return failure->status;
  return BackdoorReadPhysical(pa, out);
}

absl::Status FakeGuestVm::ReadPhysical(uint64_t pa, absl::Span<uint8_t> out) {
  if (absl::Status s = RequireStopped("ReadPhysical"); !s.ok()) return s;
  if (!Accessible(pa, out.size())) {
    return absl::OutOfRangeError(
        absl::StrFormat("physical 0x%x+%d is outside guest memory", pa, out.size()));
  }
  if (auto failure = Count(Op::kReadMemory)) return failure->status;
  return BackdoorReadPhysical(pa, out);
}

absl::Status FakeGuestVm::WriteBytes(std::vector<uint64_t> physical, absl::Span<const uint8_t> data,
                                     bool is_virtual, int vcpu, uint64_t address) {
  RunWriteHooks(false);
  std::optional<Injection> failure = Count(Op::kWriteMemory);
  const size_t count = failure ? std::min(failure->partial_bytes, data.size()) : data.size();
  if (count > 0) {
    WriteRecord record{is_virtual, vcpu, address, {}, {}};
    for (size_t i = 0; i < count; ++i) {
      StoreByte(physical[i], data[i]);
      record.physical.push_back(physical[i]);
      record.bytes.push_back(data[i]);
    }
    write_log_.push_back(std::move(record));
  }
  RunWriteHooks(true);
  return failure ? failure->status : absl::OkStatus();
}

absl::Status FakeGuestVm::WriteVirtual(int vcpu, uint32_t va, absl::Span<const uint8_t> data) {
  if (absl::Status s = RequireStopped("WriteVirtual"); !s.ok()) return s;
  // Like the gdbstub, a debugger write ignores the page's R/W bit.
  absl::StatusOr<std::vector<uint64_t>> physical = TranslateRange(vcpu, va, data.size());
  if (!physical.ok()) return physical.status();
  return WriteBytes(std::move(*physical), data, true, vcpu, va);
}

absl::StatusOr<std::vector<absl::Status>> FakeGuestVm::WriteVirtualMany(
    int vcpu, absl::Span<const engine::MemoryWrite> writes) {
  const bool breaks = break_write_many_at_ > 0 && --break_write_many_at_ == 0;
  std::vector<absl::Status> out;
  for (const engine::MemoryWrite& w : writes) {
    if (breaks && out.size() == break_write_many_landed_) {
      return absl::DataLossError("injected: the pipelined exchange broke");
    }
    out.push_back(WriteVirtual(vcpu, static_cast<uint32_t>(w.address), w.data));
  }
  return out;
}

absl::Status FakeGuestVm::WritePhysical(uint64_t pa, absl::Span<const uint8_t> data) {
  if (absl::Status s = RequireStopped("WritePhysical"); !s.ok()) return s;
  if (!Accessible(pa, data.size())) {
    return absl::OutOfRangeError(
        absl::StrFormat("physical 0x%x+%d is outside guest memory", pa, data.size()));
  }
  std::vector<uint64_t> physical(data.size());
  for (size_t i = 0; i < data.size(); ++i) physical[i] = pa + i;
  return WriteBytes(std::move(physical), data, false, -1, pa);
}

absl::StatusOr<std::vector<MemoryRegion>> FakeGuestVm::MemoryMap() {
  if (!running_) ++memory_map_reads_while_stopped_;
  return memory_map_;
}

absl::StatusOr<uint8_t> FakeGuestVm::ReadTpr(int vcpu) {
  if (absl::Status s = RequireStopped("ReadTpr"); !s.ok()) return s;
  if (absl::Status s = CheckVcpu(vcpu); !s.ok()) return s;
  return vcpus_[vcpu].tpr;
}

absl::StatusOr<CpuFeatures> FakeGuestVm::Features() { return features_; }

absl::Status FakeGuestVm::SetBreakpoint(uint32_t va) {
  breakpoint_log_.push_back(va);
  if (breakpoints_in_memory_ && !breakpoints_.count(va)) {
    absl::StatusOr<std::vector<uint64_t>> pa = TranslateRange(0, va, 1);
    if (!pa.ok()) return pa.status();
    int3_saved_[va] = {pa->front(), LoadByte(pa->front())};
    StoreByte(pa->front(), 0xCC);
  }
  breakpoints_.insert(va);
  return absl::OkStatus();
}

absl::Status FakeGuestVm::RemoveBreakpoint(uint32_t va) {
  if (breakpoints_.erase(va) == 0) {
    return absl::NotFoundError(absl::StrFormat("no breakpoint at 0x%x", va));
  }
  if (auto it = int3_saved_.find(va); it != int3_saved_.end()) {
    StoreByte(it->second.first, it->second.second);
    int3_saved_.erase(it);
  }
  return absl::OkStatus();
}

absl::Status FakeGuestVm::SetWatchpoint(uint32_t va, uint32_t length, WatchKind kind) {
  watchpoints_.insert({va, length, kind});
  return absl::OkStatus();
}

absl::Status FakeGuestVm::RemoveWatchpoint(uint32_t va, uint32_t length, WatchKind kind) {
  if (watchpoints_.erase({va, length, kind}) == 0) {
    return absl::NotFoundError(absl::StrFormat("no watchpoint at 0x%x+%u", va, length));
  }
  return absl::OkStatus();
}

absl::StatusOr<StepResult> FakeGuestVm::StepVcpu(int vcpu, absl::Duration /*timeout*/) {
  if (absl::Status s = RequireStopped("StepVcpu"); !s.ok()) return s;
  if (absl::Status s = CheckVcpu(vcpu); !s.ok()) return s;
  if (absl::Status s = RequireNoRacedStop(); !s.ok()) return s;
  if (auto failure = Count(Op::kStep)) return failure->status;
  step_calls_.push_back(vcpu);
  StepResult result;
  if (on_step_) {
    result.completed = on_step_(*this, vcpu);
  } else {
    vcpus_[vcpu].regs.eip += step_length_;
    result.completed = true;
  }
  Vcpu& stepped = vcpus_[vcpu];
  if (result.completed && stepped.pending_watchpoint_hit) {
    result.watchpoint_reported = true;
    stepped.pending_watchpoint_hit = false;
  }
  result.pc = stepped.regs.eip;
  return result;
}

absl::StatusOr<StopEvent> FakeGuestVm::RunVcpuAlone(int vcpu, absl::Duration /*timeout*/) {
  if (absl::Status s = RequireStopped("RunVcpuAlone"); !s.ok()) return s;
  if (absl::Status s = CheckVcpu(vcpu); !s.ok()) return s;
  if (absl::Status s = RequireNoRacedStop(); !s.ok()) return s;
  run_alone_calls_.push_back(vcpu);
  if (on_run_alone_) return on_run_alone_(*this, vcpu);
  StopEvent stop;
  stop.kind = StopEvent::Kind::kInterrupted;
  stop.vcpu = vcpu;
  stop.pc = vcpus_[vcpu].regs.eip;
  return stop;
}

void FakeGuestVm::SetPagingAll(uint32_t cr0, uint32_t cr3, uint32_t cr4, uint64_t efer) {
  for (Vcpu& v : vcpus_) {
    v.regs.cr0 = cr0;
    v.regs.cr3 = cr3;
    v.regs.cr4 = cr4;
    v.regs.efer = efer;
  }
}

FakeGuestVm::MemorySnapshot FakeGuestVm::Snapshot() const {
  MemorySnapshot snapshot;
  for (const auto& [number, page] : pages_) {
    if (std::any_of(page.begin(), page.end(), [](uint8_t b) { return b != 0; })) {
      snapshot.emplace(number, page);
    }
  }
  return snapshot;
}

}  // namespace tprd::testing

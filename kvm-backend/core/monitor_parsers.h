// Parsers of QEMU 7.2 monitor output (HMP text and QMP JSON, as virDomainQemuMonitorCommand
// returns them). Pure functions: no libvirt, no I/O. Input comes from a peer (QEMU), so every
// unexpected shape is an error value, never a crash.
#ifndef TPRD_KVM_BACKEND_CORE_MONITOR_PARSERS_H_
#define TPRD_KVM_BACKEND_CORE_MONITOR_PARSERS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "daemon/engine/guest_vm.h"

namespace tprd::backend {

// HMP `info lapic N`: the full 8-bit TPR from the "APR .. TPR 0xNN .. PPR .." line.
// "No CPU available" (bad index) is NOT_FOUND.
absl::StatusOr<uint8_t> ParseLapicTpr(std::string_view hmp_output);

// HMP `info mtree -f`: the flattened view of the system address space (the FlatView that lists
// AS "memory"), in address order. I/O regions are kept with ram=false; "rom" and "romd" are
// ram=false too. Lines of other FlatViews (I/O ports, SMM, bus masters) are ignored.
absl::StatusOr<std::vector<engine::MemoryRegion>> ParseMtreeFlat(std::string_view hmp_output);

// The I/O port of the ACPI PM timer (region `acpi-tmr` in the `I/O` address space of HMP
// `info mtree`); NOT_FOUND when the machine has none (ACPI off).
absl::StatusOr<uint16_t> ParseAcpiPmTimerPort(std::string_view hmp_output);

// The value of HMP `i /w PORT` ("portl[0x0608] = 0x0002ac4f").
absl::StatusOr<uint32_t> ParseIoPortReadLong(std::string_view hmp_output);

// HMP `gpa2hva ADDR`: the host virtual address. "No memory is mapped" and "is not RAM" are
// NOT_FOUND.
absl::StatusOr<uint64_t> ParseGpa2Hva(std::string_view hmp_output);

// HMP `gdbserver ...`: OK when QEMU reports it listens ("Waiting for gdb connection") or
// stopped it ("Disabled gdbserver"); otherwise the QEMU message as an error (a second gdbstub
// answers "duplicate yank instance": ALREADY_EXISTS).
absl::Status CheckGdbserverReply(std::string_view hmp_output);

// One character device as QMP `query-chardev` reports it.
struct QemuChardev {
  std::string label;           // the chardev's id ("gdb" for one `gdbserver DEVICE` made itself)
  std::string filename;        // e.g. "unix:", "disconnected:fd:NAME", "unix:/path,server=on"
  bool frontend_open = false;  // a frontend (the gdbstub, a serial port, ...) uses it
};
absl::StatusOr<std::vector<QemuChardev>> ParseQueryChardev(std::string_view qmp_reply);

// The tprd process id in one of tprd's gdbstub chardev ids ("tprd-gdb-<pid>-<n>", the prefix
// passed in); nullopt for any other label.
std::optional<int> TprdPidOfGdbChardev(std::string_view label, std::string_view prefix);

// QMP commands of the gdbstub channel (docs/design.md "The gdbstub channel"): `getfd` names
// the descriptor passed with the command; `chardev-add` makes a client socket chardev of that
// named descriptor (already connected: one end of tprd's socketpair); `chardev-remove` and
// `closefd` undo them. Ids and names are JSON-escaped.
std::string GetfdCommand(std::string_view fdname);
std::string ClosefdCommand(std::string_view fdname);
std::string ChardevAddSocketFdCommand(std::string_view id, std::string_view fdname);
std::string ChardevRemoveCommand(std::string_view id);
// OK for a QMP success reply ({"return":...}); QEMU's error class and text otherwise.
absl::Status CheckQmpSuccess(std::string_view qmp_reply);

// One vCPU as QMP `query-cpus-fast` reports it.
struct QemuCpu {
  int cpu_index = 0;
  std::string qom_path;  // e.g. /machine/unattached/device[0]
  int64_t host_thread_id = 0;
};
// QMP reply to `query-cpus-fast`, sorted by cpu_index.
absl::StatusOr<std::vector<QemuCpu>> ParseQueryCpusFast(std::string_view qmp_reply);

// QMP reply to `qom-get` of a boolean property ({"return":true,...}). A QMP error reply becomes
// NOT_FOUND for DeviceNotFound/property-not-found classes, else INTERNAL, with QEMU's text.
absl::StatusOr<bool> ParseQomGetBool(std::string_view qmp_reply);

// QMP reply to `query-status`. QEMU's run state tells who stopped the VM: "debug" is the
// gdbstub, "paused" is a `stop` command (libvirt's virDomainSuspend), "running" runs.
struct QemuRunStatus {
  bool running = false;
  std::string status;  // QEMU RunState name: running, paused, debug, shutdown, ...
};
absl::StatusOr<QemuRunStatus> ParseQueryStatus(std::string_view qmp_reply);

// QMP reply to `query-kvm` ({"return":{"enabled":true,"present":true}}): whether this QEMU runs
// its vCPUs under KVM (enabled) rather than TCG.
absl::StatusOr<bool> ParseQueryKvmEnabled(std::string_view qmp_reply);

// HMP `info trace-events PATTERN`: one "NAME : state 0|1" line per event (empty: no match).
struct TraceEventState {
  std::string name;
  bool enabled = false;
};
absl::StatusOr<std::vector<TraceEventState>> ParseTraceEventStates(std::string_view hmp_output);

// Builds the QMP command text for qom-get (path and property JSON-escaped).
std::string QomGetCommand(std::string_view path, std::string_view property);

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_CORE_MONITOR_PARSERS_H_

// Counts the TPR accesses that reach QEMU's APIC emulation for a short window, without stopping
// the guest: QEMU's `log` trace backend (Debian's QEMU 7.2 is built with it), events
// apic_mem_readl/apic_mem_writel switched on with HMP `trace-event` and written, through HMP
// `logfile`, to a file in the domain's own libvirt directory
// (/var/lib/libvirt/qemu/domain-ID-NAME/: writable by QEMU's user under libvirt's default DAC and
// AppArmor settings, removed by libvirt when the domain stops). Every access is counted, from every
// vCPU, under TCG and KVM alike. tprd uses it for "TPR accesses reaching the APIC before the first
// patch" (docs/design.md "Rates and metrics"). Tracing writes a line per access, so the guest runs
// slower while it lasts and the rate is a lower bound.
#ifndef TPRD_KVM_BACKEND_APIC_TRACE_SAMPLER_H_
#define TPRD_KVM_BACKEND_APIC_TRACE_SAMPLER_H_

#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "daemon/engine/clock.h"
#include "kvm-backend/core/apic_trace_count.h"
#include "kvm-backend/libvirt_connection.h"

namespace tprd::backend {

// The trace file's name in the domain's directory. A file of this name there is a sample a tprd
// did not finish (it was killed): CleanUpLeftover turns the trace off and removes it.
inline constexpr char kApicTraceFileName[] = "tprd-apic-trace.log";

struct ApicTraceSamplerOptions {
  // libvirt's per-domain directories (qemu:///system's libDir).
  std::string libvirt_qemu_dir = "/var/lib/libvirt/qemu";
  // How often the file's size is checked during the window.
  absl::Duration poll = absl::Milliseconds(50);
  // The window ends early when the file grows past this (about 1 s at 300,000 accesses/s).
  uint64_t max_bytes = uint64_t{64} << 20;
};

struct ApicTraceSample {
  ApicTraceCount count;
  // From the middle of the monitor call that switched the events on to the middle of the one
  // that switched them off.
  absl::Duration window;
  // Set when the trace file could not be removed afterwards (QEMU no longer writes it; libvirt
  // removes it with the domain's directory when the domain stops).
  std::string leftover_file_error;
};

class ApicTraceSampler {
 public:
  ApicTraceSampler(LibvirtConnection* connection, std::string uuid, engine::Clock* clock,
                   ApicTraceSamplerOptions options = {})
      : connection_(connection),
        uuid_(std::move(uuid)),
        clock_(clock),
        options_(std::move(options)) {}

  // Traces for `window` (less if the file reaches max_bytes). Afterwards the events are off,
  // QEMU logs to /dev/null (HMP cannot give it back its stderr; only -d output and log-backend
  // traces go there) and the file is removed, also when the sample fails; when turning the
  // trace off fails, the file stays as the marker CleanUpLeftover looks for. Errors: the domain's
  // directory is missing (FAILED_PRECONDITION), the events are already on (someone else traces
  // the APIC: FAILED_PRECONDITION, nothing touched), QEMU has no such events or cannot open the
  // file (its words), or no line was written (NOT_FOUND: no APIC access, or a QEMU built without
  // the log backend).
  absl::StatusOr<ApicTraceSample> Sample(absl::Duration window);

  // A sample a killed tprd left running: when the domain's directory holds the trace file, the
  // events go off, QEMU's log to /dev/null and the file is removed. OK when there is none.
  absl::Status CleanUpLeftover();

 private:
  absl::StatusOr<std::string> DomainDirectory();
  // An HMP command whose success prints nothing; QEMU's message as the error otherwise.
  absl::Status Quiet(const std::string& command);
  // Events off and the log to /dev/null; the first error.
  absl::Status StopTracing();

  LibvirtConnection* connection_;
  std::string uuid_;
  engine::Clock* clock_;
  ApicTraceSamplerOptions options_;
};

}  // namespace tprd::backend

#endif  // TPRD_KVM_BACKEND_APIC_TRACE_SAMPLER_H_

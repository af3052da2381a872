// metrics_textfile: tprd writes its Prometheus exposition (GetMetrics' text) into a file every
// few seconds for node_exporter's textfile collector, which reads *.prom files from a directory.
// tprd opens no TCP port for it. Each write replaces the file atomically (a temporary file next
// to it, fsync, rename, fsync of the directory), so the collector never reads half a file.
#ifndef TPRD_DAEMON_METRICS_TEXTFILE_WRITER_H_
#define TPRD_DAEMON_METRICS_TEXTFILE_WRITER_H_

#include <functional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace tprd::daemon {

// The file system seam: the real one below, a fake in the unit tests.
class MetricsFile {
 public:
  virtual ~MetricsFile() = default;
  // Makes `path` hold exactly `contents`, atomically.
  virtual absl::Status Replace(const std::string& path, absl::string_view contents) = 0;
};

// `path`.tmp (not *.prom, so the collector ignores it), written, fsynced, made mode 0644 (the
// collector runs as another user), renamed over `path`; then the directory is fsynced.
class AtomicMetricsFile : public MetricsFile {
 public:
  absl::Status Replace(const std::string& path, absl::string_view contents) override;
};

class MetricsTextfileWriter {
 public:
  // `render` makes the text (MetricsText over the registry's domains).
  MetricsTextfileWriter(std::string path, absl::Duration interval,
                        std::function<absl::StatusOr<std::string>()> render, MetricsFile* file);
  ~MetricsTextfileWriter();  // Stop()

  // One write now. A failure is returned and logged once until the next success.
  absl::Status WriteOnce();
  // Writes at once, then every `interval` on a thread of its own, until Stop().
  void Start();
  void Stop();

 private:
  void Run();

  const std::string path_;
  const absl::Duration interval_;
  const std::function<absl::StatusOr<std::string>()> render_;
  MetricsFile* const file_;
  std::string last_failure_;  // logged already
  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace tprd::daemon

#endif  // TPRD_DAEMON_METRICS_TEXTFILE_WRITER_H_

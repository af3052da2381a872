#include "daemon/metrics/textfile_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "daemon/log.h"

namespace tprd::daemon {
namespace {

absl::Status Failed(const std::string& what, const std::string& path) {
  return absl::UnavailableError(
      absl::StrCat("metrics_textfile: cannot ", what, " ", path, ": ", std::strerror(errno)));
}

std::string DirectoryOf(const std::string& path) {
  const size_t slash = path.rfind('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

}  // namespace

absl::Status AtomicMetricsFile::Replace(const std::string& path, absl::string_view contents) {
  const std::string temporary = path + ".tmp";
  const int fd = open(temporary.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) return Failed("create", temporary);
  bool renamed = false;
  absl::Cleanup cleanup = [&] {
    close(fd);
    if (!renamed) unlink(temporary.c_str());
  };
  for (size_t done = 0; done < contents.size();) {
    const ssize_t n = write(fd, contents.data() + done, contents.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return Failed("write", temporary);
    done += static_cast<size_t>(n);
  }
  // The unit's UMask (0077) would leave it unreadable to node_exporter.
  if (fchmod(fd, 0644) != 0) return Failed("chmod", temporary);
  if (fsync(fd) != 0) return Failed("fsync", temporary);
  if (rename(temporary.c_str(), path.c_str()) != 0) return Failed("rename to", path);
  renamed = true;
  const std::string directory = DirectoryOf(path);
  const int dir = open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dir < 0) return Failed("open the directory", directory);
  const int synced = fsync(dir);
  close(dir);
  if (synced != 0) return Failed("fsync the directory", directory);
  return absl::OkStatus();
}

MetricsTextfileWriter::MetricsTextfileWriter(std::string path, absl::Duration interval,
                                             std::function<absl::StatusOr<std::string>()> render,
                                             MetricsFile* file)
    : path_(std::move(path)), interval_(interval), render_(std::move(render)), file_(file) {}

MetricsTextfileWriter::~MetricsTextfileWriter() { Stop(); }

absl::Status MetricsTextfileWriter::WriteOnce() {
  absl::StatusOr<std::string> text = render_();
  absl::Status status = text.ok() ? file_->Replace(path_, *text) : text.status();
  if (status.ok()) {
    if (!last_failure_.empty())
      LogInfo(absl::StrCat("metrics_textfile: writing ", path_, " again"));
    last_failure_.clear();
  } else if (std::string(status.message()) != last_failure_) {
    last_failure_ = std::string(status.message());
    LogWarning(absl::StrCat("metrics_textfile ", path_, " not written: ", status.message()));
  }
  return status;
}

void MetricsTextfileWriter::Start() {
  thread_ = std::thread([this] { Run(); });
}

void MetricsTextfileWriter::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void MetricsTextfileWriter::Run() {
  for (;;) {
    (void)WriteOnce();
    absl::MutexLock lock(&mu_);
    if (mu_.AwaitWithTimeout(absl::Condition(&stopping_), interval_)) return;
  }
}

}  // namespace tprd::daemon

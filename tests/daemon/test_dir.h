// A fresh temporary directory per test, removed afterwards.
#ifndef TPRD_TESTS_DAEMON_TEST_DIR_H_
#define TPRD_TESTS_DAEMON_TEST_DIR_H_

#include <stdlib.h>

#include <filesystem>
#include <string>

namespace tprd::daemon {

class TestDir {
 public:
  TestDir() {
    std::string pattern = (std::filesystem::temp_directory_path() / "tprd-test-XXXXXX").string();
    char* made = ::mkdtemp(pattern.data());
    path_ = made != nullptr ? std::string(made) : std::string();
  }
  ~TestDir() {
    std::error_code ignored;
    if (!path_.empty()) std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }
  std::string File(const std::string& name) const { return path_ + "/" + name; }

 private:
  std::string path_;
};

}  // namespace tprd::daemon

#endif  // TPRD_TESTS_DAEMON_TEST_DIR_H_

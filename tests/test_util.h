// Helpers shared by the tests: where ../shared is, scratch directories, reading raw files.
#pragma once

#include <cstdlib>
#include <optional>
#include <string>
#include <vector>

namespace mxlm::test {

// The shared data folder: $MXLM_SHARED, else the path configured at build time (../shared).
std::string shared_dir();
// shared_dir() + "/" + rel
std::string shared_path(const std::string& rel);
// A fresh, empty scratch directory for this test process (removed at exit).
std::string scratch_dir();
std::vector<float> read_f32_file(const std::string& path);
// Path of the mxlm binary built with the tests.
std::string mxlm_binary();
// Runs a shell command, returns its exit status; its stdout (and stderr when merge_stderr)
// goes to *output when given.
int run_command(const std::string& cmd, std::string* output = nullptr, bool merge_stderr = true);

// Sets MXLM_ISA for the scope and restores the previous value.
class ScopedIsaEnv {
 public:
  explicit ScopedIsaEnv(const char* value) {
    if (const char* old = std::getenv("MXLM_ISA")) old_ = old;
    if (value) {
      setenv("MXLM_ISA", value, 1);
    } else {
      unsetenv("MXLM_ISA");
    }
  }
  ~ScopedIsaEnv() {
    if (old_) {
      setenv("MXLM_ISA", old_->c_str(), 1);
    } else {
      unsetenv("MXLM_ISA");
    }
  }

 private:
  std::optional<std::string> old_;
};

}  // namespace mxlm::test

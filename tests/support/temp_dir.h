// Test support shared by the disk-tier tests (CPU and GPU): a fresh temporary directory for a
// tier's file, removed with its contents, and a guard that clears the process-wide fault
// rules when a test ends, whatever happens.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>

#include <stdlib.h>

#include "offload/fault_injection.h"

namespace twl::testing {

class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "twl-test") {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/" + prefix + "-XXXXXX";
    if (mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;  // best effort: a test must not fail on cleanup
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

struct ClearFaultsOnExit {
  ~ClearFaultsOnExit() { ProcessFaultInjector().Clear(); }
};

}  // namespace twl::testing

// Fault injection for the I/O paths: make the Nth operation of a kind fail with a chosen
// errno (or come back short), so that tests and the reliability work can check that every
// failure returns its status and leaves earlier data intact.
//
//   FaultInjector inj;                       // or ProcessFaultInjector() for code paths
//   inj.FailNth(FaultSite::kDiskWrite, 3, EIO);  //   that cannot take an option
//   options.injector = &inj;                 // the 3rd disk write from now fails with EIO
//
// A site asks Check(site) once per operation, before doing it; the answer is 0 (go on),
// an errno to report as the operation's result, or kShortTransfer (the operation moves no
// bytes, as at end of file). Counting is per site and starts when the injector is created;
// FailNth counts from the moment it is called. Unarmed, Check costs one relaxed atomic
// increment and one relaxed load.
// Thread-safety: every method is thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <mutex>
#include <vector>

namespace twl {

enum class FaultSite : int32_t {
  kDiskWrite = 0,
  kDiskRead = 1,
  kNumSites = 2,
};

const char* FaultSiteName(FaultSite site);

class FaultInjector {
 public:
  // Check() answer meaning "transfer no bytes" (not an errno: errnos are positive).
  static constexpr int kShortTransfer = -1;

  FaultInjector() = default;
  FaultInjector(const FaultInjector&) = delete;
  FaultInjector& operator=(const FaultInjector&) = delete;

  // The nth (1-based) operation at `site` from now fails with `err` (an errno such as EIO
  // or ENOSPC, or kShortTransfer).
  void FailNth(FaultSite site, int64_t nth, int err) { FailRange(site, nth, 1, err); }
  // `count` operations starting with the nth from now fail (count < 0: all of them).
  void FailRange(FaultSite site, int64_t nth, int64_t count, int err);
  // Removes every rule (counters keep running).
  void Clear();

  // Called by a site once per operation: 0, an errno, or kShortTransfer.
  int Check(FaultSite site);

  // Operations seen / faults injected at `site` since creation.
  int64_t ops_seen(FaultSite site) const;
  int64_t faults_injected(FaultSite site) const;

 private:
  struct Rule {
    FaultSite site;
    int64_t first;  // 1-based op number (ops_seen after the op) of the first failure
    int64_t last;   // inclusive; INT64_MAX for "forever"
    int err;
  };
  std::atomic<int64_t> seen_[static_cast<int>(FaultSite::kNumSites)] = {};
  std::atomic<int64_t> injected_[static_cast<int>(FaultSite::kNumSites)] = {};
  std::atomic<bool> armed_{false};
  std::mutex mu_;
  std::vector<Rule> rules_;  // guarded by mu_
};

// The process-wide injector: consulted by tiers created without their own injector.
FaultInjector& ProcessFaultInjector();

}  // namespace twl

// Fault injection rules and counters (see fault_injection.h).
#include "offload/fault_injection.h"

#include <cstddef>
#include <limits>

namespace twl {

const char* FaultSiteName(FaultSite site) {
  switch (site) {
    case FaultSite::kDiskWrite: return "disk write";
    case FaultSite::kDiskRead: return "disk read";
    default: return "unknown";
  }
}

void FaultInjector::FailRange(FaultSite site, int64_t nth, int64_t count, int err) {
  if (nth < 1 || count == 0 || err == 0) return;
  std::lock_guard<std::mutex> lock(mu_);
  const int64_t base = seen_[static_cast<int>(site)].load(std::memory_order_relaxed);
  Rule rule;
  rule.site = site;
  rule.first = base + nth;
  rule.last = count < 0 ? std::numeric_limits<int64_t>::max() : rule.first + count - 1;
  rule.err = err;
  rules_.push_back(rule);
  armed_.store(true, std::memory_order_release);
}

void FaultInjector::Clear() {
  std::lock_guard<std::mutex> lock(mu_);
  rules_.clear();
  armed_.store(false, std::memory_order_release);
}

int FaultInjector::Check(FaultSite site) {
  const int s = static_cast<int>(site);
  const int64_t n = seen_[s].fetch_add(1, std::memory_order_relaxed) + 1;
  if (!armed_.load(std::memory_order_acquire)) return 0;
  std::lock_guard<std::mutex> lock(mu_);
  for (size_t i = 0; i < rules_.size(); ++i) {
    const Rule r = rules_[i];
    if (r.site != site || n < r.first || n > r.last) continue;
    injected_[s].fetch_add(1, std::memory_order_relaxed);
    // The operation numbered `last` is the rule's final one (every number is handed to
    // exactly one caller), so the rule can go; an empty list returns to the fast path.
    if (n == r.last) {
      rules_.erase(rules_.begin() + static_cast<std::ptrdiff_t>(i));
      if (rules_.empty()) armed_.store(false, std::memory_order_release);
    }
    return r.err;
  }
  return 0;
}

int64_t FaultInjector::ops_seen(FaultSite site) const {
  return seen_[static_cast<int>(site)].load(std::memory_order_relaxed);
}

int64_t FaultInjector::faults_injected(FaultSite site) const {
  return injected_[static_cast<int>(site)].load(std::memory_order_relaxed);
}

FaultInjector& ProcessFaultInjector() {
  static FaultInjector* injector = new FaultInjector();  // never destroyed: used at exit
  return *injector;
}

}  // namespace twl

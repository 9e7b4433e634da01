// Per-thread state of each runtime (see TwlThreadState in api/handle.h): one thread_local
// map per thread from runtime generation to state, so that a thread's last error and last
// step die with the thread, and a global set of live generations, so that a thread drops the
// state of runtimes freed since (when it next meets a new runtime).
#include <atomic>
#include <mutex>
#include <unordered_map>

#include "absl/container/flat_hash_set.h"
#include "api/handle.h"

namespace twl::api {
namespace {

std::atomic<uint64_t> g_next_generation{1};

// Live generations. A function-local static so that it outlives every thread_local map
// (threads may exit during static destruction).
struct LiveSet {
  std::mutex mu;
  absl::flat_hash_set<uint64_t> live;
};
LiveSet& Live() {
  static LiveSet* set = new LiveSet;  // never destroyed: threads may outlive main's statics
  return *set;
}

thread_local std::unordered_map<uint64_t, TwlThreadState> t_states;

}  // namespace

uint64_t RegisterRuntime() {
  const uint64_t generation = g_next_generation.fetch_add(1);
  LiveSet& set = Live();
  std::lock_guard<std::mutex> lock(set.mu);
  set.live.insert(generation);
  return generation;
}

void UnregisterRuntime(uint64_t generation) {
  LiveSet& set = Live();
  std::lock_guard<std::mutex> lock(set.mu);
  set.live.erase(generation);
}

TwlThreadState* ThreadState(const twl_runtime* rt, bool create) {
  auto it = t_states.find(rt->generation);
  if (it != t_states.end()) return &it->second;
  if (!create) return nullptr;
  // A new key: first drop the state of runtimes freed since (bounded by the runtimes this
  // thread has used, and done once per new runtime per thread).
  {
    LiveSet& set = Live();
    std::lock_guard<std::mutex> lock(set.mu);
    for (auto i = t_states.begin(); i != t_states.end();) {
      if (set.live.contains(i->first)) {
        ++i;
      } else {
        i = t_states.erase(i);
      }
    }
  }
  return &t_states[rt->generation];
}

}  // namespace twl::api

// Log sink (see log.h). One mutex serializes delivery and replacement of the callback: log
// messages are rare (one-time facts, failures), so the lock costs nothing on the decode path,
// and it lets a binding free its callback as soon as SetLogCallback returns.
#include "runtime/log.h"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <string>

namespace twl {
namespace {

int DefaultMaxLevel() {
  const char* verbose = std::getenv("TWL_VERBOSE");
  return verbose != nullptr && verbose[0] == '1' ? int(LogLevel::kInfo) : int(LogLevel::kWarning);
}

struct Sink {
  std::mutex mu;
  LogFn fn = nullptr;
  void* user_data = nullptr;
  std::atomic<int> max_level{DefaultMaxLevel()};
};

Sink& TheSink() {
  static Sink* sink = new Sink;  // never destroyed: logging may happen during exit
  return *sink;
}

}  // namespace

bool LogEnabled(LogLevel level) noexcept {
  return int(level) <= TheSink().max_level.load(std::memory_order_relaxed);
}

void Log(LogLevel level, std::string_view message) noexcept {
  if (!LogEnabled(level)) return;
  Sink& sink = TheSink();
  try {
    const std::string text(message);
    std::lock_guard<std::mutex> lock(sink.mu);
    if (sink.fn != nullptr) {
      sink.fn(int(level), text.c_str(), sink.user_data);
    } else {
      static const char* const kNames[] = {"error", "warning", "info", "debug"};
      std::fprintf(stderr, "twilight %s: %s\n", kNames[int(level) & 3], text.c_str());
    }
  } catch (...) {
    // Out of memory or a failing mutex: a log line is not worth failing the caller's call.
  }
}

void SetLogCallback(LogFn fn, void* user_data, LogLevel max_level) noexcept {
  Sink& sink = TheSink();
  try {
    std::lock_guard<std::mutex> lock(sink.mu);
    sink.fn = fn;
    sink.user_data = fn ? user_data : nullptr;
    sink.max_level.store(fn ? int(max_level) : DefaultMaxLevel(), std::memory_order_relaxed);
  } catch (...) {
    // std::mutex::lock failed (resource exhaustion): keep the previous sink.
  }
}

}  // namespace twl

// What the opaque twl_runtime handle is, and the guard that every C entry point runs its body
// in: it turns absl::Status and exceptions into a twl_status, records the message for
// twl_runtime_last_error, and never lets anything escape.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "api/status_map.h"
#include "runtime/runtime.h"
#include "twilight.h"

// Per-thread state of one runtime: what twl_runtime_last_error and twl_runtime_last_step
// report, so that threads sharing a runtime do not see each other's results. It lives in
// the thread (thread_local, see api/thread_state.cc), keyed by the runtime's generation, so
// it dies with the thread: a later thread that gets the same std::thread::id (glibc reuses
// a joined thread's) starts with none.
struct TwlThreadState {
  std::string last_error;
  twl::StepTelemetry last_step;
  bool has_step = false;
};

struct twl_runtime {
  static constexpr uint64_t kMagic = 0x54574c52554e5431ull;  // "TWLRUNT1"
  static constexpr uint64_t kDeadMagic = 0xdeadbeefdeadbeefull;

  uint64_t magic = kMagic;  // catches obviously wrong pointers, not every use after free
  std::unique_ptr<twl::Runtime> runtime;
  twl_runtime_config config{};  // resolved: no sentinel left
  twl_backend backend = TWL_BACKEND_AUTO;
  std::string backend_name;
  bool collect_telemetry = true;

  // Serializes every call into `runtime`: the C contract makes a runtime usable from many
  // threads without relying on how much of twl::Runtime is itself thread-safe.
  mutable std::mutex mu;
  twl::StepTelemetry scratch_step;  // guarded by mu: written by Decode, then swapped in
  // twl_runtime_set_capture_kept / twl_runtime_last_step_kept, guarded by mu.
  bool capture_kept = false;
  int32_t kept_num_seqs = -1;  // -1: no captured step yet
  std::vector<int64_t> kept_offsets;
  std::vector<int32_t> kept_tokens;

  // Never reused within a process (unlike the handle's address): the key of the calling
  // thread's TwlThreadState for this runtime.
  uint64_t generation = 0;
};

namespace twl::api {

// A new generation for a runtime being created; registers it as live.
uint64_t RegisterRuntime();
// Marks a generation dead (twl_runtime_free): threads drop their state of it the next time
// they meet a new runtime, or when they exit.
void UnregisterRuntime(uint64_t generation);
// The calling thread's state for rt (a live handle), created on first use when `create`;
// nullptr when there is none and !create. Valid until this thread ends or, after
// twl_runtime_free(rt), until it next creates state for another runtime. May throw
// std::bad_alloc when creating.
TwlThreadState* ThreadState(const twl_runtime* rt, bool create);

// Null or not a live handle -> InvalidArgument.
absl::Status CheckHandle(const twl_runtime* rt);

// Stores "fn: message detail" as the calling thread's last error for rt (or for "no runtime"
// when rt is not a valid handle). Never throws (a message that cannot be stored is dropped).
void RecordError(const twl_runtime* rt, const char* fn, absl::string_view message,
                 absl::string_view detail = {}) noexcept;

// Runs body() -> absl::Status behind the exception barrier; records any failure.
template <typename Body>
twl_status Guard(const twl_runtime* rt, const char* fn, Body&& body) noexcept {
  twl_status code = TWL_INTERNAL;
  try {
    const absl::Status status = body();
    code = ToTwlStatus(status);
    if (code != TWL_OK) {
      RecordError(
          rt, fn,
          status.message().empty() ? absl::string_view(twl_status_string(code)) : status.message());
    }
    return code;
  } catch (const std::bad_alloc&) {
    RecordError(rt, fn, "out of host memory");
    return TWL_OUT_OF_MEMORY;
  } catch (const std::exception& e) {
    RecordError(rt, fn, "internal error (exception):", e.what());
    return TWL_INTERNAL;
  } catch (...) {
    RecordError(rt, fn, "internal error (unknown exception)");
    return TWL_INTERNAL;
  }
}

}  // namespace twl::api

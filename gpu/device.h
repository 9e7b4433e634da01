// Minimal CUDA-free device helpers (memory, copies, streams, events, device facts) for code
// that drives the kernels from plain C++: tests, benchmarks, backends. Streams and events
// travel as void* (cudaStream_t / cudaEvent_t) so no CUDA type leaks into callers.
// Built without CUDA, every call returns Unavailable (GpuAvailable() is false).
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace twl::gpu {

struct DeviceInfo {
  std::string name;
  int32_t sm_count = 0;
  int32_t cc_major = 0, cc_minor = 0;
  int64_t total_bytes = 0;
  int64_t l2_bytes = 0;
  int64_t max_smem_per_block = 0;  // opt-in limit
};

// True when built with CUDA and a device is visible.
bool GpuAvailable();
// Facts of the current device (cached after the first call).
absl::StatusOr<DeviceInfo> CurrentDevice();
// SM count of the current device, or 132 when unknown (used to size work splits).
int32_t SmCount();

absl::StatusOr<void*> Malloc(size_t bytes);
void Free(void* p);
absl::StatusOr<void*> MallocHost(size_t bytes);  // pinned
void FreeHost(void* p);

// Copies; async on `stream` when one is given, else synchronous (legacy default stream).
absl::Status CopyToDevice(void* dst, const void* src, size_t bytes, void* stream = nullptr);
absl::Status CopyToHost(void* dst, const void* src, size_t bytes, void* stream = nullptr);
absl::Status CopyOnDevice(void* dst, const void* src, size_t bytes, void* stream = nullptr);
absl::Status Memset(void* dst, int value, size_t bytes, void* stream = nullptr);

absl::StatusOr<void*> StreamCreate();
void StreamDestroy(void* stream);
absl::Status StreamSync(void* stream);
absl::Status DeviceSync();
// Marks the range an external profiler captures (ncu/nsys --profile-from-start off).
void ProfilerRange(bool start);
// CUDA graphs for callers without CUDA headers (benchmarks): capture the work enqueued on
// `stream` between Begin and End (thread-local capture mode) into an instantiated graph.
absl::Status StreamBeginCapture(void* stream);
absl::StatusOr<void*> StreamEndCapture(void* stream);  // the graph exec; GraphDestroy frees it
absl::Status GraphLaunch(void* graph_exec, void* stream);
void GraphDestroy(void* graph_exec);
// The first pending asynchronous error, if any (clears sticky-free errors).
absl::Status LastError(const char* what);

absl::StatusOr<void*> EventCreate();
void EventDestroy(void* event);
absl::Status EventRecord(void* event, void* stream);
absl::StatusOr<float> EventElapsedMs(void* start, void* stop);  // syncs on stop
// Work enqueued on `stream` after this call waits (on the device) for `event`.
absl::Status StreamWaitEvent(void* stream, void* event);

// Owning buffer that only grows (move-only): Reserve reallocates, losing the contents, when
// `bytes` exceeds the current size (at least kMinBytes). One template for device memory and
// pinned host memory (staging of small uploads and telemetry read-backs).
template <absl::StatusOr<void*> (*kAlloc)(size_t), void (*kRelease)(void*), size_t kMinBytes>
class GrowOnlyBuffer {
 public:
  GrowOnlyBuffer() = default;
  ~GrowOnlyBuffer() { kRelease(ptr_); }
  GrowOnlyBuffer(const GrowOnlyBuffer&) = delete;
  GrowOnlyBuffer& operator=(const GrowOnlyBuffer&) = delete;
  GrowOnlyBuffer(GrowOnlyBuffer&& o) noexcept
      : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  GrowOnlyBuffer& operator=(GrowOnlyBuffer&& o) noexcept {
    if (this != &o) {
      kRelease(ptr_);
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = std::exchange(o.bytes_, 0);
    }
    return *this;
  }
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_ && ptr_) return absl::OkStatus();
    kRelease(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    const size_t want = bytes < kMinBytes ? kMinBytes : bytes;
    absl::StatusOr<void*> p = kAlloc(want);
    if (!p.ok()) return p.status();
    ptr_ = *p;
    bytes_ = want;
    return absl::OkStatus();
  }
  void* get() const { return ptr_; }
  char* data() const { return static_cast<char*>(ptr_); }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

using DeviceBuffer = GrowOnlyBuffer<&Malloc, &Free, 1>;
using PinnedHostBuffer = GrowOnlyBuffer<&MallocHost, &FreeHost, 256>;

}  // namespace twl::gpu

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
// The first pending asynchronous error, if any (clears sticky-free errors).
absl::Status LastError(const char* what);

absl::StatusOr<void*> EventCreate();
void EventDestroy(void* event);
absl::Status EventRecord(void* event, void* stream);
absl::StatusOr<float> EventElapsedMs(void* start, void* stop);  // syncs on stop
// Work enqueued on `stream` after this call waits (on the device) for `event`.
absl::Status StreamWaitEvent(void* stream, void* event);

// Owning device buffer (move-only).
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  ~DeviceBuffer() { Free(ptr_); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(o.bytes_) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept {
    if (this != &o) {
      Free(ptr_);
      ptr_ = std::exchange(o.ptr_, nullptr);
      bytes_ = o.bytes_;
    }
    return *this;
  }
  // Reallocates (contents lost) when `bytes` exceeds the current size.
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_ && ptr_) return absl::OkStatus();
    Free(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    absl::StatusOr<void*> p = Malloc(bytes ? bytes : 1);
    if (!p.ok()) return p.status();
    ptr_ = *p;
    bytes_ = bytes;
    return absl::OkStatus();
  }
  void* get() const { return ptr_; }
  template <typename T>
  T* as() const {
    return static_cast<T*>(ptr_);
  }
  size_t bytes() const { return bytes_; }

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

// Owning pinned host buffer that only grows (move-only); Reserve loses the contents. Used to
// stage small uploads and telemetry read-backs asynchronously.
class PinnedHostBuffer {
 public:
  PinnedHostBuffer() = default;
  ~PinnedHostBuffer() { FreeHost(ptr_); }
  PinnedHostBuffer(const PinnedHostBuffer&) = delete;
  PinnedHostBuffer& operator=(const PinnedHostBuffer&) = delete;
  absl::Status Reserve(size_t bytes) {
    if (bytes <= bytes_ && ptr_) return absl::OkStatus();
    FreeHost(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
    const size_t want = bytes < 256 ? 256 : bytes;
    absl::StatusOr<void*> p = MallocHost(want);
    if (!p.ok()) return p.status();
    ptr_ = *p;
    bytes_ = want;
    return absl::OkStatus();
  }
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

}  // namespace twl::gpu

// CUDA-free device helpers (see device.h): thin wrappers over the CUDA runtime that turn
// error codes into absl::Status, or Unavailable stubs when built without CUDA.
#include "gpu/device.h"

#include "absl/strings/str_format.h"

#if TWL_HAVE_CUDA
#include <cuda_profiler_api.h>
#include <cuda_runtime_api.h>

#include <mutex>
#endif

namespace twl::gpu {

#if TWL_HAVE_CUDA
namespace {

absl::Status Check(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  cudaGetLastError();  // clear a non-sticky error so later calls do not report it again
  if (e == cudaErrorMemoryAllocation) {
    return absl::ResourceExhaustedError(absl::StrFormat("%s: %s", what, cudaGetErrorString(e)));
  }
  if (e == cudaErrorNoDevice || e == cudaErrorInsufficientDriver) {
    return absl::UnavailableError(absl::StrFormat("%s: %s", what, cudaGetErrorString(e)));
  }
  return absl::InternalError(absl::StrFormat("%s: %s", what, cudaGetErrorString(e)));
}

cudaStream_t S(void* s) { return static_cast<cudaStream_t>(s); }

}  // namespace

bool GpuAvailable() {
  static const bool available = [] {
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return n > 0;
  }();
  return available;
}

absl::StatusOr<DeviceInfo> CurrentDevice() {
  if (!GpuAvailable()) return absl::UnavailableError("no CUDA device visible");
  int dev = 0;
  if (absl::Status s = Check(cudaGetDevice(&dev), "cudaGetDevice"); !s.ok()) return s;
  static std::mutex mu;
  static int cached_dev = -1;
  static DeviceInfo cached;
  std::lock_guard<std::mutex> lock(mu);
  if (cached_dev == dev) return cached;
  cudaDeviceProp p;
  if (absl::Status s = Check(cudaGetDeviceProperties(&p, dev), "cudaGetDeviceProperties");
      !s.ok()) {
    return s;
  }
  DeviceInfo d;
  d.name = p.name;
  d.sm_count = p.multiProcessorCount;
  d.cc_major = p.major;
  d.cc_minor = p.minor;
  d.total_bytes = int64_t(p.totalGlobalMem);
  d.l2_bytes = p.l2CacheSize;
  d.max_smem_per_block = int64_t(p.sharedMemPerBlockOptin);
  cached = d;
  cached_dev = dev;
  return d;
}

int32_t SmCount() {
  absl::StatusOr<DeviceInfo> d = CurrentDevice();
  return d.ok() && d->sm_count > 0 ? d->sm_count : 132;
}

absl::StatusOr<void*> Malloc(size_t bytes) {
  void* p = nullptr;
  if (absl::Status s = Check(cudaMalloc(&p, bytes), "cudaMalloc"); !s.ok()) return s;
  return p;
}
void Free(void* p) {
  if (p) cudaFree(p);
}
absl::StatusOr<void*> MallocHost(size_t bytes) {
  void* p = nullptr;
  if (absl::Status s = Check(cudaMallocHost(&p, bytes), "cudaMallocHost"); !s.ok()) return s;
  return p;
}
void FreeHost(void* p) {
  if (p) cudaFreeHost(p);
}

static absl::Status Copy(void* dst, const void* src, size_t bytes, cudaMemcpyKind kind,
                         void* stream, const char* what) {
  if (bytes == 0) return absl::OkStatus();
  if (stream) return Check(cudaMemcpyAsync(dst, src, bytes, kind, S(stream)), what);
  return Check(cudaMemcpy(dst, src, bytes, kind), what);
}
absl::Status CopyToDevice(void* dst, const void* src, size_t bytes, void* stream) {
  return Copy(dst, src, bytes, cudaMemcpyHostToDevice, stream, "copy to device");
}
absl::Status CopyToHost(void* dst, const void* src, size_t bytes, void* stream) {
  return Copy(dst, src, bytes, cudaMemcpyDeviceToHost, stream, "copy to host");
}
absl::Status CopyOnDevice(void* dst, const void* src, size_t bytes, void* stream) {
  return Copy(dst, src, bytes, cudaMemcpyDeviceToDevice, stream, "copy on device");
}
absl::Status Memset(void* dst, int value, size_t bytes, void* stream) {
  if (bytes == 0) return absl::OkStatus();
  if (stream) return Check(cudaMemsetAsync(dst, value, bytes, S(stream)), "memset");
  return Check(cudaMemset(dst, value, bytes), "memset");
}

absl::StatusOr<void*> StreamCreate() {
  cudaStream_t s = nullptr;
  if (absl::Status st = Check(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking),
                              "cudaStreamCreate");
      !st.ok()) {
    return st;
  }
  return static_cast<void*>(s);
}
void StreamDestroy(void* stream) {
  if (stream) cudaStreamDestroy(S(stream));
}
absl::Status StreamSync(void* stream) {
  return Check(cudaStreamSynchronize(S(stream)), "cudaStreamSynchronize");
}
absl::Status DeviceSync() { return Check(cudaDeviceSynchronize(), "cudaDeviceSynchronize"); }
absl::Status StreamBeginCapture(void* stream) {
  return Check(cudaStreamBeginCapture(S(stream), cudaStreamCaptureModeThreadLocal),
               "cudaStreamBeginCapture");
}
absl::StatusOr<void*> StreamEndCapture(void* stream) {
  cudaGraph_t graph = nullptr;
  if (absl::Status s = Check(cudaStreamEndCapture(S(stream), &graph), "cudaStreamEndCapture");
      !s.ok()) {
    return s;
  }
  cudaGraphExec_t exec = nullptr;
  const absl::Status s = Check(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  cudaGraphDestroy(graph);
  if (!s.ok()) return s;
  return static_cast<void*>(exec);
}
absl::Status GraphLaunch(void* graph_exec, void* stream) {
  return Check(cudaGraphLaunch(static_cast<cudaGraphExec_t>(graph_exec), S(stream)),
               "cudaGraphLaunch");
}
void GraphDestroy(void* graph_exec) {
  if (graph_exec) cudaGraphExecDestroy(static_cast<cudaGraphExec_t>(graph_exec));
}
void ProfilerRange(bool start) {
  // Only a profiler listens; without one both calls are no-ops, so their results are ignored.
  (void)(start ? cudaProfilerStart() : cudaProfilerStop());
}
absl::Status LastError(const char* what) { return Check(cudaGetLastError(), what); }

absl::StatusOr<void*> EventCreate() {
  cudaEvent_t e = nullptr;
  if (absl::Status s = Check(cudaEventCreate(&e), "cudaEventCreate"); !s.ok()) return s;
  return static_cast<void*>(e);
}
void EventDestroy(void* event) {
  if (event) cudaEventDestroy(static_cast<cudaEvent_t>(event));
}
absl::Status EventRecord(void* event, void* stream) {
  return Check(cudaEventRecord(static_cast<cudaEvent_t>(event), S(stream)), "cudaEventRecord");
}
absl::Status StreamWaitEvent(void* stream, void* event) {
  return Check(cudaStreamWaitEvent(S(stream), static_cast<cudaEvent_t>(event), 0),
               "cudaStreamWaitEvent");
}
absl::StatusOr<float> EventElapsedMs(void* start, void* stop) {
  if (absl::Status s = Check(cudaEventSynchronize(static_cast<cudaEvent_t>(stop)),
                             "cudaEventSynchronize");
      !s.ok()) {
    return s;
  }
  float ms = 0;
  if (absl::Status s = Check(cudaEventElapsedTime(&ms, static_cast<cudaEvent_t>(start),
                                                  static_cast<cudaEvent_t>(stop)),
                             "cudaEventElapsedTime");
      !s.ok()) {
    return s;
  }
  return ms;
}

#else  // !TWL_HAVE_CUDA

namespace {
absl::Status NoCuda() { return absl::UnavailableError("built without CUDA"); }
}  // namespace

bool GpuAvailable() { return false; }
absl::StatusOr<DeviceInfo> CurrentDevice() { return NoCuda(); }
int32_t SmCount() { return 132; }
absl::StatusOr<void*> Malloc(size_t) { return NoCuda(); }
void Free(void*) {}
absl::StatusOr<void*> MallocHost(size_t) { return NoCuda(); }
void FreeHost(void*) {}
absl::Status CopyToDevice(void*, const void*, size_t, void*) { return NoCuda(); }
absl::Status CopyToHost(void*, const void*, size_t, void*) { return NoCuda(); }
absl::Status CopyOnDevice(void*, const void*, size_t, void*) { return NoCuda(); }
absl::Status Memset(void*, int, size_t, void*) { return NoCuda(); }
absl::StatusOr<void*> StreamCreate() { return NoCuda(); }
void StreamDestroy(void*) {}
absl::Status StreamSync(void*) { return NoCuda(); }
absl::Status DeviceSync() { return NoCuda(); }
void ProfilerRange(bool) {}
absl::Status StreamBeginCapture(void*) { return NoCuda(); }
absl::StatusOr<void*> StreamEndCapture(void*) { return NoCuda(); }
absl::Status GraphLaunch(void*, void*) { return NoCuda(); }
void GraphDestroy(void*) {}
absl::Status LastError(const char*) { return NoCuda(); }
absl::StatusOr<void*> EventCreate() { return NoCuda(); }
void EventDestroy(void*) {}
absl::Status EventRecord(void*, void*) { return NoCuda(); }
absl::StatusOr<float> EventElapsedMs(void*, void*) { return NoCuda(); }
absl::Status StreamWaitEvent(void*, void*) { return NoCuda(); }

#endif

}  // namespace twl::gpu

// Device-side q/out dtype conversion at the C API boundary (see dtype_convert_device.h).
#include "runtime/dtype_convert_device.h"

#include <algorithm>
#include <type_traits>

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "absl/strings/str_format.h"

namespace twl {
namespace {

// FP16, BF16 or FP32 element -> float, exactly.
template <typename T>
__device__ __forceinline__ float ToFloat(T x) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(x);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(x);
  else return x;
}

// float -> FP16, BF16 (round to nearest even) or FP32.
template <typename T>
__device__ __forceinline__ T FromFloat(float x) {
  if constexpr (std::is_same_v<T, __half>) return __float2half_rn(x);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16_rn(x);
  else return x;
}

template <typename From, typename To>
__global__ void ConvertKernel(const From* __restrict__ src, To* __restrict__ dst, int64_t n) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    dst[i] = FromFloat<To>(ToFloat<From>(src[i]));
  }
}

template <typename From, typename To>
absl::Status Launch(const void* src, void* dst, int64_t n, cudaStream_t stream) {
  constexpr int kThreads = 256;
  const int64_t blocks = std::min<int64_t>((n + kThreads - 1) / kThreads, 4096);
  ConvertKernel<From, To><<<unsigned(blocks), kThreads, 0, stream>>>(
      static_cast<const From*>(src), static_cast<To*>(dst), n);
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess) {
    return absl::UnavailableError(absl::StrFormat("dtype conversion kernel: %s",
                                                  cudaGetErrorString(e)));
  }
  return absl::OkStatus();
}

// Makes `device` current for the scope and restores the caller's device after: the C API must
// not change which device the calling thread (e.g. the serving engine's) has selected.
class DeviceScope {
 public:
  explicit DeviceScope(int32_t device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) {
      (void)cudaGetLastError();  // clear the error state: previous_ = -1 records the failure
      previous_ = -1;
    }
    const cudaError_t e = previous_ == device ? cudaSuccess : cudaSetDevice(device);
    if (e != cudaSuccess) {
      (void)cudaGetLastError();
      // Update, not assignment: nvcc warns (#2810-D) on assigning a [[nodiscard]] type.
      status_.Update(absl::UnavailableError(
          absl::StrFormat("cudaSetDevice(%d): %s", device, cudaGetErrorString(e))));
    }
  }
  ~DeviceScope() {
    int now = -1;
    if (previous_ >= 0 && cudaGetDevice(&now) == cudaSuccess && now != previous_) {
      (void)cudaSetDevice(previous_);  // best effort in a destructor
    }
  }
  const absl::Status& status() const { return status_; }

 private:
  int previous_ = -1;
  absl::Status status_;
};

}  // namespace

absl::Status DeviceConvert(int32_t device, const void* src, DType from, void* dst, DType to,
                           int64_t n, void* stream) {
  if (n <= 0) return absl::OkStatus();
  DeviceScope scope(device);
  if (!scope.status().ok()) return scope.status();
  cudaStream_t st = static_cast<cudaStream_t>(stream);
  if (to == DType::kFp16) {
    switch (from) {
      case DType::kBf16: return Launch<__nv_bfloat16, __half>(src, dst, n, st);
      case DType::kFp32: return Launch<float, __half>(src, dst, n, st);
      case DType::kFp16: return Launch<__half, __half>(src, dst, n, st);
    }
  } else if (from == DType::kFp16) {
    switch (to) {
      case DType::kBf16: return Launch<__half, __nv_bfloat16>(src, dst, n, st);
      case DType::kFp32: return Launch<__half, float>(src, dst, n, st);
      case DType::kFp16: break;
    }
  }
  return absl::InvalidArgumentError("DeviceConvert: one side must be FP16");
}

absl::StatusOr<void*> DeviceScratchAlloc(int32_t device, size_t bytes, void* stream) {
  DeviceScope scope(device);
  if (!scope.status().ok()) return scope.status();
  void* p = nullptr;
  const cudaError_t e = cudaMallocAsync(&p, bytes ? bytes : 1, static_cast<cudaStream_t>(stream));
  if (e != cudaSuccess) {
    cudaGetLastError();
    if (e == cudaErrorMemoryAllocation) {
      return absl::ResourceExhaustedError("device scratch for the dtype conversion");
    }
    return absl::UnavailableError(absl::StrFormat("cudaMallocAsync: %s", cudaGetErrorString(e)));
  }
  return p;
}

void DeviceScratchFree(int32_t device, void* p, void* stream) {
  if (p == nullptr) return;
  DeviceScope scope(device);
  if (cudaFreeAsync(p, static_cast<cudaStream_t>(stream)) != cudaSuccess) cudaGetLastError();
}

void* LegacyDefaultStream() { return static_cast<void*>(cudaStreamLegacy); }

}  // namespace twl

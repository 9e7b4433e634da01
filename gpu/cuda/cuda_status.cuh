// CUDA error plumbing for every .cu file of the library (stage kernels, offload transports,
// GPU backends): CUDA errors become absl::Status naming the call or kernel that failed, so no
// CUDA error escapes as an abort. One copy; included only by .cu/.cuh files.
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace twl::cuda_status {

inline cudaStream_t AsStream(void* s) { return static_cast<cudaStream_t>(s); }

inline absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrFormat("%s: %s", what, cudaGetErrorString(e)));
}

// The status of the kernel launch just enqueued (configuration errors surface here).
inline absl::Status LaunchStatus(const char* kernel) {
  const cudaError_t e = cudaGetLastError();
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrFormat("%s launch: %s", kernel, cudaGetErrorString(e)));
}

}  // namespace twl::cuda_status

// Returns the Status of a failed CUDA runtime call from the enclosing function.
#define TWL_CUDA(call)                                                                  \
  do {                                                                                  \
    if (absl::Status _st = ::twl::cuda_status::CudaStatus((call), #call); !_st.ok()) { \
      return _st;                                                                       \
    }                                                                                   \
  } while (0)

// Returns a failed absl::Status from the enclosing function.
#define TWL_RETURN_IF_ERROR(expr)              \
  do {                                         \
    if (absl::Status _s = (expr); !_s.ok()) {  \
      return _s;                               \
    }                                          \
  } while (0)

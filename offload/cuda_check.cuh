// Error plumbing for the offload .cu files: CUDA errors become absl::Status with the call
// that failed, so no CUDA error escapes as an abort. Included only by offload/ and
// runtime/ .cu files.
#pragma once

#include <cuda_runtime.h>

#include "absl/status/status.h"
#include "absl/strings/str_format.h"

namespace twl::offload_cuda {

inline cudaStream_t AsStream(void* s) { return static_cast<cudaStream_t>(s); }

inline absl::Status CudaStatus(cudaError_t e, const char* what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrFormat("%s: %s", what, cudaGetErrorString(e)));
}

// The status of the kernel launch just enqueued.
inline absl::Status LaunchStatus(const char* kernel) {
  return CudaStatus(cudaGetLastError(), kernel);
}

}  // namespace twl::offload_cuda

#define TWL_OFF_CUDA(call) \
  do { \
    if (absl::Status _st = ::twl::offload_cuda::CudaStatus((call), #call); !_st.ok()) return _st; \
  } while (0)

#define TWL_OFF_RETURN(expr) \
  do { \
    if (absl::Status _st = (expr); !_st.ok()) return _st; \
  } while (0)

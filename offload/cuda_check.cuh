// The offload .cu files' names for the library's CUDA error plumbing (gpu/cuda/cuda_status.cuh).
#pragma once

#include "gpu/cuda/cuda_status.cuh"

namespace twl::offload_cuda {
using ::twl::cuda_status::AsStream;
using ::twl::cuda_status::CudaStatus;
using ::twl::cuda_status::LaunchStatus;
}  // namespace twl::offload_cuda

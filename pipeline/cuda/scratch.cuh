// Step scratch of the CUDA executor: device buffers that only grow to the largest step seen.
// Growing frees memory that queued work (on any stream) may still read, so it waits for the
// whole device first; steady-state steps never grow and so never wait.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstddef>

#include "absl/status/status.h"
#include "gpu/cuda/cuda_status.cuh"
#include "gpu/device.h"

namespace twl::pipeline_cuda {

// `min_bytes`: the least allocation (the offload store rounds tiny buffers up to 256 bytes so
// a zero-sized step still gets a valid pointer; the HBM store allocates exactly).
inline absl::Status GrowScratch(gpu::DeviceBuffer& b, size_t bytes, size_t min_bytes = 0) {
  if (bytes <= b.bytes() && b.get()) return absl::OkStatus();
  if (b.get()) TWL_CUDA(cudaDeviceSynchronize());
  return b.Reserve(std::max(bytes, min_bytes));
}

}  // namespace twl::pipeline_cuda

// Per-kernel launch attributes that cost host time to set or query on every step: the
// dynamic shared memory limit and the resident blocks per SM, asked of the driver once per
// (kernel, device, value) and remembered: a cudaFuncSetAttribute and an occupancy query per
// launch were a quarter to a third of an eager B = 1 step's host issue (bench/RESULTS.md,
// twenty-second session, device run 1). Thread-safe.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>

namespace twl::cuda {

// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes) on the
// current device, once; later calls return the first call's result.
cudaError_t SetMaxDynamicSmemOnce(const void* kernel, int bytes);

// cudaOccupancyMaxActiveBlocksPerMultiprocessor on the current device, remembered.
cudaError_t MaxActiveBlocksPerSm(int* blocks, const void* kernel, int threads, size_t smem);

}  // namespace twl::cuda

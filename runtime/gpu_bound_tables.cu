// Table writes of bound batches (see gpu_bound_tables.cuh).
#include "runtime/gpu_bound_tables.cuh"

#include <algorithm>

#include "gpu/cuda/cuda_status.cuh"

namespace twl {
namespace {

// Kernel parameters are limited to 4 KiB: 480 writes of 8 bytes plus the header fit.
constexpr int32_t kWritesPerLaunch = 480;

struct WriteChunk {
  int32_t* base;
  int32_t count;
  int32_t index[kWritesPerLaunch];
  int32_t value[kWritesPerLaunch];
};

__global__ void TableWritesKernel(const WriteChunk chunk) {
  for (int32_t i = threadIdx.x; i < chunk.count; i += blockDim.x) {
    chunk.base[chunk.index[i]] = chunk.value[i];
  }
}

}  // namespace

absl::Status LaunchTableWrites(int32_t* base, absl::Span<const TableWrite> writes,
                               cudaStream_t stream) {
  for (size_t at = 0; at < writes.size(); at += kWritesPerLaunch) {
    WriteChunk chunk;
    chunk.base = base;
    chunk.count = int32_t(std::min<size_t>(kWritesPerLaunch, writes.size() - at));
    for (int32_t i = 0; i < chunk.count; ++i) {
      chunk.index[i] = writes[at + size_t(i)].index;
      chunk.value[i] = writes[at + size_t(i)].value;
    }
    TableWritesKernel<<<1, 256, 0, stream>>>(chunk);
    TWL_CUDA(cudaGetLastError());
  }
  return absl::OkStatus();
}

}  // namespace twl

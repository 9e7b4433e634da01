// Synthetic K/V/query generators for the benchmarks (see gpu/synth.h); the element formulas
// live in gpu/synth_math.h, shared with the host generator.
#include "gpu/cuda/common.cuh"
#include "gpu/synth.h"
#include "gpu/synth_math.h"

namespace twl {
namespace cuda {
namespace {

__global__ void SynthKvKernel(SynthSpec sp, int32_t seq, int32_t pos0, int32_t n, int32_t len,
                              fp16_t* k, fp16_t* v) {
  const int64_t total = int64_t(n) * sp.num_kv_heads * sp.head_dim;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int c = int(i % sp.head_dim);
    const int32_t h = int32_t((i / sp.head_dim) % sp.num_kv_heads);
    const int32_t t = pos0 + int32_t(i / (int64_t(sp.head_dim) * sp.num_kv_heads));
    synth::KvElement(sp, seq, t, len, h, c, k + i, v + i);
  }
}

// seq_ids null: row s is sequence s.
__global__ void SynthQueryKernel(SynthSpec sp, const int32_t* seq_ids, int32_t num_seqs,
                                 int32_t num_q_heads, int32_t region, fp16_t* q) {
  const int64_t total = int64_t(num_seqs) * num_q_heads * sp.head_dim;
  const int32_t group = num_q_heads / sp.num_kv_heads;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int c = int(i % sp.head_dim);
    const int32_t qh = int32_t((i / sp.head_dim) % num_q_heads);
    const int32_t s = int32_t(i / (int64_t(sp.head_dim) * num_q_heads));
    q[i] = synth::QueryElement(sp, seq_ids ? seq_ids[s] : s, qh, group, c, region);
  }
}

__global__ void BusyWaitKernel(uint64_t ns) {
  extern __shared__ uint32_t busy_smem[];
  uint64_t t0 = 0, t = 0;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
  do {
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  } while (t - t0 < ns);
  if (threadIdx.x == 0 && t == 0) busy_smem[0] = 1;  // never true: keeps the smem request
}

}  // namespace
}  // namespace cuda

absl::Status LaunchBusyWait(double microseconds, int32_t blocks, int32_t threads,
                            int32_t smem_bytes, void* stream) {
  if (!(microseconds >= 0) || blocks < 1 || threads < 1 || threads > 1024 || smem_bytes < 0) {
    return absl::InvalidArgumentError("busy wait: bad arguments");
  }
  if (smem_bytes > 48 * 1024) {
    const cudaError_t e = cudaFuncSetAttribute(
        cuda::BusyWaitKernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem_bytes);
    if (e != cudaSuccess) {
      return absl::InvalidArgumentError(
          absl::StrFormat("busy wait: %d bytes of shared memory: %s", smem_bytes,
                          cudaGetErrorString(e)));
    }
  }
  cuda::BusyWaitKernel<<<unsigned(blocks), unsigned(threads), size_t(smem_bytes),
                         cuda::AsStream(stream)>>>(uint64_t(microseconds * 1000.0));
  return cuda::LaunchStatus("BusyWaitKernel");
}

absl::Status LaunchSynthKv(const SynthSpec& spec, int32_t seq, int32_t pos0, int32_t n,
                           int32_t len, fp16_t* k, fp16_t* v, void* stream) {
  if (n <= 0) return absl::OkStatus();
  if (!k || !v || spec.num_kv_heads < 1 || spec.head_dim < 1 || spec.heavy_every < 1) {
    return absl::InvalidArgumentError("synth: bad arguments");
  }
  cuda::SynthKvKernel<<<1024, 256, 0, cuda::AsStream(stream)>>>(spec, seq, pos0, n, len, k, v);
  return cuda::LaunchStatus("SynthKvKernel");
}

absl::Status LaunchSynthQueriesFor(const SynthSpec& spec, const int32_t* seq_ids,
                                   int32_t num_seqs, int32_t num_q_heads, int32_t region,
                                   fp16_t* q, void* stream) {
  if (!q || num_seqs < 1 || spec.num_kv_heads < 1 || num_q_heads % spec.num_kv_heads != 0) {
    return absl::InvalidArgumentError("synth: bad query arguments");
  }
  cuda::SynthQueryKernel<<<256, 256, 0, cuda::AsStream(stream)>>>(spec, seq_ids, num_seqs,
                                                                   num_q_heads, region, q);
  return cuda::LaunchStatus("SynthQueryKernel");
}

absl::Status LaunchSynthQueries(const SynthSpec& spec, int32_t num_seqs, int32_t num_q_heads,
                                fp16_t* q, void* stream) {
  return LaunchSynthQueriesFor(spec, nullptr, num_seqs, num_q_heads, 0, q, stream);
}

}  // namespace twl

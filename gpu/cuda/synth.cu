// Synthetic K/V/query generators for the benchmarks (see gpu/synth.h): counter-based hashes
// so every element is a pure function of (seed, sequence, position, head, channel).
#include "gpu/cuda/common.cuh"
#include "gpu/synth.h"

namespace twl {
namespace cuda {
namespace {

__device__ __forceinline__ uint64_t Mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

__device__ __forceinline__ uint64_t Hash(uint64_t seed, uint64_t a, uint64_t b, uint64_t c) {
  return Mix(seed ^ Mix(a * 0x9e3779b97f4a7c15ull ^ Mix(b + 0x632be59bd9b4e019ull) ^
                        Mix(c * 0xd6e8feb86659fd93ull)));
}

// Standard normal from one 64-bit hash (Box-Muller on its two halves).
__device__ __forceinline__ float Normal(uint64_t h) {
  const float u1 = (float(uint32_t(h >> 40)) + 0.5f) * (1.0f / 16777216.0f);
  const float u2 = float(uint32_t(h) & 0xffffffu) * (1.0f / 16777216.0f);
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

__device__ __forceinline__ float Direction(const SynthSpec& sp, int32_t seq, int32_t h, int c) {
  return Normal(Hash(sp.seed ^ 0x5555, uint64_t(seq), uint64_t(h), uint64_t(c)));
}

__global__ void SynthKvKernel(SynthSpec sp, int32_t seq, int32_t pos0, int32_t n, int32_t len,
                              fp16_t* k, fp16_t* v) {
  const int64_t total = int64_t(n) * sp.num_kv_heads * sp.head_dim;
  const float heavy_gain = sp.gamma / sqrtf(float(sp.head_dim));
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int c = int(i % sp.head_dim);
    const int32_t h = int32_t((i / sp.head_dim) % sp.num_kv_heads);
    const int32_t t = pos0 + int32_t(i / (int64_t(sp.head_dim) * sp.num_kv_heads));
    const uint64_t tok = (uint64_t(seq) << 32) | uint32_t(t);
    const bool heavy = t >= len - sp.local_window ||
                       Hash(sp.seed ^ 0x7777, tok, uint64_t(h), 0) % uint64_t(sp.heavy_every) == 0;
    float kv = Normal(Hash(sp.seed ^ 0x1111, tok, uint64_t(h), uint64_t(c)));
    if (heavy) kv += heavy_gain * Direction(sp, seq, h, c);
    k[i] = F2H(kv);
    v[i] = F2H(Normal(Hash(sp.seed ^ 0x2222, tok, uint64_t(h), uint64_t(c))));
  }
}

__global__ void SynthQueryKernel(SynthSpec sp, int32_t num_seqs, int32_t num_q_heads, fp16_t* q) {
  const int64_t total = int64_t(num_seqs) * num_q_heads * sp.head_dim;
  const int32_t group = num_q_heads / sp.num_kv_heads;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int c = int(i % sp.head_dim);
    const int32_t qh = int32_t((i / sp.head_dim) % num_q_heads);
    const int32_t s = int32_t(i / (int64_t(sp.head_dim) * num_q_heads));
    const int32_t h = qh / group;
    const float beta = (sp.flat_mask >> (h & 31)) & 1u ? sp.beta_flat : sp.beta_peaked;
    q[i] = F2H(beta * Direction(sp, s, h, c) +
               0.1f * Normal(Hash(sp.seed ^ 0x3333, uint64_t(s), uint64_t(qh), uint64_t(c))));
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

absl::Status LaunchSynthQueries(const SynthSpec& spec, int32_t num_seqs, int32_t num_q_heads,
                                fp16_t* q, void* stream) {
  if (!q || num_seqs < 1 || num_q_heads % spec.num_kv_heads != 0) {
    return absl::InvalidArgumentError("synth: bad query arguments");
  }
  cuda::SynthQueryKernel<<<256, 256, 0, cuda::AsStream(stream)>>>(spec, num_seqs, num_q_heads, q);
  return cuda::LaunchStatus("SynthQueryKernel");
}

}  // namespace twl

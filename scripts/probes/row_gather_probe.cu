// Row gather probe: how fast can an H100/H200 read the attention's kept rows from HBM when
// nothing else limits it? A diagnostic for the sparse attention (AttendChunkKernel ran at
// ~1.8 TB/s on both GPUs, bench/RESULTS.md), not part of the library.
//
// Rows are drawn like a serving step's kept lists: per (sequence, KV head) pair `kept`
// ascending positions out of `ctx`, uniformly, in a pool laid out as the HBM store lays it
// out (a 16-row block per (page, KV head): K rows then V rows, 8 KiB at d = 128). Modes:
//   split   a warp reads one row's K (lanes 0-15) and V (lanes 16-31, 4 KiB further), 4 rows
//           in flight per warp, every warp the SM holds: the pattern's ceiling
//   slot    the same rows as contiguous 512 B slots (K then V), as the row cache stores them
//   stream  the same bytes read sequentially: the DRAM ceiling
//   attnpipe split rows copied by cp.async into shared memory with the attention's shape
//           (2 blocks of 256 threads per SM, 3 stages of 64 rows, addresses read from a list):
//           the attention's memory pipeline without its compute and address chain
// Build: nvcc -O3 -arch=sm_90 -o row_gather_probe row_gather_probe.cu
// Run:   row_gather_probe [pairs=64] [kept=6675] [ctx=131072] [reps=20]
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#define CK(x)                                                                  \
  do {                                                                         \
    cudaError_t e_ = (x);                                                      \
    if (e_ != cudaSuccess) {                                                   \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e_));            \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

namespace {

constexpr int kD = 128, kPage = 16, kHeads = 8;
constexpr size_t kRowBytes = kD * 2;                   // one K or V row, FP16
constexpr size_t kBlockBytes = 2 * kPage * kRowBytes;  // K rows, then V rows

// One row's K and V: lanes 0-15 copy K, 16-31 V, 16 B each. U rows per warp in flight.
template <int U>
__global__ void SplitGather(const char* __restrict__ pool, const int64_t* __restrict__ k_off,
                            int64_t rows, int64_t v_delta, uint4* __restrict__ sink) {
  const int lane = threadIdx.x & 31;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) >> 5;
  const int64_t warps = (int64_t(gridDim.x) * blockDim.x) >> 5;
  uint4 acc = make_uint4(0, 0, 0, 0);
  for (int64_t r0 = warp * U; r0 < rows; r0 += warps * U) {
    uint4 v[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int64_t r = r0 + u;
      if (r < rows) {
        const int64_t off = k_off[r] + (lane >= 16 ? v_delta : 0) + (lane & 15) * 16;
        v[u] = __ldcs(reinterpret_cast<const uint4*>(pool + off));
      } else {
        v[u] = make_uint4(0, 0, 0, 0);
      }
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      acc.x ^= v[u].x; acc.y ^= v[u].y; acc.z ^= v[u].z; acc.w ^= v[u].w;
    }
  }
  sink[int64_t(blockIdx.x) * blockDim.x + threadIdx.x] = acc;
}

__global__ void Stream(const uint4* __restrict__ src, int64_t n16, uint4* __restrict__ sink) {
  uint4 acc = make_uint4(0, 0, 0, 0);
  const int64_t stride = int64_t(gridDim.x) * blockDim.x;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n16; i += 4 * stride) {
    uint4 v[4];
#pragma unroll
    for (int u = 0; u < 4; ++u) v[u] = i + u * stride < n16 ? __ldcs(src + i + u * stride) : make_uint4(0, 0, 0, 0);
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      acc.x ^= v[u].x; acc.y ^= v[u].y; acc.z ^= v[u].z; acc.w ^= v[u].w;
    }
  }
  sink[int64_t(blockIdx.x) * blockDim.x + threadIdx.x] = acc;
}

__device__ __forceinline__ void CpAsync16(void* smem, const void* gmem) {
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(dst), "l"(gmem));
}
__device__ __forceinline__ void CpCommit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpWait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// The attention's memory pipeline: each block takes an equal range of rows, 3 stages of 64
// rows (K and V: 32 KiB a stage), 2 stages in flight while the third is "computed" (one
// read of a word per thread, so the data is consumed).
__global__ void __launch_bounds__(256, 2)
    AttnPipe(const char* __restrict__ pool, const int64_t* __restrict__ k_off, int64_t rows,
             int64_t v_delta, uint4* __restrict__ sink) {
  constexpr int S = 3, T = 64;
  extern __shared__ __align__(16) unsigned char smem[];
  char* buf = reinterpret_cast<char*>(smem);  // [S][T][512]
  const int64_t lo = rows * blockIdx.x / gridDim.x, hi = rows * (blockIdx.x + 1) / gridDim.x;
  const int nst = int((hi - lo + T - 1) / T);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  auto issue = [&](int st) {
    // warp w copies rows [8w, 8w + 8) of the stage: 2 rows per instruction (16 lanes a row).
#pragma unroll
    for (int u = 0; u < 4; ++u) {
      const int t = warp * 8 + u * 2 + (lane >> 4);
      const int64_t r = lo + int64_t(st) * T + t;
      if (r < hi) {
        const int64_t off = k_off[r] + (lane & 15) * 16;
        char* dst = buf + (size_t(st % S) * T + t) * 512 + (lane & 15) * 16;
        CpAsync16(dst, pool + off);
        CpAsync16(dst + 256, pool + off + v_delta);
      }
    }
  };
  for (int st = 0; st < S - 1; ++st) {
    if (st < nst) issue(st);
    CpCommit();
  }
  uint32_t acc = 0;
  for (int st = 0; st < nst; ++st) {
    CpWait<S - 2>();
    __syncthreads();
    if (st + S - 1 < nst) issue(st + S - 1);
    CpCommit();
    const uint32_t* b = reinterpret_cast<const uint32_t*>(buf + size_t(st % S) * T * 512);
    for (int i = threadIdx.x; i < T * 128; i += 256) acc ^= b[i];
  }
  CpWait<0>();
  sink[int64_t(blockIdx.x) * blockDim.x + threadIdx.x] = make_uint4(acc, 0, 0, 0);
}

template <typename F>
float TimeMs(int reps, F launch) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  launch();  // warm-up
  CK(cudaDeviceSynchronize());
  CK(cudaEventRecord(a));
  for (int i = 0; i < reps; ++i) launch();
  CK(cudaEventRecord(b));
  CK(cudaEventSynchronize(b));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  CK(cudaGetLastError());
  return ms / reps;
}

}  // namespace

int main(int argc, char** argv) {
  const int pairs = argc > 1 ? std::atoi(argv[1]) : 64;
  const int kept = argc > 2 ? std::atoi(argv[2]) : 6675;
  const int ctx = argc > 3 ? std::atoi(argv[3]) : 131072;
  const int reps = argc > 4 ? std::atoi(argv[4]) : 20;
  if (pairs < 1 || kept < 1 || ctx < kept || reps < 1 || pairs % kHeads) {
    std::fprintf(stderr, "usage: %s [pairs (multiple of 8)] [kept <= ctx] [ctx] [reps]\n", argv[0]);
    return 2;
  }
  const int seqs = pairs / kHeads, pages = ctx / kPage;
  const size_t pool_bytes = size_t(seqs) * pages * kHeads * kBlockBytes;
  const int64_t rows = int64_t(pairs) * kept;
  cudaDeviceProp prop;
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s, %d SMs; pool %.2f GB, %d pairs x %d kept rows of %d (%.1f MB of K+V)\n",
              prop.name, prop.multiProcessorCount, pool_bytes / 1e9, pairs, kept, ctx,
              rows * 512.0 / 1e6);
  // Kept positions per pair, ascending (the kept lists' order); block (page, head) of
  // sequence s at (s * pages + page) * kHeads + head, as the HBM store's pages are numbered.
  std::mt19937_64 rng(1234);
  std::vector<int64_t> split_off(static_cast<size_t>(rows)), slot_off(static_cast<size_t>(rows));
  std::vector<int32_t> pos(static_cast<size_t>(ctx));
  for (int i = 0; i < ctx; ++i) pos[size_t(i)] = i;
  const int64_t slots = rows * 4;  // a row cache 4x the rows, slots drawn at random
  for (int pr = 0; pr < pairs; ++pr) {
    const int s = pr / kHeads, h = pr % kHeads;
    for (int i = 0; i < kept; ++i) std::swap(pos[size_t(i)], pos[size_t(i) + rng() % size_t(ctx - i)]);
    std::vector<int32_t> sel(pos.begin(), pos.begin() + kept);
    std::sort(sel.begin(), sel.end());
    for (int i = 0; i < kept; ++i) {
      const int64_t block = (int64_t(s) * pages + sel[size_t(i)] / kPage) * kHeads + h;
      split_off[size_t(pr) * kept + i] = block * int64_t(kBlockBytes) + (sel[size_t(i)] % kPage) * int64_t(kRowBytes);
      slot_off[size_t(pr) * kept + i] = int64_t(rng() % uint64_t(slots)) * 512 % int64_t(pool_bytes);
    }
  }
  char* pool;
  int64_t *d_split, *d_slot;
  uint4* sink;
  CK(cudaMalloc(&pool, pool_bytes));
  CK(cudaMemset(pool, 1, pool_bytes));
  CK(cudaMalloc(&d_split, rows * sizeof(int64_t)));
  CK(cudaMalloc(&d_slot, rows * sizeof(int64_t)));
  CK(cudaMalloc(&sink, size_t(prop.multiProcessorCount) * 2048 * sizeof(uint4)));
  CK(cudaMemcpy(d_split, split_off.data(), rows * sizeof(int64_t), cudaMemcpyHostToDevice));
  CK(cudaMemcpy(d_slot, slot_off.data(), rows * sizeof(int64_t), cudaMemcpyHostToDevice));
  const double mb = rows * 512.0 / 1e6;
  const int sms = prop.multiProcessorCount;
  const int64_t v_delta = kPage * int64_t(kRowBytes);
  auto report = [&](const char* name, float ms) {
    std::printf("%-34s %8.1f us  %7.2f TB/s\n", name, ms * 1e3, mb / 1e6 / (ms / 1e3));
  };
  report("split (K, V 4 KiB apart), U=4", TimeMs(reps, [&] {
           SplitGather<4><<<sms * 8, 256>>>(pool, d_split, rows, v_delta, sink);
         }));
  report("split, U=8", TimeMs(reps, [&] {
           SplitGather<8><<<sms * 8, 256>>>(pool, d_split, rows, v_delta, sink);
         }));
  report("slot (512 B contiguous), U=4", TimeMs(reps, [&] {
           SplitGather<4><<<sms * 8, 256>>>(pool, d_slot, rows, 256, sink);
         }));
  report("stream (same bytes)", TimeMs(reps, [&] {
           Stream<<<sms * 8, 256>>>(reinterpret_cast<const uint4*>(pool), int64_t(mb * 1e6 / 16), sink);
         }));
  const int smem = 3 * 64 * 512;
  CK(cudaFuncSetAttribute(AttnPipe, cudaFuncAttributeMaxDynamicSharedMemorySize, smem));
  report("attnpipe (2 blk/SM, 3x64 rows)", TimeMs(reps, [&] {
           AttnPipe<<<sms * 2, 256, smem>>>(pool, d_split, rows, v_delta, sink);
         }));
  report("attnpipe, slots", TimeMs(reps, [&] {
           AttnPipe<<<sms * 2, 256, smem>>>(pool, d_slot, rows, 256, sink);
         }));
  CK(cudaFree(pool));
  return 0;
}

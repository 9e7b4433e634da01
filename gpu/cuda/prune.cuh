// Twilight pruner kernels, three launches per decode step (+ a memset of the union bits):
//  1. ScoreInt4Kernel: estimated scores q.k~ of every candidate slot (selected page x row)
//     for all query heads of the GQA group at once: a tensor-core SpGEMV where A = INT4 codes
//     of 16 tokens (two 16-byte loads per thread, nibbles turned into FP16 in registers with
//     the 0x6400 exponent trick, exact for 0..15, see NibbleWordToHalf2x4), B = the group's queries (n = 8 heads),
//     FP32 accumulation; scale/zero applied once per token: s = scale*(q.c) + zero*sum(q).
//     The k-order of the MMA is permuted so that each thread's fragment is exactly the
//     nibbles it loaded (a dot product does not care about the order of its terms).
//     Each block owns a contiguous run of tiles of one (sequence, KV head): it resolves the
//     physical pages of the run once into shared memory, then every warp streams groups of
//     kTilesPerWarp tiles through a per-thread cp.async landing buffer two groups deep.
//     The per-head score maximum is folded in with one atomicMax per warp and head
//     (order-preserving integer keys).
//     ScoreScalarKernel is the fallback for k_bits 2/8 and for FP16 K (k_bits 16).
//  2. TopPKernel, one block per (sequence, query head): softmax weights exp(s - max) and
//     the bisection of TopPThresholdRef, each iteration one block-wide reduction of (mass
//     above mid, nearest weights either side of mid, count strictly between the bounds).
//     The first iteration (low = 0, high = max weight = exp(0) = 1) rides on the pass that
//     computes the weights; weights that can no longer change the answer (<= low or >= high)
//     are compacted away into shared memory, and once few remain a single warp finishes the
//     search without block barriers. Union bits per KV head are set with one atomicOr per 32
//     slots (weights recomputed from the scores, bit-identical to the first pass).
//  3. CompactKeptKernel, one block per (sequence, KV head): union bits -> ascending tokens.
#pragma once

#include "gpu/cuda/common.cuh"

namespace twl::cuda {

constexpr int kScoreWarps = 8;
constexpr int kTilesPerWarp = 4;       // 16-token MMA tiles per warp group
constexpr int kScoreMaxPages = 1024;   // pages of a block's tile run resolved in smem
constexpr int kTopPThreads = 512;
constexpr int kTopPSmemValues = 24576;  // active weights kept in shared memory (96 KB)
constexpr int kTopPWarpValues = 2048;   // below this, one warp finishes the bisection
constexpr int kCompactThreads = 512;

struct PruneShape {
  int32_t group = 1;
  int32_t cand_stride = 0;  // max_select * page_size: candidate slots per (seq, KV head)
  int32_t bit_words = 0;    // ceil(cand_stride / 32)
  float scale = 0.0f;       // softmax scale
  // Growing Quest (see prune_grow.cuh), null otherwise: per query head the share of the
  // candidates' mass to keep, A / (A + R), and per (sequence, KV head) the candidate pages.
  const float* head_p = nullptr;
  const float* head_ratio = nullptr;
  const uint8_t* in_set = nullptr;
  // Growing, second stage: only the (sequence, KV head) pairs flagged here are scored.
  const int32_t* only = nullptr;
};

// Order-preserving float <-> uint32 keys (0 is below every float; atomicMax on keys).
__device__ __forceinline__ uint32_t FloatKey(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
__device__ __forceinline__ float KeyFloat(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}

// Candidate slot i of a (sequence, KV head): selected page i / page_size, row i % page_size.
// Returns the block id, or -1 when the row lies past the end of the sequence.
__device__ __forceinline__ int64_t SlotBlock(const PageGeometry& g, const BatchView& batch,
                                            const SelectionView& sel, int32_t pair, int32_t s,
                                            int32_t h, int32_t slot, int32_t* pos) {
  const int32_t page_idx = sel.pages[int64_t(pair) * sel.max_select + slot / g.page_size];
  const int32_t row = slot % g.page_size;
  *pos = page_idx * g.page_size + row;
  if (*pos >= batch.seq_len[s]) return -1;
  return g.BlockId(batch.PageId(s, page_idx), h);
}

// The 8 nibbles of a code word as four FP16 pairs (e0,e4), (e1,e5), (e2,e6), (e3,e7): low
// nibbles by the 0x6400 trick (1024 + n, minus 1024), high nibbles in place as 1024 + 16 n
// and scaled back with one FMA (n = x / 16 - 64); every step is exact in FP16.
__device__ __forceinline__ void NibbleWordToHalf2x4(uint32_t w, uint32_t* out) {
  const __half2 k1024 = __halves2half2(__ushort_as_half(0x6400), __ushort_as_half(0x6400));
  const __half2 k1_16 = __halves2half2(__ushort_as_half(0x2C00), __ushort_as_half(0x2C00));
  const __half2 km64 = __halves2half2(__ushort_as_half(0xD400), __ushort_as_half(0xD400));
  const uint32_t w8 = w >> 8;
  uint32_t lo0 = (w & 0x000F000Fu) | 0x64006400u, hi0 = (w & 0x00F000F0u) | 0x64006400u;
  uint32_t lo1 = (w8 & 0x000F000Fu) | 0x64006400u, hi1 = (w8 & 0x00F000F0u) | 0x64006400u;
  const __half2 a = __hsub2(*reinterpret_cast<__half2*>(&lo0), k1024);
  const __half2 b = __hfma2(*reinterpret_cast<__half2*>(&hi0), k1_16, km64);
  const __half2 c = __hsub2(*reinterpret_cast<__half2*>(&lo1), k1024);
  const __half2 d = __hfma2(*reinterpret_cast<__half2*>(&hi1), k1_16, km64);
  out[0] = *reinterpret_cast<const uint32_t*>(&a);
  out[1] = *reinterpret_cast<const uint32_t*>(&b);
  out[2] = *reinterpret_cast<const uint32_t*>(&c);
  out[3] = *reinterpret_cast<const uint32_t*>(&d);
}

__device__ __forceinline__ uint32_t PackHalves(fp16_t lo, fp16_t hi) {
  return uint32_t(lo) | (uint32_t(hi) << 16);
}

__device__ __forceinline__ void CpAsyncBytes16(void* smem, const void* gmem) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(
                   unsigned(__cvta_generic_to_shared(smem))),
               "l"(gmem));
}
__device__ __forceinline__ void CpAsyncBytes8(void* smem, const void* gmem) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8;\n" ::"r"(
                   unsigned(__cvta_generic_to_shared(smem))),
               "l"(gmem));
}
__device__ __forceinline__ void CpAsyncCommitGroup() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void CpAsyncWaitGroup() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

// Landing buffer of the score kernel: every thread stages its own code chunks (the bytes of
// its MMA fragments) with cp.async kScoreStages - 1 groups ahead, so loads stay in flight
// while the warp computes, without registers. Chunks are interleaved across threads (chunk
// slot k of thread t at [k][t]) so that a warp's 16-byte accesses hit distinct banks.
constexpr int kScoreStages = 3;
constexpr int kScoreSlots = kScoreStages * kTilesPerWarp * 2;  // chunks per thread
template <int kHeadDim>
constexpr size_t ScoreSmemBytes() {
  return size_t(kScoreSlots) * kScoreWarps * 32 * (kHeadDim / 8);
}

// Grid: x = blocks per (sequence, KV head), each owning tiles [x * tiles_per_block, ...);
// y = (sequence, KV head). scores: [num_seqs * num_q_heads][cand_stride], -inf for slots
// past the sequence end; head_max: [num_seqs * num_q_heads] FloatKey, zeroed before.
template <int kHeadDim>
__global__ void __launch_bounds__(kScoreWarps * 32, 2)
    ScoreInt4Kernel(PageGeometry g, BatchView batch, QueryView q, QuantKView qk,
                    SelectionView sel, PruneShape shape, int32_t tiles_per_block,
                    float* __restrict__ scores, uint32_t* __restrict__ head_max) {
  constexpr int kWords = kHeadDim / 32;  // 32-bit code words per thread per token
  constexpr int kChunk = kHeadDim / 8;   // code bytes per thread per token (16 or 8)
  constexpr int kChanPerThread = kHeadDim / 4;
  constexpr int kThreads = kScoreWarps * 32;
  using Chunk = typename std::conditional<kWords == 4, uint4, uint2>::type;
  extern __shared__ __align__(16) unsigned char score_smem[];
  Chunk* landing = reinterpret_cast<Chunk*>(score_smem);  // [kScoreSlots][kThreads]
  __shared__ int32_t run_page[kScoreMaxPages];  // physical page id of run page i
  __shared__ int32_t run_rows[kScoreMaxPages];  // rows of run page i inside the sequence
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int32_t pair = blockIdx.y;
  if (shape.only && !shape.only[pair]) return;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t slots = sel.count[pair] * g.page_size;
  const int32_t t_begin = blockIdx.x * tiles_per_block;
  const int32_t t_end = min((slots + 15) / 16, t_begin + tiles_per_block);
  if (t_begin >= t_end) return;
  // Pages of the run, resolved once: selected index -> page table -> physical page.
  const int32_t p_begin = t_begin * 16 / g.page_size;
  const int32_t p_end = min(sel.count[pair], (t_end * 16 + g.page_size - 1) / g.page_size);
  const int32_t len = batch.seq_len[s];
  for (int32_t i = threadIdx.x; i < p_end - p_begin; i += blockDim.x) {
    const int32_t page_idx = sel.pages[int64_t(pair) * sel.max_select + p_begin + i];
    run_page[i] = batch.PageId(s, page_idx);
    run_rows[i] = min(g.page_size, len - page_idx * g.page_size);
  }
  const int r = lane >> 2, t4 = lane & 3;

  // B fragments: query head n = r of the group (zero past the group), channels permuted to
  // match the nibble order of A (see NibbleWordToHalf2x4 and the MMA loop below).
  uint32_t bfrag[kWords][2][2];
  {
    const bool real = r < shape.group;
    const fp16_t* qh = q.q + (int64_t(s) * batch.num_q_heads + h * shape.group + (real ? r : 0)) *
                                 kHeadDim + t4 * kChanPerThread;
#pragma unroll
    for (int m = 0; m < kWords; ++m) {
      fp16_t e[8];
      *reinterpret_cast<uint4*>(e) = *reinterpret_cast<const uint4*>(qh + m * 8);
      if (!real) {
#pragma unroll
        for (int i = 0; i < 8; ++i) e[i] = 0;
      }
      bfrag[m][0][0] = PackHalves(e[0], e[4]);
      bfrag[m][0][1] = PackHalves(e[1], e[5]);
      bfrag[m][1][0] = PackHalves(e[2], e[6]);
      bfrag[m][1][1] = PackHalves(e[3], e[7]);
    }
  }
  // sum(q) for the two heads this thread's accumulators hold (2*t4, 2*t4+1).
  float qsum[2] = {0.0f, 0.0f};
  {
    const int32_t qbase = s * batch.num_q_heads + h * shape.group;
#pragma unroll
    for (int j = 0; j < kMaxGroup; ++j) {
      if (j < shape.group) {
        float part = 0.0f;
        for (int c = lane; c < kHeadDim; c += 32) part += H2F(q.q[int64_t(qbase + j) * kHeadDim + c]);
        part = WarpSum(part);
        if (j == 2 * t4) qsum[0] = part;
        if (j == 2 * t4 + 1) qsum[1] = part;
      }
    }
  }
  __syncthreads();  // run_page / run_rows ready

  // Row (t, half) of group `grp` of this warp: slot, block, row, validity.
  const bool page16 = g.page_size == 16;  // tile == page: no division
  auto row_of = [&](int32_t tile, int half, int64_t* block, int32_t* row) -> bool {
    const int32_t slot = tile * 16 + r + half * 8;
    const int32_t local = page16 ? tile - p_begin : slot / g.page_size - p_begin;
    *row = page16 ? r + half * 8 : slot % g.page_size;
    const bool valid = tile < t_end && slot < slots && *row < run_rows[min(local, p_end - p_begin - 1)];
    *block = valid ? g.BlockId(run_page[local], h) : 0;
    if (!valid) *row = 0;
    return valid;
  };
  const int32_t stride = kScoreWarps * kTilesPerWarp;  // tiles between a warp's groups
  const int32_t first_tile = t_begin + warp * kTilesPerWarp;
  const int32_t groups = first_tile < t_end ? (t_end - first_tile + stride - 1) / stride : 0;
  // Copies of group k into landing stage k % kScoreStages (rows past the end: row 0 of
  // block 0, never used).
  auto issue = [&](int32_t k) {
    if (k < groups) {
      const int stage = k % kScoreStages;
#pragma unroll
      for (int t = 0; t < kTilesPerWarp; ++t) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          int64_t block;
          int32_t row;
          row_of(first_tile + k * stride + t, half, &block, &row);
          const uint8_t* src = qk.Codes(g, block, row) + t4 * kChunk;
          Chunk* dst = &landing[((stage * kTilesPerWarp + t) * 2 + half) * kThreads + threadIdx.x];
          if constexpr (kChunk == 16) CpAsyncBytes16(dst, src);
          else CpAsyncBytes8(dst, src);
        }
      }
    }
    CpAsyncCommitGroup();
  };
#pragma unroll
  for (int k = 0; k < kScoreStages - 1; ++k) issue(k);

  float run_max[2] = {-INFINITY, -INFINITY};
  float* out_row[2];
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
    const int j = min(2 * t4 + kk, shape.group - 1);
    out_row[kk] = scores + (int64_t(s) * batch.num_q_heads + h * shape.group + j) * shape.cand_stride;
  }
  for (int32_t k = 0; k < groups; ++k) {
    CpAsyncWaitGroup<kScoreStages - 2>();  // this thread's copies of group k have landed
    issue(k + kScoreStages - 1);
    const int stage = k % kScoreStages;
    const int32_t tile0 = first_tile + k * stride;
    // Scale / zero of the group's rows (small loads; their latency overlaps the MMAs).
    float tscale[kTilesPerWarp][2], tzero[kTilesPerWarp][2];
    bool valid[kTilesPerWarp][2];
#pragma unroll
    for (int t = 0; t < kTilesPerWarp; ++t) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        int64_t block;
        int32_t row;
        valid[t][half] = row_of(tile0 + t, half, &block, &row);
        tscale[t][half] = H2F(qk.scale[block * g.page_size + row]);
        tzero[t][half] = H2F(qk.zero[block * g.page_size + row]);
      }
    }
#pragma unroll
    for (int t = 0; t < kTilesPerWarp; ++t) {
      if (tile0 + t >= t_end) break;
      const Chunk ca = landing[((stage * kTilesPerWarp + t) * 2 + 0) * kThreads + threadIdx.x];
      const Chunk cb = landing[((stage * kTilesPerWarp + t) * 2 + 1) * kThreads + threadIdx.x];
      const uint32_t* wa = reinterpret_cast<const uint32_t*>(&ca);
      const uint32_t* wb = reinterpret_cast<const uint32_t*>(&cb);
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
      for (int m = 0; m < kWords; ++m) {
        uint32_t xa[4], xb[4];
        NibbleWordToHalf2x4(wa[m], xa);
        NibbleWordToHalf2x4(wb[m], xb);
        Mma16816(acc, xa[0], xb[0], xa[1], xb[1], bfrag[m][0][0], bfrag[m][0][1]);
        Mma16816(acc, xa[2], xb[2], xa[3], xb[3], bfrag[m][1][0], bfrag[m][1][1]);
      }
      // acc[0], acc[1]: token r, heads 2t4, 2t4+1; acc[2], acc[3]: token r + 8.
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int32_t slot = (tile0 + t) * 16 + r + half * 8;
        if (slot >= slots) continue;
#pragma unroll
        for (int kk = 0; kk < 2; ++kk) {
          const int j = 2 * t4 + kk;
          if (j >= shape.group) continue;
          const float est = valid[t][half] ? shape.scale * (tscale[t][half] * acc[half * 2 + kk] +
                                                            tzero[t][half] * qsum[kk])
                                           : -INFINITY;
          run_max[kk] = fmaxf(run_max[kk], est);
          out_row[kk][slot] = est;
        }
      }
    }
  }
  CpAsyncWaitGroup<0>();
  // Per-head maximum: lanes with the same t4 hold the same heads.
#pragma unroll
  for (int kk = 0; kk < 2; ++kk) {
#pragma unroll
    for (int o = 4; o < 32; o <<= 1) {
      run_max[kk] = fmaxf(run_max[kk], __shfl_xor_sync(0xffffffffu, run_max[kk], o));
    }
    const int j = 2 * t4 + kk;
    if (r == 0 && j < shape.group && run_max[kk] > -INFINITY) {
      atomicMax(&head_max[s * batch.num_q_heads + h * shape.group + j], FloatKey(run_max[kk]));
    }
  }
}

// Scalar estimator (k_bits 2/8, or the FP16 K itself when k_bits == 16): one warp per slot.
__global__ void __launch_bounds__(kScoreWarps * 32)
    ScoreScalarKernel(PageGeometry g, BatchView batch, QueryView q, QuantKView qk, FpKvView kv,
                      SelectionView sel, PruneShape shape, float* __restrict__ scores,
                      uint32_t* __restrict__ head_max) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int32_t pair = blockIdx.y;
  if (shape.only && !shape.only[pair]) return;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t slot = blockIdx.x * kScoreWarps + warp;
  if (slot >= sel.count[pair] * g.page_size) return;
  int32_t pos;
  const int64_t block = SlotBlock(g, batch, sel, pair, s, h, slot, &pos);
  for (int j = 0; j < shape.group; ++j) {
    const int32_t qh = h * shape.group + j;
    float est = -INFINITY;
    if (block >= 0) {
      const fp16_t* qr = q.q + (int64_t(s) * batch.num_q_heads + qh) * g.head_dim;
      const int32_t row = slot % g.page_size;
      float dot = 0.0f, qsum = 0.0f;
      if (g.k_bits >= 16) {
        const fp16_t* k = kv.K(g, block, row);
        for (int c = lane; c < g.head_dim; c += 32) dot += H2F(qr[c]) * shape.scale * H2F(k[c]);
        est = WarpSum(dot);
      } else {
        const uint8_t* codes = qk.Codes(g, block, row);
        for (int c = lane; c < g.head_dim; c += 32) {
          const float qv = H2F(qr[c]) * shape.scale;
          dot += qv * float(UnpackCode(codes, c, g.k_bits));
          qsum += qv;
        }
        dot = WarpSum(dot);
        qsum = WarpSum(qsum);
        const int64_t at = block * g.page_size + row;
        est = H2F(qk.scale[at]) * dot + H2F(qk.zero[at]) * qsum;
      }
    }
    if (lane == 0) {
      scores[(int64_t(s) * batch.num_q_heads + qh) * shape.cand_stride + slot] = est;
      if (block >= 0) atomicMax(&head_max[s * batch.num_q_heads + qh], FloatKey(est));
    }
  }
}

// ---- top-p threshold -------------------------------------------------------------------

struct BisectPart {
  float mass;   // sum of x > mid
  float below;  // max x in (low, mid], -inf if none
  float above;  // min x in (mid, high), +inf if none
  int between;  // count of x in (low, high)
  float total;  // sum of x (first pass only)
};

__device__ __forceinline__ BisectPart EmptyPart() {
  return BisectPart{0.0f, -INFINITY, INFINITY, 0, 0.0f};
}

__device__ __forceinline__ void Accumulate(BisectPart& a, float x, float low, float mid,
                                           float high) {
  if (x > mid) a.mass += x;
  if (x > low && x < high) {
    ++a.between;
    if (x <= mid) a.below = fmaxf(a.below, x);
    else a.above = fminf(a.above, x);
  }
}

__device__ __forceinline__ BisectPart WarpReduce(BisectPart a) {
  a.mass = WarpSum(a.mass);
  a.below = WarpMax(a.below);
  a.above = WarpMin(a.above);
  a.between = WarpSum(a.between);
  a.total = WarpSum(a.total);
  return a;
}

constexpr int kFloorLevels = 8;  // drop-floor candidates 4^-k, k = 0 .. 7

struct TopPScratch {
  float red_f[4][32];
  int red_i[32];
  int scan[33];
  float bcast_f[4];
  int bcast_i;
  float low;
  float red_lv[32][2 * kFloorLevels];  // per-warp partials of the level statistics
  float lv[2 * kFloorLevels];
};

__device__ __forceinline__ BisectPart BlockReduce(BisectPart a, TopPScratch& sm) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int nwarps = blockDim.x >> 5;
  a = WarpReduce(a);
  if (lane == 0) {
    sm.red_f[0][warp] = a.mass;
    sm.red_f[1][warp] = a.below;
    sm.red_f[2][warp] = a.above;
    sm.red_f[3][warp] = a.total;
    sm.red_i[warp] = a.between;
  }
  __syncthreads();
  if (warp == 0) {
    BisectPart b = EmptyPart();  // identities for the lanes past the warp count
    if (lane < nwarps) {
      b = {sm.red_f[0][lane], sm.red_f[1][lane], sm.red_f[2][lane], sm.red_i[lane],
           sm.red_f[3][lane]};
    }
    b = WarpReduce(b);
    if (lane == 0) {
      sm.bcast_f[0] = b.mass;
      sm.bcast_f[1] = b.below;
      sm.bcast_f[2] = b.above;
      sm.bcast_f[3] = b.total;
      sm.bcast_i = b.between;
    }
  }
  __syncthreads();
  BisectPart r{sm.bcast_f[0], sm.bcast_f[1], sm.bcast_f[2], sm.bcast_i, sm.bcast_f[3]};
  __syncthreads();  // the broadcast slots are rewritten by the next reduction
  return r;
}

__device__ __forceinline__ float BlockSumF(float v, TopPScratch& sm) {
  BisectPart p = EmptyPart();
  p.mass = v;
  return BlockReduce(p, sm).mass;
}
__device__ __forceinline__ int BlockSumI(int v, TopPScratch& sm) {
  BisectPart p = EmptyPart();
  p.between = v;
  return BlockReduce(p, sm).between;
}

// The softmax weight of slot i (0 for masked slots); every pass computes it the same way.
__device__ __forceinline__ float WeightAt(const float* scores, int32_t i, float mx) {
  const float x = scores[i];
  return x == -INFINITY ? 0.0f : expf(x - mx);
}

// One bisection step of TopPThresholdRef on reduced partials: false when the search stops.
__device__ __forceinline__ bool BisectStep(const BisectPart& a, float hi_mass, float target,
                                           float gap, float& low, float& high) {
  const float mass_mid = hi_mass + a.mass;
  if (a.between == 0 || high - low <= gap) return false;
  if (mass_mid >= target) {
    low = a.below >= 0.0f ? a.below : 0.5f * (low + high);  // {w > below} == {w > mid}
  } else {
    high = isinf(a.above) ? 0.5f * (low + high) : a.above;  // mass(> above) < target
  }
  return true;
}

constexpr size_t kTopPSmemBytes = sizeof(float) * kTopPSmemValues + sizeof(TopPScratch);

// Calls f(i, x) for the weights x of slots [0, n) of a score row (thread-strided; float4
// loads when the row is 16-byte aligned, which it is for page sizes that are multiples of 4).
template <typename F>
__device__ __forceinline__ void ForEachWeight(const float* sc, int32_t n, float mx, F f) {
  const bool vec = (reinterpret_cast<uintptr_t>(sc) & 15u) == 0;
  const int32_t n4 = vec ? n / 4 : 0;
  const float4* sc4 = reinterpret_cast<const float4*>(sc);
#pragma unroll 4
  for (int32_t i4 = threadIdx.x; i4 < n4; i4 += blockDim.x) {
    const float4 v = sc4[i4];
    f(4 * i4 + 0, v.x == -INFINITY ? 0.0f : expf(v.x - mx));
    f(4 * i4 + 1, v.y == -INFINITY ? 0.0f : expf(v.y - mx));
    f(4 * i4 + 2, v.z == -INFINITY ? 0.0f : expf(v.z - mx));
    f(4 * i4 + 3, v.w == -INFINITY ? 0.0f : expf(v.w - mx));
  }
  for (int32_t i = 4 * n4 + threadIdx.x; i < n; i += blockDim.x) f(i, WeightAt(sc, i, mx));
}

__device__ __forceinline__ float FloorLevel(int k) { return exp2f(-2.0f * float(k)); }  // 4^-k

// Per-query-head telemetry of the top-p kernel (thread 0): the head's own kept tokens and
// their estimated mass within the candidates; growing, the full-context lower bound (selected
// and cap_hit come from GrowSearchKernel); otherwise the full-context mass only when every
// page was a candidate (-1: unknown).
__device__ __forceinline__ void WriteHeadStats(const HeadStatsView& stats, const PruneShape& shape,
                                               int64_t at, int32_t sq, int32_t kept,
                                               float kept_mass, int32_t nvalid, bool all_pages) {
  if (stats.kept) stats.kept[at] = kept;
  if (stats.est_mass) stats.est_mass[at] = kept_mass;
  if (shape.head_p) {
    if (stats.full_mass) stats.full_mass[at] = kept_mass * shape.head_ratio[sq];
  } else {
    if (stats.selected) stats.selected[at] = nvalid;
    if (stats.full_mass) stats.full_mass[at] = all_pages ? kept_mass : -1.0f;
    if (stats.cap_hit) stats.cap_hit[at] = 0;
  }
}

// One block per (sequence, query head). scores: the row of LaunchPrune's score workspace;
// head_max: its FloatKey maximum; bits: union flags [num_seqs * num_kv_heads][bit_words],
// zeroed before the launch.
//
// Drop floor: the first pass also sums mass and count of the weights >= 4^-k (k = 0..7).
// If the weights >= 4^-k* already carry the target mass (with a 1e-4 margin for float sums)
// and the largest weight below 4^-k* is >= 4^-(j+1), the final threshold t* (the largest
// weight w with mass(> w) >= target) is >= 4^-(j+1), every bisection mid is > t*/2, and
// weights below floor = 4^-(j+2) <= t*/4 can never be above a mid: they are left out of
// the active set at once. In a peaked head that is nearly every weight. They can only
// change which weight `below` snaps to and when the search stops, i.e. the threshold within
// the stop gap (the documented tie band); the kept set is {w > low} over all slots.
__global__ void __launch_bounds__(kTopPThreads)
    TopPKernel(PageGeometry g, PrunerParams params, BatchView batch, SelectionView sel,
               PruneShape shape, const float* __restrict__ scores_all,
               const uint32_t* __restrict__ head_max, uint32_t* __restrict__ bits,
               HeadStatsView stats) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  float* buf = reinterpret_cast<float*>(smem_raw);  // [kTopPSmemValues]
  TopPScratch& sm = *reinterpret_cast<TopPScratch*>(smem_raw + sizeof(float) * kTopPSmemValues);
  const int32_t sq = blockIdx.x;  // s * num_q_heads + qh
  const int32_t s = sq / batch.num_q_heads, qh = sq % batch.num_q_heads;
  const int32_t h = qh / shape.group;
  const int32_t pair = s * g.num_kv_heads + h;
  const int32_t slots = sel.count[pair] * g.page_size;
  const float* sc = scores_all + int64_t(sq) * shape.cand_stride;
  uint32_t* pair_bits = bits + int64_t(pair) * shape.bit_words;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;

  // Valid candidates: the rows of the selected pages inside the sequence.
  int nvalid = 0;
  {
    const int32_t len = batch.seq_len[s];
    for (int32_t i = threadIdx.x; i < sel.count[pair]; i += blockDim.x) {
      const int32_t page_idx = sel.pages[int64_t(pair) * sel.max_select + i];
      nvalid += min(g.page_size, len - page_idx * g.page_size);
    }
    nvalid = BlockSumI(nvalid, sm);
  }
  const int64_t at = int64_t(sq);
  if (params.dense) {
    if (threadIdx.x == 0) {
      if (stats.selected) stats.selected[at] = nvalid;
      if (stats.kept) stats.kept[at] = nvalid;
      if (stats.est_mass) stats.est_mass[at] = 1.0f;
      if (stats.full_mass) stats.full_mass[at] = 1.0f;
      if (stats.cap_hit) stats.cap_hit[at] = 0;
    }
    return;  // CompactKeptKernel keeps every valid slot
  }
  const float p_user = params.seq_p ? params.seq_p[s] : params.p;
  if (p_user >= 1.0f) {
    // p = 1 is dense over the candidates (as TopPThresholdRef): every valid slot, including
    // those whose estimated weight underflowed to 0 (an INT4/INT2 estimate can put the true
    // top token ~100 below the estimated maximum). p is per sequence, so the whole block
    // takes this branch and the ballots below see every lane.
    const int32_t len = batch.seq_len[s];
    const int32_t* sel_pages = sel.pages + int64_t(pair) * sel.max_select;
    for (int32_t base = 0; base < slots; base += blockDim.x) {
      const int32_t i = base + threadIdx.x;
      const bool keep =
          i < slots && sel_pages[i / g.page_size] * g.page_size + i % g.page_size < len;
      const uint32_t word = __ballot_sync(0xffffffffu, keep);
      if (lane == 0 && word) atomicOr(&pair_bits[i >> 5], word);
    }
    if (threadIdx.x == 0) {
      WriteHeadStats(stats, shape, at, sq, nvalid, nvalid > 0 ? 1.0f : 0.0f, nvalid,
                     sel.count[pair] == batch.NumPages(g, s));
    }
    return;
  }
  const float mx = head_max[sq] ? KeyFloat(head_max[sq]) : 0.0f;
  // Growing: the share of the candidates' mass that makes >= p of the full-context bound.
  const float p = shape.head_p ? shape.head_p[sq] : (params.seq_p ? params.seq_p[s] : params.p);
  const bool in_smem = slots <= kTopPSmemValues;

  // Pass 1: weights (into shared memory when they fit), their sum, the drop-floor level
  // statistics and, fused, the first bisection step: low = 0, high = max weight =
  // exp(0) = 1, mid = 0.5.
  float low = 0.0f, high = 1.0f;
  BisectPart a = EmptyPart();
  float lv_mass[kFloorLevels], lv_count[kFloorLevels];
#pragma unroll
  for (int k = 0; k < kFloorLevels; ++k) lv_mass[k] = lv_count[k] = 0.0f;
  ForEachWeight(sc, slots, mx, [&](int32_t i, float x) {
    if (in_smem) buf[i] = x;
    a.total += x;
    Accumulate(a, x, low, 0.5f, high);
#pragma unroll
    for (int k = 0; k < kFloorLevels; ++k) {
      const bool ge = x >= FloorLevel(k);
      lv_mass[k] += ge ? x : 0.0f;
      lv_count[k] += ge ? 1.0f : 0.0f;
    }
  });
  // Level statistics: warp sums, then one row per warp in shared memory.
#pragma unroll
  for (int k = 0; k < kFloorLevels; ++k) {
    lv_mass[k] = WarpSum(lv_mass[k]);
    lv_count[k] = WarpSum(lv_count[k]);
  }
  if (lane == 0) {
#pragma unroll
    for (int k = 0; k < kFloorLevels; ++k) {
      sm.red_lv[warp][k] = lv_mass[k];
      sm.red_lv[warp][kFloorLevels + k] = lv_count[k];
    }
  }
  a = BlockReduce(a, sm);  // also publishes the shared-memory weights and red_lv
  if (threadIdx.x < 2 * kFloorLevels) {
    float v = 0.0f;
    for (int w = 0; w < int(blockDim.x >> 5); ++w) v += sm.red_lv[w][threadIdx.x];
    sm.lv[threadIdx.x] = v;
  }
  __syncthreads();
  const float total = a.total;

  int kept = 0;
  float kept_mass = 0.0f;
  if (total > 0.0f) {
    bool global = !in_smem;  // active values still in the score row (not yet compacted)
    int32_t len = slots;
    float hi_mass = 0.0f;    // mass of compacted-away weights >= high
    float floor = 0.0f;      // weights below it are out of the search (see above)
    float floor_count = float(slots);
    if (p < 1.0f) {
      const float target = p * total;
      const float gap = params.stop_gap * total / float(slots);  // fraction of the mean weight
      int kstar = -1;
      for (int k = 0; k < kFloorLevels && kstar < 0; ++k) {
        if (sm.lv[k] >= target * 1.0001f) kstar = k;
      }
      if (kstar >= 0) {
        for (int j = kstar; j + 2 < kFloorLevels; ++j) {
          if (sm.lv[kFloorLevels + j + 1] > sm.lv[kFloorLevels + j]) {
            floor = FloorLevel(j + 2);
            floor_count = sm.lv[kFloorLevels + j + 2];  // weights >= floor
            break;
          }
        }
      }
      int it = 0;
      while (BisectStep(a, hi_mass, target, gap, low, high) && ++it < params.max_iterations) {
        // Compact when at most half of the values can still matter (or, from global
        // memory, as soon as they fit in shared memory).
        const float active = fminf(float(a.between), floor_count);  // bound for new bounds
        if ((global && active <= float(kTopPSmemValues)) || (!global && 2.0f * active <= float(len))) {
          float drop_mass = 0.0f;
          int32_t out = 0;
          for (int32_t base = 0; base < len; base += blockDim.x) {
            const int32_t i = base + threadIdx.x;
            const float x = i < len ? (global ? WeightAt(sc, i, mx) : buf[i]) : 0.0f;
            const bool keep = i < len && x > low && x < high && x >= floor;
            if (i < len && x >= high) drop_mass += x;
            int tile_total;
            const int pos = out + BlockExclusiveSum(keep ? 1 : 0, sm.scan, &tile_total);
            if (keep) buf[pos] = x;  // pos <= i: in place is safe (reads done before)
            out += tile_total;
          }
          hi_mass += BlockSumF(drop_mass, sm);
          global = false;
          len = out;
          floor_count = float(len);
        }
        if (!global && len <= kTopPWarpValues) {
          // One warp finishes the search on the (small) shared buffer, no block barriers.
          if (warp == 0) {
            bool go = true;
            while (go) {
              const float mid = 0.5f * (low + high);
              BisectPart w = EmptyPart();
              for (int32_t i = lane; i < len; i += 32) {
                const float x = buf[i];
                if (x >= floor) Accumulate(w, x, low, mid, high);
              }
              w = WarpReduce(w);
              go = BisectStep(w, hi_mass, target, gap, low, high) && ++it < params.max_iterations;
            }
            if (lane == 0) sm.low = low;
          }
          __syncthreads();
          low = sm.low;
          break;
        }
        const float mid = 0.5f * (low + high);
        a = EmptyPart();
        if (global) {
          ForEachWeight(sc, len, mx, [&](int32_t, float x) {
            if (x >= floor) Accumulate(a, x, low, mid, high);
          });
        } else {
          for (int32_t i = threadIdx.x; i < len; i += blockDim.x) {
            const float x = buf[i];
            if (x >= floor) Accumulate(a, x, low, mid, high);
          }
        }
        a = BlockReduce(a, sm);
      }
    }
    // Kept set { w > low } over every slot: union bits (one ballot per 32 warp-contiguous
    // slots) and the head's own count and mass.
    float m = 0.0f;
    int c = 0;
    for (int32_t base = 0; base < slots; base += blockDim.x) {
      const int32_t i = base + threadIdx.x;
      const float x = i < slots ? WeightAt(sc, i, mx) : 0.0f;
      const bool keep = i < slots && x > low;
      if (keep) {
        m += x;
        ++c;
      }
      const uint32_t word = __ballot_sync(0xffffffffu, keep);
      if (lane == 0 && word) atomicOr(&pair_bits[i >> 5], word);
    }
    BisectPart k = EmptyPart();
    k.mass = m;
    k.between = c;
    k = BlockReduce(k, sm);
    kept_mass = k.mass / total;
    kept = k.between;
  }
  if (threadIdx.x == 0) {
    WriteHeadStats(stats, shape, at, sq, kept, kept_mass, nvalid,
                   sel.count[pair] == batch.NumPages(g, s));
  }
}

// One block per (sequence, KV head): union bits (or every valid slot when dense) ->
// ascending token positions.
__global__ void __launch_bounds__(kCompactThreads)
    CompactKeptKernel(PageGeometry g, BatchView batch, SelectionView sel, PruneShape shape,
                      bool dense, const uint32_t* __restrict__ bits, KeptView out) {
  __shared__ int scan[33];
  const int32_t pair = blockIdx.x;
  const int32_t s = pair / g.num_kv_heads;
  const int32_t slots = sel.count[pair] * g.page_size;
  const uint32_t* pb = bits + int64_t(pair) * shape.bit_words;
  int32_t* dst = out.tokens + int64_t(pair) * out.max_kept;
  const int32_t len = batch.seq_len[s];
  int base_out = 0;
  for (int32_t base = 0; base < slots; base += blockDim.x) {
    const int32_t i = base + threadIdx.x;
    int32_t pos = 0;
    bool keep = false;
    if (i < slots) {
      pos = sel.pages[int64_t(pair) * sel.max_select + i / g.page_size] * g.page_size +
            i % g.page_size;
      keep = pos < len && (dense || ((pb[i >> 5] >> (i & 31)) & 1u));
      // Growing: never a row outside the candidates (whatever the top-p kernel kept).
      if (keep && !dense && shape.in_set) {
        keep = shape.in_set[int64_t(pair) * sel.max_select + i / g.page_size] != 0;
      }
    }
    int total;
    const int at = base_out + BlockExclusiveSum(keep ? 1 : 0, scan, &total);
    if (keep) dst[at] = pos;
    base_out += total;
  }
  if (threadIdx.x == 0) out.count[pair] = base_out;
}

}  // namespace twl::cuda

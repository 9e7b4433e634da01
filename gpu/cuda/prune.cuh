// Twilight pruner kernels, three launches per decode step (+ a memset of the union bits):
//  1. ScoreInt4Kernel: estimated scores q.k~ of every candidate slot (selected page x row)
//     for all query heads of the GQA group at once: a tensor-core SpGEMV where A = INT4 codes
//     of 16 tokens (two 16-byte loads per thread, nibbles turned into FP16 in registers with
//     the 0x6400 exponent trick, exact for 0..15), B = the group's queries (n = 8 heads),
//     FP32 accumulation; scale/zero applied once per token: s = scale*(q.c) + zero*sum(q).
//     The k-order of the MMA is permuted so that each thread's fragment is exactly the
//     nibbles it loaded (a dot product does not care about the order of its terms).
//     Each block owns a contiguous run of tiles of one (sequence, KV head): it resolves the
//     physical pages of the run once into shared memory, then every warp streams groups of
//     kTilesPerWarp tiles with all their loads in flight. The per-head score maximum is
//     folded in with one atomicMax per warp and head (order-preserving integer keys).
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
constexpr int kTilesPerWarp = 8;       // 16-token MMA tiles per warp group, loads in flight
constexpr int kScoreMaxPages = 4096;   // pages of a block's tile run resolved in smem
constexpr int kTopPThreads = 512;
constexpr int kTopPSmemValues = 24576;  // active weights kept in shared memory (96 KB)
constexpr int kTopPWarpValues = 2048;   // below this, one warp finishes the bisection
constexpr int kCompactThreads = 512;

struct PruneShape {
  int32_t group = 1;
  int32_t cand_stride = 0;  // max_select * page_size: candidate slots per (seq, KV head)
  int32_t bit_words = 0;    // ceil(cand_stride / 32)
  float scale = 0.0f;       // softmax scale
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

__device__ __forceinline__ uint32_t NibblesToHalf2(uint32_t w, int shift) {
  // (0x6400 | n) as FP16 is 1024 + n exactly; subtracting 1024 leaves n.
  const uint32_t x = ((w >> shift) & 0x000F000Fu) | 0x64006400u;
  const __half2 h = __hsub2(*reinterpret_cast<const __half2*>(&x),
                            __halves2half2(__ushort_as_half(0x6400), __ushort_as_half(0x6400)));
  return *reinterpret_cast<const uint32_t*>(&h);
}

__device__ __forceinline__ void Mma16816(float* d, uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t PackHalves(fp16_t lo, fp16_t hi) {
  return uint32_t(lo) | (uint32_t(hi) << 16);
}

// Grid: x = blocks per (sequence, KV head), each owning tiles [x * tiles_per_block, ...);
// y = (sequence, KV head). scores: [num_seqs * num_q_heads][cand_stride], -inf for slots
// past the sequence end; head_max: [num_seqs * num_q_heads] FloatKey, zeroed before.
template <int kHeadDim>
__global__ void __launch_bounds__(kScoreWarps * 32)
    ScoreInt4Kernel(PageGeometry g, BatchView batch, QueryView q, QuantKView qk,
                    SelectionView sel, PruneShape shape, int32_t tiles_per_block,
                    float* __restrict__ scores, uint32_t* __restrict__ head_max) {
  constexpr int kWords = kHeadDim / 32;  // 32-bit code words per thread per token
  constexpr int kChanPerThread = kHeadDim / 4;
  __shared__ int32_t run_page[kScoreMaxPages];  // physical page id of run page i
  __shared__ int32_t run_rows[kScoreMaxPages];  // rows of run page i inside the sequence
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int32_t pair = blockIdx.y;
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
  // match the nibble order of A (see NibblesToHalf2 and the MMA loop below).
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

  using Chunk = typename std::conditional<kWords == 4, uint4, uint2>::type;
  float run_max[2] = {-INFINITY, -INFINITY};
  for (int32_t tile0 = t_begin + warp * kTilesPerWarp; tile0 < t_end;
       tile0 += kScoreWarps * kTilesPerWarp) {
    // Issue every load of the group's tiles before the first use.
    Chunk codes[kTilesPerWarp][2];
    float tscale[kTilesPerWarp][2], tzero[kTilesPerWarp][2];
    bool valid[kTilesPerWarp][2];
#pragma unroll
    for (int t = 0; t < kTilesPerWarp; ++t) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int32_t slot = (tile0 + t) * 16 + r + half * 8;
        const int32_t local = slot / g.page_size - p_begin;
        const int32_t row = slot % g.page_size;
        valid[t][half] = tile0 + t < t_end && slot < slots &&
                         row < run_rows[min(local, p_end - p_begin - 1)];
        const int64_t b = valid[t][half] ? g.BlockId(run_page[local], h) : 0;
        const int32_t rr = valid[t][half] ? row : 0;
        codes[t][half] = *reinterpret_cast<const Chunk*>(qk.Codes(g, b, rr) + t4 * (kHeadDim / 8));
        tscale[t][half] = H2F(qk.scale[b * g.page_size + rr]);
        tzero[t][half] = H2F(qk.zero[b * g.page_size + rr]);
      }
    }
#pragma unroll
    for (int t = 0; t < kTilesPerWarp; ++t) {
      if (tile0 + t >= t_end) break;
      float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
      const uint32_t* wa = reinterpret_cast<const uint32_t*>(&codes[t][0]);
      const uint32_t* wb = reinterpret_cast<const uint32_t*>(&codes[t][1]);
#pragma unroll
      for (int m = 0; m < kWords; ++m) {
        Mma16816(acc, NibblesToHalf2(wa[m], 0), NibblesToHalf2(wb[m], 0),
                 NibblesToHalf2(wa[m], 4), NibblesToHalf2(wb[m], 4), bfrag[m][0][0],
                 bfrag[m][0][1]);
        Mma16816(acc, NibblesToHalf2(wa[m], 8), NibblesToHalf2(wb[m], 8),
                 NibblesToHalf2(wa[m], 12), NibblesToHalf2(wb[m], 12), bfrag[m][1][0],
                 bfrag[m][1][1]);
      }
      // acc[0], acc[1]: token r, heads 2t4, 2t4+1; acc[2], acc[3]: token r + 8.
#pragma unroll
      for (int half = 0; half < 2; ++half) {
        const int32_t slot = (tile0 + t) * 16 + r + half * 8;
        if (slot >= slots) continue;
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const int j = 2 * t4 + k;
          if (j >= shape.group) continue;
          const float est = valid[t][half] ? shape.scale * (tscale[t][half] * acc[half * 2 + k] +
                                                            tzero[t][half] * qsum[k])
                                           : -INFINITY;
          run_max[k] = fmaxf(run_max[k], est);
          scores[(int64_t(s) * batch.num_q_heads + h * shape.group + j) * shape.cand_stride +
                 slot] = est;
        }
      }
    }
  }
  // Per-head maximum: lanes with the same t4 hold the same heads.
#pragma unroll
  for (int k = 0; k < 2; ++k) {
#pragma unroll
    for (int o = 4; o < 32; o <<= 1) run_max[k] = fmaxf(run_max[k], __shfl_xor_sync(0xffffffffu, run_max[k], o));
    const int j = 2 * t4 + k;
    if (r == 0 && j < shape.group && run_max[k] > -INFINITY) {
      atomicMax(&head_max[s * batch.num_q_heads + h * shape.group + j], FloatKey(run_max[k]));
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

struct TopPScratch {
  float red_f[4][32];
  int red_i[32];
  int scan[33];
  float bcast_f[4];
  int bcast_i;
  float low;
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

// One block per (sequence, query head). scores: the row of LaunchPrune's score workspace;
// head_max: its FloatKey maximum; bits: union flags [num_seqs * num_kv_heads][bit_words],
// zeroed before the launch.
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
    }
    return;  // CompactKeptKernel keeps every valid slot
  }
  const float mx = head_max[sq] ? KeyFloat(head_max[sq]) : 0.0f;
  const float p = params.seq_p ? params.seq_p[s] : params.p;
  const bool in_smem = slots <= kTopPSmemValues;

  // Pass 1: weights (into shared memory when they fit), their sum and, fused, the first
  // bisection step: low = 0, high = max weight = exp(0) = 1, mid = 0.5.
  float low = 0.0f, high = 1.0f;
  BisectPart a = EmptyPart();
  for (int32_t i = threadIdx.x; i < slots; i += blockDim.x) {
    const float x = WeightAt(sc, i, mx);
    if (in_smem) buf[i] = x;
    a.total += x;
    Accumulate(a, x, low, 0.5f, high);
  }
  a = BlockReduce(a, sm);  // also publishes the shared-memory weights
  const float total = a.total;

  int kept = 0;
  float kept_mass = 0.0f;
  if (total > 0.0f) {
    // Active values: sm buf (or the scores in global memory until the first compaction),
    // `len` of them; compacted-away values >= high are accounted in hi_mass / hi_count.
    bool global = !in_smem;
    int32_t len = slots;
    float hi_mass = 0.0f;
    int hi_count = 0;
    if (p < 1.0f) {
      const float target = p * total;
      const float gap = params.stop_gap * total;
      int it = 0;
      while (BisectStep(a, hi_mass, target, gap, low, high) && ++it < params.max_iterations) {
        // Compact when at most half of the values can still matter (or, from global
        // memory, as soon as they fit in shared memory).
        const int32_t active = a.between;  // upper bound of the values in the new bounds
        if ((global && active <= kTopPSmemValues) || (!global && 2 * active <= len)) {
          float drop_mass = 0.0f;
          int drop_count = 0;
          int32_t out = 0;
          for (int32_t base = 0; base < len; base += blockDim.x) {
            const int32_t i = base + threadIdx.x;
            const float x = i < len ? (global ? WeightAt(sc, i, mx) : buf[i]) : 0.0f;
            const bool keep = i < len && x > low && x < high;
            if (i < len && x >= high) {
              drop_mass += x;
              ++drop_count;
            }
            int tile_total;
            const int pos = out + BlockExclusiveSum(keep ? 1 : 0, sm.scan, &tile_total);
            if (keep) buf[pos] = x;  // pos <= i: in place is safe (reads done before)
            out += tile_total;
          }
          hi_mass += BlockSumF(drop_mass, sm);
          hi_count += BlockSumI(drop_count, sm);
          global = false;
          len = out;
        }
        if (!global && len <= kTopPWarpValues) {
          // One warp finishes the search on the (small) shared buffer, no block barriers.
          if (warp == 0) {
            bool go = true;
            while (go) {
              const float mid = 0.5f * (low + high);
              BisectPart w = EmptyPart();
              for (int32_t i = lane; i < len; i += 32) Accumulate(w, buf[i], low, mid, high);
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
        for (int32_t i = threadIdx.x; i < len; i += blockDim.x) {
          Accumulate(a, global ? WeightAt(sc, i, mx) : buf[i], low, mid, high);
        }
        a = BlockReduce(a, sm);
      }
    }
    // kept = { x > low } over all slots (hi_* hold the compacted-away values >= high > low).
    float m = 0.0f;
    int c = 0;
    for (int32_t i = threadIdx.x; i < len; i += blockDim.x) {
      const float x = global ? WeightAt(sc, i, mx) : buf[i];
      if (x > low) {
        m += x;
        ++c;
      }
    }
    kept_mass = (hi_mass + BlockSumF(m, sm)) / total;
    kept = hi_count + BlockSumI(c, sm);
    // Union bits over the original slots: warp-contiguous slots -> one ballot per word.
    for (int32_t base = 0; base < slots; base += blockDim.x) {
      const int32_t i = base + threadIdx.x;
      const bool keep = i < slots && WeightAt(sc, i, mx) > low;
      const uint32_t word = __ballot_sync(0xffffffffu, keep);
      if (lane == 0 && word) atomicOr(&pair_bits[i >> 5], word);
    }
  }
  if (threadIdx.x == 0) {
    if (stats.selected) stats.selected[at] = nvalid;
    if (stats.kept) stats.kept[at] = kept;
    if (stats.est_mass) stats.est_mass[at] = kept_mass;
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
    }
    int total;
    const int at = base_out + BlockExclusiveSum(keep ? 1 : 0, scan, &total);
    if (keep) dst[at] = pos;
    base_out += total;
  }
  if (threadIdx.x == 0) out.count[pair] = base_out;
}

}  // namespace twl::cuda

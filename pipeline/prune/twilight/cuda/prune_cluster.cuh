// The fused pruner (docs/PRUNE_PASSES.md, "What is left" 1(a)): one thread-block cluster per
// (sequence, KV head) scores the pair's candidates into the cluster's shared memory and runs
// the whole top-p there, so only the INT4 bytes cross HBM (no FP16 score rows, no histogram
// atomics, no bit words, no second launch).
//
// Cluster of C blocks (C = 16 at 128k; the launcher picks it): block `rank` owns the slots
// [rank * tb, rank * tb + tb) of the pair (tb a multiple of 256, C * tb >= candidates) and
// keeps their FP16 scores, G rows of tb (+ 8 halves of padding: the score stores of a page hit
// distinct banks), in its own shared memory. Phases, separated by cluster barriers (cluster.sync:
// arrive.release / wait.acquire, so shared-memory writes before it are visible to every block
// of the cluster after it):
//  1. score its pages (Page16Mma / Page16Estimate: the bits ScorePage16Kernel stores), the
//     per-head max of the stored scores and a NaN flag into shared memory;   sync 1
//  2. every block reads the C maxima / flags over DSMEM: the head max key and `bad` that the
//     passes compute with global atomics (max and OR: order-free), hence each head's mode;
//     level 1 over its own scores (HistKernel's per-slot arithmetic and skips, per-warp
//     sub-histograms merged into a block row of exact 64-bit sums);                sync 2
//  3. reduce-scatter: block r sums bins [r E / C, (r + 1) E / C) of the G x 256 rows over the
//     C blocks and stores the sums into every block's full rows (DSMEM);           sync 3
//  4. every block finds B1 per head from its full rows (LoadChunkHeads on shared-memory
//     HistWork: the passes' own code) and runs KeptKernel's classification over its slots:
//     bits above the boundary bin, counts, level-2 masses of the boundary bin;      sync 4
//  5. reduce-scatter of level 2;                                                   sync 5
//  6. B2 and the kept mass (LoadChunkHeads, level 2), the boundary bin's bits with sub-bin
//     <= B2 by rescanning its own scores (BoundaryKernel's overflow path: the same
//     SplitAtBoundary8 test), and the block's kept counts, popcount and candidate rows pushed
//     with DSMEM atomics: into rank 0 (totals) and into every later rank (the prefix of the
//     token list);                                                                  sync 6
//  7. each block writes its kept tokens at its prefix (CompactKeptKernel's coalesced
//     writes); rank 0 writes the pair's count and every head's telemetry (CompactKeptKernel's
//     formulas, on the same integer masses and counts).
// Every block runs every phase and barrier (a block past the pair's candidates has empty
// loops), and after sync 6 no block touches another's shared memory, so blocks may exit.
// All sums are integers and the max is order-free, so the result is bit for bit the passes'
// (prune.cuh, prune_hist.cuh) whatever C and tb are; tests/gpu/prune_cluster_gpu_test.cc
// compares them.
#pragma once

#include <cooperative_groups.h>

#include "pipeline/prune/twilight/cuda/prune_hist.cuh"

namespace twl::cuda {

constexpr int kClThreads = 256;
constexpr int kClWarps = kClThreads / 32;
constexpr int kClStages = 4;        // landing stages of a warp's pages: 3 in flight
constexpr int kClMaxG = 8;          // one MMA n-tile
constexpr int kClSlotAlign = 256;   // tb: a multiple of 8 * 32 (whole bit words per thread group)
constexpr int kClPad = 8;           // halves of padding per score row
static_assert(kHistChunk % kClSlotAlign == 0, "level-1 sub-chunks start on a load boundary");
static_assert(kClThreads == kHistThreads && kClThreads == kHistBins,
              "HistKernel's loads per thread, sub-histogram bounds and one bin per thread");
static_assert(kClMaxG <= kMaxGroup, "ChunkHeads holds the group");

// Byte offsets of a block's dynamic shared memory. `scratch` is first the warps' cp.async
// landing stages, then (scoring done) the level-1 sub-histograms, the block's local rows
// (level 1, then level 2) and the cluster-summed rows full1 / full2 (placed over the dead
// sub-histograms when they fit there).
struct ClusterLayout {
  int32_t group = 0, tb = 0, ld = 0;  // heads, slots per block, score row stride (halves)
  uint32_t scores = 0, scratch = 0, sub = 0, local = 0, full1 = 0, full2 = 0;
  uint32_t page = 0, pidx = 0, rows = 0, bits = 0, bytes = 0;
};

inline ClusterLayout MakeClusterLayout(int32_t group, int32_t tb, int32_t head_dim) {
  auto up = [](uint32_t x) { return (x + 15u) / 16u * 16u; };
  ClusterLayout l;
  l.group = group;
  l.tb = tb;
  l.ld = tb + kClPad;
  const uint32_t staging = uint32_t(kClStages) * 2u * kClThreads * uint32_t(head_dim / 8);
  const uint32_t sub = 2u * kClWarps * kHistBins * 4u;  // lo / hi words per warp and bin
  const uint32_t row = uint32_t(group) * kHistBins * 8u;
  uint32_t o = up(uint32_t(group) * uint32_t(l.ld) * 2u);
  l.scratch = o;
  l.sub = o;
  l.local = o + sub;
  l.full1 = 2u * row <= sub ? o : o + sub + row;
  l.full2 = l.full1 + row;
  uint32_t end = o + staging;
  end = end > l.local + row ? end : l.local + row;
  end = end > l.full2 + row ? end : l.full2 + row;
  o = up(end);
  const uint32_t pages = uint32_t(tb / 16);
  l.page = o;
  o = up(o + pages * 4u);
  l.pidx = o;
  o = up(o + pages * 4u);
  l.rows = o;
  o = up(o + pages);
  l.bits = o;
  o = up(o + uint32_t(tb / 32) * 4u);
  l.bytes = o;
  return l;
}

// Sums bins [rank E / C, (rank + 1) E / C) of the G x 256 rows at `local` over the cluster's
// blocks and stores them into every block's `full` (E = G * 256; C a power of two <= 16, so
// it divides E). Optionally also into global `out` rows ([G][256] from out).
__device__ __forceinline__ void ClusterReduceScatter(cooperative_groups::cluster_group& cluster,
                                                     u64* local, u64* full, int G,
                                                     u64* out) {
  const int C = int(cluster.num_blocks());
  const int rank = int(cluster.block_rank());
  const int per = G * kHistBins / C;
  for (int e = threadIdx.x; e < per; e += blockDim.x) {
    const int at = rank * per + e;
    u64 sum = 0;
    for (int q = 0; q < C; ++q) sum += cluster.map_shared_rank(local, q)[at];
    for (int q = 0; q < C; ++q) cluster.map_shared_rank(full, q)[at] = sum;
    if (out) out[at] = sum;
  }
}

// Bit k: slot i0 + k (i0 a multiple of 8, < nb) of the block is a row inside the sequence
// (CandidateMask8 on the block's run: rows of run page i0 / 16 below run_rows).
__device__ __forceinline__ uint32_t ClusterMask8(const uint8_t* run_rows, int32_t i0,
                                                 int32_t nb) {
  if (i0 >= nb) return 0u;
  const int n = min(8, max(0, int(run_rows[i0 >> 4]) - (i0 & 15)));
  return (1u << n) - 1u;
}

// Grid: x = the cluster's C blocks (cluster dims (C, 1, 1)), y = (sequence, KV head). G <=
// kClMaxG, page_size 16, INT4 per token (the ScorePage16Kernel geometry), not growing, not
// dense. Writes out.tokens / out.count and the telemetry; touches no workspace.
template <int kHeadDim>
__global__ void __launch_bounds__(kClThreads, 2)
    ClusterPruneKernel(PageGeometry g, PrunerParams params, BatchView batch, QueryView q,
                       QuantKView qk, SelectionView sel, PruneShape shape, ClusterLayout L,
                       float fx_scale, KeptView out, HeadStatsView stats) {
  namespace cg = cooperative_groups;
  constexpr int kWords = kHeadDim / 32;
  constexpr int kChunk = kHeadDim / 8;
  constexpr int kRowBytes = kHeadDim / 2;
  constexpr int kBlockBytes = 16 * kRowBytes;
  using Chunk = typename std::conditional<kWords == 4, uint4, uint2>::type;
  extern __shared__ __align__(16) unsigned char cl_smem[];
  fp16_t* sc = reinterpret_cast<fp16_t*>(cl_smem + L.scores);  // [G][ld]
  Chunk* landing = reinterpret_cast<Chunk*>(cl_smem + L.scratch);  // [stage][half][threads]
  uint32_t* sub_lo = reinterpret_cast<uint32_t*>(cl_smem + L.sub);  // [warps][256]
  uint32_t* sub_hi = sub_lo + kClWarps * kHistBins;
  u64* local = reinterpret_cast<u64*>(cl_smem + L.local);  // [G][256]
  u64* full1 = reinterpret_cast<u64*>(cl_smem + L.full1);
  u64* full2 = reinterpret_cast<u64*>(cl_smem + L.full2);
  int32_t* run_page = reinterpret_cast<int32_t*>(cl_smem + L.page);  // physical page ids
  int32_t* run_pidx = reinterpret_cast<int32_t*>(cl_smem + L.pidx);  // logical page indices
  uint8_t* run_rows = cl_smem + L.rows;  // rows inside the sequence (0..16)
  uint32_t* s_bits = reinterpret_cast<uint32_t*>(cl_smem + L.bits);  // [tb / 32]
  __shared__ uint32_t s_key[kClMaxG];   // this block's max key per head (read over DSMEM)
  __shared__ int s_nan[kClMaxG];        // this block stored a NaN for the head
  __shared__ uint32_t s_gkey[kClMaxG];  // the cluster's: head_max of the passes
  __shared__ int32_t s_gbad[kClMaxG];   // the cluster's: HistWork::bad of the passes
  __shared__ int s_count[kClMaxG];      // rank 0: kept counts (DSMEM atomics of all blocks)
  __shared__ u64 s_kmass[kClMaxG];      // rank 0: kept masses (LoadChunkHeads, level 2)
  __shared__ int s_prefix, s_total, s_rows;
  __shared__ int s_mode[kClMaxG];
  __shared__ float s_mx[kClMaxG];
  __shared__ ChunkHeads ch1, ch2;
  __shared__ int scan[33];

  cg::cluster_group cluster = cg::this_cluster();
  const int C = int(cluster.num_blocks());
  const int rank = int(cluster.block_rank());
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int r = lane >> 2, t4 = lane & 3;
  const int32_t pair = blockIdx.y;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int G = shape.group;
  const int32_t sq0 = s * batch.num_q_heads + h * G;
  const int32_t n_pages = sel.count[pair];
  const int32_t slots = n_pages * 16;
  const int32_t t0 = rank * L.tb;
  const int32_t nb = min(max(slots - t0, 0), L.tb);  // this block's slots (a multiple of 16)
  const int32_t np = nb / 16;
  const int32_t len = batch.seq_len[s];
  const int32_t* pages = sel.pages + int64_t(pair) * sel.max_select + t0 / 16;

  if (threadIdx.x < kClMaxG) {
    s_key[threadIdx.x] = 0u;
    s_nan[threadIdx.x] = 0;
    s_count[threadIdx.x] = 0;
    s_kmass[threadIdx.x] = 0;
  }
  if (threadIdx.x == 0) s_prefix = s_total = s_rows = 0;
  int rows_sum = 0;  // CompactKeptKernel's valid rows of the listed pages (may be negative)
  for (int32_t i = threadIdx.x; i < np; i += blockDim.x) {
    const int32_t pidx = pages[i];
    run_page[i] = batch.PageId(s, pidx);
    run_pidx[i] = pidx;
    run_rows[i] = uint8_t(max(0, min(16, len - pidx * 16)));
    rows_sum += min(16, len - pidx * 16);
  }
  // B fragments (query head r of the group, zero past it) and sum(q), as ScorePage16Kernel.
  uint32_t bfrag[1][kWords][2][2];
  LoadQueryFragment<kHeadDim>(q.q + int64_t(sq0 + (r < G ? r : 0)) * kHeadDim, r < G, t4,
                              bfrag[0]);
  float qsum[1][2];
  GroupQuerySums<kHeadDim, 1>(q.q + int64_t(sq0) * kHeadDim, G, lane, qsum);
  __syncthreads();  // run pages ready

  // ---- 1. Scores: warp w takes run pages w, w + 8, ... (one page a step, kClStages - 1
  // steps in flight), each thread landing and reading only its own chunks.
  {
    const int32_t steps = warp < np ? (np - warp + kClWarps - 1) / kClWarps : 0;
    const uint8_t* lane_codes = qk.codes + r * kRowBytes + t4 * kChunk;
    auto issue = [&](int32_t k) {
      if (k < steps) {
        const int stage = k % kClStages;
        const int32_t lp = warp + k * kClWarps;
        const uint8_t* src = lane_codes + g.BlockId(run_page[lp], h) * kBlockBytes;
        Chunk* dst = &landing[(stage * 2) * kClThreads + threadIdx.x];
        if constexpr (kChunk == 16) {
          CpAsyncBytes16(dst, src);
          CpAsyncBytes16(dst + kClThreads, src + 8 * kRowBytes);
        } else {
          CpAsyncBytes8(dst, src);
          CpAsyncBytes8(dst + kClThreads, src + 8 * kRowBytes);
        }
      }
      CpAsyncCommitGroup();
    };
#pragma unroll
    for (int k = 0; k < kClStages - 1; ++k) issue(k);
    fp16_t nscale[2], nzero[2];
    int nrows = 0;
    auto load_meta = [&](int32_t k) {
      const int32_t lp = min(warp + k * kClWarps, np - 1);
      const int64_t at = g.BlockId(run_page[lp], h) * 16 + r;
      nrows = run_rows[lp];
      nscale[0] = qk.scale[at];
      nscale[1] = qk.scale[at + 8];
      nzero[0] = qk.zero[at];
      nzero[1] = qk.zero[at + 8];
    };
    float run_max[2] = {-INFINITY, -INFINITY};
    bool nan[2] = {false, false};
    if (steps > 0) load_meta(0);
    for (int32_t k = 0; k < steps; ++k) {
      CpAsyncWaitGroup<kClStages - 2>();  // this thread's copies of step k have landed
      issue(k + kClStages - 1);
      const int stage = k % kClStages;
      const float tscale[2] = {H2F(nscale[0]), H2F(nscale[1])};
      const float tzero[2] = {H2F(nzero[0]), H2F(nzero[1])};
      const int rows = nrows;
      if (k + 1 < steps) load_meta(k + 1);
      const int32_t lp = warp + k * kClWarps;
      const Chunk ca = landing[(stage * 2) * kClThreads + threadIdx.x];
      const Chunk cb = landing[(stage * 2 + 1) * kClThreads + threadIdx.x];
      float acc[1][4];
      Page16Mma<kHeadDim, 1>(reinterpret_cast<const uint32_t*>(&ca),
                             reinterpret_cast<const uint32_t*>(&cb), bfrag, acc);
#pragma unroll
      for (int kk = 0; kk < 2; ++kk) {
        const int j = 2 * t4 + kk;
        float x[2];
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const fp16_t est = Page16Estimate(r + half * 8 < rows, shape.scale, tscale[half],
                                            tzero[half], acc[0][half * 2 + kk], qsum[0][kk]);
          x[half] = H2F(est);
          if (j < G) sc[j * L.ld + lp * 16 + r + half * 8] = est;
        }
        run_max[kk] = fmaxf(run_max[kk], fmaxf(x[0], x[1]));
        nan[kk] = nan[kk] || isnan(x[0]) || isnan(x[1]);
      }
    }
    CpAsyncWaitGroup<0>();
    // Lanes of equal t4 hold the same heads.
#pragma unroll
    for (int kk = 0; kk < 2; ++kk) {
      float v = run_max[kk];
      int any = nan[kk] ? 1 : 0;
#pragma unroll
      for (int o = 4; o < 32; o <<= 1) {
        v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
        any |= __shfl_xor_sync(0xffffffffu, any, o);
      }
      const int j = 2 * t4 + kk;
      if (r == 0 && j < G && v > -INFINITY) atomicMax(&s_key[j], FloatKey(v));
      if (r == 0 && j < G && any) s_nan[j] = 1;
    }
  }
  cluster.sync();  // 1: every block's maxima and flags

  // ---- 2. The heads' max and NaN flag over the cluster, the modes, level 1 of this block.
  if (threadIdx.x < G) {
    uint32_t key = 0u;
    int bad = 0;
    for (int qr = 0; qr < C; ++qr) {
      key = max(key, cluster.map_shared_rank(s_key, qr)[threadIdx.x]);
      bad |= cluster.map_shared_rank(s_nan, qr)[threadIdx.x];
    }
    s_gkey[threadIdx.x] = key;
    s_gbad[threadIdx.x] = bad;
  }
  // The passes' HistWork, over this block's shared memory (head j of the group = index j).
  HistWork hl;
  hl.hist1 = full1;
  hl.hist2 = full2;
  hl.bad = s_gbad;
  hl.kept_mass = s_kmass;
  hl.fx_scale = fx_scale;
  for (int i = threadIdx.x; i < G * kHistBins; i += blockDim.x) local[i] = 0;
  __syncthreads();
  if (threadIdx.x < G) {
    float mx;
    s_mode[threadIdx.x] = HeadMode(params, shape, s_gkey, hl, s, threadIdx.x, &mx);
    s_mx[threadIdx.x] = mx;
  }
  __syncthreads();
  for (int j = 0; j < G; ++j) {
    if (s_mode[j] != kModeTopP) continue;  // block-uniform
    const float mx = s_mx[j];
    const fp16_t* row = sc + j * L.ld;
    // Scores more than 28.5 logits below the max weigh < 2^-41: Fixed() gives them 0.
    const __half2 skip_below = HalfThreshold(mx - 28.5f);
    for (int32_t c0 = 0; c0 < nb; c0 += kHistChunk) {  // block-uniform
      const int32_t c1 = min(nb, c0 + kHistChunk);
      for (int i = threadIdx.x; i < kClWarps * kHistBins; i += blockDim.x) {
        sub_lo[i] = 0;
        sub_hi[i] = 0;
      }
      __syncthreads();
      uint32_t* lo = sub_lo + warp * kHistBins;
      uint32_t* hi = sub_hi + warp * kHistBins;
      int cur = -1;  // HistKernel's runs of equal bins
      u64 acc = 0;
#pragma unroll
      for (int it = 0; it < kHistIters; ++it) {
        const int32_t i0 = c0 + it * 8 * kClThreads + 8 * int32_t(threadIdx.x);
        if (i0 >= c1) break;
        const uint4 raw = *reinterpret_cast<const uint4*>(row + i0);
        if (AllBelow(raw, skip_below)) continue;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
          const float x = RawHalf(raw, k);
          if (x == -INFINITY || isnan(x)) continue;
          const float d = mx - x;
          const u64 m = Fixed(expf(-d), fx_scale);
          if (!m) continue;
          const int bin = Bin1(d);
          if (bin != cur) {
            if (acc) SubHistAdd(lo, hi, cur, acc);
            cur = bin;
            acc = 0;
          }
          acc += m;
        }
      }
      if (acc) SubHistAdd(lo, hi, cur, acc);
      __syncthreads();
      const int b = threadIdx.x;  // kClThreads == kHistBins
      u64 sum = 0;
#pragma unroll
      for (int w = 0; w < kClWarps; ++w) {
        sum += (u64(sub_hi[w * kHistBins + b]) << kSplitBits) + sub_lo[w * kHistBins + b];
      }
      local[j * kHistBins + b] += sum;
      __syncthreads();  // before the next sub-chunk clears the sub-histograms
    }
  }
  cluster.sync();  // 2: every block's level-1 rows

  ClusterReduceScatter(cluster, local, full1, G, nullptr);
  cluster.sync();  // 3: full1 complete in every block; every `local` read

  // ---- 4. B1 per head; bits above the boundary bin, counts, level-2 masses.
  LoadChunkHeads(ch1, params, shape, s_gkey, hl, s, 0, G, /*level2=*/false);
  for (int i = threadIdx.x; i < G * kHistBins; i += blockDim.x) local[i] = 0;
  for (int i = threadIdx.x; i < L.tb / 32; i += blockDim.x) s_bits[i] = 0u;
  __syncthreads();
  {
    int cnt[kClMaxG];
#pragma unroll
    for (int j = 0; j < kClMaxG; ++j) cnt[j] = 0;
    for (int32_t base = 0; base < nb; base += 8 * kClThreads) {  // block-uniform trips
      const int32_t i0 = base + 8 * int32_t(threadIdx.x);
      const uint32_t vmask = ClusterMask8(run_rows, i0, nb);
      uint32_t byte = 0;
#pragma unroll
      for (int j = 0; j < kClMaxG; ++j) {
        if (j >= G) break;
        const int mode = ch1.mode[j];  // block-uniform
        if (mode == kModeAll) {
          byte |= vmask;
          cnt[j] += __popc(vmask);
        } else if (mode == kModeTopP && vmask) {
          const uint4 raw = *reinterpret_cast<const uint4*>(sc + j * L.ld + i0);
          const uint32_t skip = ch1.skip[j];
          if (!AllBelow(raw, *reinterpret_cast<const __half2*>(&skip))) {
            u64* h2 = local + j * kHistBins;
            const uint32_t above = SplitAtBoundary8(raw, vmask, ch1.mx[j], ch1.b1[j],
                                                    [&](int, int b2, float w) {
                                                      const u64 m = Fixed(w, fx_scale);
                                                      if (m) SharedAddU64(&h2[b2], m);
                                                    });
            byte |= above;
            cnt[j] += __popc(above);
          }
        }
      }
      uint32_t word = byte << (8 * (lane & 3));  // slots i0..i0+7: bits 8 (lane & 3) + k
      word |= __shfl_xor_sync(0xffffffffu, word, 1);
      word |= __shfl_xor_sync(0xffffffffu, word, 2);
      if ((lane & 3) == 0 && i0 < nb) s_bits[i0 >> 5] = word;
    }
#pragma unroll
    for (int j = 0; j < kClMaxG; ++j) {
      if (j >= G) break;
      const int c = int(__reduce_add_sync(0xffffffffu, unsigned(cnt[j])));
      if (lane == 0 && c) atomicAdd(&ch1.count[j], c);
    }
  }
  cluster.sync();  // 4: every block's level-2 rows

  ClusterReduceScatter(cluster, local, full2, G, nullptr);
  cluster.sync();  // 5: full2 complete in every block

  // ---- 6. B2 and the kept mass (rank 0 = blockIdx.x 0 keeps it), the boundary bits.
  LoadChunkHeads(ch2, params, shape, s_gkey, hl, s, 0, G, /*level2=*/true);
  __syncthreads();
  {
    int cnt[kClMaxG];
#pragma unroll
    for (int j = 0; j < kClMaxG; ++j) cnt[j] = 0;
    for (int32_t base = 0; base < nb; base += 8 * kClThreads) {
      const int32_t i0 = base + 8 * int32_t(threadIdx.x);
      const uint32_t vmask = ClusterMask8(run_rows, i0, nb);
      uint32_t byte = 0;
#pragma unroll
      for (int j = 0; j < kClMaxG; ++j) {
        if (j >= G) break;
        if (ch2.mode[j] != kModeTopP || !vmask) continue;
        const uint4 raw = *reinterpret_cast<const uint4*>(sc + j * L.ld + i0);
        const uint32_t skip = ch2.skip[j];
        if (AllBelow(raw, *reinterpret_cast<const __half2*>(&skip))) continue;
        const int B2 = ch2.b2[j];
        uint32_t mine = 0;
        SplitAtBoundary8(raw, vmask, ch2.mx[j], ch2.b1[j], [&](int k, int b2, float) {
          if (b2 <= B2) mine |= 1u << k;
        });
        byte |= mine;
        cnt[j] += __popc(mine);
      }
      uint32_t word = byte << (8 * (lane & 3));
      word |= __shfl_xor_sync(0xffffffffu, word, 1);
      word |= __shfl_xor_sync(0xffffffffu, word, 2);
      if ((lane & 3) == 0 && i0 < nb) s_bits[i0 >> 5] |= word;
    }
#pragma unroll
    for (int j = 0; j < kClMaxG; ++j) {
      if (j >= G) break;
      const int c = int(__reduce_add_sync(0xffffffffu, unsigned(cnt[j])));
      if (lane == 0 && c) atomicAdd(&ch2.count[j], c);
    }
  }
  const int32_t words = (nb + 31) / 32;
  int pop = 0;
  for (int32_t w = threadIdx.x; w < words; w += blockDim.x) pop += __popc(s_bits[w]);
  int block_pop, block_rows;
  BlockExclusiveSum(pop, scan, &block_pop);  // its barriers also order ch2.count's adds
  BlockExclusiveSum(rows_sum, scan, &block_rows);
  if (threadIdx.x < G) {
    const int c = ch1.count[threadIdx.x] + ch2.count[threadIdx.x];
    if (c) atomicAdd(cluster.map_shared_rank(&s_count[threadIdx.x], 0), c);
  }
  if (threadIdx.x == 0) {
    for (int qr = rank + 1; qr < C; ++qr) {
      if (block_pop) atomicAdd(cluster.map_shared_rank(&s_prefix, qr), block_pop);
    }
    if (block_pop) atomicAdd(cluster.map_shared_rank(&s_total, 0), block_pop);
    if (block_rows) atomicAdd(cluster.map_shared_rank(&s_rows, 0), block_rows);
  }
  cluster.sync();  // 6: prefixes and totals complete; no DSMEM access after this

  // ---- 7. Kept tokens (CompactKeptKernel's writes: lane k takes bit k of a word).
  int32_t* dst = out.tokens + int64_t(pair) * out.max_kept + s_prefix;
  int base_at = 0;
  for (int32_t w0 = 0; w0 < words; w0 += kClThreads) {  // block-uniform
    const int32_t w = w0 + int32_t(threadIdx.x);
    const uint32_t m = w < words ? s_bits[w] : 0u;
    const int c = __popc(m);
    int round_total;
    const int at = base_at + BlockExclusiveSum(c, scan, &round_total);
    for (int j = 0; j < 32; ++j) {  // warp-uniform
      const uint32_t mj = __shfl_sync(0xffffffffu, m, j);
      if (!mj) continue;
      const int aj = __shfl_sync(0xffffffffu, at, j);
      if ((mj >> lane) & 1u) {
        const int32_t i = (w0 + warp * 32 + j) * 32 + lane;  // block slot
        dst[aj + __popc(mj & ((1u << lane) - 1u))] = run_pidx[i >> 4] * 16 + (i & 15);
      }
    }
    base_at += round_total;
  }
  if (rank != 0) return;
  if (threadIdx.x == 0) out.count[pair] = s_total;
  // Telemetry (CompactKeptKernel, FULL / fixed selection, not growing, not dense).
  const bool all_pages = n_pages == batch.NumPages(g, s);
  const int nvalid = all_pages ? len : s_rows;
  for (int jw = warp; jw < G; jw += kClWarps) {  // a warp per head (warp-uniform)
    float mx;
    const int mode = HeadMode(params, shape, s_gkey, hl, s, jw, &mx);
    const int32_t kept = s_count[jw];
    float est = 0.0f;
    if (mode == kModeAll) {
      est = kept > 0 ? 1.0f : 0.0f;
    } else if (mode == kModeTopP) {
      u64 total = 0;
#pragma unroll
      for (int k = 0; k < 8; ++k) total += full1[jw * kHistBins + lane * 8 + k];
      total = WarpSumU64(total);
      est = total ? float(double(s_kmass[jw]) / double(total)) : 0.0f;
    }
    if (lane != 0) continue;
    const int32_t sq = sq0 + jw;
    if (stats.kept) stats.kept[sq] = kept;
    if (stats.est_mass) stats.est_mass[sq] = est;
    if (stats.selected) stats.selected[sq] = nvalid;
    if (stats.full_mass) stats.full_mass[sq] = all_pages ? est : -1.0f;
    if (stats.cap_hit) stats.cap_hit[sq] = 0;
  }
}

}  // namespace twl::cuda

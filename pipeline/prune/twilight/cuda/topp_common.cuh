// What the top-p passes share (prune_hist.cuh has the rule and the passes): chunk sizes,
// the per-head accumulators, a head's mode and p, the warp-level scans over a histogram row,
// the loads of 8 FP16 scores, the candidate masks, the per-block head thresholds and the
// L2 prefetch of a chunk.
#pragma once

#include "pipeline/prune/twilight/cuda/pdl.cuh"
#include "pipeline/prune/twilight/cuda/prune_common.cuh"
#include "pipeline/prune/twilight/cuda/topp_bins.cuh"

namespace twl::cuda {

constexpr int kHistThreads = 256;
constexpr int kHistChunk = 8192;        // slots of one query-head row per block
constexpr int kKeptThreads = 256;
constexpr int kKeptChunk = 4096;        // slots of a (sequence, KV head) per block (2 steps)

using u64 = unsigned long long;

// Fixed-point scale of a weight w <= 1: w * 2^40 rounded. The same for every batch (so a
// head's result never depends on its batch-mates); sums of up to kMaxPruneCandidates
// weights stay below 2^64. A weight below 2^-41 (about 28.4 logits under the max) adds 0.
constexpr float kFixedScale = 1099511627776.0f;  // 2^40
constexpr int64_t kMaxPruneCandidates = int64_t(1) << 23;

// Per query head accumulators, zeroed by the launcher's memset.
struct HistWork {
  u64* hist1 = nullptr;         // [heads][256] level-1 fixed-point mass
  u64* hist2 = nullptr;         // [heads][256] level-2 (boundary bin) mass
  u64* kept_mass = nullptr;     // [heads] fixed-point mass of the head's own kept set
  int32_t* kept_count = nullptr;  // [heads]
  int32_t* bad = nullptr;         // [heads] 1: a NaN estimate (the head keeps nothing)
  // Boundary-bin candidates per (query head, kept chunk), see KeptKernel (not cleared:
  // KeptKernel writes every count BoundaryKernel reads).
  int32_t* bnd = nullptr;         // [heads][bnd_chunks][kBndCap]
  int32_t* bnd_count = nullptr;   // [heads][bnd_chunks]
  int32_t bnd_chunks = 0;         // ceil(cand_stride / kKeptChunk)
};


// What a head does: every valid candidate (p >= 1), nothing (no finite max, NaN, zero
// mass), or the top-p level set.
enum : int { kModeNone = 0, kModeAll = 1, kModeTopP = 2 };

// Both p's loaded before either is tested (one round trip).
__device__ __forceinline__ float HeadP(const PrunerParams& params, const PruneShape& shape,
                                       int32_t s, int32_t sq) {
  const float user = params.seq_p ? params.seq_p[s] : params.p;
  if (shape.head_p) {
    const float head = shape.head_p[sq];
    return user >= 1.0f ? 1.0f : head;
  }
  return user;
}

// p >= 1 (the sequence's p, or a growing head whose share of the candidates' mass is 1)
// keeps every valid candidate, as TopPThresholdRef does for p >= 1.
// Every input is loaded before any is tested (every head has them): a block of the kept
// and boundary passes starts with this, and tested in turn they were a chain of up to
// three round trips (p, max, NaN flag).
__device__ __forceinline__ int HeadMode(const PrunerParams& params, const PruneShape& shape,
                                        const uint32_t* head_max, const HistWork& hw, int32_t s,
                                        int32_t sq, float* mx) {
  const float p = HeadP(params, shape, s, sq);
  const uint32_t key = head_max[sq];
  const int32_t bad = hw.bad[sq];
  // Selects and bitwise tests, not early returns or &&: with those the compiler moved each
  // load below the test before it.
  const bool all = p >= 1.0f;
  const float m = key ? KeyFloat(key) : 0.0f;
  *mx = all ? 0.0f : m;
  const bool topp = (key != 0u) & bool(isfinite(m)) & (bad == 0);
  return all ? kModeAll : (topp ? kModeTopP : kModeNone);
}

__device__ __forceinline__ u64 Fixed(float w, float scale) {
  return __float2ull_rn(w * scale);
}

// A 256-bin histogram row held by one warp in registers: lane l has bins [8 l, 8 l + 8).
// Each lane's eight loads are independent, so the row costs one round trip to L2.
__device__ __forceinline__ void WarpLoadHist(const u64* hist, u64 v[8]) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int k = 0; k < 8; ++k) v[k] = hist[lane * 8 + k];
}

// One warp, a row in registers (WarpLoadHist): the first bin where the cumulative sum
// reaches target (>= 1), and the sum of the bins before it; bin 255 when the total falls
// short. Every lane returns the same result.
__device__ __forceinline__ int WarpFindBin(const u64 v[8], u64 target, u64* before) {
  const int lane = threadIdx.x & 31;
  u64 local = 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) local += v[k];
  u64 inc = local;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const u64 n = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += n;
  }
  const unsigned hit = __ballot_sync(0xffffffffu, inc >= target);
  const int L = hit ? __ffs(hit) - 1 : 31;
  int bin = kHistBins - 1;
  u64 bef = 0;
  if (lane == L) {
    u64 c = inc - local;
    bin = -1;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (bin < 0 && c + v[k] >= target) {
        bin = lane * 8 + k;
        bef = c;
      }
      if (bin < 0) c += v[k];
    }
    if (bin < 0) {
      bin = kHistBins - 1;
      bef = c - v[7];
    }
  }
  bin = __shfl_sync(0xffffffffu, bin, L);
  bef = __shfl_sync(0xffffffffu, bef, L);
  *before = bef;
  return bin;
}

// Inclusive prefix sum over the lanes of a warp (every lane calls it).
__device__ __forceinline__ int WarpInclusiveSum(int v) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const int y = __shfl_up_sync(0xffffffffu, v, o);
    if (lane >= o) v += y;
  }
  return v;
}

__device__ __forceinline__ u64 WarpSumU64(u64 v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// One warp, the level-1 row in registers: the head's total and target T = ceil(p * total)
// (0: nothing to keep).
__device__ __forceinline__ u64 WarpTarget(const u64 v[8], float p, u64* total) {
  u64 t = 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) t += v[k];
  t = WarpSumU64(t);
  *total = t;
  return u64(ceil(double(p) * double(t)));
}

// 64-bit add to shared memory as two native 32-bit atomics (a 64-bit shared atomic add may
// be a compare-and-swap loop): the low word's wrap-around is carried into the high word by
// the thread that caused it, so the pair holds the exact sum mod 2^64 (little endian).
__device__ __forceinline__ void SharedAddU64(u64* addr, u64 v) {
  uint32_t* w = reinterpret_cast<uint32_t*>(addr);
  const uint32_t lo = uint32_t(v);
  uint32_t hi = uint32_t(v >> 32);
  if (lo) {
    const uint32_t old = atomicAdd(&w[0], lo);
    hi += old + lo < old ? 1u : 0u;
  }
  if (hi) atomicAdd(&w[1], hi);
}

// Eight FP16 scores of a row from slot i0 as raw halves (one 16-byte load when aligned and
// inside [0, n)); -inf (0xFC00) past n.
__device__ __forceinline__ uint4 LoadRaw8(const fp16_t* row, int32_t i0, int32_t n, bool vec) {
  if (vec && i0 + 8 <= n) return *reinterpret_cast<const uint4*>(row + i0);
  uint32_t w[4];
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    const uint32_t a = i0 + 2 * k < n ? uint32_t(row[i0 + 2 * k]) : 0xFC00u;
    const uint32_t b = i0 + 2 * k + 1 < n ? uint32_t(row[i0 + 2 * k + 1]) : 0xFC00u;
    w[k] = a | (b << 16);
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}
// The first n of 8 raw FP16 scores (all for n >= 8), the rest -inf (0xFC00), as LoadRaw8
// bounded at n gives them.
__device__ __forceinline__ uint4 Raw8Below(uint4 r, int32_t n) {
  if (n >= 8) return r;
  uint32_t w[4] = {r.x, r.y, r.z, r.w};
#pragma unroll
  for (int k = 0; k < 4; ++k) {
    if (2 * k >= n) w[k] = (w[k] & 0xFFFF0000u) | 0xFC00u;
    if (2 * k + 1 >= n) w[k] = (w[k] & 0x0000FFFFu) | 0xFC000000u;
  }
  return make_uint4(w[0], w[1], w[2], w[3]);
}

// Whether candidate slot i of a chunk ending at c1 is a valid row of the pair: inside the
// sequence and (growing) on a candidate page.
__device__ __forceinline__ bool SlotIsCandidate(const int32_t* pages, const uint8_t* in_set,
                                                int32_t ps, int32_t len, int32_t c1,
                                                int32_t i) {
  if (i >= c1 || pages[i / ps] * ps + i % ps >= len) return false;
  return !in_set || in_set[i / ps] != 0;
}

// Bit k: candidate slot i0 + k (i0 a multiple of 8) is a valid row of the pair (see
// SlotIsCandidate); pages of a multiple of 8 rows hold the 8 slots in one page.
__device__ __forceinline__ uint32_t CandidateMask8(const int32_t* pages, const uint8_t* in_set,
                                                   int32_t ps, int32_t len, int32_t c1,
                                                   int32_t i0) {
  uint32_t vmask = 0;
  if (i0 >= c1) return 0;
  if ((ps & 7) == 0) {
    const int32_t pg = i0 / ps;
    const int32_t pos0 = pages[pg] * ps + i0 % ps;
    if (!in_set || in_set[pg] != 0) {
#pragma unroll
      for (int k = 0; k < 8; ++k) {
        if (i0 + k < c1 && pos0 + k < len) vmask |= 1u << k;
      }
    }
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (SlotIsCandidate(pages, in_set, ps, len, c1, i0 + k)) vmask |= 1u << k;
    }
  }
  return vmask;
}

// Warp j < G of a block of (sequence, KV head): head j's mode and level-1 boundary bin B1
// (and, with v2 given, the level-2 sub-bin B2 and the head's kept mass). Lane 0 returns
// the results; every lane runs the shuffles.
__device__ __forceinline__ int WarpHeadThreshold(const PrunerParams& params,
                                                 const PruneShape& shape,
                                                 const uint32_t* head_max, const HistWork& hw,
                                                 int32_t s, int32_t sq, bool level2, float* mx,
                                                 int* b1, int* b2, u64* kept_mass) {
  // The histogram rows first (every head has them), so that their round trip overlaps the
  // head max's and the NaN flag's instead of following it: the kept and boundary passes'
  // blocks start with this chain.
  u64 v1[8], v2[8], total, before, before2;
  WarpLoadHist(hw.hist1 + int64_t(sq) * kHistBins, v1);
  if (level2) WarpLoadHist(hw.hist2 + int64_t(sq) * kHistBins, v2);
  const int mode = HeadMode(params, shape, head_max, hw, s, sq, mx);
  // The target and both bins before the mode's test (unused unless top-p): their shuffles
  // cannot move into the test's branch, so the rows' loads stay ahead of it. With the
  // shuffles behind the test, the compiler moved the loads there too.
  // hist2 splits bin B1 exactly (the same fixed-point masses), so the level-2 target
  // target - before <= hist1[B1] is always reached (and 0 <= before <= target in any case).
  const u64 target = WarpTarget(v1, HeadP(params, shape, s, sq), &total);
  const int bin1 = WarpFindBin(v1, target, &before);
  const int bin2 = level2 ? WarpFindBin(v2, target - before, &before2) : 0;
  *b1 = 0;
  *b2 = 0;
  *kept_mass = 0;
  if (mode != kModeTopP) return mode;
  if (!target) return kModeNone;
  *b1 = bin1;
  if (level2) {
    // Kept mass: the bins above B1 and the sub-bins up to B2 (sums of the same Fixed(w) the
    // old kept pass added per candidate).
    *b2 = bin2;
    const int lane = threadIdx.x & 31;
    u64 at_b2 = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) at_b2 = (lane * 8 + k == *b2) ? v2[k] : at_b2;
    at_b2 = WarpSumU64(at_b2);
    *kept_mass = before + before2 + at_b2;
  }
  return mode;
}

// Per query head of a (sequence, KV head) block, in shared memory: what the head does and
// its thresholds (WarpHeadThreshold), the scores the kept pass may skip (below `skip`, half2
// bits: past the boundary bin, see AllBelow), and the block's counters.
struct ChunkHeads {
  int mode[kMaxGroup], b1[kMaxGroup], b2[kMaxGroup];
  float mx[kMaxGroup];
  uint32_t skip[kMaxGroup], keep[kMaxGroup];  // BoundaryBinEdges
  int count[kMaxGroup], bnd[kMaxGroup];
};

// Fills `ch` for the G heads from sq0 (a warp per head; level2: B2 too, and block x = 0
// writes each top-p head's kept mass). The caller synchronizes before reading it.
__device__ __forceinline__ void LoadChunkHeads(ChunkHeads& ch, const PrunerParams& params,
                                               const PruneShape& shape,
                                               const uint32_t* head_max, const HistWork& hw,
                                               int32_t s, int32_t sq0, int G, bool level2) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  for (int jw = warp; jw < G; jw += int(blockDim.x >> 5)) {  // warp-uniform
    float mx = 0.0f;
    int b1 = 0, b2 = 0;
    u64 kept_mass = 0;
    const int mode =
        WarpHeadThreshold(params, shape, head_max, hw, s, sq0 + jw, level2, &mx, &b1, &b2,
                          &kept_mass);
    if (lane == 0) {
      ch.mode[jw] = mode;
      ch.b1[jw] = b1;
      ch.b2[jw] = b2;
      ch.mx[jw] = mx;
      const BinEdges edges = BoundaryBinEdges(mx, b1);
      ch.skip[jw] = edges.skip;
      ch.keep[jw] = edges.keep;
      ch.count[jw] = 0;
      ch.bnd[jw] = 0;
      if (level2 && blockIdx.x == 0 && mode == kModeTopP) hw.kept_mass[sq0 + jw] = kept_mass;
    }
  }
}

// Every thread of a block: prefetches into L2 the 128-byte lines of slots [c0, c1) of the
// score rows of heads sq0 .. sq0 + G - 1 (64 FP16 scores a line) and of the page entries of
// those slots, so that the block's loads after its dependent prologue (head max, histogram
// rows) wait on L2 rather than DRAM.
__device__ __forceinline__ void PrefetchChunk(const fp16_t* scores, int32_t cand_stride,
                                              int32_t sq0, int G, const int32_t* pages,
                                              int32_t ps, int32_t c0, int32_t c1) {
  const int32_t lines = (c1 - c0 + 63) / 64;
  for (int32_t e = threadIdx.x; e < G * lines; e += blockDim.x) {
    const int32_t j = e / lines, l = e % lines;
    PrefetchL2(scores + int64_t(sq0 + j) * cand_stride + c0 + l * 64);
  }
  const int32_t p0 = c0 / ps, p1 = (c1 - 1) / ps;  // 32 page entries a line
  for (int32_t p = p0 + 32 * int32_t(threadIdx.x); p <= p1; p += 32 * int32_t(blockDim.x)) {
    PrefetchL2(pages + p);
  }
}

// Boundary entries of a (query head, kept chunk): the chunk offset (< 2^16) and the level-2
// sub-bin (<< 16) of each candidate in the boundary bin B1. A chunk with more than kBndCap
// of them (a flat head) records only the count; BoundaryKernel then rescans its scores.
constexpr int kBndCap = 512;
static_assert(kKeptChunk <= 65536, "chunk offsets fit 16 bits");

}  // namespace twl::cuda

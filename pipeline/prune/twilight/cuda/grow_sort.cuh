// Block-wide sort of a pair's ranked pages by key and the level cuts over it, for the
// sorted growth search and the sorted seed list (prune_grow.cuh).
#pragma once

#include "pipeline/prune/twilight/cuda/grow_common.cuh"

namespace twl::cuda {

constexpr int kSortThreads = 512;
constexpr int kSortItems = 16;
constexpr int kSortPages = kSortThreads * kSortItems;

struct Double2Sum {
  __device__ __forceinline__ double2 operator()(const double2& a, const double2& b) const {
    return make_double2(a.x + b.x, a.y + b.y);
  }
};

// Block-wide, for the sorted kernels: counts the ranked items (m), sorts (key, page)
// descending (blocked: thread t holds ranks kSortItems t ..; unranked items carry key 0,
// below every ranked key) and returns this thread's level ends: bit k when rank
// t * kSortItems + k < m is the last of its key (a whole-level prefix ends there).
// Tmp: a shared union with BlockRadixSort's .sort and an int BlockScan's .iscan.
// Keys are sorted relative to the smallest ranked key (key - min + 1, unranked 0), on only
// the bits that span them: a pair's bounds share their leading bits, so the sort takes 6-7
// passes of 4 bits instead of 8. `range`: two shared words.
template <typename Tmp>
__device__ __forceinline__ uint32_t SortLevels(uint32_t (&key)[kSortItems],
                                               int32_t (&page)[kSortItems], int ranked,
                                               Tmp& tmp, uint32_t* first_key, uint32_t* range,
                                               int* m_out) {
  using Sort = cub::BlockRadixSort<uint32_t, kSortThreads, kSortItems, int32_t>;
  using ScanI = cub::BlockScan<int, kSortThreads>;
  const int t = threadIdx.x;
  if (t == 0) {
    range[0] = 0xffffffffu;  // min ranked key
    range[1] = 0u;           // max ranked key
  }
  __syncthreads();
  {
    uint32_t lo = 0xffffffffu, hi = 0u;
#pragma unroll
    for (int k = 0; k < kSortItems; ++k) {
      if (key[k]) {
        lo = min(lo, key[k]);
        hi = max(hi, key[k]);
      }
    }
    if (hi) {
      atomicMin(&range[0], lo);
      atomicMax(&range[1], hi);
    }
  }
  int m = 0;
  {
    int unused;
    ScanI(tmp.iscan).ExclusiveSum(ranked, unused, m);  // its barriers publish range
  }
  __syncthreads();
  const uint32_t kmin = range[0];
  const uint32_t span = range[1] >= kmin ? range[1] - kmin + 1u : 1u;  // no ranked key: 1
  const int bits = span == 0u ? 32 : 32 - __clz(span);  // span wraps only for the full range
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) key[k] = key[k] ? key[k] - kmin + 1u : 0u;
  Sort(tmp.sort).SortDescending(key, page, 0, bits);
  first_key[t] = key[0];
  __syncthreads();
  uint32_t ends = 0;
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    const int r = t * kSortItems + k;
    const uint32_t next =
        k + 1 < kSortItems ? key[k + 1] : (t + 1 < kSortThreads ? first_key[t + 1] : 0u);
    if (r < m && (r + 1 == m || next != key[k])) ends |= 1u << k;
  }
  *m_out = m;
  return ends;
}

// For the sorted kernels, from SortLevels' level ends: the largest whole-level prefix of at
// most `cap` ranked pages (K = 0 always qualifies). cap_k: a shared word the caller zeroed
// (and synchronized) before; every thread calls it and gets the same K.
__device__ __forceinline__ int LevelsWithin(uint32_t ends, int32_t cap, int* cap_k) {
  const int t = threadIdx.x;
  uint32_t fits = 0;
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    if (((ends >> k) & 1u) && t * kSortItems + k + 1 <= cap) fits |= 1u << k;
  }
  if (fits) atomicMax(cap_k, t * kSortItems + 32 - __clz(fits));
  __syncthreads();
  return *cap_k;
}

// Flags (by page) the pages of the first K sorted ranks (blocked, as SortLevels leaves them).
__device__ __forceinline__ void FlagSortedPrefix(const int32_t (&page)[kSortItems], int K,
                                                 uint8_t* in_flag) {
  const int t = threadIdx.x;
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    if (t * kSortItems + k < K) in_flag[page[k]] = 1;
  }
}

using SortKeys = cub::BlockRadixSort<uint32_t, kSortThreads, kSortItems, int32_t>;
using SortScanF = cub::BlockScan<double2, kSortThreads>;
using SortScanI = cub::BlockScan<int, kSortThreads>;

}  // namespace twl::cuda

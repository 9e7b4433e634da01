// Growing Quest's candidate lists (prune_grow.cuh): every page (ListAllKernel) or the stage-1
// seed (SeedListKernel by radix cuts, SeedListSortedKernel by one sort, the same list).
#pragma once

#include "pipeline/prune/twilight/cuda/grow_common.cuh"
#include "pipeline/prune/twilight/cuda/grow_sort.cuh"

namespace twl::cuda {

// One stage (the launcher's choice when scoring every page costs less than the seed
// stage's fixed latency, e.g. few pairs): the list is every page, need = 0. Grid: x = page
// chunks of kMassThreads, y = (sequence, KV head).
__global__ void __launch_bounds__(kMassThreads)
    ListAllKernel(SelectionView sel, GrowWork work) {
  const int32_t pair = blockIdx.y;
  const int32_t n = sel.count[pair];
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) {
    work.list_pages[int64_t(pair) * sel.max_select + i] = i;
    work.list_pos[int64_t(pair) * sel.max_select + i] = i;
  }
  if (i == 0) {
    work.list_count[pair] = n;
    work.need[pair] = 0;
  }
}

// One block per (sequence, KV head): the stage-1 list (forced pages + the largest level set
// of at most `seed` ranked pages, ascending), list_pos, need = 0.
__global__ void __launch_bounds__(kGrowThreads)
    SeedListKernel(PageGeometry g, BatchView batch, SelectionView sel, PruneShape shape,
                   int32_t seed, GrowWork work) {
  __shared__ GrowSmem sm;
  __shared__ int scan[33];
  const int32_t pair = blockIdx.x;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t G = shape.group;
  const int32_t n = sel.count[pair];
  const int32_t sq0 = s * batch.num_q_heads + h * G;
  const int32_t cap = SeedCap(seed, n, sel, pair);
  const KeyCut cut = CountCut(sm, n, cap, [&](int32_t i, uint32_t* key) {
    bool forced;
    *key = GrowKey(sel, sq0, G, i, &forced);
    return !forced;
  });
  int32_t* list = work.list_pages + int64_t(pair) * sel.max_select;
  int32_t* pos = work.list_pos + int64_t(pair) * sel.max_select;
  int base = 0;
  for (int32_t b0 = 0; b0 < n; b0 += blockDim.x) {
    const int32_t i = b0 + threadIdx.x;
    bool in = false;
    if (i < n) {
      bool forced;
      const uint32_t key = GrowKey(sel, sq0, G, i, &forced);
      in = forced || cut.In(key);
    }
    int total;
    const int at = base + BlockExclusiveSum(in ? 1 : 0, scan, &total);
    if (i < n) {
      pos[i] = in ? at : -1;
      if (in) list[at] = i;
    }
    base += total;
  }
  if (threadIdx.x == 0) {
    work.list_count[pair] = base;
    work.need[pair] = 0;
  }
}

// SeedListKernel for pairs of at most kSortPages pages: one sort of the ranked pages by key
// instead of CountCut's radix passes; the cut is the largest key boundary within the cap,
// an integer decision, so the list is the same as SeedListKernel's. One scan writes it.
__global__ void __launch_bounds__(kSortThreads, 1)
    SeedListSortedKernel(PageGeometry g, BatchView batch, SelectionView sel, PruneShape shape,
                         int32_t seed, GrowWork work) {
  using Sort = cub::BlockRadixSort<uint32_t, kSortThreads, kSortItems, int32_t>;
  using ScanI = cub::BlockScan<int, kSortThreads>;
  __shared__ union {
    typename Sort::TempStorage sort;
    typename ScanI::TempStorage iscan;
  } tmp;
  __shared__ uint8_t in_flag[kSortPages];  // by page: listed
  __shared__ uint32_t first_key[kSortThreads];
  __shared__ uint32_t key_range[2];
  __shared__ int cap_k;
  const int32_t pair = blockIdx.x;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t G = shape.group;
  const int32_t n = sel.count[pair];  // <= kSortPages
  const int32_t sq0 = s * batch.num_q_heads + h * G;
  const int t = threadIdx.x;
  const int32_t cap = SeedCap(seed, n, sel, pair);
  for (int32_t i = t; i < kSortPages; i += blockDim.x) in_flag[i] = 0;
  if (t == 0) cap_k = 0;
  __syncthreads();
  uint32_t key[kSortItems];
  int32_t page[kSortItems];
  int ranked = 0;
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    const int32_t i = t * kSortItems + k;
    key[k] = 0u;  // below every ranked key
    page[k] = -1;
    if (i >= n) continue;
    bool forced;
    const uint32_t kk = GrowKey(sel, sq0, G, i, &forced);
    if (forced) {
      in_flag[i] = 1;
    } else {
      key[k] = kk;
      page[k] = i;
      ++ranked;
    }
  }
  int m = 0;
  const uint32_t ends = SortLevels(key, page, ranked, tmp, first_key, key_range, &m);
  FlagSortedPrefix(page, LevelsWithin(ends, cap, &cap_k), in_flag);
  __syncthreads();
  // Ascending list: thread t lists pages [16 t, 16 t + 16).
  int cnt = 0;
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    const int32_t i = t * kSortItems + k;
    cnt += i < n && in_flag[i] ? 1 : 0;
  }
  int at = 0, total = 0;
  __syncthreads();  // tmp reuse after the sort
  ScanI(tmp.iscan).ExclusiveSum(cnt, at, total);
  int32_t* list = work.list_pages + int64_t(pair) * sel.max_select;
  int32_t* pos = work.list_pos + int64_t(pair) * sel.max_select;
#pragma unroll
  for (int k = 0; k < kSortItems; ++k) {
    const int32_t i = t * kSortItems + k;
    if (i >= n) continue;
    if (in_flag[i]) {
      pos[i] = at;
      list[at++] = i;
    } else {
      pos[i] = -1;
    }
  }
  if (t == 0) {
    work.list_count[pair] = total;
    work.need[pair] = 0;
  }
}

}  // namespace twl::cuda

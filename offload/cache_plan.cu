// Device side of the GPU hot-page cache: the policy of cache/gpu_page_cache.h (admission,
// hit pinning, LRU victims by age histogram) run over the pruner's kept lists without the
// host, plus invalidation, appended-row mirroring and the merge of direct-attended units.
//
// Plan of one group = a memset and 3 kernels (the grid-wide steps need each other's results):
//   CountMark   distinct pages per unit; when the group surely fits in the free capacity
//               (the usual case) also marks every block (claims need_stamp; resident ->
//               hit, slot re-stamped; else -> missing list); the last block to finish runs
//               the admission and resets the group's counters. An all-hit group is done here.
//   MarkHistogram  (returns at once without misses) the marking when the group might not
//               fit (admitted units only), then age buckets of the evictable slots; the last
//               block finds the cutoff bucket.
//   Assign      (returns at once without misses) evictable slots above the cutoff (and a
//               quota of it) become victims: each takes the next missing block, evicting its
//               old one, and emits a fetch entry; stops when every miss has a slot.
// Every counter that many threads bump is aggregated per warp or block first (thousands of
// same-address global atomics per group were the old plan's cost).
// Victims inside one bucket are taken in arrival order (atomics), so which slot a block gets
// may differ from the host model; the invariants (pinned slots untouched, LRU up to bucket
// ties, admitted blocks resident) are the same.
#include <cuda_runtime.h>

#include <algorithm>

#include "gpu/device.h"
#include "offload/cache_plan.h"
#include "offload/cuda_check.cuh"

namespace twl {
namespace {

using offload_cuda::AsStream;
using offload_cuda::LaunchStatus;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
constexpr int kTokensPerItem = 512;  // kept tokens one warp scans per work item


int32_t GridFor(int64_t warp_items, int32_t blocks_per_sm = 8) {
  const int64_t blocks = (warp_items + kWarps - 1) / kWarps;
  return int32_t(std::clamp<int64_t>(blocks, 1, int64_t(gpu::SmCount()) * blocks_per_sm));
}

// True in exactly one thread block: the last one of the grid to get here. Every block's
// global writes before the call are visible to that block afterwards.
__device__ bool LastBlockDone(int32_t* ticket) {
  __shared__ bool last;
  __syncthreads();
  if (threadIdx.x == 0) {
    __threadfence();
    last = atomicAdd(ticket, 1) == int32_t(gridDim.x) - 1;
    if (last) *ticket = 0;  // ready for the next kernel that uses it
  }
  __syncthreads();
  if (last) __threadfence();
  return last;
}

// Scans the kept tokens of work item (unit, chunk) and calls f(lane_has_block, page_index)
// for every lane of every 32-token step, where a lane "has a block" when its token is the
// first kept token of its page.
template <typename F>
__device__ void ForEachBlockStart(const PageGeometry& g, const int32_t* tokens, int32_t count,
                                  int32_t chunk, F f) {
  const int lane = threadIdx.x & 31;
  const int32_t begin = chunk * kTokensPerItem;
  const int32_t end = min(count, begin + kTokensPerItem);
  for (int32_t base = begin; base < end; base += 32) {
    const int32_t i = base + lane;
    bool start = false;
    int32_t page = 0;
    if (i < end) {
      page = tokens[i] / g.page_size;
      start = i == 0 || tokens[i - 1] / g.page_size != page;
    }
    f(start, page);
  }
}

// Marks the block starts of one 32-token step (every lane of the warp calls it, `start`
// per lane): each block claims need_stamp (atomicExch: one owner even when forked
// sequences share it); resident -> hit, slot re-stamped; else -> appended to `missing`.
// Counts are aggregated per warp (one atomic per warp and counter, not per block: a group
// marks thousands of blocks into the same counters).
__device__ void MarkStep(const DeviceCacheState& cache, CacheStamps st, bool start, int64_t b,
                         int* s_needed, int* s_hits, int32_t* misses, int32_t* error,
                         int32_t* missing) {
  const int lane = threadIdx.x & 31;
  bool claim = false, hit = false, miss = false, bad = false;
  if (start) {
    if (b < 0 || b >= cache.num_blocks) {
      bad = true;
    } else if (atomicExch(&cache.d_need_stamp[b], st.current) != st.current) {
      claim = true;
      const int32_t slot = cache.d_slot_of_block[b];
      if (slot >= 0) {
        cache.d_last_use[slot] = st.current;
        hit = true;
      } else {
        miss = true;
      }
    }
  }
  const unsigned mc = __ballot_sync(~0u, claim), mh = __ballot_sync(~0u, hit);
  const unsigned mm = __ballot_sync(~0u, miss), mb = __ballot_sync(~0u, bad);
  if (lane == 0) {
    if (mc) atomicAdd(s_needed, __popc(mc));
    if (mh) atomicAdd(s_hits, __popc(mh));
    if (mb) atomicExch(error, 2);
  }
  if (mm) {
    const int leader = __ffs(mm) - 1;
    int32_t base = 0;
    if (lane == leader) base = atomicAdd(misses, __popc(mm));
    base = __shfl_sync(~0u, base, leader);
    if (miss) {
      const int32_t k = base + __popc(mm & ((1u << lane) - 1u));
      if (k < cache.num_slots) missing[k] = int32_t(b);
    }
  }
}

// Over the group's units, block-wide (every thread gets both): sum of min(kept tokens, pages
// of the unit's sequence) (bounds the group's distinct blocks) and the largest kept count.
struct UnitScan {
  int64_t block_bound;
  int32_t max_count;
};
__device__ UnitScan ScanUnits(const PageGeometry& g, const BatchView& batch,
                              const int32_t* counts, int32_t num_units) {
  __shared__ unsigned long long total;
  __shared__ int32_t most;
  if (threadIdx.x == 0) {
    total = 0;
    most = 0;
  }
  __syncthreads();
  int64_t v = 0;
  int32_t m = 0;
  for (int32_t u = threadIdx.x; u < num_units; u += kThreads) {
    const int32_t count = counts[u];
    v += min(count, batch.NumPages(g, u / g.num_kv_heads));
    m = max(m, count);
  }
  for (int o = 16; o > 0; o >>= 1) {
    v += __shfl_xor_sync(~0u, v, o);
    m = max(m, __shfl_xor_sync(~0u, m, o));
  }
  if ((threadIdx.x & 31) == 0) {
    if (v) atomicAdd(&total, static_cast<unsigned long long>(v));
    if (m) atomicMax(&most, m);
  }
  __syncthreads();
  return UnitScan{int64_t(total), most};
}

// Work items (unit, chunk of kTokensPerItem kept tokens) in chunk-major order, so that the
// items that can hold tokens (chunk < ceil(max count / kTokensPerItem)) come first and a
// warp stops at the first item past them instead of testing every empty one.
__device__ __forceinline__ int64_t LiveItems(int32_t num_units, int32_t max_count) {
  return int64_t(num_units) * ((int64_t(max_count) + kTokensPerItem - 1) / kTokensPerItem);
}

// Kernel 1 of the plan. Every block first decides (redundantly, from the kept counts) whether
// the group surely fits: sum over units of min(kept tokens, pages of its sequence) bounds
// its distinct blocks, so when it is <= the free capacity first-fit admits every unit and
// the blocks can be marked in the same pass that counts them (`fits`, the usual case).
// Otherwise this pass only counts, and kernel 2 marks the admitted units.
// Per work item (unit, chunk of kept tokens): distinct pages (a block starts where a kept
// token's page differs from its predecessor's: kept lists are ascending) into unit_blocks.
// The last block to finish runs the admission (all units when `fits`; else first-fit over
// the units, serial on one thread but from shared memory) and resets the group's counters.
__global__ void __launch_bounds__(kThreads)
    CountMarkKernel(PageGeometry g, BatchView batch, KeptView kept, int32_t num_units,
                    CacheStamps st, DeviceCacheState cache,
                    const DeviceGroupCounters* prev, DeviceGroupCounters* c,
                    int32_t* unit_blocks, int32_t* count_cache, int32_t* count_direct,
                    int32_t* missing) {
  __shared__ int s_needed, s_hits;
  __shared__ int32_t s_n[kThreads];
  __shared__ uint8_t s_admit[kThreads];
  const int32_t H = g.num_kv_heads;
  const int32_t capacity = cache.num_slots - (prev ? prev->pinned : 0);
  const UnitScan scan = ScanUnits(g, batch, kept.count, num_units);
  const bool fits = scan.block_bound <= int64_t(capacity);
  if (threadIdx.x == 0) s_needed = s_hits = 0;
  __syncthreads();

  const int64_t items = LiveItems(num_units, scan.max_count);
  const int lane = threadIdx.x & 31;
  for (int64_t it = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); it < items;
       it += int64_t(gridDim.x) * kWarps) {
    const int32_t u = int32_t(it % num_units), chunk = int32_t(it / num_units);
    const int32_t count = min(kept.count[u], kept.max_kept);  // never past the list
    if (chunk * kTokensPerItem >= count) continue;
    const int32_t* row = batch.page_table + int64_t(u / H) * batch.max_pages;
    const int32_t h = u % H;
    int32_t n = 0;
    ForEachBlockStart(g, kept.tokens + int64_t(u) * kept.max_kept, count, chunk,
                      [&](bool start, int32_t page) {
                        n += __popc(__ballot_sync(~0u, start));
                        if (!fits) return;
                        const int64_t b = start ? int64_t(row[page]) * H + h : 0;
                        MarkStep(cache, st, start, b, &s_needed, &s_hits, &c->acc_misses,
                                 &c->acc_error, missing);
                      });
    if (lane == 0 && n) atomicAdd(&unit_blocks[u], n);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    if (s_needed) atomicAdd(&c->acc_needed, s_needed);
    if (s_hits) atomicAdd(&c->acc_hits, s_hits);
  }
  if (!LastBlockDone(&c->ticket)) return;
  for (int i = threadIdx.x; i < kCacheAgeBuckets; i += kThreads) c->hist[i] = 0;
  int32_t direct = 0, direct_blocks = 0;
  if (fits) {
    for (int32_t u = threadIdx.x; u < num_units; u += kThreads) {
      count_cache[u] = kept.count[u];
      count_direct[u] = 0;
    }
  } else {
    // First-fit in unit order, kThreads units at a time: loads in parallel, the decisions
    // on one thread from shared memory, the writes in parallel.
    int32_t used = 0;
    for (int32_t u0 = 0; u0 < num_units; u0 += kThreads) {
      const int32_t u = u0 + threadIdx.x;
      if (u < num_units) s_n[threadIdx.x] = __ldcg(&unit_blocks[u]);
      __syncthreads();
      if (threadIdx.x == 0) {
        const int32_t m = min(kThreads, num_units - u0);
        for (int32_t i = 0; i < m; ++i) {
          const int32_t n = s_n[i];
          const bool admit = used + n <= capacity;
          s_admit[i] = admit;
          if (admit) {
            used += n;
          } else {
            ++direct;
            direct_blocks += n;
          }
        }
      }
      __syncthreads();
      if (u < num_units) {
        const int32_t count = kept.count[u];
        count_cache[u] = s_admit[threadIdx.x] ? count : 0;
        count_direct[u] = s_admit[threadIdx.x] ? 0 : count;
      }
      __syncthreads();  // s_n / s_admit are rewritten by the next chunk
    }
  }
  if (threadIdx.x == 0) {
    c->capacity = capacity;
    c->units_direct = direct;
    c->direct_blocks = direct_blocks;
    c->marked = fits ? 1 : 0;
    c->needed = fits ? __ldcg(&c->acc_needed) : 0;
    c->hits = fits ? __ldcg(&c->acc_hits) : 0;
    c->misses = fits ? __ldcg(&c->acc_misses) : 0;
    c->error = fits ? __ldcg(&c->acc_error) : 0;
    c->acc_needed = c->acc_hits = c->acc_misses = c->acc_error = 0;
    c->fetched = c->evictions = c->pinned = 0;
    c->cutoff_bucket = kCacheAgeBuckets;
    c->cutoff_quota = c->cutoff_taken = 0;
  }
}

// Cutoff of the victim search from a complete age histogram in shared memory (thread 0):
// buckets above it are evicted whole, `quota` slots of it.
__device__ void FindCutoff(const int32_t* hist, DeviceCacheState cache, DeviceGroupCounters* c) {
  const int32_t misses = __ldcg(&c->misses);
  const int32_t m = min(misses, cache.num_slots);
  int32_t cum = 0, cutoff = -1, quota = 0;  // -1: not enough evictable slots (error)
  for (int32_t b = kCacheAgeBuckets - 1; b >= 0; --b) {
    const int32_t h = hist[b];
    if (cum + h >= m) {
      cutoff = b;
      quota = m - cum;
      break;
    }
    cum += h;
  }
  if (cutoff < 0 || misses > cache.num_slots) c->error = 1;
  c->cutoff_bucket = cutoff;
  c->cutoff_quota = quota;
}

// Kernel 2. No misses (after kernel 1 marked): nothing to do. Kernel 1 marked: age
// histogram of the evictable slots over the grid (per-warp aggregated shared atomics),
// the last block finds the cutoff. Kernel 1 did not mark (the group may not fit; rare):
// mark the admitted units over the grid, then the last block builds the histogram alone
// (the slow path of a cache too small for one group) and finds the cutoff.
__global__ void __launch_bounds__(kThreads)
    MarkHistogramKernel(PageGeometry g, BatchView batch, KeptView kept, int32_t num_units,
                        CacheStamps st, DeviceCacheState cache,
                        const int32_t* count_cache, DeviceGroupCounters* c, int32_t* missing) {
  __shared__ int32_t hist[kCacheAgeBuckets];
  __shared__ int s_needed, s_hits;
  const bool marked = c->marked != 0;
  if (marked && c->misses == 0) return;  // every block sees the same: no ticket taken
  for (int i = threadIdx.x; i < kCacheAgeBuckets; i += kThreads) hist[i] = 0;
  if (threadIdx.x == 0) s_needed = s_hits = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t warp0 = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  if (marked) {
    for (int64_t base = warp0 * 32; base < cache.num_slots; base += warps * 32) {
      const int64_t s = base + lane;
      bool ev = false;
      int32_t bucket = 0;
      if (s < cache.num_slots) {
        const uint32_t lu = cache.d_last_use[s];
        ev = SlotEvictable(lu, st);
        if (ev) bucket = SlotAgeBucket(cache.d_block_of_slot[s], lu, st);
      }
      // Most evictable slots share a bucket (long-unused): one shared atomic per bucket.
      const unsigned peers = __match_any_sync(~0u, ev ? bucket : kCacheAgeBuckets + lane);
      if (ev && lane == __ffs(peers) - 1) atomicAdd(&hist[bucket], __popc(peers));
    }
    __syncthreads();
    for (int i = threadIdx.x; i < kCacheAgeBuckets; i += kThreads) {
      if (hist[i]) atomicAdd(&c->hist[i], hist[i]);
    }
    if (!LastBlockDone(&c->ticket)) return;
    for (int i = threadIdx.x; i < kCacheAgeBuckets; i += kThreads) hist[i] = __ldcg(&c->hist[i]);
    __syncthreads();
    if (threadIdx.x == 0) FindCutoff(hist, cache, c);
    return;
  }
  const int32_t H = g.num_kv_heads;
  const int64_t items = LiveItems(num_units, ScanUnits(g, batch, count_cache, num_units).max_count);
  for (int64_t it = warp0; it < items; it += warps) {
    const int32_t u = int32_t(it % num_units), chunk = int32_t(it / num_units);
    const int32_t count = min(count_cache[u], kept.max_kept);
    if (chunk * kTokensPerItem >= count) continue;
    const int32_t* row = batch.page_table + int64_t(u / H) * batch.max_pages;
    const int32_t h = u % H;
    ForEachBlockStart(g, kept.tokens + int64_t(u) * kept.max_kept, count, chunk,
                      [&](bool start, int32_t page) {
                        const int64_t b = start ? int64_t(row[page]) * H + h : 0;
                        MarkStep(cache, st, start, b, &s_needed, &s_hits, &c->misses,
                                 &c->error, missing);
                      });
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    if (s_needed) atomicAdd(&c->needed, s_needed);
    if (s_hits) atomicAdd(&c->hits, s_hits);
  }
  if (!LastBlockDone(&c->ticket)) return;
  if (__ldcg(&c->misses) == 0) return;
  for (int32_t s = threadIdx.x; s < cache.num_slots; s += kThreads) {
    const uint32_t lu = __ldcg(&cache.d_last_use[s]);
    if (SlotEvictable(lu, st)) {
      atomicAdd(&hist[SlotAgeBucket(__ldcg(&cache.d_block_of_slot[s]), lu, st)], 1);
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) FindCutoff(hist, cache, c);
}

// Kernel 3. Evictable slots above the cutoff (and a quota of it) become victims: each takes
// the next missing block, evicting its old one, and emits a fetch entry. Claims are
// aggregated per warp, and the scan stops as soon as every miss has its slot (with a few
// misses the victims are found in the first slots scanned). No misses: only the counters.
__global__ void __launch_bounds__(kThreads)
    AssignKernel(DeviceCacheState cache, CacheStamps st, DeviceGroupCounters* c,
                 const int32_t* missing, FetchEntry* fetch) {
  const int32_t m = min(c->misses, cache.num_slots);
  if (m <= 0) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      c->fetched = 0;
      c->pinned = c->hits;
    }
    return;
  }
  const int32_t cutoff = c->cutoff_bucket, quota = c->cutoff_quota;
  const int lane = threadIdx.x & 31;
  const unsigned below = (1u << lane) - 1u;
  const int64_t warp0 = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  for (int64_t base = warp0 * 32; base < cache.num_slots; base += warps * 32) {
    int32_t done = 0;
    if (lane == 0) done = __ldcg(&c->fetched) >= m;
    if (__shfl_sync(~0u, done, 0)) break;  // warp-uniform
    const int64_t s = base + lane;
    bool above = false, at = false;
    int32_t old = -1;
    if (s < cache.num_slots) {
      const uint32_t lu = cache.d_last_use[s];
      if (SlotEvictable(lu, st)) {
        old = cache.d_block_of_slot[s];
        const int32_t bucket = SlotAgeBucket(old, lu, st);
        above = bucket > cutoff;
        at = bucket == cutoff;
      }
    }
    const unsigned at_mask = __ballot_sync(~0u, at);
    if (at_mask) {
      const int leader = __ffs(at_mask) - 1;
      int32_t taken = 0;
      if (lane == leader) taken = atomicAdd(&c->cutoff_taken, __popc(at_mask));
      taken = __shfl_sync(~0u, taken, leader);
      at = at && taken + __popc(at_mask & below) < quota;
    }
    const bool victim = above || at;
    const unsigned vm = __ballot_sync(~0u, victim);
    if (!vm) continue;
    const int leader = __ffs(vm) - 1;
    int32_t k0 = 0;
    if (lane == leader) k0 = atomicAdd(&c->fetched, __popc(vm));
    k0 = __shfl_sync(~0u, k0, leader);
    const int32_t k = k0 + __popc(vm & below);
    if (!victim || k >= m) continue;  // k >= m only when the error path took every slot
    const int32_t b = missing[k];
    if (old >= 0) {
      cache.d_slot_of_block[old] = -1;
      atomicAdd(&c->evictions, 1);
    }
    cache.d_slot_of_block[b] = int32_t(s);
    cache.d_block_of_slot[s] = b;
    cache.d_last_use[s] = st.current;
    fetch[k] = FetchEntry{b, int32_t(s)};
  }
  if (!LastBlockDone(&c->ticket)) return;
  if (threadIdx.x == 0) {
    const int32_t fetched = min(__ldcg(&c->fetched), m);
    c->fetched = fetched;
    c->pinned = __ldcg(&c->hits) + fetched;
    if (fetched < __ldcg(&c->misses)) c->error = 1;
  }
}

__global__ void InvalidateKernel(DeviceCacheState cache, const int32_t* pages,
                                 int32_t num_pages, int32_t H) {
  const int64_t n = int64_t(num_pages) * H;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = int64_t(pages[i / H]) * H + i % H;
    if (b < 0 || b >= cache.num_blocks) continue;
    const int32_t s = cache.d_slot_of_block[b];
    if (s < 0) continue;
    cache.d_slot_of_block[b] = -1;
    cache.d_block_of_slot[s] = -1;
    cache.d_last_use[s] = 0;
  }
}

// One warp per (token, KV head): its K row and V row, 16 bytes per lane step.
__global__ void __launch_bounds__(kThreads)
    MirrorRowsKernel(DeviceCacheState cache, PageGeometry g, const uint4* pool,
                     const int32_t* page_id, const int32_t* row, int32_t num_tokens) {
  const int32_t H = g.num_kv_heads;
  const int64_t items = int64_t(num_tokens) * H;
  const int32_t row_vecs = g.head_dim / 8;
  const int64_t block_vecs = g.FpBlockBytes() / 16;
  const int lane = threadIdx.x & 31;
  for (int64_t it = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); it < items;
       it += int64_t(gridDim.x) * kWarps) {
    const int32_t t = int32_t(it / H), h = int32_t(it % H);
    const int64_t b = int64_t(page_id[t]) * H + h;
    if (b < 0 || b >= cache.num_blocks) continue;
    const int32_t slot = cache.d_slot_of_block[b];
    if (slot < 0) continue;
    const int32_t r = row[t];
    const uint4* src = pool + b * block_vecs;
    uint4* dst = reinterpret_cast<uint4*>(cache.d_slots) + int64_t(slot) * block_vecs;
    for (int32_t v = lane; v < 2 * row_vecs; v += 32) {
      const int32_t half = v / row_vecs;  // 0: K row, 1: V row
      const int64_t off = (int64_t(half) * g.page_size + r) * row_vecs + v % row_vecs;
      dst[off] = src[off];
    }
  }
}

// One warp per (segment, KV head): rows [row_begin, row_end) of K and of V, 16-byte steps.
__global__ void __launch_bounds__(kThreads)
    MirrorSegmentsKernel(DeviceCacheState cache, PageGeometry g, const uint4* pool,
                         const AppendSegment* segs, int32_t num_segments) {
  const int32_t H = g.num_kv_heads;
  const int64_t items = int64_t(num_segments) * H;
  const int32_t row_vecs = g.head_dim / 8;
  const int64_t block_vecs = g.FpBlockBytes() / 16;
  const int lane = threadIdx.x & 31;
  for (int64_t it = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); it < items;
       it += int64_t(gridDim.x) * kWarps) {
    const AppendSegment seg = segs[it / H];
    const int64_t b = int64_t(seg.page) * H + int32_t(it % H);
    if (b < 0 || b >= cache.num_blocks) continue;
    const int32_t slot = cache.d_slot_of_block[b];
    if (slot < 0) continue;
    const uint4* src = pool + b * block_vecs;
    uint4* dst = reinterpret_cast<uint4*>(cache.d_slots) + int64_t(slot) * block_vecs;
    const int32_t n = (seg.row_end - seg.row_begin) * row_vecs;  // vectors per half
    for (int32_t v = lane; v < 2 * n; v += 32) {
      const int32_t half = v / n;  // 0: K rows, 1: V rows
      const int64_t off = (int64_t(half) * g.page_size + seg.row_begin) * row_vecs + v % n;
      dst[off] = src[off];
    }
  }
}

__global__ void ScatterDirectKernel(int32_t num_rows, int32_t num_q_heads, int32_t group,
                                    int32_t row_vecs, const int32_t* count_direct,
                                    const uint4* direct_out, uint4* out) {
  const int64_t n = int64_t(num_rows) * row_vecs;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / row_vecs;  // (sequence, query head) row
    const int64_t s = r / num_q_heads, qh = r % num_q_heads;
    const int64_t unit = s * (num_q_heads / group) + qh / group;
    if (count_direct[unit] > 0) out[i] = direct_out[i];
  }
}

}  // namespace

absl::Status LaunchCachePlan(const DeviceCacheState& cache, const CachePlanArgs& a,
                             void* stream) {
  if (a.batch.num_seqs <= 0) return absl::OkStatus();
  if (!cache.d_slot_of_block || !cache.d_block_of_slot || !cache.d_last_use ||
      !cache.d_need_stamp || cache.num_slots <= 0 || !a.d_counters || !a.d_count_cache ||
      !a.d_count_direct || !a.d_unit_blocks || !a.d_missing || !a.d_fetch || !a.kept.tokens ||
      !a.kept.count || !a.batch.page_table || a.kept.max_kept <= 0) {
    return absl::InvalidArgumentError("LaunchCachePlan: null pointer or empty cache");
  }
  cudaStream_t s = AsStream(stream);
  const int32_t units = a.batch.num_seqs * a.g.num_kv_heads;
  const int32_t chunks = (a.kept.max_kept + kTokensPerItem - 1) / kTokensPerItem;
  TWL_CUDA(cudaMemsetAsync(a.d_unit_blocks, 0, sizeof(int32_t) * size_t(units), s));
  // One wave of blocks each (the plan kernels are latency-bound, and an all-hit group's
  // kernels 2 and 3 only launch and return): warps loop over the live items or slots.
  const int32_t grid_units = GridFor(int64_t(units) * chunks, 2);
  CountMarkKernel<<<grid_units, kThreads, 0, s>>>(a.g, a.batch, a.kept, units, a.stamps, cache,
                                                  a.d_prev, a.d_counters, a.d_unit_blocks,
                                                  a.d_count_cache, a.d_count_direct, a.d_missing);
  TWL_RETURN_IF_ERROR(LaunchStatus("CountMarkKernel"));
  // Kernel 2 walks either the kept lists (fallback marking) or the slots (histogram).
  const int64_t slot_warps = (int64_t(cache.num_slots) + 31) / 32;
  const int32_t grid2 = GridFor(std::max(int64_t(units) * chunks, slot_warps), 2);
  MarkHistogramKernel<<<grid2, kThreads, 0, s>>>(a.g, a.batch, a.kept, units, a.stamps, cache,
                                                 a.d_count_cache, a.d_counters, a.d_missing);
  TWL_RETURN_IF_ERROR(LaunchStatus("MarkHistogramKernel"));
  AssignKernel<<<GridFor(slot_warps, 2), kThreads, 0, s>>>(cache, a.stamps, a.d_counters,
                                                           a.d_missing, a.d_fetch);
  return LaunchStatus("AssignKernel");
}

absl::Status LaunchCacheInvalidatePages(const DeviceCacheState& cache, const int32_t* d_pages,
                                        int32_t num_pages, int32_t num_kv_heads, void* stream) {
  if (num_pages <= 0) return absl::OkStatus();
  if (!d_pages || !cache.d_slot_of_block) {
    return absl::InvalidArgumentError("LaunchCacheInvalidatePages: null pointer");
  }
  const int64_t n = int64_t(num_pages) * num_kv_heads;
  const int32_t grid = int32_t(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, 1024));
  InvalidateKernel<<<grid, kThreads, 0, AsStream(stream)>>>(cache, d_pages, num_pages,
                                                           num_kv_heads);
  return LaunchStatus("InvalidateKernel");
}

absl::Status LaunchCacheMirrorRows(const DeviceCacheState& cache, const PageGeometry& g,
                                   const fp16_t* mapped_pool, const int32_t* d_page_id,
                                   const int32_t* d_row, int32_t num_tokens, void* stream) {
  if (num_tokens <= 0) return absl::OkStatus();
  if (!mapped_pool || !d_page_id || !d_row || !cache.d_slots) {
    return absl::InvalidArgumentError("LaunchCacheMirrorRows: null pointer");
  }
  if (g.head_dim % 8 != 0) {
    return absl::InvalidArgumentError("LaunchCacheMirrorRows: head_dim must be a multiple of 8");
  }
  MirrorRowsKernel<<<GridFor(int64_t(num_tokens) * g.num_kv_heads), kThreads, 0,
                     AsStream(stream)>>>(cache, g, reinterpret_cast<const uint4*>(mapped_pool),
                                         d_page_id, d_row, num_tokens);
  return LaunchStatus("MirrorRowsKernel");
}

absl::Status LaunchCacheMirrorSegments(const DeviceCacheState& cache, const PageGeometry& g,
                                       const fp16_t* mapped_pool, const AppendSegment* d_segments,
                                       int32_t num_segments, void* stream) {
  if (num_segments <= 0) return absl::OkStatus();
  if (!mapped_pool || !d_segments || !cache.d_slots) {
    return absl::InvalidArgumentError("LaunchCacheMirrorSegments: null pointer");
  }
  if (g.head_dim % 8 != 0) {
    return absl::InvalidArgumentError("LaunchCacheMirrorSegments: head_dim must be a multiple of 8");
  }
  MirrorSegmentsKernel<<<GridFor(int64_t(num_segments) * g.num_kv_heads), kThreads, 0,
                         AsStream(stream)>>>(cache, g, reinterpret_cast<const uint4*>(mapped_pool),
                                             d_segments, num_segments);
  return LaunchStatus("MirrorSegmentsKernel");
}

absl::Status LaunchScatterDirect(const PageGeometry& g, int32_t num_seqs, int32_t num_q_heads,
                                 const int32_t* d_count_direct, const fp16_t* direct_out,
                                 fp16_t* out, void* stream) {
  if (num_seqs <= 0) return absl::OkStatus();
  if (g.head_dim % 8 != 0 || num_q_heads % g.num_kv_heads != 0) {
    return absl::InvalidArgumentError("LaunchScatterDirect: bad shape");
  }
  const int32_t rows = num_seqs * num_q_heads;
  const int64_t n = int64_t(rows) * (g.head_dim / 8);
  const int32_t grid = int32_t(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, 4096));
  ScatterDirectKernel<<<grid, kThreads, 0, AsStream(stream)>>>(
      rows, num_q_heads, num_q_heads / g.num_kv_heads, g.head_dim / 8, d_count_direct,
      reinterpret_cast<const uint4*>(direct_out), reinterpret_cast<uint4*>(out));
  return LaunchStatus("ScatterDirectKernel");
}

}  // namespace twl

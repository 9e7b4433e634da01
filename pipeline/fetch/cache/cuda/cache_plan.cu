// Device side of the GPU hot-page cache: the policy of cache/gpu_page_cache.h (block values,
// hits, admission by value against the lowest-value victims, blocks not admitted read in
// place) run over the pruner's kept lists without the host, plus invalidation,
// appended-row mirroring and the merge of direct-attended units.
//
// Plan of one group = a memset and 4 kernels (the grid-wide steps need each other's results):
//   CountMark   distinct pages per unit; marks every block (claims need_stamp, adds its kept
//               rows to its value; resident -> hit, slot re-stamped; else a candidate, listed
//               with its rows, its value bucket counted) and the last block to finish moves
//               the counters. An all-hit group is done here.
//   VictimHistogram  (returns at once without candidates) victim keys of the evictable
//               slots; the last block pairs both histograms (PairAdmissions): how many are
//               admitted, and the cuts on both sides.
//   SelectAdmitted  candidates above the cut (and a quota of it) to the fetch list; the
//               others are counted as read in place.
//   Assign      evictable slots below the victim cut (and a quota of it) take the admitted
//               blocks, evicting their old ones; stops when every admitted block has a slot.
// Every counter that many threads bump is aggregated per warp or block first (thousands of
// same-address global atomics per group were the old plan's cost).
// Ties inside one bucket are taken in arrival order (atomics), so which block is admitted
// or evicted may differ from the host model, never how many; the invariants (pinned slots
// untouched, admitted blocks resident, maps inverse) are the same.
#include <cuda_runtime.h>

#include <algorithm>
#include <string>

#include "gpu/device.h"
#include "pipeline/fetch/plan_grid.cuh"
#include "pipeline/fetch/cache/cuda/cache_plan.h"
#include "offload/cuda_check.cuh"

namespace twl {
namespace {

using offload_cuda::AsStream;
using offload_cuda::LaunchStatus;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Kept tokens one warp scans per work item. Small: each 32-token step of a warp is a chain of
// dependent global loads and atomics (~microseconds), so a short chain per warp and many warps
// in flight is what makes the plan cheap (512 took 48 us for an all-hit B = 1 group at 128k).
constexpr int kTokensPerItem = 64;


int32_t GridFor(int64_t warp_items, int32_t blocks_per_sm = 8) {
  return fetch_plan::GridForWarpItems(warp_items, kWarps, blocks_per_sm);
}

using fetch_plan::LastBlockDone;

__device__ __forceinline__ int32_t WarpSum(int32_t v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(~0u, v, o);
  return v;
}

using fetch_plan::WarpClaim;

// Entries exactly at a cut are taken up to `quota` over the whole grid, in claim order
// (`taken` counts them): true for the `at` lanes whose place stays below the quota. Every
// lane of the warp calls it.
__device__ __forceinline__ bool TakeAtCut(bool at, int32_t* taken, int32_t quota) {
  const unsigned at_mask = __ballot_sync(~0u, at);
  if (!at_mask) return false;
  const int32_t place = WarpClaim(taken, at_mask);
  return at && place < quota;
}

// Per-block shared accumulators of the marking pass.
struct MarkAcc {
  int needed, hits, hit_rows, direct, direct_rows;
};

// Marks the block starts of one 32-token step (every lane of the warp calls it, `start`
// per lane, `rows` = the block's kept rows in this unit): each block claims need_stamp
// (atomicExch: one owner even when forked sequences share it) and adds its rows to its value;
// resident -> hit, slot re-stamped; not resident -> a candidate in `missing` (with its rows
// and its value bucket in the group's histogram), unless the previous group reads it in
// place (then in place again) or the list is full (num_slots candidates: in place).
// Counts are aggregated per warp (one atomic per warp and counter).
// Returns the warp's hits (every lane).
__device__ int32_t MarkStep(const DeviceCacheState& cache, CacheStamps st, bool start, int64_t b,
                            int32_t rows, MarkAcc* acc, int32_t* s_mhist, DeviceGroupCounters* c,
                            FetchEntry* missing) {
  const int lane = threadIdx.x & 31;
  bool claim = false, hit = false, cand = false, direct = false, bad = false;
  int32_t bucket = 0;
  if (start) {
    if (b < 0 || b >= cache.num_blocks) {
      bad = true;
    } else {
      const uint32_t old = atomicExch(&cache.d_need_stamp[b], st.current);
      if (old != st.current) {
        claim = true;
        const uint32_t v = BumpValue(cache.d_value[b], st.epoch, uint32_t(rows));
        cache.d_value[b] = v;
        const int32_t slot = cache.d_slot_of_block[b];
        if (slot >= 0) {
          cache.d_last_use[slot] = st.current;
          hit = true;
        } else if (old == st.protect_from) {
          direct = true;  // the previous group reads it in place (first group: never equal)
        } else {
          cand = true;
          bucket = ValueBucket(DecayedValue(v, st.epoch));
        }
      }
    }
  }
  const unsigned mm = __ballot_sync(~0u, cand);
  if (mm) {
    const int32_t k = WarpClaim(&c->acc_listed, mm);
    if (cand) {
      if (k < cache.num_slots) {
        missing[k] = FetchEntry{int32_t(b), rows};
        atomicAdd(&s_mhist[bucket], 1);
      } else {
        direct = true;  // more candidates than slots: the rest cannot be admitted anyway
      }
    }
  }
  const unsigned mc = __ballot_sync(~0u, claim), mh = __ballot_sync(~0u, hit);
  const unsigned md = __ballot_sync(~0u, direct), mb = __ballot_sync(~0u, bad);
  const int32_t hit_rows = WarpSum(hit ? rows : 0), direct_rows = WarpSum(direct ? rows : 0);
  if (lane == 0) {
    if (mc) atomicAdd(&acc->needed, __popc(mc));
    if (mh) {
      atomicAdd(&acc->hits, __popc(mh));
      atomicAdd(&acc->hit_rows, hit_rows);
    }
    if (md) {
      atomicAdd(&acc->direct, __popc(md));
      atomicAdd(&acc->direct_rows, direct_rows);
    }
    if (mb) atomicExch(&c->acc_error, 2);
  }
  return __popc(mh);
}

// Over the group's units, block-wide (every thread gets it): the largest kept count.
__device__ int32_t MaxCount(const int32_t* counts, int32_t num_units) {
  __shared__ int32_t most;
  if (threadIdx.x == 0) most = 0;
  __syncthreads();
  int32_t m = 0;
  for (int32_t u = threadIdx.x; u < num_units; u += kThreads) m = max(m, counts[u]);
  for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(~0u, m, o));
  if ((threadIdx.x & 31) == 0 && m) atomicMax(&most, m);
  __syncthreads();
  return most;
}

// Work items (unit, chunk of kTokensPerItem kept tokens) in chunk-major order, so that the
// items that can hold tokens (chunk < ceil(max count / kTokensPerItem)) come first and a
// warp stops at the first item past them instead of testing every empty one.
__device__ __forceinline__ int64_t LiveItems(int32_t num_units, int32_t max_count) {
  return int64_t(num_units) * ((int64_t(max_count) + kTokensPerItem - 1) / kTokensPerItem);
}

// Kernel 1 of the plan. Per work item (unit, chunk of kept tokens): distinct pages into
// unit_blocks (a block starts where a kept token's page differs from its predecessor's: kept
// lists are ascending) and the marking of every block start (MarkStep), with the block's
// kept rows counted forward from its start (at most page_size tokens, also past the chunk).
// The last block to finish writes the per-unit counts and moves the group's accumulators
// into its counters. An all-hit group is done here.
__global__ void __launch_bounds__(kThreads)
    CountMarkKernel(PageGeometry g, BatchView batch, KeptView kept, int32_t num_units,
                    CacheStamps st, DeviceCacheState cache,
                    const DeviceGroupCounters* prev, DeviceGroupCounters* c,
                    int32_t* unit_blocks, int32_t* count_cache, int32_t* count_direct,
                    FetchEntry* missing, int32_t* unit_hits) {
  __shared__ MarkAcc acc;
  __shared__ int32_t s_mhist[kCacheAgeBuckets];
  const int32_t H = g.num_kv_heads;
  const int32_t max_count = MaxCount(kept.count, num_units);
  if (threadIdx.x == 0) acc = MarkAcc{0, 0, 0, 0, 0};
  for (int i = threadIdx.x; i < kCacheAgeBuckets; i += kThreads) s_mhist[i] = 0;
  __syncthreads();

  const int64_t items = LiveItems(num_units, max_count);
  const int lane = threadIdx.x & 31;
  for (int64_t it = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); it < items;
       it += int64_t(gridDim.x) * kWarps) {
    const int32_t u = int32_t(it % num_units), chunk = int32_t(it / num_units);
    const int32_t count = min(kept.count[u], kept.max_kept);  // never past the list
    if (chunk * kTokensPerItem >= count) continue;
    const int32_t* row = batch.page_table + int64_t(u / H) * batch.max_pages;
    const int32_t h = u % H;
    const int32_t* tokens = kept.tokens + int64_t(u) * kept.max_kept;
    int32_t n = 0, unit_hit = 0;
    const int32_t begin = chunk * kTokensPerItem;
    const int32_t end = min(count, begin + kTokensPerItem);
    for (int32_t base = begin; base < end; base += 32) {
      const int32_t i = base + lane;
      bool start = false;
      int32_t page = 0, rows = 0;
      if (i < end) {
        page = tokens[i] / g.page_size;
        start = i == 0 || tokens[i - 1] / g.page_size != page;
        if (start) {
          rows = 1;
          while (rows < g.page_size && i + rows < count && tokens[i + rows] / g.page_size == page) {
            ++rows;
          }
        }
      }
      n += __popc(__ballot_sync(~0u, start));
      const int64_t b = start ? int64_t(row[page]) * H + h : 0;
      unit_hit += MarkStep(cache, st, start, b, rows, &acc, s_mhist, c, missing);
    }
    if (lane == 0 && n) atomicAdd(&unit_blocks[u], n);
    if (lane == 0 && unit_hit && unit_hits) atomicAdd(&unit_hits[u], unit_hit);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    if (acc.needed) atomicAdd(&c->acc_needed, acc.needed);
    if (acc.hits) atomicAdd(&c->acc_hits, acc.hits);
    if (acc.hit_rows) atomicAdd(&c->acc_hit_rows, acc.hit_rows);
    if (acc.direct) atomicAdd(&c->acc_direct, acc.direct);
    if (acc.direct_rows) atomicAdd(&c->acc_direct_rows, acc.direct_rows);
  }
  for (int i = threadIdx.x; i < kCacheAgeBuckets; i += kThreads) {
    if (s_mhist[i]) atomicAdd(&c->mhist[i], s_mhist[i]);
  }
  if (!LastBlockDone(&c->ticket)) return;
  for (int i = threadIdx.x; i < kCacheAgeBuckets; i += kThreads) c->hist[i] = 0;
  for (int32_t u = threadIdx.x; u < num_units; u += kThreads) {
    count_cache[u] = kept.count[u];
    count_direct[u] = 0;
  }
  if (threadIdx.x == 0) {
    c->capacity = cache.num_slots - (prev ? prev->pinned : 0);
    c->units_direct = 0;
    c->marked = 1;
    c->needed = __ldcg(&c->acc_needed);
    c->hits = __ldcg(&c->acc_hits);
    c->misses = c->needed - c->hits;
    c->error = __ldcg(&c->acc_error);
    c->listed = min(__ldcg(&c->acc_listed), cache.num_slots);
    c->direct_blocks = __ldcg(&c->acc_direct);
    c->direct_rows = __ldcg(&c->acc_direct_rows);
    c->hit_rows = __ldcg(&c->acc_hit_rows);
    c->fetched_rows = 0;
    c->acc_needed = c->acc_hits = c->acc_misses = c->acc_error = 0;
    c->acc_listed = c->acc_direct = c->acc_direct_rows = c->acc_hit_rows = 0;
    c->fetched = c->evictions = c->pinned = 0;
    c->admitted = 0;
    c->miss_cut = kCacheAgeBuckets;
    c->miss_quota = c->miss_taken = 0;
    c->admit_pos = 0;
    c->cutoff_bucket = -1;
    c->cutoff_quota = c->cutoff_taken = 0;
  }
}

// Kernel 2. No candidates: nothing to do. Else the histogram of the evictable slots' victim
// keys over the grid (per-warp aggregated shared atomics); the last block pairs it with the
// candidates' histogram (PairAdmissions, cache/gpu_page_cache.h) and clears the latter.
__global__ void __launch_bounds__(kThreads)
    VictimHistogramKernel(CacheStamps st, DeviceCacheState cache, DeviceGroupCounters* c) {
  __shared__ int32_t hist[kCacheAgeBuckets];
  __shared__ int32_t mhist[kCacheAgeBuckets];
  if (c->listed == 0) return;  // every block sees the same: no ticket taken
  for (int i = threadIdx.x; i < kCacheAgeBuckets; i += kThreads) hist[i] = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t warp0 = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  for (int64_t base = warp0 * 32; base < cache.num_slots; base += warps * 32) {
    const int64_t s = base + lane;
    bool ev = false;
    int32_t key = 0;
    if (s < cache.num_slots) {
      const uint32_t lu = cache.d_last_use[s];
      ev = SlotEvictable(lu, st);
      if (ev) key = VictimKey(cache.d_block_of_slot[s], cache.d_value, st.epoch);
    }
    // Most evictable slots share a few keys: one shared atomic per key and warp.
    const unsigned peers = __match_any_sync(~0u, ev ? key : kCacheAgeBuckets + lane);
    if (ev && lane == __ffs(peers) - 1) atomicAdd(&hist[key], __popc(peers));
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kCacheAgeBuckets; i += kThreads) {
    if (hist[i]) atomicAdd(&c->hist[i], hist[i]);
  }
  if (!LastBlockDone(&c->ticket)) return;
  for (int i = threadIdx.x; i < kCacheAgeBuckets; i += kThreads) {
    hist[i] = __ldcg(&c->hist[i]);
    mhist[i] = __ldcg(&c->mhist[i]);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    const AdmitCut cut = PairAdmissions(mhist, hist, cache.min_admit_value);
    c->admitted = cut.admitted;
    c->miss_cut = cut.miss_cut;
    c->miss_quota = cut.miss_quota;
    c->cutoff_bucket = cut.victim_cut;
    c->cutoff_quota = cut.victim_quota;
  }
  for (int i = threadIdx.x; i < kCacheAgeBuckets; i += kThreads) c->mhist[i] = 0;
}

// Kernel 3. The candidates above the cut (and a quota of it) are admitted: their blocks go
// to the front of the fetch list (slots follow in kernel 4); the others are read in place.
__global__ void __launch_bounds__(kThreads)
    SelectAdmittedKernel(CacheStamps st, DeviceCacheState cache, DeviceGroupCounters* c,
                         const FetchEntry* missing, FetchEntry* fetch) {
  const int32_t listed = c->listed;
  if (listed == 0) return;
  const int32_t cut = c->miss_cut, quota = c->miss_quota;
  const int lane = threadIdx.x & 31;
  const int64_t warp0 = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  for (int64_t base = warp0 * 32; base < listed; base += warps * 32) {
    const int64_t k = base + lane;
    bool above = false, at = false, valid = k < listed;
    FetchEntry e{};
    if (valid) {
      e = missing[k];
      const int32_t bucket = ValueBucket(DecayedValue(cache.d_value[e.block], st.epoch));
      above = bucket > cut;
      at = bucket == cut;
    }
    at = TakeAtCut(at, &c->miss_taken, quota);
    const bool admit = above || at;
    const unsigned am = __ballot_sync(~0u, admit);
    if (am) {
      const int32_t j = WarpClaim(&c->admit_pos, am);
      if (admit) fetch[j] = FetchEntry{e.block, -1};
      const int32_t admitted_rows = WarpSum(admit ? e.slot : 0);
      if (lane == 0) atomicAdd(&c->fetched_rows, admitted_rows);
    }
    const bool direct = valid && !admit;
    const unsigned dm = __ballot_sync(~0u, direct);
    const int32_t rows = WarpSum(direct ? e.slot : 0);  // e.slot holds the kept rows
    if (lane == 0 && dm) {
      atomicAdd(&c->direct_blocks, __popc(dm));
      atomicAdd(&c->direct_rows, rows);
    }
  }
}

// Kernel 4. Evictable slots below the victim cut (and a quota of it) become victims: each
// takes the next admitted block, evicting its old one, and completes its fetch entry. Claims
// are aggregated per warp, and the scan stops as soon as every admitted block has its slot.
// Nothing admitted: only the counters.
__global__ void __launch_bounds__(kThreads)
    AssignKernel(DeviceCacheState cache, CacheStamps st, DeviceGroupCounters* c,
                 FetchEntry* fetch) {
  const int32_t m = min(c->admitted, cache.num_slots);
  if (m <= 0) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
      c->fetched = 0;
      c->pinned = c->hits;
    }
    return;
  }
  const int32_t cutoff = c->cutoff_bucket, quota = c->cutoff_quota;
  const int lane = threadIdx.x & 31;
  const int64_t warp0 = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  for (int64_t base = warp0 * 32; base < cache.num_slots; base += warps * 32) {
    int32_t done = 0;
    if (lane == 0) done = __ldcg(&c->fetched) >= m;
    if (__shfl_sync(~0u, done, 0)) break;  // warp-uniform
    const int64_t s = base + lane;
    bool under = false, at = false;
    int32_t old = -1;
    if (s < cache.num_slots) {
      const uint32_t lu = cache.d_last_use[s];
      if (SlotEvictable(lu, st)) {
        old = cache.d_block_of_slot[s];
        const int32_t key = VictimKey(old, cache.d_value, st.epoch);
        under = key < cutoff;
        at = key == cutoff;
      }
    }
    at = TakeAtCut(at, &c->cutoff_taken, quota);
    const bool victim = under || at;
    const unsigned vm = __ballot_sync(~0u, victim);
    if (!vm) continue;
    const int32_t k = WarpClaim(&c->fetched, vm);
    if (!victim || k >= m) continue;
    const int32_t b = fetch[k].block;
    if (old >= 0) {
      cache.d_slot_of_block[old] = -1;
      atomicAdd(&c->evictions, 1);
    }
    cache.d_slot_of_block[b] = int32_t(s);
    cache.d_block_of_slot[s] = b;
    cache.d_last_use[s] = st.current;
    fetch[k].slot = int32_t(s);
  }
  if (!LastBlockDone(&c->ticket)) return;
  if (threadIdx.x == 0) {
    const int32_t fetched = min(__ldcg(&c->fetched), m);
    c->fetched = fetched;
    c->pinned = __ldcg(&c->hits) + fetched;
    if (fetched < m) c->error = 1;
  }
}

__global__ void InvalidateKernel(DeviceCacheState cache, const int32_t* pages,
                                 int32_t num_pages, int32_t H) {
  const int64_t n = int64_t(num_pages) * H;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = int64_t(pages[i / H]) * H + i % H;
    if (b < 0 || b >= cache.num_blocks) continue;
    if (cache.d_value) cache.d_value[b] = 0;  // a reused page starts without the old value
    const int32_t s = cache.d_slot_of_block[b];
    if (s < 0) continue;
    cache.d_slot_of_block[b] = -1;
    cache.d_block_of_slot[s] = -1;
    cache.d_last_use[s] = 0;
  }
}

// Rows [r0, r1) of K and of V of block b, pool -> its cache slot when it has one; the warp's
// lanes step over 16-byte vectors.
__device__ __forceinline__ void MirrorBlockRows(const DeviceCacheState& cache,
                                                const PageGeometry& g, const uint4* pool,
                                                int64_t b, int32_t r0, int32_t r1, int lane) {
  if (b < 0 || b >= cache.num_blocks) return;
  const int32_t slot = cache.d_slot_of_block[b];
  if (slot < 0) return;
  const int32_t row_vecs = g.head_dim / 8;
  const int64_t block_vecs = g.FpBlockBytes() / 16;
  const uint4* src = pool + b * block_vecs;
  uint4* dst = reinterpret_cast<uint4*>(cache.d_slots) + int64_t(slot) * block_vecs;
  const int32_t n = (r1 - r0) * row_vecs;  // vectors per half
  for (int32_t v = lane; v < 2 * n; v += 32) {
    const int32_t half = v / n;  // 0: K rows, 1: V rows
    const int64_t off = (int64_t(half) * g.page_size + r0) * row_vecs + v % n;
    dst[off] = src[off];
  }
}

// One warp per (token, KV head): its K row and V row, 16 bytes per lane step.
__global__ void __launch_bounds__(kThreads)
    MirrorRowsKernel(DeviceCacheState cache, PageGeometry g, const uint4* pool,
                     const int32_t* page_id, const int32_t* row, int32_t num_tokens) {
  const int32_t H = g.num_kv_heads;
  const int64_t items = int64_t(num_tokens) * H;
  const int lane = threadIdx.x & 31;
  for (int64_t it = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); it < items;
       it += int64_t(gridDim.x) * kWarps) {
    const int32_t t = int32_t(it / H), h = int32_t(it % H);
    MirrorBlockRows(cache, g, pool, int64_t(page_id[t]) * H + h, row[t], row[t] + 1, lane);
  }
}

// One warp per (segment, KV head): rows [row_begin, row_end) of K and of V, 16-byte steps.
__global__ void __launch_bounds__(kThreads)
    MirrorSegmentsKernel(DeviceCacheState cache, PageGeometry g, const uint4* pool,
                         const AppendSegment* segs, int32_t num_segments) {
  const int32_t H = g.num_kv_heads;
  const int64_t items = int64_t(num_segments) * H;
  const int lane = threadIdx.x & 31;
  for (int64_t it = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); it < items;
       it += int64_t(gridDim.x) * kWarps) {
    const AppendSegment seg = segs[it / H];
    MirrorBlockRows(cache, g, pool, int64_t(seg.page) * H + int32_t(it % H), seg.row_begin,
                    seg.row_end, lane);
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
      !cache.d_need_stamp || !cache.d_value || cache.num_slots <= 0 || !a.d_counters ||
      !a.d_count_cache || !a.d_count_direct || !a.d_unit_blocks || !a.d_missing || !a.d_fetch ||
      !a.kept.tokens || !a.kept.count || !a.batch.page_table || a.kept.max_kept <= 0) {
    return absl::InvalidArgumentError("LaunchCachePlan: null pointer or empty cache");
  }
  cudaStream_t s = AsStream(stream);
  const int32_t units = a.batch.num_seqs * a.g.num_kv_heads;
  const int32_t chunks = (a.kept.max_kept + kTokensPerItem - 1) / kTokensPerItem;
  TWL_CUDA(cudaMemsetAsync(a.d_unit_blocks, 0, sizeof(int32_t) * size_t(units), s));
  if (a.d_unit_hits) {
    TWL_CUDA(cudaMemsetAsync(a.d_unit_hits, 0, sizeof(int32_t) * size_t(units), s));
  }
  // One wave of blocks each (the plan kernels are latency-bound, and an all-hit group's
  // kernels 2-4 only launch and return): warps loop over the live items or slots.
  const int32_t grid_units = GridFor(int64_t(units) * chunks, 8);
  CountMarkKernel<<<grid_units, kThreads, 0, s>>>(a.g, a.batch, a.kept, units, a.stamps, cache,
                                                  a.d_prev, a.d_counters, a.d_unit_blocks,
                                                  a.d_count_cache, a.d_count_direct, a.d_missing,
                                                  a.d_unit_hits);
  TWL_RETURN_IF_ERROR(LaunchStatus("CountMarkKernel"));
  const int64_t slot_warps = (int64_t(cache.num_slots) + 31) / 32;
  VictimHistogramKernel<<<GridFor(slot_warps, 2), kThreads, 0, s>>>(a.stamps, cache,
                                                                    a.d_counters);
  TWL_RETURN_IF_ERROR(LaunchStatus("VictimHistogramKernel"));
  SelectAdmittedKernel<<<GridFor(slot_warps, 2), kThreads, 0, s>>>(a.stamps, cache, a.d_counters,
                                                                   a.d_missing, a.d_fetch);
  TWL_RETURN_IF_ERROR(LaunchStatus("SelectAdmittedKernel"));
  AssignKernel<<<GridFor(slot_warps, 2), kThreads, 0, s>>>(cache, a.stamps, a.d_counters,
                                                           a.d_fetch);
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

namespace {

// The mirror launchers' arguments (`inputs`: their own pointers are all set).
absl::Status CheckMirror(const char* launcher, const DeviceCacheState& cache,
                         const PageGeometry& g, bool inputs) {
  if (!inputs || !cache.d_slots) {
    return absl::InvalidArgumentError(std::string(launcher) + ": null pointer");
  }
  if (g.head_dim % 8 != 0) {
    return absl::InvalidArgumentError(std::string(launcher) +
                                      ": head_dim must be a multiple of 8");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchCacheMirrorRows(const DeviceCacheState& cache, const PageGeometry& g,
                                   const fp16_t* mapped_pool, const int32_t* d_page_id,
                                   const int32_t* d_row, int32_t num_tokens, void* stream) {
  if (num_tokens <= 0) return absl::OkStatus();
  if (absl::Status st = CheckMirror("LaunchCacheMirrorRows", cache, g,
                                    mapped_pool && d_page_id && d_row);
      !st.ok()) {
    return st;
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
  if (absl::Status st = CheckMirror("LaunchCacheMirrorSegments", cache, g,
                                    mapped_pool && d_segments);
      !st.ok()) {
    return st;
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

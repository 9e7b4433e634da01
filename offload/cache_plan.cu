// Device side of the GPU hot-page cache: the policy of cache/gpu_page_cache.h (admission,
// hit pinning, LRU victims by age histogram) run over the pruner's kept lists without the
// host, plus invalidation, appended-row mirroring and the merge of direct-attended units.
//
// Plan of one group = 4 kernels (the grid-wide steps need each other's results):
//   CountAdmit  distinct pages per unit (a block starts where a kept token's page differs
//               from its predecessor's: kept lists are ascending); the last block to finish
//               runs first-fit admission over the units and resets the group's counters.
//   Mark        each admitted block claims need_stamp (atomicExch: one owner even when forked
//               sequences share it); resident -> hit, slot re-stamped; else -> missing list.
//   Histogram   age buckets of the evictable slots; the last block finds the cutoff bucket.
//   Assign      evictable slots above the cutoff (and a quota of it) become victims: each
//               takes the next missing block, evicting its old one, and emits a fetch entry.
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


int32_t GridFor(int64_t warp_items) {
  const int64_t blocks = (warp_items + kWarps - 1) / kWarps;
  return int32_t(std::clamp<int64_t>(blocks, 1, int64_t(gpu::SmCount()) * 8));
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

__global__ void __launch_bounds__(kThreads)
    CountAdmitKernel(PageGeometry g, KeptView kept, int32_t num_units, int32_t chunks,
                     int32_t num_slots, const DeviceGroupCounters* prev,
                     DeviceGroupCounters* c, int32_t* unit_blocks, int32_t* count_cache,
                     int32_t* count_direct) {
  const int64_t items = int64_t(num_units) * chunks;
  const int lane = threadIdx.x & 31;
  for (int64_t it = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); it < items;
       it += int64_t(gridDim.x) * kWarps) {
    const int32_t u = int32_t(it / chunks), chunk = int32_t(it % chunks);
    const int32_t count = kept.count[u];
    if (chunk * kTokensPerItem >= count) continue;
    int32_t n = 0;
    ForEachBlockStart(g, kept.tokens + int64_t(u) * kept.max_kept, count, chunk,
                      [&](bool start, int32_t) { n += __popc(__ballot_sync(~0u, start)); });
    if (lane == 0 && n) atomicAdd(&unit_blocks[u], n);
  }
  if (!LastBlockDone(&c->ticket)) return;
  for (int i = threadIdx.x; i < kCacheAgeBuckets; i += kThreads) c->hist[i] = 0;
  if (threadIdx.x == 0) {
    const int32_t capacity = num_slots - (prev ? prev->pinned : 0);
    int32_t used = 0, direct = 0, direct_blocks = 0;
    for (int32_t u = 0; u < num_units; ++u) {
      const int32_t n = __ldcg(&unit_blocks[u]);
      const int32_t count = kept.count[u];
      if (used + n <= capacity) {
        used += n;
        count_cache[u] = count;
        count_direct[u] = 0;
      } else {
        ++direct;
        direct_blocks += n;
        count_cache[u] = 0;
        count_direct[u] = count;
      }
    }
    c->capacity = capacity;
    c->units_direct = direct;
    c->direct_blocks = direct_blocks;
    c->needed = c->hits = c->misses = c->fetched = c->evictions = c->pinned = 0;
    c->cutoff_bucket = kCacheAgeBuckets;
    c->cutoff_quota = c->cutoff_taken = c->error = 0;
  }
}

__global__ void __launch_bounds__(kThreads)
    MarkKernel(PageGeometry g, BatchView batch, KeptView kept, int32_t num_units,
               int32_t chunks, CacheStamps st, DeviceCacheState cache,
               const int32_t* count_cache, DeviceGroupCounters* c, int32_t* missing) {
  const int64_t items = int64_t(num_units) * chunks;
  const int32_t H = g.num_kv_heads;
  for (int64_t it = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); it < items;
       it += int64_t(gridDim.x) * kWarps) {
    const int32_t u = int32_t(it / chunks), chunk = int32_t(it % chunks);
    const int32_t count = count_cache[u];
    if (chunk * kTokensPerItem >= count) continue;
    const int32_t s = u / H, h = u % H;
    const int32_t* row = batch.page_table + int64_t(s) * batch.max_pages;
    ForEachBlockStart(g, kept.tokens + int64_t(u) * kept.max_kept, count, chunk,
                      [&](bool start, int32_t page) {
                        if (!start) return;
                        const int64_t b = int64_t(row[page]) * H + h;
                        if (b < 0 || b >= cache.num_blocks) {
                          atomicExch(&c->error, 2);
                          return;
                        }
                        if (atomicExch(&cache.d_need_stamp[b], st.current) == st.current) return;
                        atomicAdd(&c->needed, 1);
                        const int32_t slot = cache.d_slot_of_block[b];
                        if (slot >= 0) {
                          cache.d_last_use[slot] = st.current;
                          atomicAdd(&c->hits, 1);
                        } else {
                          const int32_t k = atomicAdd(&c->misses, 1);
                          if (k < cache.num_slots) missing[k] = int32_t(b);
                        }
                      });
  }
}

__global__ void __launch_bounds__(kThreads)
    HistogramKernel(DeviceCacheState cache, CacheStamps st, DeviceGroupCounters* c) {
  __shared__ int32_t hist[kCacheAgeBuckets];
  for (int i = threadIdx.x; i < kCacheAgeBuckets; i += kThreads) hist[i] = 0;
  __syncthreads();
  // An all-hit group needs no victims: skip the scan of every slot (MarkKernel, which set
  // misses, ran before this kernel on the stream).
  const int32_t scan_end = c->misses > 0 ? cache.num_slots : 0;
  for (int32_t s = blockIdx.x * kThreads + threadIdx.x; s < scan_end;
       s += gridDim.x * kThreads) {
    const uint32_t lu = cache.d_last_use[s];
    if (SlotEvictable(lu, st)) atomicAdd(&hist[SlotAgeBucket(cache.d_block_of_slot[s], lu, st)], 1);
  }
  __syncthreads();
  for (int i = threadIdx.x; i < kCacheAgeBuckets; i += kThreads) {
    if (hist[i]) atomicAdd(&c->hist[i], hist[i]);
  }
  if (!LastBlockDone(&c->ticket)) return;
  if (threadIdx.x == 0) {
    const int32_t m = min(__ldcg(&c->misses), cache.num_slots);
    int32_t cum = 0, cutoff = kCacheAgeBuckets, quota = 0;
    if (m > 0) {
      cutoff = -1;  // not enough evictable slots: take them all and flag the error
      for (int32_t b = kCacheAgeBuckets - 1; b >= 0; --b) {
        const int32_t h = __ldcg(&c->hist[b]);
        if (cum + h >= m) {
          cutoff = b;
          quota = m - cum;
          break;
        }
        cum += h;
      }
      if (cutoff < 0 || __ldcg(&c->misses) > cache.num_slots) c->error = 1;
    }
    c->cutoff_bucket = cutoff;
    c->cutoff_quota = quota;
  }
}

__global__ void __launch_bounds__(kThreads)
    AssignKernel(DeviceCacheState cache, CacheStamps st, DeviceGroupCounters* c,
                 const int32_t* missing, FetchEntry* fetch) {
  const int32_t m = min(c->misses, cache.num_slots);
  const int32_t cutoff = c->cutoff_bucket, quota = c->cutoff_quota;
  if (m > 0) {
    for (int32_t s = blockIdx.x * kThreads + threadIdx.x; s < cache.num_slots;
         s += gridDim.x * kThreads) {
      const uint32_t lu = cache.d_last_use[s];
      if (!SlotEvictable(lu, st)) continue;
      const int32_t old = cache.d_block_of_slot[s];
      const int32_t bucket = SlotAgeBucket(old, lu, st);
      if (bucket < cutoff) continue;
      if (bucket == cutoff && atomicAdd(&c->cutoff_taken, 1) >= quota) continue;
      const int32_t k = atomicAdd(&c->fetched, 1);
      if (k >= m) continue;  // only when the error path took every evictable slot
      const int32_t b = missing[k];
      if (old >= 0) {
        cache.d_slot_of_block[old] = -1;
        atomicAdd(&c->evictions, 1);
      }
      cache.d_slot_of_block[b] = s;
      cache.d_block_of_slot[s] = b;
      cache.d_last_use[s] = st.current;
      fetch[k] = FetchEntry{b, s};
    }
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
  const int32_t grid_units = GridFor(int64_t(units) * chunks);
  CountAdmitKernel<<<grid_units, kThreads, 0, s>>>(a.g, a.kept, units, chunks, cache.num_slots,
                                                   a.d_prev, a.d_counters, a.d_unit_blocks,
                                                   a.d_count_cache, a.d_count_direct);
  TWL_RETURN_IF_ERROR(LaunchStatus("CountAdmitKernel"));
  MarkKernel<<<grid_units, kThreads, 0, s>>>(a.g, a.batch, a.kept, units, chunks, a.stamps,
                                             cache, a.d_count_cache, a.d_counters, a.d_missing);
  TWL_RETURN_IF_ERROR(LaunchStatus("MarkKernel"));
  const int32_t grid_slots = int32_t(std::clamp<int64_t>(
      (int64_t(cache.num_slots) + kThreads - 1) / kThreads, 1, int64_t(gpu::SmCount()) * 4));
  HistogramKernel<<<grid_slots, kThreads, 0, s>>>(cache, a.stamps, a.d_counters);
  TWL_RETURN_IF_ERROR(LaunchStatus("HistogramKernel"));
  AssignKernel<<<grid_slots, kThreads, 0, s>>>(cache, a.stamps, a.d_counters, a.d_missing,
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

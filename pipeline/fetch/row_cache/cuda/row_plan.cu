// Device side of the GPU row cache: the policy of cache/row_cache_policy.h over the pruner's
// kept lists without the host, the copy of fetched rows, and invalidation.
//
// Plan of one group = 3 kernels (each grid-wide step needs the previous one's results); an
// all-hit group (the steady state of a serving loop) is done by the first, the others return
// at once:
//   RowMark    every kept token -> its row; resident: a hit, slot stamped with the step;
//              absent: claimed (atomicCAS -1 -> -2, one claimer per row) and listed, or past
//              the list's capacity reset and read in place. Running sums go to the plan's
//              DeviceRowWork (zero between plans), so no launch zeroes counters first. Its
//              last block publishes the group's counters and per-unit counts, resets the
//              sums, bumps the device step stamp (first group of a step; every block read
//              the old one before the last arrives), reserves the top min(misses, free)
//              slots of the free stack for the first misses (no resident row is dropped
//              while a slot is free; RowCopy assigns them) and, with nothing missing, sets
//              the group's ready flag: the attention may start after this one kernel. With
//              a miss report (a disk tier; no ready flag then) it also lists the distinct
//              blocks of the claimed rows in host-visible memory: the only blocks the step
//              reads from the pool.
//   RowVictims (returns at once when the free slots sufficed) warps take 32-slot chunks
//              from the clock hand in order and give their evictable occupied slots to the
//              remaining misses (the old rows become absent), until every miss has a slot or
//              one pass over the slots is done; the last block moves the hand past the last
//              chunk that gave a victim and closes the counters. The free slots reserved are
//              still marked free (row -1) here, and the scan takes occupied slots only.
//   RowCopy    (returns at once without misses) a warp copies several rows at a time (K row
//              and V row, 16-byte loads from the mapped pinned pool, all issued before the
//              stores), then assigns the reserved free slots and publishes the rows in
//              slot_of_row; misses without a victim get -1 back (read in place). Its last
//              block sets the ready flag.
// Every launch is the same at every call (the step stamp is read on the device), so a plan
// captured in a CUDA graph replays like an eager one.
// Why publish after the copy: the previous group's attention may still run while this group
// is planned and copied; it reads slot_of_row once per token, and -1/-2 send it to the pool,
// so it sees either the row in place or a slot whose bytes have landed (the copy's stores are
// fenced before the map store). Slots it reads are its own hits, stamped with this step,
// never victims.
// Counters are aggregated per warp and block before the global atomics.
#include <cuda_runtime.h>

#include <algorithm>

#include "gpu/device.h"
#include "pipeline/fetch/plan_grid.cuh"
#include "offload/cuda_check.cuh"
#include "pipeline/fetch/row_cache/cuda/row_plan.h"
#include "pipeline/fetch/row_cache/cuda/row_slots.cuh"

namespace twl {
namespace {

using offload_cuda::AsStream;
using offload_cuda::LaunchStatus;

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Kept tokens one warp looks up per work item: a short chain of dependent loads per warp and
// many warps in flight (the lookups are latency-bound).
constexpr int kTokensPerItem = 64;
constexpr int kGroupsPerItem = kTokensPerItem / 32;  // 32-token groups (one token per lane)
// 16-byte vectors per lane in flight in the copy (8 KiB per warp round).
constexpr int kCopyVecs = 8;

int32_t GridFor(int64_t warp_items, int32_t blocks_per_sm) {
  return fetch_plan::GridForWarpItems(warp_items, kWarps, blocks_per_sm);
}

using fetch_plan::LastBlockDone;
using fetch_plan::WarpClaim;

// The next step stamp: bumped at the first group of a step (and from 0, "never"), never 0.
__device__ __forceinline__ uint32_t NextStep(uint32_t old, bool starts) {
  const uint32_t s = old + ((starts || old == 0) ? 1u : 0u);
  return s == 0 ? 1u : s;
}

// Tells a waiter on another stream (a stream memory operation polling the word, not a
// kernel) that the group's rows are readable.
__device__ __forceinline__ void SetReady(uint32_t* ready) {
  if (ready == nullptr) return;
  __threadfence_system();
  *reinterpret_cast<volatile uint32_t*>(ready) = 1u;
}

// Kernel 1. Work items (unit, chunk of kTokensPerItem kept tokens) chunk-major, so the items
// that hold tokens come first and a warp stops at the first chunk past the longest list.
__global__ void __launch_bounds__(kThreads)
    RowMarkKernel(PageGeometry g, BatchView batch, KeptView kept, int32_t units, bool starts,
                  DeviceRowCache c, DeviceRowCounters* cnt, DeviceRowWork* w,
                  int32_t* unit_hits, int32_t* unit_rows, int32_t* unit_work,
                  uint32_t* ready, RowMissReport rep) {
  __shared__ int32_t most, s_needed, s_hits, s_overflow;
  __shared__ uint32_t s_step;
  if (threadIdx.x == 0) {
    most = 0;
    s_needed = s_hits = s_overflow = 0;
    s_step = NextStep(*c.d_step, starts);
  }
  __syncthreads();
  const uint32_t step = s_step;
  {
    int32_t m = 0;
    for (int32_t u = threadIdx.x; u < units; u += kThreads) m = max(m, kept.count[u]);
    for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(~0u, m, o));
    if ((threadIdx.x & 31) == 0 && m) atomicMax(&most, m);
  }
  __syncthreads();
  const int32_t P = g.page_size, H = g.num_kv_heads;
  const int lane = threadIdx.x & 31;
  const int64_t chunks = (int64_t(most) + kTokensPerItem - 1) / kTokensPerItem;
  const int64_t items = chunks * units;
  int32_t w_needed = 0, w_hits = 0, w_overflow = 0;
  bool bad_row = false;
  for (int64_t it = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5); it < items;
       it += int64_t(gridDim.x) * kWarps) {
    const int32_t chunk = int32_t(it / units), u = int32_t(it % units);
    const int32_t n = kept.count[u];
    const int32_t i0 = chunk * kTokensPerItem;
    if (i0 >= n) continue;  // warp-uniform
    const int32_t s = u / H, h = u % H;
    const int32_t* toks = kept.tokens + int64_t(u) * kept.max_kept;
    const int32_t* ptab = batch.page_table + int64_t(s) * batch.max_pages;
    const int32_t i1 = min(n, i0 + kTokensPerItem);
    int32_t unit_hit = 0;
    // The item's lookups one level at a time for all of its 32-token groups (positions, then
    // rows, then slots), so a warp pays three round trips per item, not three per group: the
    // kernel runs beside the attention, whose reads fill the memory system and stretch every
    // dependent load.
    int32_t pos_of[kGroupsPerItem];
    int64_t row_of[kGroupsPerItem];
    int32_t slot_of[kGroupsPerItem];
#pragma unroll
    for (int k = 0; k < kGroupsPerItem; ++k) {
      const int32_t t = i0 + 32 * k + lane;
      pos_of[k] = t < i1 ? toks[t] : 0;
    }
#pragma unroll
    for (int k = 0; k < kGroupsPerItem; ++k) {
      const int32_t pos = pos_of[k];
      row_of[k] = i0 + 32 * k + lane < i1 ? g.BlockId(ptab[pos / P], h) * P + pos % P : -1;
    }
#pragma unroll
    for (int k = 0; k < kGroupsPerItem; ++k) {
      const int64_t r = row_of[k];
      slot_of[k] = r >= 0 && r < c.num_rows ? c.d_slot_of_row[r] : kRowAbsent;
    }
#pragma unroll
    for (int k = 0; k < kGroupsPerItem; ++k) {
      const int32_t i = i0 + 32 * k;
      if (i >= i1) break;  // warp-uniform
      const int32_t t = i + lane;
      bool hit = false, claim = false;
      int64_t r = -1;
      if (t < i1) {
        r = row_of[k];
        if (r < 0 || r >= c.num_rows) {
          bad_row = true;
        } else {
          const int32_t sl = slot_of[k];
          if (sl >= 0) {
            c.d_last_use[sl] = step;
            hit = true;
          } else if (sl == kRowClaimed) {
            hit = true;  // another unit's claim: one copy serves both
          } else {
            const int32_t old = atomicCAS(&c.d_slot_of_row[r], kRowAbsent, kRowClaimed);
            if (old == kRowAbsent) {
              claim = true;
            } else {
              if (old >= 0) c.d_last_use[old] = step;  // (nothing publishes meanwhile)
              hit = true;
            }
          }
        }
      }
      bool overflow = false;
      const unsigned cm = __ballot_sync(~0u, claim);
      if (cm) {
        const int32_t k = WarpClaim(&w->listed, cm);
        if (claim) {
          if (k < c.list_capacity) {
            c.d_list[k] = RowFetch{r, -1, 0};
          } else {
            c.d_slot_of_row[r] = kRowAbsent;  // no room to list it: in place this step
            overflow = true;
          }
        }
        if (rep.d_block_stamp != nullptr) {
          // Every claimed row is read from the pool (copied, or in place): its block is
          // reported once per stamp, by the first lane of the warp's lanes on that block
          // with their count (a unit's list is ascending: a block's rows are adjacent).
          const unsigned long long key = claim ? (unsigned long long)(r / P) : ~0ull;
          const unsigned peers = __match_any_sync(~0u, key);
          if (claim && lane == __ffs(peers) - 1) {
            const int64_t block = r / P;
            if (atomicExch(&rep.d_block_stamp[block], rep.stamp) != rep.stamp) {
              const int32_t e = atomicAdd(rep.d_count, 1);
              if (e < rep.capacity) {
                rep.blocks_out[e] = int32_t(block);
                rep.rows_out[e] = __popc(peers);
              }
            }
          }
        }
      }
      const unsigned hm = __ballot_sync(~0u, hit);
      unit_hit += __popc(hm);
      w_hits += __popc(hm);
      w_overflow += __popc(__ballot_sync(~0u, overflow));
      w_needed += min(32, i1 - i);
    }
    if (lane == 0 && unit_hit) atomicAdd(&unit_work[u], unit_hit);
  }
  if (__any_sync(~0u, bad_row) && lane == 0) atomicExch(&w->error, 2);
  if (lane == 0) {
    if (w_needed) atomicAdd(&s_needed, w_needed);
    if (w_hits) atomicAdd(&s_hits, w_hits);
    if (w_overflow) atomicAdd(&s_overflow, w_overflow);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    if (s_needed) atomicAdd(&w->needed, s_needed);
    if (s_hits) atomicAdd(&w->hits, s_hits);
    if (s_overflow) atomicAdd(&w->overflow, s_overflow);
  }
  if (!LastBlockDone(&w->ticket)) return;
  // Last block: publish the per-unit counts (and zero the running ones for the next plan).
  for (int32_t u = threadIdx.x; u < units; u += kThreads) {
    unit_hits[u] = __ldcg(&unit_work[u]);
    unit_work[u] = 0;
    unit_rows[u] = kept.count[u];
  }
  if (threadIdx.x == 0) {
    const int32_t listed = __ldcg(&w->listed), overflow = __ldcg(&w->overflow);
    // Free slots for the first misses: reserved here (the stack shrinks), assigned by RowCopy.
    const int32_t m = min(listed, c.list_capacity);
    const int32_t top = *c.d_free_top;
    const int32_t take = max(0, min(m, top));
    cnt->needed = __ldcg(&w->needed);
    cnt->hits = __ldcg(&w->hits);
    cnt->listed = listed;
    cnt->overflow = overflow;
    cnt->victims = take;
    cnt->evictions = 0;
    cnt->direct = overflow;  // RowVictims adds the misses left without a slot
    cnt->error = __ldcg(&w->error);
    cnt->free_taken = take;
    cnt->free_top = top;
    cnt->step = int32_t(step);
    w->needed = w->hits = w->overflow = w->listed = w->error = 0;
    *c.d_free_top = top - take;
    *c.d_step = step;
    // The report for the host (mapped memory; read after this kernel's completion), and the
    // accumulator zeroed for the next plan.
    if (rep.d_block_stamp != nullptr) *rep.count_out = atomicExch(rep.d_count, 0);
    if (m == 0) SetReady(ready);  // nothing to copy: the attention may go
  }
}

// Kernel 2. The misses left take occupied evictable slots from the clock hand: warps take
// 32-slot chunks in order (one pass at most) and each evictable slot of a chunk takes the
// next miss. When this has work, every free slot was reserved for the first misses (still
// marked free until RowCopy): only occupied slots are taken.
__global__ void __launch_bounds__(kThreads)
    RowVictimsKernel(DeviceRowCache c, uint32_t window, DeviceRowCounters* cnt,
                     DeviceRowWork* w) {
  const int32_t m = min(cnt->listed, c.list_capacity);
  const int32_t from_free = cnt->free_taken;
  const int32_t need = m - from_free;
  if (need <= 0) return;
  const uint32_t step = uint32_t(cnt->step);
  __shared__ int32_t s_evict;
  if (threadIdx.x == 0) s_evict = 0;
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int64_t hand = *c.d_hand;
  const int32_t nchunks = (c.num_slots + 31) / 32;
  int32_t w_evict = 0;
  for (;;) {
    int32_t chunk = 0, done = 0;
    if (lane == 0) {
      done = __ldcg(&w->clock_victims) >= need;
      if (!done) chunk = atomicAdd(&w->scan_chunk, 1);
    }
    done = __shfl_sync(~0u, done, 0);
    chunk = __shfl_sync(~0u, chunk, 0);
    if (done || chunk >= nchunks) break;  // warp-uniform
    const int64_t off = int64_t(chunk) * 32 + lane;
    int32_t s = 0;
    int64_t old = -1;
    bool ev = false;
    if (off < c.num_slots) {
      s = int32_t((hand + off) % c.num_slots);
      old = c.d_row_of_slot[s];
      ev = old >= 0 && RowSlotEvictable(old, c.d_last_use[s], step, window);
    }
    const unsigned vm = __ballot_sync(~0u, ev);
    if (!vm) continue;
    const int32_t k = WarpClaim(&w->clock_victims, vm);
    bool evicted = false;
    if (ev && k < need) {
      if (old < c.num_rows) c.d_slot_of_row[old] = kRowAbsent;
      evicted = true;
      const int32_t e = from_free + k;
      c.d_row_of_slot[s] = c.d_list[e].row;
      c.d_last_use[s] = step;
      c.d_list[e].slot = s;
    }
    const unsigned em = __ballot_sync(~0u, evicted);
    if (lane == 0 && em) {
      w_evict += __popc(em);
      atomicMax(&w->chunks_used, chunk + 1);
    }
  }
  if (lane == 0 && w_evict) atomicAdd(&s_evict, w_evict);
  __syncthreads();
  if (threadIdx.x == 0 && s_evict) atomicAdd(&w->evictions, s_evict);
  if (!LastBlockDone(&w->ticket)) return;
  if (threadIdx.x == 0) {
    const int32_t taken = min(__ldcg(&w->clock_victims), need);
    const int32_t used = __ldcg(&w->chunks_used);
    cnt->victims = from_free + taken;
    cnt->direct = cnt->overflow + (need - taken);
    cnt->evictions = __ldcg(&w->evictions);
    if (used > 0) *c.d_hand = int32_t((hand + int64_t(used) * 32) % c.num_slots);
    w->clock_victims = w->scan_chunk = w->chunks_used = w->evictions = 0;
  }
}

// Kernel 3. Rows of the list with a victim: pool -> slot (K row then V row, 16-byte
// vectors), fenced, then published; the rest get -1 back. A warp moves `per_round` rows at a
// time with every load issued before the first store (PCIe latency is microseconds). The
// last block sets the ready flag.
__global__ void __launch_bounds__(kThreads)
    RowCopyKernel(DeviceRowCache c, PageGeometry g, const uint4* __restrict__ pool,
                  const int32_t* __restrict__ pool_map, const DeviceRowCounters* cnt,
                  DeviceRowWork* w, uint32_t* ready) {
  const int32_t m = min(cnt->listed, c.list_capacity);
  if (m <= 0) return;
  const uint32_t step = uint32_t(cnt->step);
  const int32_t victims = cnt->victims;
  const int32_t free_taken = cnt->free_taken, free_top = cnt->free_top;
  // Entry e's slot: reserved from the free stack, or given by RowVictims.
  auto slot_of = [&](int64_t e) -> int32_t {
    return e < free_taken ? c.d_free[free_top - 1 - e] : c.d_list[e].slot;
  };
  const int32_t P = g.page_size;
  const int32_t row_vecs = g.head_dim / 8;           // 16-byte vectors of one K (or V) row
  const int32_t vr = 2 * row_vecs;                   // of one slot
  const int32_t per_round = max(1, min(32, 32 * kCopyVecs / vr));
  const int64_t block_vecs = int64_t(2) * P * row_vecs;
  uint4* slots = reinterpret_cast<uint4*>(c.d_slots);
  const int lane = threadIdx.x & 31;
  const int64_t warps = int64_t(gridDim.x) * kWarps;
  for (int64_t e0 = (int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5)) * per_round; e0 < m;
       e0 += warps * per_round) {
    uint4 v[kCopyVecs];
    int64_t dst[kCopyVecs];
#pragma unroll
    for (int k = 0; k < kCopyVecs; ++k) {
      const int32_t x = k * 32 + lane;  // vector x of the round: entry x / vr, part x % vr
      const int32_t j = x / vr;
      const int64_t e = e0 + j;
      dst[k] = -1;
      if (j < per_round && e < m && e < victims) {
        const RowFetch f{c.d_list[e].row, slot_of(e), 0};
        const int64_t block = f.row / P;
        const int32_t row = int32_t(f.row % P), part = x % vr;
        // Blocks of missed rows are in the pool (under a disk tier the store made the
        // blocks RowMark reported resident before this kernel); a negative index would only
        // skip the copy.
        const int64_t at = pool_map ? int64_t(pool_map[block]) : block;
        if (at >= 0 && f.slot >= 0) {
          const int64_t src = at * block_vecs +
                              (part < row_vecs ? int64_t(row) * row_vecs + part
                                               : int64_t(P + row) * row_vecs + part - row_vecs);
          v[k] = __ldcs(pool + src);  // streamed: read once
          dst[k] = int64_t(f.slot) * vr + part;
        }
      }
    }
#pragma unroll
    for (int k = 0; k < kCopyVecs; ++k) {
      if (dst[k] >= 0) __stcg(slots + dst[k], v[k]);  // L2: the attention reads it next
    }
    __threadfence();  // the row's bytes before its map entry, for a concurrent reader
    __syncwarp();
    if (lane < per_round) {
      const int64_t e = e0 + lane;
      if (e < m) {
        const int64_t r = c.d_list[e].row;
        const int32_t s = e < victims ? slot_of(e) : -1;
        if (e < free_taken && s >= 0) {  // a reserved free slot: assigned now
          c.d_row_of_slot[s] = r;
          c.d_last_use[s] = step;
          c.d_list[e].slot = s;
        }
        if (r >= 0 && r < c.num_rows) c.d_slot_of_row[r] = s >= 0 ? s : kRowAbsent;
      }
    }
  }
  if (ready != nullptr && LastBlockDone(&w->ticket) && threadIdx.x == 0) SetReady(ready);
}

// Kernel of LaunchRowAbandon: one thread per list entry.
__global__ void RowAbandonKernel(DeviceRowCache c, const DeviceRowCounters* cnt) {
  const int32_t m = min(cnt->listed, c.list_capacity);
  for (int32_t e = blockIdx.x * blockDim.x + threadIdx.x; e < m; e += gridDim.x * blockDim.x) {
    const int64_t r = c.d_list[e].row;
    if (r >= 0 && r < c.num_rows) c.d_slot_of_row[r] = kRowAbsent;
  }
  // RowMark took the top free_taken entries of the stack; nothing has pushed since.
  if (blockIdx.x == 0 && threadIdx.x == 0) *c.d_free_top = cnt->free_top;
}

// One thread per (page, KV head, row).
__global__ void InvalidatePagesKernel(DeviceRowCache c, PageGeometry g, const int32_t* pages,
                                      int32_t num_pages) {
  const int32_t per_page = g.num_kv_heads * g.page_size;
  const int64_t n = int64_t(num_pages) * per_page;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    // Rows of a page's blocks are contiguous: block page * H + h, rows h * P + r.
    DropRow(c, int64_t(pages[i / per_page]) * per_page + i % per_page);
  }
}

// One thread per (token, KV head).
__global__ void InvalidateTokensKernel(DeviceRowCache c, PageGeometry g, const int32_t* page_id,
                                       const int32_t* row, int32_t num_tokens) {
  const int32_t H = g.num_kv_heads, P = g.page_size;
  const int64_t n = int64_t(num_tokens) * H;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / H;
    DropRow(c, g.BlockId(page_id[t], int32_t(i % H)) * P + row[t]);
  }
}

// One thread per (segment, KV head, row of the page); rows outside the segment are skipped.
__global__ void InvalidateSegmentsKernel(DeviceRowCache c, PageGeometry g,
                                         const AppendSegment* segs, int32_t num_segments) {
  const int32_t H = g.num_kv_heads, P = g.page_size;
  const int64_t n = int64_t(num_segments) * H * P;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const AppendSegment seg = segs[i / (int64_t(H) * P)];
    const int32_t h = int32_t(i / P % H), r = int32_t(i % P);
    if (r < seg.row_begin || r >= seg.row_end) continue;
    DropRow(c, g.BlockId(seg.page, h) * P + r);
  }
}

// Every slot free, slot 0 on top of the stack.
__global__ void ResetFreeKernel(DeviceRowCache c) {
  for (int32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < c.num_slots;
       i += gridDim.x * blockDim.x) {
    c.d_free[i] = c.num_slots - 1 - i;
  }
  if (blockIdx.x == 0 && threadIdx.x == 0) *c.d_free_top = c.num_slots;
}

int32_t FlatGrid(int64_t n) {
  return int32_t(std::clamp<int64_t>((n + kThreads - 1) / kThreads, 1, 4096));
}

}  // namespace

absl::Status LaunchRowPlan(const DeviceRowCache& cache, const RowPlanArgs& a, void* stream) {
  TWL_RETURN_IF_ERROR(LaunchRowMark(cache, a, stream));
  return LaunchRowComplete(cache, a, stream);
}

absl::Status LaunchRowMark(const DeviceRowCache& cache, const RowPlanArgs& a, void* stream) {
  if (a.batch.num_seqs <= 0) return absl::OkStatus();
  if (!cache.d_slot_of_row || !cache.d_row_of_slot || !cache.d_last_use || !cache.d_slots ||
      !cache.d_hand || !cache.d_list || !cache.d_free || !cache.d_free_top || !cache.d_step ||
      cache.num_slots <= 0 || cache.list_capacity <= 0 ||
      cache.list_capacity > cache.num_slots || !a.d_counters || !a.d_work || !a.d_unit_hits ||
      !a.d_unit_rows || !a.d_unit_work || !a.kept.tokens || !a.kept.count ||
      !a.batch.page_table || a.kept.max_kept <= 0 || !a.source.mapped_base) {
    return absl::InvalidArgumentError("LaunchRowPlan: null pointer or empty cache");
  }
  if (a.g.head_dim % 8 != 0 || a.source.block_bytes != a.g.FpBlockBytes()) {
    return absl::InvalidArgumentError("LaunchRowPlan: head_dim % 8 or pool block size");
  }
  if (a.report.on() && (!a.report.d_count || !a.report.count_out || !a.report.blocks_out ||
                        !a.report.rows_out || a.report.capacity < 0 || a.report.stamp == 0)) {
    return absl::InvalidArgumentError("LaunchRowPlan: miss report without its buffers or stamp");
  }
  cudaStream_t s = AsStream(stream);
  const int32_t units = a.batch.num_seqs * a.g.num_kv_heads;
  const int64_t chunks = (int64_t(a.kept.max_kept) + kTokensPerItem - 1) / kTokensPerItem;
  RowMarkKernel<<<GridFor(int64_t(units) * chunks, 8), kThreads, 0, s>>>(
      a.g, a.batch, a.kept, units, a.starts_step, cache, a.d_counters, a.d_work, a.d_unit_hits,
      a.d_unit_rows, a.d_unit_work, a.d_ready, a.report);
  return LaunchStatus("RowMarkKernel");
}

absl::Status LaunchRowComplete(const DeviceRowCache& cache, const RowPlanArgs& a,
                               void* stream) {
  if (a.batch.num_seqs <= 0) return absl::OkStatus();
  if (!cache.d_list || cache.num_slots <= 0 || !a.d_counters || !a.d_work ||
      !a.source.mapped_base) {
    return absl::InvalidArgumentError("LaunchRowComplete: null pointer or empty cache");
  }
  cudaStream_t s = AsStream(stream);
  const int64_t slot_chunks = (int64_t(cache.num_slots) + 31) / 32;
  RowVictimsKernel<<<GridFor(slot_chunks, 2), kThreads, 0, s>>>(cache, a.window, a.d_counters,
                                                                a.d_work);
  TWL_RETURN_IF_ERROR(LaunchStatus("RowVictimsKernel"));
  // Enough warps to keep PCIe busy: the copy is latency-bound.
  RowCopyKernel<<<GridFor(int64_t(cache.list_capacity), 4), kThreads, 0, s>>>(
      cache, a.g, static_cast<const uint4*>(a.source.mapped_base), a.source.slot_of_block,
      a.d_counters, a.d_work, a.d_ready);
  return LaunchStatus("RowCopyKernel");
}

absl::Status LaunchRowAbandon(const DeviceRowCache& cache, const RowPlanArgs& a,
                              void* stream) {
  if (a.batch.num_seqs <= 0) return absl::OkStatus();
  if (!cache.d_list || !cache.d_slot_of_row || !cache.d_free_top || !a.d_counters) {
    return absl::InvalidArgumentError("LaunchRowAbandon: null pointer");
  }
  RowAbandonKernel<<<FlatGrid(cache.list_capacity), kThreads, 0, AsStream(stream)>>>(
      cache, a.d_counters);
  return LaunchStatus("RowAbandonKernel");
}

absl::Status LaunchRowCacheReset(const DeviceRowCache& cache, void* stream) {
  if (!cache.d_slot_of_row || !cache.d_row_of_slot || !cache.d_last_use || !cache.d_free ||
      !cache.d_free_top || !cache.d_hand || !cache.d_step || cache.num_slots <= 0) {
    return absl::InvalidArgumentError("LaunchRowCacheReset: null pointer or no slots");
  }
  cudaStream_t s = AsStream(stream);
  TWL_CUDA(cudaMemsetAsync(cache.d_slot_of_row, 0xff, size_t(cache.num_rows) * 4, s));
  TWL_CUDA(cudaMemsetAsync(cache.d_row_of_slot, 0xff, size_t(cache.num_slots) * 8, s));
  TWL_CUDA(cudaMemsetAsync(cache.d_last_use, 0, size_t(cache.num_slots) * 4, s));
  TWL_CUDA(cudaMemsetAsync(cache.d_hand, 0, 4, s));
  TWL_CUDA(cudaMemsetAsync(cache.d_step, 0, 4, s));
  ResetFreeKernel<<<FlatGrid(cache.num_slots), kThreads, 0, s>>>(cache);
  return LaunchStatus("ResetFreeKernel");
}

absl::Status LaunchRowInvalidatePages(const DeviceRowCache& cache, const PageGeometry& g,
                                      const int32_t* d_pages, int32_t num_pages, void* stream) {
  if (num_pages <= 0) return absl::OkStatus();
  if (!d_pages || !cache.d_slot_of_row) {
    return absl::InvalidArgumentError("LaunchRowInvalidatePages: null pointer");
  }
  const int64_t n = int64_t(num_pages) * g.num_kv_heads * g.page_size;
  InvalidatePagesKernel<<<FlatGrid(n), kThreads, 0, AsStream(stream)>>>(cache, g, d_pages,
                                                                         num_pages);
  return LaunchStatus("InvalidatePagesKernel");
}

absl::Status LaunchRowInvalidateTokens(const DeviceRowCache& cache, const PageGeometry& g,
                                       const int32_t* d_page_id, const int32_t* d_row,
                                       int32_t num_tokens, void* stream) {
  if (num_tokens <= 0) return absl::OkStatus();
  if (!d_page_id || !d_row || !cache.d_slot_of_row) {
    return absl::InvalidArgumentError("LaunchRowInvalidateTokens: null pointer");
  }
  const int64_t n = int64_t(num_tokens) * g.num_kv_heads;
  InvalidateTokensKernel<<<FlatGrid(n), kThreads, 0, AsStream(stream)>>>(cache, g, d_page_id,
                                                                          d_row, num_tokens);
  return LaunchStatus("InvalidateTokensKernel");
}

absl::Status LaunchRowInvalidateSegments(const DeviceRowCache& cache, const PageGeometry& g,
                                         const AppendSegment* d_segments, int32_t num_segments,
                                         void* stream) {
  if (num_segments <= 0) return absl::OkStatus();
  if (!d_segments || !cache.d_slot_of_row) {
    return absl::InvalidArgumentError("LaunchRowInvalidateSegments: null pointer");
  }
  const int64_t n = int64_t(num_segments) * g.num_kv_heads * g.page_size;
  InvalidateSegmentsKernel<<<FlatGrid(n), kThreads, 0, AsStream(stream)>>>(cache, g, d_segments,
                                                                            num_segments);
  return LaunchStatus("InvalidateSegmentsKernel");
}

}  // namespace twl

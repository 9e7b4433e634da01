// Launchers of the device side of the GPU hot-page cache (pipeline/fetch/cache/cuda/cache_plan.cu): the policy
// of cache/gpu_page_cache.h run on device copies of its arrays, from the pruner's kept lists,
// so that deciding what to fetch never needs the host. Plus the small kernels that keep the
// cache coherent (invalidation of freed pages, appended rows mirrored into resident slots)
// and the merge of units attended straight from host memory. No device code, no CUDA types.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "cache/gpu_page_cache.h"
#include "core/stage_views.h"

namespace twl {

// Device arrays of the cache (see cache/gpu_page_cache.h for their meaning).
struct DeviceCacheState {
  int32_t* d_slot_of_block = nullptr;  // [num_blocks], -1 = not resident
  int32_t* d_block_of_slot = nullptr;  // [num_slots], -1 = free
  uint32_t* d_last_use = nullptr;      // [num_slots]
  uint32_t* d_need_stamp = nullptr;    // [num_blocks] de-duplication within a group
  fp16_t* d_slots = nullptr;           // [num_slots][2][page_size][head_dim] FP16 blocks
  int64_t num_blocks = 0;
  int32_t num_slots = 0;
  uint32_t* d_value = nullptr;         // [num_blocks] packed block values (DecayedValue)
  uint32_t min_admit_value = kDefaultMinAdmitValue;  // admission floor (gpu_page_cache.h)
};

// Counters of one planned group, written by the plan kernels (device memory). Zero-fill
// once at allocation; the kernels reset what they use.
struct DeviceGroupCounters {
  int32_t capacity = 0;      // slots the group may fill
  int32_t units_direct = 0;  // units not admitted (attended from host memory)
  int32_t direct_blocks = 0; // their distinct blocks
  int32_t needed = 0;        // distinct blocks of admitted units
  int32_t hits = 0;
  int32_t misses = 0;
  int32_t fetched = 0;       // fetch list length (== misses unless error)
  int32_t evictions = 0;
  int32_t pinned = 0;        // hits + fetched: slots the next group must leave alone
  int32_t cutoff_bucket = 0; // victim search: buckets above it are taken whole
  int32_t cutoff_quota = 0;  //   and this many slots of the cutoff bucket
  int32_t cutoff_taken = 0;
  int32_t ticket = 0;        // last-block detection, self-resetting
  int32_t error = 0;         // 1: fewer evictable slots than misses (cannot happen)
  int32_t hist[kCacheAgeBuckets] = {};
  // Fast path of the plan (appended fields): 1 when the first kernel also marked every
  // block (all units surely admitted), and its accumulators, zero at rest (the first
  // kernel's last block moves them into needed/hits/misses/error and clears them).
  int32_t marked = 0;
  int32_t acc_needed = 0;
  int32_t acc_hits = 0;
  int32_t acc_misses = 0;
  int32_t acc_error = 0;
  // Residency by value (appended). `misses` counts every distinct non-resident block;
  // `listed` of them (<= num_slots) are candidates, `admitted` of those are fetched
  // (`fetched`), the rest of the misses are read in place: `direct_blocks`, `direct_rows`.
  int32_t listed = 0;
  int32_t admitted = 0;
  int32_t direct_rows = 0;
  int32_t hit_rows = 0;
  int32_t fetched_rows = 0;   // kept rows of the admitted blocks (they move whole)
  int32_t miss_cut = 0;       // AdmitCut of the group
  int32_t miss_quota = 0;
  int32_t miss_taken = 0;
  int32_t acc_listed = 0;     // list positions taken (may pass num_slots)
  int32_t acc_direct = 0;     // in place decided while marking (previous group's, overflow)
  int32_t acc_direct_rows = 0;
  int32_t acc_hit_rows = 0;
  int32_t admit_pos = 0;      // admitted candidates written to the fetch list
  int32_t mhist[kCacheAgeBuckets] = {};  // candidate value buckets (zero at rest)
};

struct CachePlanArgs {
  PageGeometry g;
  BatchView batch;   // the group's sequences, device seq_len / page_table
  KeptView kept;     // the group's kept lists (device), same sequence order
  CacheStamps stamps;
  // The previous group's counters (its `pinned` is protected) or null when the previous
  // group's attention is known complete (first group of a step).
  const DeviceGroupCounters* d_prev = nullptr;
  DeviceGroupCounters* d_counters = nullptr;
  int32_t* d_count_cache = nullptr;   // [num_units] kept count if admitted, else 0
  int32_t* d_count_direct = nullptr;  // [num_units] kept count if not admitted, else 0
  int32_t* d_unit_blocks = nullptr;   // [num_units] distinct blocks of each unit
  FetchEntry* d_missing = nullptr;    // [num_slots] scratch: candidates (block, kept rows)
  FetchEntry* d_fetch = nullptr;      // [num_slots] the fetch list; length d_counters->fetched
  int32_t* d_unit_hits = nullptr;     // [num_units] resident blocks of each unit, or null
};

// Enqueues the plan of one group (a memset and 4 kernels; see cache_plan.cu): the policy of
// cache/gpu_page_cache.h (values, hits, admission by value, victims). Every unit is
// attended through the cache's view (count_cache = kept count, count_direct = 0); blocks not
// admitted keep slot -1 and are read in place (FpKvView.miss_kv). An all-hit group is done
// by the first kernel; the others return at once. Units are (sequence, KV head) in batch
// order, num_units = batch.num_seqs * g.num_kv_heads.
absl::Status LaunchCachePlan(const DeviceCacheState& cache, const CachePlanArgs& args,
                             void* stream);

// Drops every block of the listed pages from the cache (freed or rewritten pages).
absl::Status LaunchCacheInvalidatePages(const DeviceCacheState& cache, const int32_t* d_pages,
                                        int32_t num_pages, int32_t num_kv_heads, void* stream);

// Copies freshly appended rows from the host pool (mapped, identity-addressed blocks) into
// the cache slots of blocks that are resident, so that cached blocks never go stale. Token i
// is row d_row[i] of page d_page_id[i], all KV heads.
absl::Status LaunchCacheMirrorRows(const DeviceCacheState& cache, const PageGeometry& g,
                                   const fp16_t* mapped_pool, const int32_t* d_page_id,
                                   const int32_t* d_row, int32_t num_tokens, void* stream);

// LaunchCacheMirrorRows for bulk appends: rows [row_begin, row_end) of every segment's page
// (core/stage_views.h AppendSegment; stage is ignored, the rows are read from the pool), all KV
// heads, copied into the cache slots of resident blocks. One warp per (segment, KV head).
absl::Status LaunchCacheMirrorSegments(const DeviceCacheState& cache, const PageGeometry& g,
                                       const fp16_t* mapped_pool, const AppendSegment* d_segments,
                                       int32_t num_segments, void* stream);

// out[s][q][:] = direct_out[s][q][:] for every query head q of a unit with
// d_count_direct[unit] > 0 (units attended from host memory).
absl::Status LaunchScatterDirect(const PageGeometry& g, int32_t num_seqs, int32_t num_q_heads,
                                 const int32_t* d_count_direct, const fp16_t* direct_out,
                                 fp16_t* out, void* stream);

}  // namespace twl

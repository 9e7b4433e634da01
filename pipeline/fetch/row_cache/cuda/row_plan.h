// Launchers of the device side of the GPU row cache (pipeline/fetch/row_cache/cuda/
// row_plan.cu): the policy of cache/row_cache_policy.h run on device copies of its arrays
// from the pruner's kept lists (no host round trip), the copy of the fetched rows from the
// mapped pinned pool into their slots, and the invalidation kernels that keep the cache
// coherent. No device code, no CUDA types.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "cache/row_cache_policy.h"
#include "core/stage_views.h"
#include "gpu/kernels.h"
#include "offload/fetch_transport.h"

namespace twl {

// Device arrays of the row cache (see cache/row_cache_policy.h).
struct DeviceRowCache {
  int32_t* d_slot_of_row = nullptr;  // [num_rows]: slot, -1 absent, -2 claimed (mid-plan)
  int64_t* d_row_of_slot = nullptr;  // [num_slots], -1 free
  uint32_t* d_last_use = nullptr;    // [num_slots] step of last use (0: never)
  fp16_t* d_slots = nullptr;         // [num_slots][2][head_dim]: K row, V row
  int32_t* d_free = nullptr;         // [num_slots] stack of free slots
  int32_t* d_free_top = nullptr;     // [1] free slots on the stack
  int32_t* d_hand = nullptr;         // [1] clock hand
  uint32_t* d_step = nullptr;        // [1] stamp of the current step (bumped on the device)
  RowFetch* d_list = nullptr;        // [list_capacity] the group's misses (scratch)
  int64_t num_rows = 0;              // num_blocks * page_size
  int32_t num_slots = 0;
  int32_t list_capacity = 0;         // <= num_slots
};

// Counters of one planned group (device memory): written by the last thread block of the
// plan's kernels, never zeroed beforehand (the plan's running sums live in DeviceRowWork).
struct DeviceRowCounters {
  int32_t needed = 0;      // kept rows of the group's units
  int32_t hits = 0;        // resident, or claimed by another unit of the group
  int32_t listed = 0;      // claims (list places taken; may pass list_capacity)
  int32_t overflow = 0;    // claims past the list: read in place
  int32_t victims = 0;     // misses given a slot (fetched): free ones, then by the clock
  int32_t evictions = 0;   // resident rows dropped for them
  int32_t direct = 0;      // rows read in place: overflow + listed misses without a victim
  int32_t error = 0;       // 2: a kept row outside the map
  int32_t free_taken = 0;  // the first free_taken misses take free slots: entry e gets
  int32_t free_top = 0;    //   free[free_top - 1 - e] (the stack before the plan)
  int32_t step = 0;        // the step stamp the plan used
  int32_t reserved = 0;
};

// Running sums of a plan, shared by its kernels' thread blocks. Every field is back to 0 when
// a plan ends (the last block of the kernel that uses it resets it), so no launch zeroes it:
// it must be zero-filled once when allocated.
struct DeviceRowWork {
  int32_t needed = 0, hits = 0, overflow = 0, listed = 0, error = 0;
  int32_t ticket = 0;         // last-block detection (self-resetting)
  int32_t scan_chunk = 0;     // victim search: next 32-slot chunk from the hand
  int32_t clock_victims = 0;  // claims of the clock scan (may pass what it needs)
  int32_t chunks_used = 0;    // 1 + the last 32-slot chunk (from the hand) that gave a victim
  int32_t evictions = 0;
};

// Where the plan reports the blocks of the rows it misses, for a store whose pool blocks may
// be absent (a disk tier: pipeline/fetch/disk/miss_first_fetch.cuh). Only missed rows are
// read from the pool (the copy, or the attention in place), so these blocks are all the
// step's pool reads. Off (null pointers): nothing reported. A block is reported once per
// `stamp` (the store's step: d_block_stamp[block] holds the stamp that last reported it).
struct RowMissReport {
  uint32_t* d_block_stamp = nullptr;  // [num_blocks] device, 0 at start
  uint32_t stamp = 0;                 // this step's (>= 1)
  int32_t* d_count = nullptr;         // [1] device accumulator, 0 between plans
  int32_t* count_out = nullptr;       // [1] host-visible (mapped): blocks reported (may
                                      //     pass capacity: then the list is incomplete)
  int32_t* blocks_out = nullptr;      // [capacity] host-visible: block ids
  int32_t* rows_out = nullptr;        // [capacity] host-visible: missed rows of each (the
                                      //     reporting warp's count: a lower bound)
  int32_t capacity = 0;
  bool on() const { return d_block_stamp != nullptr; }
};

struct RowPlanArgs {
  PageGeometry g;
  BatchView batch;        // the group's sequences (device seq_len / page_table)
  KeptView kept;          // the group's kept lists (device), same sequence order
  bool starts_step = false;  // the step's first group: bumps the device step stamp
  uint32_t window = kDefaultRowWindow;
  DeviceRowCounters* d_counters = nullptr;
  DeviceRowWork* d_work = nullptr;  // zero between plans (see DeviceRowWork)
  int32_t* d_unit_hits = nullptr;   // [units] resident rows of each unit
  int32_t* d_unit_rows = nullptr;   // [units] kept rows of each unit
  int32_t* d_unit_work = nullptr;   // [units] zero between plans (running per-unit hits)
  // Optional: set to 1 once the group's rows are readable by its attention (by the mark
  // kernel when nothing is missing, else by the copy kernel's last block); the waiter resets
  // it. Null: no flag.
  uint32_t* d_ready = nullptr;
  FetchSource source;     // the mapped pinned pool (and its map under a disk tier)
  RowMissReport report;   // off by default
};

// Enqueues the plan of one group and the copy of its fetched rows (3 kernels: mark hits and
// claim misses (its last block closes the counts and reserves free slots for the first
// misses), take occupied victims from the hand for the rest, copy + publish). A group whose
// rows are all resident is done by the first (the others return at once, and its ready flag
// is set by it). Every launch is the same at every call: the step stamp lives on the device,
// so a captured plan replays correctly.
absl::Status LaunchRowPlan(const DeviceRowCache& cache, const RowPlanArgs& args, void* stream);
// The plan in two halves, for a store that must act on the misses in between (a disk tier):
// LaunchRowMark (the mark kernel: step stamp bumped for the first group, hits stamped,
// misses claimed and listed, args.report filled, the ready flag set when nothing is missing)
// and LaunchRowComplete (victims, copy + publish, the ready flag set by the copy) with the
// same args. Nothing else may plan on the cache in between (the miss list is shared).
absl::Status LaunchRowMark(const DeviceRowCache& cache, const RowPlanArgs& args, void* stream);
absl::Status LaunchRowComplete(const DeviceRowCache& cache, const RowPlanArgs& args,
                               void* stream);
// Undoes LaunchRowMark for a group whose plan will not complete (the store could not make
// its missed blocks resident): its claims dropped (absent again), the free slots it reserved
// back on the stack (read from the group's counters, which the mark wrote). The step stamp
// stays bumped (the hits keep their stamps) and the running sums are already back to 0 (the
// mark's last block reset its own; victims and copy never ran), so the buffers are ready for
// the next plan.
absl::Status LaunchRowAbandon(const DeviceRowCache& cache, const RowPlanArgs& args,
                              void* stream);

// Empties the cache: every row absent, every slot free (on the stack, slot 0 on top), hand 0,
// step stamp 0.
absl::Status LaunchRowCacheReset(const DeviceRowCache& cache, void* stream);

// Drops every row of every KV head of the listed pages (freed or rewritten pages).
absl::Status LaunchRowInvalidatePages(const DeviceRowCache& cache, const PageGeometry& g,
                                      const int32_t* d_pages, int32_t num_pages, void* stream);
// Drops row d_row[i] of page d_page_id[i], every KV head (appended tokens).
absl::Status LaunchRowInvalidateTokens(const DeviceRowCache& cache, const PageGeometry& g,
                                       const int32_t* d_page_id, const int32_t* d_row,
                                       int32_t num_tokens, void* stream);
// Drops rows [row_begin, row_end) of each segment's page, every KV head (appended segments).
absl::Status LaunchRowInvalidateSegments(const DeviceRowCache& cache, const PageGeometry& g,
                                         const AppendSegment* d_segments, int32_t num_segments,
                                         void* stream);

}  // namespace twl

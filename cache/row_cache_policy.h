// GPU row cache: which FP16 rows (one token's K row and V row of one KV head, 512 B at d = 128)
// occupy which of a fixed number of device row slots. This file is the policy's specification
// and its host implementation (CPU-tested, and the byte study of tests/cpu/row_cache_sim_test);
// the offload backend runs the same policy on the GPU (pipeline/fetch/row_cache/cuda/
// row_plan.cu) over device copies of the same arrays, from the pruner's kept lists, so that a
// decode step never waits for the host. Shared rules are the TWL_HD functions below.
//
// Why rows and not blocks (cache/gpu_page_cache.h): top-p keeps ~1-4.5 rows of a 16-row block
// at 128k, so a block cache holds 3.5-16x the bytes the attention reads; the kept blocks of 8
// layers (~8 GB at B = 8) overflow a 10% cache, the kept rows (~2.2 GB) do not. And the kept
// sets of a serving loop change little from step to step, so once the rows are resident a
// step moves only the rows that entered its kept sets.
//
// State (row r = block * page_size + row within the block):
//   slot_of_row [num_blocks * page_size]  slot holding the row, -1 absent, -2 claimed by the
//                                         group being planned (read as absent: in place)
//   row_of_slot [num_slots]               row held by the slot, or -1 (free)
//   last_use    [num_slots]               step that last needed the slot (0: never)
//   free        [num_slots], free_top     stack of the free slots (initially every slot,
//                                         slot 0 on top); invalidation pushes, misses pop
//   hand                                  clock hand: where the next victim search starts
//
// A step is one decode call of one layer, planned in pipeline groups (the first group of a
// decode starts a step). Policy of one group:
//   1. Every kept row of every unit (sequence, KV head) is looked up: resident -> a hit, its
//      slot stamped with the step; absent -> claimed once (a row two units share, forked
//      sequences, is claimed by one of them; the other counts it as a hit) and listed as a
//      miss, while the list has room (list_capacity, at most num_slots); past it: read in
//      place this step.
//   2. Victims: free slots first (popped from the stack, top first: no resident row is
//      dropped while a slot is free); then, from the hand, in slot order, wrapping once, the
//      occupied slots last used more than `window` steps ago (RowSlotEvictable) go to the
//      remaining misses in list order; the hand moves past the last one. Rows of the
//      current step (this group's hits, the previous group's, whose attention may still
//      run) are never victims, nor rows of the last `window` steps: with window >= the
//      layers that take turns on the cache, a row a layer keeps step after step is never
//      evicted by another layer's misses, so a working set larger than the cache keeps what
//      it holds (hit ~ C / W) and reads the rest in place, instead of cycling the cache
//      (LRU's 0 hits).
//   3. Each listed miss with a victim takes its slot (the old row becomes absent); the row is
//      copied into the slot, and only then published in slot_of_row (so an attention that is
//      still running reads either the absent row in place or the complete slot). Misses
//      without a victim are read in place (their claim is reset to -1).
// Coherence: rows are immutable once appended; rows of freed or rewritten pages and appended
// rows are invalidated (slot freed, row absent), never mirrored.
// Counters: needed = hits + fetched + direct (kept rows of the group; a shared row counts
// once per unit that keeps it).
// GPU differences: ties are races (which listed miss gets which slot, which occupied slots of
// the hand's first chunks are taken, which unit claims a shared row, the order invalidation
// pushes free slots), the hand moves to the end of the last 32-slot chunk that gave a victim;
// the counts of one group from the same state are the same (fetched = min(misses listed,
// free + evictable occupied slots)).
// Thread-safety: none (one owner).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/half.h"

namespace twl {

inline constexpr int32_t kRowAbsent = -1;
inline constexpr int32_t kRowClaimed = -2;
// Default recency window in steps when the owner does not set one (the backend uses 2 L for
// L layers: a row a layer keeps every pass over the layers stays).
inline constexpr uint32_t kDefaultRowWindow = 16;

// A slot may take a miss: it is free, or its row was last needed more than `window` steps
// before `step` (so never a slot of the current step). last_use <= step always.
TWL_HD bool RowSlotEvictable(int64_t row_of_slot, uint32_t last_use, uint32_t step,
                             uint32_t window) {
  return row_of_slot < 0 || step - last_use > window;
}

// One entry of a row fetch list: copy row `row` (block * page_size + row) into `slot`.
struct RowFetch {
  int64_t row = -1;
  int32_t slot = -1;
  int32_t pad = 0;
};

struct RowCounters {
  int64_t needed = 0;     // kept rows of the group's units
  int64_t hits = 0;       // resident (or claimed by another unit of the group)
  int64_t fetched = 0;    // misses given a slot (moved 512 B each at d = 128)
  int64_t direct = 0;     // misses read in place (no victim, or past the list)
  int64_t evictions = 0;  // resident rows dropped for them
  RowCounters& operator+=(const RowCounters& o);
};

struct RowGroupPlan {
  uint32_t step = 0;
  std::vector<RowFetch> fetch;     // in list order
  std::vector<int32_t> unit_hits;  // [units] resident rows of each unit
  RowCounters counters;
};

class RowCachePolicy {
 public:
  // num_rows = num_blocks * page_size; num_slots >= 1; list_capacity in [1, num_slots]
  // (0: num_slots); window: see RowSlotEvictable.
  static absl::StatusOr<RowCachePolicy> Create(int64_t num_rows, int32_t num_slots,
                                               uint32_t window = kDefaultRowWindow,
                                               int32_t list_capacity = 0);

  int64_t num_rows() const { return int64_t(slot_of_row_.size()); }
  int32_t num_slots() const { return int32_t(row_of_slot_.size()); }

  // Plans one group (steps 1-3 above, the copy included: rows are published at once).
  // units[u] lists the rows unit u keeps (each once). starts_step: the first group of a
  // decode. InvalidArgument for a row out of range.
  absl::StatusOr<RowGroupPlan> PlanGroup(absl::Span<const std::vector<int64_t>> units,
                                         bool starts_step);

  // Drops a row (freed page, rewritten or appended row): its slot becomes free.
  void InvalidateRow(int64_t row);
  // Every row of rows [first, first + count).
  void InvalidateRows(int64_t first, int64_t count);

  int32_t SlotOf(int64_t row) const { return slot_of_row_[size_t(row)]; }
  int32_t FreeSlots() const { return int32_t(free_.size()); }
  int64_t RowIn(int32_t slot) const { return row_of_slot_[size_t(slot)]; }
  uint32_t LastUse(int32_t slot) const { return last_use_[size_t(slot)]; }
  uint32_t step() const { return step_; }
  int32_t hand() const { return hand_; }
  int32_t ResidentRows() const;
  // slot_of_row and row_of_slot are inverse maps, no claim is left (for tests).
  absl::Status CheckConsistent() const;

 private:
  RowCachePolicy() = default;

  std::vector<int32_t> slot_of_row_;
  std::vector<int64_t> row_of_slot_;
  std::vector<uint32_t> last_use_;
  std::vector<int32_t> free_;  // stack of free slots, top at the back
  uint32_t step_ = 0;
  uint32_t window_ = kDefaultRowWindow;
  int32_t hand_ = 0;
  int32_t list_capacity_ = 0;
};

}  // namespace twl

// GPU hot-page cache: which FP16 blocks occupy which of a fixed number of device slots, and
// which slots a decode step may evict. This file is the policy's specification and its host
// implementation (CPU-tested); the offload backend runs the same policy on the GPU
// (offload/cache_plan.cu) over device copies of the same three arrays, so that a decode step
// never waits for the host. Shared rules are the TWL_HD functions below.
//
// State:
//   slot_of_block [num_blocks]  slot holding the block, or -1 (the attention kernel reads
//                               blocks through it: FpKvView.slot_of_block)
//   block_of_slot [num_slots]   block held by the slot, or -1 (free)
//   last_use      [num_slots]   stamp of the last group that needed the slot (0: never)
//
// A decode step is planned in *groups* of (sequence, KV head) units; each group takes a new
// stamp. Pinning: a group may evict only slots whose last_use is older than the previous
// group's stamp, so neither its own blocks nor those of the previous group (whose attention
// may still run while this group's blocks are fetched) are ever evicted. Blocks of groups
// before that may be evicted (forced eviction mid-step): their attention has completed by
// the time the next group's fetch starts (the backend's stream order guarantees it). The
// first group of a step protects only itself (protect_previous = false): the previous
// step's attention is complete before this step's first fetch starts.
//
// Planning one group:
//   1. capacity = num_slots - slots pinned by the previous group.
//   2. Admission, first fit in unit order: a unit is admitted when its distinct blocks fit
//      in what is left of the capacity. Units not admitted are attended straight from host
//      memory (zero copy) by the backend, so a cache smaller than one step's working set is
//      slower, never wrong.
//   3. Each distinct block of the admitted units: resident -> hit, its slot re-stamped
//      (pinned); else -> miss.
//   4. Victims for the misses among evictable slots, oldest first: free slots, then by age
//      (current stamp - last_use, exact up to kAgeBuckets - 2 stamps, older ones tie), ties
//      by slot index on the host (by arrival order on the GPU: the set of resident blocks
//      may then differ, never the correctness of the step). Capacity guarantees enough.
//   5. Each miss takes a victim: the old block is dropped, the fetch list gets (block, slot).
// Thread-safety: none (one owner).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/half.h"

namespace twl {

// Age histogram buckets of the victim search (a power of two; the GPU keeps the histogram in
// shared memory).
inline constexpr int32_t kCacheAgeBuckets = 256;

// Stamps of the group being planned: slots with last_use >= protect_from are pinned.
struct CacheStamps {
  uint32_t current = 0;       // this group's stamp
  uint32_t protect_from = 0;  // the previous group's stamp
};

TWL_HD bool SlotEvictable(uint32_t last_use, CacheStamps s) { return last_use < s.protect_from; }

// Eviction order key of an evictable slot: a larger bucket is evicted first.
TWL_HD int32_t SlotAgeBucket(int32_t block_of_slot, uint32_t last_use, CacheStamps s) {
  if (block_of_slot < 0) return kCacheAgeBuckets - 1;
  const uint32_t age = s.current - last_use;
  return age >= uint32_t(kCacheAgeBuckets - 1) ? kCacheAgeBuckets - 2 : int32_t(age);
}

// One entry of a fetch list: copy FP16 block `block` from the host pool into cache `slot`.
struct FetchEntry {
  int32_t block = -1;
  int32_t slot = -1;
};

// Counters of one planned group (and, summed, of a step or of the cache's life).
struct CacheCounters {
  int64_t units = 0;           // units offered
  int64_t units_direct = 0;    // units not admitted (attended from host memory)
  int64_t blocks_needed = 0;   // distinct blocks of admitted units
  int64_t hits = 0;            // of those, already resident
  int64_t misses = 0;          // of those, fetched
  int64_t evictions = 0;       // resident blocks dropped to make room

  CacheCounters& operator+=(const CacheCounters& o);
};

// Result of planning one group on the host.
struct GroupPlan {
  CacheStamps stamps;
  std::vector<uint8_t> admitted;   // [num_units] 1 = through the cache
  std::vector<FetchEntry> fetch;   // misses, in admission order
  CacheCounters counters;
};

class GpuPageCache {
 public:
  // num_blocks: block ids are in [0, num_blocks). num_slots >= 1.
  static absl::StatusOr<GpuPageCache> Create(int64_t num_blocks, int32_t num_slots);

  int64_t num_blocks() const { return int64_t(slot_of_block_.size()); }
  int32_t num_slots() const { return int32_t(block_of_slot_.size()); }

  // Plans one group. units[u] lists the blocks unit u needs (duplicates allowed, also across
  // units: shared pages of forked sequences). InvalidArgument for a block out of range.
  absl::StatusOr<GroupPlan> PlanGroup(absl::Span<const std::vector<int32_t>> units,
                                      bool protect_previous = true);

  // Drops a block (its page was freed or rewritten); its slot becomes free. No-op if absent.
  void Invalidate(int32_t block);

  int32_t SlotOf(int32_t block) const { return slot_of_block_[block]; }
  int32_t BlockIn(int32_t slot) const { return block_of_slot_[slot]; }
  uint32_t LastUse(int32_t slot) const { return last_use_[slot]; }
  int32_t ResidentBlocks() const;
  const CacheCounters& totals() const { return totals_; }
  // Slots pinned by the last planned group (the next group cannot use them).
  int32_t pinned_by_last_group() const { return pinned_last_; }
  uint32_t stamp() const { return stamp_; }

  // Checks that slot_of_block and block_of_slot are inverse maps (for tests).
  absl::Status CheckConsistent() const;

 private:
  GpuPageCache() = default;

  std::vector<int32_t> slot_of_block_;
  std::vector<int32_t> block_of_slot_;
  std::vector<uint32_t> last_use_;
  std::vector<uint32_t> need_stamp_;  // [num_blocks] de-duplication within a group
  uint32_t stamp_ = 1;                // stamps start at 2 so that last_use 0 is never pinned
  int32_t pinned_last_ = 0;
  CacheCounters totals_;
};

// ---- Host planning of a step's groups ---------------------------------------------------
// The host knows, per sequence, an upper bound of the distinct blocks its units can need
// (selected pages per KV head times KV heads); the GPU knows the real counts. The backend
// splits a batch into contiguous ranges of sequences ("groups") so that consecutive groups
// pipeline (prune of one while the previous one is fetched) and, where the bounds allow,
// each group fits in half of the cache (two groups are pinned at once).
struct SeqGroup {
  int32_t first_seq = 0;
  int32_t num_seqs = 0;
  int64_t worst_blocks = 0;     // sum of the bounds of its sequences
  bool may_overflow = false;    // bound exceeds the capacity left by the previous group
};

// worst_blocks[s]: bound of sequence s. min_groups: groups wanted for pipelining (clamped to
// the batch). max_groups caps the count (each group costs a few kernel launches). Groups
// are contiguous, non-empty, cover the batch, and balance the bounds.
std::vector<SeqGroup> PlanSeqGroups(absl::Span<const int64_t> worst_blocks, int32_t num_slots,
                                    int32_t min_groups, int32_t max_groups);

}  // namespace twl

// GPU hot-page cache: which FP16 blocks occupy which of a fixed number of device slots, and
// which blocks a decode step reads in place from host memory instead. This file is the
// policy's specification and its host implementation (CPU-tested); the offload backend runs
// the same policy on the GPU (pipeline/fetch/cache/cuda/cache_plan.cu) over device copies of
// the same arrays, so that a decode step never waits for the host. Shared rules are the
// TWL_HD functions below.
//
// State:
//   slot_of_block [num_blocks]  slot holding the block, or -1 (the attention kernel reads
//                               blocks through it: FpKvView.slot_of_block; -1 -> read in
//                               place from the mapped host pool, FpKvView.miss_kv)
//   block_of_slot [num_slots]   block held by the slot, or -1 (free)
//   last_use      [num_slots]   stamp of the last group that needed the slot (0: never)
//   value         [num_blocks]  decayed count of the block's kept rows over recent steps
//                               (16-bit count, 16-bit epoch: see DecayedValue)
//
// Why by value and not LRU: a step's kept blocks can exceed the cache several times (8
// layers in turn, ~2000 blocks per (sequence, KV head) at 128k), and LRU over a cyclic access
// larger than the cache evicts every block just before its reuse: 0 hits, every needed
// block fetched whole (8 KiB for ~4.5 kept rows). Here a block enters the cache only by
// displacing a block of clearly lower value (kAdmitMargin buckets, ~1.4x), so the hottest
// blocks stay resident (a cyclic working set W over a cache C hits ~C/W), blocks whose heads
// keep many rows per block (flat heads) win over sparse ones (the value counts rows: caching
// saves their row reads each step), and a block that is not admitted costs only its kept rows
// read in place (attention reads host memory through FpKvView.miss_kv).
//
// A decode step is planned in *groups* of (sequence, KV head) units; each group takes a new
// stamp. Pinning: a group may evict only slots whose last_use is older than the previous
// group's stamp, so neither its own blocks nor those of the previous group (whose attention
// may still run while this group's blocks are fetched) are ever evicted; and a block the
// previous group reads in place is not admitted by this one (its slot would be filled while
// that attention reads through slot_of_block). Blocks of groups before that may be evicted
// (forced eviction mid-step): their attention has completed by the time the next group's
// fetch starts (the backend's stream order guarantees it). The first group of a step
// protects only itself (protect_previous = false) and starts a step (epoch counting).
//
// Planning one group:
//   1. Every unit is attended (units_direct stays 0; kept for the counters' layout).
//   2. Each distinct block of the group (claimed once, also across units that share it): its
//      value += its kept rows in the claiming unit (after decay). Resident -> hit, slot
//      re-stamped (pinned). Else a miss: a candidate unless the previous group read it in
//      place (then in place again); at most num_slots candidates (the rest: in place).
//   3. Admission by histograms (PairAdmissions): candidates by ValueBucket, highest first,
//      are paired with evictable slots by VictimKey, lowest first (free slots first); a pair
//      is taken while the candidate's bucket >= the victim's key + kAdmitMargin (any
//      candidate at or above the admission floor, if any, takes a free slot).
//      Ties within a bucket: first listed / least recently
//      used then slot index on the host, arrival order on the GPU (which blocks are admitted
//      may then differ; how many may not).
//   4. Each admitted candidate takes its victim: the old block is dropped, the fetch list
//      gets (block, slot). Candidates not admitted are read in place (direct).
// Thread-safety: none (one owner).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "core/half.h"

namespace twl {

// Histogram buckets of the admission (a power of two; the GPU keeps the histograms in
// shared memory). The name is historical (buckets were LRU ages).
inline constexpr int32_t kCacheAgeBuckets = 256;
// A candidate displaces a resident block only when its value bucket is at least this many
// buckets above the victim's (8 buckets per octave: ~1.41x). Without a margin, values equal
// up to decay timing (every block of a cyclic working set) would swap places every step.
inline constexpr int32_t kAdmitMargin = 4;
// Admission floor (optional, off by default): a candidate is admitted only once its value
// (decayed kept rows over recent steps) reaches min_admit_value rows, free slots included.
// Rationale: fetching a block moves ~8 KiB, reading its kept rows in place ~512 B each at
// about half the bandwidth, so admission pays only for a block read ~8+ more times; without
// a floor the flickering tail of top-p sets fills free slots and churns (H200, B = 1, 128k,
// steady state: 40 MB of whole blocks per layer-step). Measured with a floor of 8 rows
// (bench/RESULTS.md, third session): B = 1 hit 0.83 -> 0.23 and 1.16 -> 1.40 ms per
// layer-step, since rows read in place move slower than whole blocks and the attention then
// waits on PCIe; so the default stays 0 (no floor). kMinAdmitValue is the tested setting.
inline constexpr uint32_t kMinAdmitValue = 8;
inline constexpr uint32_t kDefaultMinAdmitValue = 0;
// Steps (plan calls that start a step) per halving of every value, unless configured: long
// enough to see a block several times when L layers take turns (the backend uses 4 L).
inline constexpr int32_t kDefaultDecaySteps = 32;

// Stamps of the group being planned: slots with last_use >= protect_from are pinned.
struct CacheStamps {
  uint32_t current = 0;       // this group's stamp
  uint32_t protect_from = 0;  // the previous group's stamp
  uint32_t epoch = 0;         // decay epoch (steps / decay period), for the block values
};

TWL_HD bool SlotEvictable(uint32_t last_use, CacheStamps s) { return last_use < s.protect_from; }

// LRU age bucket of an evictable slot (the host's tie-break among equal victim keys).
TWL_HD int32_t SlotAgeBucket(int32_t block_of_slot, uint32_t last_use, CacheStamps s) {
  if (block_of_slot < 0) return kCacheAgeBuckets - 1;
  const uint32_t age = s.current - last_use;
  return age >= uint32_t(kCacheAgeBuckets - 1) ? kCacheAgeBuckets - 2 : int32_t(age);
}

// Block values: low 16 bits a count of kept rows, high 16 bits the epoch it was last brought
// to. The value at a later epoch is the count halved once per elapsed epoch (lazy decay: the
// same as halving every value at each epoch, without touching them). An epoch distance that
// wraps past 2^16 epochs (a block untouched that long) may resurrect an old value: a priority
// error only, never a correctness one.
TWL_HD uint32_t DecayedValue(uint32_t packed, uint32_t epoch) {
  const uint32_t d = (epoch - (packed >> 16)) & 0xffffu;
  return d >= 16 ? 0u : (packed & 0xffffu) >> d;
}
TWL_HD uint32_t BumpValue(uint32_t packed, uint32_t epoch, uint32_t rows) {
  uint32_t v = DecayedValue(packed, epoch) + rows;
  if (v > 0xffffu) v = 0xffffu;
  return ((epoch & 0xffffu) << 16) | v;
}
// Logarithmic bucket of a value, 8 per octave, in [kAdmitMargin, kAdmitMargin + 129).
TWL_HD int32_t ValueBucket(uint32_t v) {
  if (v == 0) return kAdmitMargin;
  int32_t e = 0;
  while ((v >> (e + 1)) != 0) ++e;  // floor(log2 v), v < 2^16
  const uint32_t m = e >= 3 ? (v >> (e - 3)) & 7u : (v << (3 - e)) & 7u;
  return kAdmitMargin + 1 + 8 * e + int32_t(m);
}
// Eviction key of an evictable slot: 0 free, else its block's value bucket (lowest first).
TWL_HD int32_t VictimKey(int32_t block_of_slot, const uint32_t* value, uint32_t epoch) {
  return block_of_slot < 0 ? 0 : ValueBucket(DecayedValue(value[block_of_slot], epoch));
}

// Result of pairing candidates (by value bucket) with victims (by key): `admitted` pairs;
// candidates in buckets > miss_cut are all admitted, and miss_quota of bucket miss_cut;
// victims with keys < victim_cut all evicted, and victim_quota of key victim_cut.
struct AdmitCut {
  int32_t admitted = 0;
  int32_t miss_cut = kCacheAgeBuckets;
  int32_t miss_quota = 0;
  int32_t victim_cut = -1;
  int32_t victim_quota = 0;
};

// The admission rule of step 3 over histograms [kCacheAgeBuckets] of candidate buckets and
// victim keys (both ascending in value): highest candidates against lowest victims while
// the candidate beats the victim by kAdmitMargin (a free victim, key 0, always loses).
TWL_HD AdmitCut PairAdmissions(const int32_t* miss_hist, const int32_t* victim_hist,
                               uint32_t min_admit_value = kDefaultMinAdmitValue) {
  AdmitCut c;
  const int32_t min_bucket = min_admit_value ? ValueBucket(min_admit_value) : 0;
  int32_t mb = kCacheAgeBuckets - 1, vb = 0;
  int32_t mrem = miss_hist[mb], vrem = victim_hist[vb];
  for (;;) {
    while (mb >= 0 && mrem == 0) {
      --mb;
      if (mb >= 0) mrem = miss_hist[mb];
    }
    while (vb < kCacheAgeBuckets && vrem == 0) {
      ++vb;
      if (vb < kCacheAgeBuckets) vrem = victim_hist[vb];
    }
    if (mb < 0 || vb >= kCacheAgeBuckets) break;
    if (mb < min_bucket) break;  // worth less than its fetch
    if (vb != 0 && mb < vb + kAdmitMargin) break;
    const int32_t t = mrem < vrem ? mrem : vrem;
    if (c.miss_cut != mb) {
      c.miss_cut = mb;
      c.miss_quota = 0;
    }
    if (c.victim_cut != vb) {
      c.victim_cut = vb;
      c.victim_quota = 0;
    }
    c.miss_quota += t;
    c.victim_quota += t;
    c.admitted += t;
    mrem -= t;
    vrem -= t;
  }
  return c;
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
  // Appended: misses the policy did not admit, read in place from host memory this step
  // (not part of blocks_needed / misses above: hits + misses + direct_blocks = all distinct
  // blocks), and their kept rows (the bytes they cost: rows x 2 x head_dim x 2).
  int64_t direct_blocks = 0;
  int64_t direct_rows = 0;
  int64_t hit_rows = 0;        // kept rows of the hits (bytes the cache saved)
  int64_t fetched_rows = 0;    // kept rows of the fetched blocks (they move whole blocks)

  CacheCounters& operator+=(const CacheCounters& o);
};

// Result of planning one group on the host.
struct GroupPlan {
  CacheStamps stamps;
  std::vector<uint8_t> admitted;   // [num_units] 1 = through the cache (every unit now)
  std::vector<FetchEntry> fetch;   // admitted misses
  std::vector<int32_t> direct;     // misses read in place (not admitted)
  CacheCounters counters;
};

class GpuPageCache {
 public:
  // num_blocks: block ids are in [0, num_blocks). num_slots >= 1. decay_steps >= 1: steps
  // per halving of the block values. min_admit_value: the admission floor (0: none).
  static absl::StatusOr<GpuPageCache> Create(int64_t num_blocks, int32_t num_slots,
                                             int32_t decay_steps = kDefaultDecaySteps,
                                             uint32_t min_admit_value = kDefaultMinAdmitValue);

  int64_t num_blocks() const { return int64_t(slot_of_block_.size()); }
  int32_t num_slots() const { return int32_t(block_of_slot_.size()); }

  // Plans one group. units[u] lists the blocks unit u needs, once per kept token (the
  // repeats of a block are its kept rows; shared pages of forked sequences may repeat it
  // across units). InvalidArgument for a block out of range.
  absl::StatusOr<GroupPlan> PlanGroup(absl::Span<const std::vector<int32_t>> units,
                                      bool protect_previous = true);

  // Drops a block (its page was freed or rewritten): its slot becomes free, its value 0.
  void Invalidate(int32_t block);

  int32_t SlotOf(int32_t block) const { return slot_of_block_[block]; }
  int32_t BlockIn(int32_t slot) const { return block_of_slot_[slot]; }
  uint32_t LastUse(int32_t slot) const { return last_use_[slot]; }
  // The block's value at the current epoch (see DecayedValue).
  uint32_t Value(int32_t block) const { return DecayedValue(value_[size_t(block)], epoch()); }
  uint32_t epoch() const { return steps_ / uint32_t(decay_steps_); }
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
  std::vector<uint32_t> value_;       // [num_blocks] packed (epoch, count)
  uint32_t stamp_ = 1;                // stamps start at 2 so that last_use 0 is never pinned
  uint32_t steps_ = 0;                // plans that started a step
  int32_t decay_steps_ = kDefaultDecaySteps;
  uint32_t min_admit_value_ = kDefaultMinAdmitValue;
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

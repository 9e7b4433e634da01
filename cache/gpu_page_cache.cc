// Host implementation of the GPU hot-page cache policy (see gpu_page_cache.h): the
// specification the device kernels in offload/cache_plan.cu follow, and its CPU tests' subject.
#include "cache/gpu_page_cache.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace twl {

CacheCounters& CacheCounters::operator+=(const CacheCounters& o) {
  units += o.units;
  units_direct += o.units_direct;
  blocks_needed += o.blocks_needed;
  hits += o.hits;
  misses += o.misses;
  evictions += o.evictions;
  return *this;
}

absl::StatusOr<GpuPageCache> GpuPageCache::Create(int64_t num_blocks, int32_t num_slots) {
  if (num_blocks < 0 || num_blocks > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GpuPageCache: num_blocks %d outside [0, 2^31)", num_blocks));
  }
  if (num_slots < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GpuPageCache: num_slots %d < 1", num_slots));
  }
  GpuPageCache c;
  c.slot_of_block_.assign(size_t(num_blocks), -1);
  c.need_stamp_.assign(size_t(num_blocks), 0);
  c.block_of_slot_.assign(size_t(num_slots), -1);
  c.last_use_.assign(size_t(num_slots), 0);
  return c;
}

absl::StatusOr<GroupPlan> GpuPageCache::PlanGroup(absl::Span<const std::vector<int32_t>> units,
                                                  bool protect_previous) {
  const int64_t nb = num_blocks();
  for (size_t u = 0; u < units.size(); ++u) {
    for (int32_t b : units[u]) {
      if (b < 0 || b >= nb) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "GpuPageCache::PlanGroup: unit %d needs block %d outside [0, %d)", u, b, nb));
      }
    }
  }
  GroupPlan plan;
  plan.stamps.protect_from = protect_previous ? stamp_ : stamp_ + 1;
  plan.stamps.current = ++stamp_;
  const CacheStamps st = plan.stamps;
  CacheCounters& cnt = plan.counters;
  cnt.units = int64_t(units.size());

  // 1-2. Admission against the capacity the previous group leaves. A unit's distinct
  // blocks are counted without de-duplication across units (conservative, like the GPU).
  const int64_t capacity = num_slots() - (protect_previous ? pinned_last_ : 0);
  plan.admitted.assign(units.size(), 0);
  int64_t used = 0;
  std::vector<int32_t> distinct;
  std::vector<std::vector<int32_t>> unit_blocks(units.size());
  for (size_t u = 0; u < units.size(); ++u) {
    distinct = units[u];
    std::sort(distinct.begin(), distinct.end());
    distinct.erase(std::unique(distinct.begin(), distinct.end()), distinct.end());
    if (used + int64_t(distinct.size()) <= capacity) {
      used += int64_t(distinct.size());
      plan.admitted[u] = 1;
      unit_blocks[u] = distinct;
    } else {
      ++cnt.units_direct;
    }
  }

  // 3. Hits are pinned; misses collected once per block.
  std::vector<int32_t> missing;
  for (size_t u = 0; u < units.size(); ++u) {
    for (int32_t b : unit_blocks[u]) {
      if (need_stamp_[b] == st.current) continue;
      need_stamp_[b] = st.current;
      ++cnt.blocks_needed;
      const int32_t slot = slot_of_block_[b];
      if (slot >= 0) {
        ++cnt.hits;
        last_use_[slot] = st.current;
      } else {
        missing.push_back(b);
      }
    }
  }
  cnt.misses = int64_t(missing.size());

  // 4. Victims: evictable slots, largest age bucket first, then slot index (counting sort).
  std::vector<int32_t> bucket_count(kCacheAgeBuckets + 1, 0);
  std::vector<int32_t> bucket_of(size_t(num_slots()), -1);
  for (int32_t s = 0; s < num_slots(); ++s) {
    if (!SlotEvictable(last_use_[s], st)) continue;
    bucket_of[s] = SlotAgeBucket(block_of_slot_[s], last_use_[s], st);
    ++bucket_count[kCacheAgeBuckets - 1 - bucket_of[s]];  // oldest first
  }
  std::vector<int32_t> start(kCacheAgeBuckets + 1, 0);
  for (int32_t i = 0; i < kCacheAgeBuckets; ++i) start[i + 1] = start[i] + bucket_count[i];
  if (start[kCacheAgeBuckets] < int32_t(missing.size())) {
    // Cannot happen when admission is right; report rather than corrupt the maps.
    return absl::InternalError(absl::StrFormat(
        "GpuPageCache::PlanGroup: %d misses but %d evictable slots", missing.size(),
        start[kCacheAgeBuckets]));
  }
  std::vector<int32_t> order(static_cast<size_t>(start[kCacheAgeBuckets]));
  for (int32_t s = 0; s < num_slots(); ++s) {
    if (bucket_of[s] >= 0) order[size_t(start[kCacheAgeBuckets - 1 - bucket_of[s]]++)] = s;
  }

  // 5. Each miss takes the next victim.
  plan.fetch.reserve(missing.size());
  for (size_t i = 0; i < missing.size(); ++i) {
    const int32_t slot = order[i];
    const int32_t old = block_of_slot_[slot];
    if (old >= 0) {
      slot_of_block_[old] = -1;
      ++cnt.evictions;
    }
    slot_of_block_[missing[i]] = slot;
    block_of_slot_[slot] = missing[i];
    last_use_[slot] = st.current;
    plan.fetch.push_back(FetchEntry{missing[i], slot});
  }
  pinned_last_ = int32_t(cnt.hits + cnt.misses);
  totals_ += cnt;
  return plan;
}

void GpuPageCache::Invalidate(int32_t block) {
  if (block < 0 || block >= num_blocks()) return;
  const int32_t slot = slot_of_block_[block];
  if (slot < 0) return;
  slot_of_block_[block] = -1;
  block_of_slot_[slot] = -1;
  last_use_[slot] = 0;
}

int32_t GpuPageCache::ResidentBlocks() const {
  return int32_t(std::count_if(block_of_slot_.begin(), block_of_slot_.end(),
                               [](int32_t b) { return b >= 0; }));
}

absl::Status GpuPageCache::CheckConsistent() const {
  int64_t resident = 0;
  for (int64_t b = 0; b < num_blocks(); ++b) {
    const int32_t s = slot_of_block_[b];
    if (s < 0) continue;
    ++resident;
    if (s >= num_slots() || block_of_slot_[s] != b) {
      return absl::InternalError(
          absl::StrFormat("block %d -> slot %d, but that slot holds %d", b, s,
                          s < num_slots() ? block_of_slot_[s] : -2));
    }
  }
  if (resident != ResidentBlocks()) {
    return absl::InternalError(absl::StrFormat("%d blocks map to slots but %d slots are held",
                                               resident, ResidentBlocks()));
  }
  return absl::OkStatus();
}

std::vector<SeqGroup> PlanSeqGroups(absl::Span<const int64_t> worst_blocks, int32_t num_slots,
                                    int32_t min_groups, int32_t max_groups) {
  std::vector<SeqGroup> groups;
  const int32_t n = int32_t(worst_blocks.size());
  if (n == 0) return groups;
  int64_t total = 0;
  for (int64_t w : worst_blocks) total += std::max<int64_t>(w, 0);
  // Two groups are pinned at once: aim for groups of at most half the cache.
  const int64_t half = std::max<int64_t>(1, num_slots / 2);
  int64_t want = std::max<int64_t>(min_groups, (total + half - 1) / half);
  want = std::clamp<int64_t>(want, 1, std::min<int64_t>(n, std::max(1, max_groups)));
  // Contiguous balanced cut: close group k once its prefix reaches (k+1)/want of the total,
  // leaving at least one sequence for every later group.
  int64_t prefix = 0;
  SeqGroup cur;
  for (int32_t s = 0; s < n; ++s) {
    const int64_t w = std::max<int64_t>(worst_blocks[s], 0);
    cur.num_seqs += 1;
    cur.worst_blocks += w;
    prefix += w;
    const int64_t k = int64_t(groups.size());
    const int64_t left_groups = want - k - 1;
    const int64_t left_seqs = n - s - 1;
    const bool reached = prefix * want >= (k + 1) * total;
    if (k + 1 < want && left_seqs >= left_groups && (reached || left_seqs == left_groups)) {
      groups.push_back(cur);
      cur = SeqGroup{};
      cur.first_seq = s + 1;
    }
  }
  if (cur.num_seqs > 0) groups.push_back(cur);
  for (size_t g = 0; g < groups.size(); ++g) {
    const int64_t prev = g == 0 ? 0 : std::min<int64_t>(groups[g - 1].worst_blocks, num_slots);
    groups[g].may_overflow = groups[g].worst_blocks > num_slots - prev;
  }
  return groups;
}

}  // namespace twl

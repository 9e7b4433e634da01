// Host implementation of the GPU hot-page cache policy (see gpu_page_cache.h): the
// specification the device kernels in pipeline/fetch/cache/cuda/cache_plan.cu follow, and its
// CPU tests' subject.
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
  direct_blocks += o.direct_blocks;
  direct_rows += o.direct_rows;
  hit_rows += o.hit_rows;
  fetched_rows += o.fetched_rows;
  return *this;
}

absl::StatusOr<GpuPageCache> GpuPageCache::Create(int64_t num_blocks, int32_t num_slots,
                                                  int32_t decay_steps,
                                                  uint32_t min_admit_value) {
  if (num_blocks < 0 || num_blocks > INT32_MAX) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GpuPageCache: num_blocks %d outside [0, 2^31)", num_blocks));
  }
  if (num_slots < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GpuPageCache: num_slots %d < 1", num_slots));
  }
  if (decay_steps < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("GpuPageCache: decay_steps %d < 1", decay_steps));
  }
  GpuPageCache c;
  c.decay_steps_ = decay_steps;
  c.min_admit_value_ = min_admit_value;
  c.value_.assign(size_t(num_blocks), 0);
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
  if (!protect_previous) ++steps_;
  plan.stamps.protect_from = protect_previous ? stamp_ : stamp_ + 1;
  plan.stamps.current = ++stamp_;
  plan.stamps.epoch = epoch();
  const CacheStamps st = plan.stamps;
  CacheCounters& cnt = plan.counters;
  cnt.units = int64_t(units.size());
  plan.admitted.assign(units.size(), 1);

  // 2. Each unit's distinct blocks (ascending id) with their repeats as rows, claimed by
  // the first unit (in unit order) that lists them.
  struct Candidate {
    int32_t block;
    int32_t rows;
    int32_t bucket;
  };
  std::vector<Candidate> candidates;
  std::vector<int32_t> sorted;
  for (size_t u = 0; u < units.size(); ++u) {
    sorted = units[u];
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i < sorted.size();) {
      const int32_t b = sorted[i];
      size_t j = i;
      while (j < sorted.size() && sorted[j] == b) ++j;
      const int32_t rows = int32_t(j - i);
      i = j;
      if (need_stamp_[b] == st.current) continue;  // claimed by an earlier unit
      const bool prev_in_place = need_stamp_[b] == st.protect_from && slot_of_block_[b] < 0;
      need_stamp_[b] = st.current;
      value_[size_t(b)] = BumpValue(value_[size_t(b)], st.epoch, uint32_t(rows));
      const int32_t slot = slot_of_block_[b];
      if (slot >= 0) {
        ++cnt.hits;
        cnt.hit_rows += rows;
        last_use_[slot] = st.current;
      } else if (prev_in_place || int64_t(candidates.size()) >= num_slots()) {
        plan.direct.push_back(b);
        cnt.direct_rows += rows;
      } else {
        candidates.push_back(
            Candidate{b, rows, ValueBucket(DecayedValue(value_[size_t(b)], st.epoch))});
      }
    }
  }

  // 3. Admission: histograms of candidate buckets and evictable victim keys, paired.
  std::vector<int32_t> miss_hist(kCacheAgeBuckets, 0), victim_hist(kCacheAgeBuckets, 0);
  for (const Candidate& c : candidates) ++miss_hist[size_t(c.bucket)];
  struct Victim {
    int32_t key;
    int32_t age;
    int32_t slot;
  };
  std::vector<Victim> victims;
  for (int32_t s = 0; s < num_slots(); ++s) {
    if (!SlotEvictable(last_use_[s], st)) continue;
    const int32_t key = VictimKey(block_of_slot_[s], value_.data(), st.epoch);
    ++victim_hist[size_t(key)];
    victims.push_back(Victim{key, SlotAgeBucket(block_of_slot_[s], last_use_[s], st), s});
  }
  const AdmitCut cut = PairAdmissions(miss_hist.data(), victim_hist.data(), min_admit_value_);
  // Highest buckets first, first listed first; lowest keys first, then oldest, then slot.
  std::stable_sort(candidates.begin(), candidates.end(),
                   [](const Candidate& x, const Candidate& y) { return x.bucket > y.bucket; });
  std::sort(victims.begin(), victims.end(), [](const Victim& x, const Victim& y) {
    if (x.key != y.key) return x.key < y.key;
    if (x.age != y.age) return x.age > y.age;
    return x.slot < y.slot;
  });
  if (int64_t(victims.size()) < cut.admitted) {
    // Cannot happen (the pairing counts evictable slots); report rather than corrupt.
    return absl::InternalError(absl::StrFormat(
        "GpuPageCache::PlanGroup: %d admitted but %d evictable slots", cut.admitted,
        victims.size()));
  }

  // 4. Each admitted candidate takes the next victim; the others are read in place.
  plan.fetch.reserve(size_t(cut.admitted));
  for (size_t i = 0; i < candidates.size(); ++i) {
    const Candidate& c = candidates[i];
    if (int32_t(i) >= cut.admitted) {
      plan.direct.push_back(c.block);
      cnt.direct_rows += c.rows;
      continue;
    }
    const int32_t slot = victims[i].slot;
    const int32_t old = block_of_slot_[slot];
    if (old >= 0) {
      slot_of_block_[old] = -1;
      ++cnt.evictions;
    }
    slot_of_block_[c.block] = slot;
    block_of_slot_[slot] = c.block;
    last_use_[slot] = st.current;
    plan.fetch.push_back(FetchEntry{c.block, slot});
    cnt.fetched_rows += c.rows;
  }
  cnt.misses = int64_t(plan.fetch.size());
  cnt.direct_blocks = int64_t(plan.direct.size());
  cnt.blocks_needed = cnt.hits + cnt.misses;
  pinned_last_ = int32_t(cnt.hits + cnt.misses);
  totals_ += cnt;
  return plan;
}

void GpuPageCache::Invalidate(int32_t block) {
  if (block < 0 || block >= num_blocks()) return;
  value_[size_t(block)] = 0;  // a reused page starts without the old value
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

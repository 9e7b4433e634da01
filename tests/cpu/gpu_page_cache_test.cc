// Tests of the GPU hot-page cache policy (cache/gpu_page_cache.h) on the host: hits and
// misses, LRU order of victims, pinning of the current and previous group, admission when a
// step needs more blocks than the cache holds, de-duplication, invalidation, and the
// host-side split of a batch into groups. Random drifting workloads check the invariants
// after every group against an independent model of "which slots could have been evicted".
#include "cache/gpu_page_cache.h"

#include <algorithm>
#include <random>
#include <set>
#include <vector>

#include "gtest/gtest.h"

namespace twl {
namespace {

using Units = std::vector<std::vector<int32_t>>;

std::set<int32_t> Distinct(const std::vector<int32_t>& v) { return {v.begin(), v.end()}; }

TEST(GpuPageCacheTest, CreateRejectsBadSizes) {
  EXPECT_FALSE(GpuPageCache::Create(10, 0).ok());
  EXPECT_FALSE(GpuPageCache::Create(-1, 4).ok());
  EXPECT_TRUE(GpuPageCache::Create(0, 1).ok());
}

TEST(GpuPageCacheTest, PlanRejectsBlockOutOfRange) {
  auto c = GpuPageCache::Create(8, 4).value();
  EXPECT_EQ(c.PlanGroup(Units{{1, 8}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.PlanGroup(Units{{-1}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.ResidentBlocks(), 0);  // nothing changed
}

TEST(GpuPageCacheTest, FirstStepMissesSecondStepHits) {
  auto c = GpuPageCache::Create(100, 16).value();
  const Units units = {{3, 4, 5}, {40, 41}, {99}};
  auto p1 = c.PlanGroup(units, false).value();
  EXPECT_EQ(p1.counters.blocks_needed, 6);
  EXPECT_EQ(p1.counters.misses, 6);
  EXPECT_EQ(p1.counters.hits, 0);
  EXPECT_EQ(p1.counters.evictions, 0);
  ASSERT_EQ(p1.fetch.size(), 6u);
  std::set<int32_t> slots;
  for (const FetchEntry& f : p1.fetch) {
    EXPECT_EQ(c.SlotOf(f.block), f.slot);
    slots.insert(f.slot);
  }
  EXPECT_EQ(slots.size(), 6u);
  ASSERT_TRUE(c.CheckConsistent().ok());

  auto p2 = c.PlanGroup(units, false).value();
  EXPECT_EQ(p2.counters.hits, 6);
  EXPECT_EQ(p2.counters.misses, 0);
  EXPECT_TRUE(p2.fetch.empty());
  for (const FetchEntry& f : p1.fetch) EXPECT_EQ(c.SlotOf(f.block), f.slot);  // not moved
}

TEST(GpuPageCacheTest, DuplicatesWithinAndAcrossUnitsFetchedOnce) {
  auto c = GpuPageCache::Create(50, 8).value();
  // A forked sequence shares block 7 with its parent; unit 0 lists block 2 twice.
  auto p = c.PlanGroup(Units{{2, 2, 7}, {7, 9}}, false).value();
  EXPECT_EQ(p.counters.blocks_needed, 3);
  EXPECT_EQ(p.fetch.size(), 3u);
  EXPECT_TRUE(c.CheckConsistent().ok());
}

TEST(GpuPageCacheTest, EvictsLeastRecentlyUsedFirst) {
  auto c = GpuPageCache::Create(100, 4).value();
  // Fill with 10, 11, 12, 13 in separate groups, so their ages differ.
  for (int32_t b : {10, 11, 12, 13}) ASSERT_TRUE(c.PlanGroup(Units{{b}}, false).ok());
  ASSERT_TRUE(c.PlanGroup(Units{{10}}, false).ok());  // 10 becomes the most recent
  // Two new blocks: the victims must be 11 and 12 (the oldest two).
  auto p = c.PlanGroup(Units{{20, 21}}, false).value();
  EXPECT_EQ(p.counters.evictions, 2);
  EXPECT_LT(c.SlotOf(11), 0);
  EXPECT_LT(c.SlotOf(12), 0);
  EXPECT_GE(c.SlotOf(10), 0);
  EXPECT_GE(c.SlotOf(13), 0);
  EXPECT_TRUE(c.CheckConsistent().ok());
}

TEST(GpuPageCacheTest, FreeSlotsAreUsedBeforeEvicting) {
  auto c = GpuPageCache::Create(100, 4).value();
  ASSERT_TRUE(c.PlanGroup(Units{{1, 2}}, false).ok());
  auto p = c.PlanGroup(Units{{3, 4}}, false).value();
  EXPECT_EQ(p.counters.evictions, 0);
  EXPECT_EQ(c.ResidentBlocks(), 4);
}

TEST(GpuPageCacheTest, PreviousGroupIsPinned) {
  auto c = GpuPageCache::Create(100, 6).value();
  ASSERT_TRUE(c.PlanGroup(Units{{1, 2, 3}}, false).ok());  // step 1 group 0
  ASSERT_TRUE(c.PlanGroup(Units{{4, 5, 6}}, true).ok());   // step 1 group 1: fills the cache
  // Step 2, group 0 may evict anything (the previous step has finished); 1, 2, 3 are the
  // oldest, so they go first.
  auto p0 = c.PlanGroup(Units{{7, 8, 9}}, false).value();
  EXPECT_EQ(p0.counters.evictions, 3);
  for (int32_t b : {1, 2, 3}) EXPECT_LT(c.SlotOf(b), 0);
  // Group 1 of step 2 must not evict 7, 8, 9 (pinned by group 0, whose attention may still
  // run): only the three slots of 4, 5, 6 are available, so 2 + 2 blocks do not fit.
  auto p1 = c.PlanGroup(Units{{10, 11}, {12, 13}}, true).value();
  for (int32_t b : {7, 8, 9}) EXPECT_GE(c.SlotOf(b), 0) << b;
  EXPECT_EQ(p1.admitted[0], 1);
  EXPECT_EQ(p1.admitted[1], 0);  // 2 + 2 > capacity 3
  EXPECT_EQ(p1.counters.units_direct, 1);
  EXPECT_TRUE(c.CheckConsistent().ok());
}

TEST(GpuPageCacheTest, StepLargerThanCacheAdmitsFirstFit) {
  auto c = GpuPageCache::Create(1000, 10).value();
  const Units units = {{1, 2, 3, 4, 5, 6}, {7, 8, 9, 10, 11}, {12, 13, 14, 15}, {16}};
  auto p = c.PlanGroup(units, false).value();
  // 6 fit, 5 does not (11 > 10), 4 does (10), 1 does not (11).
  EXPECT_EQ(p.admitted, (std::vector<uint8_t>{1, 0, 1, 0}));
  EXPECT_EQ(p.counters.blocks_needed, 10);
  EXPECT_EQ(p.counters.units_direct, 2);
  for (int32_t b : {1, 2, 3, 4, 5, 6, 12, 13, 14, 15}) EXPECT_GE(c.SlotOf(b), 0);
  // A unit larger than the whole cache is never admitted, and that is not an error.
  auto big = c.PlanGroup(Units{std::vector<int32_t>(11, 0)}, false);
  ASSERT_TRUE(big.ok());
  std::vector<int32_t> eleven;
  for (int32_t b = 100; b < 111; ++b) eleven.push_back(b);
  auto p2 = c.PlanGroup(Units{eleven}, false).value();
  EXPECT_EQ(p2.admitted[0], 0);
  EXPECT_TRUE(p2.fetch.empty());
}

TEST(GpuPageCacheTest, InvalidateFreesTheSlot) {
  auto c = GpuPageCache::Create(100, 2).value();
  ASSERT_TRUE(c.PlanGroup(Units{{5, 6}}, false).ok());
  const int32_t slot = c.SlotOf(5);
  c.Invalidate(5);
  c.Invalidate(5);   // twice: no-op
  c.Invalidate(77);  // absent: no-op
  EXPECT_LT(c.SlotOf(5), 0);
  EXPECT_EQ(c.BlockIn(slot), -1);
  EXPECT_TRUE(c.CheckConsistent().ok());
  // The next miss takes the freed slot, not 6's.
  auto p = c.PlanGroup(Units{{8}}, false).value();
  EXPECT_EQ(p.counters.evictions, 0);
  EXPECT_EQ(c.SlotOf(8), slot);
  EXPECT_EQ(c.SlotOf(5), -1);
  auto p2 = c.PlanGroup(Units{{5}}, false).value();  // refetched, not a stale hit
  EXPECT_EQ(p2.counters.misses, 1);
}

// Random drifting top-p-like working sets, random group splits, caches from too small to
// roomy: after every group check the invariants against a snapshot taken before it.
TEST(GpuPageCacheTest, RandomDriftInvariants) {
  std::mt19937_64 rng(0xC0FFEEull ^ uint64_t(std::random_device{}()));
  for (int32_t trial = 0; trial < 24; ++trial) {
    const int32_t num_blocks = 200 + int32_t(rng() % 800);
    const int32_t num_units = 1 + int32_t(rng() % 12);
    const int32_t per_unit = 1 + int32_t(rng() % 40);
    const int32_t num_slots = 1 + int32_t(rng() % (num_units * per_unit + 20));
    auto c = GpuPageCache::Create(num_blocks, num_slots).value();
    // Each unit has a "hot set" that drifts: each step a few blocks are replaced.
    std::vector<std::vector<int32_t>> hot(static_cast<size_t>(num_units));
    for (auto& h : hot) {
      for (int32_t i = 0; i < per_unit; ++i) h.push_back(int32_t(rng() % num_blocks));
    }
    int64_t total_hits = 0, total_needed = 0;
    for (int32_t step = 0; step < 30; ++step) {
      for (auto& h : hot) {
        for (int32_t& b : h) {
          if (rng() % 10 == 0) b = int32_t(rng() % num_blocks);
        }
      }
      // Split units into 1..3 contiguous groups.
      const int32_t groups = 1 + int32_t(rng() % 3);
      std::vector<std::set<int32_t>> prev_needed;
      for (int32_t g = 0; g < groups; ++g) {
        const int32_t lo = g * num_units / groups, hi = (g + 1) * num_units / groups;
        Units units(hot.begin() + lo, hot.begin() + hi);
        const bool protect = g > 0;
        // Snapshot.
        std::vector<int32_t> before_block(static_cast<size_t>(num_slots));
        std::vector<uint32_t> before_use(static_cast<size_t>(num_slots));
        for (int32_t s = 0; s < num_slots; ++s) {
          before_block[s] = c.BlockIn(s);
          before_use[s] = c.LastUse(s);
        }
        const int32_t pinned_before = c.pinned_by_last_group();
        auto plan_or = c.PlanGroup(units, protect);
        ASSERT_TRUE(plan_or.ok()) << plan_or.status();
        const GroupPlan& p = *plan_or;
        ASSERT_TRUE(c.CheckConsistent().ok());
        // Admission respects the capacity; every admitted unit's blocks are resident.
        int64_t admitted_sum = 0;
        std::set<int32_t> needed;
        for (size_t u = 0; u < units.size(); ++u) {
          if (!p.admitted[u]) continue;
          const auto d = Distinct(units[u]);
          admitted_sum += int64_t(d.size());
          for (int32_t b : d) {
            ASSERT_GE(c.SlotOf(b), 0) << "admitted block not resident";
            EXPECT_EQ(c.LastUse(c.SlotOf(b)), p.stamps.current);
            needed.insert(b);
          }
        }
        EXPECT_LE(admitted_sum, num_slots - (protect ? pinned_before : 0));
        // First fit: a unit was refused only if it did not fit at its turn.
        int64_t used = 0;
        for (size_t u = 0; u < units.size(); ++u) {
          const int64_t n = int64_t(Distinct(units[u]).size());
          if (p.admitted[u]) {
            used += n;
          } else {
            EXPECT_GT(used + n, num_slots - (protect ? pinned_before : 0));
          }
        }
        EXPECT_EQ(p.counters.blocks_needed, int64_t(needed.size()));
        EXPECT_EQ(p.counters.hits + p.counters.misses, p.counters.blocks_needed);
        EXPECT_EQ(int64_t(p.fetch.size()), p.counters.misses);
        // Fetch targets: distinct slots, each evictable before, none pinned.
        std::set<int32_t> victim_slots;
        for (const FetchEntry& f : p.fetch) {
          EXPECT_TRUE(victim_slots.insert(f.slot).second);
          EXPECT_LT(before_use[f.slot], p.stamps.protect_from);
          EXPECT_EQ(c.SlotOf(f.block), f.slot);
        }
        // The previous group's blocks survive when protected.
        if (protect && !prev_needed.empty()) {
          for (int32_t b : prev_needed.back()) EXPECT_GE(c.SlotOf(b), 0) << "pinned evicted";
        }
        // LRU: no evictable slot left untouched is strictly older than a chosen victim.
        auto key = [&](int32_t s) { return SlotAgeBucket(before_block[s], before_use[s], p.stamps); };
        int32_t youngest_victim = kCacheAgeBuckets;
        for (int32_t s : victim_slots) youngest_victim = std::min(youngest_victim, key(s));
        for (int32_t s = 0; s < num_slots; ++s) {
          if (victim_slots.count(s) || before_use[s] >= p.stamps.protect_from) continue;
          if (before_block[s] >= 0 && needed.count(before_block[s])) continue;  // a hit
          if (!victim_slots.empty()) {
            EXPECT_LE(key(s), youngest_victim) << "slot " << s;
          }
        }
        total_hits += p.counters.hits;
        total_needed += p.counters.blocks_needed;
        prev_needed.push_back(needed);
      }
    }
    // With a cache at least twice the working set, drift of 10% gives mostly hits.
    if (num_slots >= 2 * num_units * per_unit) {
      EXPECT_GT(double(total_hits), 0.6 * double(total_needed)) << "trial " << trial;
    }
  }
}

TEST(PlanSeqGroupsTest, CoversBatchContiguously) {
  std::mt19937_64 rng(7);
  for (int32_t trial = 0; trial < 200; ++trial) {
    const int32_t n = 1 + int32_t(rng() % 20);
    std::vector<int64_t> w(static_cast<size_t>(n));
    for (auto& x : w) x = int64_t(rng() % 500);
    const int32_t slots = 1 + int32_t(rng() % 3000);
    const int32_t min_g = 1 + int32_t(rng() % 4), max_g = 1 + int32_t(rng() % 8);
    const auto groups = PlanSeqGroups(w, slots, min_g, max_g);
    ASSERT_FALSE(groups.empty());
    EXPECT_LE(int32_t(groups.size()), std::min(n, max_g));
    EXPECT_GE(int32_t(groups.size()), std::min({n, min_g, max_g}));
    int32_t next = 0;
    for (size_t g = 0; g < groups.size(); ++g) {
      EXPECT_EQ(groups[g].first_seq, next);
      EXPECT_GE(groups[g].num_seqs, 1);
      int64_t sum = 0;
      for (int32_t s = next; s < next + groups[g].num_seqs; ++s) sum += w[s];
      EXPECT_EQ(groups[g].worst_blocks, sum);
      const int64_t prev = g ? std::min<int64_t>(groups[g - 1].worst_blocks, slots) : 0;
      EXPECT_EQ(groups[g].may_overflow, sum > slots - prev);
      next += groups[g].num_seqs;
    }
    EXPECT_EQ(next, n);
  }
}

TEST(PlanSeqGroupsTest, SplitsWhenTheCacheIsSmall) {
  const std::vector<int64_t> w(8, 100);
  // 800 blocks, 1000 slots: groups of at most 500 -> 2 groups, none may overflow.
  auto g = PlanSeqGroups(w, 1000, 1, 8);
  ASSERT_EQ(g.size(), 2u);
  EXPECT_FALSE(g[0].may_overflow);
  EXPECT_FALSE(g[1].may_overflow);
  // Tiny cache, at most 2 groups: overflow possible.
  g = PlanSeqGroups(w, 100, 1, 2);
  ASSERT_EQ(g.size(), 2u);
  EXPECT_TRUE(g[0].may_overflow);
  EXPECT_TRUE(PlanSeqGroups({}, 10, 1, 4).empty());
}

}  // namespace
}  // namespace twl

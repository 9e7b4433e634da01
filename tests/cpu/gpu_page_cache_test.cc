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

// The mechanics tests below (hits, victims, pinning, margins) use blocks of one or two kept
// rows; they run without the admission floor, which AdmissionFloor* tests cover.
constexpr uint32_t kNoFloor = 0;

std::set<int32_t> Distinct(const std::vector<int32_t>& v) { return {v.begin(), v.end()}; }

TEST(GpuPageCacheTest, CreateRejectsBadSizes) {
  EXPECT_FALSE(GpuPageCache::Create(10, 0).ok());
  EXPECT_FALSE(GpuPageCache::Create(-1, 4).ok());
  EXPECT_TRUE(GpuPageCache::Create(0, 1).ok());
}

TEST(GpuPageCacheTest, PlanRejectsBlockOutOfRange) {
  auto c = GpuPageCache::Create(8, 4, kDefaultDecaySteps, kNoFloor).value();
  EXPECT_EQ(c.PlanGroup(Units{{1, 8}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.PlanGroup(Units{{-1}}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(c.ResidentBlocks(), 0);  // nothing changed
}

TEST(GpuPageCacheTest, FirstStepMissesSecondStepHits) {
  auto c = GpuPageCache::Create(100, 16, kDefaultDecaySteps, kNoFloor).value();
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
  auto c = GpuPageCache::Create(50, 8, kDefaultDecaySteps, kNoFloor).value();
  // A forked sequence shares block 7 with its parent; unit 0 lists block 2 twice.
  auto p = c.PlanGroup(Units{{2, 2, 7}, {7, 9}}, false).value();
  EXPECT_EQ(p.counters.blocks_needed, 3);
  EXPECT_EQ(p.fetch.size(), 3u);
  EXPECT_TRUE(c.CheckConsistent().ok());
}

// Units list a block once per kept row: Rows(b, n) is n rows of block b.
std::vector<int32_t> Rows(int32_t b, int32_t n) { return std::vector<int32_t>(size_t(n), b); }
std::vector<int32_t> Cat(std::initializer_list<std::vector<int32_t>> parts) {
  std::vector<int32_t> v;
  for (const auto& p : parts) v.insert(v.end(), p.begin(), p.end());
  return v;
}

TEST(GpuPageCacheTest, EvictsLowestValueFirstThenOldest) {
  auto c = GpuPageCache::Create(100, 4, kDefaultDecaySteps, kNoFloor).value();
  // Fill with 10, 11, 12, 13 (one row each) in separate groups, so their ages differ.
  for (int32_t b : {10, 11, 12, 13}) ASSERT_TRUE(c.PlanGroup(Units{{b}}, false).ok());
  // 13 is used again with many rows: the most valuable, although not the most recent.
  ASSERT_TRUE(c.PlanGroup(Units{Rows(13, 16)}, false).ok());
  ASSERT_TRUE(c.PlanGroup(Units{{10}}, false).ok());  // 10: value 2, the most recent
  // Two new blocks worth 8 rows each: the victims are the lowest values, 11 and 12 (value
  // 1, the oldest of equal value); 10 (value 2) and 13 survive.
  auto p = c.PlanGroup(Units{Cat({Rows(20, 8), Rows(21, 8)})}, false).value();
  EXPECT_EQ(p.counters.misses, 2);
  EXPECT_EQ(p.counters.evictions, 2);
  EXPECT_LT(c.SlotOf(11), 0);
  EXPECT_LT(c.SlotOf(12), 0);
  EXPECT_GE(c.SlotOf(10), 0);
  EXPECT_GE(c.SlotOf(13), 0);
  EXPECT_TRUE(c.CheckConsistent().ok());
}

// A miss does not displace a block of about its own value (the margin): it is read in place.
TEST(GpuPageCacheTest, EqualValueMissIsReadInPlace) {
  auto c = GpuPageCache::Create(100, 2, kDefaultDecaySteps, kNoFloor).value();
  ASSERT_TRUE(c.PlanGroup(Units{Cat({Rows(1, 4), Rows(2, 4)})}, false).ok());
  auto p = c.PlanGroup(Units{Cat({Rows(3, 4), Rows(1, 1)})}, false).value();
  EXPECT_EQ(p.counters.hits, 1);
  EXPECT_EQ(p.counters.misses, 0);
  EXPECT_EQ(p.counters.direct_blocks, 1);
  EXPECT_EQ(p.counters.direct_rows, 4);
  EXPECT_EQ(p.direct, std::vector<int32_t>{3});
  EXPECT_TRUE(p.fetch.empty());
  EXPECT_LT(c.SlotOf(3), 0);
  EXPECT_GE(c.SlotOf(2), 0);
  // Used again and again, 3 becomes worth more than 2 (unused): admitted, 2 evicted.
  int32_t step = 0;
  while (c.SlotOf(3) < 0 && step++ < 10) ASSERT_TRUE(c.PlanGroup(Units{Rows(3, 4)}, false).ok());
  EXPECT_GE(c.SlotOf(3), 0);
  EXPECT_LT(c.SlotOf(2), 0);
  EXPECT_LE(step, 2);
}

TEST(GpuPageCacheTest, ValuesDecayByHalfPerPeriod) {
  auto c = GpuPageCache::Create(10, 2, /*decay_steps=*/2, kNoFloor).value();
  ASSERT_TRUE(c.PlanGroup(Units{Rows(5, 12)}, false).ok());  // step 1, epoch 0
  EXPECT_EQ(c.Value(5), 12u);
  ASSERT_TRUE(c.PlanGroup(Units{{1}}, false).ok());  // step 2, epoch 1: halved
  EXPECT_EQ(c.Value(5), 6u);
  ASSERT_TRUE(c.PlanGroup(Units{{1}}, true).ok());  // not a new step: same epoch
  EXPECT_EQ(c.Value(5), 6u);
  for (int32_t i = 0; i < 4; ++i) ASSERT_TRUE(c.PlanGroup(Units{{1}}, false).ok());
  EXPECT_EQ(c.Value(5), 1u);  // epoch 3
  EXPECT_EQ(ValueBucket(0), kAdmitMargin);
  for (uint32_t v = 1; v < 65535; v += 1 + v / 7) {
    EXPECT_LE(ValueBucket(v), ValueBucket(v + 1)) << v;  // monotone
    EXPECT_LT(ValueBucket(v + 1), kCacheAgeBuckets);
  }
  EXPECT_EQ(ValueBucket(2 * 1000) - ValueBucket(1000), 8);  // 8 buckets per octave
  EXPECT_FALSE(GpuPageCache::Create(10, 2, 0).ok());
}

TEST(GpuPageCacheTest, PairAdmissionsTakesHighestAgainstLowest) {
  std::vector<int32_t> mh(kCacheAgeBuckets, 0), vh(kCacheAgeBuckets, 0);
  mh[40] = 3;
  mh[30] = 5;
  vh[0] = 2;   // free slots: any candidate
  vh[20] = 4;  // beaten by 40 (and by 30: 30 >= 20 + margin)
  vh[28] = 9;  // beaten by nobody left: 30 < 28 + margin
  const AdmitCut c = PairAdmissions(mh.data(), vh.data());
  EXPECT_EQ(c.admitted, 6);
  EXPECT_EQ(c.miss_cut, 30);
  EXPECT_EQ(c.miss_quota, 3);
  EXPECT_EQ(c.victim_cut, 20);
  EXPECT_EQ(c.victim_quota, 4);
  std::vector<int32_t> none(kCacheAgeBuckets, 0);
  EXPECT_EQ(PairAdmissions(none.data(), vh.data()).admitted, 0);
  EXPECT_EQ(PairAdmissions(mh.data(), none.data()).admitted, 0);
}

TEST(GpuPageCacheTest, FreeSlotsAreUsedBeforeEvicting) {
  auto c = GpuPageCache::Create(100, 4, kDefaultDecaySteps, kNoFloor).value();
  ASSERT_TRUE(c.PlanGroup(Units{{1, 2}}, false).ok());
  auto p = c.PlanGroup(Units{{3, 4}}, false).value();
  EXPECT_EQ(p.counters.evictions, 0);
  EXPECT_EQ(c.ResidentBlocks(), 4);
}

TEST(GpuPageCacheTest, PreviousGroupIsPinned) {
  auto c = GpuPageCache::Create(100, 6, kDefaultDecaySteps, kNoFloor).value();
  ASSERT_TRUE(c.PlanGroup(Units{{1, 2, 3}}, false).ok());  // step 1 group 0
  ASSERT_TRUE(c.PlanGroup(Units{{4, 5, 6}}, true).ok());   // step 1 group 1: fills the cache
  // Step 2, group 0 may evict anything (the previous step has finished); 1, 2, 3 are the
  // oldest of equal value, so they go first for three blocks worth 8 rows each.
  auto p0 = c.PlanGroup(Units{Cat({Rows(7, 8), Rows(8, 8), Rows(9, 8)})}, false).value();
  EXPECT_EQ(p0.counters.evictions, 3);
  for (int32_t b : {1, 2, 3}) EXPECT_LT(c.SlotOf(b), 0);
  // Group 1 of step 2 must not evict 7, 8, 9 (pinned by group 0, whose attention may still
  // run): only the three slots of 4, 5, 6 are available; of four valuable blocks, three
  // are fetched and one is read in place.
  auto p1 = c.PlanGroup(Units{Cat({Rows(10, 8), Rows(11, 8)}), Cat({Rows(12, 8), Rows(13, 8)})},
                        true).value();
  for (int32_t b : {7, 8, 9}) EXPECT_GE(c.SlotOf(b), 0) << b;
  EXPECT_EQ(p1.admitted, (std::vector<uint8_t>{1, 1}));  // every unit is attended
  EXPECT_EQ(p1.counters.units_direct, 0);
  EXPECT_EQ(p1.counters.misses, 3);
  EXPECT_EQ(p1.counters.direct_blocks, 1);
  EXPECT_EQ(p1.counters.direct_rows, 8);
  EXPECT_TRUE(c.CheckConsistent().ok());
}

// A block the previous group reads in place is not admitted by the next group (its slot
// would be filled while that group's attention reads through slot_of_block).
TEST(GpuPageCacheTest, PreviousGroupsInPlaceBlockStaysInPlace) {
  auto c = GpuPageCache::Create(100, 2, kDefaultDecaySteps, kNoFloor).value();
  ASSERT_TRUE(c.PlanGroup(Units{Cat({Rows(1, 8), Rows(9, 1)})}, false).ok());
  for (int32_t i = 0; i < 3; ++i) ASSERT_TRUE(c.PlanGroup(Units{Rows(1, 8)}, false).ok());
  // Group 0: 1 is a hit; 2 (shared with the next group, e.g. a forked page) is worth no
  // more than 9: read in place.
  auto p0 = c.PlanGroup(Units{Cat({Rows(1, 8), Rows(2, 1)})}, false).value();
  EXPECT_EQ(p0.direct, std::vector<int32_t>{2});
  // Group 1 needs 2 with many rows, and 9's slot is evictable and worth far less; still, 2
  // stays in place.
  auto p1 = c.PlanGroup(Units{Rows(2, 16)}, true).value();
  EXPECT_TRUE(p1.fetch.empty());
  EXPECT_EQ(p1.direct, std::vector<int32_t>{2});
  EXPECT_LT(c.SlotOf(2), 0);
}

TEST(GpuPageCacheTest, StepLargerThanCacheReadsTheRestInPlace) {
  auto c = GpuPageCache::Create(1000, 10, kDefaultDecaySteps, kNoFloor).value();
  const Units units = {{1, 2, 3, 4, 5, 6}, {7, 8, 9, 10, 11}, {12, 13, 14, 15}, {16}};
  auto p = c.PlanGroup(units, false).value();
  // 10 free slots for 16 blocks: 10 fetched, 6 read in place; every unit attended.
  EXPECT_EQ(p.admitted, (std::vector<uint8_t>{1, 1, 1, 1}));
  EXPECT_EQ(p.counters.blocks_needed, 10);
  EXPECT_EQ(p.counters.misses, 10);
  EXPECT_EQ(p.counters.direct_blocks, 6);
  EXPECT_EQ(p.counters.direct_rows, 6);
  EXPECT_EQ(c.ResidentBlocks(), 10);
  std::set<int32_t> all;
  for (const FetchEntry& f : p.fetch) all.insert(f.block);
  for (int32_t b : p.direct) all.insert(b);
  EXPECT_EQ(all.size(), 16u);
  // A unit larger than the whole cache is not an error.
  std::vector<int32_t> eleven;
  for (int32_t b = 100; b < 111; ++b) eleven.push_back(b);
  auto p2 = c.PlanGroup(Units{eleven}, false);
  ASSERT_TRUE(p2.ok());
  EXPECT_EQ(p2->counters.misses + p2->counters.direct_blocks, 11);
}

TEST(GpuPageCacheTest, InvalidateFreesTheSlot) {
  auto c = GpuPageCache::Create(100, 2, kDefaultDecaySteps, kNoFloor).value();
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
  auto p2 = c.PlanGroup(Units{{5}}, false).value();  // not a stale hit
  EXPECT_EQ(p2.counters.hits, 0);
  EXPECT_EQ(p2.counters.misses + p2.counters.direct_blocks, 1);
  EXPECT_EQ(c.Value(5), 1u);  // the value restarted at the invalidation
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
    auto c = GpuPageCache::Create(num_blocks, num_slots, /*decay_steps=*/4, kNoFloor).value();
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
      std::vector<std::set<int32_t>> prev_needed, prev_direct;
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
        // Every unit is attended; every distinct block is a hit, fetched or read in place.
        std::set<int32_t> needed, direct(p.direct.begin(), p.direct.end());
        for (size_t u = 0; u < units.size(); ++u) {
          EXPECT_EQ(p.admitted[u], 1);
          for (int32_t b : Distinct(units[u])) needed.insert(b);
        }
        EXPECT_EQ(direct.size(), p.direct.size()) << "a block read in place twice";
        int64_t resident_needed = 0;
        for (int32_t b : needed) {
          if (direct.count(b)) {
            EXPECT_LT(c.SlotOf(b), 0) << "in place but resident";
            continue;
          }
          ASSERT_GE(c.SlotOf(b), 0) << "needed block neither resident nor in place";
          EXPECT_EQ(c.LastUse(c.SlotOf(b)), p.stamps.current);
          ++resident_needed;
        }
        EXPECT_EQ(p.counters.blocks_needed, resident_needed);
        EXPECT_EQ(p.counters.hits + p.counters.misses, p.counters.blocks_needed);
        EXPECT_EQ(p.counters.direct_blocks, int64_t(direct.size()));
        EXPECT_EQ(int64_t(p.fetch.size()), p.counters.misses);
        EXPECT_LE(p.counters.misses, num_slots - (protect ? pinned_before : 0));
        // Fetch targets: distinct slots, each evictable before, none pinned.
        std::set<int32_t> victim_slots;
        for (const FetchEntry& f : p.fetch) {
          EXPECT_TRUE(victim_slots.insert(f.slot).second);
          EXPECT_LT(before_use[f.slot], p.stamps.protect_from);
          EXPECT_EQ(c.SlotOf(f.block), f.slot);
        }
        // The previous group's blocks survive when protected, and what it read in place
        // is not admitted now.
        if (protect && !prev_needed.empty()) {
          for (int32_t b : prev_needed.back()) EXPECT_GE(c.SlotOf(b), 0) << "pinned evicted";
          for (const FetchEntry& f : p.fetch) {
            EXPECT_EQ(prev_direct.back().count(f.block), 0u) << "admitted over a reader";
          }
        }
        // By value: victims' keys (their blocks are not needed: values unchanged) are the
        // lowest; a fetched block beats the key of some victim by the margin; no block read
        // in place beats a surviving evictable slot by the margin (the pairing is maximal).
        auto vkey = [&](int32_t s) {
          return before_block[s] < 0 ? 0 : ValueBucket(c.Value(before_block[s]));
        };
        int32_t max_victim = -1, min_survivor = kCacheAgeBuckets;
        for (int32_t s : victim_slots) max_victim = std::max(max_victim, vkey(s));
        for (int32_t s = 0; s < num_slots; ++s) {
          if (victim_slots.count(s) || before_use[s] >= p.stamps.protect_from) continue;
          if (before_block[s] >= 0 && needed.count(before_block[s])) continue;  // a hit
          min_survivor = std::min(min_survivor, vkey(s));
        }
        if (!victim_slots.empty()) {
          EXPECT_LE(max_victim, min_survivor);
        }
        int32_t min_fetched = kCacheAgeBuckets;
        for (const FetchEntry& f : p.fetch) {
          min_fetched = std::min(min_fetched, ValueBucket(c.Value(f.block)));
        }
        if (!p.fetch.empty() && max_victim > 0) {
          EXPECT_GE(min_fetched, kAdmitMargin + 1) << "fetched a block of no value";
        }
        // (Unless more misses than slots were candidates: the overflow is read in place.)
        int64_t candidates = int64_t(p.fetch.size());
        for (int32_t b : p.direct) {
          candidates += !(protect && !prev_direct.empty() && prev_direct.back().count(b));
        }
        for (int32_t b : p.direct) {
          if (protect && !prev_direct.empty() && prev_direct.back().count(b)) continue;
          if (min_survivor < kCacheAgeBuckets && candidates <= num_slots) {
            EXPECT_LT(ValueBucket(c.Value(b)), std::max(min_survivor, 1) + kAdmitMargin)
                << "block " << b << " read in place but beats a surviving slot";
          }
        }
        prev_direct.push_back(direct);
        for (int32_t b : direct) needed.erase(b);  // pinned: the resident ones only
        total_hits += p.counters.hits;
        total_needed += p.counters.blocks_needed;
        prev_needed.push_back(needed);
      }
    }
    // With a cache at least twice the working set, drift of 10% gives mostly hits (new
    // blocks fill free slots, and stale values halve every 4 steps).
    if (num_slots >= 2 * num_units * per_unit) {
      EXPECT_GT(double(total_hits), 0.6 * double(total_needed)) << "trial " << trial;
    }
  }
}

// The floor: a miss is admitted only when its value reaches kMinAdmitValue rows, free slots
// included. A block kept with 16 rows (a flat head's) is admitted at its first use; one kept
// with a single row stays in place until its rows over recent steps add up to the floor.
TEST(GpuPageCacheTest, AdmissionFloorKeepsLowValueMissesInPlace) {
  auto c = GpuPageCache::Create(100, 16, kDefaultDecaySteps, kMinAdmitValue).value();
  ASSERT_EQ(kMinAdmitValue, 8u);
  std::vector<int32_t> unit(16, 40);  // block 40: 16 kept rows
  unit.push_back(3);                  // block 3: one kept row
  for (uint32_t step = 1; step <= kMinAdmitValue; ++step) {
    SCOPED_TRACE(step);
    auto p = c.PlanGroup(Units{unit}, false).value();
    if (step == 1) {
      ASSERT_EQ(p.fetch.size(), 1u);
      EXPECT_EQ(p.fetch[0].block, 40);
    } else {
      EXPECT_GE(c.SlotOf(40), 0);  // stays resident
      EXPECT_EQ(p.counters.hits, 1);
    }
    EXPECT_EQ(c.Value(3), step);
    if (step < kMinAdmitValue) {
      EXPECT_EQ(c.SlotOf(3), -1) << "admitted below the floor";
      ASSERT_EQ(p.direct.size(), 1u);
      EXPECT_EQ(p.direct[0], 3);
      EXPECT_EQ(p.counters.direct_rows, 1);
    } else {
      EXPECT_GE(c.SlotOf(3), 0) << "not admitted at the floor";
      ASSERT_EQ(p.fetch.size(), 1u);
      EXPECT_EQ(p.fetch[0].block, 3);
    }
  }
  ASSERT_TRUE(c.CheckConsistent().ok());
}

// Without a floor (the default) the same single-row miss takes a free slot at once.
TEST(GpuPageCacheTest, AdmissionFloorZeroAdmitsIntoFreeSlots) {
  auto c = GpuPageCache::Create(100, 16).value();
  auto p = c.PlanGroup(Units{{3}}, false).value();
  ASSERT_EQ(p.fetch.size(), 1u);
  EXPECT_TRUE(p.direct.empty());
}

// PairAdmissions itself: candidates below the floor's bucket are never paired, even with
// free slots; those at or above it are, highest first.
TEST(GpuPageCacheTest, PairAdmissionsStopsAtTheFloor) {
  std::vector<int32_t> miss(kCacheAgeBuckets, 0), victim(kCacheAgeBuckets, 0);
  miss[ValueBucket(2)] = 5;   // below the floor
  miss[ValueBucket(16)] = 3;  // above it
  victim[0] = 100;            // free slots
  const AdmitCut cut = PairAdmissions(miss.data(), victim.data(), kMinAdmitValue);
  EXPECT_EQ(cut.admitted, 3);
  EXPECT_EQ(cut.miss_cut, ValueBucket(16));
  EXPECT_EQ(PairAdmissions(miss.data(), victim.data(), 0).admitted, 8);
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

// The GPU row cache's policy (cache/row_cache_policy.h) on the host: hits, claims, victims
// by the clock hand and the recency window, protection of the current step, overflow read
// in place, invalidation, and the maps' consistency after every plan.
#include "cache/row_cache_policy.h"

#include "core/page_layout.h"

#include <numeric>
#include <vector>

#include "gtest/gtest.h"

namespace twl {
namespace {

std::vector<int64_t> Range(int64_t first, int64_t n) {
  std::vector<int64_t> v(static_cast<size_t>(n));
  std::iota(v.begin(), v.end(), first);
  return v;
}

TEST(RowCachePolicy, ColdThenWarm) {
  RowCachePolicy c = RowCachePolicy::Create(1000, 100, /*window=*/2).value();
  const std::vector<std::vector<int64_t>> units = {Range(0, 30), Range(500, 20)};
  RowGroupPlan p = c.PlanGroup(units, true).value();
  EXPECT_EQ(p.counters.needed, 50);
  EXPECT_EQ(p.counters.hits, 0);
  EXPECT_EQ(p.counters.fetched, 50);
  EXPECT_EQ(p.counters.direct, 0);
  EXPECT_EQ(p.fetch.size(), 50u);
  ASSERT_TRUE(c.CheckConsistent().ok());
  for (const RowFetch& f : p.fetch) EXPECT_EQ(c.SlotOf(f.row), f.slot);
  p = c.PlanGroup(units, true).value();
  EXPECT_EQ(p.counters.hits, 50);
  EXPECT_EQ(p.counters.fetched, 0);
  EXPECT_EQ(p.unit_hits, (std::vector<int32_t>{30, 20}));
  EXPECT_EQ(c.ResidentRows(), 50);
}

TEST(RowCachePolicy, SharedRowClaimedOnce) {
  RowCachePolicy c = RowCachePolicy::Create(100, 10).value();
  const std::vector<std::vector<int64_t>> units = {{1, 2, 3}, {2, 3, 4}};
  const RowGroupPlan p = c.PlanGroup(units, true).value();
  EXPECT_EQ(p.counters.needed, 6);
  EXPECT_EQ(p.counters.fetched, 4);
  EXPECT_EQ(p.counters.hits, 2);  // the second unit's 2 and 3
  ASSERT_TRUE(c.CheckConsistent().ok());
}

// Rows of the current step (this group's and the previous group's) and of the last `window`
// steps are never victims: what does not fit is read in place, and the resident rows stay.
TEST(RowCachePolicy, WorkingSetLargerThanCacheKeepsWhatItHolds) {
  const int32_t slots = 40;
  RowCachePolicy c = RowCachePolicy::Create(10000, slots, /*window=*/4).value();
  // Four "layers" of 20 rows each take turns: 80 rows over 40 slots.
  RowCounters total;
  for (int32_t step = 0; step < 40; ++step) {
    const int32_t layer = step % 4;
    const std::vector<std::vector<int64_t>> units = {Range(layer * 1000, 20)};
    const RowGroupPlan p = c.PlanGroup(units, true).value();
    ASSERT_TRUE(c.CheckConsistent().ok());
    if (step >= 8) total += p.counters;
  }
  // The first two layers filled the cache and stay; the other two read in place.
  EXPECT_EQ(total.hits, total.needed / 2);
  EXPECT_EQ(total.fetched, 0);
  EXPECT_EQ(total.evictions, 0);
  EXPECT_EQ(total.direct, total.needed / 2);
}

TEST(RowCachePolicy, CurrentStepIsProtected) {
  RowCachePolicy c = RowCachePolicy::Create(1000, 10, /*window=*/0).value();
  // Group 0 fills the cache, group 1 of the same step finds no victim.
  RowGroupPlan p = c.PlanGroup({{Range(0, 10)}}, true).value();
  EXPECT_EQ(p.counters.fetched, 10);
  p = c.PlanGroup({{Range(100, 5)}}, false).value();
  EXPECT_EQ(p.counters.fetched, 0);
  EXPECT_EQ(p.counters.direct, 5);
  ASSERT_TRUE(c.CheckConsistent().ok());
  for (int64_t r = 100; r < 105; ++r) EXPECT_EQ(c.SlotOf(r), kRowAbsent);
  // Next step (window 0): the previous step's rows may go, from the hand on.
  p = c.PlanGroup({{Range(100, 5)}}, true).value();
  EXPECT_EQ(p.counters.fetched, 5);
  EXPECT_EQ(p.counters.evictions, 5);
  EXPECT_EQ(c.hand(), 5);
  for (int64_t r = 0; r < 5; ++r) EXPECT_EQ(c.SlotOf(r), kRowAbsent);
  ASSERT_TRUE(c.CheckConsistent().ok());
}

TEST(RowCachePolicy, ListCapacityOverflowsInPlace) {
  RowCachePolicy c = RowCachePolicy::Create(1000, 100, 2, /*list_capacity=*/8).value();
  const RowGroupPlan p = c.PlanGroup({{Range(0, 20)}}, true).value();
  EXPECT_EQ(p.counters.fetched, 8);
  EXPECT_EQ(p.counters.direct, 12);
  ASSERT_TRUE(c.CheckConsistent().ok());
}

TEST(RowCachePolicy, InvalidateFreesTheSlot) {
  RowCachePolicy c = RowCachePolicy::Create(1000, 4, 100).value();
  ASSERT_TRUE(c.PlanGroup({{Range(0, 4)}}, true).ok());
  c.InvalidateRows(1, 2);
  EXPECT_EQ(c.ResidentRows(), 2);
  ASSERT_TRUE(c.CheckConsistent().ok());
  // The freed slots take new rows at once (free slots are always evictable).
  const RowGroupPlan p = c.PlanGroup({{Range(10, 3)}}, true).value();
  EXPECT_EQ(p.counters.fetched, 2);
  EXPECT_EQ(p.counters.direct, 1);
  EXPECT_EQ(p.counters.evictions, 0);
  ASSERT_TRUE(c.CheckConsistent().ok());
}

// FpKvView row mode (what the attention reads through): a resident row's K and V are its
// slot's two halves; an absent one is read in place from the pool (through its pool map).
TEST(FpKvViewRowMode, AddressesSlotsAndPoolRows) {
  PageGeometry g;
  g.page_size = 4;
  g.head_dim = 8;
  g.num_kv_heads = 1;
  std::vector<fp16_t> pool(size_t(3 * g.FpBlockElems())), slots(size_t(5 * 2 * g.head_dim));
  const std::vector<int32_t> slot_of_row = {-1, 3, -1, -1, 0, -1, -1, -1, -1, -1, -1, 4};
  const std::vector<int32_t> pool_map = {2, 0, 1};  // block b at pool index pool_map[b]
  FpKvView v;
  v.kv = slots.data();
  v.miss_kv = pool.data();
  v.miss_slot_of_block = pool_map.data();
  v.slot_of_row = slot_of_row.data();
  // Row 1 of block 0 (row id 1): slot 3.
  EXPECT_EQ(v.K(g, 0, 1), slots.data() + 3 * 16);
  EXPECT_EQ(v.V(g, 0, 1), slots.data() + 3 * 16 + 8);
  // Row 0 of block 1 (row id 4): slot 0; row 3 of block 2 (id 11): slot 4.
  EXPECT_EQ(v.K(g, 1, 0), slots.data());
  EXPECT_EQ(v.V(g, 2, 3), slots.data() + 4 * 16 + 8);
  // Row 2 of block 0: absent, in place at pool index 2, K row 2 and V row 2 of that block.
  EXPECT_EQ(v.K(g, 0, 2), pool.data() + 2 * g.FpBlockElems() + 2 * 8);
  EXPECT_EQ(v.V(g, 0, 2), pool.data() + 2 * g.FpBlockElems() + (4 + 2) * 8);
  // Block mode is unchanged: identity addressing without maps.
  const FpKvView b{pool.data(), nullptr};
  EXPECT_EQ(b.V(g, 1, 3), pool.data() + g.FpBlockElems() + (4 + 3) * 8);
}

TEST(RowCachePolicy, RejectsRowsOutOfRange) {
  RowCachePolicy c = RowCachePolicy::Create(10, 4).value();
  EXPECT_FALSE(c.PlanGroup({{std::vector<int64_t>{10}}}, true).ok());
  EXPECT_FALSE(RowCachePolicy::Create(10, 0).ok());
  EXPECT_FALSE(RowCachePolicy::Create(10, 4, 2, 5).ok());
}

}  // namespace
}  // namespace twl

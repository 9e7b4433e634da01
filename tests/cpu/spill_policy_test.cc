// Spill policy: coldest-first victims, exclusion of pages in use this step and of pinned
// pages, location bookkeeping, bad input, and a randomized comparison with a brute-force
// model (sort the host pages by last access).
#include "offload/spill_policy.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <random>

#include <gtest/gtest.h>

namespace twl {
namespace {

void PutOnHost(SpillPolicy* p, int32_t page, int32_t slot) {
  ASSERT_TRUE(p->SetLocation(page, {slot, -1}).ok());
}

TEST(SpillPolicy, VictimsAreColdestFirst) {
  SpillPolicy p(10);
  for (int32_t i = 0; i < 10; ++i) PutOnHost(&p, i, 100 + i);
  // Access order (one step each): 7 3 9 0 5 1 8 2 6 4 -> coldest first is that order.
  const std::vector<int32_t> order = {7, 3, 9, 0, 5, 1, 8, 2, 6, 4};
  for (size_t s = 0; s < order.size(); ++s) ASSERT_TRUE(p.Touch(order[s], int64_t(s)).ok());
  EXPECT_EQ(p.PickVictims(3, 100), (std::vector<int32_t>{7, 3, 9}));
  // Touching 7 again makes it the hottest.
  ASSERT_TRUE(p.Touch(7, 20).ok());
  EXPECT_EQ(p.PickVictims(3, 100), (std::vector<int32_t>{3, 9, 0}));
  EXPECT_EQ(p.LastAccess(7), 20);
  EXPECT_TRUE(p.CheckConsistency().ok());
}

TEST(SpillPolicy, NeverPicksPagesInUseThisStepOrPinned) {
  SpillPolicy p(8);
  for (int32_t i = 0; i < 8; ++i) PutOnHost(&p, i, i);
  ASSERT_TRUE(p.Touch({0, 1, 2, 3}, 5).ok());
  ASSERT_TRUE(p.Touch({4, 5, 6, 7}, 6).ok());  // the current step
  EXPECT_EQ(p.PickVictims(8, 6), (std::vector<int32_t>{0, 1, 2, 3}));
  EXPECT_EQ(p.PickVictims(8, 6, {1, 3}), (std::vector<int32_t>{0, 2}));
  // Asked for more than are eligible: fewer come back, never a page of step 6.
  EXPECT_EQ(p.PickVictims(3, 6, {0, 1, 2}), (std::vector<int32_t>{3}));
  EXPECT_TRUE(p.PickVictims(4, 5).empty());  // everything was used at step >= 5
  EXPECT_TRUE(p.PickVictims(0, 100).empty());
  EXPECT_EQ(p.PickVictims(-1, 100).size(), 0u);
}

TEST(SpillPolicy, OnlyHostResidentPagesAreVictims) {
  SpillPolicy p(6);
  PutOnHost(&p, 0, 0);
  PutOnHost(&p, 1, 1);
  ASSERT_TRUE(p.SetLocation(2, {-1, 40}).ok());  // disk only
  ASSERT_TRUE(p.SetLocation(3, {3, 41}).ok());   // host with a clean disk copy
  ASSERT_TRUE(p.Touch({2, 3, 0, 1, 4}, 1).ok());  // 4 lives nowhere yet
  EXPECT_EQ(p.PickVictims(10, 2), (std::vector<int32_t>{3, 0, 1}));
  EXPECT_EQ(p.num_on_host(), 3);
  EXPECT_EQ(p.num_disk_only(), 1);
  // Spilling 0 moves it off the list; loading 2 puts it at the hot end.
  ASSERT_TRUE(p.SetLocation(0, {-1, 42}).ok());
  ASSERT_TRUE(p.SetLocation(2, {0, 40}).ok());
  EXPECT_EQ(p.PickVictims(10, 2), (std::vector<int32_t>{3, 1, 2}));
  EXPECT_EQ(p.num_on_host(), 3);
  EXPECT_EQ(p.num_disk_only(), 1);
  EXPECT_TRUE(p.CheckConsistency().ok());
}

TEST(SpillPolicy, ArrivalOnHostCountsAsAccessAtTheLatestStep) {
  SpillPolicy p(4);
  PutOnHost(&p, 0, 0);
  ASSERT_TRUE(p.Touch(1, 1).ok());  // accessed long ago, then spilled
  ASSERT_TRUE(p.SetLocation(1, {-1, 7}).ok());
  ASSERT_TRUE(p.Touch(0, 3).ok());
  ASSERT_TRUE(p.Touch(0, 9).ok());
  ASSERT_TRUE(p.SetLocation(1, {1, 7}).ok());  // loaded: as if accessed at step 9
  EXPECT_EQ(p.LastAccess(1), 9);
  EXPECT_EQ(p.PickVictims(2, 10), (std::vector<int32_t>{0, 1}));
  EXPECT_TRUE(p.PickVictims(2, 9).empty());
}

TEST(SpillPolicy, NeedsLoadListsDiskOnlyPagesOnceInOrder) {
  SpillPolicy p(6);
  ASSERT_TRUE(p.SetLocation(1, {-1, 10}).ok());
  ASSERT_TRUE(p.SetLocation(2, {2, 11}).ok());
  ASSERT_TRUE(p.SetLocation(4, {-1, 12}).ok());
  PutOnHost(&p, 3, 3);
  EXPECT_EQ(p.NeedsLoad({4, 0, 1, 2, 3, 4, 1, 99, -3}), (std::vector<int32_t>{4, 1}));
  EXPECT_TRUE(p.NeedsLoad({}).empty());
}

TEST(SpillPolicy, ForgetReturnsTheLocationAndResets) {
  SpillPolicy p(3);
  ASSERT_TRUE(p.SetLocation(1, {5, 9}).ok());
  ASSERT_TRUE(p.Touch(1, 4).ok());
  const PageLocation old = p.Forget(1);
  EXPECT_EQ(old, (PageLocation{5, 9}));
  EXPECT_EQ(p.GetLocation(1), PageLocation());
  EXPECT_EQ(p.LastAccess(1), -1);
  EXPECT_EQ(p.num_on_host(), 0);
  EXPECT_TRUE(p.PickVictims(3, 100).empty());
  EXPECT_EQ(p.Forget(7), PageLocation());  // out of range: nothing
  EXPECT_TRUE(p.CheckConsistency().ok());
}

TEST(SpillPolicy, BadInputIsRejectedAndChangesNothing) {
  SpillPolicy p(4);
  PutOnHost(&p, 0, 0);
  PutOnHost(&p, 1, 1);
  ASSERT_TRUE(p.Touch({0, 1}, 5).ok());
  EXPECT_EQ(p.Touch(0, 4).code(), absl::StatusCode::kInvalidArgument);  // clock went back
  EXPECT_EQ(p.Touch({1, 4}, 6).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.LastAccess(1), 5);  // the valid page of the refused batch was not touched
  EXPECT_EQ(p.clock(), 5);
  EXPECT_EQ(p.Touch(-1, 6).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.SetLocation(4, {0, -1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.SetLocation(2, {-2, -1}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.SetLocation(2, {-1, -5}).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(p.GetLocation(2), PageLocation());
  EXPECT_EQ(p.GetLocation(-1), PageLocation());
  EXPECT_EQ(p.PickVictims(4, 6), (std::vector<int32_t>{0, 1}));
  EXPECT_TRUE(p.CheckConsistency().ok());
}

// Random operations against a brute-force model: victims = host pages not pinned and last
// access < current step, sorted by (last access, order of arrival at that recency).
// Value order with a cycle (a serving loop's layers): a page that left the working set (not
// used for a whole cycle) goes before a newcomer even when its decayed value is higher; in
// the same situation without the cycle the newcomer goes (its value is lower).
TEST(SpillPolicy, PagesUnusedForACycleGoBeforeNewcomers) {
  for (const int64_t cycle : {0, 4}) {
    SpillPolicy p(4);
    p.EnableValueOrder(1000);
    p.set_cycle_steps(cycle);
    // Page 0: established, worth 40 rows, last used at step 0.
    ASSERT_TRUE(p.SetLocation(0, {0, -1}).ok());
    ASSERT_TRUE(p.Touch(0, 0).ok());
    p.AddValue(0, 40, 0);
    // Pages 1, 2: used every step (the working set); page 3 arrives as a newcomer worth 2.
    for (int64_t step = 1; step <= 6; ++step) {
      for (int32_t page : {1, 2}) {
        if (step == 1) {
          ASSERT_TRUE(p.SetLocation(page, {page, -1}).ok());
        }
        ASSERT_TRUE(p.Touch(page, step).ok());
        p.AddValue(page, 40, step);
      }
    }
    ASSERT_TRUE(p.Touch(3, 6).ok());
    ASSERT_TRUE(p.SetLocation(3, {3, -1}).ok());
    p.SetTransient(3, true);
    p.AddValue(3, 2, 6);
    const std::vector<int32_t> v = p.PickVictims(1, 7);
    ASSERT_EQ(v.size(), 1u);
    EXPECT_EQ(v[0], cycle > 0 ? 0 : 3) << "cycle " << cycle;
  }
}

TEST(SpillPolicy, MatchesBruteForceModelUnderRandomOperations) {
  const int32_t kPages = 200;
  std::mt19937 rng(12345);
  SpillPolicy p(kPages);
  std::vector<PageLocation> loc(kPages);
  std::vector<int64_t> last(kPages, -1), seq(kPages, 0);
  int64_t counter = 0, step = 0;
  for (int iter = 0; iter < 4000; ++iter) {
    const int op = int(rng() % 10);
    const int32_t page = int32_t(rng() % kPages);
    if (op < 4) {  // touch a few pages, sometimes advancing the clock
      if (rng() % 3 == 0) ++step;
      std::vector<int32_t> pages;
      for (int k = 0; k < 1 + int(rng() % 4); ++k) pages.push_back(int32_t(rng() % kPages));
      ASSERT_TRUE(p.Touch(pages, step).ok());
      for (int32_t q : pages) {
        last[q] = step;
        if (loc[q].on_host()) seq[q] = ++counter;
      }
    } else if (op < 8) {  // move a page
      PageLocation l{rng() % 2 ? int32_t(rng() % 50) : -1,
                     rng() % 2 ? int64_t(rng() % 50) : -1};
      if (!loc[page].on_host() && l.on_host()) {
        last[page] = std::max(last[page], p.clock());
        seq[page] = ++counter;
      }
      ASSERT_TRUE(p.SetLocation(page, l).ok());
      loc[page] = l;
    } else if (op == 8) {
      EXPECT_EQ(p.Forget(page), loc[page]);
      loc[page] = PageLocation();
      last[page] = -1;
    } else {
      const int64_t current = step - int64_t(rng() % 3);
      const int32_t n = int32_t(rng() % 12);
      std::vector<int32_t> pinned;
      for (int k = 0; k < int(rng() % 5); ++k) pinned.push_back(int32_t(rng() % kPages));
      std::vector<int32_t> expect;
      for (int32_t q = 0; q < kPages; ++q) {
        if (loc[q].on_host() && last[q] < current &&
            std::find(pinned.begin(), pinned.end(), q) == pinned.end()) {
          expect.push_back(q);
        }
      }
      std::sort(expect.begin(), expect.end(), [&](int32_t a, int32_t b) {
        return std::make_pair(last[a], seq[a]) < std::make_pair(last[b], seq[b]);
      });
      if (int32_t(expect.size()) > n) expect.resize(n);
      ASSERT_EQ(p.PickVictims(n, current, pinned), expect) << "iteration " << iter;
    }
    if (iter % 50 == 0) {
      ASSERT_TRUE(p.CheckConsistency().ok()) << p.CheckConsistency();
    }
  }
  ASSERT_TRUE(p.CheckConsistency().ok()) << p.CheckConsistency();
}

}  // namespace
}  // namespace twl

// bench/lib/threshold_drift: the top-p threshold of one head's scores and the floors predicted
// from the previous step, against brute force over the sorted scores.
#include "lib/threshold_drift.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace twl::bench {
namespace {

// Smallest top-p set by sorting: the lowest kept score and the set size; *straddle: the walk's
// share just before or at the threshold token is p up to rounding (another summation order
// may then stop one token earlier or later).
HeadStep SortedWalk(const std::vector<float>& s, double p, bool* straddle = nullptr) {
  std::vector<float> d = s;
  std::sort(d.begin(), d.end(), std::greater<float>());
  double total = 0;
  for (float x : d) total += std::exp(double(x) - d[0]);
  HeadStep h;
  h.max = d[0];
  double acc = 0, before = 0;
  for (float x : d) {
    before = acc;
    acc += std::exp(double(x) - d[0]);
    h.threshold = x;
    if (acc >= p * total) break;
  }
  if (straddle) {
    *straddle = std::abs(acc / total - p) < 1e-9 || std::abs(before / total - p) < 1e-9;
  }
  for (float x : s) h.kept += x >= h.threshold ? 1 : 0;
  return h;
}

TEST(ThresholdDrift, HeadStepIsTheSortedWalk) {
  std::mt19937_64 rng(::testing::UnitTest::GetInstance()->random_seed());
  for (int trial = 0; trial < 200; ++trial) {
    const int n = 1 + int(rng() % 3000);
    const double temp = std::exp(std::uniform_real_distribution<double>(-2, 2)(rng));
    std::vector<float> s(static_cast<size_t>(n));
    for (float& x : s) x = float(std::normal_distribution<double>(0, 1)(rng) * temp);
    const double p = trial % 3 == 0 ? 0.5 : 0.95;
    bool straddle = false;
    const HeadStep got = MeasureHeadStep(s, p), want = SortedWalk(s, p, &straddle);
    EXPECT_EQ(got.max, want.max);
    if (got.kept == want.kept) {
      EXPECT_EQ(got.threshold, want.threshold);
    } else {  // only where the two summation orders straddle p: then one token apart
      EXPECT_TRUE(straddle) << "n " << n << " trial " << trial << ": kept " << got.kept << " vs "
                            << want.kept;
      EXPECT_LE(std::abs(got.kept - want.kept), 1);
    }
  }
}

TEST(ThresholdDrift, FloorsAgainstBruteForce) {
  // prev: scores 0..9 (in logits); now: the same shifted up by 1 with a new top score.
  std::vector<float> prev_s, now_s;
  for (int i = 0; i < 10; ++i) prev_s.push_back(float(i));
  for (int i = 0; i < 10; ++i) now_s.push_back(float(i) + 1.0f);
  now_s.push_back(12.0f);
  const double p = 0.9;
  const HeadStep prev = MeasureHeadStep(prev_s, p), now = MeasureHeadStep(now_s, p);
  const HeadStep want_prev = SortedWalk(prev_s, p), want_now = SortedWalk(now_s, p);
  ASSERT_EQ(prev.threshold, want_prev.threshold);
  ASSERT_EQ(now.threshold, want_now.threshold);
  DriftTally t({0.0, 2.0});
  t.Add(prev, now, now_s);
  ASSERT_EQ(t.transitions, 1);
  EXPECT_DOUBLE_EQ(t.theta_change[0], now.threshold - prev.threshold);
  EXPECT_DOUBLE_EQ(t.max_change[0], 3.0);  // the new top score 12 over 9
  for (size_t i = 0; i < 2; ++i) {
    const double delta = t.deltas[i];
    const double floors[2] = {prev.threshold - delta,
                              now.max - (prev.max - prev.threshold) - delta};
    for (int f = 0; f < 2; ++f) {
      const bool valid = now.threshold >= floors[f];
      int64_t survivors = 0;
      for (float x : now_s) survivors += x >= floors[f] ? 1 : 0;
      SCOPED_TRACE(testing::Message() << "delta " << delta << " floor " << f);
      // The absolute floor rises by nothing while the scores rise by 1: always valid here.
      if (f == 0) {
        EXPECT_TRUE(valid);
      }
      ASSERT_EQ(t.valid[f][i], valid ? 1 : 0);
      if (valid) {
        ASSERT_EQ(t.share[f][i].size(), 1u);
        EXPECT_DOUBLE_EQ(t.share[f][i][0], double(survivors) / double(now_s.size()));
        EXPECT_DOUBLE_EQ(t.over_kept[f][i][0], double(survivors) / double(now.kept));
        EXPECT_GE(survivors, now.kept) << "a valid floor keeps the whole top-p set";
      }
    }
  }
}

TEST(ThresholdDrift, IdenticalStepsAreValidAtZeroMarginWithTheKeptSetOnly) {
  std::vector<float> s;
  std::mt19937 rng(7);
  for (int i = 0; i < 500; ++i) s.push_back(std::normal_distribution<float>(0, 2)(rng));
  const HeadStep h = MeasureHeadStep(s, 0.95);
  DriftTally t({0.0});
  t.Add(h, h, s);
  for (int f = 0; f < 2; ++f) {
    ASSERT_EQ(t.valid[f][0], 1);
    EXPECT_DOUBLE_EQ(t.over_kept[f][0][0], 1.0);
  }
  EXPECT_EQ(t.depth_change[0], 0.0);
}

}  // namespace
}  // namespace twl::bench

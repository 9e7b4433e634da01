// The bit-plane two-tier estimate (bench/lib/bit_planes.h): the stored codes and steps are the
// grid the library's INT4 estimate reads; the high-plane estimate is the dot product with the
// bucket centres, which lie inside their buckets; refining every page gives the INT4 pass's
// kept sets exactly (none: the high plane's); the adaptive rules refine exactly the pages
// holding a token at or above their floor, and more pages as they loosen.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "core/half.h"
#include "core/quantize.h"
#include "cpu/head_keys_inputs.h"
#include "gtest/gtest.h"
#include "lib/bit_planes.h"
#include "lib/paged_head_keys.h"
#include "lib/top_p_set.h"

namespace twl::bench {
namespace {

// Random FP16 keys [len][d] (values as floats) with per-channel offsets and scales, as real K
// has, and a few heavy rows (sink-like) that stretch their pages' ranges.
std::vector<float> RandomKeys(int32_t len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(0.2f, 3.0f);
  std::vector<float> offset(kD), scale(kD);
  for (int32_t j = 0; j < kD; ++j) {
    offset[size_t(j)] = n(rng);
    scale[size_t(j)] = u(rng);
  }
  std::vector<float> k(static_cast<size_t>(len) * kD);
  for (int32_t t = 0; t < len; ++t) {
    const float heavy = t % 97 == 5 ? 4.0f : 1.0f;
    for (int32_t j = 0; j < kD; ++j) {
      k[size_t(t) * kD + size_t(j)] =
          HalfToFloat(FloatToHalf(offset[size_t(j)] + heavy * scale[size_t(j)] * n(rng)));
    }
  }
  return k;
}

PagedHeadKeys Keys(int32_t len, uint64_t seed) {
  const std::vector<float> k = RandomKeys(len, seed);
  absl::StatusOr<PagedHeadKeys> keys = PagedHeadKeys::Build(k.data(), len, kD, kPs);
  EXPECT_TRUE(keys.ok()) << keys.status();
  return *std::move(keys);
}

TEST(BitPlanes, CodesAndStepsAreTheGridTheInt4EstimateReads) {
  const PagedHeadKeys keys = Keys(1000, SeedBase() + 1);  // a partial last page
  const std::vector<float> q = RandomQuery(SeedBase() + 2);
  std::vector<float> est;
  keys.EstimateAll(q.data(), &est);
  for (int32_t t = 0; t < keys.len(); ++t) {
    const int32_t page = t / kPs;
    float dot = 0.0f;  // FP32 in channel order, as the library's estimator sums
    for (int32_t j = 0; j < kD; ++j) {
      ASSERT_LE(keys.Code(t, j), 15u);
      dot += q[size_t(j)] * PageChannelDequantValue(int32_t(keys.Code(t, j)), keys.Step(page)[j],
                                                    keys.RangeLo(page)[j]);
    }
    ASSERT_EQ(dot, est[size_t(t)]) << t;
  }
}

TEST(BitPlanes, HighPlaneEstimateIsTheDotWithBucketCentres) {
  const PagedHeadKeys keys = Keys(777, SeedBase() + 3);
  const std::vector<float> q = RandomQuery(SeedBase() + 4);
  std::vector<float> coarse, fine;
  HighPlaneEstimateAll(keys, q.data(), &coarse);
  keys.EstimateAll(q.data(), &fine);
  ASSERT_EQ(coarse.size(), size_t(keys.len()));
  for (int32_t t = 0; t < keys.len(); ++t) {
    const int32_t page = t / kPs;
    const float *lo = keys.RangeLo(page), *step = keys.Step(page);
    float dot = 0.0f;
    double bound = 1e-4;  // |coarse - fine| <= sum_j |q_j| (1.5 step_j + two FP16 roundings)
    for (int32_t j = 0; j < kD; ++j) {
      const uint32_t code = keys.Code(t, j), h = code >> 2;
      const float centre = HighPlaneCentre(h, lo[j], step[j]);
      // Inside its bucket, and halfway between the bucket's two middle grid values.
      ASSERT_GE(centre, PageChannelDequantValue(int32_t(4 * h), step[j], lo[j]));
      ASSERT_LE(centre, PageChannelDequantValue(int32_t(4 * h + 3), step[j], lo[j]));
      const double middle = 0.5 * (double(PageChannelDequantValue(int32_t(4 * h + 1), step[j], lo[j])) +
                                   PageChannelDequantValue(int32_t(4 * h + 2), step[j], lo[j]));
      ASSERT_NEAR(centre, middle, 2e-3 * (std::fabs(middle) + step[j]));
      dot += q[size_t(j)] * centre;
      bound += std::fabs(q[size_t(j)]) * (1.5 * step[j] + 2e-3 * (std::fabs(centre) + step[j]));
    }
    ASSERT_EQ(dot, coarse[size_t(t)]) << t;
    ASSERT_LE(std::fabs(double(coarse[size_t(t)]) - fine[size_t(t)]), bound) << t;
  }
}

TEST(BitPlanes, EveryPageRefinedGivesTheInt4KeptSetAndNoneTheHighPlanes) {
  const PagedHeadKeys keys = Keys(1500, SeedBase() + 5);
  for (uint64_t s = 0; s < 3; ++s) {
    const std::vector<float> q = RandomQuery(SeedBase() + 10 + s);
    std::vector<float> coarse, fine;
    HighPlaneEstimateAll(keys, q.data(), &coarse);
    keys.EstimateAll(q.data(), &fine);
    const std::vector<uint8_t> all(size_t(keys.pages()), 1), none(size_t(keys.pages()), 0);
    for (float p : {0.5f, 0.9f, 0.95f}) {
      float a, b;
      EXPECT_EQ(TopPSet(MixedEstimate(coarse, fine, all, kPs), p, &a), TopPSet(fine, p, &b)) << p;
      EXPECT_EQ(a, b);
      EXPECT_EQ(TopPSet(MixedEstimate(coarse, fine, none, kPs), p, &a), TopPSet(coarse, p, &b));
    }
    // A mixed estimate takes each page whole from one side.
    std::vector<uint8_t> some(size_t(keys.pages()), 0);
    for (size_t i = 0; i < some.size(); i += 3) some[i] = 1;
    const std::vector<float> mixed = MixedEstimate(coarse, fine, some, kPs);
    for (size_t t = 0; t < mixed.size(); ++t) {
      ASSERT_EQ(mixed[t], some[t / kPs] ? fine[t] : coarse[t]) << t;
    }
  }
}

// Pages marked iff they hold a token at or above the head's floor for some head.
void ExpectExactlyPagesReaching(const std::vector<std::vector<float>>& coarse,
                                const std::vector<double>& floor,
                                const std::vector<uint8_t>& refined) {
  const size_t len = coarse[0].size();
  ASSERT_EQ(refined.size(), (len + kPs - 1) / kPs);
  std::vector<uint8_t> want(refined.size(), 0);
  for (size_t g = 0; g < coarse.size(); ++g) {
    for (size_t t = 0; t < len; ++t) {
      if (coarse[g][t] >= floor[g]) want[t / kPs] = 1;
    }
  }
  EXPECT_EQ(refined, want);
}

TEST(BitPlanes, AdaptiveRulesRefineExactlyThePagesReachingTheirFloor) {
  const PagedHeadKeys keys = Keys(4000, SeedBase() + 6);
  std::vector<std::vector<float>> coarse(3);
  std::vector<float> threshold(3);
  for (size_t g = 0; g < 3; ++g) {
    const std::vector<float> q = RandomQuery(SeedBase() + 20 + g);
    HighPlaneEstimateAll(keys, q.data(), &coarse[g]);
    TopPSet(coarse[g], 0.95f, &threshold[g]);
  }
  double previous = 0;
  for (double margin : {0.0, 0.5, 1.0, 2.0, 4.0}) {
    const std::vector<uint8_t> refined = MarginPages(coarse, threshold, margin, kPs);
    std::vector<double> floor(3);
    for (size_t g = 0; g < 3; ++g) floor[g] = threshold[g] - margin;
    ExpectExactlyPagesReaching(coarse, floor, refined);
    // Every kept token of every head (at or above its threshold) lies in a refined page.
    for (size_t g = 0; g < 3; ++g) {
      float unused;
      const std::vector<uint8_t> keep = TopPSet(coarse[g], 0.95f, &unused);
      for (size_t t = 0; t < keep.size(); ++t) {
        if (keep[t]) {
          ASSERT_TRUE(refined[t / kPs]) << g << " " << t;
        }
      }
    }
    EXPECT_GE(RefinedShare(refined), previous) << margin;
    previous = RefinedShare(refined);
  }
  previous = 0;
  for (double eps : {0.5, 1e-2, 1e-3, 1e-4, 1e-5}) {
    const std::vector<uint8_t> refined = WeightPages(coarse, eps, kPs);
    std::vector<double> floor(3);
    for (size_t g = 0; g < 3; ++g) {  // the weight share exp(x) / sum exp >= eps, directly
      double sum = 0;
      for (float x : coarse[g]) sum += std::exp(double(x));
      floor[g] = std::log(eps * sum);
    }
    // Equal up to tokens within rounding of the floor: compare with the floor nudged both ways.
    std::vector<double> looser(floor), tighter(floor);
    for (size_t g = 0; g < 3; ++g) {
      looser[g] -= 1e-9;
      tighter[g] += 1e-9;
    }
    const std::vector<uint8_t> hi = PagesReaching(coarse, looser, kPs);
    const std::vector<uint8_t> lo = PagesReaching(coarse, tighter, kPs);
    for (size_t i = 0; i < refined.size(); ++i) {
      ASSERT_LE(lo[i], refined[i]) << eps << " " << i;
      ASSERT_LE(refined[i], hi[i]) << eps << " " << i;
    }
    EXPECT_GE(RefinedShare(refined), previous) << eps;
    previous = RefinedShare(refined);
  }
  // eps = 1: only a token holding the whole weight would qualify; random keys have none.
  EXPECT_EQ(RefinedShare(WeightPages(coarse, 1.0, kPs)), 0.0);
}

TEST(BitPlanes, PageMaximaAndBytes) {
  const std::vector<float> est = {1, 5, 2, -1, 0, 3, 7, 7, -2};  // pages of 4: last one 1 row
  EXPECT_EQ(PageMaxima(est, 4), std::vector<float>({5, 7, -2}));
  EXPECT_DOUBLE_EQ(PlaneBytesPerToken(128, 16, 0.0), 32.0 + 17.0);
  EXPECT_DOUBLE_EQ(PlaneBytesPerToken(128, 16, 1.0), 81.0);  // today's INT4 pass, relaid
  EXPECT_DOUBLE_EQ(PlaneBytesPerToken(128, 16, 0.25), 57.0);
  EXPECT_DOUBLE_EQ(RefinedShare({1, 0, 0, 1}), 0.5);
}

}  // namespace
}  // namespace twl::bench

// Coarse-then-fine page selection (bench/lib/coarse_ranking.h): refining every page gives the
// plain full estimate's top-p sets; a page holding a planted high-score key ranks first under
// both summaries, for whichever head of the group it matches; the adaptive stop refines
// everything at a tiny eps and stops at the first chunk when the rest is negligible.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "cpu/head_keys_inputs.h"
#include "gtest/gtest.h"
#include "lib/coarse_ranking.h"
#include "lib/paged_head_keys.h"
#include "lib/top_p_set.h"

namespace twl::bench {
namespace {

// Random FP16 keys [len][d] (values as floats).
std::vector<float> RandomKeys(int32_t len, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> k(static_cast<size_t>(len) * kD);
  for (float& x : k) x = HalfToFloat(FloatToHalf(n(rng)));
  return k;
}

TEST(CoarseRanking, EveryPageRefinedEqualsTheFullEstimatesTopP) {
  const int32_t len = 1000;  // a partial last page
  const std::vector<float> k = RandomKeys(len, SeedBase() + 1);
  absl::StatusOr<PagedHeadKeys> keys = PagedHeadKeys::Build(k.data(), len, kD, kPs);
  ASSERT_TRUE(keys.ok()) << keys.status();
  for (uint64_t s = 0; s < 4; ++s) {
    const std::vector<float> q = RandomQuery(SeedBase() + 10 + s);
    std::vector<float> est;
    keys->EstimateAll(q.data(), &est);
    float threshold;
    for (float p : {0.5f, 0.9f, 0.95f}) {
      const std::vector<uint8_t> full = TopPSet(est, p, &threshold);
      const std::vector<int32_t> all = RankPages({std::vector<float>(size_t(keys->pages()), 0)});
      const std::vector<uint8_t> refined = FirstPages(all, keys->pages(), keys->pages());
      EXPECT_EQ(TopPOverRefined(est, DescendingOrder(est), refined, kPs, p), full) << p;
    }
  }
}

TEST(CoarseRanking, RefinedSubsetKeepsOnlyItsPagesAndReachesPOfThem) {
  const int32_t len = 512;
  const std::vector<float> k = RandomKeys(len, SeedBase() + 2);
  absl::StatusOr<PagedHeadKeys> keys = PagedHeadKeys::Build(k.data(), len, kD, kPs);
  ASSERT_TRUE(keys.ok());
  const std::vector<float> q = RandomQuery(SeedBase() + 3);
  std::vector<float> est;
  keys->EstimateAll(q.data(), &est);
  std::vector<uint8_t> refined(size_t(keys->pages()), 0);
  refined[3] = refined[17] = refined[30] = 1;
  const std::vector<uint8_t> keep = TopPOverRefined(est, DescendingOrder(est), refined, kPs, 0.9f);
  double kept = 0, total = 0;
  for (int32_t t = 0; t < len; ++t) {
    if (!refined[size_t(t / kPs)]) {
      EXPECT_EQ(keep[size_t(t)], 0) << t;
      continue;
    }
    total += std::exp(double(est[size_t(t)]));
    kept += keep[size_t(t)] ? std::exp(double(est[size_t(t)])) : 0.0;
  }
  EXPECT_GE(kept, 0.9 * total);
}

TEST(CoarseRanking, PlantedKeyPageRanksFirstForEitherSummary) {
  const int32_t len = 2048;
  std::vector<float> k = RandomKeys(len, SeedBase() + 4);
  std::vector<float> q0 = RandomQuery(SeedBase() + 5);
  const std::vector<float> q1 = RandomQuery(SeedBase() + 6);
  // Head 0 orthogonal to head 1, so the key planted for head 1 is no better than noise for
  // head 0 and the two heads' best pages differ whatever the seed.
  double dot = 0, n1 = 0;
  for (int32_t j = 0; j < kD; ++j) {
    dot += double(q0[size_t(j)]) * q1[size_t(j)];
    n1 += double(q1[size_t(j)]) * q1[size_t(j)];
  }
  for (int32_t j = 0; j < kD; ++j) q0[size_t(j)] -= float(dot / n1 * q1[size_t(j)]);
  // Head 1's key, planted in page 77 as a whole page close to 40 q1 / |q1|^2 (so q1 . k ~ 40
  // for each of its rows, far above any random key and above random pages' Quest bounds).
  double n2 = 0;
  for (float x : q1) n2 += double(x) * x;
  const int32_t planted = 77;
  for (int32_t r = 0; r < kPs; ++r)
    for (int32_t j = 0; j < kD; ++j)
      k[size_t(planted * kPs + r) * kD + j] =
          HalfToFloat(FloatToHalf(float(40.0 * q1[size_t(j)] / n2) + 0.05f * float((r + j) % 3)));
  absl::StatusOr<PagedHeadKeys> keys = PagedHeadKeys::Build(k.data(), len, kD, kPs);
  ASSERT_TRUE(keys.ok());
  for (CoarseSummary s : {CoarseSummary::kQuest, CoarseSummary::kMean}) {
    std::vector<std::vector<float>> scores(2);
    CoarsePageScores(s, *keys, q0.data(), &scores[0]);
    CoarsePageScores(s, *keys, q1.data(), &scores[1]);
    // Alone, head 1 ranks the planted page first.
    EXPECT_EQ(RankPages({scores[1]})[0], planted) << CoarseSummaryName(s);
    // In the group, each head's own best page has rank 0: the planted page and head 0's best
    // page (by index, a tie) are the first two, ahead of every other page.
    const int32_t best0 = int32_t(std::max_element(scores[0].begin(), scores[0].end()) -
                                  scores[0].begin());
    ASSERT_NE(best0, planted);
    const std::vector<int32_t> order = RankPages(scores);
    EXPECT_EQ(order[0], std::min(best0, planted)) << CoarseSummaryName(s);
    EXPECT_EQ(order[1], std::max(best0, planted)) << CoarseSummaryName(s);
  }
}

TEST(CoarseRanking, AdaptiveStopFollowsEps) {
  const int32_t len = 4096;
  std::vector<float> k = RandomKeys(len, SeedBase() + 7);
  const std::vector<float> q = RandomQuery(SeedBase() + 8);
  absl::StatusOr<PagedHeadKeys> keys = PagedHeadKeys::Build(k.data(), len, kD, kPs);
  ASSERT_TRUE(keys.ok());
  std::vector<std::vector<float>> coarse(1), est(1);
  CoarsePageScores(CoarseSummary::kMean, *keys, q.data(), &coarse[0]);
  keys->EstimateAll(q.data(), &est[0]);
  const std::vector<int32_t> order = RankPages(coarse);
  // Random keys: the weight is spread, so a tiny eps must refine every page and a huge one
  // stops after the first chunk; in between the count never shrinks as eps falls.
  EXPECT_EQ(AdaptiveRefinedPages(*keys, order, coarse, est, 1e-9, 4), keys->pages());
  EXPECT_EQ(AdaptiveRefinedPages(*keys, order, coarse, est, 1e6, 4), 4);
  int32_t previous = 0;
  for (double eps : {10.0, 1.0, 0.1, 0.01}) {
    const int32_t n = AdaptiveRefinedPages(*keys, order, coarse, est, eps, 4);
    EXPECT_GE(n, previous) << eps;
    previous = n;
  }
}

TEST(CoarseRanking, BytesPerToken) {
  EXPECT_DOUBLE_EQ(FineBytesPerToken(128, 16), 64.0 + 17.0);
  EXPECT_DOUBLE_EQ(CoarseBytesPerToken(CoarseSummary::kMean, 128, 16), 16.0);
  EXPECT_DOUBLE_EQ(CoarseBytesPerToken(CoarseSummary::kQuest, 128, 16), 17.0);
}

}  // namespace
}  // namespace twl::bench

// The GPU pruner's histogram top-p rule on the CPU (TopPBinnedRef): kept mass >= p, a level
// set of the FP16 scores, minimal up to its 1/2048-logit sub-bin, agreement with an exact
// sort + cumulative sum, order independence, and the p >= 1 / NaN / inf / empty cases.
#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <numeric>
#include <random>

#include "core/half.h"
#include "gtest/gtest.h"
#include "pipeline/prune/twilight/cpu/twilight_prune_cpu.h"
#include "reference/top_p_bins.h"

namespace twl {
namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

float Round16(float x) { return HalfToFloat(FloatToHalf(x)); }

// Scores at a random temperature (flat to peaked), some slots masked with -inf.
std::vector<float> RandomScores(std::mt19937_64& rng, int32_t n) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const float temp = std::exp(std::uniform_real_distribution<float>(-3.0f, 1.5f)(rng));
  const float shift = std::uniform_real_distribution<float>(-20.0f, 20.0f)(rng);
  std::vector<float> s(static_cast<size_t>(n));
  for (auto& x : s) x = shift + temp * nd(rng);
  for (int k = 0; k < n / 50; ++k) s[size_t(rng() % uint64_t(n))] = -kInf;
  return s;
}

TEST(TopPBinned, MassLevelSetMinimalityAndOracle) {
  std::mt19937_64 rng(::testing::UnitTest::GetInstance()->random_seed());
  const float ps[] = {0.5f, 0.9f, 0.95f, 0.99f};
  for (int trial = 0; trial < 300; ++trial) {
    const int32_t n = 1 + int32_t(rng() % (trial % 10 == 0 ? 40000 : 3000));
    const auto sc = RandomScores(rng, n);
    const float p = trial % 5 == 4 ? std::uniform_real_distribution<float>(0.05f, 0.999f)(rng)
                                   : ps[trial % 4];
    const BinnedTopP r = TopPBinnedRef(sc, p);
    // Exact masses in double over the FP16-rounded scores.
    float mx = -kInf;
    for (float x : sc) mx = std::max(mx, Round16(x));
    std::vector<double> w(sc.size(), 0.0);
    double total = 0.0, kept_mass = 0.0;
    float lowest_kept = kInf, highest_dropped = -kInf;
    int32_t kept = 0;
    for (size_t i = 0; i < sc.size(); ++i) {
      if (sc[i] == -kInf) {
        ASSERT_FALSE(r.keep[i]) << "kept a masked slot";
        continue;
      }
      const float x = Round16(sc[i]);
      w[i] = std::exp(double(x) - double(mx));
      total += w[i];
      if (r.keep[i]) {
        kept_mass += w[i];
        ++kept;
        lowest_kept = std::min(lowest_kept, x);
      } else {
        highest_dropped = std::max(highest_dropped, x);
      }
    }
    if (total == 0.0) continue;
    ASSERT_EQ(kept, r.kept);
    ASSERT_GE(kept_mass / total, double(p) - 1e-6) << "n " << n << " p " << p;
    ASSERT_NEAR(r.mass, kept_mass / total, 1e-5);
    // A level set of the stored scores.
    ASSERT_LE(highest_dropped, lowest_kept) << "not a level set";
    // Minimal up to the sub-bin: without the kept tokens within 1/2048 logit of the lowest
    // kept one, the mass is below p.
    double above = 0.0;
    int32_t band = 0;
    for (size_t i = 0; i < sc.size(); ++i) {
      if (!r.keep[i]) continue;
      if (double(Round16(sc[i])) - double(lowest_kept) > 1.0 / 2048.0 + 1e-6) above += w[i];
      else ++band;
    }
    ASSERT_LT(above / total, double(p) + 1e-6) << "not minimal, n " << n << " p " << p;
    // Exact oracle: sort by score, smallest prefix with mass >= p; the binned set is that
    // prefix plus at most the other tokens of the crossing sub-bin.
    std::vector<size_t> order;
    for (size_t i = 0; i < sc.size(); ++i) if (sc[i] != -kInf) order.push_back(i);
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return Round16(sc[a]) > Round16(sc[b]); });
    double cum = 0.0;
    int32_t oracle = 0;
    for (size_t i : order) {
      cum += w[i];
      ++oracle;
      if (cum >= double(p) * total) break;
    }
    ASSERT_GE(kept + 1, oracle) << "fewer than the oracle's prefix (beyond a float tie)";
    ASSERT_LE(kept, oracle + band) << "more than the oracle's prefix + the crossing sub-bin";
  }
}

TEST(TopPBinned, OrderIndependentAndAgreesWithBisection) {
  std::mt19937_64 rng(::testing::UnitTest::GetInstance()->random_seed() + 7);
  for (int trial = 0; trial < 50; ++trial) {
    auto sc = RandomScores(rng, 5000);
    const BinnedTopP a = TopPBinnedRef(sc, 0.9f);
    std::vector<size_t> perm(sc.size());
    std::iota(perm.begin(), perm.end(), size_t(0));
    std::shuffle(perm.begin(), perm.end(), rng);
    std::vector<float> shuffled(sc.size());
    for (size_t i = 0; i < sc.size(); ++i) shuffled[i] = sc[perm[i]];
    const BinnedTopP b = TopPBinnedRef(shuffled, 0.9f);
    ASSERT_EQ(a.kept, b.kept);
    ASSERT_EQ(a.mass, b.mass);
    for (size_t i = 0; i < sc.size(); ++i) ASSERT_EQ(b.keep[i], a.keep[perm[i]]);
    // TopPThresholdRef (bisection, exact stop) on the same rounded weights: same set up to
    // the crossing sub-bin.
    float mx = -kInf;
    for (float x : sc) mx = std::max(mx, Round16(x));
    std::vector<float> w;
    for (float x : sc) w.push_back(x == -kInf ? 0.0f : std::exp(Round16(x) - mx));
    const TopPResult bis = TopPThresholdRef(w, 0.9f, 0.0f);
    // The bisection sums weights in float, the binned rule in integers: where the mass of
    // the weights above a level set is within float rounding of p * total, the two may
    // decide that level set differently (all its tokens at once, one FP16 step away from
    // the threshold). MassAbove measures that tie exactly, in double.
    std::vector<double> sorted_w;
    for (size_t i = 0; i < w.size(); ++i) {
      if (sc[i] != -kInf) sorted_w.push_back(double(w[i]));
    }
    std::sort(sorted_w.begin(), sorted_w.end(), std::greater<double>());
    std::vector<double> prefix(sorted_w.size() + 1, 0.0);
    for (size_t i = 0; i < sorted_w.size(); ++i) prefix[i + 1] = prefix[i] + sorted_w[i];
    const double total_w = prefix.back();
    auto near_tie = [&](float wi) {
      // Mass of the weights strictly above wi, and including wi's level set.
      const size_t above = size_t(std::lower_bound(sorted_w.begin(), sorted_w.end(),
                                                   double(wi), std::greater<double>()) -
                                  sorted_w.begin());
      const size_t upto = size_t(std::upper_bound(sorted_w.begin(), sorted_w.end(),
                                                  double(wi), std::greater<double>()) -
                                 sorted_w.begin());
      const double target = 0.9 * total_w, slack = 1e-5 * total_w;
      return std::abs(prefix[above] - target) <= slack ||
             std::abs(prefix[upto] - target) <= slack;
    };
    int32_t band = 0;
    for (size_t i = 0; i < w.size(); ++i) {
      if (sc[i] == -kInf) continue;
      const bool in_bis = w[i] > bis.threshold;
      if (in_bis == bool(a.keep[i])) continue;
      const bool in_sub_bin =
          std::abs(std::log(double(w[i])) - std::log(double(bis.threshold) + 1e-30)) <=
          1.0 / 2048.0 + 1e-3;
      if (in_bis) {
        // Dropped by the binned rule, kept by the bisection: only at a mass tie.
        EXPECT_TRUE(near_tie(w[i])) << "token " << i << " weight " << w[i];
      } else {
        ++band;
        // Kept by the binned rule only: the threshold's sub-bin (1/2048 logit + float
        // slack), or a level set at a mass tie.
        EXPECT_TRUE(in_sub_bin || near_tie(w[i])) << "token " << i << " weight " << w[i];
      }
    }
    EXPECT_LE(band, 50);
  }
}

TEST(TopPBinned, ExtremesAndNonFinite) {
  const std::vector<float> sc = {1.0f, -kInf, -200.0f, 0.5f};
  // p = 1: every candidate, even one whose weight underflows to 0.
  BinnedTopP r = TopPBinnedRef(sc, 1.0f);
  EXPECT_EQ(r.kept, 3);
  EXPECT_EQ(r.keep, (std::vector<uint8_t>{1, 0, 1, 1}));
  EXPECT_EQ(r.mass, 1.0);
  // Tiny p: the max alone.
  r = TopPBinnedRef(sc, 1e-6f);
  EXPECT_EQ(r.keep, (std::vector<uint8_t>{1, 0, 0, 0}));
  // p just below 1: never a zero-weight token.
  r = TopPBinnedRef(sc, 0.999999f);
  EXPECT_EQ(r.keep, (std::vector<uint8_t>{1, 0, 0, 1}));
  // Equal scores are kept together.
  r = TopPBinnedRef(std::vector<float>(100, 3.0f), 0.3f);
  EXPECT_EQ(r.kept, 100);
  // NaN, +inf max, nothing valid, empty: nothing (TopPThresholdRef: a NaN or zero total).
  EXPECT_EQ(TopPBinnedRef({1.0f, std::nanf(""), 0.0f}, 0.9f).kept, 0);
  EXPECT_EQ(TopPBinnedRef({1.0f, kInf}, 0.9f).kept, 0);
  EXPECT_EQ(TopPBinnedRef({-kInf, -kInf}, 0.9f).kept, 0);
  EXPECT_EQ(TopPBinnedRef({}, 0.9f).kept, 0);
  // Beyond FP16: 70000 rounds to inf, so the head keeps nothing.
  EXPECT_EQ(TopPBinnedRef({70000.0f, 1.0f}, 0.5f).kept, 0);
}

}  // namespace
}  // namespace twl

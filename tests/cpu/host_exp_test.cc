// HostExp (core/host_exp.h): its error against e^x in double over the whole float range, its
// special values, and the AVX2 build of ExpMinusMax against the baseline bit for bit.
#include "core/host_exp.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "core/host_simd.h"
#include "gtest/gtest.h"

namespace twl {
namespace {

uint64_t FreshSeed() { return ::testing::UnitTest::GetInstance()->random_seed(); }

// |HostExp(x) - e^x| in units of the float spacing at e^x (the subnormal spacing 2^-149 below
// FLT_MIN).
double UlpError(float x) {
  const double exact = std::exp(double(x));
  const double got = double(HostExp(x));
  const double ulp = exact < double(std::numeric_limits<float>::min())
                         ? std::ldexp(1.0, -149)
                         : std::ldexp(1.0, std::ilogb(exact) - 23);
  return std::fabs(got - exact) / ulp;
}

TEST(HostExp, WithinTwoUlpOverTheWholeRange) {
  std::mt19937_64 rng(FreshSeed());
  std::uniform_real_distribution<float> any(-104.0f, 88.72f);
  double worst = 0.0;
  float worst_x = 0.0f;
  auto check = [&](float x) {
    const double e = UlpError(x);
    if (e > worst) {
      worst = e;
      worst_x = x;
    }
  };
  for (int i = 0; i < 2000000; ++i) check(any(rng));
  // Every float in the scores' usual band (within 30 logits of the max), stepped coarsely,
  // and the range reduction's edges (x near k ln 2 +- ln 2 / 2) and the subnormal band.
  for (float x = -30.0f; x <= 0.0f; x += 1.0f / 4096.0f) check(x);
  for (int k = -149; k <= 127; ++k) {
    for (float f : {-0.5f, -0.4999f, 0.0f, 0.4999f, 0.5f}) check(float((k + f) * std::log(2.0)));
  }
  for (float x = -104.0f; x <= -87.0f; x += 1.0f / 256.0f) check(x);
  EXPECT_LE(worst, 2.0) << "at x = " << worst_x;
}

TEST(HostExp, SpecialValues) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(HostExp(0.0f), 1.0f);
  EXPECT_EQ(HostExp(-0.0f), 1.0f);
  EXPECT_EQ(HostExp(-inf), 0.0f);
  EXPECT_EQ(HostExp(-104.5f), 0.0f);
  EXPECT_EQ(HostExp(inf), inf);
  EXPECT_EQ(HostExp(89.0f), inf);
  EXPECT_TRUE(std::isfinite(HostExp(88.7228f)));
  EXPECT_TRUE(std::isnan(HostExp(std::numeric_limits<float>::quiet_NaN())));
  // Monotone where the weights of a softmax live (a top-p threshold compares weights).
  float prev = 0.0f;
  for (float x = -104.0f; x <= 0.0f; x += 1.0f / 1024.0f) {
    const float e = HostExp(x);
    ASSERT_GE(e, prev) << "x = " << x;
    prev = e;
  }
}

bool SameBits(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof(a)) == 0;
}

TEST(HostExp, Avx2IsTheBaselineBitForBit) {
  if (!HostSupports(HostSimd::kAvx2F16c)) GTEST_SKIP() << "this CPU has no AVX2 + F16C";
  std::mt19937_64 rng(FreshSeed());
  std::normal_distribution<float> normal(0.0f, 20.0f);
  const float specials[] = {std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(),
                            std::numeric_limits<float>::quiet_NaN(),
                            0.0f, -0.0f, -104.0f, -103.99f, 88.7228f, 88.73f, -87.33f, 1e-30f};
  for (int trial = 0; trial < 200; ++trial) {
    const size_t n = size_t(rng() % 300);  // tails of every length
    std::vector<float> w(n);
    for (float& x : w) x = rng() % 16 == 0 ? specials[rng() % std::size(specials)] : normal(rng);
    const float m = trial % 7 == 0 ? 0.0f : normal(rng);
    std::vector<float> base = w, wide = w;
    ExpMinusMaxBaseline(base.data(), n, m);
    ExpMinusMaxAvx2(wide.data(), n, m);
    for (size_t i = 0; i < n; ++i) {
      ASSERT_TRUE(SameBits(base[i], wide[i]))
          << "x " << w[i] << " - " << m << ": baseline " << base[i] << ", avx2 " << wide[i];
      ASSERT_TRUE(SameBits(base[i], HostExp(w[i] - m)));
    }
  }
}

}  // namespace
}  // namespace twl

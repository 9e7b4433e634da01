// bench/lib/serve_accuracy: the serving benchmark's accuracy figures (true kept mass, error vs
// dense, exact top-p) against cases whose answers are known without it, and a host synthetic
// workload whose flat heads really need a large share of the context.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "core/half.h"
#include "gpu/synth.h"
#include "gtest/gtest.h"
#include "lib/serve_accuracy.h"

namespace twl::bench {
namespace {

// Two KV heads, d 4; head 1 holds one dominant key at position 5.
struct Case {
  int32_t len = 64, H = 2, D = 4;
  std::vector<fp16_t> k, v, q;
  Case() : k(size_t(64) * 2 * 4), v(k.size()), q(4) {
    for (int32_t t = 0; t < len; ++t) {
      for (int32_t h = 0; h < H; ++h) {
        for (int32_t c = 0; c < D; ++c) {
          const size_t i = (size_t(t) * H + h) * D + c;
          k[i] = FloatToHalf(h == 1 && t == 5 ? 8.0f : 0.0f);
          v[i] = FloatToHalf(float(t % 7) - 3.0f + 0.5f * float(c));
        }
      }
    }
    for (int32_t c = 0; c < D; ++c) q[size_t(c)] = FloatToHalf(2.0f);
  }
};

TEST(ServeAccuracy, EveryTokenKeptIsDenseAndOutputErrorIsMeasured) {
  Case c;
  std::vector<int32_t> all(size_t(c.len));
  std::iota(all.begin(), all.end(), 0);
  // Dense output of head 0: all scores equal, the mean of V.
  std::vector<fp16_t> out(4);
  for (int32_t ch = 0; ch < 4; ++ch) {
    double m = 0;
    for (int32_t t = 0; t < c.len; ++t) m += HalfToFloat(c.v[(size_t(t) * 2 + 0) * 4 + ch]);
    out[size_t(ch)] = FloatToHalf(float(m / c.len));
  }
  HeadAccuracy a = MeasureHead(c.k.data(), c.v.data(), c.len, 2, 4, 0, c.q.data(), out.data(),
                               all, 0.95);
  EXPECT_NEAR(a.true_mass, 1.0, 1e-12);
  EXPECT_LT(a.rel_err, 2e-3);  // FP16 rounding of the output only
  // Flat head: exact top-p at 0.95 needs 95% of the tokens.
  EXPECT_EQ(a.oracle_kept, int32_t(std::ceil(0.95 * c.len)));
  // A wrong output is caught.
  std::vector<fp16_t> bad(out);
  bad[0] = FloatToHalf(HalfToFloat(bad[0]) + 1.0f);
  a = MeasureHead(c.k.data(), c.v.data(), c.len, 2, 4, 0, c.q.data(), bad.data(), all, 0.95);
  EXPECT_GT(a.rel_err, 0.1);
}

TEST(ServeAccuracy, MassOfAPartialSetAndPeakedOracle) {
  Case c;
  // Head 1: the key at 5 has score 2*8*4/2 = 32 above the rest, so it holds ~all the mass.
  const std::vector<int32_t> just_peak = {5}, without_peak = {0, 1, 2, 3, 4, 6};
  std::vector<fp16_t> out(4);
  for (int32_t ch = 0; ch < 4; ++ch) out[size_t(ch)] = c.v[(size_t(5) * 2 + 1) * 4 + ch];
  HeadAccuracy a = MeasureHead(c.k.data(), c.v.data(), c.len, 2, 4, 1, c.q.data(), out.data(),
                               just_peak, 0.95);
  EXPECT_GT(a.true_mass, 0.999);
  EXPECT_EQ(a.oracle_kept, 1);
  EXPECT_EQ(a.attended, 1);
  a = MeasureHead(c.k.data(), c.v.data(), c.len, 2, 4, 1, c.q.data(), out.data(), without_peak,
                  0.95);
  EXPECT_LT(a.true_mass, 1e-6);
}

TEST(ServeAccuracy, MixedWorkloadFlatHeadsNeedALargeShareAndPeakedHeadsLittle) {
  // The serving benchmark's "mixed" workload: KV heads 0-1 flat (lognormal scores, no hot
  // tokens), the others peaked. Exact top-p at 0.95 over 4096 tokens.
  SynthSpec sp;
  sp.seed = 7;
  sp.num_kv_heads = 4;
  sp.head_dim = 64;
  sp.flat_mask = 0x3u;
  sp.beta_flat = 2.0f;
  sp.gamma_flat = 0.0f;
  const int32_t len = 4096, Hq = 4;
  std::vector<fp16_t> k(size_t(len) * 4 * 64), v(k.size()), q(size_t(Hq) * 64), out(64);
  SynthKvHost(sp, 0, 0, len, len, k.data(), v.data());
  const int32_t seq = 0;
  SynthQueriesHost(sp, &seq, 1, Hq, 0, q.data());
  std::vector<int32_t> none;
  for (int32_t h = 0; h < 4; ++h) {
    const HeadAccuracy a =
        MeasureHead(k.data(), v.data(), len, 4, 64, h, q.data() + h * 64, out.data(), none, 0.95);
    if (h < 2) {
      EXPECT_GT(a.oracle_kept, len / 5) << "flat head " << h;
      EXPECT_LT(a.oracle_kept, len * 6 / 10) << "flat head " << h;
    } else {
      EXPECT_LT(a.oracle_kept, len / 20) << "peaked head " << h;
    }
  }
}

}  // namespace
}  // namespace twl::bench

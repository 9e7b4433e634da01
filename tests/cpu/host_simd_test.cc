// The AVX2 + F16C host kernels against their baseline loops, bit for bit (core/host_simd.h):
// each test runs both levels on the same fresh random input and compares every output's
// bits (a NaN matches a NaN). Skipped, visibly, on a CPU without AVX2 + F16C.
#include "core/host_simd.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "core/quantize.h"
#include "gtest/gtest.h"
#include "pipeline/attend/sparse/cpu/grouped_attend_rows.h"
#include "pipeline/prune/twilight/cpu/estimate_cpu.h"
#include "pipeline/prune/twilight/cpu/top_p_window.h"
#include "pipeline/prune/twilight/cpu/twilight_prune_cpu.h"

namespace twl {
namespace {

uint64_t FreshSeed() { return ::testing::UnitTest::GetInstance()->random_seed(); }

// Runs f() at `level` and restores the process's level after.
template <typename F>
void AtLevel(HostSimd level, F f) {
  const HostSimd before = SetHostSimdForTesting(level);
  f();
  SetHostSimdForTesting(before);
}

bool SameBits(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || std::memcmp(&a, &b, sizeof(a)) == 0;
}

// One block's channel-range record (core/channel_range.h), its grid drawn from kinds that
// take every path of the wide kernel: ordinary ranges; a large A with a tiny grid step
// (code * step16 + lo not exact in float: the double route); a subnormal A under a huge
// grid (ranges whose float difference is not exact); D = 0 (step 0); a grid past FP16
// (hi = inf: step inf); a NaN step and an infinite A. Codes: lo anywhere, hi at or above it.
void DrawRecord(std::mt19937_64& rng, int d, uint8_t* record, int* inexact_sums) {
  std::normal_distribution<float> normal;
  std::uniform_int_distribution<int> kind(0, 7), code(0, 255), width(0, 40);
  float a = normal(rng), step = std::fabs(normal(rng)) * 4.0f / 255.0f;
  switch (kind(rng)) {
    case 0:
      a = 30000.0f * (normal(rng) > 0 ? 1 : -1);
      step = 16.0f * float(1 + kind(rng) % 3) / 255.0f;
      *inexact_sums += d;
      break;
    case 1:
      a = -std::ldexp(1.0f, -20 - kind(rng) % 4);
      step = 235.0f;
      break;
    case 2:
      step = 0.0f;
      break;
    case 3:
      a = -65504.0f;
      step = 514.0f;
      break;
    case 4:
      a = std::ldexp(normal(rng), -18);
      step = std::ldexp(std::fabs(normal(rng)), -17) / 255.0f;
      break;
    case 5:
      if (kind(rng) < 4) step = NAN; else a = -INFINITY;
      break;
    default:
      break;
  }
  for (int j = 0; j < d; ++j) {
    const int lo = code(rng);
    record[j] = uint8_t(lo);
    record[d + j] = uint8_t(std::min(255, lo + (kind(rng) == 0 ? code(rng) : width(rng))));
  }
  StoreChannelRangeGrid(record, d, FloatToHalf(a), FloatToHalf(step));
}

TEST(HostSimd, PageChannelEstimateIsTheBaselinesBitForBit) {
  if (!HostSupports(HostSimd::kAvx2F16c)) GTEST_SKIP() << "this CPU has no AVX2 + F16C";
  std::mt19937_64 rng(FreshSeed());
  std::normal_distribution<float> normal;
  int compared = 0, inexact_sums = 0;
  for (int d : {32, 64, 96, 128, 192, 256}) {  // 32 and 96: the baseline in both
    for (int trial = 0; trial < 40; ++trial) {
      PageGeometry g;
      g.page_size = 16;
      g.head_dim = d;
      g.k_bits = 4;
      g.k_scheme = kKSchemePageChannel;
      const int blocks = 3;
      std::vector<uint8_t> codes(size_t(blocks) * 16 * size_t(g.CodeBytesPerToken()));
      for (uint8_t& c : codes) c = uint8_t(rng());
      std::vector<uint8_t> records(size_t(blocks) * size_t(g.RangeBlockBytes()));
      for (int b = 0; b < blocks; ++b)
        DrawRecord(rng, d, &records[size_t(b) * size_t(g.RangeBlockBytes())], &inexact_sums);
      QuantKView qk;
      qk.codes = codes.data();
      qk.range = records.data();
      const int heads = 1 + int(rng() % 8);
      const int rows = trial % 3 == 0 ? 1 + int(rng() % 16) : 16;
      std::vector<std::vector<float>> q(size_t(heads), std::vector<float>(size_t(d), 0.0f));
      for (auto& row : q)
        for (float& x : row) x = normal(rng) * (trial % 5 == 0 ? 1e4f : 1.0f);
      std::vector<const float*> qp;
      for (auto& row : q) qp.push_back(row.data());
      const int64_t block = int64_t(rng() % blocks);
      std::vector<std::vector<float>> base(size_t(heads), std::vector<float>(16, -1.0f)),
          wide = base;
      std::vector<float*> bp, wp;
      for (int h = 0; h < heads; ++h) {
        bp.push_back(base[size_t(h)].data());
        wp.push_back(wide[size_t(h)].data());
      }
      AtLevel(HostSimd::kBaseline, [&] {
        EstimatePageChannelBlockMultiRef(g, qp.data(), heads, qk, block, rows, bp.data());
      });
      AtLevel(HostSimd::kAvx2F16c, [&] {
        EstimatePageChannelBlockMultiRef(g, qp.data(), heads, qk, block, rows, wp.data());
      });
      for (int h = 0; h < heads; ++h) {
        for (int r = 0; r < 16; ++r) {
          ASSERT_TRUE(SameBits(base[size_t(h)][size_t(r)], wide[size_t(h)][size_t(r)]))
              << "d " << d << " head " << h << " row " << r << " of " << rows << ": baseline "
              << base[size_t(h)][size_t(r)] << ", wide " << wide[size_t(h)][size_t(r)];
          if (r < rows) {  // and both are the per-row definition
            ASSERT_TRUE(SameBits(wide[size_t(h)][size_t(r)],
                                 EstimatePageChannelScoreRef(g, qp[size_t(h)], qk, block, r)));
            ++compared;
          }
        }
      }
    }
  }
  EXPECT_GT(compared, 1000);
  EXPECT_GT(inexact_sums, 100);  // the double route ran
}

// Random K/V rows of FP16 or BF16 patterns: mostly ordinary values, some huge, subnormal,
// inf and NaN, so that conversions and sums meet every class.
std::vector<fp16_t> RandomRows(std::mt19937_64& rng, const PageGeometry& g, int rows) {
  std::normal_distribution<float> normal;
  std::vector<fp16_t> out(size_t(rows) * size_t(g.head_dim));
  for (fp16_t& x : out) {
    float v = normal(rng);
    const int kind = int(rng() % 200);
    if (kind == 0) v = INFINITY;
    if (kind == 1) v = NAN;
    if (kind == 2) v = 6e4f;
    if (kind == 3) v = 3e-7f;
    x = g.kv_dtype == kKvBf16 ? FloatToBf16(v) : FloatToHalf(v);
  }
  return out;
}

TEST(HostSimd, GroupedAttentionRowsAreTheBaselinesBitForBit) {
  if (!HostSupports(HostSimd::kAvx2F16c)) GTEST_SKIP() << "this CPU has no AVX2 + F16C";
  std::mt19937_64 rng(FreshSeed());
  std::normal_distribution<float> normal;
  // Groups of 1, 3, 4, 5 and 8 query rows: the AVX2 build takes heads four at a time, then
  // one by one; n up to 300 rows: its accumulation runs in tiles of 32.
  for (int32_t d : {8, 38, 64, 128, 130, 256}) {
    for (int32_t trial = 0; trial < 10; ++trial) {
      const int32_t dtype = trial % 2 ? kKvBf16 : kKvFp16;
      PageGeometry g;
      g.head_dim = d;
      g.kv_dtype = dtype;
      static constexpr int32_t kGroups[5] = {1, 3, 4, 5, 8};
      const int32_t n = 1 + int32_t(rng() % 300), group = kGroups[trial / 2];
      const std::vector<fp16_t> k = RandomRows(rng, g, n), v = RandomRows(rng, g, n);
      std::vector<const fp16_t*> k_rows, v_rows;
      for (int32_t i = 0; i < n; ++i) {  // rows in a shuffled order, as a kept list reads them
        const size_t r = size_t(rng() % size_t(n));
        k_rows.push_back(&k[r * size_t(d)]);
        v_rows.push_back(&v[r * size_t(d)]);
      }
      std::vector<float> q(size_t(group) * size_t(d));
      for (float& x : q) x = normal(rng);
      std::vector<float> scores_base(size_t(group) * size_t(n)), scores_wide(scores_base.size());
      ScoreRowsBaseline(g, k_rows.data(), n, q.data(), group, scores_base.data());
      ScoreRowsAvx2(g, k_rows.data(), n, q.data(), group, scores_wide.data());
      for (size_t i = 0; i < scores_base.size(); ++i) {
        ASSERT_TRUE(SameBits(scores_base[i], scores_wide[i]))
            << "d " << d << " dtype " << dtype << " score " << i << ": " << scores_base[i] << " vs "
            << scores_wide[i];
      }
      std::vector<float> weights(size_t(group) * size_t(n));
      for (float& w : weights) w = std::exp(normal(rng));
      // Accumulators at odd offsets, as the partial states' layout puts them.
      std::vector<float> base(size_t(group) * size_t(d + 2)), wide(base.size());
      for (size_t i = 0; i < base.size(); ++i) base[i] = wide[i] = normal(rng);
      std::vector<float*> acc_base, acc_wide;
      for (int32_t j = 0; j < group; ++j) {
        acc_base.push_back(&base[size_t(j) * size_t(d + 2) + 1]);
        acc_wide.push_back(&wide[size_t(j) * size_t(d + 2) + 1]);
      }
      AccumulateRowsBaseline(g, v_rows.data(), n, weights.data(), group, acc_base.data());
      AccumulateRowsAvx2(g, v_rows.data(), n, weights.data(), group, acc_wide.data());
      for (size_t i = 0; i < base.size(); ++i) {
        ASSERT_TRUE(SameBits(base[i], wide[i])) << "d " << d << " dtype " << dtype << " acc " << i
                                                << ": " << base[i] << " vs " << wide[i];
      }
    }
  }
}

// Weights for the top-p window tests, fewer than max_n: exponential, or every third trial
// exact ties on a grid of quarters (zeros included).
std::vector<float> WindowTestWeights(std::mt19937_64& rng, int trial, size_t max_n) {
  std::exponential_distribution<float> e(1.0f);
  std::vector<float> w(size_t(rng() % max_n));
  for (float& x : w) x = trial % 3 == 0 ? float(rng() % 9) * 0.25f : std::exp(-8.0f * e(rng));
  return w;
}

TEST(HostSimd, TopPWindowSplitIsTheBaselinesBitForBit) {
  if (!HostSupports(HostSimd::kAvx2F16c)) GTEST_SKIP() << "this CPU has no AVX2 + F16C";
  std::mt19937_64 rng(FreshSeed());
  std::exponential_distribution<float> e(1.0f);
  for (int trial = 0; trial < 300; ++trial) {
    const std::vector<float> w = WindowTestWeights(rng, trial, 2000);
    const size_t n = w.size();
    const float low = trial % 4 == 0 ? 0.0f : std::exp(-8.0f * e(rng)) * 0.5f;
    const float high = low + (trial % 5 == 0 ? 1.0f : std::exp(-4.0f * e(rng)));
    const float mid = trial % 3 == 0 ? 0.5f : 0.5f * (low + high);  // on the grid: ties at mid
    const WindowSplit a = SplitWindowBaseline(w.data(), n, low, high, mid);
    const WindowSplit b = SplitWindowAvx2(w.data(), n, low, high, mid);
    ASSERT_EQ(std::memcmp(&a.mass_above, &b.mass_above, sizeof(double)), 0)
        << a.mass_above << " vs " << b.mass_above;
    ASSERT_TRUE(SameBits(a.below, b.below));
    ASSERT_TRUE(SameBits(a.above, b.above));
    ASSERT_EQ(a.n_above, b.n_above);
    ASSERT_EQ(a.n_below, b.n_below);
    // And what the split means, counted directly.
    int64_t up = 0, down = 0;
    for (float x : w) {
      if (x > low && x < high) (x > mid ? up : down)++;
    }
    ASSERT_EQ(a.n_above, up);
    ASSERT_EQ(a.n_below, down);
  }
  // The whole search at both levels on the same weights.
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> w(1 + rng() % 5000);
    for (float& x : w) x = trial % 2 ? std::exp(-8.0f * e(rng)) : float(rng() % 7) * 0.125f;
    const float p = std::uniform_real_distribution<float>(0.05f, 0.999f)(rng);
    TopPResult a, b;
    AtLevel(HostSimd::kBaseline, [&] { a = TopPThresholdRef(w, p, trial % 3 ? 1e-4f : 0.0f); });
    AtLevel(HostSimd::kAvx2F16c, [&] { b = TopPThresholdRef(w, p, trial % 3 ? 1e-4f : 0.0f); });
    ASSERT_TRUE(SameBits(a.threshold, b.threshold));
    ASSERT_EQ(a.kept, b.kept);
    ASSERT_TRUE(SameBits(a.mass, b.mass));
    ASSERT_EQ(a.iterations, b.iterations);
  }
}

// The window's build and compaction pack weights to the front in their order: both builds
// must leave the same front (the split's lanes depend on positions), and the counts must say
// what the rule means, counted directly.
TEST(HostSimd, TopPWindowBuildAndCompactionAreTheBaselines) {
  if (!HostSupports(HostSimd::kAvx2F16c)) GTEST_SKIP() << "this CPU has no AVX2 + F16C";
  std::mt19937_64 rng(FreshSeed());
  std::exponential_distribution<float> e(1.0f);
  for (int trial = 0; trial < 300; ++trial) {
    // On the grid, the bounds below (0.25, 1.75, tiny 0.5) are weights too.
    const std::vector<float> w = WindowTestWeights(rng, trial, 3000);
    const size_t n = w.size();
    const float low = trial % 4 == 0 ? 0.0f : (trial % 3 == 0 ? 0.25f : std::exp(-9.0f * e(rng)));
    const float high = trial % 3 == 0 ? 1.75f : low + std::exp(-2.0f * e(rng));
    const float tiny = trial % 5 == 0 ? 0.0f : (trial % 3 == 0 ? 0.5f : std::exp(-12.0f * e(rng)));
    // Room for n only, as the search gives (the sanitizer builds see a write past it).
    std::vector<float> wa(n), wb(n);
    const WindowStart a = BuildWindowBaseline(w.data(), n, low, high, tiny, wa.data());
    const WindowStart b = BuildWindowAvx2(w.data(), n, low, high, tiny, wb.data());
    std::vector<float> want;
    int64_t tiny_count = 0, at_high = 0;
    float tiny_max = -1.0f;
    for (float x : w) {
      const bool is_tiny = x > 0.0f && x < tiny;
      if (x > low && x < high && !is_tiny) want.push_back(x);
      if (is_tiny) ++tiny_count, tiny_max = std::max(tiny_max, x);
      if (x >= high) ++at_high;
    }
    for (const WindowStart& s : {a, b}) {
      ASSERT_EQ(s.live, want.size()) << "trial " << trial;
      ASSERT_EQ(s.tiny_count, tiny_count);
      ASSERT_TRUE(SameBits(s.tiny_max, tiny_max));
      ASSERT_EQ(s.at_high, at_high);
    }
    ASSERT_TRUE(std::equal(want.begin(), want.end(), wa.begin())) << "trial " << trial;
    ASSERT_TRUE(std::equal(want.begin(), want.end(), wb.begin())) << "trial " << trial;

    // Compact the window in place to a narrower (low, high), as the search does.
    const float low2 = low + 0.25f * (high - low), high2 = high - 0.25f * (high - low);
    std::vector<float> ca(wa.begin(), wa.begin() + ptrdiff_t(a.live)), cb = ca;
    const size_t ka = CompactWindowBaseline(ca.data(), ca.size(), low2, high2);
    const size_t kb = CompactWindowAvx2(cb.data(), cb.size(), low2, high2);
    std::vector<float> want2;
    for (float x : want) {
      if (x > low2 && x < high2) want2.push_back(x);
    }
    ASSERT_EQ(ka, want2.size());
    ASSERT_EQ(kb, want2.size());
    ASSERT_TRUE(std::equal(want2.begin(), want2.end(), ca.begin()));
    ASSERT_TRUE(std::equal(want2.begin(), want2.end(), cb.begin()));
  }
}

}  // namespace
}  // namespace twl

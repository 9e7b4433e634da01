// Quantized K copy: round-trip error bound, packing order, odd sizes, Quest bounds on append.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>

#include "core/host_simd.h"
#include "core/quantize.h"
#include "gtest/gtest.h"
#include "pipeline/prune/twilight/cpu/estimate_cpu.h"
#include "pipeline/prune/twilight/cpu/twilight_prune_cpu.h"
#include "runtime/cpu/append_cpu.h"
#include "support/nearest_half.h"
#include "support/ref_store.h"

namespace twl {
namespace {

std::vector<fp16_t> RandomRow(int32_t d, std::mt19937_64& rng, float spread) {
  std::normal_distribution<float> n(0.5f, spread);
  std::vector<fp16_t> k(static_cast<size_t>(d));
  for (auto& x : k) x = FloatToHalf(n(rng));
  return k;
}

class QuantizeBits : public ::testing::TestWithParam<int32_t> {};

TEST_P(QuantizeBits, RoundTripWithinHalfStep) {
  std::mt19937_64 rng(::testing::UnitTest::GetInstance()->random_seed() + GetParam());
  for (int32_t d : {8, 64, 128, 136}) {
    PageGeometry g{16, d, 1, GetParam()};
    for (int trial = 0; trial < 200; ++trial) {
      const auto k = RandomRow(d, rng, trial % 2 ? 3.0f : 0.05f);
      std::vector<uint8_t> codes(static_cast<size_t>(g.CodeBytesPerToken()));
      fp16_t scale, zero;
      QuantizeRowRef(g, k.data(), codes.data(), &scale, &zero);
      const float s = HalfToFloat(scale);
      ASSERT_GT(s, 0.0f);
      for (int32_t j = 0; j < d; ++j) {
        const float x = HalfToFloat(k[size_t(j)]);
        const float deq = DequantizeRef(g, codes.data(), scale, zero, j);
        // Tolerance: half a quantization step, plus the FP16 rounding of zero (half an ulp of
        // min) and of scale (at most 2^-11 relative, times the largest code).
        const float tol = 0.5f * s + std::abs(HalfToFloat(zero)) * 0x1p-11f +
                          s * float(g.MaxCode()) * 0x1p-11f + 1e-7f;
        ASSERT_LE(std::abs(x - deq), tol) << "bits " << g.k_bits << " d " << d << " j " << j;
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Bits, QuantizeBits, ::testing::Values(2, 4, 8));

TEST(Quantize, PackingOrderLowNibbleFirst) {
  // A row whose values are exactly min + c * step for known codes c.
  PageGeometry g{16, 8, 1, 4};
  const int32_t want[8] = {0, 15, 3, 12, 7, 8, 1, 14};
  std::vector<fp16_t> k(8);
  for (int j = 0; j < 8; ++j) k[size_t(j)] = FloatToHalf(-2.0f + 0.25f * float(want[j]));
  std::vector<uint8_t> codes(4);
  fp16_t scale, zero;
  QuantizeRowRef(g, k.data(), codes.data(), &scale, &zero);
  EXPECT_EQ(HalfToFloat(scale), 0.25f);
  EXPECT_EQ(HalfToFloat(zero), -2.0f);
  EXPECT_EQ(codes[0], 0xF0);  // element 0 in the low nibble, element 1 in the high nibble
  EXPECT_EQ(codes[1], 0xC3);
  EXPECT_EQ(codes[2], 0x87);
  EXPECT_EQ(codes[3], 0xE1);
  for (int j = 0; j < 8; ++j) EXPECT_EQ(int(UnpackCode(codes.data(), j, 4)), want[j]);
  EXPECT_EQ(UnpackCode(codes.data(), 1, 2), 0u);  // bits 2..3 of 0xF0
  EXPECT_EQ(UnpackCode(codes.data(), 2, 2), 3u);  // bits 4..5
}

TEST(Quantize, ConstantRowHasZeroScaleAndExactValue) {
  PageGeometry g{16, 64, 1, 4};
  std::vector<fp16_t> k(64, FloatToHalf(1.375f));
  std::vector<uint8_t> codes(32, 0xAB);
  fp16_t scale, zero;
  QuantizeRowRef(g, k.data(), codes.data(), &scale, &zero);
  EXPECT_EQ(HalfToFloat(scale), 0.0f);
  for (int j = 0; j < 64; ++j) EXPECT_EQ(DequantizeRef(g, codes.data(), scale, zero, j), 1.375f);
}

TEST(Append, StoresRowsAndExactPageBoundsAcrossOddLengths) {
  for (int32_t page_size : {1, 3, 7, 16, 17}) {
    PageGeometry g{page_size, 64, 2, 4};
    auto st = testing::MakeRandomStore(g, 4, {1, page_size, page_size + 1, 3 * page_size + 2},
                                       ::testing::UnitTest::GetInstance()->random_seed() + page_size);
    for (size_t s = 0; s < st.seq_len.size(); ++s) {
      const int32_t len = st.seq_len[s];
      ASSERT_EQ(int64_t(st.k_in[s].size()), int64_t(len) * g.num_kv_heads * g.head_dim);
      for (int32_t p = 0; p < (len + page_size - 1) / page_size; ++p) {
        const int32_t page = st.page_table[size_t(int64_t(s) * st.max_pages + p)];
        const int32_t rows = std::min(page_size, len - p * page_size);
        for (int32_t h = 0; h < g.num_kv_heads; ++h) {
          const int64_t block = g.BlockId(page, h);
          for (int32_t c = 0; c < g.head_dim; ++c) {
            float lo = 1e30f, hi = -1e30f;
            for (int32_t r = 0; r < rows; ++r) {
              const int64_t src = (int64_t(p * page_size + r) * g.num_kv_heads + h) * g.head_dim + c;
              const float x = HalfToFloat(st.k_in[s][size_t(src)]);
              ASSERT_EQ(st.kv[size_t(block * g.FpBlockElems() + r * g.head_dim + c)],
                        st.k_in[s][size_t(src)]);
              ASSERT_EQ(st.kv[size_t(block * g.FpBlockElems() + (page_size + r) * g.head_dim + c)],
                        st.v_in[s][size_t(src)]);
              lo = std::min(lo, x);
              hi = std::max(hi, x);
            }
            ASSERT_EQ(HalfToFloat(st.kmin[size_t(block * g.head_dim + c)]), lo);
            ASSERT_EQ(HalfToFloat(st.kmax[size_t(block * g.head_dim + c)]), hi);
          }
        }
      }
    }
  }
}

// A zero's sign never reaches the bounds or a per-token zero: of equal zeros the GPU's fminf
// and std::min keep different ones, and the GPU's append must match these bits (BoundInput).
TEST(Append, SignedZerosGiveBoundsAndZerosOfPositiveZero) {
  for (const int32_t scheme : {kKSchemeToken, kKSchemePageChannel}) {
    PageGeometry g{16, 64, 1, 4};
    g.k_scheme = scheme;
    // A row of -0 first, then rows of +0 and positive values: every channel's minimum is a
    // zero, the first one seen -0. Channels 60-63 hold zeros only (-0 in even rows): their
    // maximum is a zero too.
    const int32_t rows = 5;
    std::vector<fp16_t> k(size_t(rows * g.head_dim)), v(k.size(), FloatToHalf(1.0f));
    for (int32_t r = 0; r < rows; ++r) {
      for (int32_t c = 0; c < g.head_dim; ++c) {
        const float x = r % 2 == 0 ? (r == 0 || c >= 60 ? -0.0f : 0.25f * float(c % 7 + 1)) : 0.0f;
        k[size_t(r * g.head_dim + c)] = FloatToHalf(x);
      }
    }
    std::vector<fp16_t> kv(size_t(g.FpBlockElems())), kmin(64), kmax(64), scale(16), zero(16);
    std::vector<uint8_t> codes(size_t(g.page_size * g.CodeBytesPerToken()));
    std::vector<uint8_t> range(size_t(ChannelRangeBytes(g.head_dim)));
    QuantKView qk{codes.data(), scale.data(), zero.data(), kmin.data(), kmax.data()};
    if (scheme == kKSchemePageChannel) qk.range = range.data();
    std::vector<int32_t> page_id(size_t(rows), 0);
    std::vector<int32_t> slot(static_cast<size_t>(rows));
    for (int32_t r = 0; r < rows; ++r) slot[size_t(r)] = r;
    const AppendView in{rows, k.data(), v.data(), page_id.data(), slot.data()};
    ASSERT_TRUE(AppendRef(g, in, FpKvView{kv.data()}, qk).ok());
    for (int32_t c = 0; c < g.head_dim; ++c) {
      EXPECT_EQ(kmin[size_t(c)], FloatToHalf(0.0f)) << "channel " << c;
      if (c >= 60) {
        EXPECT_EQ(kmax[size_t(c)], FloatToHalf(0.0f)) << "channel " << c;
      }
    }
    if (scheme == kKSchemeToken) {
      for (int32_t r = 0; r < rows; ++r) EXPECT_EQ(zero[size_t(r)], FloatToHalf(0.0f)) << r;
    } else {
      EXPECT_EQ(ChannelRangeA(range.data(), g.head_dim), FloatToHalf(0.0f));
    }
  }
}

TEST(Append, RejectsBadInputWithoutWriting) {
  PageGeometry g{16, 64, 2, 4};
  auto st = testing::MakeRandomStore(g, 2, {20}, 7);
  const auto before = st.kv;
  std::vector<fp16_t> k(static_cast<size_t>(g.num_kv_heads * g.head_dim), FloatToHalf(1.0f));
  int32_t page = 0, bad_slot = 16;
  AppendView in{1, k.data(), k.data(), &page, &bad_slot};
  EXPECT_EQ(AppendRef(g, in, st.Kv(), st.Quant()).code(), absl::StatusCode::kInvalidArgument);
  AppendView null_k{1, nullptr, k.data(), &page, &bad_slot};
  EXPECT_EQ(AppendRef(g, null_k, st.Kv(), st.Quant()).code(), absl::StatusCode::kInvalidArgument);
  PageGeometry bad = g;
  bad.k_bits = 3;
  int32_t slot = 0;
  AppendView ok_in{1, k.data(), k.data(), &page, &slot};
  EXPECT_EQ(AppendRef(bad, ok_in, st.Kv(), st.Quant()).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.kv, before);
}

// The per-page-channel scheme (k_scheme 1): each element of a block's rows is within half of
// its channel's step of K, the step being the block's own Quest range / (2^bits - 1); rows
// appended one at a time (each append widening the range and re-quantizing the block) give
// the codes of one bulk append; no per-token scale/zero is needed; the score estimate is q
// against the dequantized row up to the estimator's FP16 dequantization (estimate_cpu.h: its
// step16 within 2^-9 of the step, k~ rounded to 2^-11 of itself), plus the float sums' own
// 1e-4 relative.
TEST(Quantize, PageChannelSchemeIsPerChannelOverTheBlockRange) {
  for (int32_t bits : {2, 4, 8}) {
    PageGeometry g{16, 64, 2, bits};
    g.k_scheme = kKSchemePageChannel;
    const std::vector<int32_t> lens = {5, 77};
    testing::RefStore bulk = testing::MakeRandomStore(g, 4, lens, 31);
    // The same K/V appended one token at a time into an empty copy of the store.
    testing::RefStore steps = bulk;
    std::fill(steps.codes.begin(), steps.codes.end(), uint8_t(0));
    const int64_t row = int64_t(g.num_kv_heads) * g.head_dim;
    for (size_t s = 0; s < lens.size(); ++s) {
      for (int32_t t = 0; t < lens[s]; ++t) {
        const int32_t page = steps.page_table[s * size_t(steps.max_pages) + size_t(t / g.page_size)];
        const int32_t slot = t % g.page_size;
        AppendView in{1, steps.k_in[s].data() + t * row, steps.v_in[s].data() + t * row, &page,
                      &slot};
        QuantKView qk = steps.Quant();
        qk.scale = qk.zero = nullptr;  // not used by this scheme
        ASSERT_TRUE(AppendRef(g, in, steps.Kv(), qk).ok());
      }
    }
    EXPECT_EQ(steps.codes, bulk.codes) << "bits " << bits;
    EXPECT_EQ(steps.kmin, bulk.kmin);
    EXPECT_EQ(steps.range, bulk.range);  // ranges depend on the bounds, not the appends
    const QuantKView qk = bulk.Quant();
    std::mt19937_64 rng(bits);
    std::normal_distribution<float> n(0.0f, 1.0f);
    for (size_t s = 0; s < lens.size(); ++s) {
      for (int32_t t = 0; t < lens[s]; ++t) {
        const int32_t page = bulk.page_table[s * size_t(bulk.max_pages) + size_t(t / g.page_size)];
        for (int32_t h = 0; h < g.num_kv_heads; ++h) {
          const int64_t block = g.BlockId(page, h);
          std::vector<float> q(static_cast<size_t>(g.head_dim));
          std::vector<float> lo(size_t(g.head_dim)), hi(size_t(g.head_dim));
          PageChannelRangeValues(g, qk, block, lo.data(), hi.data());
          double dot = 0, rounding = 0;
          for (int32_t j = 0; j < g.head_dim; ++j) {
            const float x = HalfToFloat(bulk.k_in[s][size_t(t * row + h * g.head_dim + j)]);
            // The channel's range contains its Quest bounds.
            ASSERT_LE(lo[size_t(j)], HalfToFloat(qk.kmin[block * g.head_dim + j]));
            ASSERT_GE(hi[size_t(j)], HalfToFloat(qk.kmax[block * g.head_dim + j]));
            const float step = PageChannelStep(g, lo[size_t(j)], hi[size_t(j)]);
            const float deq = DequantizeAtRef(g, qk, block, t % g.page_size, j);
            ASSERT_LE(std::abs(x - deq), 0.5f * step * (1.0f + 1e-5f) + 1e-6f)
                << "bits " << bits << " token " << t << " channel " << j;
            q[size_t(j)] = n(rng);
            dot += double(q[size_t(j)]) * deq;
            // The estimator's FP16 k~ against deq: its step16 (three FP16 roundings and
            // FP16(1 / max_code): within 2^-9 of the step) times the code, and k~'s own
            // rounding (2^-11 of it, 2^-25 absolute below FP16's normal range).
            const double code = UnpackCode(qk.Codes(g, block, t % g.page_size), j, g.k_bits);
            rounding += std::abs(double(q[size_t(j)])) *
                        (std::ldexp(double(step) * code, -9) +
                         std::ldexp(std::abs(double(deq)), -11) + std::ldexp(1.0, -24));
          }
          const float est = EstimateScoreRef(g, q.data(), qk, bulk.Kv(), block, t % g.page_size);
          ASSERT_NEAR(est, dot, rounding + 1e-4 * (1.0 + std::abs(dot)));
          ASSERT_EQ(est, EstimatePageChannelScoreRef(g, q.data(), qk, block, t % g.page_size));
        }
      }
    }
    // A whole block at once (the host pruner's path) equals the per-row estimate bit for bit,
    // full and partial last pages.
    for (size_t s = 0; s < lens.size(); ++s) {
      for (int32_t t0 = 0; t0 < lens[s]; t0 += g.page_size) {
        const int32_t page = bulk.page_table[s * size_t(bulk.max_pages) + size_t(t0 / g.page_size)];
        const int32_t rows = std::min(g.page_size, lens[s] - t0);
        for (int32_t h = 0; h < g.num_kv_heads; ++h) {
          const int64_t block = g.BlockId(page, h);
          std::vector<float> q(static_cast<size_t>(g.head_dim));
          for (float& x : q) x = n(rng);
          std::vector<float> got(static_cast<size_t>(rows));
          EstimateBlockScoresRef(g, q.data(), qk, bulk.Kv(), block, rows, got.data());
          for (int32_t r = 0; r < rows; ++r) {
            ASSERT_EQ(got[size_t(r)], EstimateScoreRef(g, q.data(), qk, bulk.Kv(), block, r))
                << "bits " << bits << " token " << t0 + r;
          }
          // A group of three query rows at once (the pruner's path): each as alone.
          std::vector<float> q2(q.size()), q3(q.size());
          for (size_t j = 0; j < q.size(); ++j) q2[j] = n(rng), q3[j] = -q[j];
          const float* qs[3] = {q.data(), q2.data(), q3.data()};
          const size_t nr = static_cast<size_t>(rows);
          std::vector<float> o1(nr), o2(nr), o3(nr);
          float* outs[3] = {o1.data(), o2.data(), o3.data()};
          EstimateBlockScoresMultiRef(g, qs, 3, qk, bulk.Kv(), block, rows, outs);
          for (int32_t i = 0; i < 3; ++i) {
            std::vector<float> alone(static_cast<size_t>(rows));
            EstimateBlockScoresRef(g, qs[i], qk, bulk.Kv(), block, rows, alone.data());
            for (int32_t r = 0; r < rows; ++r) ASSERT_EQ(outs[i][r], alone[size_t(r)]) << i << " " << r;
          }
        }
      }
    }
  }
}

using testing::IsNearestHalf;

uint64_t FreshSeed() { return ::testing::UnitTest::GetInstance()->random_seed(); }

// The per-page-channel estimate's definition (estimate_cpu.h), term for term and in channel
// order: sum_j q_j float(k~_j), k~_j = FP16(code_j * step16_j + kmin_j) rounded once, step16_j
// = FP16(FP16(kmax_j - kmin_j) * FP16(1 / 15)). Each FP16 operation is checked to be the
// correctly rounded one (nearest, ties to even) from its exact value in long double, an
// independent route from DoubleToHalf. Bit-exact.
TEST(Quantize, PageChannelEstimateDequantizesToFp16) {
  for (int32_t d : {64, 128}) {
    PageGeometry g{16, d, 1, 4};
    g.k_scheme = kKSchemePageChannel;
    testing::RefStore st = testing::MakeRandomStore(g, 1, {45}, FreshSeed() + uint64_t(d));
    const QuantKView qk = st.Quant();
    std::mt19937_64 rng{FreshSeed() * 31 + uint64_t(d)};
    std::normal_distribution<float> n(0.0f, 0.3f);
    const fp16_t inv = PageChannelInverseMaxCodeHalf(g);
    ASSERT_TRUE(IsNearestHalf(1.0L / 15.0L, inv));
    int32_t rounded = 0;
    for (int32_t t = 0; t < 45; ++t) {
      const int64_t block = g.BlockId(st.page_table[size_t(t / g.page_size)], 0);
      std::vector<float> q(static_cast<size_t>(d));
      for (float& x : q) x = n(rng);
      std::vector<float> lo(static_cast<size_t>(d)), hi(static_cast<size_t>(d));
      PageChannelRangeValues(g, qk, block, lo.data(), hi.data());
      float dot = 0.0f;
      for (int32_t j = 0; j < d; ++j) {
        const fp16_t mn = FloatToHalf(lo[size_t(j)]), mx = FloatToHalf(hi[size_t(j)]);
        // Each FP16 operation against the nearest FP16 value of its exact result.
        const long double range = (long double)HalfToFloat(mx) - HalfToFloat(mn);
        const fp16_t range16 = DoubleToHalf(double(range));
        ASSERT_TRUE(IsNearestHalf(range, range16)) << j;
        const long double step_exact = (long double)HalfToFloat(range16) * HalfToFloat(inv);
        const float step = PageChannelStepValue(g, mn, mx);
        ASSERT_TRUE(IsNearestHalf(step_exact, FloatToHalf(step))) << j;
        const int32_t code = UnpackCode(qk.Codes(g, block, t % 16), j, g.k_bits);
        const long double k_exact = (long double)code * step + HalfToFloat(mn);
        const float k = PageChannelDequantValue(code, step, HalfToFloat(mn));
        ASSERT_TRUE(IsNearestHalf(k_exact, FloatToHalf(k)))
            << "d " << d << " token " << t << " channel " << j;
        rounded += (long double)k != k_exact;
        dot += q[size_t(j)] * k;
      }
      ASSERT_EQ(EstimatePageChannelScoreRef(g, q.data(), qk, block, t % 16), dot)
          << "d " << d << " token " << t;
    }
    // The FP16 rounding of k~ is not vacuous: about a third of the values round (0.21-0.42
    // over gtest seeds 1-400; a quarter failed ~1% of seeds), an eighth keeps it off the seed.
    EXPECT_GT(rounded, 45 * d / 8);
  }
}

// HalfRoundValue (and DoubleToHalf, its bits) rounds like FloatToHalf wherever both apply
// (every double that is a float), and to the nearest FP16 value of any double and of the
// dequantization's exact code * step + kmin (long double, an independent route).
TEST(Quantize, HalfRoundValueRoundsOnceToNearest) {
  int64_t checked = 0;
  for (uint64_t u = 0; u < 0x100000000ull; u += 4099) {
    const float f = BitsToFloat(uint32_t(u));
    if (std::isnan(f)) continue;
    ASSERT_EQ(DoubleToHalf(double(f)), FloatToHalf(f)) << f;
    const float v = HalfRoundValue(double(f)), w = HalfToFloat(FloatToHalf(f));
    ASSERT_EQ(FloatToBits(v), FloatToBits(w)) << f;  // the same value, signed zeros included
    ++checked;
  }
  EXPECT_GT(checked, int64_t(1000000));
  std::mt19937_64 rng(FreshSeed());
  for (int i = 0; i < 200000; ++i) {
    const int32_t code = int32_t(rng() % 16);
    const float step = HalfToFloat(fp16_t(rng() & 0x7bffu)), lo = HalfToFloat(fp16_t(rng() & 0xfbffu));
    const long double exact = (long double)code * step + lo;
    const float k = PageChannelDequantValue(code, step, lo);
    if (std::fabs(exact) >= 65520.0L) {
      ASSERT_TRUE(std::isinf(k)) << code << " " << step << " " << lo;
      continue;
    }
    ASSERT_TRUE(IsNearestHalf(exact, FloatToHalf(k))) << code << " " << step << " " << lo;
  }
  for (int i = 0; i < 1000000; ++i) {  // any finite double
    const uint64_t u = rng();
    double d;
    std::memcpy(&d, &u, sizeof(d));
    if (!std::isfinite(d)) continue;
    const float v = HalfRoundValue(d);
    if (std::fabs(d) >= 65520.0) {
      ASSERT_TRUE(std::isinf(v)) << d;
      continue;
    }
    ASSERT_TRUE(IsNearestHalf((long double)d, FloatToHalf(v))) << d;
  }
  EXPECT_TRUE(std::isnan(HalfToFloat(DoubleToHalf(std::nan("")))));
  EXPECT_EQ(DoubleToHalf(1e300), 0x7c00u);
  EXPECT_EQ(DoubleToHalf(-1e-300), 0x8000u);
}

// HalfRoundFloat is FloatToHalf as a value (signed zeros included), across every exponent and
// densely where FP16's normal, subnormal and overflow boundaries fall.
TEST(Quantize, HalfRoundFloatIsFloatToHalfAsAValue) {
  auto check = [](uint32_t u) {
    const float f = BitsToFloat(u);
    const float v = HalfRoundFloat(f);
    if (std::isnan(f)) return std::isnan(v);
    return FloatToBits(v) == FloatToBits(HalfToFloat(FloatToHalf(f)));
  };
  for (uint64_t u = 0; u < 0x100000000ull; u += 4099) ASSERT_TRUE(check(uint32_t(u))) << u;
  for (uint32_t sign : {0u, 0x80000000u}) {
    // 2^-26 .. 2^17: FP16's subnormals, normals and the rounding to inf past 65520.
    for (uint32_t u = 0x32800000u; u < 0x48000000u; u += 61) ASSERT_TRUE(check(sign | u)) << u;
  }
  EXPECT_TRUE(std::isinf(HalfRoundFloat(65520.0f)));
  EXPECT_EQ(HalfRoundFloat(65519.996f), 65504.0f);
  EXPECT_EQ(FloatToBits(HalfRoundFloat(-1e-9f)), 0x80000000u);
}

// The table of a channel's k~ matches PageChannelDequantValue bit for bit, on channels whose
// code * step16 + kmin are exact in float and on channels where they are not (kmin larger
// than the step by ~2^12-2^16: there the float route would round twice and differ).
TEST(Quantize, PageChannelDequantTableMatchesValueByValue) {
  std::mt19937_64 rng(FreshSeed());
  auto half_with_exponent = [&](int32_t e) {  // a random FP16 value of magnitude 2^e
    const uint32_t field = uint32_t(std::clamp(e + 15, 0, 30));
    return HalfToFloat(fp16_t((rng() & 0x8000u) | (field << 10) | (rng() & 0x3ffu)));
  };
  for (int32_t max_code : {3, 15, 255}) {
    const PageGeometry g{16, 8, 1, max_code == 3 ? 2 : max_code == 15 ? 4 : 8};
    const float inverse = HalfToFloat(PageChannelInverseMaxCodeHalf(g));
    const int32_t channels = 4096, codes = max_code + 1;
    std::vector<float> lo(channels), step(channels), table(size_t(channels) * size_t(codes));
    for (int32_t j = 0; j < channels; ++j) {
      float a, b;
      if (j % 4 == 0) {  // any two FP16 values, infinities included
        a = HalfToFloat(fp16_t(rng())), b = HalfToFloat(fp16_t(rng()));
        if (std::isnan(a)) a = INFINITY;
        if (std::isnan(b)) b = -INFINITY;
      } else {  // a narrow range far from zero: near the float route's limit
        const int32_t e = int32_t(rng() % 30) - 14;
        a = half_with_exponent(e);
        b = HalfToFloat(DoubleToHalf(double(a) + std::ldexp(double(rng() % 64 + 1), e - 10 - int32_t(rng() % 6))));
      }
      lo[size_t(j)] = std::min(a, b);
      step[size_t(j)] = PageChannelStepValue(lo[size_t(j)], std::max(a, b), inverse);
      if (max_code == 255 && j % 8 == 1) {
        // Built to round twice in float: with u = 2^-20 (scaled by 2^s), step16 = 1517 u
        // and kmin = L 2^14 u (L odd), 27 step16 + kmin = (16384 (L + 2) + 8191) u is u
        // below an FP16 tie; float (quantum 2u there) rounds it onto the tie, which then
        // goes to the even (L + 3) 2^14 u instead of down. |kmin| + 255 step16 lies in
        // [2^24 u, 2^25 u): just past what float holds.
        const int s = int(rng() % 9) - 4;
        step[size_t(j)] = std::ldexp(1517.0f, -20 + s);
        lo[size_t(j)] = std::ldexp(float(1025 + 2 * int(rng() % 480)), -6 + s);
      }
    }
    PageChannelDequantTable(lo.data(), step.data(), channels, max_code, table.data());
    int32_t inexact_channels = 0, double_rounded = 0;
    for (int32_t j = 0; j < channels; ++j) {
      bool inexact = false;
      for (int32_t c = 0; c < codes; ++c) {
        const float want = PageChannelDequantValue(c, step[size_t(j)], lo[size_t(j)]);
        const float got = table[size_t(j) * size_t(codes) + size_t(c)];
        ASSERT_EQ(FloatToBits(got), FloatToBits(want))
            << "code " << c << " step " << step[size_t(j)] << " kmin " << lo[size_t(j)];
        const float in_float = float(c) * step[size_t(j)] + lo[size_t(j)];
        if (std::isfinite(in_float) &&
            (long double)in_float != (long double)c * step[size_t(j)] + lo[size_t(j)]) {
          inexact = true;
          double_rounded += FloatToBits(HalfRoundFloat(in_float)) != FloatToBits(want);
        }
      }
      inexact_channels += inexact;
    }
    // Both routes ran; with 8-bit codes the built channels show the double one matters (with
    // 2- and 4-bit codes a double rounding that changes k~ needs a product of at most 4 bits
    // to land u off a tie: rare, so not required of a random sample).
    EXPECT_GT(inexact_channels, channels / 50) << max_code;
    EXPECT_LT(inexact_channels, channels / 2) << max_code;
    if (max_code == 255) {
      EXPECT_GE(double_rounded, channels / 8) << "the built channels";
    }
  }
}

// QuantizeBlockRowsRef against the per-element rule it implements (code = clamp(rint((k -
// lo) / step)) over the block's channel ranges, 0 where step is not > 0 or k is not finite),
// on FP16 and BF16 K, 2/4/8-bit codes, with a constant channel and a NaN in the block; and a
// block holding an infinity codes every range as NaN (its codes are 0).
TEST(Quantize, BlockRequantizationFollowsThePerElementRule) {
  std::mt19937_64 rng(FreshSeed());
  for (int32_t bits : {2, 4, 8}) {
    for (int32_t dtype : {kKvFp16, kKvBf16}) {
      PageGeometry g{16, 64, 2, bits};
      g.k_scheme = kKSchemePageChannel;
      g.kv_dtype = dtype;
      testing::RefStore st = testing::MakeRandomStore(g, 2, {16}, rng());
      const int64_t block = g.BlockId(st.page_table[0], 1);
      const FpKvView kv = st.Kv();
      std::normal_distribution<float> n(0.0f, 2.0f);
      for (int32_t r = 0; r < 16; ++r) {
        uint16_t* k = kv.K(g, block, r);
        for (int32_t j = 0; j < 64; ++j) k[j] = g.FloatToKv(j == 3 ? 1.25f : n(rng));
      }
      const bool with_inf = rng() % 3 == 0;
      if (with_inf) kv.K(g, block, 5)[7] = g.FloatToKv(INFINITY);
      kv.K(g, block, 9)[11] = g.FloatToKv(NAN);
      fp16_t* mn = st.kmin.data() + block * 64;
      fp16_t* mx = st.kmax.data() + block * 64;
      for (int32_t j = 0; j < 64; ++j) {
        float lo = INFINITY, hi = -INFINITY;
        for (int32_t r = 0; r < 16; ++r) {
          const float x = g.KvToFloat(kv.K(g, block, r)[j]);
          lo = std::min(lo, x);
          hi = std::max(hi, x);
        }
        mn[j] = FloatToHalf(lo);
        mx[j] = FloatToHalf(hi);
      }
      const QuantKView qk = st.Quant();
      // Both host builds (core/host_simd.h; the wide one where the CPU has it).
      for (HostSimd level : {HostSimd::kBaseline, HostSimd::kAvx2F16c}) {
        const HostSimd before = SetHostSimdForTesting(level);
        QuantizeBlockRowsRef(g, kv, qk, block, 16);
        SetHostSimdForTesting(before);
        std::vector<float> lo(64), hi(64);
        PageChannelRangeValues(g, qk, block, lo.data(), hi.data());
        for (int32_t j = 0; j < 64; ++j) {
          if (with_inf) {
            ASSERT_TRUE(std::isnan(lo[size_t(j)]) && std::isnan(hi[size_t(j)])) << j;
          } else {
            ASSERT_LE(lo[size_t(j)], HalfToFloat(mn[j])) << j;
            ASSERT_GE(hi[size_t(j)], HalfToFloat(mx[j])) << j;
          }
        }
        int32_t nonzero = 0;
        for (int32_t r = 0; r < 16; ++r) {
          for (int32_t j = 0; j < 64; ++j) {
            const float step = (hi[size_t(j)] - lo[size_t(j)]) / float(g.MaxCode());
            int32_t want = 0;
            if (step > 0.0f) {
              const float q = std::rint((g.KvToFloat(kv.K(g, block, r)[j]) - lo[size_t(j)]) / step);
              want = q >= float(g.MaxCode()) ? g.MaxCode() : (q > 0.0f ? int32_t(q) : 0);
            }
            const int32_t got = int32_t(UnpackCode(qk.Codes(g, block, r), j, bits));
            ASSERT_EQ(got, want) << "bits " << bits << " dtype " << dtype << " row " << r
                                 << " channel " << j;
            nonzero += got != 0;
          }
        }
        if (with_inf) {
          EXPECT_EQ(nonzero, 0) << bits;
        } else {
          EXPECT_GT(nonzero, 16 * 64 / 2) << bits;
        }
        std::fill(st.codes.begin(), st.codes.end(), uint8_t(0xa5));  // the next build writes anew
      }
    }
  }
}

// An outlier channel (K's +-6 channels) widens the per-token step of every channel, but only
// its own per-page-channel step: on the other channels the page-channel error is far smaller.
TEST(Quantize, OutlierChannelCoarsensPerTokenButNotPerChannel) {
  PageGeometry g{16, 64, 1, 4};
  g.k_scheme = kKSchemePageChannel;
  testing::RefStore st = testing::MakeRandomStore(g, 1, {16}, 5);
  std::mt19937_64 rng(3);
  std::normal_distribution<float> n(0.0f, 0.3f);
  std::vector<fp16_t> k(16 * 64), v(16 * 64, FloatToHalf(0.0f));
  for (int32_t t = 0; t < 16; ++t)
    for (int32_t j = 0; j < 64; ++j) k[size_t(t * 64 + j)] = FloatToHalf(j == 5 ? 6.0f : n(rng));
  std::vector<int32_t> page(16, st.page_table[0]), slot(16);
  for (int32_t t = 0; t < 16; ++t) slot[size_t(t)] = t;
  AppendView in{16, k.data(), v.data(), page.data(), slot.data()};
  ASSERT_TRUE(AppendRef(g, in, st.Kv(), st.Quant()).ok());
  double err_pc = 0, err_tok = 0;
  for (int32_t t = 0; t < 16; ++t) {
    std::vector<uint8_t> codes(static_cast<size_t>(g.CodeBytesPerToken()));
    fp16_t scale, zero;
    PageGeometry tok = g;
    tok.k_scheme = kKSchemeToken;
    QuantizeRowRef(tok, &k[size_t(t * 64)], codes.data(), &scale, &zero);
    for (int32_t j = 0; j < 64; ++j) {
      if (j == 5) continue;
      const float x = HalfToFloat(k[size_t(t * 64 + j)]);
      err_pc += std::abs(x - DequantizeAtRef(g, st.Quant(), g.BlockId(st.page_table[0], 0), t, j));
      err_tok += std::abs(x - DequantizeRef(tok, codes.data(), scale, zero, j));
    }
  }
  EXPECT_LT(err_pc * 4, err_tok) << "per channel " << err_pc << ", per token " << err_tok;
}

TEST(Quantize, UnknownSchemeIsRejected) {
  PageGeometry g{16, 64, 2, 4};
  auto st = testing::MakeRandomStore(g, 2, {20}, 7);
  std::vector<fp16_t> k(static_cast<size_t>(g.num_kv_heads * g.head_dim), FloatToHalf(1.0f));
  int32_t page = st.page_table[0], slot = 3;
  AppendView in{1, k.data(), k.data(), &page, &slot};
  g.k_scheme = 2;
  EXPECT_EQ(AppendRef(g, in, st.Kv(), st.Quant()).code(), absl::StatusCode::kInvalidArgument);
  g.k_scheme = kKSchemeToken;  // the per-token scheme needs its scale/zero
  QuantKView no_scale = st.Quant();
  no_scale.scale = nullptr;
  EXPECT_EQ(AppendRef(g, in, st.Kv(), no_scale).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace twl

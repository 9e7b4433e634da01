// bench/lib/channel_ranges: the cheaper codings of INT4 per page channel's ranges round outward
// (every row of the block lies in its channel's code range, so the dequantized error is at most
// step / 2), and they do so without widening the ranges beyond their resolution (an encoder that
// always picked the widest code would contain everything and fail the resolution checks).
#include "lib/channel_ranges.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <random>
#include <vector>

#include "core/half.h"
#include "gtest/gtest.h"

namespace twl::bench {
namespace {

constexpr int32_t kD = 128;
constexpr int32_t kRows = 16;

const RangeCoding kCodings[] = {RangeCoding::kPc8, RangeCoding::kPc8Log, RangeCoding::kPc8Pow2,
                                RangeCoding::kPc8W, RangeCoding::kFp8};

float Fp16(float x) { return HalfToFloat(FloatToHalf(x)); }

// A block of FP16 rows [kRows][kD] like the study's synthetic K: per-channel offsets with a few
// +-scale outlier channels, a channel that is constant, and noise.
std::vector<float> RandomBlock(std::mt19937_64* rng, float scale, float noise) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<float> mu(kD);
  for (int32_t j = 0; j < kD; ++j) mu[size_t(j)] = n(*rng);
  mu[3] = scale, mu[17] = -scale, mu[40] = 0.5f * scale;
  std::vector<float> k(size_t(kRows) * kD);
  for (int32_t r = 0; r < kRows; ++r)
    for (int32_t j = 0; j < kD; ++j)
      k[size_t(r) * kD + j] = Fp16(j == 9 ? mu[9] : mu[size_t(j)] + noise * n(*rng));
  return k;
}

void Bounds(const std::vector<float>& k, int32_t d, std::vector<float>* kmin,
            std::vector<float>* kmax) {
  const int32_t rows = int32_t(k.size()) / d;
  kmin->assign(size_t(d), std::numeric_limits<float>::infinity());
  kmax->assign(size_t(d), -std::numeric_limits<float>::infinity());
  for (int32_t r = 0; r < rows; ++r)
    for (int32_t j = 0; j < d; ++j) {
      (*kmin)[size_t(j)] = std::min((*kmin)[size_t(j)], k[size_t(r) * d + j]);
      (*kmax)[size_t(j)] = std::max((*kmax)[size_t(j)], k[size_t(r) * d + j]);
    }
}

// FP32 rounding in (k - lo) / step and code * step + lo: a few ulps of the operands.
float ArithmeticSlack(float k, float lo) {
  const float m = std::max(std::fabs(k), std::fabs(lo));
  return 4.0f * (std::nextafter(m, INFINITY) - m);
}

// The widest step each coding may legally produce for a channel, from its FP16 range width and
// the block's grid (D = (Z - A) / 255 with the coder's 2^-10 margin).
float MaxStep(RangeCoding coding, float width, float grid, float widest, float kmin, float kmax) {
  const float margin = 1.0f + 1.0f / 512.0f;
  switch (coding) {
    case RangeCoding::kPc8:  // lo down and hi up by < one grid step each
      return (width + 2.0f * grid) / 15.0f * margin;
    case RangeCoding::kPc8Log:  // lo down by < D, then the step up by < 2^(1/16)
      return (width + grid) / 15.0f * std::exp2(1.0f / 16.0f) * margin;
    case RangeCoding::kPc8Pow2: {  // lo down by < D, then the step up to a power of two (< 2x)
      // unless the 4-bit exponent code bottoms out at 2^-15 of the block's largest step
      const float s_max = 255.0f * grid / 15.0f * (1.0f + 1.0f / 1024.0f);
      const float floor_step = std::exp2(std::ceil(std::log2(s_max)) - 15.0f);
      return std::max(2.0f * (width + grid) / 15.0f, floor_step) * margin;
    }
    case RangeCoding::kPc8W:  // lo down by < D, the width up by < W / 255
      return (width + grid + widest / 255.0f) / 15.0f * margin;
    case RangeCoding::kFp8: {  // each end moves out by < 2^-3 of its magnitude (or 2^-9)
      const float ends = 0.125f * (std::fabs(kmin) + std::fabs(kmax)) + 2.0f / 512.0f;
      return (width + ends) / 15.0f * margin;
    }
    case RangeCoding::kFp16:
      break;
  }
  return width / 15.0f;
}

void CheckBlock(RangeCoding coding, const std::vector<float>& k, int32_t d) {
  SCOPED_TRACE(RangeCodingName(coding));
  std::vector<float> kmin, kmax, lo(static_cast<size_t>(d)), step(static_cast<size_t>(d));
  Bounds(k, d, &kmin, &kmax);
  ASSERT_TRUE(ChannelRanges(coding, kmin.data(), kmax.data(), d, lo.data(), step.data()));
  const float a = *std::min_element(kmin.begin(), kmin.end());
  const float z = *std::max_element(kmax.begin(), kmax.end());
  const float grid = (z - a) / 255.0f;
  float widest = 0.0f;
  for (int32_t j = 0; j < d; ++j) widest = std::max(widest, kmax[size_t(j)] - kmin[size_t(j)] + grid);
  const int32_t rows = int32_t(k.size()) / d;
  for (int32_t j = 0; j < d; ++j) {
    SCOPED_TRACE(j);
    const float l = lo[size_t(j)], s = step[size_t(j)];
    // Outward: the code range [lo, lo + 15 step] (as the quantizer computes it) holds the bounds.
    EXPECT_LE(l, kmin[size_t(j)]);
    EXPECT_GE(DequantizeChannelValue(15, l, s), kmax[size_t(j)]);
    EXPECT_GE(s, 0.0f);
    // Not wider than the coding's resolution allows.
    EXPECT_LE(s, MaxStep(coding, kmax[size_t(j)] - kmin[size_t(j)], grid, widest, kmin[size_t(j)],
                         kmax[size_t(j)]));
    for (int32_t r = 0; r < rows; ++r) {
      const float x = k[size_t(r) * d + j];
      const float y = DequantizeChannelValue(QuantizeChannelValue(x, l, s), l, s);
      EXPECT_LE(std::fabs(y - x), 0.5f * s + ArithmeticSlack(x, l)) << "row " << r;
    }
  }
}

TEST(ChannelRanges, OutwardRoundingContainsEveryRowAndBoundsTheError) {
  std::mt19937_64 rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const float scale = trial % 4 == 0 ? 40.0f : 6.0f;  // offset outliers, mild and massive
    const float noise = trial % 3 == 0 ? 0.01f : 0.5f;  // narrow and wide channels
    const std::vector<float> k = RandomBlock(&rng, scale, noise);
    for (RangeCoding c : kCodings) CheckBlock(c, k, kD);
  }
}

TEST(ChannelRanges, LargeMagnitudesAndTinyRanges) {
  // FP16 extremes: every value near +-60000 (FP16 spacing 32 there) and channels one FP16
  // spacing wide; and tiny subnormal-scale values.
  for (float base : {60000.0f, -60000.0f, 1e-5f, -3.0e-7f}) {
    std::mt19937_64 rng(11);
    std::uniform_int_distribution<int> u(0, 3);
    std::vector<float> k(size_t(kRows) * kD);
    for (size_t i = 0; i < k.size(); ++i) {
      float x = Fp16(base);
      for (int s = u(rng); s > 0; --s) x = std::nextafter(x, INFINITY);  // then back to FP16
      k[i] = Fp16(x + std::fabs(base) * 1e-3f * float(u(rng)));
    }
    for (RangeCoding c : kCodings) {
      if (c == RangeCoding::kFp8 && std::fabs(base) > 448.0f) continue;  // beyond E4M3's range
      CheckBlock(c, k, kD);
    }
  }
}

TEST(ChannelRanges, ConstantBlockDecodesExactly) {
  std::vector<float> k(size_t(kRows) * kD, Fp16(-1.25f));
  for (RangeCoding c : kCodings) {
    std::vector<float> kmin, kmax, lo(kD), step(kD);
    Bounds(k, kD, &kmin, &kmax);
    ASSERT_TRUE(ChannelRanges(c, kmin.data(), kmax.data(), kD, lo.data(), step.data()));
    for (int32_t j = 0; j < kD; ++j) {
      EXPECT_EQ(DequantizeChannelValue(QuantizeChannelValue(-1.25f, lo[size_t(j)], step[size_t(j)]),
                                       lo[size_t(j)], step[size_t(j)]),
                -1.25f)
          << RangeCodingName(c);
    }
  }
}

TEST(ChannelRanges, Pc8CodesAreTheOutwardGridPoints) {
  // Two channels: [0, 25.5] sets the grid (A = 0, Z = 25.5: D ~ 0.1); channel 1 [1.05, 2.05]
  // must get lo = the grid point just below 1.05 (code 10) and hi the one just above 2.05
  // (code 21), not the nearest ones.
  const float kmin[2] = {0.0f, Fp16(1.05f)}, kmax[2] = {Fp16(25.5f), Fp16(2.05f)};
  CodedRanges coded;
  ASSERT_TRUE(EncodeRanges(RangeCoding::kPc8, kmin, kmax, 2, &coded));
  EXPECT_EQ(coded.lo_code[0], 0);
  EXPECT_EQ(coded.step_code[0], 255);
  EXPECT_EQ(coded.lo_code[1], 10);
  EXPECT_EQ(coded.step_code[1], 21);
  // pc8p2: the step is a power of two (q_j step_j exact in FP16).
  float lo[2], step[2];
  ASSERT_TRUE(ChannelRanges(RangeCoding::kPc8Pow2, kmin, kmax, 2, lo, step));
  for (float s : step) {
    int e;
    EXPECT_EQ(std::frexp(s, &e), 0.5f);
  }
  EXPECT_EQ(step[1], 0.125f);  // (2.05 - lo 1.001) / 15 = 0.070, rounded up to 2^-3
}

TEST(ChannelRanges, Fp8EndpointsRoundOutwardOnTheE4M3Grid) {
  // E4M3 spacing is 0.5 on [4, 8) and 1/32 on [0.25, 0.5).
  const float kmin[2] = {Fp16(5.1f), Fp16(-0.3f)}, kmax[2] = {Fp16(5.9f), Fp16(-0.29f)};
  CodedRanges coded;
  ASSERT_TRUE(EncodeRanges(RangeCoding::kFp8, kmin, kmax, 2, &coded));
  EXPECT_EQ(coded.lo_f[0], 5.0f);
  EXPECT_EQ(coded.hi_f[0], 6.0f);
  EXPECT_EQ(coded.lo_f[1], -0.3125f);
  EXPECT_EQ(coded.hi_f[1], -0.28125f);
}

TEST(ChannelRanges, MetadataBytesPerBlock) {
  // d = 128, 16 tokens: codes 1024 B; per token (k_scheme 0) 1088 B; FP16 ranges 1536 B.
  EXPECT_EQ(1024 + RangeMetadataBytes(RangeCoding::kFp16, kD), 1536);
  EXPECT_EQ(1024 + RangeMetadataBytes(RangeCoding::kPc8, kD), 1284);
  EXPECT_EQ(1024 + RangeMetadataBytes(RangeCoding::kPc8Log, kD), 1284);
  EXPECT_EQ(1024 + RangeMetadataBytes(RangeCoding::kPc8Pow2, kD), 1220);
  EXPECT_EQ(1024 + RangeMetadataBytes(RangeCoding::kPc8W, kD), 1286);
  EXPECT_EQ(1024 + RangeMetadataBytes(RangeCoding::kFp8, kD), 1280);
}

}  // namespace
}  // namespace twl::bench

// The channel-range record of the per-page-channel K scheme (core/channel_range.h): every
// decoded range contains its channel's Quest bounds, each end is the tightest code on the
// block's grid (checked against a scan of all 256 codes), grid values are FP16's nearest to
// c D + A (checked in long double), the host stores' table encoder writes the same bytes and
// ranges, the codes depend only on the bounds, and non-finite bounds decode to NaN. Fresh
// random blocks per run (gtest seed).
#include "core/channel_range.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/host_simd.h"
#include "core/quantize.h"
#include "gtest/gtest.h"
#include "support/nearest_half.h"

namespace twl {
namespace {

uint64_t FreshSeed() { return ::testing::UnitTest::GetInstance()->random_seed(); }

using testing::IsNearestHalf;

// A block's bounds: per channel an ordinary range around an offset, with outlier channels,
// equal bounds, subnormal and large magnitudes by kind.
void DrawBounds(std::mt19937_64& rng, int d, int kind, std::vector<fp16_t>* mn,
                std::vector<fp16_t>* mx) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  mn->resize(size_t(d));
  mx->resize(size_t(d));
  for (int j = 0; j < d; ++j) {
    float lo = 0.3f * std::sin(0.7f * float(j)) + n(rng), hi = lo + std::fabs(n(rng)) * 2.0f;
    if (j % 17 == 3) lo -= 6.0f, hi += 6.0f;      // an outlier channel
    if (kind == 1 && j % 5 == 0) hi = lo;          // constant channels
    if (kind == 2) lo = std::ldexp(lo, -20), hi = std::ldexp(hi, -20);  // subnormal
    if (kind == 3) lo *= 2000.0f, hi *= 2000.0f;   // large
    if (kind == 4 && j == 0) lo = -30000.0f;       // one channel far below the others
    (*mn)[size_t(j)] = FloatToHalf(lo);
    (*mx)[size_t(j)] = FloatToHalf(std::max(lo, hi));
  }
  for (int j = 0; j < d; ++j) {  // FP16 rounding may not reorder a channel's ends
    if (HalfToFloat((*mx)[size_t(j)]) < HalfToFloat((*mn)[size_t(j)])) (*mx)[size_t(j)] = (*mn)[size_t(j)];
  }
}

TEST(ChannelRangeRecord, RangesContainTheBoundsAndAreTheTightestCodes) {
  std::mt19937_64 rng(FreshSeed());
  int64_t widened = 0, channels = 0;
  for (int d : {64, 96, 128}) {
    for (int trial = 0; trial < 60; ++trial) {
      const int kind = trial % 5;
      std::vector<fp16_t> mn, mx;
      DrawBounds(rng, d, kind, &mn, &mx);
      std::vector<uint8_t> record(size_t(ChannelRangeBytes(d)), 0xAB);
      EncodeChannelRanges(mn.data(), mx.data(), d, record.data());
      // The host stores' encoder (a table of the grid) writes the same bytes, and its decoded
      // ranges are the record's.
      std::vector<uint8_t> host_record(record.size(), 0x5C);
      std::vector<fp16_t> lo16(static_cast<size_t>(d)), hi16(static_cast<size_t>(d));
      EncodeChannelRangesHost(mn.data(), mx.data(), d, host_record.data(), lo16.data(), hi16.data());
      ASSERT_EQ(host_record, record) << "d " << d << " kind " << kind;
      const fp16_t a = ChannelRangeA(record.data(), d), step = ChannelRangeD(record.data(), d);
      float lo_all = INFINITY, hi_all = -INFINITY;
      for (int j = 0; j < d; ++j) {
        lo_all = std::min(lo_all, HalfToFloat(mn[size_t(j)]));
        hi_all = std::max(hi_all, HalfToFloat(mx[size_t(j)]));
      }
      ASSERT_EQ(HalfToFloat(a), lo_all);
      ASSERT_GE(RangeGridFloat(255, a, step), hi_all) << "the grid reaches Z";
      for (int64_t i = 2 * d + 4; i < ChannelRangeBytes(d); ++i) ASSERT_EQ(record[size_t(i)], 0);
      // Every grid value is FP16's nearest to c D + A, and the grid does not decrease.
      std::vector<float> grid(256);
      for (uint32_t c = 0; c < 256; ++c) {
        const long double exact = (long double)c * HalfToFloat(step) + HalfToFloat(a);
        grid[c] = RangeGridFloat(c, a, step);
        ASSERT_TRUE(IsNearestHalf(exact, FloatToHalf(grid[c]))) << "code " << c;
        if (c) {
          ASSERT_GE(grid[c], grid[c - 1]);
        }
      }
      std::vector<float> lo(static_cast<size_t>(d)), hi(static_cast<size_t>(d));
      PageGeometry g;
      g.head_dim = d;
      g.k_scheme = kKSchemePageChannel;
      QuantKView qk;
      qk.range = record.data();
      PageChannelRangeValues(g, qk, 0, lo.data(), hi.data());
      for (int j = 0; j < d; ++j) {
        const float kmin = HalfToFloat(mn[size_t(j)]), kmax = HalfToFloat(mx[size_t(j)]);
        const uint32_t ca = record[size_t(j)], cb = record[size_t(d + j)];
        // The scan: the largest code at or below kmin, the smallest from there reaching kmax.
        uint32_t want_a = 0;
        for (uint32_t c = 0; c < 256; ++c) {
          if (grid[c] <= kmin) want_a = c;
        }
        uint32_t want_b = 255;
        for (uint32_t c = 256; c-- > want_a;) {
          if (grid[c] >= kmax) want_b = c;
        }
        ASSERT_EQ(ca, want_a) << "d " << d << " kind " << kind << " channel " << j;
        ASSERT_EQ(cb, want_b) << "d " << d << " kind " << kind << " channel " << j;
        ASSERT_EQ(lo[size_t(j)], grid[ca]);
        ASSERT_EQ(hi[size_t(j)], grid[cb]);
        ASSERT_LE(lo[size_t(j)], kmin);
        ASSERT_GE(hi[size_t(j)], kmax);
        fp16_t dl, dh;
        DecodeChannelRange(record.data(), d, j, &dl, &dh);
        ASSERT_EQ(HalfToFloat(dl), lo[size_t(j)]);
        ASSERT_EQ(HalfToFloat(dh), hi[size_t(j)]);
        ASSERT_EQ(lo16[size_t(j)], dl);
        ASSERT_EQ(hi16[size_t(j)], dh);
        widened += (lo[size_t(j)] < kmin) + (hi[size_t(j)] > kmax);
        ++channels;
      }
    }
  }
  EXPECT_GT(widened, channels / 2);  // the rounding outward is not vacuous
}

// The record depends only on the block's bounds: encoding twice, or from a record that held
// other bytes, gives the same bytes; one channel's bounds moving changes the grid's ends
// only through A and Z.
TEST(ChannelRangeRecord, CodesDependOnlyOnTheBounds) {
  std::mt19937_64 rng(FreshSeed() + 1);
  const int d = 128;
  std::vector<fp16_t> mn, mx;
  DrawBounds(rng, d, 0, &mn, &mx);
  std::vector<uint8_t> r1(size_t(ChannelRangeBytes(d)), 0), r2(r1.size(), 0xFF);
  EncodeChannelRanges(mn.data(), mx.data(), d, r1.data());
  EncodeChannelRanges(mn.data(), mx.data(), d, r2.data());
  EXPECT_EQ(r1, r2);
  // A channel strictly inside the others' span: A, Z and every other channel's codes stay.
  float lo_all = INFINITY, hi_all = -INFINITY;
  for (int j = 0; j < d; ++j) {
    lo_all = std::min(lo_all, HalfToFloat(mn[size_t(j)]));
    hi_all = std::max(hi_all, HalfToFloat(mx[size_t(j)]));
  }
  int inner = 0;
  while (!(HalfToFloat(mn[size_t(inner)]) > lo_all && HalfToFloat(mx[size_t(inner)]) < hi_all)) ++inner;
  std::vector<fp16_t> mn2 = mn, mx2 = mx;
  mx2[size_t(inner)] = mn2[size_t(inner)];
  std::vector<uint8_t> r3(r1.size());
  EncodeChannelRanges(mn2.data(), mx2.data(), d, r3.data());
  for (int j = 0; j < d; ++j) {
    if (j == inner) continue;
    EXPECT_EQ(r3[size_t(j)], r1[size_t(j)]) << j;
    EXPECT_EQ(r3[size_t(d + j)], r1[size_t(d + j)]) << j;
  }
}

// Non-finite bounds: the block's step is NaN and every range decodes to NaN; equal bounds
// everywhere: D = 0 and every range is the one value.
TEST(ChannelRangeRecord, NonFiniteAndConstantBlocks) {
  const int d = 64;
  std::vector<fp16_t> mn(size_t(d), FloatToHalf(-1.0f)), mx(size_t(d), FloatToHalf(2.0f));
  std::vector<uint8_t> record(size_t(ChannelRangeBytes(d)));
  PageGeometry g;
  g.head_dim = d;
  g.k_scheme = kKSchemePageChannel;
  QuantKView qk;
  qk.range = record.data();
  std::vector<float> lo(static_cast<size_t>(d)), hi(static_cast<size_t>(d));
  for (float bad : {INFINITY, -INFINITY, NAN}) {
    std::vector<fp16_t> a = mn, b = mx;
    (bad < 0 ? a : b)[7] = FloatToHalf(bad);
    EncodeChannelRanges(a.data(), b.data(), d, record.data());
    EXPECT_EQ(ChannelRangeD(record.data(), d), kRangeNanStep);
    PageChannelRangeValues(g, qk, 0, lo.data(), hi.data());
    for (int j = 0; j < d; ++j) {
      EXPECT_TRUE(std::isnan(lo[size_t(j)]) && std::isnan(hi[size_t(j)])) << bad << " " << j;
    }
  }
  std::vector<fp16_t> same(size_t(d), FloatToHalf(0.375f));
  EncodeChannelRanges(same.data(), same.data(), d, record.data());
  EXPECT_EQ(ChannelRangeD(record.data(), d), 0);
  PageChannelRangeValues(g, qk, 0, lo.data(), hi.data());
  for (int j = 0; j < d; ++j) {
    EXPECT_EQ(lo[size_t(j)], 0.375f);
    EXPECT_EQ(hi[size_t(j)], 0.375f);
  }
}

// Hard blocks for the host encoder's vector path (EncodeChannelRangesVector): kinds past
// DrawBounds' five are ties on the grid (bounds that are grid values, so every comparison of
// the search meets equality), zeros of both signs as A (the first channel's sign is kept),
// K near FP16's largest values (G(255) may be inf), grids not exact in float (a large |A|
// with a tiny step, a tiny nonzero A with a large one: the reference codes them), constant
// blocks, subnormal grids, runs of equal grid values (a step below A's last place), inf
// and NaN, and raw FP16 bit patterns.
void DrawHardBounds(std::mt19937_64& rng, int d, int kind, std::vector<fp16_t>* mn,
                    std::vector<fp16_t>* mx) {
  if (kind < 5) return DrawBounds(rng, d, kind, mn, mx);
  mn->assign(static_cast<size_t>(d), 0);
  mx->assign(static_cast<size_t>(d), 0);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::uniform_int_distribution<int> code(0, 255);
  auto set = [&](int j, float lo, float hi) {
    (*mn)[size_t(j)] = FloatToHalf(lo);
    (*mx)[size_t(j)] = FloatToHalf(std::max(lo, hi));
  };
  switch (kind) {
    case 5: {  // ties: every bound a value of the grid (A, D) the block's ends give
      // (|A| >= 0.5: a grid exact in float, so the vector path takes it)
      const fp16_t a = FloatToHalf(-0.5f - 3.5f * u(rng)), step = FloatToHalf(0.001f + 0.05f * u(rng));
      for (int j = 0; j < d; ++j) {
        const int c0 = code(rng), c1 = code(rng);
        (*mn)[size_t(j)] = RangeGridValue(uint32_t(std::min(c0, c1)), a, step);
        (*mx)[size_t(j)] = RangeGridValue(uint32_t(std::max(c0, c1)), a, step);
      }
      (*mn)[0] = a;
      (*mx)[size_t(d - 1)] = RangeGridValue(255, a, step);
      break;
    }
    case 6: {  // A = +0 and -0 in two channels, in either order, the rest above
      for (int j = 0; j < d; ++j) set(j, 0.5f + u(rng), 1.0f + 2.0f * u(rng));
      const int first = int(rng() % uint64_t(d)), second = int(rng() % uint64_t(d));
      const bool negative_first = rng() & 1;
      (*mn)[size_t(second)] = negative_first ? 0x0000 : 0x8000;
      (*mn)[size_t(first)] = negative_first ? 0x8000 : 0x0000;
      break;
    }
    case 7:  // near FP16's largest: 255 D + A may round past 65504 to inf
      for (int j = 0; j < d; ++j) set(j, -65504.0f * u(rng), 60000.0f + 5504.0f * u(rng));
      break;
    case 8: {  // c D + A not exact in float: a large |A| with a step of a few of its ulps,
               // or a nonzero A far below the step (A's last place far below D's)
      if (rng() & 1) {
        const float base = (rng() & 1 ? 1.0f : -1.0f) * (8192.0f + 16000.0f * u(rng));
        for (int j = 0; j < d; ++j) set(j, base + 64.0f * u(rng), base + 64.0f + 64.0f * u(rng));
      } else {
        for (int j = 0; j < d; ++j) set(j, 0.5f + u(rng), 2.0f + 6.0f * u(rng));
        (*mn)[rng() % uint64_t(d)] = FloatToHalf((rng() & 1 ? 1.0f : -1.0f) * std::ldexp(1.0f + u(rng), -14));
      }
      break;
    }
    case 9: {  // constant block, or every channel one value but one
      const float v = 3.0f * u(rng) - 1.5f;
      for (int j = 0; j < d; ++j) set(j, v, v);
      if (rng() & 1) set(int(rng() % uint64_t(d)), v, v + 0.25f);
      break;
    }
    case 10:  // subnormal grid: bounds within a few hundred units of 2^-24
      for (int j = 0; j < d; ++j) {
        const float lo = std::ldexp(float(code(rng)) - 128.0f, -24);
        set(j, lo, lo + std::ldexp(float(code(rng)), -24));
      }
      break;
    case 11: {  // one bound inf or NaN, either end, any sign
      for (int j = 0; j < d; ++j) set(j, u(rng) - 1.0f, u(rng));
      const fp16_t bad[] = {0x7c00, 0xfc00, 0x7e00, 0xfe00, 0x7c01};
      fp16_t& at = (rng() & 1 ? *mn : *mx)[rng() % uint64_t(d)];
      at = bad[rng() % 5];
      break;
    }
    case 12: {  // a step below half of A's last place, the grid still exact in float: runs
                // of equal grid values, with bounds on them (a channel at A: a > 0, b = a)
      // (A in [256, 448): last place 0.25; D in [1/16, 1/8): |A| + 255 D < 2^24 * 2^-14)
      const fp16_t a = FloatToHalf(256.0f + 192.0f * u(rng));
      const fp16_t step = FloatToHalf(0.0625f + 0.0625f * u(rng));
      for (int j = 0; j < d; ++j) {
        const int c0 = code(rng), c1 = code(rng);
        (*mn)[size_t(j)] = RangeGridValue(uint32_t(std::min(c0, c1)), a, step);
        (*mx)[size_t(j)] = RangeGridValue(uint32_t(std::max(c0, c1)), a, step);
      }
      (*mn)[0] = (*mx)[0] = a;
      (*mx)[size_t(d - 1)] = RangeGridValue(255, a, step);
      break;
    }
    default:  // raw bit patterns (any class), each channel's pair ordered where comparable
      for (int j = 0; j < d; ++j) {
        fp16_t x = fp16_t(rng()), y = fp16_t(rng());
        if (HalfToFloat(y) < HalfToFloat(x)) std::swap(x, y);
        (*mn)[size_t(j)] = x;
        (*mx)[size_t(j)] = y;
      }
      break;
  }
}

bool SameHalfOrBothNan(fp16_t x, fp16_t y) {
  return x == y || (std::isnan(HalfToFloat(x)) && std::isnan(HalfToFloat(y)));
}

// The host encoder's vector path codes every ordinary block and writes the reference's bytes
// and ranges on every block it takes (and nothing on a block it leaves); the host encoder at
// either SIMD level writes the shared encoder's bytes and the baseline's ranges, bit for bit.
TEST(ChannelRangeRecord, VectorEncoderMatchesTheReferenceOnHardBlocks) {
  if (!HostSupports(HostSimd::kAvx2F16c)) GTEST_SKIP() << "no AVX2 + F16C on this host";
  std::mt19937_64 rng(FreshSeed() + 2);
  constexpr int kKinds = 14;
  int64_t taken[kKinds] = {}, blocks[kKinds] = {};
  for (int d : {8, 16, 32, 64, 96, 128, 256, 12}) {
    for (int trial = 0; trial < 40 * kKinds; ++trial) {
      const int kind = trial % kKinds;
      std::vector<fp16_t> mn, mx;
      DrawHardBounds(rng, d, kind, &mn, &mx);
      const size_t bytes = size_t(ChannelRangeBytes(d));
      std::vector<uint8_t> want(bytes);
      EncodeChannelRanges(mn.data(), mx.data(), d, want.data());
      std::vector<fp16_t> want_lo(static_cast<size_t>(d)), want_hi(static_cast<size_t>(d));
      DecodeChannelRanges(want.data(), d, want_lo.data(), want_hi.data());
      // The host encoder at each level: the shared encoder's bytes, and its ranges bit for
      // bit at both levels (NaN ranges: NaN as the shared decoder's).
      std::vector<fp16_t> base_lo, base_hi;
      for (HostSimd level : {HostSimd::kBaseline, HostSimd::kAvx2F16c}) {
        const HostSimd before = SetHostSimdForTesting(level);
        std::vector<uint8_t> got(bytes, 0xA5);
        std::vector<fp16_t> lo(static_cast<size_t>(d), 0x1234), hi(static_cast<size_t>(d), 0x4321);
        EncodeChannelRangesHost(mn.data(), mx.data(), d, got.data(), lo.data(), hi.data());
        SetHostSimdForTesting(before);
        ASSERT_EQ(got, want) << "d " << d << " kind " << kind << " " << HostSimdName(level);
        for (int j = 0; j < d; ++j) {
          ASSERT_TRUE(SameHalfOrBothNan(lo[size_t(j)], want_lo[size_t(j)]) &&
                      SameHalfOrBothNan(hi[size_t(j)], want_hi[size_t(j)]))
              << "d " << d << " kind " << kind << " channel " << j;
        }
        if (level == HostSimd::kBaseline) {
          base_lo = lo;
          base_hi = hi;
        } else {
          ASSERT_EQ(lo, base_lo) << "d " << d << " kind " << kind;
          ASSERT_EQ(hi, base_hi) << "d " << d << " kind " << kind;
        }
      }
      // The vector path alone, into buffers holding other bytes.
      std::vector<uint8_t> got(bytes, 0x5A);
      std::vector<fp16_t> lo(static_cast<size_t>(d), 0x1234), hi(static_cast<size_t>(d), 0x4321);
      const bool took = EncodeChannelRangesVector(mn.data(), mx.data(), d, got.data(), lo.data(),
                                                  hi.data());
      ++blocks[kind];
      if (took) {
        ++taken[kind];
        ASSERT_EQ(got, want) << "d " << d << " kind " << kind;
        ASSERT_EQ(lo, want_lo) << "d " << d << " kind " << kind;
        ASSERT_EQ(hi, want_hi) << "d " << d << " kind " << kind;
        // Each output may be left out.
        std::vector<uint8_t> only(bytes, 0);
        ASSERT_TRUE(EncodeChannelRangesVector(mn.data(), mx.data(), d, only.data(), nullptr,
                                              nullptr));
        ASSERT_EQ(only, want);
        std::vector<fp16_t> lo_only(static_cast<size_t>(d), 0);
        ASSERT_TRUE(EncodeChannelRangesVector(mn.data(), mx.data(), d, nullptr, lo_only.data(),
                                              nullptr));
        ASSERT_EQ(lo_only, want_lo);
      } else {
        ASSERT_EQ(got, std::vector<uint8_t>(bytes, 0x5A)) << "a refused block is not written";
        ASSERT_EQ(lo, std::vector<fp16_t>(static_cast<size_t>(d), 0x1234));
        ASSERT_EQ(hi, std::vector<fp16_t>(static_cast<size_t>(d), 0x4321));
      }
      if (d % 8 != 0) {
        ASSERT_FALSE(took) << "head_dim " << d;
      }
      const bool finite_spread = ChannelRangeD(want.data(), d) != 0 &&
                                 std::isfinite(HalfToFloat(ChannelRangeD(want.data(), d)));
      // Ordinary blocks (DrawBounds' kinds, ties, signed zeros, subnormal grids, runs of
      // equal grid values) are the vector path's: a path that refused them all would pass
      // the comparisons vacuously.
      if (d % 8 == 0 && (kind <= 6 || kind == 10 || kind == 12) && finite_spread) {
        ASSERT_TRUE(took) << "d " << d << " kind " << kind;
      }
      if (kind == 11) {
        ASSERT_FALSE(took) << "non-finite bounds go to the reference";
      }
    }
  }
  // The kinds meant for the reference reach it, and the others are taken.
  EXPECT_EQ(taken[8], 0) << "grids not exact in float";
  EXPECT_LT(taken[9], blocks[9]) << "constant blocks";
  EXPECT_GT(taken[7], 0) << "near FP16's largest values";
  EXPECT_GT(taken[13], 0) << "raw bit patterns";
}

}  // namespace
}  // namespace twl

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

}  // namespace
}  // namespace twl

#include "lib/channel_ranges.h"

#include <algorithm>
#include <cmath>

namespace twl::bench {
namespace {

constexpr float kMargin = 1.0f + 1.0f / 1024.0f;  // D and S: 255 D and 15 S clear Z - A
constexpr int kLogCodesPerOctave = 16;             // kPc8Log: step resolution 2^(1/16)
constexpr int kPow2MaxCode = 15;                   // kPc8Pow2: 4-bit exponent code

struct Grid {
  float a = 0, d = 0, s = 0;  // A, the lo/hi grid step D, and the largest step S
  int e = 0;                  // kPc8Pow2: 2^e >= S
  float w = 0;                // kPc8W: the width grid's step
};

Grid BlockGrid(const CodedRanges& c) {
  Grid g;
  g.a = HalfToFloat(c.a);
  const float width = HalfToFloat(c.z) - g.a;
  g.d = width / 255.0f * kMargin;
  g.s = width / 15.0f * kMargin;
  if (g.s > 0.0f) g.e = int(std::ceil(std::log2(g.s)));
  g.w = HalfToFloat(c.w) / 255.0f * kMargin;
  return g;
}

// E4M3 (no infinities, max 448, subnormal spacing 2^-9): the grid point at or below x (dir -1)
// or at or above it (+1); |x| beyond 448 saturates (the range then is not contained).
float Fp8E4M3Outward(float x, int dir) {
  if (x == 0.0f) return 0.0f;
  const float ax = std::fabs(x);
  const int e = std::max(-6, int(std::floor(std::log2(ax))));
  const float spacing = std::ldexp(1.0f, e - 3);
  // Outward for x means down in magnitude when x and dir have opposite signs.
  const bool up_in_magnitude = (x > 0.0f) == (dir > 0);
  float m = (up_in_magnitude ? std::ceil(ax / spacing) : std::floor(ax / spacing)) * spacing;
  m = std::min(m, 448.0f);
  return x > 0.0f ? m : -m;
}

float GridValue(const Grid& g, uint8_t code) { return std::fma(float(code), g.d, g.a); }

float StepOf(RangeCoding coding, const Grid& g, float lo, uint8_t code) {
  switch (coding) {
    case RangeCoding::kPc8:
      return (GridValue(g, code) - lo) / 15.0f;
    case RangeCoding::kPc8Log:
      return g.s * std::exp2(-float(code) / float(kLogCodesPerOctave));
    case RangeCoding::kPc8Pow2:
      return g.s > 0.0f ? std::ldexp(1.0f, g.e - int(code)) : 0.0f;
    case RangeCoding::kPc8W:
      return float(code) * g.w / 15.0f;
    case RangeCoding::kFp16:
    case RangeCoding::kFp8:
      break;
  }
  return 0.0f;
}

// The next FP16 value below (dir -1) or above (+1) a finite h.
fp16_t HalfStep(fp16_t h, int dir) {
  const bool neg = (h & 0x8000u) != 0;
  if ((h & 0x7fffu) == 0) return dir < 0 ? fp16_t(0x8001u) : fp16_t(0x0001u);
  return fp16_t((neg == (dir < 0)) ? h + 1 : h - 1);
}

// The top of the channel's code range, as the quantizer sees it.
float Top(float lo, float step) { return DequantizeChannelValue(15, lo, step); }

}  // namespace

double RangeMetadataBytes(RangeCoding coding, int32_t d) {
  switch (coding) {
    case RangeCoding::kFp16:
      return 4.0 * d;
    case RangeCoding::kPc8:
    case RangeCoding::kPc8Log:
      return 2.0 * d + 4.0;
    case RangeCoding::kPc8W:
      return 2.0 * d + 6.0;
    case RangeCoding::kFp8:
      return 2.0 * d;
    case RangeCoding::kPc8Pow2:
      return 1.5 * d + 4.0;
  }
  return 0.0;
}

const char* RangeCodingName(RangeCoding coding) {
  switch (coding) {
    case RangeCoding::kFp16: return "fp16";
    case RangeCoding::kPc8: return "pc8";
    case RangeCoding::kPc8Log: return "pc8log";
    case RangeCoding::kPc8Pow2: return "pc8p2";
    case RangeCoding::kPc8W: return "pc8w";
    case RangeCoding::kFp8: return "fp8";
  }
  return "?";
}

bool EncodeRanges(RangeCoding coding, const float* kmin, const float* kmax, int32_t d,
                  CodedRanges* out) {
  out->lo_code.assign(size_t(d), 0);
  out->step_code.assign(size_t(d), 0);
  if (d <= 0) return true;
  float lo_all = kmin[0], hi_all = kmax[0];
  for (int32_t j = 1; j < d; ++j) lo_all = std::min(lo_all, kmin[j]), hi_all = std::max(hi_all, kmax[j]);
  // The bounds are FP16 values, so these conversions are exact; rounding outward anyway keeps A
  // and Z containing the block when they are not.
  out->a = FloatToHalf(lo_all);
  while (HalfToFloat(out->a) > lo_all) out->a = HalfStep(out->a, -1);
  out->z = FloatToHalf(hi_all);
  while (HalfToFloat(out->z) < hi_all) out->z = HalfStep(out->z, +1);
  if (coding == RangeCoding::kFp16) return true;
  if (coding == RangeCoding::kFp8) {
    bool contained = true;
    out->lo_f.resize(size_t(d));
    out->hi_f.resize(size_t(d));
    for (int32_t j = 0; j < d; ++j) {
      out->lo_f[size_t(j)] = Fp8E4M3Outward(kmin[j], -1);
      out->hi_f[size_t(j)] = Fp8E4M3Outward(kmax[j], +1);
      // FP32 rounding of lo + 15 (hi - lo) / 15 can fall short of hi == kmax: one E4M3 step up.
      if (Top(out->lo_f[size_t(j)], (out->hi_f[size_t(j)] - out->lo_f[size_t(j)]) / 15.0f) < kmax[j])
        out->hi_f[size_t(j)] = Fp8E4M3Outward(std::nextafter(out->hi_f[size_t(j)], INFINITY), +1);
      const float step = (out->hi_f[size_t(j)] - out->lo_f[size_t(j)]) / 15.0f;
      contained = contained && out->lo_f[size_t(j)] <= kmin[j] &&
                  Top(out->lo_f[size_t(j)], step) >= kmax[j];
    }
    return contained;
  }
  if (coding == RangeCoding::kPc8W) {
    // The width grid spans the widest channel measured from its rounded-down lo.
    Grid g0 = BlockGrid(*out);
    float wmax = 0.0f;
    for (int32_t j = 0; j < d; ++j) {
      int a = g0.d > 0.0f ? std::clamp(int(std::floor((kmin[j] - g0.a) / g0.d)), 0, 255) : 0;
      while (a > 0 && GridValue(g0, uint8_t(a)) > kmin[j]) --a;
      wmax = std::max(wmax, kmax[j] - GridValue(g0, uint8_t(a)));
    }
    out->w = FloatToHalf(wmax);
    while (HalfToFloat(out->w) < wmax) out->w = HalfStep(out->w, +1);
  }
  const Grid g = BlockGrid(*out);
  bool contained = true;
  for (int32_t j = 0; j < d; ++j) {
    // lo: the grid point at or below kmin (one code lower if FP32 rounding put it above).
    int a = g.d > 0.0f ? int(std::floor((kmin[j] - g.a) / g.d)) : 0;
    a = std::clamp(a, 0, 255);
    while (a > 0 && GridValue(g, uint8_t(a)) > kmin[j]) --a;
    const float lo = GridValue(g, uint8_t(a));
    // step: the smallest code whose range reaches kmax (codes order the steps: hi codes
    // increase, log/pow2 codes decrease with the step).
    int c = 0;
    const int max_code = coding == RangeCoding::kPc8Pow2 ? kPow2MaxCode : 255;
    const float need = (kmax[j] - lo) / 15.0f;
    if (coding == RangeCoding::kPc8) {
      c = g.d > 0.0f ? int(std::ceil((kmax[j] - g.a) / g.d)) : 0;
      c = std::clamp(c, a, 255);
      while (c < 255 && Top(lo, StepOf(coding, g, lo, uint8_t(c))) < kmax[j]) ++c;
    } else if (coding == RangeCoding::kPc8W) {
      c = g.w > 0.0f ? std::clamp(int(std::ceil((kmax[j] - lo) / g.w)), 0, 255) : 0;
      while (c < 255 && Top(lo, StepOf(coding, g, lo, uint8_t(c))) < kmax[j]) ++c;
    } else {
      if (!(need > 0.0f)) {
        c = max_code;
      } else if (coding == RangeCoding::kPc8Log) {
        c = int(std::floor(-float(kLogCodesPerOctave) * std::log2(need / g.s)));
      } else {
        c = g.e - int(std::ceil(std::log2(need)));
      }
      c = std::clamp(c, 0, max_code);
      while (c > 0 && Top(lo, StepOf(coding, g, lo, uint8_t(c))) < kmax[j]) --c;
    }
    out->lo_code[size_t(j)] = uint8_t(a);
    out->step_code[size_t(j)] = uint8_t(c);
    contained = contained && lo <= kmin[j] && Top(lo, StepOf(coding, g, lo, uint8_t(c))) >= kmax[j];
  }
  return contained;
}

void DecodeRanges(RangeCoding coding, const CodedRanges& coded, const float* kmin,
                  const float* kmax, int32_t d, float* lo, float* step) {
  if (coding == RangeCoding::kFp16) {
    for (int32_t j = 0; j < d; ++j) lo[j] = kmin[j], step[j] = (kmax[j] - kmin[j]) / 15.0f;
    return;
  }
  if (coding == RangeCoding::kFp8) {
    for (int32_t j = 0; j < d; ++j) {
      lo[j] = coded.lo_f[size_t(j)];
      step[j] = (coded.hi_f[size_t(j)] - coded.lo_f[size_t(j)]) / 15.0f;
    }
    return;
  }
  const Grid g = BlockGrid(coded);
  for (int32_t j = 0; j < d; ++j) {
    lo[j] = GridValue(g, coded.lo_code[size_t(j)]);
    step[j] = StepOf(coding, g, lo[j], coded.step_code[size_t(j)]);
  }
}

bool ChannelRanges(RangeCoding coding, const float* kmin, const float* kmax, int32_t d,
                   float* lo, float* step) {
  CodedRanges coded;
  const bool ok = EncodeRanges(coding, kmin, kmax, d, &coded);
  DecodeRanges(coding, coded, kmin, kmax, d, lo, step);
  return ok;
}

}  // namespace twl::bench

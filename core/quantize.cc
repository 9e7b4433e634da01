// The host K quantizer (see quantize.h).
#include "core/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/channel_range.h"
#include "core/host_simd.h"

namespace twl {

void QuantizeRowRef(const PageGeometry& g, const fp16_t* k, uint8_t* codes, fp16_t* scale,
                    fp16_t* zero) {
  float lo = std::numeric_limits<float>::infinity();
  float hi = -lo;
  for (int32_t j = 0; j < g.head_dim; ++j) {
    const float x = g.KvToFloat(LoadU16(k, j));  // k may be the caller's buffer: any address
    lo = std::min(lo, x);
    hi = std::max(hi, x);
  }
  const int32_t max_code = g.MaxCode();
  *scale = FloatToHalf((hi - lo) / float(max_code));
  *zero = FloatToHalf(lo);
  // Codes are computed against the FP16-rounded scale and zero that dequantization uses.
  const float s = HalfToFloat(*scale);
  const float z = HalfToFloat(*zero);
  std::memset(codes, 0, size_t(g.CodeBytesPerToken()));
  const int32_t per_byte = 8 / g.k_bits;
  for (int32_t j = 0; j < g.head_dim; ++j) {
    // Clamp in float before the conversion: with non-finite K (inf, NaN: the caller's data)
    // the quotient may be NaN or out of int range, and converting that is undefined. NaN
    // fails both comparisons and becomes code 0.
    float r = 0.0f;
    if (s > 0.0f) r = std::rint((g.KvToFloat(LoadU16(k, j)) - z) / s);
    const int32_t c = r >= float(max_code) ? max_code : (r > 0.0f ? int32_t(r) : 0);
    codes[j / per_byte] = uint8_t(codes[j / per_byte] | (c << ((j % per_byte) * g.k_bits)));
  }
}

float DequantizeRef(const PageGeometry& g, const uint8_t* codes, fp16_t scale, fp16_t zero,
                    int32_t j) {
  return float(UnpackCode(codes, j, g.k_bits)) * HalfToFloat(scale) + HalfToFloat(zero);
}

float PageChannelStep(const PageGeometry& g, float lo, float hi) {
  return (hi - lo) / float(g.MaxCode());
}

fp16_t PageChannelInverseMaxCodeHalf(const PageGeometry& g) {
  return FloatToHalf(1.0f / float(g.MaxCode()));
}

float PageChannelStepValue(const PageGeometry& g, fp16_t kmin, fp16_t kmax) {
  return PageChannelStepValue(HalfToFloat(kmin), HalfToFloat(kmax),
                              HalfToFloat(PageChannelInverseMaxCodeHalf(g)));
}


namespace {

// Whether code * step16 + kmin is exact in float for every code in [0, max_code]. The
// product has <= 8 + 11 significant bits; the sum is a multiple of u, the smaller of the
// weights of FP16's last place at kmin and at step16 (a zero adds no bits), and is at most
// |kmin| + max_code |step16| =: B, which float holds when B <= 2^24 u. B is rounded once
// in float, so the test is strict (B rounded below a power of two means B is below it).
// Branch-free, so the page's channels are tested four at a time.
int32_t DequantExactInFloat(float kmin, float step16, int32_t max_code) {
  const int32_t e_lo = kmin == 0.0f ? 240 : int32_t((FloatToBits(kmin) >> 23) & 0xffu);
  const int32_t e_st = step16 == 0.0f ? 240 : int32_t((FloatToBits(step16) >> 23) & 0xffu);
  int32_t e = e_lo < e_st ? e_lo : e_st;  // biased exponent of the smaller nonzero one
  e = e < 127 - 14 ? 127 - 14 : e > 240 ? 240 : e;  // FP16 subnormals share 2^-14's quantum
  const float limit = BitsToFloat(uint32_t(e + 14) << 23);  // 2^24 u = 2^(e - 127 - 10 + 24)
  const float bound = std::fabs(kmin) + float(max_code) * std::fabs(step16);
  return bound < limit ? 1 : 0;  // false for inf and NaN
}

}  // namespace

void PageChannelDequantTable(const float* kmin, const float* step16, int32_t channels,
                             int32_t max_code, float* table) {
  const size_t codes = size_t(max_code) + 1;
  for (int32_t j = 0; j < channels; ++j) {
    float* t = table + size_t(j) * codes;
    const float lo = kmin[j], step = step16[j];
    // int32 codes: their conversion to float vectorizes, a size_t's does not.
    for (int32_t c = 0; c <= max_code; ++c) t[c] = HalfRoundFloat(float(c) * step + lo);
  }
  thread_local std::vector<int32_t> exact;
  exact.resize(size_t(channels));
  for (int32_t j = 0; j < channels; ++j) exact[j] = DequantExactInFloat(kmin[j], step16[j], max_code);
  for (int32_t j = 0; j < channels; ++j) {
    if (exact[j]) continue;
    float* t = table + size_t(j) * codes;
    for (size_t c = 0; c < codes; ++c) t[c] = PageChannelDequantValue(int32_t(c), step16[j], kmin[j]);
  }
}

namespace {

// The per-element rule of QuantizeBlockRowsRef over rows [0, rows): one body, built twice
// (below), so the two builds are the same operations per element and give the same codes.
__attribute__((always_inline)) inline void QuantizeRowsBody(
    const PageGeometry& g, const FpKvView& kv, const QuantKView& qk, int64_t block,
    int32_t rows, const float* lo_j, const float* step_j, float* x_j, float* code_j) {
  const int32_t d = g.head_dim, max_code = g.MaxCode(), per_byte = 8 / g.k_bits;
  const float top = float(max_code);
  for (int32_t r = 0; r < rows; ++r) {
    KvRowToFloat(g, kv.K(g, block, r), x_j);
    for (int32_t j = 0; j < d; ++j) {
      // As in QuantizeRowRef: rint, then clamp in float (non-finite K gives NaN, which becomes
      // code 0; a step that is not > 0 gives code 0). rint by adding and subtracting 1.5 * 2^23
      // (ties to even, exact below 2^22; beyond, the result keeps its sign and stays past the
      // clamp), so that the loop has no branch and vectorizes.
      const float s = step_j[j];
      const bool positive = s > 0.0f;
      const float t = (x_j[j] - lo_j[j]) / (positive ? s : 1.0f);
      float q = (t + 0x1.8p23f) - 0x1.8p23f;
      q = (positive & (q > 0.0f)) ? q : 0.0f;
      q = q < top ? q : top;
      code_j[j] = q;
    }
    uint8_t* codes = qk.Codes(g, block, r);
    std::memset(codes, 0, size_t(g.CodeBytesPerToken()));
    for (int32_t j = 0; j < d; ++j) {
      codes[j / per_byte] =
          uint8_t(codes[j / per_byte] | (int32_t(code_j[j]) << ((j % per_byte) * g.k_bits)));
    }
  }
}

void QuantizeRowsBaseline(const PageGeometry& g, const FpKvView& kv, const QuantKView& qk,
                          int64_t block, int32_t rows, const float* lo, const float* step,
                          float* x, float* code) {
  QuantizeRowsBody(g, kv, qk, block, rows, lo, step, x, code);
}

#if defined(__x86_64__)
// The compiler vectorizes the same body eight wide (core/host_simd.h).
TWL_TARGET_AVX2_F16C void QuantizeRowsAvx2(
    const PageGeometry& g, const FpKvView& kv, const QuantKView& qk, int64_t block,
    int32_t rows, const float* lo, const float* step, float* x, float* code) {
  QuantizeRowsBody(g, kv, qk, block, rows, lo, step, x, code);
}
#endif

}  // namespace

namespace {

// The grid's 256 values G(c) = FP16(c D + A) as floats: PageChannelDequantTable computes
// exactly that rounding (c D + A rounded once to FP16), vectorized where it is exact in float.
void RangeGridTable(fp16_t a_h, fp16_t d_h, float* grid) {
  const float a = HalfToFloat(a_h), step = HalfToFloat(d_h);
  PageChannelDequantTable(&a, &step, 1, kRangeCodeMax, grid);
}

}  // namespace

void PageChannelRangeValues(const PageGeometry& g, const QuantKView& qk, int64_t block,
                            float* lo, float* hi) {
  const int32_t d = g.head_dim;
  if (qk.range_lo) {
    const fp16_t* l = qk.range_lo + block * d;
    const fp16_t* h = qk.range_hi + block * d;
    for (int32_t j = 0; j < d; ++j) lo[j] = HalfToFloatBranchless(l[j]);
    for (int32_t j = 0; j < d; ++j) hi[j] = HalfToFloatBranchless(h[j]);
    return;
  }
  const uint8_t* record = qk.Range(g, block);
  float grid[kRangeCodeMax + 1];
  RangeGridTable(ChannelRangeA(record, d), ChannelRangeD(record, d), grid);
  for (int32_t j = 0; j < d; ++j) {
    lo[j] = grid[record[j]];
    hi[j] = grid[record[d + j]];
  }
}

void PageChannelRangeAt(const PageGeometry& g, const QuantKView& qk, int64_t block, int32_t j,
                        float* lo, float* hi) {
  if (qk.range_lo) {
    *lo = HalfToFloat(qk.range_lo[block * g.head_dim + j]);
    *hi = HalfToFloat(qk.range_hi[block * g.head_dim + j]);
    return;
  }
  fp16_t l, h;
  DecodeChannelRange(qk.Range(g, block), g.head_dim, j, &l, &h);
  *lo = HalfToFloat(l);
  *hi = HalfToFloat(h);
}

void EncodeChannelRangesHost(const fp16_t* kmin, const fp16_t* kmax, int32_t head_dim,
                             uint8_t* record, fp16_t* lo, fp16_t* hi) {
  fp16_t a, step;
  ChannelRangeGridOf(kmin, kmax, head_dim, &a, &step);
  float grid[kRangeCodeMax + 1];
  RangeGridTable(a, step, grid);
  const float A = HalfToFloat(a), D = HalfToFloat(step), inv_d = 1.0f / D;
  for (int32_t j = 0; j < head_dim; ++j) {
    uint8_t ca, cb;
    EncodeChannelRangeOn([&](uint32_t c) { return grid[c]; }, A, D, inv_d, HalfToFloat(kmin[j]),
                         HalfToFloat(kmax[j]), &ca, &cb);
    if (record) {
      record[j] = ca;
      record[head_dim + j] = cb;
    }
    if (lo) {
      lo[j] = FloatToHalf(grid[ca]);  // FP16 values: exact
      hi[j] = FloatToHalf(grid[cb]);
    }
  }
  if (record) StoreChannelRangeGrid(record, head_dim, a, step);
}

void QuantizeBlockRowsRef(const PageGeometry& g, const FpKvView& kv, const QuantKView& qk,
                          int64_t block, int32_t rows) {
  const int32_t d = g.head_dim;
  EncodeChannelRangesHost(qk.kmin + block * d, qk.kmax + block * d, d,
                          qk.range ? qk.Range(g, block) : nullptr,
                          qk.range_lo ? qk.range_lo + block * d : nullptr,
                          qk.range_hi ? qk.range_hi + block * d : nullptr);
  // A channel's range and step once per block, a row's K once per row: the per-element loop
  // is then branch-free arithmetic (the same division and rint as ever, so the same codes).
  thread_local std::vector<float> lo, hi, step, x, code;
  lo.resize(size_t(d));
  hi.resize(size_t(d));
  step.resize(size_t(d));
  x.resize(size_t(d));
  code.resize(size_t(d));
  PageChannelRangeValues(g, qk, block, lo.data(), hi.data());
  for (int32_t j = 0; j < d; ++j) step[size_t(j)] = PageChannelStep(g, lo[size_t(j)], hi[size_t(j)]);
#if defined(__x86_64__)
  if (ActiveHostSimd() == HostSimd::kAvx2F16c) {
    QuantizeRowsAvx2(g, kv, qk, block, rows, lo.data(), step.data(), x.data(), code.data());
    return;
  }
#endif
  QuantizeRowsBaseline(g, kv, qk, block, rows, lo.data(), step.data(), x.data(), code.data());
}

float DequantizeAtRef(const PageGeometry& g, const QuantKView& qk, int64_t block, int32_t row,
                      int32_t j) {
  const uint8_t* codes = qk.Codes(g, block, row);
  if (g.k_scheme == kKSchemePageChannel) {
    float lo, hi;
    PageChannelRangeAt(g, qk, block, j, &lo, &hi);
    return lo + float(UnpackCode(codes, j, g.k_bits)) * PageChannelStep(g, lo, hi);
  }
  const int64_t at = block * g.page_size + row;
  return DequantizeRef(g, codes, qk.scale[at], qk.zero[at], j);
}

}  // namespace twl

// The host K quantizer (see quantize.h).
#include "core/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "core/channel_range.h"
#include "core/host_simd.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace twl {

void QuantizeRowRef(const PageGeometry& g, const fp16_t* k, uint8_t* codes, fp16_t* scale,
                    fp16_t* zero) {
  float lo = std::numeric_limits<float>::infinity();
  float hi = -lo;
  for (int32_t j = 0; j < g.head_dim; ++j) {
    // k may be the caller's buffer: any address
    const float x = BoundInput(g.KvToFloat(LoadU16(k, j)));
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

namespace {

// The reference host encoder: any block, on a table of the grid's 256 values, each channel
// by EncodeChannelRangeOn (the device's search). The AVX2 encoder below takes the common
// blocks and leaves the others to it.
void EncodeChannelRangesTable(const fp16_t* kmin, const fp16_t* kmax, int32_t head_dim,
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

#if defined(__x86_64__)

constexpr int kF16cRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// G(c) of eight codes where c D + A is exact in float (the block's grid passed
// DequantExactInFloat): the float product and sum are then the exact value, and one F16C
// conversion rounds it to FP16 as HalfRoundFloat does in the table (nearest even, inf past
// 65520). Codes outside [0, 255] give some value that the callers mask away.
TWL_TARGET_AVX2_F16C inline __m256 RangeGrid8(__m256i c, __m256 a, __m256 d) {
  const __m256 x = _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(c), d), a);
  return _mm256_cvtph_ps(_mm256_cvtps_ph(x, kF16cRound));
}

// A code estimate e (a float) clamped to [lo, 255] and converted, eight lanes.
TWL_TARGET_AVX2_F16C inline __m256i ClampRangeCode8(__m256 e, __m256 lo) {
  e = _mm256_min_ps(_mm256_max_ps(e, lo), _mm256_set1_ps(float(kRangeCodeMax)));
  return _mm256_cvttps_epi32(e);
}

// Eight codes' bytes (each in [0, 255]) stored to out[0, 8).
TWL_TARGET_AVX2_F16C inline void StoreCodes8(__m256i c, uint8_t* out) {
  const __m128i w = _mm_packus_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_packus_epi16(w, w));
}

// One end of eight channels' ranges walked to its fixed point: kLow the a end, else the b
// end. The grid does not decrease in c, so each end has one fixed point, which every lane
// walks to from its code in `*code` (an estimate) one code at a time; an end that moves down
// never moves up again, so each lane stops after at most 255 steps. The fixed points are
// EncodeChannelRangeOn's codes (x = kmin for a, kmax for b; floor = 0 for a, a for b):
//   a: (a == 0 or G(a) <= x) and (a == 255 or G(a + 1) > x)
//   b: (b == 255 or G(b) >= x) and (b == floor or G(b - 1) < x)
// Returns false if a lane had not stopped after 256 steps (it cannot happen; the caller
// then takes the reference).
template <bool kLow>
TWL_TARGET_AVX2_F16C inline bool WalkRangeEnd8(__m256i* code, __m256* grid, __m256 x,
                                               __m256i floor, __m256 A, __m256 D) {
  const __m256i one = _mm256_set1_epi32(1), top = _mm256_set1_epi32(kRangeCodeMax);
  __m256i c = *code;
  __m256 gc = RangeGrid8(c, A, D);
  for (int step = 0;; ++step) {
    if (step > kRangeCodeMax) return false;
    __m256i down, up;  // masks of -1 where a lane moves
    if constexpr (kLow) {
      const __m256 next = RangeGrid8(_mm256_add_epi32(c, one), A, D);
      down = _mm256_and_si256(_mm256_cmpgt_epi32(c, floor),
                              _mm256_castps_si256(_mm256_cmp_ps(gc, x, _CMP_GT_OQ)));
      up = _mm256_and_si256(_mm256_cmpgt_epi32(top, c),
                            _mm256_castps_si256(_mm256_cmp_ps(next, x, _CMP_LE_OQ)));
    } else {
      const __m256 prev = RangeGrid8(_mm256_sub_epi32(c, one), A, D);
      up = _mm256_and_si256(_mm256_cmpgt_epi32(top, c),
                            _mm256_castps_si256(_mm256_cmp_ps(gc, x, _CMP_LT_OQ)));
      down = _mm256_and_si256(_mm256_cmpgt_epi32(c, floor),
                              _mm256_castps_si256(_mm256_cmp_ps(prev, x, _CMP_GE_OQ)));
    }
    const __m256i move = _mm256_or_si256(down, up);
    if (_mm256_testz_si256(move, move)) break;
    c = _mm256_sub_epi32(_mm256_add_epi32(c, down), up);  // down -1, up +1
    gc = RangeGrid8(c, A, D);
  }
  *code = c;
  *grid = gc;
  return true;
}

// The codes (a, b) and their grid values of eight channels (kmin, kmax as floats): each end
// from its estimate, b's never below a.
TWL_TARGET_AVX2_F16C inline bool EncodeChannelRanges8(__m256 kmin, __m256 kmax, __m256 A,
                                                     __m256 D, __m256 inv_d, __m256i* a_out,
                                                     __m256i* b_out, __m256* lo_out,
                                                     __m256* hi_out) {
  __m256i a = ClampRangeCode8(_mm256_floor_ps(_mm256_mul_ps(_mm256_sub_ps(kmin, A), inv_d)),
                              _mm256_setzero_ps());
  __m256 ga, gb;
  if (!WalkRangeEnd8<true>(&a, &ga, kmin, _mm256_setzero_si256(), A, D)) return false;
  __m256i b = ClampRangeCode8(_mm256_ceil_ps(_mm256_mul_ps(_mm256_sub_ps(kmax, A), inv_d)),
                              _mm256_cvtepi32_ps(a));
  if (!WalkRangeEnd8<false>(&b, &gb, kmax, a, A, D)) return false;
  *a_out = a;
  *b_out = b;
  *lo_out = ga;
  *hi_out = gb;
  return true;
}

// EncodeChannelRangesTable's bytes and ranges, eight channels at a time, for the blocks
// every append makes: finite bounds, a head dim that is a multiple of 8, a step D > 0 and a
// grid exact in float. Returns false, having written nothing, for any other block (NaN or
// inf bounds, constant blocks, an |A| that dwarfs D by ~2^14 or a nonzero A whose last place
// lies far below D's), which the reference then codes.
TWL_TARGET_AVX2_F16C bool EncodeChannelRangesAvx2(const fp16_t* kmin, const fp16_t* kmax,
                                                  int32_t head_dim, uint8_t* record,
                                                  fp16_t* lo, fp16_t* hi) {
  constexpr int32_t kMaxDim = 256;
  if (head_dim % 8 != 0 || head_dim > kMaxDim) return false;
  alignas(32) float mn[kMaxDim], mx[kMaxDim];
  // FP16 exponent all ones is inf or NaN: such blocks go to the reference (NaN step).
  const __m128i exp16 = _mm_set1_epi16(0x7c00);
  __m128i special = _mm_setzero_si128();
  __m256 lo_all = _mm256_set1_ps(INFINITY), hi_all = _mm256_set1_ps(-INFINITY);
  for (int32_t j = 0; j < head_dim; j += 8) {
    const __m128i l = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kmin + j));
    const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(kmax + j));
    special = _mm_or_si128(special, _mm_cmpeq_epi16(_mm_and_si128(l, exp16), exp16));
    special = _mm_or_si128(special, _mm_cmpeq_epi16(_mm_and_si128(h, exp16), exp16));
    const __m256 lf = _mm256_cvtph_ps(l), hf = _mm256_cvtph_ps(h);
    _mm256_store_ps(mn + j, lf);
    _mm256_store_ps(mx + j, hf);
    lo_all = _mm256_min_ps(lo_all, lf);
    hi_all = _mm256_max_ps(hi_all, hf);
  }
  if (!_mm_testz_si128(special, special)) return false;
  alignas(32) float lanes_lo[8], lanes_hi[8];
  _mm256_store_ps(lanes_lo, lo_all);
  _mm256_store_ps(lanes_hi, hi_all);
  float A = lanes_lo[0], Z = lanes_hi[0];
  for (int k = 1; k < 8; ++k) {
    A = std::min(A, lanes_lo[k]);
    Z = std::max(Z, lanes_hi[k]);
  }
  // ChannelRangeGridOn keeps the first channel holding the smallest kmin; only a zero's sign
  // can tell equal values apart, and it is A's stored bits, so a zero A is looked up.
  fp16_t a_h = FloatToHalf(A);
  if (A == 0.0f) {
    int32_t j = 0;
    while (mn[j] != 0.0f) ++j;
    a_h = kmin[j];
  }
  A = HalfToFloat(a_h);  // the same value; and now the reference's zero too
  // Z's sign of zero never matters: ChannelRangeStep only compares it and subtracts A <= Z.
  const fp16_t d_h = ChannelRangeStep(A, Z);
  const float D = HalfToFloat(d_h);
  if (!(D > 0.0f) || !DequantExactInFloat(A, D, kRangeCodeMax)) return false;
  const __m256 av = _mm256_set1_ps(A), dv = _mm256_set1_ps(D);
  const __m256 inv_d = _mm256_set1_ps(1.0f / D);
  // The whole block is coded into locals first, so that a refusal writes nothing.
  alignas(32) uint8_t codes[2 * kMaxDim];
  alignas(16) fp16_t lo16[kMaxDim], hi16[kMaxDim];
  for (int32_t j = 0; j < head_dim; j += 8) {
    __m256i ca, cb;
    __m256 ga, gb;
    if (!EncodeChannelRanges8(_mm256_load_ps(mn + j), _mm256_load_ps(mx + j), av, dv, inv_d, &ca,
                              &cb, &ga, &gb)) {
      return false;
    }
    StoreCodes8(ca, codes + j);
    StoreCodes8(cb, codes + head_dim + j);
    // Grid values are FP16 values: the conversions are exact.
    _mm_store_si128(reinterpret_cast<__m128i*>(lo16 + j), _mm256_cvtps_ph(ga, kF16cRound));
    _mm_store_si128(reinterpret_cast<__m128i*>(hi16 + j), _mm256_cvtps_ph(gb, kF16cRound));
  }
  if (record) {
    std::memcpy(record, codes, size_t(2 * head_dim));
    StoreChannelRangeGrid(record, head_dim, a_h, d_h);
  }
  if (lo) std::memcpy(lo, lo16, sizeof(fp16_t) * size_t(head_dim));
  if (hi) std::memcpy(hi, hi16, sizeof(fp16_t) * size_t(head_dim));
  return true;
}

#endif  // __x86_64__

}  // namespace

bool EncodeChannelRangesVector(const fp16_t* kmin, const fp16_t* kmax, int32_t head_dim,
                               uint8_t* record, fp16_t* lo, fp16_t* hi) {
#if defined(__x86_64__)
  return HostSupports(HostSimd::kAvx2F16c) &&
         EncodeChannelRangesAvx2(kmin, kmax, head_dim, record, lo, hi);
#else
  (void)kmin, (void)kmax, (void)head_dim, (void)record, (void)lo, (void)hi;
  return false;
#endif
}

void EncodeChannelRangesHost(const fp16_t* kmin, const fp16_t* kmax, int32_t head_dim,
                             uint8_t* record, fp16_t* lo, fp16_t* hi) {
  if (ActiveHostSimd() == HostSimd::kAvx2F16c &&
      EncodeChannelRangesVector(kmin, kmax, head_dim, record, lo, hi)) {
    return;
  }
  EncodeChannelRangesTable(kmin, kmax, head_dim, record, lo, hi);
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

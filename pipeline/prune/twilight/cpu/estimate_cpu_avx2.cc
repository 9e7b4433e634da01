// AVX2 + F16C page-channel estimator (see estimate_cpu_avx2.h).
//
// Per page: the codes' 16 x (head_dim / 2) bytes are transposed so that one 16-byte vector
// holds a channel pair's codes for the 16 rows; each channel's k~ for the 16 rows is then
// two vectors of 8 (code * step16 + kmin, rounded to FP16 by one F16C conversion); the dot
// products keep the rows in lanes and run over the channels in order, as the baseline's
// channel-major loop does, so every row's sum is the same chain of FP32 multiplies and adds.
// AVX2 per function (TWL_TARGET_AVX2_F16C, core/host_simd.h), not per file.
#include "pipeline/prune/twilight/cpu/estimate_cpu_avx2.h"

#include <cstring>

#include "core/host_simd.h"
#include "core/quantize.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace twl {

#if defined(__x86_64__)

namespace {

constexpr int kRows = 16;
constexpr int kMaxDim = 256;
constexpr int kRound = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;

// One round of the byte transpose: x[i] and x[i + 8] interleaved by elements of kBytes.
template <int kBytes>
TWL_TARGET_AVX2_F16C inline void InterleaveRound(__m256i* x) {
  __m256i y[16];
  for (int i = 0; i < 8; ++i) {
    if constexpr (kBytes == 1) {
      y[2 * i] = _mm256_unpacklo_epi8(x[i], x[i + 8]);
      y[2 * i + 1] = _mm256_unpackhi_epi8(x[i], x[i + 8]);
    } else if constexpr (kBytes == 2) {
      y[2 * i] = _mm256_unpacklo_epi16(x[i], x[i + 8]);
      y[2 * i + 1] = _mm256_unpackhi_epi16(x[i], x[i + 8]);
    } else if constexpr (kBytes == 4) {
      y[2 * i] = _mm256_unpacklo_epi32(x[i], x[i + 8]);
      y[2 * i + 1] = _mm256_unpackhi_epi32(x[i], x[i + 8]);
    } else {
      y[2 * i] = _mm256_unpacklo_epi64(x[i], x[i + 8]);
      y[2 * i + 1] = _mm256_unpackhi_epi64(x[i], x[i + 8]);
    }
  }
  for (int i = 0; i < 16; ++i) x[i] = y[i];
}

// cols[c0 + c][r] = rows[r][c0 + c] for 32 columns: each 128-bit lane is a 16 x 16 byte
// transpose by four interleave rounds, which leave the rows in bit-reversed order unless
// they are loaded in it.
TWL_TARGET_AVX2_F16C void TransposeCodes32(const uint8_t* const* rows, int c0,
                                           uint8_t (*cols)[kRows]) {
  static constexpr int kBitReversed[16] = {0, 8, 4, 12, 2, 10, 6, 14, 1, 9, 5, 13, 3, 11, 7, 15};
  __m256i x[16];
  for (int i = 0; i < 16; ++i) {
    x[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(rows[kBitReversed[i]] + c0));
  }
  InterleaveRound<1>(x);
  InterleaveRound<2>(x);
  InterleaveRound<4>(x);
  InterleaveRound<8>(x);
  for (int c = 0; c < 16; ++c) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(cols[c0 + c]), _mm256_castsi256_si128(x[c]));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(cols[c0 + 16 + c]),
                     _mm256_extracti128_si256(x[c], 1));
  }
}

TWL_TARGET_AVX2_F16C inline __m256 RoundToHalf(__m256 v) {
  return _mm256_cvtph_ps(_mm256_cvtps_ph(v, kRound));
}

// kmin and step16 (PageChannelStepValue) of channels [j0, j0 + 8), and whether each
// channel's code * step16 + kmin are exact in float (bit k of the result).
TWL_TARGET_AVX2_F16C int ChannelSteps8(const float* mn, const float* mx, float inverse,
                                       int max_code, float* lo_out, float* step_out) {
  const __m256 lo = _mm256_loadu_ps(mn);
  const __m256 hi = _mm256_loadu_ps(mx);
  // FP16(kmax - kmin) by one F16C rounding where the float difference is exact, which
  // Knuth's two-sum proves (its error term is 0; inf and NaN give NaN and fail).
  const __m256 neg_lo = _mm256_xor_ps(lo, _mm256_set1_ps(-0.0f));
  const __m256 s = _mm256_add_ps(hi, neg_lo);
  const __m256 a = _mm256_sub_ps(s, neg_lo);
  const __m256 b = _mm256_sub_ps(s, a);
  const __m256 err = _mm256_add_ps(_mm256_sub_ps(hi, a), _mm256_sub_ps(neg_lo, b));
  const int range_exact = _mm256_movemask_ps(_mm256_cmp_ps(err, _mm256_setzero_ps(), _CMP_EQ_OQ));
  // range16 * FP16(1 / max_code): a product of two FP16 values, exact in float.
  __m256 step = RoundToHalf(_mm256_mul_ps(RoundToHalf(s), _mm256_set1_ps(inverse)));
  _mm256_storeu_ps(lo_out, lo);
  _mm256_storeu_ps(step_out, step);
  if (range_exact != 0xff) {
    alignas(32) float hi_v[8];
    _mm256_store_ps(hi_v, hi);
    for (int k = 0; k < 8; ++k) {
      if (!((range_exact >> k) & 1))
        step_out[k] = PageChannelStepValue(lo_out[k], hi_v[k], inverse);
    }
    step = _mm256_loadu_ps(step_out);
  }
  // core/quantize.cc's DequantExactInFloat, eight channels at once.
  const __m256i exp_mask = _mm256_set1_epi32(0xff);
  const __m256i zero_exp = _mm256_set1_epi32(240);
  const __m256 zero = _mm256_setzero_ps();
  __m256i e_lo = _mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(lo), 23), exp_mask);
  __m256i e_st = _mm256_and_si256(_mm256_srli_epi32(_mm256_castps_si256(step), 23), exp_mask);
  e_lo =
      _mm256_blendv_epi8(e_lo, zero_exp, _mm256_castps_si256(_mm256_cmp_ps(lo, zero, _CMP_EQ_OQ)));
  e_st = _mm256_blendv_epi8(e_st, zero_exp,
                            _mm256_castps_si256(_mm256_cmp_ps(step, zero, _CMP_EQ_OQ)));
  __m256i e = _mm256_min_epi32(e_lo, e_st);
  e = _mm256_min_epi32(_mm256_max_epi32(e, _mm256_set1_epi32(127 - 14)), zero_exp);
  const __m256 limit =
      _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(14)), 23));
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 bound =
      _mm256_add_ps(_mm256_and_ps(lo, abs_mask),
                    _mm256_mul_ps(_mm256_set1_ps(float(max_code)), _mm256_and_ps(step, abs_mask)));
  return _mm256_movemask_ps(_mm256_cmp_ps(bound, limit, _CMP_LT_OQ));
}

// k~ of one channel for the 16 rows whose codes (0..15) are the bytes of `codes`.
TWL_TARGET_AVX2_F16C inline void DequantChannel(__m128i codes, float lo, float step, bool exact,
                                                float* dst) {
  if (!exact) {  // kmin dwarfs the step: the double route, as PageChannelDequantTable
    alignas(16) uint8_t c[kRows];
    _mm_store_si128(reinterpret_cast<__m128i*>(c), codes);
    for (int r = 0; r < kRows; ++r) dst[r] = PageChannelDequantValue(c[r], step, lo);
    return;
  }
  const __m256 s = _mm256_set1_ps(step), m = _mm256_set1_ps(lo);
  const __m256 f0 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(codes));
  const __m256 f1 = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128(codes, 8)));
  _mm256_store_ps(dst, RoundToHalf(_mm256_add_ps(_mm256_mul_ps(f0, s), m)));
  _mm256_store_ps(dst + 8, RoundToHalf(_mm256_add_ps(_mm256_mul_ps(f1, s), m)));
}

// out[h][r] = sum over j in order of q[h][j] * deq[j][r] for kHeads heads (sums in registers).
template <int kHeads>
TWL_TARGET_AVX2_F16C void DotHeads(const float* deq, int d, const float* const* q, int rows,
                                   float* const* out) {
  __m256 acc[kHeads][2];
  for (int h = 0; h < kHeads; ++h) acc[h][0] = acc[h][1] = _mm256_setzero_ps();
  for (int j = 0; j < d; ++j) {
    const __m256 k0 = _mm256_load_ps(deq + j * kRows), k1 = _mm256_load_ps(deq + j * kRows + 8);
    for (int h = 0; h < kHeads; ++h) {
      const __m256 w = _mm256_broadcast_ss(q[h] + j);
      acc[h][0] = _mm256_add_ps(acc[h][0], _mm256_mul_ps(w, k0));
      acc[h][1] = _mm256_add_ps(acc[h][1], _mm256_mul_ps(w, k1));
    }
  }
  for (int h = 0; h < kHeads; ++h) {
    if (rows == kRows) {
      _mm256_storeu_ps(out[h], acc[h][0]);
      _mm256_storeu_ps(out[h] + 8, acc[h][1]);
    } else {
      alignas(32) float all[kRows];
      _mm256_store_ps(all, acc[h][0]);
      _mm256_store_ps(all + 8, acc[h][1]);
      std::memcpy(out[h], all, sizeof(float) * size_t(rows));
    }
  }
}

TWL_TARGET_AVX2_F16C void EstimateFourBit(const PageGeometry& g, const float* const* q, int heads,
                                          const QuantKView& qk, int64_t block, int rows,
                                          float* const* out) {
  const int d = g.head_dim;
  alignas(32) float mn[kMaxDim], mx[kMaxDim];  // the channel ranges (FP16 values)
  if (qk.range_lo) {  // a host store's decoded ranges: eight conversions per instruction
    const fp16_t* lo16 = qk.range_lo + block * d;
    const fp16_t* hi16 = qk.range_hi + block * d;
    for (int j = 0; j < d; j += 8) {
      _mm256_store_ps(mn + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(lo16 + j))));
      _mm256_store_ps(mx + j, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(hi16 + j))));
    }
  } else {
    PageChannelRangeValues(g, qk, block, mn, mx);
  }
  const float inverse = HalfToFloat(PageChannelInverseMaxCodeHalf(g));
  alignas(32) float lo[kMaxDim], step[kMaxDim];
  uint32_t exact[kMaxDim / 32];
  for (int j0 = 0; j0 < d; j0 += 32) {
    uint32_t bits = 0;
    for (int k = 0; k < 32; k += 8) {
      bits |= uint32_t(ChannelSteps8(mn + j0 + k, mx + j0 + k, inverse, g.MaxCode(), lo + j0 + k,
                                     step + j0 + k))
              << k;
    }
    exact[j0 / 32] = bits;
  }
  // Rows past `rows` read zero codes; their sums are not written out.
  static constexpr uint8_t kZeroRow[kMaxDim / 2] = {};
  const uint8_t* row_codes[kRows];
  for (int r = 0; r < kRows; ++r) row_codes[r] = r < rows ? qk.Codes(g, block, r) : kZeroRow;
  alignas(32) uint8_t cols[kMaxDim / 2][kRows];
  for (int c0 = 0; c0 < d / 2; c0 += 32) TransposeCodes32(row_codes, c0, cols);
  alignas(32) float deq[kMaxDim * kRows];
  const __m128i low_nibble = _mm_set1_epi8(0x0f);
  for (int b = 0; b < d / 2; ++b) {
    const __m128i col = _mm_load_si128(reinterpret_cast<const __m128i*>(cols[b]));
    for (int half = 0; half < 2; ++half) {
      const int j = 2 * b + half;
      const __m128i codes = _mm_and_si128(half == 0 ? col : _mm_srli_epi16(col, 4), low_nibble);
      DequantChannel(codes, lo[j], step[j], (exact[j / 32] >> (j % 32)) & 1u, deq + j * kRows);
    }
  }
  for (int h = 0; h < heads; h += 4) {
    switch (heads - h < 4 ? heads - h : 4) {
      case 1:
        DotHeads<1>(deq, d, q + h, rows, out + h);
        break;
      case 2:
        DotHeads<2>(deq, d, q + h, rows, out + h);
        break;
      case 3:
        DotHeads<3>(deq, d, q + h, rows, out + h);
        break;
      default:
        DotHeads<4>(deq, d, q + h, rows, out + h);
        break;
    }
  }
}

}  // namespace

bool EstimatePageChannelBlockAvx2(const PageGeometry& g, const float* const* q, int32_t heads,
                                  const QuantKView& qk, int64_t block, int32_t rows,
                                  float* const* out) {
  // Whole 32-byte code loads per row: head_dim a multiple of 64 (64, 128, 192, 256).
  if (g.k_bits != 4 || g.head_dim % 64 != 0 || g.head_dim > kMaxDim || rows < 1 || rows > kRows ||
      heads < 1) {
    return false;
  }
  EstimateFourBit(g, q, heads, qk, block, rows, out);
  return true;
}

#else  // not x86-64: the baseline loops only

bool EstimatePageChannelBlockAvx2(const PageGeometry&, const float* const*, int32_t,
                                  const QuantKView&, int64_t, int32_t, float* const*) {
  return false;
}

#endif

}  // namespace twl

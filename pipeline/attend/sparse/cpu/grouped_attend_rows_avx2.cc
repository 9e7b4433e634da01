// AVX2 + F16C per-row loops of the grouped attention (see grouped_attend_rows.h): a K/V row
// converted eight elements per instruction, the eight partial sums of a dot product in one
// register, the group's dot products side by side, and the V sums held in registers over a
// tile of rows. AVX2 per function (TWL_TARGET_AVX2_F16C, core/host_simd.h), not per file.
#include <cstring>
#include <vector>

#include "core/host_simd.h"
#include "core/page_layout.h"
#include "pipeline/attend/sparse/cpu/grouped_attend_rows.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace twl {

#if defined(__x86_64__)

namespace {

// Eight elements of a K/V row from element k, as floats: every FP16 and BF16 value is a
// float, so the conversion is exact either way.
TWL_TARGET_AVX2_F16C inline __m256 Load8(const fp16_t* row, int32_t k, bool bf16) {
  const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + k));
  return bf16 ? _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16))
              : _mm256_cvtph_ps(h);
}

// KvRowToFloat, the whole row (the paths whose head_dim is not a multiple of 8 or 16).
TWL_TARGET_AVX2_F16C void RowToFloat(const PageGeometry& g, const fp16_t* src, float* dst) {
  const int32_t d = g.head_dim;
  const bool bf16 = g.kv_dtype == kKvBf16;
  int32_t k = 0;
  for (; k + 8 <= d; k += 8) _mm256_storeu_ps(dst + k, Load8(src, k, bf16));
  for (; k < d; ++k) dst[k] = bf16 ? Bf16ToFloat(src[k]) : HalfToFloatBranchless(src[k]);
}

// The baseline's Dot (grouped_attend_rows.cc): lane k is its partial sum acc[k].
TWL_TARGET_AVX2_F16C float Dot(const float* a, const float* b, int32_t n) {
  __m256 acc = _mm256_setzero_ps();
  int32_t j = 0;
  for (; j + 8 <= n; j += 8) {
    acc = _mm256_add_ps(acc, _mm256_mul_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j)));
  }
  float tail = 0.0f;
  for (; j < n; ++j) tail += a[j] * b[j];
  alignas(32) float l[8];
  _mm256_store_ps(l, acc);
  return ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7])) + tail;
}

// Dot's lane sums for kHeads query rows at once: each head's eight partial sums run over the
// row's elements in order, as in Dot, but the heads' chains are independent and interleaved,
// and the row is converted once per eight elements instead of stored and read back.
template <int kHeads>
TWL_TARGET_AVX2_F16C inline void DotHeads8(const fp16_t* row, int32_t d, bool bf16,
                                           const float* q, float* out, size_t stride) {
  __m256 acc[kHeads];
  for (int h = 0; h < kHeads; ++h) acc[h] = _mm256_setzero_ps();
  for (int32_t k = 0; k < d; k += 8) {
    const __m256 r = Load8(row, k, bf16);
    for (int h = 0; h < kHeads; ++h) {
      const __m256 qh = _mm256_loadu_ps(q + size_t(h) * size_t(d) + size_t(k));
      acc[h] = _mm256_add_ps(acc[h], _mm256_mul_ps(qh, r));
    }
  }
  for (int h = 0; h < kHeads; ++h) {
    alignas(32) float l[8];
    _mm256_store_ps(l, acc[h]);
    out[size_t(h) * stride] =
        ((l[0] + l[4]) + (l[1] + l[5])) + ((l[2] + l[6]) + (l[3] + l[7])) + 0.0f;  // Dot's tail
  }
}

// acc[h][k0, k0 + 16) += w_h(i) * row i [k0, k0 + 16) for rows [i0, i1), in row order, the
// sums held in registers over the rows (one load and store per tile, not per row).
template <int kHeads>
TWL_TARGET_AVX2_F16C inline void AccumulateTile16(const fp16_t* const* v_rows, int32_t i0,
                                                  int32_t i1, int32_t k0, bool bf16,
                                                  const float* weights, size_t n,
                                                  float* const* acc) {
  __m256 a[kHeads][2];
  for (int h = 0; h < kHeads; ++h) {
    a[h][0] = _mm256_loadu_ps(acc[h] + k0);
    a[h][1] = _mm256_loadu_ps(acc[h] + k0 + 8);
  }
  for (int32_t i = i0; i < i1; ++i) {
    const __m256 r0 = Load8(v_rows[i], k0, bf16), r1 = Load8(v_rows[i], k0 + 8, bf16);
    for (int h = 0; h < kHeads; ++h) {
      const __m256 w = _mm256_broadcast_ss(weights + size_t(h) * n + size_t(i));
      a[h][0] = _mm256_add_ps(a[h][0], _mm256_mul_ps(w, r0));
      a[h][1] = _mm256_add_ps(a[h][1], _mm256_mul_ps(w, r1));
    }
  }
  for (int h = 0; h < kHeads; ++h) {
    _mm256_storeu_ps(acc[h] + k0, a[h][0]);
    _mm256_storeu_ps(acc[h] + k0 + 8, a[h][1]);
  }
}

// Rows per tile of the accumulation: 32 FP16 rows of d = 128 are 8 KB, which stay in L1
// while each 16-element slice of the accumulators passes over them.
constexpr int32_t kAccumulateTile = 32;

}  // namespace

TWL_TARGET_AVX2_F16C void ScoreRowsAvx2(const PageGeometry& g, const fp16_t* const* k_rows,
                                        int32_t n, const float* q, int32_t group, float* scores) {
  const int32_t d = g.head_dim;
  const bool bf16 = g.kv_dtype == kKvBf16;
  if (d % 8 == 0) {
    for (int32_t i = 0; i < n; ++i) {
      if (i + kRowPrefetchDistance < n) PrefetchRow(g, k_rows[i + kRowPrefetchDistance]);
      int32_t j = 0;
      for (; j + 4 <= group; j += 4) {
        DotHeads8<4>(k_rows[i], d, bf16, q + size_t(j) * size_t(d),
                     scores + size_t(j) * size_t(n) + size_t(i), size_t(n));
      }
      for (; j < group; ++j) {
        DotHeads8<1>(k_rows[i], d, bf16, q + size_t(j) * size_t(d),
                     scores + size_t(j) * size_t(n) + size_t(i), size_t(n));
      }
    }
    return;
  }
  thread_local std::vector<float> row;
  row.resize(size_t(d));
  for (int32_t i = 0; i < n; ++i) {
    if (i + kRowPrefetchDistance < n) PrefetchRow(g, k_rows[i + kRowPrefetchDistance]);
    RowToFloat(g, k_rows[i], row.data());
    for (int32_t j = 0; j < group; ++j) {
      scores[size_t(j) * size_t(n) + size_t(i)] = Dot(q + size_t(j) * size_t(d), row.data(), d);
    }
  }
}

TWL_TARGET_AVX2_F16C void AccumulateRowsAvx2(const PageGeometry& g, const fp16_t* const* v_rows,
                                             int32_t n, const float* weights, int32_t group,
                                             float* const* acc) {
  const int32_t d = g.head_dim;
  if (d % 16 == 0) {
    const bool bf16 = g.kv_dtype == kKvBf16;
    for (int32_t i0 = 0; i0 < n; i0 += kAccumulateTile) {
      const int32_t i1 = i0 + kAccumulateTile < n ? i0 + kAccumulateTile : n;
      // The next tile's rows, asked for while this one is summed.
      for (int32_t i = i1; i < n && i < i1 + kAccumulateTile; ++i) PrefetchRow(g, v_rows[i]);
      for (int32_t j = 0; j < group;) {
        const float* w = weights + size_t(j) * size_t(n);
        const int32_t heads = group - j >= 4 ? 4 : 1;
        for (int32_t k0 = 0; k0 < d; k0 += 16) {
          if (heads == 4) {
            AccumulateTile16<4>(v_rows, i0, i1, k0, bf16, w, size_t(n), acc + j);
          } else {
            AccumulateTile16<1>(v_rows, i0, i1, k0, bf16, w, size_t(n), acc + j);
          }
        }
        j += heads;
      }
    }
    return;
  }
  thread_local std::vector<float> row;
  row.resize(size_t(d));
  for (int32_t i = 0; i < n; ++i) {
    if (i + kRowPrefetchDistance < n) PrefetchRow(g, v_rows[i + kRowPrefetchDistance]);
    RowToFloat(g, v_rows[i], row.data());
    for (int32_t j = 0; j < group; ++j) {
      const float w = weights[size_t(j) * size_t(n) + size_t(i)];
      const __m256 wv = _mm256_set1_ps(w);
      float* a = acc[j];
      int32_t k = 0;
      for (; k + 8 <= d; k += 8) {
        _mm256_storeu_ps(a + k, _mm256_add_ps(_mm256_loadu_ps(a + k),
                                              _mm256_mul_ps(wv, _mm256_loadu_ps(row.data() + k))));
      }
      for (; k < d; ++k) a[k] += w * row[size_t(k)];
    }
  }
}

#else  // another ISA: never selected (core/host_simd.h), the baseline if called

void ScoreRowsAvx2(const PageGeometry& g, const fp16_t* const* k_rows, int32_t n, const float* q,
                   int32_t group, float* scores) {
  ScoreRowsBaseline(g, k_rows, n, q, group, scores);
}
void AccumulateRowsAvx2(const PageGeometry& g, const fp16_t* const* v_rows, int32_t n,
                        const float* weights, int32_t group, float* const* acc) {
  AccumulateRowsBaseline(g, v_rows, n, weights, group, acc);
}

#endif

}  // namespace twl

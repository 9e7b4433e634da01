// AVX2 + F16C per-row loops of the grouped attention (see grouped_attend_rows.h): a K/V row
// converted eight elements per instruction, the eight partial sums of a dot product in one
// register. AVX2 per function (TWL_TARGET_AVX2_F16C, core/host_simd.h), not per file.
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

// KvRowToFloat: every FP16 and BF16 value is a float, so the conversion is exact either way.
TWL_TARGET_AVX2_F16C void RowToFloat(const PageGeometry& g, const fp16_t* src, float* dst) {
  const int32_t d = g.head_dim;
  int32_t k = 0;
  if (g.kv_dtype == kKvBf16) {
    for (; k + 8 <= d; k += 8) {
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k));
      _mm256_storeu_ps(dst + k,
                       _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16)));
    }
    for (; k < d; ++k) dst[k] = Bf16ToFloat(src[k]);
    return;
  }
  for (; k + 8 <= d; k += 8) {
    _mm256_storeu_ps(dst + k,
                     _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k))));
  }
  for (; k < d; ++k) dst[k] = HalfToFloatBranchless(src[k]);
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

}  // namespace

TWL_TARGET_AVX2_F16C void ScoreRowsAvx2(const PageGeometry& g, const fp16_t* const* k_rows,
                                        int32_t n, const float* q, int32_t group, float* scores) {
  const int32_t d = g.head_dim;
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

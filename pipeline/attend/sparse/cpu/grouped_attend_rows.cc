// Baseline per-row loops of the grouped attention (see grouped_attend_rows.h).
#include "pipeline/attend/sparse/cpu/grouped_attend_rows.h"

#include <vector>

#include "core/page_layout.h"

namespace twl {
namespace {

// a . b over n floats with eight partial sums: one running sum is a dependent chain the
// compiler may not reorder, eight fill two vector registers. The AVX2 build keeps the eight
// in one register and ends with the same sums.
float Dot(const float* a, const float* b, int32_t n) {
  float acc[8] = {};
  int32_t j = 0;
  for (; j + 8 <= n; j += 8) {
    for (int32_t k = 0; k < 8; ++k) acc[k] += a[j + k] * b[j + k];
  }
  float tail = 0.0f;
  for (; j < n; ++j) tail += a[j] * b[j];
  return ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail;
}

}  // namespace

void ScoreRowsBaseline(const PageGeometry& g, const fp16_t* const* k_rows, int32_t n,
                       const float* q, int32_t group, float* scores) {
  const int32_t d = g.head_dim;
  thread_local std::vector<float> row;
  row.resize(size_t(d));
  for (int32_t i = 0; i < n; ++i) {
    if (i + kRowPrefetchDistance < n) PrefetchRow(g, k_rows[i + kRowPrefetchDistance]);
    KvRowToFloat(g, k_rows[i], row.data());  // once for the group
    for (int32_t j = 0; j < group; ++j) {
      scores[size_t(j) * size_t(n) + size_t(i)] = Dot(q + size_t(j) * size_t(d), row.data(), d);
    }
  }
}

void AccumulateRowsBaseline(const PageGeometry& g, const fp16_t* const* v_rows, int32_t n,
                            const float* weights, int32_t group, float* const* acc) {
  const int32_t d = g.head_dim;
  thread_local std::vector<float> row;
  row.resize(size_t(d));
  for (int32_t i = 0; i < n; ++i) {
    if (i + kRowPrefetchDistance < n) PrefetchRow(g, v_rows[i + kRowPrefetchDistance]);
    KvRowToFloat(g, v_rows[i], row.data());
    for (int32_t j = 0; j < group; ++j) {
      const float w = weights[size_t(j) * size_t(n) + size_t(i)];
      float* a = acc[j];
      for (int32_t k = 0; k < d; ++k) a[k] += w * row[size_t(k)];
    }
  }
}

}  // namespace twl

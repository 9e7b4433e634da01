// Small per-head helpers shared by the CPU stages (select, prune, attend) and the references.
#pragma once

#include <cmath>
#include <vector>

#include "core/stage_views.h"

namespace twl {

// The query of head `qh` of sequence `s` as floats, multiplied by `scale`.
inline std::vector<float> QueryRow(const PageGeometry& g, const BatchView& b, const QueryView& q,
                                   int32_t s, int32_t qh, float scale) {
  std::vector<float> row(size_t(g.head_dim));
  const fp16_t* src = q.q + (int64_t(s) * b.num_q_heads + qh) * g.head_dim;
  // q is the caller's buffer (host decode): any address, so loads go through memcpy.
  for (int32_t j = 0; j < g.head_dim; ++j) row[size_t(j)] = HalfToFloat(LoadU16(src, j)) * scale;
  return row;
}

inline float SoftmaxScale(const PageGeometry& g, float requested) {
  return requested > 0.0f ? requested : 1.0f / std::sqrt(float(g.head_dim));
}

// Exact score q . k for the stored K (q already scaled).
inline float ExactScore(const PageGeometry& g, const float* q, const FpKvView& kv, int64_t block,
                        int32_t row) {
  const fp16_t* k = kv.K(g, block, row);
  float acc = 0.0f;
  for (int32_t j = 0; j < g.head_dim; ++j) acc += q[j] * g.KvToFloat(k[j]);
  return acc;
}

}  // namespace twl

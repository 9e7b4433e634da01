// The per-row work of the host's grouped attention (grouped_attend_cpu.cc): a GQA group's
// scores against K rows, and the weighted sum of V rows into the group's accumulators. Two
// builds of each: the baseline loops, and AVX2 + F16C (the same FP32 operations in the same
// order per lane, so the same bits: core/host_simd.h). Internal to attend/sparse/cpu.
#pragma once

#include <cstdint>

#include "core/host_prefetch.h"
#include "core/stage_views.h"

namespace twl {

// Rows ahead of the one being converted whose bytes are asked of the cache: kept rows are
// scattered over the pool (a KV head's blocks lie num_kv_heads blocks apart, each a new 4 KB
// page the hardware prefetcher does not follow), so each row would otherwise wait on memory.
constexpr int32_t kRowPrefetchDistance = 4;
inline void PrefetchRow(const PageGeometry& g, const fp16_t* row) {
  PrefetchBytes(row, size_t(g.head_dim) * sizeof(fp16_t));
}

// scores[j * n + i] = q_j . K row i for the group's j < group query rows q[j * head_dim ..].
void ScoreRowsBaseline(const PageGeometry& g, const fp16_t* const* k_rows, int32_t n,
                       const float* q, int32_t group, float* scores);
void ScoreRowsAvx2(const PageGeometry& g, const fp16_t* const* k_rows, int32_t n, const float* q,
                   int32_t group, float* scores);

// acc[j][k] += weights[j * n + i] * V row i [k], over rows i in order.
void AccumulateRowsBaseline(const PageGeometry& g, const fp16_t* const* v_rows, int32_t n,
                            const float* weights, int32_t group, float* const* acc);
void AccumulateRowsAvx2(const PageGeometry& g, const fp16_t* const* v_rows, int32_t n,
                        const float* weights, int32_t group, float* const* acc);

}  // namespace twl

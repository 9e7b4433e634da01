// GQA-grouped, chunked attention on the host (see grouped_attend_cpu.h).
#include "pipeline/attend/sparse/cpu/grouped_attend_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/head_math.h"
#include "core/host_exp.h"
#include "core/host_simd.h"
#include "oneapi/tbb/parallel_for.h"
#include "pipeline/attend/sparse/cpu/grouped_attend_rows.h"
#include "pipeline/attend/sparse/cpu/sparse_attend_cpu.h"

namespace twl {
namespace {

// Tokens per work item: long enough that a chunk's fixed costs (its queries, its partial
// state) vanish, short enough that one sequence at 16k+ gives every core several chunks.
constexpr int32_t kChunkTokens = 1024;

// One work item: tokens [begin, end) of unit (s, h)'s list.
struct Chunk {
  int32_t unit;
  int32_t begin, end;
};

// A chunk's partial softmax state per query head of the group: its max score m, the sum l
// of exp(score - m) and the unnormalized output acc[d] = sum exp(score - m) v.
struct PartialLayout {
  int32_t group, d;
  size_t PerChunk() const { return size_t(group) * size_t(d + 2); }
  float* M(float* base, int32_t j) const { return base + size_t(j) * size_t(d + 2); }
  float* L(float* base, int32_t j) const { return M(base, j) + 1; }
  float* Acc(float* base, int32_t j) const { return M(base, j) + 2; }
};

void AttendChunk(const PageGeometry& g, const BatchView& batch, const QueryView& q,
                 const FpKvView& kv, const KeptView* kept, float scale, const Chunk& c,
                 const PartialLayout& lay, float* state) {
  const int32_t group = lay.group, d = g.head_dim;
  const int32_t s = c.unit / g.num_kv_heads, h = c.unit % g.num_kv_heads;
  const int32_t n = c.end - c.begin;
  const int32_t* positions =
      kept ? kept->tokens + int64_t(c.unit) * kept->max_kept : nullptr;
  thread_local std::vector<float> qf, scores;
  thread_local std::vector<const fp16_t*> k_rows, v_rows;
  thread_local std::vector<float*> acc;
  qf.resize(size_t(group) * size_t(d));
  scores.resize(size_t(group) * size_t(n));
  k_rows.resize(size_t(n));
  v_rows.resize(size_t(n));
  acc.resize(size_t(group));
  for (int32_t j = 0; j < group; ++j) {
    const std::vector<float> r = QueryRow(g, batch, q, s, h * group + j, scale);
    std::copy(r.begin(), r.end(), qf.begin() + ptrdiff_t(j) * d);
  }
  for (int32_t i = 0; i < n; ++i) {
    const int32_t t = positions ? positions[c.begin + i] : c.begin + i;
    const int64_t block = g.BlockId(batch.PageId(s, t / g.page_size), h);
    k_rows[size_t(i)] = kv.K(g, block, t % g.page_size);
    v_rows[size_t(i)] = kv.V(g, block, t % g.page_size);
  }
  // Scores: each K row converted once for the group.
  const bool wide = ActiveHostSimd() == HostSimd::kAvx2F16c;
  (wide ? ScoreRowsAvx2 : ScoreRowsBaseline)(g, k_rows.data(), n, qf.data(), group,
                                             scores.data());
  // Weights against the chunk's own max (std::max as the reference: a NaN score is skipped
  // by the max and poisons the sum).
  for (int32_t j = 0; j < group; ++j) {
    float* w = &scores[size_t(j) * size_t(n)];
    float m = -std::numeric_limits<float>::infinity();
    for (int32_t i = 0; i < n; ++i) m = std::max(m, w[i]);
    ExpMinusMax(w, size_t(n), m);
    float l = 0.0f;
    for (int32_t i = 0; i < n; ++i) l += w[i];
    *lay.M(state, j) = m;
    *lay.L(state, j) = l;
    acc[size_t(j)] = lay.Acc(state, j);
    std::fill(acc[size_t(j)], acc[size_t(j)] + d, 0.0f);
  }
  // Values: each V row converted once for the group.
  (wide ? AccumulateRowsAvx2 : AccumulateRowsBaseline)(g, v_rows.data(), n, scores.data(),
                                                       group, acc.data());
}

}  // namespace

absl::Status GroupedAttentionCpu(const PageGeometry& g, const BatchView& batch,
                                 const QueryView& q, const FpKvView& kv, const KeptView* kept,
                                 const OutputView& out, float softmax_scale) {
  if (absl::Status st = CheckAttentionInputs(g, batch, q, kv, kept, out.out); !st.ok()) {
    return st;
  }
  const int32_t group = batch.num_q_heads / g.num_kv_heads, d = g.head_dim;
  const int32_t units = batch.num_seqs * g.num_kv_heads;
  const float scale = SoftmaxScale(g, softmax_scale);
  // Work items: every unit's token list cut into chunks (an empty list gets none).
  std::vector<Chunk> chunks;
  std::vector<int32_t> first_chunk(size_t(units) + 1, 0);
  for (int32_t u = 0; u < units; ++u) {
    first_chunk[size_t(u)] = int32_t(chunks.size());
    const int32_t n = kept ? kept->count[u] : batch.seq_len[u / g.num_kv_heads];
    for (int32_t b = 0; b < n; b += kChunkTokens) {
      chunks.push_back(Chunk{u, b, std::min(n, b + kChunkTokens)});
    }
  }
  first_chunk[size_t(units)] = int32_t(chunks.size());
  const PartialLayout lay{group, d};
  std::vector<float> states(chunks.size() * lay.PerChunk());
  tbb::parallel_for(size_t(0), chunks.size(), [&](size_t c) {
    AttendChunk(g, batch, q, kv, kept, scale, chunks[c], lay, &states[c * lay.PerChunk()]);
  });
  // Merge each unit's chunks by their maxima, normalize, round to FP16.
  tbb::parallel_for(0, units, [&](int32_t u) {
    const int32_t s = u / g.num_kv_heads, h = u % g.num_kv_heads;
    std::vector<float> o(static_cast<size_t>(d));
    for (int32_t j = 0; j < group; ++j) {
      const int32_t c0 = first_chunk[size_t(u)], c1 = first_chunk[size_t(u) + 1];
      float m = -std::numeric_limits<float>::infinity();
      for (int32_t c = c0; c < c1; ++c) m = std::max(m, *lay.M(&states[size_t(c) * lay.PerChunk()], j));
      float l = 0.0f;
      std::fill(o.begin(), o.end(), 0.0f);
      for (int32_t c = c0; c < c1; ++c) {
        float* st = &states[size_t(c) * lay.PerChunk()];
        const float f = std::exp(*lay.M(st, j) - m);
        // A chunk that weighs nothing is skipped (one whose scores were all -inf has NaN
        // sums, which the reference's global max never forms); an all -inf unit still
        // gives NaN (f), as the reference.
        if (f == 0.0f) continue;
        l += f * *lay.L(st, j);
        const float* acc = lay.Acc(st, j);
        for (int32_t k = 0; k < d; ++k) o[size_t(k)] += f * acc[k];
      }
      const float inv = l > 0.0f ? 1.0f / l : 0.0f;
      const int64_t at = (int64_t(s) * batch.num_q_heads + h * group + j) * d;
      // out is the caller's buffer: any address.
      for (int32_t k = 0; k < d; ++k) StoreU16(out.out, at + k, FloatToHalf(o[size_t(k)] * inv));
    }
  });
  return absl::OkStatus();
}

}  // namespace twl

// Sparse attention on the host (see sparse_attend_cpu.h).
#include "pipeline/attend/sparse/cpu/sparse_attend_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/head_math.h"
#include "core/validate.h"
#include "oneapi/tbb/parallel_for.h"

namespace twl {
namespace {

// Attention of one query head over `count` token positions (all tokens when positions is
// null), FP32 accumulation, written to out[head_dim].
void AttendHead(const PageGeometry& g, const BatchView& batch, const QueryView& q,
                const FpKvView& kv, int32_t s, int32_t qh, const int32_t* positions,
                int32_t count, float scale, float* out) {
  const int32_t h = qh / (batch.num_q_heads / g.num_kv_heads);
  const std::vector<float> qr = QueryRow(g, batch, q, s, qh, scale);
  std::vector<float> w(static_cast<size_t>(count));
  std::vector<int64_t> block(static_cast<size_t>(count));
  std::vector<int32_t> row(static_cast<size_t>(count));
  float mx = -std::numeric_limits<float>::infinity();
  for (int32_t i = 0; i < count; ++i) {
    const int32_t t = positions ? positions[i] : i;
    block[size_t(i)] = g.BlockId(batch.PageId(s, t / g.page_size), h);
    row[size_t(i)] = t % g.page_size;
    w[size_t(i)] = ExactScore(g, qr.data(), kv, block[size_t(i)], row[size_t(i)]);
    mx = std::max(mx, w[size_t(i)]);
  }
  float sum = 0.0f;
  for (float& x : w) {
    x = std::exp(x - mx);
    sum += x;
  }
  std::fill(out, out + g.head_dim, 0.0f);
  for (int32_t i = 0; i < count; ++i) {
    const fp16_t* v = kv.V(g, block[size_t(i)], row[size_t(i)]);
    for (int32_t j = 0; j < g.head_dim; ++j) out[j] += w[size_t(i)] * g.KvToFloat(v[j]);
  }
  const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
  for (int32_t j = 0; j < g.head_dim; ++j) out[j] *= inv;
}

// Runs every (sequence, query head) and hands the FP32 row to `emit`.
template <typename Emit>
void ForEachHead(const PageGeometry& g, const BatchView& batch, const QueryView& q,
                 const FpKvView& kv, const KeptView* kept, float scale, Emit emit) {
  const int32_t group = batch.num_q_heads / g.num_kv_heads;
  tbb::parallel_for(0, batch.num_seqs * batch.num_q_heads, [&](int32_t item) {
    const int32_t s = item / batch.num_q_heads;
    const int32_t qh = item % batch.num_q_heads;
    std::vector<float> row(static_cast<size_t>(g.head_dim));
    if (kept) {
      const int64_t kv_item = int64_t(s) * g.num_kv_heads + qh / group;
      AttendHead(g, batch, q, kv, s, qh, kept->tokens + kv_item * kept->max_kept,
                 kept->count[kv_item], scale, row.data());
    } else {
      AttendHead(g, batch, q, kv, s, qh, nullptr, batch.seq_len[s], scale, row.data());
    }
    emit(int64_t(item) * g.head_dim, row);
  });
}

}  // namespace

absl::Status CheckAttentionInputs(const PageGeometry& g, const BatchView& batch,
                                  const QueryView& q, const FpKvView& kv, const KeptView* kept,
                                  const void* out) {
  if (absl::Status st = ValidateGeometry(g); !st.ok()) return st;
  if (absl::Status st = ValidateBatch(g, batch, true); !st.ok()) return st;
  if (!q.q || !kv.kv || !out) {
    return absl::InvalidArgumentError("attention: q, kv and out must not be null");
  }
  if (kept && (!kept->tokens || !kept->count)) {
    return absl::InvalidArgumentError("attention: kept set must not be null");
  }
  if (kept) {
    for (int32_t item = 0; item < batch.num_seqs * g.num_kv_heads; ++item) {
      const int32_t s = item / g.num_kv_heads;
      const int32_t n = kept->count[item];
      if (n < 0 || n > kept->max_kept) {
        return absl::InvalidArgumentError(absl::StrFormat("attention: kept count %d out of range", n));
      }
      const int32_t* t = kept->tokens + int64_t(item) * kept->max_kept;
      for (int32_t i = 0; i < n; ++i) {
        if (t[i] < 0 || t[i] >= batch.seq_len[s]) {
          return absl::InvalidArgumentError(
              absl::StrFormat("attention: kept token %d outside sequence %d", t[i], s));
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::Status SparseAttentionRefF32(const PageGeometry& g, const BatchView& batch,
                                   const QueryView& q, const FpKvView& kv, const KeptView& kept,
                                   float* out, float softmax_scale) {
  if (absl::Status st = CheckAttentionInputs(g, batch, q, kv, &kept, out); !st.ok()) return st;
  ForEachHead(g, batch, q, kv, &kept, SoftmaxScale(g, softmax_scale),
              [&](int64_t at, const std::vector<float>& row) {
                std::copy(row.begin(), row.end(), out + at);
              });
  return absl::OkStatus();
}

absl::Status SparseAttentionRef(const PageGeometry& g, const BatchView& batch, const QueryView& q,
                                const FpKvView& kv, const KeptView& kept, const OutputView& out,
                                float softmax_scale) {
  if (absl::Status st = CheckAttentionInputs(g, batch, q, kv, &kept, out.out); !st.ok()) return st;
  ForEachHead(g, batch, q, kv, &kept, SoftmaxScale(g, softmax_scale),
              [&](int64_t at, const std::vector<float>& row) {
                // out is the caller's buffer: any address.
                for (size_t j = 0; j < row.size(); ++j) {
                  StoreU16(out.out, at + int64_t(j), FloatToHalf(row[j]));
                }
              });
  return absl::OkStatus();
}

absl::Status DenseAttentionRef(const PageGeometry& g, const BatchView& batch, const QueryView& q,
                               const FpKvView& kv, const OutputView& out, float softmax_scale) {
  if (absl::Status st = CheckAttentionInputs(g, batch, q, kv, nullptr, out.out); !st.ok()) return st;
  ForEachHead(g, batch, q, kv, nullptr, SoftmaxScale(g, softmax_scale),
              [&](int64_t at, const std::vector<float>& row) {
                // out is the caller's buffer: any address.
                for (size_t j = 0; j < row.size(); ++j) {
                  StoreU16(out.out, at + int64_t(j), FloatToHalf(row[j]));
                }
              });
  return absl::OkStatus();
}

}  // namespace twl

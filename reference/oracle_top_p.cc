// Oracle top-p and true kept mass on exact FP16 scores (see oracle_top_p.h).
#include "reference/oracle_top_p.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "core/head_math.h"
#include "core/validate.h"
#include "oneapi/tbb/parallel_for.h"
#include "pipeline/cpu/for_each_unit.h"

namespace twl {
namespace {

// Unnormalized exact softmax weights exp(s - max) of every token of (s, qh).
std::vector<float> ExactWeights(const PageGeometry& g, const BatchView& batch, const QueryView& q,
                                const FpKvView& kv, int32_t s, int32_t qh) {
  const int32_t h = qh / (batch.num_q_heads / g.num_kv_heads);
  const std::vector<float> qr = QueryRow(g, batch, q, s, qh, SoftmaxScale(g, 0.0f));
  std::vector<float> w(static_cast<size_t>(batch.seq_len[s]));
  float mx = -std::numeric_limits<float>::infinity();
  for (int32_t t = 0; t < batch.seq_len[s]; ++t) {
    w[size_t(t)] = ExactScore(g, qr.data(), kv, g.BlockId(batch.PageId(s, t / g.page_size), h),
                              t % g.page_size);
    mx = std::max(mx, w[size_t(t)]);
  }
  for (float& x : w) x = std::exp(x - mx);
  return w;
}

absl::Status CheckInputs(const PageGeometry& g, const BatchView& batch, const QueryView& q,
                         const FpKvView& kv) {
  if (absl::Status st = ValidateGeometry(g); !st.ok()) return st;
  if (absl::Status st = ValidateBatch(g, batch, true); !st.ok()) return st;
  if (!q.q || !kv.kv) return absl::InvalidArgumentError("oracle: q and kv must not be null");
  return absl::OkStatus();
}

}  // namespace

absl::Status OracleTopPRef(const PageGeometry& g, const BatchView& batch, const QueryView& q,
                           const FpKvView& kv, float p, const KeptView& out,
                           const HeadStatsView& stats) {
  if (absl::Status st = CheckInputs(g, batch, q, kv); !st.ok()) return st;
  if (absl::Status st = ValidateP(p); !st.ok()) return st;
  if (!out.tokens || !out.count) return absl::InvalidArgumentError("oracle: outputs are null");
  for (int32_t s = 0; s < batch.num_seqs; ++s) {
    if (batch.seq_len[s] > out.max_kept) {
      return absl::InvalidArgumentError("oracle: max_kept is below a sequence length");
    }
  }
  const int32_t group = batch.num_q_heads / g.num_kv_heads;
  ForEachUnit(g, batch, [&](int32_t item, int32_t s, int32_t h) {
    const int32_t len = batch.seq_len[s];
    std::vector<uint8_t> keep(size_t(len), 0);
    std::vector<int32_t> order(static_cast<size_t>(len));
    for (int32_t j = 0; j < group; ++j) {
      const int32_t qh = h * group + j;
      const std::vector<float> w = ExactWeights(g, batch, q, kv, s, qh);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) {
        return w[size_t(a)] != w[size_t(b)] ? w[size_t(a)] > w[size_t(b)] : a < b;
      });
      // Sums in double so the cumulative mass is exact enough to compare with p.
      double total = 0.0;
      for (float x : w) total += x;
      double mass = 0.0;
      int32_t kept = 0;
      for (int32_t t : order) {
        if (p < 1.0f && mass >= double(p) * total) break;
        if (w[size_t(t)] <= 0.0f) break;
        mass += w[size_t(t)];
        keep[size_t(t)] = 1;
        ++kept;
      }
      const int64_t at = int64_t(s) * batch.num_q_heads + qh;
      if (stats.selected) stats.selected[at] = len;
      if (stats.kept) stats.kept[at] = kept;
      if (stats.est_mass) stats.est_mass[at] = float(mass / total);
    }
    int32_t* dst = out.tokens + int64_t(item) * out.max_kept;
    int32_t n = 0;
    for (int32_t t = 0; t < len; ++t) {
      if (keep[size_t(t)]) dst[n++] = t;
    }
    out.count[item] = n;
  });
  return absl::OkStatus();
}

absl::Status TrueKeptMassRef(const PageGeometry& g, const BatchView& batch, const QueryView& q,
                             const FpKvView& kv, const KeptView& kept, float* mass) {
  if (absl::Status st = CheckInputs(g, batch, q, kv); !st.ok()) return st;
  if (!kept.tokens || !kept.count || !mass) {
    return absl::InvalidArgumentError("true mass: kept set and output must not be null");
  }
  const int32_t group = batch.num_q_heads / g.num_kv_heads;
  tbb::parallel_for(0, batch.num_seqs * batch.num_q_heads, [&](int32_t item) {
    const int32_t s = item / batch.num_q_heads;
    const int32_t qh = item % batch.num_q_heads;
    const std::vector<float> w = ExactWeights(g, batch, q, kv, s, qh);
    const int64_t kv_item = int64_t(s) * g.num_kv_heads + qh / group;
    double total = 0.0;
    for (float x : w) total += x;
    double m = 0.0;
    const int32_t* t = kept.tokens + kv_item * kept.max_kept;
    for (int32_t i = 0; i < kept.count[kv_item]; ++i) {
      if (t[i] >= 0 && t[i] < batch.seq_len[s]) m += w[size_t(t[i])];
    }
    mass[item] = float(m / total);
  });
  return absl::OkStatus();
}

}  // namespace twl

// CPU reference of the Twilight pruner (see prune_ref.h).
#include "gpu/reference/prune_ref.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_format.h"
#include "gpu/reference/head_math.h"
#include "gpu/reference/validate.h"
#include "oneapi/tbb/parallel_for.h"

namespace twl {

TopPResult TopPThresholdRef(absl::Span<const float> w, float p, float stop_gap,
                            int32_t max_iterations) {
  TopPResult r;
  if (p >= 1.0f) {
    // p = 1 is dense: every candidate, including weights that underflowed to 0 (an INT4/INT2
    // estimate can put the true top token more than ~104 below the estimated maximum, and
    // exp then gives 0 for it). threshold -1 < every weight.
    r.threshold = -1.0f;
    r.kept = int32_t(w.size());
    r.mass = w.empty() ? 0.0f : 1.0f;
    return r;
  }
  float total = 0.0f;
  float wmax = 0.0f;
  for (float x : w) {
    total += x;
    wmax = std::max(wmax, x);
  }
  if (w.empty() || !(total > 0.0f)) return r;
  auto count_above = [&](float t, float* mass) {
    int32_t n = 0;
    float m = 0.0f;
    for (float x : w) {
      if (x > t) {
        ++n;
        m += x;
      }
    }
    *mass = m;
    return n;
  };
  const float target = p * total;
  float low = 0.0f;    // mass(> low) >= target
  float high = wmax;   // mass(> high) < target
  const float gap = stop_gap * total / float(w.size());
  for (; r.iterations < max_iterations; ++r.iterations) {
    const float mid = 0.5f * (low + high);
    // One pass: mass above mid, the nearest weights on either side of mid inside
    // (low, high), and how many weights lie strictly between low and high.
    float mass_mid = 0.0f;
    float below = -1.0f;  // largest weight in (low, mid]
    float above = std::numeric_limits<float>::infinity();  // smallest weight in (mid, high)
    int32_t between = 0;
    for (float x : w) {
      if (x > mid) mass_mid += x;
      if (x > low && x < high) {
        ++between;
        if (x <= mid) below = std::max(below, x);
        else above = std::min(above, x);
      }
    }
    if (between == 0 || high - low <= gap) break;
    if (mass_mid >= target) {
      low = below >= 0.0f ? below : mid;  // {w > below} == {w > mid}
    } else {
      high = std::isinf(above) ? mid : above;  // mass(> above) <= mass(> mid) < target
    }
  }
  r.threshold = low;
  r.kept = count_above(low, &r.mass);
  r.mass /= total;
  return r;
}

float EstimateScoreRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                       const FpKvView& kv, int64_t block, int32_t row) {
  if (g.k_bits >= 16) return ExactScore(g, q, kv, block, row);
  // q . (c * scale + zero) = scale * (q . c) + zero * sum(q): scale/zero applied once.
  const uint8_t* codes = qk.Codes(g, block, row);
  float dot = 0.0f;
  float qsum = 0.0f;
  for (int32_t j = 0; j < g.head_dim; ++j) {
    dot += q[j] * float(UnpackCode(codes, j, g.k_bits));
    qsum += q[j];
  }
  const int64_t at = block * g.page_size + row;
  return HalfToFloat(qk.scale[at]) * dot + HalfToFloat(qk.zero[at]) * qsum;
}

absl::Status PruneRef(const PageGeometry& g, const PrunerParams& params, const BatchView& batch,
                      const QueryView& q, const QuantKView& qk, const FpKvView& kv,
                      const SelectionView& selection, const KeptView& out,
                      const HeadStatsView& stats) {
  if (absl::Status st = ValidateGeometry(g); !st.ok()) return st;
  if (absl::Status st = ValidateBatch(g, batch, true); !st.ok()) return st;
  if (absl::Status st = ValidateP(params.p); !st.ok()) return st;
  if (params.seq_p) {
    for (int32_t s = 0; s < batch.num_seqs; ++s) {
      if (absl::Status st = ValidateP(params.seq_p[s]); !st.ok()) return st;
    }
  }
  if (!q.q || !selection.pages || !selection.count || !out.tokens || !out.count) {
    return absl::InvalidArgumentError("prune: q, selection and outputs must not be null");
  }
  if (g.k_bits >= 16 ? !kv.kv : (!qk.codes || !qk.scale || !qk.zero)) {
    return absl::InvalidArgumentError("prune: the estimation K store is missing");
  }
  if (out.max_kept < selection.max_select * g.page_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "prune: max_kept %d is below max_select * page_size = %d", out.max_kept,
        selection.max_select * g.page_size));
  }
  const float scale = SoftmaxScale(g, params.softmax_scale);
  const int32_t group = batch.num_q_heads / g.num_kv_heads;
  const int32_t items = batch.num_seqs * g.num_kv_heads;
  tbb::parallel_for(0, items, [&](int32_t item) {
    const int32_t s = item / g.num_kv_heads;
    const int32_t h = item % g.num_kv_heads;
    const int32_t len = batch.seq_len[s];
    const float p = params.seq_p ? params.seq_p[s] : params.p;
    // Candidate tokens in ascending position: the rows of the selected pages.
    std::vector<int32_t> pos;
    std::vector<int64_t> blocks;
    const int32_t* pages = selection.pages + int64_t(item) * selection.max_select;
    for (int32_t i = 0; i < selection.count[item]; ++i) {
      const int32_t page_idx = pages[i];
      const int64_t block = g.BlockId(batch.PageId(s, page_idx), h);
      const int32_t rows = std::min(g.page_size, len - page_idx * g.page_size);
      for (int32_t r = 0; r < rows; ++r) {
        pos.push_back(page_idx * g.page_size + r);
        blocks.push_back(block);
      }
    }
    const size_t n = pos.size();
    std::vector<uint8_t> keep(n, params.dense ? 1 : 0);
    std::vector<float> w(n);
    for (int32_t j = 0; j < group; ++j) {
      const int32_t qh = h * group + j;
      const int64_t at = int64_t(s) * batch.num_q_heads + qh;
      TopPResult r;
      if (params.dense) {
        r.kept = int32_t(n);
        r.mass = 1.0f;
      } else {
        const std::vector<float> qr = QueryRow(g, batch, q, s, qh, scale);
        float mx = -std::numeric_limits<float>::infinity();
        for (size_t i = 0; i < n; ++i) {
          w[i] = EstimateScoreRef(g, qr.data(), qk, kv, blocks[i], pos[i] % g.page_size);
          mx = std::max(mx, w[i]);
        }
        for (size_t i = 0; i < n; ++i) w[i] = std::exp(w[i] - mx);
        r = TopPThresholdRef(w, p, params.stop_gap, params.max_iterations);
        for (size_t i = 0; i < n; ++i) keep[i] |= uint8_t(w[i] > r.threshold);
      }
      if (stats.selected) stats.selected[at] = int32_t(n);
      if (stats.kept) stats.kept[at] = r.kept;
      if (stats.est_mass) stats.est_mass[at] = r.mass;
    }
    int32_t* dst = out.tokens + int64_t(item) * out.max_kept;
    int32_t kept = 0;
    for (size_t i = 0; i < n; ++i) {
      if (keep[i]) dst[kept++] = pos[i];
    }
    out.count[item] = kept;
  });
  return absl::OkStatus();
}

}  // namespace twl

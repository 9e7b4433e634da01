// Test support: the tolerance between the histogram top-p (the GPU pruner, TopPBinnedRef)
// and PruneRef's bisection. Both compute the smallest level set of estimated weights with
// mass >= p; a token may be kept by one and not the other only if it is ambiguous for some
// query head j of its group:
//  - logit band: |s - s*_j| <= 1/2048 (the histogram's sub-bin) + 2^-10 * max(|s|, |M_j|)
//    (FP16 rounding of the stored scores) + 1e-3 (estimator float order), where s*_j is the
//    score of the token at which the exact (sorted, double) cumulative mass reaches p;
//  - mass band: the exact mass above the token, or up to it, is within MassEps * total of
//    the target (FP16 rounding moves each weight by at most a factor exp(2^-11 max|s|));
//  - the bisection's stop-gap band around its threshold.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iterator>
#include <set>
#include <vector>

#include "core/half.h"
#include "core/head_math.h"
#include "pipeline/prune/twilight/cpu/twilight_prune_cpu.h"
#include "support/ref_store.h"

namespace twl::testing {

// Reference weights of one query head over the candidate tokens of (s, h) (ascending
// positions), its bisection threshold as PruneRef computes it, and the exact crossing.
struct HeadRef {
  std::vector<int32_t> pos;
  std::vector<float> sc, w;
  std::vector<double> before;  // exact mass of the tokens above each one (descending order)
  TopPResult r;
  double total = 0, target = 0;
  float mx = 0, s_star = 0, max_abs = 0;
};

inline HeadRef ReferenceHead(RefStore& st, const PrunerParams& params, float p,
                             const std::vector<int32_t>& sel_pages, int32_t s, int32_t h,
                             int32_t qh) {
  const PageGeometry& g = st.g;
  const BatchView b = st.Batch();
  HeadRef out;
  const std::vector<float> qr =
      QueryRow(g, b, st.Query(), s, qh, SoftmaxScale(g, params.softmax_scale));
  float mx = -INFINITY;
  for (int32_t page_idx : sel_pages) {
    const int64_t block = g.BlockId(b.PageId(s, page_idx), h);
    const int32_t rows = std::min(g.page_size, b.seq_len[s] - page_idx * g.page_size);
    for (int32_t r = 0; r < rows; ++r) {
      out.pos.push_back(page_idx * g.page_size + r);
      // Rounded to FP16 as PruneRef's top-p (and the GPU's score pass) takes them.
      out.sc.push_back(
          HalfRoundFloat(EstimateScoreRef(g, qr.data(), st.Quant(), st.Kv(), block, r)));
      mx = std::max(mx, out.sc.back());
      out.max_abs = std::max(out.max_abs, std::abs(out.sc.back()));
    }
  }
  out.mx = mx;
  for (float x : out.sc) {
    out.w.push_back(std::exp(x - mx));
    out.total += out.w.back();
  }
  out.r = TopPThresholdRef(out.w, p, params.stop_gap, params.max_iterations);
  out.target = double(p) * out.total;
  std::vector<size_t> order(out.w.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t a, size_t c) { return out.sc[a] > out.sc[c]; });
  out.before.assign(out.w.size(), 0.0);
  double cum = 0.0;
  bool crossed = false;
  out.s_star = order.empty() ? 0.0f : out.sc[order.back()];
  for (size_t i : order) {
    out.before[i] = cum;
    cum += out.w[i];
    if (!crossed && cum >= out.target) {
      crossed = true;
      out.s_star = out.sc[i];
    }
  }
  return out;
}

inline double MassEps(const HeadRef& r) {
  return 2.0 * (std::exp(std::ldexp(double(r.max_abs), -11)) - 1.0) + 1e-4;
}

// Whether token index i of head r may differ between the histogram rule and PruneRef.
inline bool Ambiguous(const HeadRef& r, const PrunerParams& params, size_t i) {
  const double s = r.sc[i];
  const double tol_s =
      1.0 / 2048.0 + std::ldexp(std::max(std::abs(s), std::abs(double(r.mx))), -10) + 1e-3;
  if (std::abs(s - double(r.s_star)) <= tol_s) return true;
  const double eps = MassEps(r);
  if (std::abs(r.before[i] - r.target) <= eps * r.total) return true;
  if (std::abs(r.before[i] + r.w[i] - r.target) <= eps * r.total) return true;
  const double gap = double(params.stop_gap) * r.total / double(std::max<size_t>(r.w.size(), 1));
  return std::abs(double(r.w[i]) - double(r.r.threshold)) <= gap + 1e-4;
}

// Whether token position t may differ between two kept lists of one (sequence, KV head) pair:
// it is ambiguous for some query head of the group (refs: one HeadRef per head).
inline bool TieOfAnyHead(const std::vector<HeadRef>& refs, const PrunerParams& params, int32_t t) {
  for (const HeadRef& r : refs) {
    const auto it = std::lower_bound(r.pos.begin(), r.pos.end(), t);
    if (it != r.pos.end() && *it == t && Ambiguous(r, params, size_t(it - r.pos.begin()))) {
      return true;
    }
  }
  return false;
}

// The token positions in one of two kept sets and not in the other, ascending.
inline std::vector<int32_t> KeptDifference(const std::set<int32_t>& a, const std::set<int32_t>& b) {
  std::vector<int32_t> diff;
  std::set_symmetric_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(diff));
  return diff;
}

}  // namespace twl::testing

// The Twilight pruner on the host (see twilight_prune_cpu.h).
#include "pipeline/prune/twilight/cpu/twilight_prune_cpu.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/str_format.h"
#include "core/half.h"
#include "core/head_math.h"
#include "core/host_exp.h"
#include "core/host_prefetch.h"
#include "core/host_simd.h"
#include "core/validate.h"
#include "oneapi/tbb/blocked_range.h"
#include "oneapi/tbb/parallel_for.h"
#include "pipeline/cpu/for_each_unit.h"
#include "pipeline/prune/twilight/cpu/estimate_cpu.h"
#include "pipeline/prune/twilight/cpu/top_p_window.h"
#include "pipeline/prune/twilight/cpu/top_p_window_lanes.h"

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
  // Masses in double: a float sum that reaches ~1 (the max's own weight) drops or doubles
  // every later weight below 2^-24 (half an ulp of 1), and a long candidate list's tail is
  // made of such weights: at 129k candidates with one dominant token a float total put the
  // tail at 0.0009 of the mass where it holds 0.0064, moving p's target by hundreds of tokens
  // (the GPU's fixed-point sums are exact: tests/gpu/grow_gpu_test.cc).
  // Sums run in WindowLanes' eight lanes (lane k: elements k, k + 8, ...) and combine in its
  // order: eight independent chains the vector units take as written, where one running
  // double sum was a chain of dependent adds, the host pruner's slowest loop.
  constexpr size_t kLanes = WindowLanes::kLanes;
  double lane_total[kLanes] = {};
  float lane_max[kLanes] = {};
  size_t i0 = 0;
  for (; i0 + kLanes <= w.size(); i0 += kLanes) {  // whole rows of lanes: vectorized
    for (size_t k = 0; k < kLanes; ++k) {
      lane_total[k] += double(w[i0 + k]);
      lane_max[k] = std::max(lane_max[k], w[i0 + k]);
    }
  }
  for (size_t k = 0; i0 + k < w.size(); ++k) {
    lane_total[k] += double(w[i0 + k]);
    lane_max[k] = std::max(lane_max[k], w[i0 + k]);
  }
  const double total = WindowLanes::SumLanes(lane_total);
  float wmax = 0.0f;
  for (float m : lane_max) wmax = std::max(wmax, m);
  if (w.empty() || !(total > 0.0) || std::isinf(total)) {
    // NaN or inf (a NaN estimate beside a finite max, or an overflowed score): the head keeps
    // nothing, as the GPU's histogram rule does. The threshold says so too, since callers
    // take { w > threshold }: 0 would keep every positive weight while kept reads 0.
    r.threshold = std::numeric_limits<float>::infinity();
    return r;
  }
  const double target = double(p) * total;
  float low = 0.0f;    // mass(> low) >= target
  float high = wmax;   // mass(> high) < target
  const float gap = float(double(stop_gap) * total / double(w.size()));
  // Each step looks only at the window, the weights strictly between low and high (the
  // others' side of any mid in (low, high) is known): the weights at or above high are
  // summed once, when high passes them. Same decisions as one pass over every weight per
  // step, except that a mass is summed in another order (double rounding, ~1e-16). The
  // array is compacted only when the window has halved; until then the split skips the
  // weights that have left by the bounds.
  //
  // Weights below `tiny` stay out of the window: every mid is above them, so they only ever
  // add to a split's count below mid and offer their max as its `below`, and only while
  // low is 0 (low then moves to a weight >= their max). Why every mid is above them: with
  // c = 2 tiny, mass(< c) <= n c = (1 - p) total / 2 (half the budget: a margin for the
  // roundings), so mass(>= c) > target; mass(> high) < target then puts high >= c, and mid
  // >= high / 2 >= tiny. On a peaked head most weights lie far below the threshold: the
  // early steps, which halve high down to it while low is still 0, no longer pass over them.
  const float tiny = float(0.25 * (1.0 - double(p)) * total / double(w.size()));
  const bool avx2 = ActiveHostSimd() == HostSimd::kAvx2F16c;
  thread_local std::vector<float> window;
  window.resize(w.size());
  const WindowStart start = (avx2 ? BuildWindowAvx2 : BuildWindowBaseline)(
      w.data(), w.size(), low, high, tiny, window.data());
  window.resize(start.live);
  // Weights in (low, high), the tiny ones included.
  size_t live = start.live + size_t(start.tiny_count);
  const int64_t tiny_count = start.tiny_count;
  const float tiny_max = start.tiny_max;
  // mass(>= high): copies of one float (every weight >= high = wmax equals it), so their
  // double sum is exact in any order.
  double mass_high = double(start.at_high) * double(high);
  const auto split = avx2 ? SplitWindowAvx2 : SplitWindowBaseline;
  for (; r.iterations < max_iterations; ++r.iterations) {
    if (live == 0 || high - low <= gap) break;
    const float mid = 0.5f * (low + high);
    WindowSplit at = split(window.data(), window.size(), low, high, mid);
    if (low == 0.0f && tiny_count > 0) {  // the tiny weights are in (low, high), below mid
      at.n_below += tiny_count;
      at.below = std::max(at.below, tiny_max);
    }
    const double mass_mid = mass_high + at.mass_above;  // mass(> mid)
    if (mass_mid >= target) {
      low = at.below >= 0.0f ? at.below : mid;  // {w > below} == {w > mid}
      live = size_t(at.n_above);
    } else if (!std::isinf(at.above)) {
      high = at.above;  // mass(> above) <= mass(> mid) < target; nothing lies in (mid, above)
      mass_high = mass_mid;
      live = size_t(at.n_below);
    } else {
      // Nothing above mid: high = mid, and weights equal to mid join mass_high (below, the
      // window's largest weight, equals mid when any does).
      int64_t at_mid = 0;
      if (at.below == mid) {
        for (float x : window) {
          if (x == mid && x > low && x < high) {
            mass_high += double(x);
            ++at_mid;
          }
        }
      }
      high = mid;
      live = size_t(at.n_below - at_mid);
      // While the window's largest weight stays below the next mid, the next steps would find
      // nothing above it either and change nothing but high: take them here without passing
      // over the window (one dominant weight far above the rest, or a flat head's threshold
      // far below the max, took dozens of such passes).
      const float window_max = at.below;
      while (r.iterations + 1 < max_iterations && live != 0 && high - low > gap) {
        const float next = 0.5f * (low + high);
        if (!(next > window_max)) break;
        high = next;
        ++r.iterations;
      }
    }
    if (live < window.size() / 2) {
      window.resize((avx2 ? CompactWindowAvx2 : CompactWindowBaseline)(window.data(),
                                                                        window.size(), low, high));
    }
  }
  r.threshold = low;
  // { w > low }: the split of every weight with nothing above the window (total is finite,
  // so no weight is +inf or NaN).
  const WindowSplit kept =
      split(w.data(), w.size(), low, std::numeric_limits<float>::infinity(), low);
  r.kept = int32_t(kept.n_above);
  r.mass = float(kept.mass_above / total);
  return r;
}

float EstimateScoreRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                       const FpKvView& kv, int64_t block, int32_t row) {
  if (g.k_bits >= 16) return ExactScore(g, q, kv, block, row);
  if (g.k_scheme == kKSchemePageChannel) return EstimatePageChannelScoreRef(g, q, qk, block, row);
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

void EstimateBlockScoresRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                            const FpKvView& kv, int64_t block, int32_t rows, float* out) {
  if (g.k_bits < 16 && g.k_scheme == kKSchemePageChannel) {
    EstimatePageChannelBlockRef(g, q, qk, block, rows, out);
    return;
  }
  for (int32_t r = 0; r < rows; ++r) out[r] = EstimateScoreRef(g, q, qk, kv, block, r);
}

void EstimateBlockScoresMultiRef(const PageGeometry& g, const float* const* q, int32_t heads,
                                 const QuantKView& qk, const FpKvView& kv, int64_t block,
                                 int32_t rows, float* const* out) {
  if (g.k_bits < 16 && g.k_scheme == kKSchemePageChannel) {
    EstimatePageChannelBlockMultiRef(g, q, heads, qk, block, rows, out);
    return;
  }
  for (int32_t i = 0; i < heads; ++i) EstimateBlockScoresRef(g, q[i], qk, kv, block, rows, out[i]);
}

void PrefetchEstimateBlock(const PageGeometry& g, const QuantKView& qk, int64_t block) {
  // k_bits 16 estimates on the FP16 K itself, whose rows may live in a cache's slots, in
  // place in a miss pool or nowhere yet (a slot < 0): not prefetched.
  if (g.k_bits >= 16) return;
  PrefetchBytes(qk.Codes(g, block, 0), size_t(g.CodeBlockBytes()));
  if (g.HasTokenScale()) {
    PrefetchBytes(qk.scale + block * g.page_size, size_t(g.page_size) * 2);
    PrefetchBytes(qk.zero + block * g.page_size, size_t(g.page_size) * 2);
  } else {
    if (qk.range_lo) {
      PrefetchBytes(qk.range_lo + block * g.head_dim, size_t(g.head_dim) * 2);
      PrefetchBytes(qk.range_hi + block * g.head_dim, size_t(g.head_dim) * 2);
    } else {
      PrefetchBytes(qk.Range(g, block), size_t(g.RangeBlockBytes()));
    }
  }
}

namespace {

// Pages per task of a unit's parallel scoring: enough to amortize a task (~5 us a page).
constexpr size_t kPagesPerTask = 32;

// Estimated scores (q already scaled) of the rows of page `page_idx` of sequence s, KV head h,
// for every query row of qr (a GQA group) into out[j], each rounded to FP16 as the GPU's score
// pass stores it: the growth rule's A is defined on the stored scores. On FP32 ones a peaked
// head's top estimate (~16 logits, half an FP16 ulp 2^-7) moved its A by up to 0.8% against
// the GPU's, which at 140k tokens moved the smallest level set by 1-27 pages in ~80% of
// inputs (a CPU emulation of the GPU's radix search; GrowGpuTest /9 /10 failed when two
// pairs differed).
void PageScores(const PageGeometry& g, const BatchView& batch, const QuantKView& qk,
                const FpKvView& kv, const std::vector<const float*>& qr, int32_t s, int32_t h,
                int32_t page_idx, std::vector<std::vector<float>>* out) {
  const int64_t block = g.BlockId(batch.PageId(s, page_idx), h);
  const int32_t rows = std::min(g.page_size, batch.seq_len[s] - page_idx * g.page_size);
  out->resize(qr.size());
  thread_local std::vector<float*> dst;  // reused: called once per page
  dst.resize(qr.size());
  for (size_t j = 0; j < qr.size(); ++j) {
    (*out)[j].resize(size_t(rows));
    dst[j] = (*out)[j].data();
  }
  EstimateBlockScoresMultiRef(g, qr.data(), int32_t(qr.size()), qk, kv, block, rows, dst.data());
  for (std::vector<float>& row : *out) {
    for (float& x : row) x = HalfRoundFloat(x);  // as the top-p below rounds them
  }
}

}  // namespace

GrowResult GrowCandidatesRef(const PageGeometry& g, const PrunerParams& params,
                             const BatchView& batch, const QueryView& q, const QuantKView& qk,
                             const FpKvView& kv, const SelectionView& selection, int32_t s,
                             int32_t h) {
  const int32_t group = batch.num_q_heads / g.num_kv_heads;
  const int32_t item = s * g.num_kv_heads + h;
  const int32_t num_pages = selection.count[item];
  const float p = params.seq_p ? params.seq_p[s] : params.p;
  const double c = GrowRemainderRatio(p, params.remainder_share);
  const float scale = SoftmaxScale(g, params.softmax_scale);
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<std::vector<float>> qr(static_cast<size_t>(group));
  std::vector<const float*> qp(static_cast<size_t>(group));
  std::vector<const float*> bound(static_cast<size_t>(group));
  for (int32_t j = 0; j < group; ++j) {
    qr[size_t(j)] = QueryRow(g, batch, q, s, h * group + j, scale);
    qp[size_t(j)] = qr[size_t(j)].data();
    bound[size_t(j)] =
        selection.bound + (int64_t(s) * batch.num_q_heads + h * group + j) * selection.max_select;
  }
  // Key of a page: the max of its query heads' bounds (+inf: always a candidate).
  std::vector<float> key(static_cast<size_t>(num_pages));
  std::vector<int32_t> ranked;
  GrowResult res;
  res.candidate.assign(size_t(num_pages), 0);
  for (int32_t i = 0; i < num_pages; ++i) {
    // A NaN bound (NaN q or K) bounds nothing: such a page is always a candidate.
    float k = -inf;
    for (int32_t j = 0; j < group; ++j) {
      const float b = bound[size_t(j)][i];
      k = std::isnan(b) ? inf : std::max(k, b);
    }
    key[size_t(i)] = k;
    if (k == inf) res.candidate[size_t(i)] = 1;
    else ranked.push_back(i);
  }
  std::stable_sort(ranked.begin(), ranked.end(),
                   [&](int32_t a, int32_t b) { return key[size_t(a)] > key[size_t(b)]; });
  // Scale of the sums: the largest bound of a ranked page or estimate of a forced row, per head
  // (the rule compares ratios, so any common scale gives the same decision; this one keeps
  // exp() in range). Sums in double.
  std::vector<double> mx(static_cast<size_t>(group), -std::numeric_limits<double>::infinity());
  std::vector<double> A(static_cast<size_t>(group), 0.0);
  std::vector<std::vector<float>> forced_scores;
  std::vector<std::vector<float>> sc;
  for (int32_t i = 0; i < num_pages; ++i) {
    if (!res.candidate[size_t(i)]) continue;
    PageScores(g, batch, qk, kv, qp, s, h, selection.pages[int64_t(item) * selection.max_select + i], &sc);
    for (int32_t j = 0; j < group; ++j) {
      for (float x : sc[size_t(j)]) mx[size_t(j)] = std::max(mx[size_t(j)], double(x));
      forced_scores.push_back(sc[size_t(j)]);
    }
  }
  for (int32_t i : ranked) {
    for (int32_t j = 0; j < group; ++j) mx[size_t(j)] = std::max(mx[size_t(j)], double(bound[size_t(j)][i]));
  }
  auto rows_of = [&](int32_t i) {
    const int32_t page_idx = selection.pages[int64_t(item) * selection.max_select + i];
    return std::min(g.page_size, batch.seq_len[s] - page_idx * g.page_size);
  };
  // A: forced rows; R: every ranked page at its bound (all rows of a page score <= it).
  size_t f = 0;
  for (int32_t i = 0; i < num_pages; ++i) {
    if (!res.candidate[size_t(i)]) continue;
    for (int32_t j = 0; j < group; ++j, ++f) {
      for (float x : forced_scores[f]) A[size_t(j)] += std::exp(double(x) - mx[size_t(j)]);
    }
  }
  // R by suffix sums over the ranking, so that no large term is ever subtracted.
  const size_t n_ranked = ranked.size();
  std::vector<std::vector<double>> suffix(static_cast<size_t>(group), std::vector<double>(n_ranked + 1, 0.0));
  for (int32_t j = 0; j < group; ++j) {
    for (size_t k = n_ranked; k-- > 0;) {
      const int32_t i = ranked[k];
      suffix[size_t(j)][k] = suffix[size_t(j)][k + 1] +
                             double(rows_of(i)) * std::exp(double(bound[size_t(j)][i]) - mx[size_t(j)]);
    }
  }
  const int32_t cap = selection.limit[item];
  auto holds = [&](size_t taken) {
    if (taken == n_ranked) return true;        // nothing left outside
    if (p >= 1.0f) return false;               // p >= 1: every page
    for (int32_t j = 0; j < group; ++j) {
      if (!(suffix[size_t(j)][taken] <= c * A[size_t(j)])) return false;
    }
    return true;
  };
  size_t taken = 0;  // ranked pages taken, always whole levels of equal key
  while (!holds(taken)) {
    size_t end = taken + 1;
    while (end < n_ranked && key[size_t(ranked[end])] == key[size_t(ranked[taken])]) ++end;
    if (end > size_t(cap)) {
      res.cap_hit = true;
      break;
    }
    for (size_t k = taken; k < end; ++k) {
      const int32_t i = ranked[k];
      res.candidate[size_t(i)] = 1;
      PageScores(g, batch, qk, kv, qp, s, h,
                 selection.pages[int64_t(item) * selection.max_select + i], &sc);
      for (int32_t j = 0; j < group; ++j) {
        for (float x : sc[size_t(j)]) A[size_t(j)] += std::exp(double(x) - mx[size_t(j)]);
      }
    }
    taken = end;
  }
  res.inside.resize(size_t(group));
  for (int32_t j = 0; j < group; ++j) {
    const double r = suffix[size_t(j)][taken];
    const double a = A[size_t(j)];
    res.inside[size_t(j)] = std::isnan(a) ? a : (a > 0.0 ? a / (a + r) : 0.0);
  }
  return res;
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
  if (g.k_bits >= 16 ? !kv.kv
                     : (!qk.codes || (g.HasTokenScale() ? (!qk.scale || !qk.zero)
                                                        : !qk.HasRanges()))) {
    return absl::InvalidArgumentError("prune: the estimation K store is missing");
  }
  const bool grow = selection.bound != nullptr && !params.dense;
  if (grow && (!selection.limit || !(params.remainder_share > 0.0f && params.remainder_share < 1.0f))) {
    return absl::InvalidArgumentError(
        "prune: growing needs the selection's limit and remainder_share in (0, 1)");
  }
  if (out.max_kept < selection.max_select * g.page_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "prune: max_kept %d is below max_select * page_size = %d", out.max_kept,
        selection.max_select * g.page_size));
  }
  const float scale = SoftmaxScale(g, params.softmax_scale);
  const int32_t group = batch.num_q_heads / g.num_kv_heads;
  ForEachUnit(g, batch, [&](int32_t item, int32_t s, int32_t h) {
    const int32_t len = batch.seq_len[s];
    const float p = params.seq_p ? params.seq_p[s] : params.p;
    // Growing: which listed pages are candidates, and each head's share A / (A + R).
    GrowResult gr;
    if (grow) gr = GrowCandidatesRef(g, params, batch, q, qk, kv, selection, s, h);
    // Candidate tokens in ascending position: the rows of the selected pages.
    std::vector<int32_t> pos;
    std::vector<int64_t> blocks;
    const int32_t* pages = selection.pages + int64_t(item) * selection.max_select;
    bool all_pages = selection.count[item] == batch.NumPages(g, s);
    for (int32_t i = 0; i < selection.count[item]; ++i) {
      if (grow && !gr.candidate[size_t(i)]) {
        all_pages = false;
        continue;
      }
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
    // Every head's estimated scores, a page at a time for the whole group (a page-channel
    // page is dequantized once for its group): w_all[j * n + i].
    std::vector<float> w_all;
    if (!params.dense) {
      std::vector<std::vector<float>> qr(static_cast<size_t>(group));
      std::vector<const float*> qp(static_cast<size_t>(group));
      for (int32_t j = 0; j < group; ++j) {
        qr[size_t(j)] = QueryRow(g, batch, q, s, h * group + j, scale);
        qp[size_t(j)] = qr[size_t(j)].data();
      }
      w_all.resize(n * size_t(group));
      // Candidates come in whole pages (rows 0.. of a block, in order): one block at a time.
      // The blocks are scored in parallel too (each writes its own rows), so that a unit's
      // pages spread over the cores when the batch has fewer units than cores (B = 1, or one
      // KV head); the results do not depend on the split.
      std::vector<size_t> starts;
      for (size_t i = 0; i < n; ++i) {
        if (i == 0 || blocks[i] != blocks[i - 1]) starts.push_back(i);
      }
      starts.push_back(n);
      tbb::parallel_for(
          tbb::blocked_range<size_t>(0, starts.size() - 1, kPagesPerTask),
          [&](const tbb::blocked_range<size_t>& range) {
            std::vector<float*> dst(static_cast<size_t>(group));
            for (size_t b = range.begin(); b != range.end(); ++b) {
              const size_t i = starts[b], e = starts[b + 1];
              if (b + 1 != range.end()) PrefetchEstimateBlock(g, qk, blocks[e]);
              if (pos[i] % g.page_size == 0 && pos[e - 1] % g.page_size == int32_t(e - 1 - i)) {
                for (int32_t j = 0; j < group; ++j) dst[size_t(j)] = &w_all[size_t(j) * n + i];
                EstimateBlockScoresMultiRef(g, qp.data(), group, qk, kv, blocks[i],
                                            int32_t(e - i), dst.data());
              } else {
                for (int32_t j = 0; j < group; ++j) {
                  for (size_t k = i; k < e; ++k) {
                    w_all[size_t(j) * n + k] = EstimateScoreRef(g, qp[size_t(j)], qk, kv,
                                                                blocks[k], pos[k] % g.page_size);
                  }
                }
              }
            }
          });
    }
    // Each head's scores turned into weights in place and its threshold, heads in parallel;
    // then the union of the kept sets.
    std::vector<TopPResult> res(static_cast<size_t>(group));
    if (!params.dense) {
      tbb::parallel_for(0, group, [&](int32_t j) {
        const absl::Span<float> w(w_all.data() + size_t(j) * n, n);
        // The top-p runs over the scores as FP16 values, as the GPU's score pass stores
        // them (and as the growth's A above sums them). On FP32 scores a flat head's target
        // moved by the hot tokens' rounding: at 140k candidates, 1 input in 8 kept ~240
        // tokens fewer than the GPU (mass 6e-5 apart; tests/gpu/grow_gpu_test.cc). Rounding
        // is monotone, so the max of the rounded scores is the rounded max.
        float mx = -std::numeric_limits<float>::infinity();
        for (size_t i = 0; i < n; ++i) w[i] = HalfRoundFloat(w[i]);  // branch-free: vectorizes
        for (size_t i = 0; i < n; ++i) mx = std::max(mx, w[i]);
        ExpMinusMax(w.data(), n, mx);
        // Growing: take p of the full-context bound A + R, i.e. p / share of A (the rule
        // that stopped the growth makes that < 1); at the cap only p of A is possible. A NaN
        // share (a NaN estimate among the candidates) keeps p: the head's weights hold the
        // NaN, so it keeps nothing, as without growth. Taking min(1, p / 0) there made it
        // dense: every candidate kept.
        float pj = p;
        if (grow && !gr.cap_hit && p < 1.0f && !std::isnan(gr.inside[size_t(j)])) {
          pj = std::min(1.0f, float(double(p) / gr.inside[size_t(j)]));
        }
        res[size_t(j)] = TopPThresholdRef(w, pj, params.stop_gap, params.max_iterations);
      });
    }
    for (int32_t j = 0; j < group; ++j) {
      const int32_t qh = h * group + j;
      const int64_t at = int64_t(s) * batch.num_q_heads + qh;
      TopPResult r;
      if (params.dense) {
        r.kept = int32_t(n);
        r.mass = 1.0f;
      } else {
        r = res[size_t(j)];
        const float* w = w_all.data() + size_t(j) * n;
        for (size_t i = 0; i < n; ++i) keep[i] |= uint8_t(w[i] > r.threshold);
      }
      if (stats.selected) stats.selected[at] = int32_t(n);
      if (stats.kept) stats.kept[at] = r.kept;
      if (stats.est_mass) stats.est_mass[at] = r.mass;
      if (stats.full_mass) {
        // (A NaN share counts as 0, as the GPU's A > 0 test makes it.)
        const double inside = grow && !std::isnan(gr.inside[size_t(j)]) ? gr.inside[size_t(j)] : 0.0;
        stats.full_mass[at] = grow ? float(double(r.mass) * inside)
                                   : (all_pages || params.dense ? r.mass : -1.0f);
      }
      if (stats.cap_hit) stats.cap_hit[at] = grow && gr.cap_hit ? 1 : 0;
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

// The Quest selector on the host (see quest_select_cpu.h).
#include "pipeline/select/quest/cpu/quest_select_cpu.h"

#include <algorithm>
#include <limits>
#include <numeric>
#include <vector>

#include "core/head_math.h"
#include "core/validate.h"
#include "pipeline/cpu/for_each_unit.h"

namespace twl {

float PageUpperBoundRef(const PageGeometry& g, const float* q, const fp16_t* kmin,
                        const fp16_t* kmax) {
  float bound = 0.0f;
  for (int32_t c = 0; c < g.head_dim; ++c) {
    bound += std::max(q[c] * HalfToFloat(kmin[c]), q[c] * HalfToFloat(kmax[c]));
  }
  return bound;
}

int32_t KeepTopPagesRef(const std::vector<float>& score, int32_t first, int32_t last,
                        int32_t budget, int32_t* dst) {
  std::vector<int32_t> ranked(static_cast<size_t>(last - first));
  std::iota(ranked.begin(), ranked.end(), first);
  std::nth_element(ranked.begin(), ranked.begin() + budget - 1, ranked.end(),
                   [&](int32_t a, int32_t b) {
                     const float sa = score[size_t(a)], sb = score[size_t(b)];
                     return sa != sb ? sa > sb : a < b;
                   });
  ranked.resize(static_cast<size_t>(budget));
  for (int32_t p = 0; p < first; ++p) ranked.push_back(p);
  ranked.push_back(last);
  std::sort(ranked.begin(), ranked.end());
  std::copy(ranked.begin(), ranked.end(), dst);
  return int32_t(ranked.size());
}

absl::Status SelectPagesRef(const PageGeometry& g, const SelectorParams& params,
                            const BatchView& batch, const QueryView& q, const QuantKView& qk,
                            const SelectionView& out, float softmax_scale) {
  if (absl::Status st = ValidateGeometry(g); !st.ok()) return st;
  if (absl::Status st = ValidateBatch(g, batch, true); !st.ok()) return st;
  if (absl::Status st = ValidateSelect(params, batch, q, qk, out); !st.ok()) return st;
  const bool grow = params.kind == SelectorKind::kQuest && params.grow;
  const int32_t group = batch.num_q_heads / g.num_kv_heads;
  ForEachUnit(g, batch, [&](int32_t item, int32_t s, int32_t h) {
    const int32_t num_pages = batch.NumPages(g, s);
    int32_t* dst = out.pages + int64_t(item) * out.max_select;
    if (grow) {
      // Every page, ascending, with each query head's bound; sinks and the last page +inf.
      std::iota(dst, dst + num_pages, 0);
      out.count[item] = num_pages;
      out.limit[item] = GrowCapPages(params, num_pages);
      for (int32_t j = 0; j < group; ++j) {
        const int32_t qh = h * group + j;
        const std::vector<float> qr =
            QueryRow(g, batch, q, s, qh, SoftmaxScale(g, softmax_scale));
        float* bd = out.bound + (int64_t(s) * batch.num_q_heads + qh) * out.max_select;
        for (int32_t p = 0; p < num_pages; ++p) {
          if (p < params.sink_pages || p == num_pages - 1) {
            bd[p] = std::numeric_limits<float>::infinity();
            continue;
          }
          const int64_t block = g.BlockId(batch.PageId(s, p), h);
          bd[p] = PageUpperBoundRef(g, qr.data(), qk.kmin + block * g.head_dim,
                                    qk.kmax + block * g.head_dim);
        }
      }
      return;
    }
    const int64_t keep_all = int64_t(params.budget_pages) + params.sink_pages + 1;  // no overflow
    if (params.kind == SelectorKind::kFull || num_pages <= keep_all) {
      std::iota(dst, dst + num_pages, 0);
      out.count[item] = num_pages;
      return;
    }
    // Ranked pages: everything but the sinks and the last page, which are always kept.
    const int32_t first = params.sink_pages;
    const int32_t last = num_pages - 1;
    std::vector<float> score(size_t(num_pages), 0.0f);
    for (int32_t j = 0; j < group; ++j) {
      const std::vector<float> qr = QueryRow(g, batch, q, s, h * group + j, 1.0f);
      for (int32_t p = first; p < last; ++p) {
        const int64_t block = g.BlockId(batch.PageId(s, p), h);
        const float b = PageUpperBoundRef(g, qr.data(), qk.kmin + block * g.head_dim,
                                          qk.kmax + block * g.head_dim);
        score[size_t(p)] = j == 0 ? b : std::max(score[size_t(p)], b);
      }
    }
    out.count[item] = KeepTopPagesRef(score, first, last, params.budget_pages, dst);
  });
  return absl::OkStatus();
}

}  // namespace twl

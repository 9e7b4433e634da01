// The Double Sparsity selector on the host (see ds_selector.h).
#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/head_math.h"
#include "core/quantize.h"
#include "core/validate.h"
#include "pipeline/cpu/for_each_unit.h"
#include "pipeline/select/double_sparsity/ds_selector.h"
#include "pipeline/select/quest/cpu/quest_select_cpu.h"

namespace twl {

int32_t DsBudgetPages(const SelectorParams& params, int32_t num_pages) {
  return params.grow ? GrowCapPages(params, num_pages) : params.budget_pages;
}

void DsUpdateBlocksRef(const PageGeometry& g, const int32_t* pages, const int32_t* rows,
                       int32_t n, const FpKvView& kv, const QuantKView& qk) {
  for (int32_t i = 0; i < n; ++i) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      const int64_t block = g.BlockId(pages[i], h);
      float* sums = reinterpret_cast<float*>(qk.Meta(block));  // [sum k | sum k^2]
      for (int32_t c = 0; c < g.head_dim; ++c) {
        float s1 = 0.0f, s2 = 0.0f;  // row order from 0: the device kernels add in that order
        for (int32_t r = 0; r < rows[i]; ++r) {
          const float x = g.KvToFloat(kv.K(g, block, r)[c]);
          s1 += x;
          s2 += x * x;
        }
        sums[c] = s1;
        sums[g.head_dim + c] = s2;
      }
    }
  }
}

std::vector<float> DsChannelSpreadRef(const PageGeometry& g, const BatchView& batch,
                                      const QuantKView& qk, int32_t s, int32_t h) {
  const int32_t D = g.head_dim;
  std::vector<float> s1(static_cast<size_t>(D), 0.0f), s2(static_cast<size_t>(D), 0.0f);
  for (int32_t p = 0; p < batch.NumPages(g, s); ++p) {  // pages in order, as the kernel sums
    const float* m = reinterpret_cast<const float*>(qk.Meta(g.BlockId(batch.PageId(s, p), h)));
    for (int32_t c = 0; c < D; ++c) {
      s1[size_t(c)] += m[c];
      s2[size_t(c)] += m[D + c];
    }
  }
  const float n = float(batch.seq_len[s]);
  std::vector<float> spread(static_cast<size_t>(D));
  for (int32_t c = 0; c < D; ++c) {
    spread[size_t(c)] = s2[size_t(c)] - (s1[size_t(c)] * s1[size_t(c)]) / n;
  }
  return spread;
}

std::vector<float> DsChannelWeightRef(const PageGeometry& g, const std::vector<float>& spread,
                                      const BatchView& batch, const QueryView& q, int32_t s,
                                      int32_t h) {
  const int32_t group = batch.num_q_heads / g.num_kv_heads;
  std::vector<std::vector<float>> qr;
  for (int32_t j = 0; j < group; ++j) qr.push_back(QueryRow(g, batch, q, s, h * group + j, 1.0f));
  std::vector<float> weight(static_cast<size_t>(g.head_dim));
  for (int32_t c = 0; c < g.head_dim; ++c) {
    float w = 0.0f;  // query heads in order, as the kernel sums
    for (int32_t j = 0; j < group; ++j) w += qr[size_t(j)][size_t(c)] * qr[size_t(j)][size_t(c)];
    weight[size_t(c)] = spread[size_t(c)] * w;
  }
  return weight;
}

std::vector<int32_t> DsChooseChannelsRef(const float* channel_sums, int32_t head_dim,
                                         int32_t r) {
  std::vector<int32_t> ch(static_cast<size_t>(head_dim));
  std::iota(ch.begin(), ch.end(), 0);
  r = std::clamp(r, 0, head_dim);
  std::partial_sort(ch.begin(), ch.begin() + r, ch.end(), [&](int32_t a, int32_t b) {
    return channel_sums[a] != channel_sums[b] ? channel_sums[a] > channel_sums[b] : a < b;
  });
  ch.resize(static_cast<size_t>(r));
  std::sort(ch.begin(), ch.end());
  return ch;
}

absl::Status DsCheckSelect(const PageGeometry& g, const SelectorParams& params,
                           const BatchView& batch, const QuantKView& qk,
                           const SelectionView& out, bool host_data) {
  if (absl::Status st = ValidateGeometry(g); !st.ok()) return st;
  if (absl::Status st = ValidateBatch(g, batch, host_data); !st.ok()) return st;
  if (!out.pages || !out.count) {
    return absl::InvalidArgumentError("select: outputs must not be null");
  }
  if ((!params.grow && params.budget_pages < 1) || params.budget_pages < 0 ||
      params.sink_pages < 0) {
    return absl::InvalidArgumentError(
        "select: double sparsity needs budget_pages >= 1 (>= 0 with a grow cap) and "
        "sink_pages >= 0");
  }
  if (g.k_bits >= 16 || !qk.codes) {
    return absl::InvalidArgumentError(
        "select: double sparsity scores from the quantized K copy (k_bits < 16)");
  }
  if (g.k_scheme == kKSchemePageChannel ? !qk.HasRanges() : (!qk.scale || !qk.zero)) {
    return absl::InvalidArgumentError("select: double sparsity needs the K quantization ranges");
  }
  if (!qk.meta || qk.meta_bytes < DsMetadataBytesPerBlock(g)) {
    return absl::InvalidArgumentError(
        "select: double sparsity needs its channel statistics (the store was not set up "
        "for this selector)");
  }
  return ValidateSelectStride(params, batch, out);
}

absl::Status DsSelectRef(const PageGeometry& g, const SelectorParams& params,
                         const BatchView& batch, const QueryView& q, const QuantKView& qk,
                         const SelectionView& out) {
  if (absl::Status st = DsCheckSelect(g, params, batch, qk, out, /*host_data=*/true); !st.ok()) {
    return st;
  }
  if (!q.q) return absl::InvalidArgumentError("select: q must not be null");
  const int32_t group = batch.num_q_heads / g.num_kv_heads;
  const int32_t r = DsNumChannels(g);
  ForEachUnit(g, batch, [&](int32_t item, int32_t s, int32_t h) {
    const int32_t num_pages = batch.NumPages(g, s);
    int32_t* dst = out.pages + int64_t(item) * out.max_select;
    const int32_t budget = DsBudgetPages(params, num_pages);
    const int64_t keep_all = int64_t(budget) + params.sink_pages + 1;  // no overflow
    if (num_pages <= keep_all) {
      std::iota(dst, dst + num_pages, 0);
      out.count[item] = num_pages;
      return;
    }
    const std::vector<float> weight =
        DsChannelWeightRef(g, DsChannelSpreadRef(g, batch, qk, s, h), batch, q, s, h);
    const std::vector<int32_t> ch = DsChooseChannelsRef(weight.data(), g.head_dim, r);
    const int32_t first = params.sink_pages;
    const int32_t last = num_pages - 1;  // ranked pages [first, last) are all full
    std::vector<float> score(static_cast<size_t>(num_pages), -INFINITY);
    for (int32_t j = 0; j < group; ++j) {
      const std::vector<float> qr = QueryRow(g, batch, q, s, h * group + j, 1.0f);
      for (int32_t p = first; p < last; ++p) {
        const int64_t block = g.BlockId(batch.PageId(s, p), h);
        for (int32_t t = 0; t < g.page_size; ++t) {
          float dot = 0.0f;
          for (const int32_t c : ch) dot += qr[size_t(c)] * DequantizeAtRef(g, qk, block, t, c);
          score[size_t(p)] = std::max(score[size_t(p)], dot);
        }
      }
    }
    out.count[item] = KeepTopPagesRef(score, first, last, budget, dst);
  });
  return absl::OkStatus();
}

}  // namespace twl

#include "lib/paged_head_keys.h"

#include <algorithm>

#include "absl/status/status.h"
#include "core/quantize.h"
#include "pipeline/prune/twilight/cpu/estimate_cpu.h"

namespace twl::bench {

absl::StatusOr<PagedHeadKeys> PagedHeadKeys::Build(const float* k, int32_t len,
                                                   int32_t head_dim, int32_t page_size) {
  if (len < 1 || head_dim < 8 || head_dim > 1024 || head_dim % 8 != 0 || page_size < 1 ||
      page_size > 4096) {
    return absl::InvalidArgumentError("PagedHeadKeys: len >= 1, head_dim a multiple of 8 in "
                                      "[8, 1024], page_size in [1, 4096]");
  }
  PagedHeadKeys keys;
  PageGeometry& g = keys.g_;
  g.page_size = page_size;
  g.head_dim = head_dim;
  g.num_kv_heads = 1;  // block id = page
  g.k_bits = 4;
  g.k_scheme = kKSchemePageChannel;
  keys.len_ = len;
  keys.pages_ = (len + page_size - 1) / page_size;
  const size_t d = size_t(head_dim), pages = size_t(keys.pages_);
  keys.kv_.assign(pages * size_t(g.FpBlockElems()), 0);
  keys.codes_.assign(pages * size_t(g.CodeBlockBytes()), 0);
  keys.kmin_.resize(pages * d);
  keys.kmax_.resize(pages * d);
  keys.range_lo_.resize(pages * d);
  keys.range_hi_.resize(pages * d);
  keys.mean_.resize(pages * d);
  const FpKvView kv{keys.kv_.data()};
  const QuantKView qk = keys.View();
  for (int32_t page = 0; page < keys.pages_; ++page) {
    const int32_t rows = keys.PageRows(page);
    const float* first = k + size_t(page) * page_size * d;
    for (size_t j = 0; j < d; ++j) {
      float lo = first[j], hi = first[j];
      double sum = 0;
      for (int32_t r = 0; r < rows; ++r) {
        const float x = first[size_t(r) * d + j];
        lo = std::min(lo, x);
        hi = std::max(hi, x);
        sum += x;
        kv.K(g, page, r)[j] = FloatToHalf(x);
      }
      // The Quest bounds as the appends keep them (exact: K is FP16 already).
      keys.kmin_[size_t(page) * d + j] = FloatToHalf(lo);
      keys.kmax_[size_t(page) * d + j] = FloatToHalf(hi);
      keys.mean_[size_t(page) * d + j] = HalfToFloat(FloatToHalf(float(sum / rows)));
    }
    QuantizeBlockRowsRef(g, kv, qk, page, rows);  // codes the ranges, then the rows
  }
  keys.range_lo_f_.resize(pages * d);
  keys.range_hi_f_.resize(pages * d);
  keys.step_f_.resize(pages * d);
  const float inverse = HalfToFloat(PageChannelInverseMaxCodeHalf(g));
  for (int32_t page = 0; page < keys.pages_; ++page) {
    const size_t at = size_t(page) * d;
    PageChannelRangeValues(g, qk, page, &keys.range_lo_f_[at], &keys.range_hi_f_[at]);
    for (size_t j = 0; j < d; ++j) {
      keys.step_f_[at + j] = PageChannelStepValue(keys.range_lo_f_[at + j],
                                                  keys.range_hi_f_[at + j], inverse);
    }
  }
  return keys;
}

QuantKView PagedHeadKeys::View() const {
  QuantKView qk;
  qk.codes = codes_.data();
  qk.kmin = kmin_.data();
  qk.kmax = kmax_.data();
  // Decoded ranges, as the CPU store keeps them (core/page_layout.h).
  qk.range_lo = range_lo_.data();
  qk.range_hi = range_hi_.data();
  return qk;
}

void PagedHeadKeys::EstimateAll(const float* q, std::vector<float>* est) const {
  est->resize(size_t(len_));
  const QuantKView qk = View();
  for (int32_t page = 0; page < pages_; ++page) {
    EstimatePageChannelBlockRef(g_, q, qk, page, PageRows(page),
                                est->data() + size_t(page) * g_.page_size);
  }
}

}  // namespace twl::bench

// One KV head's keys stored as the library stores them, for studies of what the pruner's
// score pass reads: the INT4 estimation copy under the default scheme (core/page_layout.h,
// kKSchemePageChannel: per-page-channel codes over the 8-bit coded channel ranges of
// core/channel_range.h, "pc8" in twl_est_study), built by the library's own quantizer
// (QuantizeBlockRowsRef) and read by its own host estimator (EstimatePageChannelBlockRef),
// plus the per-page summaries a coarse page ranking would read: the decoded channel ranges
// and the FP16 per-channel mean of the page's rows, and the codes and steps themselves for
// estimates that read part of the codes (bench/lib/bit_planes.h).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "core/half.h"
#include "core/page_layout.h"

namespace twl::bench {

class PagedHeadKeys {
 public:
  // k: [len][head_dim] FP16 values as floats (the stored K). head_dim a multiple of 8 in
  // [8, 1024], page_size in [1, 4096], len >= 1.
  static absl::StatusOr<PagedHeadKeys> Build(const float* k, int32_t len, int32_t head_dim,
                                             int32_t page_size);

  int32_t len() const { return len_; }
  int32_t head_dim() const { return g_.head_dim; }
  int32_t page_size() const { return g_.page_size; }
  int32_t pages() const { return pages_; }
  int32_t PageRows(int32_t page) const {
    return page + 1 < pages_ ? g_.page_size : len_ - page * g_.page_size;
  }

  // The library's INT4 estimate of q . k (q already scaled) for every token: est[len].
  void EstimateAll(const float* q, std::vector<float>* est) const;

  // A page's decoded channel ranges (contain its Quest kmin / kmax) and its FP16 channel
  // means, [head_dim] each.
  const float* RangeLo(int32_t page) const { return &range_lo_f_[size_t(page) * head_dim()]; }
  const float* RangeHi(int32_t page) const { return &range_hi_f_[size_t(page) * head_dim()]; }
  const float* Mean(int32_t page) const { return &mean_[size_t(page) * head_dim()]; }

  // Token t's stored code of channel j (0 .. 15), and a page's per-channel FP16 steps as the
  // library's estimator forms them from the decoded ranges (PageChannelStepValue): the INT4
  // estimate's k~_j = FP16(RangeLo(page)[j] + code * Step(page)[j]).
  uint32_t Code(int32_t token, int32_t j) const {
    return UnpackCode(&codes_[size_t(token) * size_t(g_.CodeBytesPerToken())], j, g_.k_bits);
  }
  const float* Step(int32_t page) const { return &step_f_[size_t(page) * head_dim()]; }

 private:
  QuantKView View() const;

  PageGeometry g_;
  int32_t len_ = 0, pages_ = 0;
  // The library's store of this one KV head (mutable: the views hold non-const pointers).
  mutable std::vector<fp16_t> kv_, kmin_, kmax_, range_lo_, range_hi_;
  mutable std::vector<uint8_t> codes_;
  std::vector<float> range_lo_f_, range_hi_f_, step_f_, mean_;
};

}  // namespace twl::bench

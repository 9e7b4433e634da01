// Double Sparsity (Yang et al. 2024, arXiv 2408.07092): a few "outlier" channels of K carry
// most of q.k, so scoring tokens with only those channels ranks them almost like the full
// dot product at a fraction of the reads. Here, per (sequence, KV head):
//   channels  the r = max(1, head_dim / 8) channels with the largest var_c * sum_j q_jc^2:
//             var_c the variance of k_c over the sequence's tokens (from sums kept per
//             block, see below), q_j the GQA group's queries of this step; ascending channel
//             index, ties to the lower channel. var_c * q_c^2 is channel c's expected share
//             of the spread of q.k over the tokens, i.e. of what ranks them. The paper
//             calibrates channels offline per layer and head from Q and K; this needs no
//             calibration data and no per-sequence state (the K sums are the prefix's own,
//             recomputed from the per-block metadata at every step, so a longer prefix
//             refines them). Variance, not mean |k|: a channel with a large constant offset
//             (the usual K outlier) adds nearly the same q_c * k_c to every token and cannot
//             rank them. Measured on the synthetic workload at CI size (context 2048, 16%
//             budget, union mass): mean |k| 0.56, variance alone 0.72, variance * q^2 0.82
//             (Quest 0.82); on the byte-level model with RoPE (head dim 32) variance alone
//             raised perplexity by 89% at a 25% budget (bench/ACCURACY.md).
//   score     per ranked page, max over its rows and the GQA group's query heads of
//             sum_{c in channels} q_c * k~_c, with k~ the dequantized estimation copy of K
//             (INT2/4/8 codes, either k_scheme): no label cache, the estimation store
//             already holds every token's K at low precision.
//   keep      the top budget pages by score (ties to the lower page) plus the sinks and the
//             last page, ascending, like fixed Quest; Twilight's pruner runs on top.
// Own metadata per block: head_dim FP32 sums of k, then head_dim FP32 sums of k^2, over the
// block's filled rows, summed in row order from 0 so that the host reference and the device
// kernels agree bit for bit (1 KiB per block at head_dim 128).
// budget: params.budget_pages (>= 1) for a fixed selector; with params.grow (the Runtime)
// the grow cap (GrowCapPages: budget_pages or budget_fraction of each sequence); without a
// cap every page is kept. Needs k_bits < 16 (a quantized copy to score from).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "pipeline/select/selector.h"

namespace twl {

const Selector& DoubleSparsitySelector();

// Channels scored per (sequence, KV head).
inline int32_t DsNumChannels(const PageGeometry& g) {
  return g.head_dim / 8 > 1 ? g.head_dim / 8 : 1;
}
inline int64_t DsMetadataBytesPerBlock(const PageGeometry& g) {
  return 2 * int64_t(g.head_dim) * int64_t(sizeof(float));
}
// Pages a (sequence, KV head) of num_pages pages ranks for (before sinks and the last page).
int32_t DsBudgetPages(const SelectorParams& params, int32_t num_pages);

// ---- CPU reference (also the host path of the selector) --------------------------------

// Recomputes the per-channel sums of k and k^2 of every block of page `pages[i]` over rows
// [0, rows[i]) from the FP16 K in kv.
void DsUpdateBlocksRef(const PageGeometry& g, const int32_t* pages, const int32_t* rows,
                       int32_t n, const FpKvView& kv, const QuantKView& qk);
// Per channel, n times the variance of k over the sequence's n tokens, sum k^2 - (sum k)^2 / n,
// from the block sums of (sequence s, KV head h).
std::vector<float> DsChannelSpreadRef(const PageGeometry& g, const BatchView& batch,
                                      const QuantKView& qk, int32_t s, int32_t h);
// The channel weights the choice ranks by: spread_c times the sum over the GQA group's query
// heads of q_c^2 (the expected share of channel c in the spread of q.k over the tokens).
std::vector<float> DsChannelWeightRef(const PageGeometry& g, const std::vector<float>& spread,
                                      const BatchView& batch, const QueryView& q, int32_t s,
                                      int32_t h);
// The r channels with the largest weights (ties to the lower channel), ascending.
std::vector<int32_t> DsChooseChannelsRef(const float* channel_sums, int32_t head_dim,
                                         int32_t r);
// The selection (SelectionView: pages ascending, count; bound/limit untouched).
absl::Status DsSelectRef(const PageGeometry& g, const SelectorParams& params,
                         const BatchView& batch, const QueryView& q, const QuantKView& qk,
                         const SelectionView& out);
// Shape checks shared by the host and device paths; host_data: the batch's arrays are host
// memory and are checked too (the device path must not read them).
absl::Status DsCheckSelect(const PageGeometry& g, const SelectorParams& params,
                           const BatchView& batch, const QuantKView& qk,
                           const SelectionView& out, bool host_data);

}  // namespace twl

// INT4 per page channel (k_scheme 1) on the page-16 estimator (ScorePage16Kernel with
// kPageChannel, prune.cuh: codes dequantized to FP16 on the A side): LaunchPrune's own estimates, read
// back from its workspace (PruneWorkspaceEstimates), against EstimatePageChannelScoreRef on
// fresh random stores (gtest's random seed; per-channel offsets and outlier channels of 4x
// spread, MakeRandomStore), head dim 64/128, 1..16 query heads per KV head (one and two MMA
// n-tiles), ragged lengths (partial last pages),
// Quest subsets and full selections, and growth in one stage (kMass: page max and mass).
// The device copy has no per-token scale/zero (null): the scheme must not read them.
// Tolerances:
//  - each stored score s against the reference r: |s - r| <= 2^-10 |r| + 4e-5 S + 1e-6,
//    S = sum_j |q_j k~_j| (the FP16 storage of s moves it by <= 2^-11 of it; the FP32 sums,
//    tensor-core accumulation included, run in another order and the GPU scales after the
//    sum: < 2 d ulps of S). A channel or head mixed up in the fragments, or a step rounded
//    differently, errs by O(|q_j step_j|), far beyond this;
//  - rows past the sequence end: -inf exactly;
//  - growing: a page's max is exactly the max of its stored scores, its mass
//    sum_r exp(s_r - max) within 1e-5 relative (ex2.approx and the float sum) + 1e-6.
// Kept sets against the reference's top-p rule: prune_gpu_test.cc / grow_gpu_test.cc
// (their PageChannel instances).
#include <algorithm>
#include <cmath>

#include "core/head_math.h"
#include "core/quantize.h"
#include "gpu_test_util.h"
#include "pipeline/prune/twilight/cpu/estimate_cpu.h"
#include "pipeline/prune/twilight/cpu/twilight_prune_cpu.h"
#include "pipeline/prune/twilight/cuda/prune_launch.h"
#include "pipeline/select/quest/cuda/select_launch.h"

namespace twl {
namespace {

using testing::DeviceStore;
using testing::Download;
using testing::Poisoned;
using testing::RefStore;

struct ScoreCase {
  int32_t head_dim, group;
  bool grow, full;  // growing Quest (one stage) / the full selector (else a Quest budget)
  std::vector<int32_t> lens;
};

// S of the tolerance above: the magnitude of the estimate's terms.
double TermMagnitude(const PageGeometry& g, const float* q, const QuantKView& qk, int64_t block,
                     int32_t row) {
  double sum = 0.0;
  std::vector<float> lo(static_cast<size_t>(g.head_dim)), hi(static_cast<size_t>(g.head_dim));
  PageChannelRangeValues(g, qk, block, lo.data(), hi.data());  // the channels' ranges
  const float inverse = HalfToFloat(PageChannelInverseMaxCodeHalf(g));
  for (int32_t j = 0; j < g.head_dim; ++j) {
    const float mn = lo[size_t(j)];
    const float step = PageChannelStepValue(mn, hi[size_t(j)], inverse);
    const float k = PageChannelDequantValue(int32_t(UnpackCode(qk.Codes(g, block, row), j, g.k_bits)),
                                            step, mn);
    sum += std::abs(double(q[j]) * k);
  }
  return sum;
}

class PageChannelScoreGpuTest : public ::testing::TestWithParam<ScoreCase> {};

TEST_P(PageChannelScoreGpuTest, Page16EstimatesMatchReference) {
  TWL_SKIP_WITHOUT_GPU();
  const ScoreCase c = GetParam();
  PageGeometry g;
  g.page_size = 16;
  g.head_dim = c.head_dim;
  g.num_kv_heads = 2;
  g.k_bits = 4;
  g.k_scheme = kKSchemePageChannel;
  const uint64_t seed = ::testing::UnitTest::GetInstance()->random_seed() +
                        uint64_t(c.group * 7 + c.head_dim + (c.grow ? 1000 : 0));
  RefStore st = testing::MakeRandomStore(g, g.num_kv_heads * c.group, c.lens, seed, 2.5f);
  const BatchView hb = st.Batch();
  SelectorParams sp;
  sp.kind = c.full ? SelectorKind::kFull : SelectorKind::kQuest;
  sp.grow = c.grow;
  sp.budget_pages = c.grow ? 0 : 20;
  sp.sink_pages = 1;
  PrunerParams pp;
  pp.p = 0.9f;
  pp.grow_seed_pages = c.grow ? 0 : -1;  // growing: one stage, every page listed and scored
  const int32_t stride = SelectStride(sp, hb.max_pages);
  const int32_t pairs = hb.num_seqs * g.num_kv_heads, heads = hb.num_seqs * hb.num_q_heads;
  const int32_t cand = stride * g.page_size;

  DeviceStore ds(st);
  QuantKView dq = ds.Quant();
  dq.scale = dq.zero = nullptr;
  gpu::DeviceBuffer pages = Poisoned<int32_t>(size_t(pairs) * stride),
                    count = Poisoned<int32_t>(pairs), limit = Poisoned<int32_t>(pairs),
                    bound = Poisoned<float>(size_t(heads) * stride),
                    tokens = Poisoned<int32_t>(size_t(pairs) * cand),
                    kcount = Poisoned<int32_t>(pairs);
  const SelectionView sel{pages.as<int32_t>(), count.as<int32_t>(), stride,
                          c.grow ? bound.as<float>() : nullptr,
                          c.grow ? limit.as<int32_t>() : nullptr};
  const size_t sel_bytes = SelectWorkspaceBytes(g, sp, hb.num_seqs, hb.max_pages);
  const size_t pr_bytes = PruneWorkspaceBytes(g, hb.num_seqs, hb.num_q_heads, stride);
  gpu::DeviceBuffer ws_sel, ws_pr;
  TWL_ASSERT_OK(ws_sel.Reserve(std::max<size_t>(sel_bytes, 256)));
  TWL_ASSERT_OK(ws_pr.Reserve(pr_bytes));
  TWL_ASSERT_OK(gpu::Memset(ws_pr.get(), 0xFF, pr_bytes));
  TWL_ASSERT_OK(LaunchSelectPages(g, sp, ds.Batch(), ds.Query(), dq, sel, ws_sel.get(),
                                  sel_bytes, nullptr, pp.softmax_scale));
  TWL_ASSERT_OK(LaunchPrune(g, pp, ds.Batch(), ds.Query(), dq, ds.Kv(), sel,
                            KeptView{tokens.as<int32_t>(), kcount.as<int32_t>(), cand},
                            HeadStatsView{}, ws_pr.get(), pr_bytes, nullptr));
  const auto sel_pages = Download<int32_t>(pages, size_t(pairs) * stride);
  const auto sel_count = Download<int32_t>(count, size_t(pairs));
  const PruneEstimates est =
      PruneWorkspaceEstimates(g, hb.num_seqs, hb.num_q_heads, stride, ws_pr.get());
  std::vector<fp16_t> scores(size_t(heads) * cand);
  std::vector<float> page_max(size_t(heads) * stride), page_mass(size_t(heads) * stride);
  TWL_ASSERT_OK(gpu::CopyToHost(scores.data(), est.scores, scores.size() * sizeof(fp16_t)));
  if (c.grow) {
    TWL_ASSERT_OK(gpu::CopyToHost(page_max.data(), est.page_max, page_max.size() * sizeof(float)));
    TWL_ASSERT_OK(gpu::CopyToHost(page_mass.data(), est.page_mass, page_mass.size() * sizeof(float)));
  }

  const float scale = SoftmaxScale(g, pp.softmax_scale);
  const QuantKView qk = st.Quant();
  int64_t checked = 0, partial_rows = 0;
  double worst = 0.0;  // largest error in units of the tolerance
  for (int32_t pair = 0; pair < pairs; ++pair) {
    const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
    const int32_t n = sel_count[size_t(pair)];
    ASSERT_GE(n, 1);
    ASSERT_LE(n, stride);
    if (c.grow) ASSERT_EQ(n, (hb.seq_len[s] + 15) / 16) << "growing lists every page";
    for (int32_t j = 0; j < c.group; ++j) {
      const int32_t qh = h * c.group + j;
      const int64_t row_at = int64_t(s) * hb.num_q_heads + qh;
      const std::vector<float> qr = QueryRow(g, hb, st.Query(), s, qh, scale);
      for (int32_t i = 0; i < n; ++i) {
        const int32_t page_idx = sel_pages[size_t(pair) * stride + size_t(i)];
        const int64_t block = g.BlockId(hb.PageId(s, page_idx), h);
        const int32_t rows = std::min(16, hb.seq_len[s] - page_idx * 16);
        float mx = -INFINITY;
        for (int32_t r = 0; r < 16; ++r) {
          const float got = HalfToFloat(scores[size_t(row_at * cand + i * 16 + r)]);
          mx = std::max(mx, got);
          if (r >= rows) {
            ASSERT_EQ(got, -INFINITY) << "row " << r << " of page " << page_idx << " past the end";
            ++partial_rows;
            continue;
          }
          const float ref = EstimatePageChannelScoreRef(g, qr.data(), qk, block, r);
          const double tol = std::ldexp(std::abs(double(ref)), -10) +
                             4e-5 * TermMagnitude(g, qr.data(), qk, block, r) + 1e-6;
          worst = std::max(worst, std::abs(double(got) - ref) / tol);
          ASSERT_NEAR(got, ref, tol) << "seq " << s << " head " << qh << " page " << page_idx
                                     << " row " << r;
          ++checked;
        }
        if (c.grow) {
          const size_t at = size_t(row_at * stride + i);
          ASSERT_EQ(page_max[at], mx) << "page max, head " << qh << " page " << page_idx;
          double mass = 0.0;
          for (int32_t r = 0; r < rows; ++r) {
            mass += std::exp(double(HalfToFloat(scores[size_t(row_at * cand + i * 16 + r)])) - mx);
          }
          ASSERT_NEAR(page_mass[at], mass, 1e-5 * mass + 1e-6)
              << "page mass, head " << qh << " page " << page_idx;
        }
      }
    }
  }
  EXPECT_GT(checked, 0);
  RecordProperty("checked_scores", int(checked));
  RecordProperty("worst_in_tolerances", std::to_string(worst));
  (void)partial_rows;
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, PageChannelScoreGpuTest,
    ::testing::Values(
        // Quest subsets (budget 20 + sink + last page) and full selections; 1, 3, 4, 8 heads.
        ScoreCase{128, 4, false, false, {1203, 37, 700, 16, 3001}},
        ScoreCase{128, 8, false, true, {5000, 33, 17}},
        ScoreCase{128, 1, false, true, {4100, 9}},
        ScoreCase{128, 3, false, true, {20000, 301}},  // > 1024 pages: two runs per pair
        ScoreCase{64, 4, false, false, {1203, 37, 700}},
        ScoreCase{64, 8, false, true, {3000, 15}},
        ScoreCase{64, 1, false, true, {2000, 1}},
        ScoreCase{64, 2, false, true, {2500, 47}},
        // Two n-tiles (9-16 heads; skipped while kGpuMaxGroup < 16).
        ScoreCase{128, 16, false, true, {3000, 41}},
        ScoreCase{64, 12, false, true, {2500, 7}},
        ScoreCase{128, 9, false, false, {1500, 100}},
        // Growing in one stage: page max and mass (kMass).
        ScoreCase{128, 4, true, false, {5000, 37, 2100, 16}},
        ScoreCase{64, 8, true, false, {3001, 700}},
        ScoreCase{128, 1, true, false, {4000, 33}},
        ScoreCase{128, 16, true, false, {3000, 1000}},
        ScoreCase{64, 6, true, false, {2200, 19}}));

}  // namespace
}  // namespace twl

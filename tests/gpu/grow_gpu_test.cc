// Growing Quest on the GPU (LaunchSelectPages + LaunchPrune with SelectorParams::grow) against
// the CPU reference (SelectPagesRef + PruneRef) on fresh random inputs (gtest's random seed).
// Tolerances:
//  - select: same pages/count/limit; bounds within 1e-3 * (1 + |bound|) (tensor-core FP32 sums
//    in another order than the CPU's), +inf exactly for the sinks and the last page;
//  - prune: candidate rows per head equal to the reference's for >= 90% of the (sequence,
//    KV head) pairs (the growth rule R <= c * A is decided in float on the GPU and in double
//    on the CPU: a page whose level sits on the boundary may go either way); cap_hit equal;
//    where the candidates agree, kept sets differ by <= 1% of the reference's tokens + 2;
//    every head's full-context lower bound >= p - 2e-3 unless it hit the cap;
//  - a flat head at 128k tokens keeps >= p - 0.01 of its TRUE mass (exact scores on FP16 K).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <set>

#include "core/half.h"
#include "core/head_math.h"
#include "pipeline/prune/twilight/cpu/twilight_prune_cpu.h"
#include "pipeline/prune/twilight/cuda/prune_launch.h"
#include "pipeline/select/quest/cpu/quest_select_cpu.h"
#include "pipeline/select/quest/cuda/select_launch.h"
#include "runtime/runtime.h"
#include "gpu_test_util.h"
#include "support/grow_store.h"
#include "support/prune_check.h"

namespace twl {
namespace {

using testing::DeviceStore;
using testing::Download;
using testing::Poisoned;
using testing::RefStore;
using testing::Upload;

struct Outputs {
  std::vector<int32_t> pages, count, limit, tokens, kept_count, selected, kept, cap_hit;
  std::vector<float> bound, est, full;
  std::vector<int32_t> radix_searches;  // GPU: per pair, searches the radix passes decided
};

struct GrowCase {
  int32_t head_dim, group, cap_pages;
  float p;
  std::vector<int32_t> lens;
  int32_t seed_pages = -1;  // PrunerParams::grow_seed_pages (the result must not depend on it)
  int32_t k_scheme = kKSchemeToken;
};

PageGeometry Geometry(int32_t head_dim, int32_t k_scheme = kKSchemeToken) {
  PageGeometry g;
  g.num_kv_heads = 2;
  g.head_dim = head_dim;
  g.page_size = 16;
  g.k_bits = 4;
  g.k_scheme = k_scheme;
  return g;
}

Outputs RunReference(RefStore& st, const SelectorParams& sp, const PrunerParams& pp) {
  const BatchView b = st.Batch();
  const int32_t stride = SelectStride(sp, b.max_pages);
  const size_t pairs = size_t(b.num_seqs) * st.g.num_kv_heads;
  const size_t heads = size_t(b.num_seqs) * b.num_q_heads;
  Outputs o;
  o.pages.assign(pairs * stride, -1);
  o.count.assign(pairs, 0);
  o.limit.assign(pairs, 0);
  o.bound.assign(heads * stride, 0.0f);
  o.tokens.assign(pairs * stride * st.g.page_size, -1);
  o.kept_count.assign(pairs, 0);
  o.selected.assign(heads, 0);
  o.kept.assign(heads, 0);
  o.cap_hit.assign(heads, 0);
  o.est.assign(heads, 0.0f);
  o.full.assign(heads, 0.0f);
  const SelectionView sel{o.pages.data(), o.count.data(), stride, o.bound.data(), o.limit.data()};
  EXPECT_TRUE(SelectPagesRef(st.g, sp, b, st.Query(), st.Quant(), sel).ok());
  EXPECT_TRUE(PruneRef(st.g, pp, b, st.Query(), st.Quant(), st.Kv(), sel,
                       KeptView{o.tokens.data(), o.kept_count.data(), stride * st.g.page_size},
                       HeadStatsView{o.selected.data(), o.kept.data(), o.est.data(),
                                     o.full.data(), o.cap_hit.data()})
                  .ok());
  return o;
}

Outputs RunGpu(const RefStore& st, const SelectorParams& sp, const PrunerParams& pp) {
  DeviceStore ds(st);
  const BatchView b = ds.Batch();
  const int32_t stride = SelectStride(sp, b.max_pages);
  const size_t pairs = size_t(b.num_seqs) * st.g.num_kv_heads;
  const size_t heads = size_t(b.num_seqs) * b.num_q_heads;
  const size_t kept_stride = size_t(stride) * st.g.page_size;
  gpu::DeviceBuffer pages = Poisoned<int32_t>(pairs * stride), count = Poisoned<int32_t>(pairs),
                    limit = Poisoned<int32_t>(pairs), bound = Poisoned<float>(heads * stride),
                    tokens = Poisoned<int32_t>(pairs * kept_stride),
                    kcount = Poisoned<int32_t>(pairs), selected = Poisoned<int32_t>(heads),
                    kept = Poisoned<int32_t>(heads), cap = Poisoned<int32_t>(heads),
                    est = Poisoned<float>(heads), full = Poisoned<float>(heads);
  const SelectionView sel{pages.as<int32_t>(), count.as<int32_t>(), stride, bound.as<float>(),
                          limit.as<int32_t>()};
  gpu::DeviceBuffer ws_sel, ws_pr;
  const size_t sel_bytes = SelectWorkspaceBytes(st.g, sp, b.num_seqs, b.max_pages);
  const size_t pr_bytes = PruneWorkspaceBytes(st.g, b.num_seqs, b.num_q_heads, stride);
  EXPECT_TRUE(ws_sel.Reserve(std::max<size_t>(sel_bytes, 256)).ok());
  EXPECT_TRUE(ws_pr.Reserve(pr_bytes).ok());
  EXPECT_TRUE(gpu::Memset(ws_pr.get(), 0xFF, pr_bytes).ok());
  absl::Status s = LaunchSelectPages(st.g, sp, b, ds.Query(), ds.Quant(), sel, ws_sel.get(),
                                     sel_bytes, nullptr, pp.softmax_scale);
  EXPECT_TRUE(s.ok()) << s;
  // ProfilePrune: LaunchPrune's kernels, and which search decided each pair.
  PruneProfile profile;
  s = ProfilePrune(st.g, pp, b, ds.Query(), ds.Quant(), ds.Kv(), sel,
                   KeptView{tokens.as<int32_t>(), kcount.as<int32_t>(), int32_t(kept_stride)},
                   HeadStatsView{selected.as<int32_t>(), kept.as<int32_t>(), est.as<float>(),
                                 full.as<float>(), cap.as<int32_t>()},
                   ws_pr.get(), pr_bytes, nullptr, &profile);
  EXPECT_TRUE(s.ok()) << s;
  Outputs o;
  o.radix_searches = profile.radix_searches;
  o.pages = Download<int32_t>(pages, pairs * stride);
  o.count = Download<int32_t>(count, pairs);
  o.limit = Download<int32_t>(limit, pairs);
  o.bound = Download<float>(bound, heads * stride);
  o.tokens = Download<int32_t>(tokens, pairs * kept_stride);
  o.kept_count = Download<int32_t>(kcount, pairs);
  o.selected = Download<int32_t>(selected, heads);
  o.kept = Download<int32_t>(kept, heads);
  o.cap_hit = Download<int32_t>(cap, heads);
  o.est = Download<float>(est, heads);
  o.full = Download<float>(full, heads);
  return o;
}

// How far the GPU's pruning is from the reference's, over the pairs compared.
struct PruneAgreement {
  int32_t pairs_equal = 0;  // pairs whose selections (candidate rows per head) agree
  int64_t worst_diff = 0;   // the largest kept-set difference over those pairs, in tokens
  double worst_share = 0.0; // the same, as a share of the reference's kept set
};

// The pruning of every (sequence, KV head) pair but `skip` against the reference's, with the
// tolerances in the header (fatal failures return early: callers check HasFatalFailure).
void ExpectPrunesAgree(RefStore& st, const SelectorParams& sp, const PrunerParams& pp,
                       const Outputs& r, const Outputs& d, int32_t skip, PruneAgreement* out) {
  const PageGeometry& g = st.g;
  const BatchView b = st.Batch();
  const int32_t stride = SelectStride(sp, b.max_pages);
  const int32_t group = st.group();
  int32_t& pairs_equal = out->pairs_equal;
  int64_t& worst_diff = out->worst_diff;
  double& worst_share = out->worst_share;
  const int32_t pairs = b.num_seqs * g.num_kv_heads;
  for (int32_t item = 0; item < pairs; ++item) {
    if (item == skip) continue;
    const int32_t s = item / g.num_kv_heads, h = item % g.num_kv_heads;
    bool same = true;
    for (int32_t j = 0; j < group; ++j) {
      const int32_t at = s * b.num_q_heads + h * group + j;
      SCOPED_TRACE(::testing::Message() << "seq " << s << " head " << h * group + j);
      EXPECT_EQ(d.cap_hit[size_t(at)], r.cap_hit[size_t(at)]);
      if (!r.cap_hit[size_t(at)]) EXPECT_GE(d.full[size_t(at)], pp.p - 2e-3f);
      EXPECT_LE(d.full[size_t(at)], d.est[size_t(at)] + 1e-5f);
      same = same && d.selected[size_t(at)] == r.selected[size_t(at)];
    }
    pairs_equal += same;
    const int32_t max_kept = stride * g.page_size;
    const int32_t n = d.kept_count[size_t(item)];
    ASSERT_GE(n, 0);
    const int32_t* gt = d.tokens.data() + int64_t(item) * max_kept;
    for (int32_t i = 1; i < n; ++i) ASSERT_LT(gt[i - 1], gt[i]) << "not ascending";
    if (!same) continue;
    const int32_t* rt = r.tokens.data() + int64_t(item) * max_kept;
    const std::set<int32_t> a(gt, gt + n), e(rt, rt + r.kept_count[size_t(item)]);
    const std::vector<int32_t> diff = testing::KeptDifference(a, e);
    worst_diff = std::max(worst_diff, int64_t(diff.size()));
    worst_share = std::max(worst_share, double(diff.size()) / std::max<double>(1.0, double(e.size())));
    if (double(diff.size()) <= 0.01 * double(e.size()) + 2.0) continue;
    // More than rounding: allowed only as a mass near-tie, where one side's cumulative mass
    // reaches p * (A + R) just before a level set of equal FP16 estimates and the other's
    // (float sums on the host, fixed-point integers on the GPU) falls just short, so it also
    // keeps that level set (at 128k tokens, hundreds of tokens). Its signature: the sets are
    // nested, and every differing token lies in one level set of one head of the group (its
    // FP16 estimates within two FP16 steps or 1/1024 logit: the scores' summation order may
    // split a level).
    const bool nested = std::includes(a.begin(), a.end(), e.begin(), e.end()) ||
                        std::includes(e.begin(), e.end(), a.begin(), a.end());
    bool one_level = false;
    for (int32_t j = 0; j < group && !one_level; ++j) {
      const std::vector<float> qrow =
          QueryRow(g, b, st.Query(), s, h * group + j, SoftmaxScale(g, pp.softmax_scale));
      float lo = INFINITY, hi = -INFINITY;
      for (const int32_t tok : diff) {
        const int64_t page = st.page_table[size_t(s) * size_t(st.max_pages) + size_t(tok / g.page_size)];
        const float est = HalfToFloat(FloatToHalf(EstimateScoreRef(
            g, qrow.data(), st.Quant(), st.Kv(), g.BlockId(page, h), tok % g.page_size)));
        lo = std::min(lo, est);
        hi = std::max(hi, est);
      }
      const float step = std::ldexp(1.0f, std::max(-24, int(std::floor(std::log2(std::max(
                                                      std::fabs(lo), std::fabs(hi))))) - 10));
      // (The GPU rule's finest bin is 1/2048 logit: below |s| = 2 it holds several values.)
      one_level = hi - lo <= std::max(2.0f * step, 2.0f / 2048.0f);
    }
    // (Nested sets within 2% of the kept count were also accepted here while the host
    // reference summed its weights in float; since TopPThresholdRef sums in double (tenth
    // session) a difference beyond rounding must be one level set of one head. Until the
    // host's top-p took the estimates as FP16 values, as the GPU stores them, a flat head at
    // 140k failed here in 1 input of 8: the hot tokens' FP32-vs-FP16 weights moved its mass
    // by ~6e-5, ~240 tokens of its bulk.)
    // Per head (GPU / host): own kept tokens, estimated mass within the candidates and the
    // full-context mass: tells a different share target (growth's A and R) from a
    // different top-p over the same target.
    ::testing::Message heads;
    for (int32_t j = 0; j < group; ++j) {
      const size_t at = size_t(s) * size_t(b.num_q_heads) + size_t(h * group + j);
      heads << "\n  head " << h * group + j << ": kept " << d.kept[at] << " / " << r.kept[at]
            << ", est " << d.est[at] << " / " << r.est[at] << ", full " << d.full[at] << " / "
            << r.full[at] << ", selected " << d.selected[at];
    }
    EXPECT_TRUE(nested && one_level)
        << "pair " << item << ": " << a.size() << " vs " << e.size() << " kept, " << diff.size()
        << " differ, nested " << nested << heads;
  }
}

class GrowGpuTest : public ::testing::TestWithParam<GrowCase> {};

TEST_P(GrowGpuTest, MatchesReference) {
  TWL_SKIP_WITHOUT_GPU();
  const GrowCase c = GetParam();
  if (c.group > kGpuMaxGroup) GTEST_SKIP() << "group " << c.group << " > kGpuMaxGroup";
  const PageGeometry g = Geometry(c.head_dim, c.k_scheme);
  const uint64_t seed = ::testing::UnitTest::GetInstance()->random_seed() + uint64_t(c.group);
  RefStore st = testing::MakeGrowStore(g, g.num_kv_heads * c.group, c.lens, 1.5f, 8.0f, seed);
  SelectorParams sp;
  sp.kind = SelectorKind::kQuest;
  sp.grow = true;
  sp.budget_pages = c.cap_pages;
  PrunerParams pp;
  pp.p = c.p;
  pp.grow_seed_pages = c.seed_pages;
  const Outputs r = RunReference(st, sp, pp);
  const Outputs d = RunGpu(st, sp, pp);
  const BatchView b = st.Batch();
  const int32_t stride = SelectStride(sp, b.max_pages);
  const int32_t group = c.group;
  // Select.
  EXPECT_EQ(d.count, r.count);
  EXPECT_EQ(d.limit, r.limit);
  for (int32_t s = 0; s < b.num_seqs; ++s) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      const size_t item = size_t(s) * g.num_kv_heads + h;
      for (int32_t i = 0; i < r.count[item]; ++i) {
        ASSERT_EQ(d.pages[item * stride + i], r.pages[item * stride + i]);
        for (int32_t j = 0; j < group; ++j) {
          const size_t at = (size_t(s) * b.num_q_heads + h * group + j) * stride + size_t(i);
          if (std::isinf(r.bound[at])) {
            ASSERT_EQ(d.bound[at], r.bound[at]) << "page " << i;
          } else {
            ASSERT_NEAR(d.bound[at], r.bound[at], 1e-3f * (1.0f + std::fabs(r.bound[at])))
                << "page " << i;
          }
        }
      }
    }
  }
  // Prune.
  const int32_t pairs = b.num_seqs * g.num_kv_heads;
  PruneAgreement agree;
  ExpectPrunesAgree(st, sp, pp, r, d, -1, &agree);
  if (HasFatalFailure()) return;
  const int32_t pairs_equal = agree.pairs_equal;
  const int64_t worst_diff = agree.worst_diff;
  const double worst_share = agree.worst_share;
  // Printed for repeated runs (scripts/device-jobs/verify-and-rows.sh, phase grow): since the
  // reference sums A over FP16-rounded estimates as the GPU does, a pair's selections differ
  // only at float-vs-double near-ties (a CPU emulation: ~1 in 40 pairs of 140k tokens);
  // before, the 140k peaked pair differed in ~80% of inputs and the test failed when a
  // second did.
  std::printf("grow pairs with the reference's selection: %d/%d\n", pairs_equal, pairs);
  // The largest kept-set difference over those pairs (the tolerance above is 1% + 2 tokens;
  // the GPU keeps its threshold's whole 1/2048-logit sub-bin, the host the exact level set):
  // what a tighter tolerance would have to allow.
  std::printf("grow kept-set difference: at most %lld tokens, %.3f%% of the reference's\n",
              static_cast<long long>(worst_diff), 100.0 * worst_share);
  EXPECT_GE(pairs_equal, int32_t(0.9 * pairs)) << pairs_equal << "/" << pairs;
  // Which search decided (a slow path taken silently would pass every check above). A pair
  // of at most kSortPages pages is always sorted. Past it, one stage sorts its top pages and
  // decides when a cut among them passes or the cap lies among them (caps here: <= 5000
  // pages, the top set ~8192); without a cap, p = 1 always needs the radix search. In this
  // store a peaked KV head (h >= 1) of up to 4 query heads finds its cut among its top pages
  // (measured: 140k tokens, d 64; with 16 heads their union needed more, the radix decided).
  ASSERT_EQ(d.radix_searches.size(), size_t(pairs));
  constexpr int32_t kSortPagesForTest = 8192;
  const bool one_stage = c.seed_pages <= 0;
  for (int32_t item = 0; item < pairs; ++item) {
    const int32_t s = item / g.num_kv_heads, h = item % g.num_kv_heads;
    const int32_t pages = (c.lens[size_t(s)] + g.page_size - 1) / g.page_size;
    const int32_t radix = d.radix_searches[size_t(item)];
    SCOPED_TRACE(::testing::Message() << "pair " << item << ", " << pages << " pages");
    if (pages <= kSortPagesForTest) {
      EXPECT_EQ(radix, 0);
    } else if (one_stage && c.cap_pages > 0) {
      EXPECT_EQ(radix, 0);
    } else if (c.p >= 1.0f) {
      EXPECT_GE(radix, 1);
    } else if (h >= 1 && one_stage && group <= 4) {
      EXPECT_EQ(radix, 0);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(
    Cases, GrowGpuTest,
    ::testing::Values(GrowCase{128, 4, 0, 0.95f, {5000, 37, 2100, 16}},
                      GrowCase{64, 1, 0, 0.9f, {3001, 700}},
                      GrowCase{128, 8, 0, 0.95f, {4100}},
                      GrowCase{128, 4, 6, 0.95f, {3000, 1000}},  // the flat head hits the cap
                      GrowCase{64, 4, 0, 1.0f, {1203, 17}},
                      GrowCase{128, 4, 0, 0.95f, {5000, 37, 2100, 16}, 0},  // one stage
                      GrowCase{128, 2, 0, 0.9f, {6000, 3000}, 2},  // tiny seed: stage 2 often
                      GrowCase{64, 4, 5, 0.9f, {4000, 900}, 3},
                      // The search by one sort per pair takes up to 8192 pages (128k tokens
                      // at pages of 16: exactly full); a longer pair sorts its top 8192 and
                      // falls back to the radix passes where they do not decide: p = 1
                      // (every page) always, a flat pair when it needs more.
                      GrowCase{64, 2, 0, 0.95f, {131072, 700}},
                      GrowCase{64, 2, 0, 0.95f, {140000, 3000}},
                      GrowCase{64, 2, 0, 1.0f, {140000, 300}},
                      GrowCase{64, 2, 5000, 0.95f, {140000, 300}},
                      // Automatic seeds at these sizes run one stage (every page scored once);
                      // an explicit seed keeps two stages, past 8192 pages.
                      GrowCase{64, 2, 0, 0.95f, {140000, 3000}, 64},
                      // 16 query heads per KV head (skipped while kGpuMaxGroup < 16): one
                      // stage, two stages, past 8192 pages, a cap.
                      GrowCase{128, 16, 0, 0.95f, {5000, 37, 2100}},
                      GrowCase{128, 16, 0, 0.9f, {6000, 3000}, 2},
                      GrowCase{64, 16, 0, 0.95f, {140000, 300}},
                      GrowCase{128, 12, 6, 0.95f, {3000, 1000}}));

// Head dims 96 and 256: bound kernel and scalar scorer under the growth.
INSTANTIATE_TEST_SUITE_P(
    HeadDims, GrowGpuTest,
    ::testing::Values(GrowCase{96, 4, 0, 0.95f, {3000, 37, 700}},
                      GrowCase{256, 2, 0, 0.9f, {2100, 16}}));

// k_scheme 1 (per page channel): the page-16 estimator's page-channel path (it writes the
// page sums, as for k_scheme 0), one and two stages, 1 to 16 heads per KV head.
INSTANTIATE_TEST_SUITE_P(
    PageChannel, GrowGpuTest,
    ::testing::Values(GrowCase{128, 4, 0, 0.95f, {5000, 37, 2100, 16}, -1, kKSchemePageChannel},
                      GrowCase{64, 1, 0, 0.9f, {3001, 700}, -1, kKSchemePageChannel},
                      GrowCase{128, 4, 6, 0.95f, {3000, 1000}, -1, kKSchemePageChannel},
                      GrowCase{128, 2, 0, 0.9f, {6000, 3000}, 2, kKSchemePageChannel},
                      GrowCase{128, 8, 0, 0.95f, {4100}, -1, kKSchemePageChannel},
                      GrowCase{64, 4, 0, 0.95f, {3000, 37, 700}, 0, kKSchemePageChannel},
                      GrowCase{128, 16, 0, 0.95f, {5000, 37, 2100}, -1, kKSchemePageChannel},
                      GrowCase{64, 16, 0, 0.9f, {6000, 300}, 2, kKSchemePageChannel}));

// A NaN estimate in a growing pair (a NaN per-token scale on one row of a peaked KV head):
// the pair's A is NaN, so it grows to every page or to its cap, and its heads keep nothing,
// as the reference's (AdaptiveSelectTest.NanEstimateKeepsNothingOfItsPairOnly); every other
// pair agrees with the reference as in MatchesReference. Both searches: one sort per pair
// (<= 8192 pages) and the radix passes (140k tokens: no cut of the NaN pair's top 8192
// pages passes).
TEST(GrowGpuNonFiniteTest, NanEstimateKeepsNothingOfItsPairLikeTheReference) {
  TWL_SKIP_WITHOUT_GPU();
  struct NanCase {
    int32_t head_dim, group, cap_pages;
    std::vector<int32_t> lens;
  };
  for (const NanCase& c : {NanCase{128, 4, 0, {5000, 2100}}, NanCase{128, 4, 6, {3000, 1000}},
                           NanCase{64, 2, 0, {140000, 700}}}) {
    SCOPED_TRACE(::testing::Message() << "d " << c.head_dim << ", group " << c.group << ", cap "
                                      << c.cap_pages << ", first length " << c.lens[0]);
    const PageGeometry g = Geometry(c.head_dim);
    ASSERT_TRUE(g.HasTokenScale());
    const uint64_t seed = ::testing::UnitTest::GetInstance()->random_seed() + 17;
    RefStore st = testing::MakeGrowStore(g, g.num_kv_heads * c.group, c.lens, 1.5f, 8.0f, seed);
    // Sequence 0's last row: its page is always a candidate (a NaN in a page the growth
    // never takes is never estimated on the CPU, and does not enter A on the GPU).
    const int32_t bad_kv = 1, bad_row = c.lens[0] - 1;
    const int32_t page = st.page_table[size_t(bad_row / g.page_size)];
    st.scale[size_t(g.BlockId(page, bad_kv) * g.page_size + bad_row % g.page_size)] = 0x7E00;
    SelectorParams sp;
    sp.kind = SelectorKind::kQuest;
    sp.grow = true;
    sp.budget_pages = c.cap_pages;
    PrunerParams pp;
    pp.p = 0.95f;
    const Outputs r = RunReference(st, sp, pp);
    const Outputs d = RunGpu(st, sp, pp);
    EXPECT_EQ(d.count, r.count);
    for (int32_t j = 0; j < c.group; ++j) {
      const size_t at = size_t(bad_kv * c.group + j);
      SCOPED_TRACE(::testing::Message() << "head " << at);
      EXPECT_EQ(r.kept[at], 0) << "the reference keeps nothing";
      EXPECT_EQ(d.kept[at], 0) << "a growing head with a NaN estimate keeps nothing";
      EXPECT_EQ(d.est[at], 0.0f);
      EXPECT_EQ(d.full[at], 0.0f);
      EXPECT_EQ(d.cap_hit[at], r.cap_hit[at]);
      EXPECT_EQ(d.cap_hit[at], c.cap_pages > 0 ? 1 : 0);
      EXPECT_EQ(d.selected[at], r.selected[at]) << "grown to the same pages";
    }
    EXPECT_EQ(r.kept_count[size_t(bad_kv)], 0);
    EXPECT_EQ(d.kept_count[size_t(bad_kv)], 0) << "pair (0, 1) keeps no token";
    PruneAgreement agree;
    ExpectPrunesAgree(st, sp, pp, r, d, bad_kv, &agree);
    if (HasFatalFailure()) return;
    const int32_t others = int32_t(r.kept_count.size()) - 1;
    EXPECT_GE(agree.pairs_equal, others - 1) << agree.pairs_equal << "/" << others;
  }
}

// A flat head at 128k tokens keeps >= p - 0.01 of its true mass on the GPU path.
TEST(GrowGpuFlatTest, FlatHeadKeepsTrueMassAt128k) {
  TWL_SKIP_WITHOUT_GPU();
  const PageGeometry g = Geometry(128);
  const uint64_t seed = ::testing::UnitTest::GetInstance()->random_seed();
  RefStore st = testing::MakeGrowStore(g, /*num_q_heads=*/8, {131072}, 1.5f, 8.0f, seed);
  SelectorParams sp;
  sp.kind = SelectorKind::kQuest;
  sp.grow = true;
  PrunerParams pp;
  pp.p = 0.95f;
  const Outputs d = RunGpu(st, sp, pp);
  const int32_t stride = SelectStride(sp, st.max_pages);
  for (int32_t qh = 0; qh < st.num_q_heads; ++qh) {
    const int32_t item = qh / st.group();
    const double m = testing::TrueMassOf(st, 0, qh, d.tokens.data() + int64_t(item) * stride * g.page_size,
                                         d.kept_count[size_t(item)]);
    EXPECT_GE(m, pp.p - 0.01) << "head " << qh << ": candidates " << d.selected[size_t(qh)]
                              << ", kept " << d.kept[size_t(qh)];
    EXPECT_GE(d.full[size_t(qh)], pp.p - 2e-3f) << "head " << qh;
    EXPECT_EQ(d.cap_hit[size_t(qh)], 0);
  }
}

// End to end with the default configuration (growing, no cap) on both GPU backends: every
// head's full-context bound >= p - 2e-3 and no cap; outputs within 2e-2 (relative L2) of the
// CPU backend's; a sequence's per-head kept counts are the same alone and next to a longer
// batch-mate (its budget depends on its own tokens only; outputs may differ in the last bits
// because the attention's split depends on the batch).
TEST(GrowGpuRuntimeTest, DefaultConfigMatchesCpuAndIgnoresBatchMates) {
  TWL_SKIP_WITHOUT_GPU();
  const PageGeometry g = Geometry(128);
  const uint64_t seed = ::testing::UnitTest::GetInstance()->random_seed();
  RefStore st = testing::MakeGrowStore(g, /*num_q_heads=*/8, {3000, 20000}, 1.5f, 8.0f, seed);
  for (BackendKind kind : {BackendKind::kGpuHbm, BackendKind::kGpuOffload}) {
    SCOPED_TRACE(kind == BackendKind::kGpuHbm ? "gpu-hbm" : "gpu-offload");
    RuntimeConfig c;
    c.num_layers = 1;
    c.num_q_heads = st.num_q_heads;
    c.num_kv_heads = g.num_kv_heads;
    c.head_dim = g.head_dim;
    c.page_size = g.page_size;
    c.host_pool_bytes = int64_t(64) << 20;
    RuntimeConfig cc = c;
    c.backend = kind;
    cc.backend = BackendKind::kCpu;
    auto rt = Runtime::Create(c);
    auto rc = Runtime::Create(cc);
    ASSERT_TRUE(rt.ok()) << rt.status();
    ASSERT_TRUE(rc.ok()) << rc.status();
    std::vector<SeqId> ids, cids;
    for (int32_t s = 0; s < 2; ++s) {
      ids.push_back(*(*rt)->CreateSequence());
      cids.push_back(*(*rc)->CreateSequence());
      ASSERT_TRUE((*rt)->Append(ids.back(), 0, st.seq_len[size_t(s)], st.k_in[size_t(s)].data(),
                                st.v_in[size_t(s)].data(), DType::kFp16, MemSpace::kHost)
                      .ok());
      ASSERT_TRUE((*rc)->Append(cids.back(), 0, st.seq_len[size_t(s)], st.k_in[size_t(s)].data(),
                                st.v_in[size_t(s)].data(), DType::kFp16, MemSpace::kHost)
                      .ok());
    }
    const size_t row = size_t(st.num_q_heads) * g.head_dim;
    std::vector<fp16_t> out(2 * row), cout(2 * row), alone(row);
    StepTelemetry t, tc, ta;
    ASSERT_TRUE((*rt)->Decode(0, ids, st.q.data(), out.data(), MemSpace::kHost, {}, nullptr, &t).ok());
    ASSERT_TRUE((*rc)->Decode(0, cids, st.q.data(), cout.data(), MemSpace::kHost, {}, nullptr, &tc).ok());
    ASSERT_TRUE((*rt)->Decode(0, absl::MakeSpan(ids.data(), 1), st.q.data(), alone.data(),
                              MemSpace::kHost, {}, nullptr, &ta)
                    .ok());
    ASSERT_EQ(t.full_mass.size(), size_t(2 * st.num_q_heads));
    ASSERT_EQ(t.cap_hit.size(), size_t(2 * st.num_q_heads));
    for (size_t i = 0; i < t.full_mass.size(); ++i) {
      EXPECT_GE(t.full_mass[i], 0.95f - 2e-3f) << "head " << i;
      EXPECT_EQ(t.cap_hit[i], 0) << "head " << i;
    }
    double num = 0, den = 0;
    for (size_t i = 0; i < out.size(); ++i) {
      const double a = HalfToFloat(out[i]), b = HalfToFloat(cout[i]);
      num += (a - b) * (a - b);
      den += b * b;
    }
    EXPECT_LE(std::sqrt(num / std::max(den, 1e-30)), 2e-2);
    // Equal up to the growth rule's float near-ties (the search sums with shared-memory
    // atomics, whose order varies from run to run): one page of candidates, 1% of kept.
    for (int32_t qh = 0; qh < st.num_q_heads; ++qh) {
      EXPECT_NEAR(ta.kept_tokens[size_t(qh)], t.kept_tokens[size_t(qh)],
                  0.01 * t.kept_tokens[size_t(qh)] + 2) << "head " << qh;
      EXPECT_NEAR(ta.selected_tokens[size_t(qh)], t.selected_tokens[size_t(qh)], g.page_size)
          << "head " << qh;
    }
  }
}

}  // namespace
}  // namespace twl

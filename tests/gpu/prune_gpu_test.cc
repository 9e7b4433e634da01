// GPU pruner (LaunchPrune: FP16 scores + histogram top-p,
// pipeline/prune/twilight/cuda/prune_hist.cuh) against
// PruneRef (bisection top-p) on the reference selection, fresh random inputs per run.
// Both compute the smallest level set of estimated weights with mass >= p; they differ in
// resolution, so kept sets (ascending, union over the GQA group) may differ only in tokens
// that are ambiguous for some head j of the group:
//  - logit band: |s - s*_j| <= 1/2048 (the GPU's sub-bin) + 2^-10 * max(|s|, |M_j|) (FP16
//    rounding of both) + 1e-3 (estimator float order), where s*_j is the score of the token
//    at which the exact (sorted, double) cumulative mass reaches p * total;
//  - mass band: the exact cumulative mass before the token is within eps * total of the
//    target, eps = 2 (exp(2^-11 max|s|) - 1) + 1e-4 (FP16 rounding moves each weight by at
//    most that factor; fixed-point and float sums);
//  - the reference bisection's stop-gap band around its threshold (as before).
// Per head, kept counts differ by at most the ambiguous tokens + 1 and est_mass by their mass
// + eps. p = 1 and dense must match exactly. Cases: head dim 64/128, 1..8 query heads per KV
// head, INT4 (tensor cores) and 2/8/16-bit K (scalar), p in {0.5 .. 0.99, 1}, per-sequence
// p, dense, peaked and flat heads (queries scaled per head), a few pages to 128k+ tokens.
// Every case also reruns with the top-p passes' explicit work plans (1, 2, 3 and all chunks
// per block) and with TWL_PRUNE_PDL=1 (the top-p chain launched with programmatic
// dependent launch): the same bits as the default plan without them.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>
#include <random>
#include <set>
#include <string>

#include "core/head_math.h"
#include "gpu_test_util.h"
#include "pipeline/prune/twilight/cpu/twilight_prune_cpu.h"
#include "pipeline/prune/twilight/cuda/prune_launch.h"
#include "pipeline/select/quest/cpu/quest_select_cpu.h"
#include "support/prune_check.h"

namespace twl {
namespace {

using testing::Ambiguous;
using testing::DeviceStore;
using testing::HeadRef;
using testing::ReferenceHead;
using testing::Download;
using testing::MakeRandomStore;
using testing::Poisoned;
using testing::RefStore;
using testing::Upload;

struct PruneCase {
  int32_t head_dim, num_kv_heads, group, k_bits;
  float p;
  bool per_seq_p, dense, full_selector;
  std::vector<int32_t> lens = {};  // empty: a default mix
  bool flat_and_peaked = false;    // scale the queries per head: flat (x0.1) to peaked (x3)
  int32_t k_scheme = kKSchemeToken;
  int32_t page_size = 16;  // k_scheme 1, INT4: multiples of 16 use the tensor cores
};

class PruneGpuTest : public ::testing::TestWithParam<PruneCase> {};

TEST_P(PruneGpuTest, MatchesReferenceUpToThresholdTies) {
  TWL_SKIP_WITHOUT_GPU();
  const PruneCase c = GetParam();
  if (c.group > kGpuMaxGroup) GTEST_SKIP() << "group " << c.group << " > kGpuMaxGroup";
  PageGeometry g;
  g.page_size = c.page_size;
  g.head_dim = c.head_dim;
  g.num_kv_heads = c.num_kv_heads;
  g.k_bits = c.k_bits;
  g.k_scheme = c.k_scheme;  // the store is quantized by AppendRef, PruneRef estimates alike
  const uint64_t seed =
      ::testing::UnitTest::GetInstance()->random_seed() + uint64_t(c.group * 31 + c.k_bits);
  std::vector<int32_t> lens = c.lens;
  if (lens.empty()) {
    lens = c.full_selector ? std::vector<int32_t>{25100, 37, 3001}
                           : std::vector<int32_t>{1203, 37, 700, 16, 3001};
  }
  RefStore st = MakeRandomStore(g, c.num_kv_heads * c.group, lens, seed, /*peak=*/2.5f);
  if (c.flat_and_peaked) {
    // Head qh's query scaled by 0.1 .. 3 (flat heads need most of the context, peaked few).
    const int32_t nq = st.num_q_heads;
    for (size_t s = 0; s < lens.size(); ++s) {
      for (int32_t qh = 0; qh < nq; ++qh) {
        const float f = qh % 3 == 0 ? 0.1f : (qh % 3 == 1 ? 1.0f : 3.0f);
        for (int32_t j = 0; j < g.head_dim; ++j) {
          fp16_t& x = st.q[(s * size_t(nq) + size_t(qh)) * size_t(g.head_dim) + size_t(j)];
          x = FloatToHalf(HalfToFloat(x) * f);
        }
      }
    }
  }
  const BatchView hb = st.Batch();
  SelectorParams sp;
  sp.kind = c.full_selector ? SelectorKind::kFull : SelectorKind::kQuest;
  sp.budget_pages = 20;
  sp.sink_pages = 1;
  const int32_t max_select = SelectStride(sp, hb.max_pages);
  const int32_t pairs = hb.num_seqs * g.num_kv_heads;
  const int32_t heads = hb.num_seqs * hb.num_q_heads;
  std::vector<int32_t> sel_pages(static_cast<size_t>(pairs) * max_select), sel_count(static_cast<size_t>(pairs));
  const SelectionView hsel{sel_pages.data(), sel_count.data(), max_select};
  ASSERT_TRUE(SelectPagesRef(g, sp, hb, st.Query(), st.Quant(), hsel).ok());

  PrunerParams params;
  params.p = c.p;
  params.dense = c.dense;
  std::vector<float> seq_p;
  std::mt19937_64 rng(seed);
  if (c.per_seq_p) {
    const float choices[] = {0.5f, 0.9f, 0.95f, 0.99f, 1.0f};
    for (int32_t s = 0; s < hb.num_seqs; ++s) {
      seq_p.push_back(s < 5 ? choices[s] : std::uniform_real_distribution<float>(0.3f, 0.99f)(rng));
    }
    params.seq_p = seq_p.data();
  }
  const int32_t max_kept = max_select * g.page_size;
  std::vector<int32_t> ref_tok(static_cast<size_t>(pairs) * max_kept), ref_cnt(static_cast<size_t>(pairs));
  std::vector<int32_t> ref_sel(static_cast<size_t>(heads)), ref_kept(static_cast<size_t>(heads));
  std::vector<float> ref_mass(static_cast<size_t>(heads));
  ASSERT_TRUE(PruneRef(g, params, hb, st.Query(), st.Quant(), st.Kv(), hsel,
                       KeptView{ref_tok.data(), ref_cnt.data(), max_kept},
                       HeadStatsView{ref_sel.data(), ref_kept.data(), ref_mass.data()})
                  .ok());

  DeviceStore ds(st);
  gpu::DeviceBuffer d_sel_pages = Upload(sel_pages), d_sel_count = Upload(sel_count);
  gpu::DeviceBuffer d_seq_p = Upload(seq_p);
  gpu::DeviceBuffer d_tok = Poisoned<int32_t>(ref_tok.size()), d_cnt = Poisoned<int32_t>(pairs);
  gpu::DeviceBuffer d_sel = Poisoned<int32_t>(heads), d_kept = Poisoned<int32_t>(heads),
                    d_mass = Poisoned<float>(heads);
  PrunerParams dparams = params;
  dparams.seq_p = c.per_seq_p ? d_seq_p.as<float>() : nullptr;
  gpu::DeviceBuffer ws;
  const size_t ws_bytes = PruneWorkspaceBytes(g, hb.num_seqs, hb.num_q_heads, max_select);
  TWL_ASSERT_OK(ws.Reserve(ws_bytes));
  TWL_ASSERT_OK(gpu::Memset(ws.get(), 0xFF, ws_bytes));
  auto launch = [&] {
    return LaunchPrune(
        g, dparams, ds.Batch(), ds.Query(), ds.Quant(), ds.Kv(),
        SelectionView{d_sel_pages.as<int32_t>(), d_sel_count.as<int32_t>(), max_select},
        KeptView{d_tok.as<int32_t>(), d_cnt.as<int32_t>(), max_kept},
        HeadStatsView{d_sel.as<int32_t>(), d_kept.as<int32_t>(), d_mass.as<float>()}, ws.get(),
        ws_bytes, nullptr);
  };
  TWL_ASSERT_OK(launch());
  const auto tok = Download<int32_t>(d_tok, ref_tok.size());
  const auto cnt = Download<int32_t>(d_cnt, static_cast<size_t>(pairs));
  const auto gsel = Download<int32_t>(d_sel, static_cast<size_t>(heads));
  const auto gkept = Download<int32_t>(d_kept, static_cast<size_t>(heads));
  const auto gmass = Download<float>(d_mass, static_cast<size_t>(heads));
  EXPECT_TRUE(testing::AllFinite(gmass)) << "NaN/inf (or unwritten) est_mass";
  EXPECT_EQ(gsel, ref_sel);
  // Integer mass sums: a second launch on the dirty workspace gives the same bits.
  TWL_ASSERT_OK(launch());
  EXPECT_EQ(Download<int32_t>(d_cnt, static_cast<size_t>(pairs)), cnt) << "not deterministic";
  EXPECT_EQ(Download<int32_t>(d_tok, ref_tok.size()), tok) << "not deterministic";
  EXPECT_EQ(Download<float>(d_mass, static_cast<size_t>(heads)), gmass) << "not deterministic";
  // Another launch under a different work plan: the same bits as the default plan's.
  auto expect_same_bits = [&](const std::string& plan) {
    SCOPED_TRACE(plan);
    TWL_ASSERT_OK(launch());
    EXPECT_EQ(Download<int32_t>(d_cnt, static_cast<size_t>(pairs)), cnt);
    EXPECT_EQ(Download<int32_t>(d_tok, ref_tok.size()), tok);
    EXPECT_EQ(Download<int32_t>(d_kept, static_cast<size_t>(heads)), gkept);
    EXPECT_EQ(Download<float>(d_mass, static_cast<size_t>(heads)), gmass);
  };
  // The top-p passes' chunks per block (one, a few, every chunk of a row in one block).
  for (const int32_t plan : {1, 2, 3, 1 << 20}) {
    dparams.topp_chunks_per_block = plan;
    expect_same_bits("topp_chunks_per_block = " + std::to_string(plan));
  }
  dparams.topp_chunks_per_block = 0;
  // The kept pass's heads split over two blocks per chunk (even groups), alone and with runs.
  dparams.topp_head_splits = 2;
  expect_same_bits("topp_head_splits = 2");
  dparams.topp_chunks_per_block = 3;
  expect_same_bits("topp_head_splits = 2, topp_chunks_per_block = 3");
  dparams.topp_chunks_per_block = 0;
  dparams.topp_head_splits = 0;
  // Programmatic dependent launch of the top-p chain (pdl.cuh, opt-in).
  setenv("TWL_PRUNE_PDL", "1", 1);
  expect_same_bits("TWL_PRUNE_PDL=1");
  unsetenv("TWL_PRUNE_PDL");
  if (c.dense) {
    EXPECT_EQ(gkept, ref_kept);
    EXPECT_EQ(gmass, ref_mass);
  }

  int exact_pairs = 0, diff_tokens = 0;
  for (int32_t pair = 0; pair < pairs; ++pair) {
    const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
    const int32_t n = cnt[size_t(pair)];
    ASSERT_GE(n, 0);
    ASSERT_LE(n, max_kept);
    const int32_t* gt = tok.data() + int64_t(pair) * max_kept;
    for (int32_t i = 1; i < n; ++i) ASSERT_LT(gt[i - 1], gt[i]) << "not ascending, pair " << pair;
    const int32_t* rt = ref_tok.data() + int64_t(pair) * max_kept;
    const std::set<int32_t> a(gt, gt + n), b(rt, rt + ref_cnt[size_t(pair)]);
    const float p = c.per_seq_p ? seq_p[size_t(s)] : c.p;
    if (c.dense || p >= 1.0f) {
      EXPECT_EQ(a, b) << "dense / p = 1 kept sets must be identical, pair " << pair;
      for (int32_t j = 0; j < c.group; ++j) {
        const int64_t at = int64_t(s) * hb.num_q_heads + h * c.group + j;
        EXPECT_EQ(gkept[size_t(at)], ref_kept[size_t(at)]);
        EXPECT_EQ(gmass[size_t(at)], ref_mass[size_t(at)]);
      }
      continue;
    }
    std::vector<HeadRef> refs;
    const std::vector<int32_t> pages(sel_pages.begin() + int64_t(pair) * max_select,
                                     sel_pages.begin() + int64_t(pair) * max_select +
                                         sel_count[size_t(pair)]);
    for (int32_t j = 0; j < c.group; ++j) {
      refs.push_back(ReferenceHead(st, params, p, pages, s, h, h * c.group + j));
    }
    for (int32_t j = 0; j < int32_t(refs.size()); ++j) {
      const HeadRef& r = refs[size_t(j)];
      int32_t band = 0;
      double band_mass = 0.0;
      for (size_t i = 0; i < r.w.size(); ++i) {
        if (Ambiguous(r, params, i)) {
          ++band;
          band_mass += r.w[i];
        }
      }
      const double eps = testing::MassEps(r);
      const int64_t at = int64_t(s) * hb.num_q_heads + h * c.group + j;
      EXPECT_LE(std::abs(gkept[size_t(at)] - ref_kept[size_t(at)]), band + 1)
          << "kept count of head " << at;
      EXPECT_NEAR(gmass[size_t(at)], ref_mass[size_t(at)], band_mass / r.total + eps)
          << "est_mass of head " << at;
      // The GPU's own mass estimate reaches p (up to the FP16 band).
      EXPECT_GE(gmass[size_t(at)], p - eps) << "head " << at;
    }
    if (a == b) {
      ++exact_pairs;
      continue;
    }
    for (int32_t t : testing::KeptDifference(a, b)) {
      EXPECT_TRUE(testing::TieOfAnyHead(refs, params, t))
          << "token " << t << " of pair " << pair << " differs and is not a threshold tie";
      ++diff_tokens;
    }
  }
  RecordProperty("exact_pairs", exact_pairs);
  RecordProperty("diff_tokens", diff_tokens);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, PruneGpuTest,
    ::testing::Values(PruneCase{128, 8, 4, 4, 0.9f, false, false, false},
                      PruneCase{128, 2, 8, 4, 0.95f, false, false, false},
                      PruneCase{64, 4, 1, 4, 0.8f, false, false, false},
                      PruneCase{128, 2, 4, 4, 0.9f, true, false, true},  // 25k candidates: global first
                      PruneCase{64, 2, 4, 4, 1.0f, false, false, false},
                      PruneCase{128, 2, 4, 4, 0.9f, false, true, false},
                      PruneCase{128, 2, 4, 2, 0.9f, false, false, false},
                      PruneCase{64, 2, 4, 8, 0.95f, false, false, false},
                      PruneCase{128, 2, 2, 16, 0.9f, false, false, true},
                      // Histogram top-p: flat and peaked heads, every p, 1..8 heads per KV
                      // head, a few pages to 128k+ candidates (full selector).
                      PruneCase{128, 2, 8, 4, 0.5f, false, false, true, {131109, 40}, true},
                      PruneCase{128, 2, 4, 4, 0.99f, false, false, true, {70000, 5000}, true},
                      PruneCase{128, 1, 1, 4, 0.95f, false, false, true, {131072}, true},
                      PruneCase{64, 4, 2, 4, 0.9f, true, false, true,
                                {9000, 17, 48, 33000, 2500, 160}, true},
                      PruneCase{128, 2, 3, 4, 0.95f, false, false, false, {48, 20, 5000}, true},
                      PruneCase{128, 1, 8, 4, 1.0f, false, false, true, {20000, 33}, true},
                      // 16 query heads per KV head (two MMA n-tiles in the page-16 estimator;
                      // skipped while kGpuMaxGroup < 16).
                      PruneCase{128, 2, 16, 4, 0.9f, false, false, false},
                      PruneCase{64, 1, 16, 4, 0.95f, false, false, true, {40000, 37}, true},
                      PruneCase{128, 1, 12, 4, 0.9f, true, false, true, {9000, 300}, true}));

// Head dims without the tensor-core estimator (96: Phi-3, 256: Gemma): the scalar scorer.
INSTANTIATE_TEST_SUITE_P(
    HeadDims, PruneGpuTest,
    ::testing::Values(PruneCase{96, 2, 4, 4, 0.9f, false, false, false},
                      PruneCase{256, 2, 2, 4, 0.95f, false, false, true},
                      PruneCase{96, 1, 8, 4, 0.95f, false, false, true, {5000, 33}, true}));

// k_scheme 1 (INT4 per page channel, EstimatePageChannelScoreRef): the same tolerances (the
// GPU sums q_j FP16(kmin_j + code_j step_j) in another float order: well inside the
// band's 1e-3 logits at these magnitudes). Pages of 16 at d 64/128 take ScorePage16Kernel's
// page-channel path, pages of 32 the general tensor-core kernel, pages of 8 the scalar one.
constexpr int32_t kPc = kKSchemePageChannel;
INSTANTIATE_TEST_SUITE_P(
    PageChannel, PruneGpuTest,
    ::testing::Values(PruneCase{128, 8, 4, 4, 0.9f, false, false, false, {}, false, kPc},
                      PruneCase{64, 4, 1, 4, 0.8f, false, false, false, {}, false, kPc},
                      PruneCase{128, 2, 4, 4, 0.9f, true, false, true, {}, false, kPc},
                      PruneCase{64, 2, 4, 4, 1.0f, false, false, false, {}, false, kPc},
                      PruneCase{128, 2, 4, 4, 0.9f, false, true, false, {}, false, kPc},
                      PruneCase{128, 2, 4, 2, 0.9f, false, false, false, {}, false, kPc},
                      PruneCase{64, 2, 4, 8, 0.95f, false, false, false, {}, false, kPc},
                      PruneCase{128, 2, 4, 4, 0.99f, false, false, true, {70000, 5000}, true, kPc},
                      PruneCase{128, 2, 3, 4, 0.95f, false, false, false, {48, 20, 5000}, true,
                                kPc},
                      // INT4 through the scalar kernel (a 16-token tile spans pages of 8),
                      // and pages of 32 (two tensor-core tiles per block).
                      PruneCase{128, 2, 4, 4, 0.9f, false, false, false, {}, true, kPc, 8},
                      PruneCase{64, 2, 4, 4, 0.95f, false, false, false, {}, true, kPc, 32},
                      // Pages that are not a power of two: a multiple of 8 (the kept
                      // pass's slot-to-page division) and not (its slot-by-slot test).
                      PruneCase{128, 2, 4, 4, 0.9f, false, false, false, {}, true, kPc, 24},
                      PruneCase{64, 2, 4, 4, 0.95f, false, false, true, {}, true, kPc, 12},
                      // The page-16 estimator's page-channel path at 1, 8, 12 and 16 heads
                      // per KV head (one and two MMA n-tiles), ragged lengths.
                      PruneCase{128, 2, 8, 4, 0.95f, false, false, false, {}, false, kPc},
                      PruneCase{64, 2, 8, 4, 0.9f, false, false, true, {9000, 17, 48}, true, kPc},
                      PruneCase{128, 1, 1, 4, 0.95f, false, false, true, {20000, 33}, true, kPc},
                      PruneCase{128, 2, 16, 4, 0.9f, false, false, false, {}, false, kPc},
                      PruneCase{64, 1, 12, 4, 0.95f, true, false, true, {9000, 300}, true, kPc}));

// LaunchPrune on the device copy of `st` over the host selection (pages, count), downloaded:
// kept tokens [pairs][max_kept], counts [pairs], and per query head kept count and mass.
struct GpuPruneOut {
  std::vector<int32_t> tok, cnt, kept;
  std::vector<float> mass;
};
GpuPruneOut RunGpuPrune(const PageGeometry& g, const PrunerParams& params, RefStore& st,
                        const std::vector<int32_t>& sel_pages, const std::vector<int32_t>& sel_count,
                        int32_t max_select) {
  const BatchView hb = st.Batch();
  const int32_t pairs = hb.num_seqs * g.num_kv_heads, heads = hb.num_seqs * hb.num_q_heads;
  const int32_t max_kept = max_select * g.page_size;
  DeviceStore ds(st);
  gpu::DeviceBuffer d_sp = Upload(sel_pages), d_sc = Upload(sel_count);
  gpu::DeviceBuffer d_tok = Poisoned<int32_t>(size_t(pairs) * max_kept),
                    d_cnt = Poisoned<int32_t>(pairs);
  gpu::DeviceBuffer d_kept = Poisoned<int32_t>(heads), d_mass = Poisoned<float>(heads);
  gpu::DeviceBuffer ws;
  const size_t ws_bytes = PruneWorkspaceBytes(g, hb.num_seqs, hb.num_q_heads, max_select);
  GpuPruneOut out;
  if (!ws.Reserve(ws_bytes).ok()) return out;
  const absl::Status s =
      LaunchPrune(g, params, ds.Batch(), ds.Query(), ds.Quant(), ds.Kv(),
                  SelectionView{d_sp.as<int32_t>(), d_sc.as<int32_t>(), max_select},
                  KeptView{d_tok.as<int32_t>(), d_cnt.as<int32_t>(), max_kept},
                  HeadStatsView{nullptr, d_kept.as<int32_t>(), d_mass.as<float>()}, ws.get(),
                  ws_bytes, nullptr);
  EXPECT_TRUE(s.ok()) << s;
  if (!s.ok()) return out;
  out.tok = Download<int32_t>(d_tok, size_t(pairs) * max_kept);
  out.cnt = Download<int32_t>(d_cnt, size_t(pairs));
  out.kept = Download<int32_t>(d_kept, size_t(heads));
  out.mass = Download<float>(d_mass, size_t(heads));
  return out;
}

// Flat and peaked heads in one batch: a sequence's kept set and telemetry do not depend on
// its batch-mates (the fixed-point scale and the block split are per head).
TEST(PruneGpuBatchTest, SequenceAloneEqualsInBatch) {
  TWL_SKIP_WITHOUT_GPU();
  PageGeometry g;
  g.page_size = 16;
  g.head_dim = 128;
  g.num_kv_heads = 2;
  g.k_bits = 4;
  const uint64_t seed = ::testing::UnitTest::GetInstance()->random_seed();
  const std::vector<int32_t> lens = {6000, 40000};
  RefStore both = MakeRandomStore(g, 8, lens, seed, 2.5f);
  SelectorParams sp;
  sp.kind = SelectorKind::kFull;
  auto run = [&](RefStore& st, int32_t* count0, std::vector<int32_t>* tok0,
                 std::vector<float>* mass0) {
    const BatchView hb = st.Batch();
    const int32_t max_select = SelectStride(sp, hb.max_pages);
    const int32_t pairs = hb.num_seqs * g.num_kv_heads;
    std::vector<int32_t> sel_pages(static_cast<size_t>(pairs) * max_select),
        sel_count(static_cast<size_t>(pairs));
    ASSERT_TRUE(SelectPagesRef(g, sp, hb, st.Query(), st.Quant(),
                               SelectionView{sel_pages.data(), sel_count.data(), max_select})
                    .ok());
    const int32_t max_kept = max_select * g.page_size;
    PrunerParams pp;
    pp.p = 0.9f;
    const GpuPruneOut o = RunGpuPrune(g, pp, st, sel_pages, sel_count, max_select);
    ASSERT_EQ(o.cnt.size(), size_t(pairs));
    const std::vector<int32_t>& tok = o.tok;
    const std::vector<int32_t>& cnt = o.cnt;
    const std::vector<float>& mass = o.mass;
    // Sequence 0, both KV heads.
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      count0[h] = cnt[size_t(h)];
      tok0[h].assign(tok.begin() + int64_t(h) * max_kept, tok.begin() + int64_t(h) * max_kept + cnt[size_t(h)]);
    }
    mass0->assign(mass.begin(), mass.begin() + hb.num_q_heads);
  };
  int32_t cnt_both[2], cnt_alone[2];
  std::vector<int32_t> tok_both[2], tok_alone[2];
  std::vector<float> mass_both, mass_alone;
  run(both, cnt_both, tok_both, &mass_both);
  // The same first sequence alone (same pages, same q; a smaller page-table stride, so also
  // a smaller candidate stride and workspace).
  RefStore alone = both;
  alone.seq_len.resize(1);
  alone.max_pages = (lens[0] + g.page_size - 1) / g.page_size;
  alone.page_table.resize(size_t(alone.max_pages));
  alone.q.resize(size_t(alone.num_q_heads) * g.head_dim);
  run(alone, cnt_alone, tok_alone, &mass_alone);
  for (int32_t h = 0; h < 2; ++h) {
    EXPECT_EQ(cnt_both[h], cnt_alone[h]);
    EXPECT_EQ(tok_both[h], tok_alone[h]);
  }
  EXPECT_EQ(mass_both, mass_alone);
}

}  // namespace
}  // namespace twl

namespace twl {
namespace {

// The Full selection of a store, then PruneRef and the GPU pruner over it at params.p.
struct FullPruneBothWays {
  std::vector<int32_t> sel_pages, sel_count;
  int32_t max_select = 0, max_kept = 0;
  std::vector<int32_t> ref_tok, ref_cnt, ref_kept;
  std::vector<float> ref_mass;
  GpuPruneOut gpu;
};
FullPruneBothWays RunFullPruneBothWays(const PageGeometry& g, RefStore& st,
                                       const PrunerParams& params) {
  FullPruneBothWays o;
  const BatchView hb = st.Batch();
  SelectorParams sp;
  sp.kind = SelectorKind::kFull;
  o.max_select = SelectStride(sp, hb.max_pages);
  o.max_kept = o.max_select * g.page_size;
  const int32_t pairs = hb.num_seqs * g.num_kv_heads, heads = hb.num_seqs * hb.num_q_heads;
  o.sel_pages.resize(size_t(pairs) * o.max_select);
  o.sel_count.resize(size_t(pairs));
  EXPECT_TRUE(SelectPagesRef(g, sp, hb, st.Query(), st.Quant(),
                             SelectionView{o.sel_pages.data(), o.sel_count.data(), o.max_select})
                  .ok());
  o.ref_tok.resize(size_t(pairs) * o.max_kept);
  o.ref_cnt.resize(size_t(pairs));
  o.ref_kept.resize(size_t(heads));
  o.ref_mass.resize(size_t(heads));
  EXPECT_TRUE(PruneRef(g, params, hb, st.Query(), st.Quant(), st.Kv(),
                       SelectionView{o.sel_pages.data(), o.sel_count.data(), o.max_select},
                       KeptView{o.ref_tok.data(), o.ref_cnt.data(), o.max_kept},
                       HeadStatsView{nullptr, o.ref_kept.data(), o.ref_mass.data()})
                  .ok());
  o.gpu = RunGpuPrune(g, params, st, o.sel_pages, o.sel_count, o.max_select);
  return o;
}

// The GPU's kept list of `pair` differs from the reference's only by threshold ties of the
// heads listed in `heads` (query heads of the pair's group, 0-based within it).
void ExpectPairDiffersOnlyByTies(RefStore& st, const PrunerParams& params,
                                 const FullPruneBothWays& o, int32_t pair,
                                 const std::vector<int32_t>& heads) {
  const int32_t kv = st.g.num_kv_heads, group = st.group();
  const int32_t s = pair / kv, h = pair % kv;
  const auto first = o.sel_pages.begin() + int64_t(pair) * o.max_select;
  const std::vector<int32_t> pages(first, first + o.sel_count[size_t(pair)]);
  std::vector<HeadRef> refs;
  for (int32_t j : heads) {
    refs.push_back(ReferenceHead(st, params, params.p, pages, s, h, h * group + j));
  }
  const int32_t* gt = o.gpu.tok.data() + int64_t(pair) * o.max_kept;
  const int32_t* rt = o.ref_tok.data() + int64_t(pair) * o.max_kept;
  for (int32_t t : testing::KeptDifference({gt, gt + o.gpu.cnt[size_t(pair)]},
                                           {rt, rt + o.ref_cnt[size_t(pair)]})) {
    EXPECT_TRUE(testing::TieOfAnyHead(refs, params, t))
        << "pair " << pair << " token " << t << " differs and is not a tie";
  }
}

PageGeometry NonFiniteGeometry() {
  PageGeometry g;
  g.page_size = 16;
  g.head_dim = 128;
  g.num_kv_heads = 2;
  g.k_bits = 4;
  return g;
}

// A NaN query head keeps nothing (TopPThresholdRef: a NaN total), its group-mates keep their
// top-p sets; at p = 1 every candidate is kept whatever the estimates.
TEST(PruneGpuNonFiniteTest, NanHeadKeepsNothingLikeTheReference) {
  TWL_SKIP_WITHOUT_GPU();
  const PageGeometry g = NonFiniteGeometry();
  const uint64_t seed = ::testing::UnitTest::GetInstance()->random_seed() + 5;
  RefStore st = MakeRandomStore(g, 8, {900, 333}, seed, 2.5f);
  const int32_t nan_head = 1;  // sequence 0, query head 1 (KV head 0)
  st.q[size_t(nan_head) * g.head_dim + 7] = 0x7E00;
  for (const float p : {0.9f, 1.0f}) {
    PrunerParams params;
    params.p = p;
    const FullPruneBothWays o = RunFullPruneBothWays(g, st, params);
    ASSERT_EQ(o.gpu.cnt.size(), o.ref_cnt.size());
    EXPECT_TRUE(testing::AllFinite(o.gpu.mass));
    if (p >= 1.0f) {
      EXPECT_EQ(o.gpu.cnt, o.ref_cnt);
      EXPECT_EQ(o.gpu.kept, o.ref_kept);
      EXPECT_EQ(o.gpu.mass, o.ref_mass);
      for (size_t pair = 0; pair < o.ref_cnt.size(); ++pair) {
        for (int32_t i = 0; i < o.gpu.cnt[pair]; ++i) {
          ASSERT_EQ(o.gpu.tok[pair * o.max_kept + i], o.ref_tok[pair * o.max_kept + i]);
        }
      }
      continue;
    }
    EXPECT_EQ(o.ref_kept[nan_head], 0);
    EXPECT_EQ(o.gpu.kept[nan_head], 0) << "a NaN head keeps nothing";
    EXPECT_EQ(o.gpu.mass[nan_head], 0.0f);
    ExpectPairDiffersOnlyByTies(st, params, o, 0, {0, 2, 3});  // the other heads of KV head 0
  }
}

// A NaN estimate beside a finite head max (the score pass's max ignores NaN, as fmaxf does):
// the histogram pass marks the head bad and it keeps nothing, as TopPThresholdRef does. Reached
// here by a NaN per-token scale on one row of KV head 1 (the INT4 estimate of that row is NaN
// for every query head of the group); the other pairs must be untouched.
TEST(PruneGpuNonFiniteTest, NanEstimateBesideFiniteMaxKeepsNothingLikeTheReference) {
  TWL_SKIP_WITHOUT_GPU();
  const PageGeometry g = NonFiniteGeometry();
  ASSERT_TRUE(g.HasTokenScale());
  const uint64_t seed = ::testing::UnitTest::GetInstance()->random_seed() + 6;
  RefStore st = MakeRandomStore(g, 8, {700, 421}, seed, 2.5f);
  const int32_t bad_kv = 1, bad_row = 37;  // sequence 0, token 37
  const int32_t page = st.page_table[size_t(bad_row / g.page_size)];
  st.scale[size_t(g.BlockId(page, bad_kv) * g.page_size + bad_row % g.page_size)] = 0x7E00;
  PrunerParams params;
  params.p = 0.9f;
  const FullPruneBothWays o = RunFullPruneBothWays(g, st, params);
  ASSERT_EQ(o.gpu.cnt.size(), o.ref_cnt.size());
  EXPECT_TRUE(testing::AllFinite(o.gpu.mass));
  const int32_t group = st.group();
  for (int32_t j = 0; j < group; ++j) {
    const int32_t head = bad_kv * group + j;  // sequence 0
    EXPECT_EQ(o.ref_kept[size_t(head)], 0) << "the reference keeps nothing of head " << head;
    EXPECT_EQ(o.gpu.kept[size_t(head)], 0) << "a head with a NaN estimate keeps nothing: " << head;
    EXPECT_EQ(o.gpu.mass[size_t(head)], 0.0f);
  }
  EXPECT_EQ(o.ref_cnt[size_t(bad_kv)], 0);
  EXPECT_EQ(o.gpu.cnt[size_t(bad_kv)], 0) << "pair (0, 1): no head of the group keeps a token";
  std::vector<int32_t> all_heads(static_cast<size_t>(group));
  std::iota(all_heads.begin(), all_heads.end(), 0);
  for (int32_t pair = 0; pair < int32_t(o.ref_cnt.size()); ++pair) {
    if (pair == bad_kv) continue;
    EXPECT_GT(o.gpu.cnt[size_t(pair)], 0) << "pair " << pair;
    ExpectPairDiffersOnlyByTies(st, params, o, pair, all_heads);
  }
}

// A query so large that its estimated scores overflow FP16 (the top one to +inf): the head's
// max is infinite, HeadMode gives it no top-p and it keeps nothing, as the reference
// (Prune.OverflowingScoresKeepNothingOfThatHead); its group-mates keep their sets.
TEST(PruneGpuNonFiniteTest, OverflowingScoresKeepNothingLikeTheReference) {
  TWL_SKIP_WITHOUT_GPU();
  const PageGeometry g = NonFiniteGeometry();
  const uint64_t seed = ::testing::UnitTest::GetInstance()->random_seed() + 7;
  RefStore st = MakeRandomStore(g, 8, {600, 250}, seed, 2.5f);
  const fp16_t* k = st.k_in[0].data();  // token 0 of sequence 0, KV head 0
  for (int32_t j = 0; j < g.head_dim; ++j) {
    st.q[size_t(j)] = FloatToHalf(HalfToFloat(k[j]) >= 0.0f ? 60000.0f : -60000.0f);
  }
  PrunerParams params;
  params.p = 0.9f;
  const FullPruneBothWays o = RunFullPruneBothWays(g, st, params);
  ASSERT_EQ(o.gpu.cnt.size(), o.ref_cnt.size());
  EXPECT_TRUE(testing::AllFinite(o.gpu.mass));
  EXPECT_EQ(o.ref_kept[0], 0);
  EXPECT_EQ(o.gpu.kept[0], 0) << "query head 0's max overflows: it keeps nothing";
  EXPECT_EQ(o.gpu.mass[0], 0.0f);
  ExpectPairDiffersOnlyByTies(st, params, o, 0, {1, 2, 3});
  std::vector<int32_t> all_heads(static_cast<size_t>(st.group()));
  std::iota(all_heads.begin(), all_heads.end(), 0);
  for (int32_t pair = 1; pair < int32_t(o.ref_cnt.size()); ++pair) {
    ExpectPairDiffersOnlyByTies(st, params, o, pair, all_heads);
  }
}

}  // namespace
}  // namespace twl

// The GPU pruner's histogram top-p against its own rule on the CPU (TopPBinnedRef), on scores
// chosen exactly: FP16 K (k_bits 16, the scalar estimator), softmax scale 1 and query head j
// = the unit vector of channel j, so head j's estimate of a token is its K channel j,
// bit for bit. This pins the top-p kernels (level 1, level 2 + kept bits, the boundary
// lists and their overflow rescan) to the rule, independent of the estimator:
//  - random scores (boundary bins of a few candidates: the listed path);
//  - every score equal, and a few levels with massive ties (the boundary bin holds more
//    than a chunk's list: the rescan path);
//  - one dominant token over -60000 (estimated weight 0: valid but never kept at p < 1);
//  - one-token and chunk-edge sequences (1, 4096 + 17, 20000 tokens), p in {0.5, 0.9, 0.99,
//    1};
//  - every explicit work plan of the top-p passes (1, 2, 3, all chunks per block; the kept
//    pass's heads split over two blocks, alone and with runs) gives the bits of the
//    automatic one (runs of several chunks: partial last runs, sequences that end inside a
//    run, the boundary lists' per-chunk counts, the boundary pass walking a run's lists at once;
//    splits: union words ORed by two blocks; no split: the kept pass's whole group of 4 in
//    one block, which the default splits in two at these sizes).
// The GPU computes each weight exp(-d) as ex2.approx(-d log2 e) (TopPWeight: within ~3e-6
// relative of std::exp over the 28.5 logits that carry weight), which moves fixed-point
// masses by as much; so per head the GPU set must lie between the reference sets at
// p (1 -/+ 1e-5) (the rule is monotone in p), which are equal unless the cumulative mass
// crosses p within that margin. p = 1 must match exactly.
#include <algorithm>
#include <cmath>
#include <random>
#include <set>
#include <utility>
#include <vector>

#include "core/half.h"
#include "gpu_test_util.h"
#include "pipeline/prune/twilight/cuda/prune_launch.h"
#include "pipeline/select/quest/cpu/quest_select_cpu.h"
#include "reference/top_p_bins.h"

namespace twl {
namespace {

using testing::DeviceStore;
using testing::Download;
using testing::MakeRandomStore;
using testing::Poisoned;
using testing::RefStore;
using testing::Upload;

// Score of token t of sequence s under pattern `kind` (see above).
float PatternScore(int32_t kind, int32_t s, int32_t t, std::mt19937_64& rng) {
  switch (kind) {
    case 0:
      return std::normal_distribution<float>(0.0f, 2.0f)(rng);
    case 1:
      return 1.25f;  // every candidate tied
    case 2: {
      const float levels[] = {0.0f, -0.5f, -1.0f, -3.0f};
      return levels[std::uniform_int_distribution<int>(0, 3)(rng)];
    }
    default:
      return t == (s * 7919) % 1000 ? 10.0f : -60000.0f;
  }
}

TEST(PruneTopPGpuTest, KeptSetsFollowTheBinnedRule) {
  TWL_SKIP_WITHOUT_GPU();
  PageGeometry g;
  g.page_size = 16;
  g.head_dim = 64;
  g.num_kv_heads = 2;
  g.k_bits = 16;
  const int32_t group = 4;
  const std::vector<int32_t> lens = {1, 4096 + 17, 20000};
  const uint64_t seed = ::testing::UnitTest::GetInstance()->random_seed() + 77;
  RefStore st = MakeRandomStore(g, g.num_kv_heads * group, lens, seed, 0.0f);
  const BatchView hb = st.Batch();
  const int32_t nq = st.num_q_heads;
  // Queries: head j of each group = unit vector of channel j.
  std::fill(st.q.begin(), st.q.end(), fp16_t(0));
  for (int32_t s = 0; s < hb.num_seqs; ++s) {
    for (int32_t qh = 0; qh < nq; ++qh) {
      st.q[(size_t(s) * nq + size_t(qh)) * g.head_dim + size_t(qh % group)] = FloatToHalf(1.0f);
    }
  }
  // K: channel j = head j's score (FP16, as stored), the other channels 0.
  std::mt19937_64 rng(seed);
  const FpKvView kv = st.Kv();
  for (int32_t s = 0; s < hb.num_seqs; ++s) {
    for (int32_t t = 0; t < lens[size_t(s)]; ++t) {
      const int32_t page = st.page_table[size_t(s) * st.max_pages + size_t(t / g.page_size)];
      for (int32_t h = 0; h < g.num_kv_heads; ++h) {
        fp16_t* k = kv.K(g, g.BlockId(page, h), t % g.page_size);
        std::fill(k, k + g.head_dim, fp16_t(0));
        for (int32_t j = 0; j < group; ++j) {
          k[j] = FloatToHalf(PatternScore((j + h) % 4, s, t, rng));
        }
      }
    }
  }

  SelectorParams sp;
  sp.kind = SelectorKind::kFull;
  const int32_t max_select = SelectStride(sp, hb.max_pages);
  const int32_t pairs = hb.num_seqs * g.num_kv_heads, heads = hb.num_seqs * nq;
  std::vector<int32_t> sel_pages(static_cast<size_t>(pairs) * max_select),
      sel_count(static_cast<size_t>(pairs));
  ASSERT_TRUE(SelectPagesRef(g, sp, hb, st.Query(), st.Quant(),
                             SelectionView{sel_pages.data(), sel_count.data(), max_select})
                  .ok());
  const int32_t max_kept = max_select * g.page_size;

  DeviceStore ds(st);
  gpu::DeviceBuffer d_sp = Upload(sel_pages), d_sc = Upload(sel_count);
  gpu::DeviceBuffer d_tok = Poisoned<int32_t>(size_t(pairs) * max_kept),
                    d_cnt = Poisoned<int32_t>(pairs);
  gpu::DeviceBuffer d_kept = Poisoned<int32_t>(heads), d_mass = Poisoned<float>(heads);
  gpu::DeviceBuffer ws;
  const size_t ws_bytes = PruneWorkspaceBytes(g, hb.num_seqs, nq, max_select);
  TWL_ASSERT_OK(ws.Reserve(ws_bytes));
  TWL_ASSERT_OK(gpu::Memset(ws.get(), 0xFF, ws_bytes));  // a dirty workspace

  for (const float p : {0.5f, 0.9f, 0.99f, 1.0f}) {
    SCOPED_TRACE(::testing::Message() << "p = " << p);
    PrunerParams params;
    params.p = p;
    params.softmax_scale = 1.0f;
    auto launch = [&](int32_t plan, int32_t splits = 0) {
      params.topp_chunks_per_block = plan;
      params.topp_head_splits = splits;
      return LaunchPrune(g, params, ds.Batch(), ds.Query(), ds.Quant(), ds.Kv(),
                         SelectionView{d_sp.as<int32_t>(), d_sc.as<int32_t>(), max_select},
                         KeptView{d_tok.as<int32_t>(), d_cnt.as<int32_t>(), max_kept},
                         HeadStatsView{nullptr, d_kept.as<int32_t>(), d_mass.as<float>()},
                         ws.get(), ws_bytes, nullptr);
    };
    TWL_ASSERT_OK(launch(0));
    const auto tok = Download<int32_t>(d_tok, size_t(pairs) * max_kept);
    const auto cnt = Download<int32_t>(d_cnt, size_t(pairs));
    const auto kept = Download<int32_t>(d_kept, size_t(heads));
    const auto mass = Download<float>(d_mass, size_t(heads));
    // Work plans of the top-p passes (chunks per block, head splits): the same bits.
    for (const auto& [plan, splits] : std::vector<std::pair<int32_t, int32_t>>{
             {1, 0}, {2, 0}, {3, 0}, {1 << 20, 0}, {0, 2}, {2, 2}, {0, 1}, {3, 1}}) {
      SCOPED_TRACE(::testing::Message() << "topp_chunks_per_block = " << plan
                                        << ", topp_head_splits = " << splits);
      TWL_ASSERT_OK(launch(plan, splits));
      EXPECT_EQ(Download<int32_t>(d_tok, size_t(pairs) * max_kept), tok);
      EXPECT_EQ(Download<int32_t>(d_cnt, size_t(pairs)), cnt);
      EXPECT_EQ(Download<int32_t>(d_kept, size_t(heads)), kept);
      EXPECT_EQ(Download<float>(d_mass, size_t(heads)), mass);
    }
    for (int32_t pair = 0; pair < pairs; ++pair) {
      const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
      SCOPED_TRACE(::testing::Message() << "sequence " << s << ", KV head " << h);
      // Candidate positions and each head's scores, in the selection's slot order.
      std::vector<int32_t> pos;
      std::vector<std::vector<float>> sc(static_cast<size_t>(group));
      for (int32_t i = 0; i < sel_count[size_t(pair)]; ++i) {
        const int32_t page_idx = sel_pages[size_t(pair) * max_select + size_t(i)];
        const int32_t page = st.page_table[size_t(s) * st.max_pages + size_t(page_idx)];
        for (int32_t r = 0; r < g.page_size; ++r) {
          if (page_idx * g.page_size + r >= lens[size_t(s)]) continue;
          pos.push_back(page_idx * g.page_size + r);
          const fp16_t* k = kv.K(g, g.BlockId(page, h), r);
          for (int32_t j = 0; j < group; ++j) sc[size_t(j)].push_back(HalfToFloat(k[j]));
        }
      }
      std::set<int32_t> lo_union, hi_union;
      for (int32_t j = 0; j < group; ++j) {
        const int64_t at = int64_t(s) * nq + h * group + j;
        const float p_lo = p >= 1.0f ? 1.0f : p * (1.0f - 1e-5f);
        const float p_hi = p >= 1.0f ? 1.0f : p * (1.0f + 1e-5f);
        const BinnedTopP lo = TopPBinnedRef(sc[size_t(j)], p_lo);
        const BinnedTopP hi = TopPBinnedRef(sc[size_t(j)], p_hi);
        for (size_t i = 0; i < pos.size(); ++i) {
          if (lo.keep[i]) lo_union.insert(pos[i]);
          if (hi.keep[i]) hi_union.insert(pos[i]);
        }
        EXPECT_GE(kept[size_t(at)], lo.kept) << "head " << j;
        EXPECT_LE(kept[size_t(at)], hi.kept) << "head " << j;
        EXPECT_GE(mass[size_t(at)], float(lo.mass) - 1e-5f) << "head " << j;
        EXPECT_LE(mass[size_t(at)], float(hi.mass) + 1e-5f) << "head " << j;
        if (p >= 1.0f) {
          EXPECT_EQ(kept[size_t(at)], lo.kept);
          EXPECT_EQ(mass[size_t(at)], float(lo.mass));
        }
        const int32_t kind = (j + h) % 4;
        if (kind == 3 && p < 1.0f && !pos.empty()) {
          // The dominant token alone (the others weigh 0 in FP32, at d = 60010).
          EXPECT_EQ(kept[size_t(at)], 1) << "head " << j;
        }
        if (kind == 1 && !pos.empty()) {
          EXPECT_EQ(kept[size_t(at)], int32_t(pos.size())) << "ties: every candidate, head " << j;
        }
      }
      const int32_t n = cnt[size_t(pair)];
      ASSERT_GE(n, 0);
      ASSERT_LE(n, max_kept);
      const int32_t* gt = tok.data() + int64_t(pair) * max_kept;
      for (int32_t i = 1; i < n; ++i) ASSERT_LT(gt[i - 1], gt[i]) << "not ascending";
      const std::set<int32_t> got(gt, gt + n);
      EXPECT_TRUE(std::includes(got.begin(), got.end(), lo_union.begin(), lo_union.end()))
          << "a token the rule keeps is missing";
      EXPECT_TRUE(std::includes(hi_union.begin(), hi_union.end(), got.begin(), got.end()))
          << "a token the rule drops is kept";
      if (p >= 1.0f) EXPECT_EQ(got, lo_union);
    }
  }
}

}  // namespace
}  // namespace twl

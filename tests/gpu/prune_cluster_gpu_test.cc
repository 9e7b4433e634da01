// The fused cluster pruner (pipeline/prune/twilight/cuda/prune_cluster.cuh) against the
// separate passes (TWL_PRUNE_CLUSTER=0), bit for bit: kept tokens and counts per
// (sequence, KV head), and per query head selected / kept / est_mass / full_mass / cap_hit.
// Both apply the same rule to the same FP16 scores with integer masses, so nothing may
// differ. Fresh random inputs per run (the gtest seed), the FULL selector, flat (query x0.1)
// and peaked (x3) heads in every group, ragged batches with lengths that are not multiples of
// 16 (a 1-token sequence, blocks of a cluster past a short pair's candidates), groups 1, 2, 3,
// 4 and 8, head dims 64 / 128, p in {0.5, 0.9, 0.95, 1}, per-sequence p, a NaN query head,
// rows past 128k (a cluster's slots not a power of two). The cluster path must really run:
// PruneClusterSize says so and the workspace (poisoned) is left untouched, which the passes
// never do (they clear and fill it). The auto mode must pick the cluster at the serving shape
// (128k, G = 4). Against the CPU reference: PruneGpuTest (prune_gpu_test.cc) runs its cases
// with the automatic choice and again with the cluster forced, comparing the bits.
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "gpu_test_util.h"
#include "pipeline/prune/twilight/cuda/prune_launch.h"
#include "pipeline/select/quest/cpu/quest_select_cpu.h"

namespace twl {
namespace {

using testing::DeviceStore;
using testing::Download;
using testing::MakeRandomStore;
using testing::Poisoned;
using testing::RefStore;
using testing::Upload;

struct ClusterCase {
  int32_t head_dim, num_kv_heads, group;
  std::vector<int32_t> lens;
  int32_t mode;        // the cluster run: -1 auto (TWL_PRUNE_CLUSTER unset), 1 forced ("1")
  bool per_seq_p = false;
  bool nan_head = false;  // query head 1 of sequence 0 holds a NaN
};

struct Outputs {
  std::vector<int32_t> tok, cnt, sel, kept, cap;
  std::vector<float> mass, full;
};

// TWL_PRUNE_CLUSTER for mode -1 (unset), 0 or 1.
void ClusterEnv(int32_t mode) {
  if (mode < 0) {
    unsetenv("TWL_PRUNE_CLUSTER");
  } else {
    setenv("TWL_PRUNE_CLUSTER", mode == 0 ? "0" : "1", 1);
  }
}

class PruneClusterGpuTest : public ::testing::TestWithParam<ClusterCase> {};

TEST_P(PruneClusterGpuTest, SameBitsAsThePasses) {
  TWL_SKIP_WITHOUT_GPU();
  const ClusterCase c = GetParam();
  PageGeometry g;
  g.page_size = 16;
  g.head_dim = c.head_dim;
  g.num_kv_heads = c.num_kv_heads;
  g.k_bits = 4;
  g.k_scheme = kKSchemeToken;
  const uint64_t seed = ::testing::UnitTest::GetInstance()->random_seed() +
                        uint64_t(c.group * 131 + c.head_dim + c.lens.size());
  RefStore st = MakeRandomStore(g, c.num_kv_heads * c.group, c.lens, seed, /*peak=*/2.5f);
  const int32_t nq = st.num_q_heads;
  for (size_t s = 0; s < c.lens.size(); ++s) {  // flat, medium and peaked heads in each group
    for (int32_t qh = 0; qh < nq; ++qh) {
      const float f = qh % 3 == 0 ? 0.1f : (qh % 3 == 1 ? 1.0f : 3.0f);
      for (int32_t j = 0; j < g.head_dim; ++j) {
        fp16_t& x = st.q[(s * size_t(nq) + size_t(qh)) * size_t(g.head_dim) + size_t(j)];
        x = FloatToHalf(HalfToFloat(x) * f);
      }
    }
  }
  if (c.nan_head) st.q[size_t(1) * g.head_dim + 7] = 0x7E00;
  const BatchView hb = st.Batch();
  SelectorParams sp;
  sp.kind = SelectorKind::kFull;
  const int32_t max_select = SelectStride(sp, hb.max_pages);
  const int32_t pairs = hb.num_seqs * g.num_kv_heads;
  const int32_t heads = hb.num_seqs * nq;
  std::vector<int32_t> sel_pages(static_cast<size_t>(pairs) * max_select);
  std::vector<int32_t> sel_count(static_cast<size_t>(pairs));
  ASSERT_TRUE(SelectPagesRef(g, sp, hb, st.Query(), st.Quant(),
                             SelectionView{sel_pages.data(), sel_count.data(), max_select})
                  .ok());
  const int32_t max_kept = max_select * g.page_size;

  DeviceStore ds(st);
  gpu::DeviceBuffer d_sp = Upload(sel_pages), d_sc = Upload(sel_count);
  std::vector<float> seq_p;
  std::mt19937_64 rng(seed);
  for (int32_t s = 0; s < hb.num_seqs; ++s) {
    const float choices[] = {0.5f, 0.95f, 1.0f, 0.9f};
    seq_p.push_back(s < 4 ? choices[s] : std::uniform_real_distribution<float>(0.3f, 0.99f)(rng));
  }
  gpu::DeviceBuffer d_seq_p = Upload(seq_p);
  gpu::DeviceBuffer d_tok = Poisoned<int32_t>(size_t(pairs) * max_kept),
                    d_cnt = Poisoned<int32_t>(pairs);
  gpu::DeviceBuffer d_sel = Poisoned<int32_t>(heads), d_kept = Poisoned<int32_t>(heads),
                    d_cap = Poisoned<int32_t>(heads);
  gpu::DeviceBuffer d_mass = Poisoned<float>(heads), d_full = Poisoned<float>(heads);
  const size_t ws_bytes = PruneWorkspaceBytes(g, hb.num_seqs, nq, max_select);
  gpu::DeviceBuffer ws;
  TWL_ASSERT_OK(ws.Reserve(ws_bytes));

#define CLUSTER_TEST_RETURN_IF_ERROR(expr)   \
  do {                                       \
    if (absl::Status _s = (expr); !_s.ok()) { \
      return _s;                             \
    }                                        \
  } while (0)
  auto run = [&](const PrunerParams& params, Outputs* o) -> absl::Status {
    // Fresh poison: nothing of an earlier run can pass for this one's output.
    CLUSTER_TEST_RETURN_IF_ERROR(gpu::Memset(d_tok.get(), 0xFF, size_t(pairs) * max_kept * 4));
    CLUSTER_TEST_RETURN_IF_ERROR(gpu::Memset(d_cnt.get(), 0xFF, size_t(pairs) * 4));
    for (gpu::DeviceBuffer* b : {&d_sel, &d_kept, &d_cap, &d_mass, &d_full}) {
      CLUSTER_TEST_RETURN_IF_ERROR(gpu::Memset(b->get(), 0xFF, size_t(heads) * 4));
    }
    CLUSTER_TEST_RETURN_IF_ERROR(gpu::Memset(ws.get(), 0xFF, ws_bytes));
    CLUSTER_TEST_RETURN_IF_ERROR(LaunchPrune(
        g, params, ds.Batch(), ds.Query(), ds.Quant(), ds.Kv(),
        SelectionView{d_sp.as<int32_t>(), d_sc.as<int32_t>(), max_select},
        KeptView{d_tok.as<int32_t>(), d_cnt.as<int32_t>(), max_kept},
        HeadStatsView{d_sel.as<int32_t>(), d_kept.as<int32_t>(), d_mass.as<float>(),
                      d_full.as<float>(), d_cap.as<int32_t>()},
        ws.get(), ws_bytes, nullptr));
    o->cnt = Download<int32_t>(d_cnt, size_t(pairs));
    o->tok = Download<int32_t>(d_tok, size_t(pairs) * max_kept);
    for (int32_t pair = 0; pair < pairs; ++pair) {  // past the count: unwritten either way
      const int32_t n = o->cnt[size_t(pair)];
      if (n < 0 || n > max_kept) continue;
      std::fill(o->tok.begin() + int64_t(pair) * max_kept + n,
                o->tok.begin() + int64_t(pair + 1) * max_kept, 0);
    }
    o->sel = Download<int32_t>(d_sel, size_t(heads));
    o->kept = Download<int32_t>(d_kept, size_t(heads));
    o->cap = Download<int32_t>(d_cap, size_t(heads));
    o->mass = Download<float>(d_mass, size_t(heads));
    o->full = Download<float>(d_full, size_t(heads));
    return absl::OkStatus();
  };
#undef CLUSTER_TEST_RETURN_IF_ERROR
  auto workspace_untouched = [&] {
    const std::vector<uint8_t> w = Download<uint8_t>(ws, ws_bytes);
    for (uint8_t b : w) {
      if (b != 0xFF) return false;
    }
    return true;
  };
  auto same_bits = [](const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
  };

  const std::vector<float> ps = c.per_seq_p ? std::vector<float>{-1.0f}
                                            : std::vector<float>{0.5f, 0.9f, 0.95f, 1.0f};
  for (const float p : ps) {
    SCOPED_TRACE(::testing::Message() << "p = " << (p < 0 ? "per sequence" : "") << p);
    PrunerParams params;
    params.p = p < 0 ? 0.9f : p;
    params.seq_p = p < 0 ? d_seq_p.as<float>() : nullptr;
    Outputs passes, fused, again;
    setenv("TWL_PRUNE_CLUSTER", "0", 1);
    const absl::Status passes_ok = run(params, &passes);
    ClusterEnv(c.mode);
    TWL_ASSERT_OK(passes_ok);
    EXPECT_FALSE(workspace_untouched()) << "the passes fill their workspace";
    ASSERT_GT(PruneClusterSize(g, params, nq, max_select, /*grow=*/false), 0)
        << "the cluster pruner does not take this shape (mode " << c.mode << ")";
    TWL_ASSERT_OK(run(params, &fused));
    EXPECT_TRUE(workspace_untouched()) << "the cluster path did not run (or wrote the workspace)";
    EXPECT_EQ(fused.cnt, passes.cnt);
    EXPECT_EQ(fused.tok, passes.tok);
    EXPECT_EQ(fused.sel, passes.sel);
    EXPECT_EQ(fused.kept, passes.kept);
    EXPECT_EQ(fused.cap, passes.cap);
    EXPECT_TRUE(same_bits(fused.mass, passes.mass)) << "est_mass differs";
    EXPECT_TRUE(same_bits(fused.full, passes.full)) << "full_mass differs";
    // Sanity of what both agree on: ascending tokens inside the sequence, masses in [0, 1].
    for (int32_t pair = 0; pair < pairs; ++pair) {
      const int32_t s = pair / g.num_kv_heads, n = fused.cnt[size_t(pair)];
      ASSERT_GE(n, 0);
      ASSERT_LE(n, c.lens[size_t(s)]);
      const int32_t* t = fused.tok.data() + int64_t(pair) * max_kept;
      for (int32_t i = 0; i < n; ++i) {
        ASSERT_GE(t[i], 0);
        ASSERT_LT(t[i], c.lens[size_t(s)]);
        if (i) ASSERT_LT(t[i - 1], t[i]);
      }
    }
    for (float m : fused.mass) {
      EXPECT_GE(m, 0.0f);
      EXPECT_LE(m, 1.0f + 1e-6f);
    }
    if (c.nan_head && p > 0 && p < 1.0f) {
      EXPECT_EQ(fused.kept[1], 0) << "a NaN head keeps nothing";
      EXPECT_EQ(fused.mass[1], 0.0f);
    }
    // Deterministic: the same bits again.
    TWL_ASSERT_OK(run(params, &again));
    EXPECT_EQ(again.cnt, fused.cnt);
    EXPECT_EQ(again.tok, fused.tok);
    EXPECT_TRUE(same_bits(again.mass, fused.mass));
  }
  unsetenv("TWL_PRUNE_CLUSTER");
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, PruneClusterGpuTest,
    ::testing::Values(
        // The serving shape's group (G = 4, d 128) at 128k, automatic choice, ragged batch:
        // a full 128k pair, a 37-token pair (15 of 16 blocks past its candidates), lengths
        // not multiples of 16.
        ClusterCase{128, 2, 4, {131072, 37, 40005, 65555}, -1},
        // Past 128k (8193+ pages: slots per block 8448), automatic.
        ClusterCase{128, 2, 4, {131112, 5000}, -1},
        // G = 8 (8 MMA rows of one n-tile), forced (one block per SM at 64k).
        ClusterCase{128, 1, 8, {65543, 3000}, 1},
        // d 64, G = 2, per-sequence p, short and mid lengths.
        ClusterCase{64, 4, 2, {9000, 17, 48, 33000, 2500, 160}, 1, true},
        // G = 1 and a 1-token sequence, a sequence ending 17 rows into a 4096 run.
        ClusterCase{64, 2, 1, {1, 16, 4113}, 1},
        // G = 3 (a group that fills an MMA tile partly), forced on short rows.
        ClusterCase{128, 2, 3, {20000, 48}, 1},
        // A NaN query head: it keeps nothing, its group-mates keep their sets.
        ClusterCase{128, 2, 4, {900, 333}, 1, false, true},
        ClusterCase{128, 2, 4, {50000, 20}, -1, true}));

}  // namespace
}  // namespace twl

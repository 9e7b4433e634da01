// GPU Quest selector (LaunchSelectPages) against SelectPagesRef on random stores with mixed
// sequence lengths (not multiples of the page size), head dim 64/128, GQA 1/4/8. Counts must
// match exactly; page sets may differ only at near ties of the page bound with the
// budget-th bound (float sums run in another order on the GPU).
#include <algorithm>
#include <random>
#include <set>

#include "core/head_math.h"
#include "gpu_test_util.h"
#include "pipeline/select/quest/cpu/quest_select_cpu.h"
#include "pipeline/select/quest/cuda/select_launch.h"

namespace twl {
namespace {

using testing::DeviceStore;
using testing::Download;
using testing::MakeRandomStore;
using testing::Poisoned;
using testing::RefStore;

struct SelectCase {
  int32_t head_dim, num_kv_heads, group, budget, sinks;
  SelectorKind kind;
};

class SelectGpuTest : public ::testing::TestWithParam<SelectCase> {};

// The bound score the reference ranks page p of (s, h) by.
float RefBound(RefStore& st, int32_t s, int32_t h, int32_t p) {
  const BatchView b = st.Batch();
  float best = -INFINITY;
  for (int32_t j = 0; j < st.group(); ++j) {
    const std::vector<float> qr = QueryRow(st.g, b, st.Query(), s, h * st.group() + j, 1.0f);
    const int64_t block = st.g.BlockId(b.PageId(s, p), h);
    best = std::max(best, PageUpperBoundRef(st.g, qr.data(), st.kmin.data() + block * st.g.head_dim,
                                            st.kmax.data() + block * st.g.head_dim));
  }
  return best;
}

TEST_P(SelectGpuTest, MatchesReferenceUpToTies) {
  TWL_SKIP_WITHOUT_GPU();
  const SelectCase c = GetParam();
  PageGeometry g;
  g.page_size = 16;
  g.head_dim = c.head_dim;
  g.num_kv_heads = c.num_kv_heads;
  const uint64_t seed = ::testing::UnitTest::GetInstance()->random_seed() + uint64_t(c.group);
  RefStore st = MakeRandomStore(g, c.num_kv_heads * c.group, {1003, 37, 517, 16, 2049, 250},
                                seed);
  SelectorParams params;
  params.kind = c.kind;
  params.budget_pages = c.budget;
  params.sink_pages = c.sinks;
  const BatchView hb = st.Batch();
  const int32_t max_select = SelectStride(params, hb.max_pages);
  const int32_t pairs = hb.num_seqs * g.num_kv_heads;
  std::vector<int32_t> ref_pages(static_cast<size_t>(pairs) * max_select), ref_count(static_cast<size_t>(pairs));
  ASSERT_TRUE(SelectPagesRef(g, params, hb, st.Query(), st.Quant(),
                             SelectionView{ref_pages.data(), ref_count.data(), max_select})
                  .ok());

  DeviceStore ds(st);
  gpu::DeviceBuffer d_pages = Poisoned<int32_t>(ref_pages.size());
  gpu::DeviceBuffer d_count = Poisoned<int32_t>(ref_count.size());
  gpu::DeviceBuffer ws;
  const size_t ws_bytes = SelectWorkspaceBytes(g, params, hb.num_seqs, hb.max_pages);
  TWL_ASSERT_OK(ws.Reserve(ws_bytes));
  TWL_ASSERT_OK(LaunchSelectPages(g, params, ds.Batch(), ds.Query(), ds.Quant(),
                                  SelectionView{d_pages.as<int32_t>(), d_count.as<int32_t>(),
                                                max_select},
                                  ws.get(), ws_bytes, nullptr));
  const auto pages = Download<int32_t>(d_pages, ref_pages.size());
  const auto count = Download<int32_t>(d_count, ref_count.size());
  int tie_diffs = 0;
  for (int32_t pair = 0; pair < pairs; ++pair) {
    const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
    ASSERT_EQ(count[size_t(pair)], ref_count[size_t(pair)]) << "pair " << pair;
    const int32_t n = count[size_t(pair)];
    const int32_t* gp = pages.data() + int64_t(pair) * max_select;
    const int32_t* rp = ref_pages.data() + int64_t(pair) * max_select;
    for (int32_t i = 1; i < n; ++i) ASSERT_LT(gp[i - 1], gp[i]) << "not ascending, pair " << pair;
    const std::set<int32_t> a(gp, gp + n), b(rp, rp + n);
    if (a == b) continue;
    // Differences must sit at the budget boundary: bound within tolerance of the weakest
    // reference winner among the ranked pages.
    const int32_t num_pages = hb.NumPages(g, s);
    float weakest = INFINITY, scale = 1.0f;
    for (int32_t p : b) {
      if (p >= c.sinks && p < num_pages - 1) weakest = std::min(weakest, RefBound(st, s, h, p));
    }
    scale = 1.0f + std::abs(weakest);
    std::vector<int32_t> diff;
    std::set_symmetric_difference(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(diff));
    for (int32_t p : diff) {
      ASSERT_TRUE(p >= c.sinks && p < num_pages - 1) << "sink/last page dropped, pair " << pair;
      EXPECT_LE(std::abs(RefBound(st, s, h, p) - weakest), 1e-4f * scale)
          << "page " << p << " of pair " << pair << " differs beyond a tie";
      ++tie_diffs;
    }
  }
  RecordProperty("tie_diffs", tie_diffs);
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, SelectGpuTest,
    ::testing::Values(SelectCase{128, 8, 4, 9, 1, SelectorKind::kQuest},
                      SelectCase{128, 2, 8, 17, 2, SelectorKind::kQuest},
                      SelectCase{64, 4, 1, 5, 1, SelectorKind::kQuest},
                      SelectCase{64, 2, 4, 40, 0, SelectorKind::kQuest},
                      SelectCase{128, 3, 1, 1, 3, SelectorKind::kQuest},
                      SelectCase{128, 2, 4, 0, 1, SelectorKind::kFull},
                      SelectCase{96, 2, 4, 9, 1, SelectorKind::kQuest},
                      SelectCase{256, 2, 8, 17, 2, SelectorKind::kQuest},
                      // 9..16 heads per KV head: two warps of one 8-head tile each.
                      SelectCase{128, 2, 16, 9, 1, SelectorKind::kQuest},
                      SelectCase{64, 1, 12, 5, 1, SelectorKind::kQuest},
                      SelectCase{96, 2, 16, 17, 2, SelectorKind::kQuest},
                      SelectCase{256, 1, 16, 9, 1, SelectorKind::kQuest}));

}  // namespace
}  // namespace twl

// The stage seam of pipeline/: every SelectorKind has a registered selector that stands for
// that kind, an unknown kind is refused, and the host path through the stage classes
// (select -> prune -> attend) gives exactly the reference stages' selections and kept sets,
// and their attention output to FP16's rounding (the host attention sums in another order).
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "pipeline/attend/sparse/cpu/sparse_attend_cpu.h"
#include "pipeline/attend/sparse/sparse_attention.h"
#include "pipeline/prune/twilight/cpu/twilight_prune_cpu.h"
#include "pipeline/prune/twilight/twilight_pruner.h"
#include "pipeline/select/quest/cpu/quest_select_cpu.h"
#include "pipeline/select/quest/quest_selector.h"
#include "pipeline/select/selector.h"
#include "support/ref_store.h"

namespace twl {
namespace {

TEST(SelectorRegistry, EveryKindHasItsSelector) {
  for (SelectorKind kind : {SelectorKind::kFull, SelectorKind::kQuest}) {
    absl::StatusOr<const Selector*> s = FindSelector(kind);
    ASSERT_TRUE(s.ok()) << s.status();
    EXPECT_EQ((*s)->kind(), kind) << (*s)->name();
  }
  EXPECT_EQ(FindSelector(static_cast<SelectorKind>(77)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(SelectorRegistry, QuestOwnsPerChannelMinMax) {
  const PageGeometry g{16, 128, 8, 4};
  EXPECT_EQ((*FindSelector(SelectorKind::kQuest))->MetadataBytesPerBlock(g), 2 * 128 * 2);
  EXPECT_EQ((*FindSelector(SelectorKind::kFull))->MetadataBytesPerBlock(g), 0);
}

// One host step through the stage classes against the reference functions called directly.
void CheckHostStepMatchesReference(SelectorParams sp) {
  const PageGeometry g{16, 64, 2, 4};
  std::mt19937_64 rng(::testing::UnitTest::GetInstance()->random_seed());
  testing::RefStore st = testing::MakeRandomStore(g, 4, {97, 300}, rng());
  const BatchView b = st.Batch();
  PrunerParams pp;
  pp.p = 0.9f;
  const int32_t max_select = SelectStride(sp, b.max_pages);
  const int32_t max_kept = max_select * g.page_size;
  const size_t units = size_t(b.num_seqs) * g.num_kv_heads;
  const size_t heads = size_t(b.num_seqs) * b.num_q_heads;
  struct Run {
    std::vector<int32_t> pages, count, limit, tokens, kept_count, sel, kept, cap;
    std::vector<float> bound, mass, full;
    std::vector<fp16_t> out;
  };
  auto make = [&](Run& r) {
    r.pages.assign(units * max_select, -1);
    r.count.assign(units, 0);
    r.limit.assign(units, 0);
    r.bound.assign(heads * max_select, 0.0f);
    r.tokens.assign(units * max_kept, -1);
    r.kept_count.assign(units, 0);
    r.sel.assign(heads, 0);
    r.kept.assign(heads, 0);
    r.cap.assign(heads, 0);
    r.mass.assign(heads, 0.0f);
    r.full.assign(heads, 0.0f);
    r.out.assign(heads * g.head_dim, fp16_t{});
  };
  Run stage, ref;
  make(stage);
  make(ref);
  auto views = [&](Run& r, SelectionView* sel, KeptView* kept, HeadStatsView* stats) {
    *sel = SelectionView{r.pages.data(), r.count.data(), max_select,
                         sp.grow ? r.bound.data() : nullptr, sp.grow ? r.limit.data() : nullptr};
    *kept = KeptView{r.tokens.data(), r.kept_count.data(), max_kept};
    *stats = HeadStatsView{r.sel.data(), r.kept.data(), r.mass.data(), r.full.data(),
                           r.cap.data()};
  };
  SelectionView sel;
  KeptView kept;
  HeadStatsView stats;
  views(stage, &sel, &kept, &stats);
  const Selector* selector = *FindSelector(sp.kind);
  ASSERT_TRUE(selector->SelectOnHost(g, sp, b, st.Query(), st.Quant(), sel, 0.0f).ok());
  ASSERT_TRUE(
      TwilightPruner().PruneOnHost(g, pp, b, st.Query(), st.Quant(), st.Kv(), sel, kept, stats)
          .ok());
  ASSERT_TRUE(SparseAttention()
                  .AttendOnHost(g, b, st.Query(), st.Kv(), kept, OutputView{stage.out.data()},
                                0.0f)
                  .ok());
  views(ref, &sel, &kept, &stats);
  ASSERT_TRUE(SelectPagesRef(g, sp, b, st.Query(), st.Quant(), sel).ok());
  ASSERT_TRUE(PruneRef(g, pp, b, st.Query(), st.Quant(), st.Kv(), sel, kept, stats).ok());
  ASSERT_TRUE(
      SparseAttentionRef(g, b, st.Query(), st.Kv(), kept, OutputView{ref.out.data()}).ok());
  EXPECT_EQ(stage.pages, ref.pages);
  EXPECT_EQ(stage.count, ref.count);
  EXPECT_EQ(stage.tokens, ref.tokens);
  EXPECT_EQ(stage.kept_count, ref.kept_count);
  EXPECT_EQ(stage.kept, ref.kept);
  EXPECT_EQ(stage.mass, ref.mass);
  // Within an FP16 ulp, or FP32 reordering against the output's scale where a sum cancels.
  ASSERT_EQ(stage.out.size(), ref.out.size());
  float scale = 0.0f;
  for (fp16_t x : ref.out) scale = std::max(scale, std::fabs(HalfToFloat(x)));
  for (size_t i = 0; i < ref.out.size(); ++i) {
    const float a = HalfToFloat(stage.out[i]), r = HalfToFloat(ref.out[i]);
    ASSERT_LE(std::fabs(a - r), std::ldexp(std::fabs(r), -10) + 1e-5f * scale) << "element " << i;
  }
  // The step did something: some pages selected and some tokens kept.
  EXPECT_GT(ref.count[0], 0);
  EXPECT_GT(ref.kept_count[0], 0);
}

TEST(PipelineStages, HostStepEqualsReferenceGrowingQuest) {
  SelectorParams sp;
  sp.kind = SelectorKind::kQuest;
  sp.grow = true;
  CheckHostStepMatchesReference(sp);
}

TEST(PipelineStages, HostStepEqualsReferenceFixedQuest) {
  SelectorParams sp;
  sp.kind = SelectorKind::kQuest;
  sp.budget_pages = 4;
  CheckHostStepMatchesReference(sp);
}

TEST(PipelineStages, HostStepEqualsReferenceFull) {
  SelectorParams sp;
  sp.kind = SelectorKind::kFull;
  CheckHostStepMatchesReference(sp);
}

}  // namespace
}  // namespace twl

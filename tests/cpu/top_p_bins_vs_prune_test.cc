// The GPU pruner's rule (TopPBinnedRef per query head, union over the GQA group) against
// PruneRef (bisection) on random stores with flat and peaked heads: kept sets may differ
// only in tokens ambiguous at the stated resolution (tests/support/prune_check.h), the same
// tolerance tests/gpu/prune_gpu_test.cc applies to LaunchPrune.
#include <algorithm>
#include <random>
#include <set>

#include "core/half.h"
#include "gtest/gtest.h"
#include "pipeline/prune/twilight/cpu/twilight_prune_cpu.h"
#include "pipeline/select/quest/cpu/quest_select_cpu.h"
#include "reference/top_p_bins.h"
#include "support/prune_check.h"
#include "support/ref_store.h"

namespace twl {
namespace {

using testing::Ambiguous;
using testing::HeadRef;
using testing::KeptDifference;
using testing::RefStore;
using testing::TieOfAnyHead;

struct Case {
  int32_t group;
  float p;
  std::vector<int32_t> lens;
  bool full;
};

class BinnedVsPruneRef : public ::testing::TestWithParam<Case> {};

TEST_P(BinnedVsPruneRef, DifferOnlyAtTies) {
  const Case c = GetParam();
  PageGeometry g;
  g.page_size = 16;
  g.head_dim = 64;
  g.num_kv_heads = 2;
  g.k_bits = 4;
  const uint64_t seed = ::testing::UnitTest::GetInstance()->random_seed() + uint64_t(c.group);
  RefStore st = testing::MakeRandomStore(g, g.num_kv_heads * c.group, c.lens, seed, 2.5f);
  // Flat (x0.1), medium and peaked (x3) query heads.
  for (size_t i = 0; i < st.q.size(); ++i) {
    const int32_t qh = int32_t(i / size_t(g.head_dim)) % st.num_q_heads;
    const float f = qh % 3 == 0 ? 0.1f : (qh % 3 == 1 ? 1.0f : 3.0f);
    st.q[i] = FloatToHalf(HalfToFloat(st.q[i]) * f);
  }
  const BatchView b = st.Batch();
  SelectorParams sp;
  sp.kind = c.full ? SelectorKind::kFull : SelectorKind::kQuest;
  sp.budget_pages = 24;
  sp.sink_pages = 1;
  const int32_t max_select = SelectStride(sp, b.max_pages);
  const int32_t pairs = b.num_seqs * g.num_kv_heads;
  std::vector<int32_t> pages(static_cast<size_t>(pairs) * max_select);
  std::vector<int32_t> count(static_cast<size_t>(pairs));
  const SelectionView sel{pages.data(), count.data(), max_select};
  ASSERT_TRUE(SelectPagesRef(g, sp, b, st.Query(), st.Quant(), sel).ok());
  PrunerParams params;
  params.p = c.p;
  const int32_t max_kept = max_select * g.page_size;
  std::vector<int32_t> tok(static_cast<size_t>(pairs) * max_kept), cnt(static_cast<size_t>(pairs));
  ASSERT_TRUE(PruneRef(g, params, b, st.Query(), st.Quant(), st.Kv(), sel,
                       KeptView{tok.data(), cnt.data(), max_kept}, {})
                  .ok());
  int diff_tokens = 0;
  for (int32_t pair = 0; pair < pairs; ++pair) {
    const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
    const std::vector<int32_t> sp_pages(pages.begin() + int64_t(pair) * max_select,
                                        pages.begin() + int64_t(pair) * max_select + count[size_t(pair)]);
    std::vector<HeadRef> refs;
    std::set<int32_t> binned;
    for (int32_t j = 0; j < c.group; ++j) {
      refs.push_back(testing::ReferenceHead(st, params, c.p, sp_pages, s, h, h * c.group + j));
      const BinnedTopP r = TopPBinnedRef(refs.back().sc, c.p);
      int32_t band = 0;
      for (size_t i = 0; i < r.keep.size(); ++i) {
        if (r.keep[i]) binned.insert(refs.back().pos[i]);
        band += Ambiguous(refs.back(), params, i) ? 1 : 0;
      }
      EXPECT_LE(std::abs(r.kept - refs.back().r.kept), band + 1) << "pair " << pair << " head " << j;
      EXPECT_GE(r.mass, double(c.p) - 1e-9);
    }
    const int32_t* rt = tok.data() + int64_t(pair) * max_kept;
    const std::set<int32_t> ref(rt, rt + cnt[size_t(pair)]);
    for (int32_t t : KeptDifference(binned, ref)) {
      EXPECT_TRUE(TieOfAnyHead(refs, params, t))
          << "token " << t << " of pair " << pair << " is not a tie";
      ++diff_tokens;
    }
  }
  RecordProperty("diff_tokens", diff_tokens);
}

INSTANTIATE_TEST_SUITE_P(
    Cases, BinnedVsPruneRef,
    ::testing::Values(Case{1, 0.95f, {3000, 40, 700}, false}, Case{4, 0.9f, {5000, 17, 1203}, true},
                      Case{8, 0.5f, {2100, 300}, true}, Case{3, 0.99f, {12000}, true},
                      Case{2, 0.95f, {20000, 16}, true}));

}  // namespace
}  // namespace twl

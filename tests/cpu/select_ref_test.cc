// Quest selector: the page bound is a true upper bound; selection keeps sinks, last page and
// the best-bounded pages; full selector keeps all.
#include <algorithm>
#include <random>

#include "core/head_math.h"
#include "gtest/gtest.h"
#include "pipeline/select/quest/cpu/quest_select_cpu.h"
#include "support/ref_store.h"

namespace twl {
namespace {

TEST(QuestBound, UpperBoundsEveryTokenOfThePage) {
  std::mt19937_64 rng(::testing::UnitTest::GetInstance()->random_seed());
  for (int32_t page_size : {1, 5, 16}) {
    PageGeometry g{page_size, 64, 2, 4};
    auto st = testing::MakeRandomStore(g, 4, {97, 130}, rng());
    for (int trial = 0; trial < 5; ++trial) {
      testing::RandomQueries(st, rng, 2.0f);
      BatchView b = st.Batch();
      for (int32_t s = 0; s < b.num_seqs; ++s) {
        for (int32_t qh = 0; qh < b.num_q_heads; ++qh) {
          const int32_t h = qh / st.group();
          const auto q = QueryRow(g, b, st.Query(), s, qh, 1.0f);
          for (int32_t t = 0; t < b.seq_len[s]; ++t) {
            const int64_t block = g.BlockId(b.PageId(s, t / page_size), h);
            const float bound = PageUpperBoundRef(g, q.data(), st.kmin.data() + block * g.head_dim,
                                                  st.kmax.data() + block * g.head_dim);
            const float score = ExactScore(g, q.data(), st.Kv(), block, t % page_size);
            ASSERT_GE(bound + 1e-4f * std::abs(bound), score) << "token " << t;
          }
        }
      }
    }
  }
}

TEST(QuestSelect, KeepsSinksLastPageAndTopBoundedPages) {
  PageGeometry g{16, 64, 2, 4};
  auto st = testing::MakeRandomStore(g, 8, {16 * 40 + 5, 16 * 3, 16 * 20}, 11);
  SelectorParams params{SelectorKind::kQuest, 6, 2};
  BatchView b = st.Batch();
  const int32_t stride = SelectStride(params, b.max_pages);
  std::vector<int32_t> pages(size_t(b.num_seqs * g.num_kv_heads * stride), -1);
  std::vector<int32_t> count(size_t(b.num_seqs * g.num_kv_heads), -1);
  SelectionView out{pages.data(), count.data(), stride};
  ASSERT_TRUE(SelectPagesRef(g, params, b, st.Query(), st.Quant(), out).ok());
  for (int32_t s = 0; s < b.num_seqs; ++s) {
    const int32_t np = b.NumPages(g, s);
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      const int32_t item = s * g.num_kv_heads + h;
      const int32_t* sel = pages.data() + int64_t(item) * stride;
      const int32_t n = count[size_t(item)];
      ASSERT_EQ(n, std::min(np, 6 + 2 + 1));
      ASSERT_TRUE(std::is_sorted(sel, sel + n));
      ASSERT_EQ(std::adjacent_find(sel, sel + n), sel + n) << "duplicates";
      ASSERT_EQ(sel[0], 0);
      ASSERT_EQ(sel[1], 1);
      ASSERT_EQ(sel[n - 1], np - 1);
      if (np <= 9) continue;
      // Every ranked page not selected has a bound <= every ranked page selected.
      std::vector<float> score(size_t(np), -1e30f);
      for (int32_t j = 0; j < st.group(); ++j) {
        const auto q = QueryRow(g, b, st.Query(), s, h * st.group() + j, 1.0f);
        for (int32_t p = 2; p < np - 1; ++p) {
          const int64_t block = g.BlockId(b.PageId(s, p), h);
          score[size_t(p)] = std::max(score[size_t(p)],
                                      PageUpperBoundRef(g, q.data(), st.kmin.data() + block * g.head_dim,
                                                        st.kmax.data() + block * g.head_dim));
        }
      }
      float worst_kept = 1e30f, best_dropped = -1e30f;
      for (int32_t p = 2; p < np - 1; ++p) {
        const bool kept = std::binary_search(sel, sel + n, p);
        if (kept) worst_kept = std::min(worst_kept, score[size_t(p)]);
        else best_dropped = std::max(best_dropped, score[size_t(p)]);
      }
      EXPECT_GE(worst_kept, best_dropped);
    }
  }
}

TEST(QuestSelect, FullSelectorAndBadInput) {
  PageGeometry g{16, 64, 2, 4};
  auto st = testing::MakeRandomStore(g, 2, {100, 33}, 5);
  BatchView b = st.Batch();
  SelectorParams full{SelectorKind::kFull, 0, 0};
  std::vector<int32_t> pages(static_cast<size_t>(b.num_seqs * g.num_kv_heads * b.max_pages));
  std::vector<int32_t> count(static_cast<size_t>(b.num_seqs * g.num_kv_heads));
  SelectionView out{pages.data(), count.data(), b.max_pages};
  ASSERT_TRUE(SelectPagesRef(g, full, b, st.Query(), st.Quant(), out).ok());
  EXPECT_EQ(count[0], 7);
  EXPECT_EQ(count[2], 3);
  SelectorParams quest{SelectorKind::kQuest, 0, 1};
  EXPECT_EQ(SelectPagesRef(g, quest, b, st.Query(), st.Quant(), out).code(),
            absl::StatusCode::kInvalidArgument);
  SelectorParams wide{SelectorKind::kQuest, 100, 1};
  SelectionView narrow{pages.data(), count.data(), 2};
  EXPECT_EQ(SelectPagesRef(g, wide, b, st.Query(), st.Quant(), narrow).code(),
            absl::StatusCode::kInvalidArgument);
  st.seq_len[1] = 0;
  EXPECT_EQ(SelectPagesRef(g, full, st.Batch(), st.Query(), st.Quant(), out).code(),
            absl::StatusCode::kFailedPrecondition);
}

}  // namespace
}  // namespace twl

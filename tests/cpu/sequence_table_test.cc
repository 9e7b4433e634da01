// Sequence tables: append plans across page boundaries, partial last pages, many sequences,
// fork + copy-on-write, abort/commit, batch arrays. Checked against a simple model of where
// every token must live (token i of a layer: page i / page_size of its list, row i % page_size).
#include "cache/sequence_table.h"

#include <random>
#include <set>

#include <gtest/gtest.h>

namespace twl {
namespace {

// Plans and commits an append, checking the plan's token placement on the way.
void AppendOk(SequenceTable& t, SeqId s, int32_t layer, int32_t n) {
  auto before = t.Pages(s, layer);
  ASSERT_TRUE(before.ok());
  auto plan = t.PlanAppend(s, layer, n);
  ASSERT_TRUE(plan.ok()) << plan.status();
  ASSERT_EQ(plan->num_tokens, n);
  ASSERT_EQ(plan->old_len, before->len);
  const int32_t ps = t.page_size();
  // The page list the plan implies: the old entries before first_changed, then the changed.
  ASSERT_LE(plan->first_changed, int32_t(before->pages.size()));
  std::vector<int32_t> pages_after(before->pages.begin(),
                                   before->pages.begin() + plan->first_changed);
  pages_after.insert(pages_after.end(), plan->changed_pages.begin(), plan->changed_pages.end());
  ASSERT_EQ(int32_t(pages_after.size()), plan->num_pages_after());
  for (int32_t i = 0; i < n; ++i) {
    const int32_t pos = before->len + i;
    ASSERT_EQ(plan->slot[i], pos % ps);
    ASSERT_EQ(plan->page_id[i], pages_after[size_t(pos / ps)]);
  }
  ASSERT_EQ(int64_t(pages_after.size()), (int64_t(before->len) + n + ps - 1) / ps);
  // A plan holds what the append adds: no more pages than it allocates.
  EXPECT_EQ(plan->changed_pages, plan->new_pages);
  ASSERT_TRUE(t.CommitAppend(*plan, nullptr).ok());
  auto after = t.Pages(s, layer);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->len, before->len + n);
  EXPECT_EQ(after->pages, pages_after);
}

TEST(SequenceTable, AppendsCrossPageBoundaries) {
  PageAllocator alloc(64);
  SequenceTable t(2, 16, &alloc);
  const SeqId s = t.Create();
  for (int32_t n : {1, 15, 1, 16, 17, 3, 40}) AppendOk(t, s, 0, n);
  auto lp = t.Pages(s, 0);
  ASSERT_TRUE(lp.ok());
  EXPECT_EQ(lp->len, 93);
  EXPECT_EQ(lp->pages.size(), 6u);  // ceil(93 / 16)
  std::set<int32_t> distinct(lp->pages.begin(), lp->pages.end());
  EXPECT_EQ(distinct.size(), 6u);
  for (int32_t p : lp->pages) EXPECT_EQ(alloc.RefCount(p), 1);
  // The other layer is independent.
  EXPECT_EQ(*t.Length(s, 1), 0);
  EXPECT_EQ(alloc.num_used(), 6);
}

TEST(SequenceTable, PartialLastPageIsFilledInPlace) {
  PageAllocator alloc(8);
  SequenceTable t(1, 7, &alloc);
  const SeqId s = t.Create();
  AppendOk(t, s, 0, 3);
  const int32_t first_page = t.Pages(s, 0)->pages[0];
  auto plan = t.PlanAppend(s, 0, 4);  // exactly fills the page: no new page
  ASSERT_TRUE(plan.ok());
  EXPECT_TRUE(plan->new_pages.empty());
  EXPECT_FALSE(plan->has_cow());
  for (int32_t i = 0; i < 4; ++i) {
    EXPECT_EQ(plan->page_id[i], first_page);
    EXPECT_EQ(plan->slot[i], 3 + i);
  }
  ASSERT_TRUE(t.CommitAppend(*plan, nullptr).ok());
  auto next = t.PlanAppend(s, 0, 1);  // full last page: a new one, row 0
  ASSERT_TRUE(next.ok());
  ASSERT_EQ(next->new_pages.size(), 1u);
  EXPECT_EQ(next->slot[0], 0);
  EXPECT_NE(next->page_id[0], first_page);
}

TEST(SequenceTable, ManySequencesOfDifferentLengths) {
  std::mt19937 rng(7);
  PageAllocator alloc(4096);
  const int32_t ps = 5;
  SequenceTable t(3, ps, &alloc);
  std::vector<SeqId> ids;
  std::vector<std::vector<int32_t>> len(40, std::vector<int32_t>(3, 0));
  for (int i = 0; i < 40; ++i) ids.push_back(t.Create());
  for (int round = 0; round < 200; ++round) {
    const int i = int(rng() % 40);
    const int32_t layer = int32_t(rng() % 3);
    const int32_t n = 1 + int32_t(rng() % 23);
    AppendOk(t, ids[i], layer, n);
    len[i][layer] += n;
  }
  std::set<int32_t> all_pages;
  int64_t expected_pages = 0;
  for (int i = 0; i < 40; ++i) {
    for (int32_t l = 0; l < 3; ++l) {
      auto lp = t.Pages(ids[i], l);
      ASSERT_TRUE(lp.ok());
      EXPECT_EQ(lp->len, len[i][l]);
      EXPECT_EQ(int64_t(lp->pages.size()), (len[i][l] + ps - 1) / ps);
      expected_pages += int64_t(lp->pages.size());
      all_pages.insert(lp->pages.begin(), lp->pages.end());
    }
  }
  EXPECT_EQ(int64_t(all_pages.size()), expected_pages);  // no page owned twice
  EXPECT_EQ(alloc.num_used(), expected_pages);

  // Batch arrays for a layer: lengths and page rows, padded to the longest sequence.
  std::vector<SeqId> batch;
  for (int i = 0; i < 40; ++i) {
    if (len[i][1] > 0) batch.push_back(ids[i]);
  }
  BatchArrays arrays;
  ASSERT_TRUE(t.BuildBatch(1, batch, &arrays).ok());
  int32_t max_pages = 1;
  for (size_t b = 0; b < batch.size(); ++b) {
    auto lp = t.Pages(batch[b], 1);
    EXPECT_EQ(arrays.seq_len[b], lp->len);
    max_pages = std::max<int32_t>(max_pages, int32_t(lp->pages.size()));
  }
  ASSERT_EQ(arrays.max_pages, max_pages);
  const BatchView view = arrays.View(8);
  PageGeometry g;
  g.page_size = ps;
  for (size_t b = 0; b < batch.size(); ++b) {
    auto lp = t.Pages(batch[b], 1);
    ASSERT_EQ(view.NumPages(g, int32_t(b)), int32_t(lp->pages.size()));
    for (int32_t p = 0; p < view.NumPages(g, int32_t(b)); ++p) {
      EXPECT_EQ(view.PageId(int32_t(b), p), lp->pages[p]);
    }
  }

  // Freeing everything returns every page.
  for (SeqId id : ids) ASSERT_TRUE(t.Free(id, nullptr).ok());
  EXPECT_EQ(alloc.num_used(), 0);
  EXPECT_EQ(t.num_sequences(), 0);
}

TEST(SequenceTable, ExhaustionLeavesTheSequenceUnchanged) {
  PageAllocator alloc(3);
  SequenceTable t(1, 4, &alloc);
  const SeqId s = t.Create();
  AppendOk(t, s, 0, 6);  // 2 pages
  auto plan = t.PlanAppend(s, 0, 11);  // needs ceil(17/4) - 2 = 3 more, 1 free
  EXPECT_EQ(plan.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(plan.status().message().find("host pool exhausted"), std::string::npos);
  EXPECT_EQ(*t.Length(s, 0), 6);
  EXPECT_EQ(alloc.num_free(), 1);
  AppendOk(t, s, 0, 6);  // exactly fits: 12 tokens, 3 pages
  EXPECT_EQ(alloc.num_free(), 0);
}

TEST(SequenceTable, AbortReturnsThePlansPages) {
  PageAllocator alloc(10);
  SequenceTable t(1, 4, &alloc);
  const SeqId s = t.Create();
  AppendOk(t, s, 0, 5);
  const auto before = *t.Pages(s, 0);
  auto plan = t.PlanAppend(s, 0, 9);
  ASSERT_TRUE(plan.ok());
  EXPECT_EQ(alloc.num_used(), 4);
  std::vector<int32_t> freed;
  t.AbortAppend(*plan, &freed);
  EXPECT_EQ(freed.size(), 2u);
  EXPECT_EQ(alloc.num_used(), 2);
  EXPECT_EQ(t.Pages(s, 0)->pages, before.pages);
  EXPECT_EQ(*t.Length(s, 0), 5);
}

TEST(SequenceTable, ForkSharesPagesAndCopiesThePartialPageOnWrite) {
  PageAllocator alloc(32);
  SequenceTable t(2, 4, &alloc);
  const SeqId parent = t.Create();
  AppendOk(t, parent, 0, 10);  // pages: full, full, partial (2 rows)
  AppendOk(t, parent, 1, 8);   // two full pages
  const auto p0 = *t.Pages(parent, 0);
  auto child = t.Fork(parent);
  ASSERT_TRUE(child.ok());
  EXPECT_EQ(t.Pages(*child, 0)->pages, p0.pages);
  for (int32_t p : p0.pages) EXPECT_EQ(alloc.RefCount(p), 2);
  EXPECT_EQ(alloc.num_used(), 5);  // nothing copied yet

  // Child appends into the shared partial page: copy-on-write of its 2 rows.
  auto plan = t.PlanAppend(*child, 0, 3);
  ASSERT_TRUE(plan.ok());
  ASSERT_TRUE(plan->has_cow());
  EXPECT_EQ(plan->cow_src, p0.pages[2]);
  EXPECT_EQ(plan->cow_rows, 2);
  EXPECT_NE(plan->cow_dst, p0.pages[2]);
  for (int32_t i = 0; i < 2; ++i) EXPECT_EQ(plan->page_id[i], plan->cow_dst);
  EXPECT_EQ(plan->slot[0], 2);
  EXPECT_EQ(plan->first_changed, 2);  // the shared partial page is replaced
  ASSERT_EQ(plan->changed_pages.size(), 2u);
  EXPECT_EQ(plan->changed_pages[0], plan->cow_dst);
  EXPECT_EQ(plan->page_id[2], plan->changed_pages[1]);  // 13th token opens page 3
  ASSERT_TRUE(t.CommitAppend(*plan, nullptr).ok());
  // The parent still sees its own pages and length; the source lost one sharer.
  EXPECT_EQ(t.Pages(parent, 0)->pages, p0.pages);
  EXPECT_EQ(*t.Length(parent, 0), 10);
  EXPECT_EQ(alloc.RefCount(p0.pages[2]), 1);
  EXPECT_EQ(alloc.RefCount(p0.pages[0]), 2);  // full pages stay shared
  const auto c0 = *t.Pages(*child, 0);
  EXPECT_EQ(c0.len, 13);
  EXPECT_EQ(c0.pages[0], p0.pages[0]);
  EXPECT_EQ(c0.pages[2], plan->cow_dst);

  // The parent now owns its partial page alone: it writes in place.
  auto pplan = t.PlanAppend(parent, 0, 1);
  ASSERT_TRUE(pplan.ok());
  EXPECT_FALSE(pplan->has_cow());
  EXPECT_EQ(pplan->page_id[0], p0.pages[2]);
  ASSERT_TRUE(t.CommitAppend(*pplan, nullptr).ok());

  // Layer 1 ends on a full page: appending opens a new page, no copy.
  auto l1 = t.PlanAppend(*child, 1, 1);
  ASSERT_TRUE(l1.ok());
  EXPECT_FALSE(l1->has_cow());
  t.AbortAppend(*l1, nullptr);

  // Freeing the parent keeps the child's shared pages alive.
  std::vector<int32_t> freed;
  ASSERT_TRUE(t.Free(parent, &freed).ok());
  EXPECT_EQ(freed, std::vector<int32_t>({p0.pages[2]}));
  for (int32_t p : c0.pages) EXPECT_EQ(alloc.RefCount(p), 1);
  ASSERT_TRUE(t.Free(*child, nullptr).ok());
  EXPECT_EQ(alloc.num_used(), 0);
}

TEST(SequenceTable, CommitDetectsAConcurrentChange) {
  PageAllocator alloc(16);
  SequenceTable t(1, 4, &alloc);
  const SeqId s = t.Create();
  AppendOk(t, s, 0, 2);
  auto a = t.PlanAppend(s, 0, 1);
  auto b = t.PlanAppend(s, 0, 1);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(t.CommitAppend(*a, nullptr).ok());
  EXPECT_EQ(t.CommitAppend(*b, nullptr).code(), absl::StatusCode::kAborted);
  t.AbortAppend(*b, nullptr);
  EXPECT_EQ(*t.Length(s, 0), 3);
  // A fork between plan and commit makes the in-place write unsafe: aborted too.
  auto c = t.PlanAppend(s, 0, 1);
  ASSERT_TRUE(c.ok());
  ASSERT_FALSE(c->has_cow());
  auto child = t.Fork(s);
  ASSERT_TRUE(child.ok());
  EXPECT_EQ(t.CommitAppend(*c, nullptr).code(), absl::StatusCode::kAborted);
  t.AbortAppend(*c, nullptr);
  EXPECT_EQ(*t.Length(s, 0), 3);
}

TEST(SequenceTable, ErrorsAreStatuses) {
  PageAllocator alloc(4);
  SequenceTable t(2, 4, &alloc);
  const SeqId s = t.Create();
  EXPECT_EQ(t.PlanAppend(s, 2, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.PlanAppend(s, -1, 1).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.PlanAppend(s, 0, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.PlanAppend(s + 100, 0, 1).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(t.Fork(s + 100).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(t.Free(s + 100, nullptr).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(t.Length(s, 5).status().code(), absl::StatusCode::kInvalidArgument);
  BatchArrays arrays;
  EXPECT_EQ(t.BuildBatch(0, {}, &arrays).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.BuildBatch(0, {s}, &arrays).code(), absl::StatusCode::kFailedPrecondition);
  AppendOk(t, s, 0, 3);
  EXPECT_TRUE(t.BuildBatch(0, {s}, &arrays).ok());
  EXPECT_EQ(t.BuildBatch(0, {s, s}, &arrays).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(t.BuildBatch(0, {s, s + 9}, &arrays).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(t.BuildBatch(3, {s}, &arrays).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace twl

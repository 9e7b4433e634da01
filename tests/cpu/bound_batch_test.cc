// Bound-batch bookkeeping (runtime/bound_batch.h) against the sequence table it mirrors: after
// random ragged appends, forks with copy-on-write and frees of other sequences, every batch's
// words equal the table's lengths and page ids exactly (-1 past each sequence's pages), and the
// max_tokens check refuses exactly the appends that would pass it.
#include "runtime/bound_batch.h"

#include <random>

#include <gtest/gtest.h>

namespace twl {
namespace {

constexpr int32_t kLayers = 3, kPage = 4;

// Plans, checks against the bound batches, commits and applies the words like the Runtime.
absl::Status Append(SequenceTable& t, BoundBatches& bb, SeqId s, int32_t layer, int32_t n) {
  absl::StatusOr<AppendPlan> plan = t.PlanAppend(s, layer, n);
  if (!plan.ok()) return plan.status();
  if (absl::Status c = bb.CheckAppend(*plan); !c.ok()) {
    t.AbortAppend(*plan, nullptr);
    return c;
  }
  std::vector<std::pair<BoundBatch*, TableWrite>> writes;
  bb.CollectWrites(*plan, &writes);
  if (absl::Status c = t.CommitAppend(*plan, nullptr); !c.ok()) return c;
  for (const auto& [b, w] : writes) BoundBatches::ApplyToMirror(b, layer, absl::MakeConstSpan(&w, 1));
  return absl::OkStatus();
}

void ExpectMirrors(const SequenceTable& t, const BoundBatch& b) {
  const int32_t n = b.num_seqs();
  for (int32_t l = 0; l < kLayers; ++l) {
    const int32_t* w = b.Layer(l);
    for (int32_t i = 0; i < n; ++i) {
      absl::StatusOr<LayerPages> lp = t.Pages(b.seqs[size_t(i)], l);
      ASSERT_TRUE(lp.ok());
      ASSERT_EQ(w[i], lp->len) << "layer " << l << " entry " << i;
      for (int32_t p = 0; p < b.max_pages; ++p) {
        const int32_t want = p < int32_t(lp->pages.size()) ? lp->pages[size_t(p)] : -1;
        ASSERT_EQ(w[n + int64_t(i) * b.max_pages + p], want)
            << "layer " << l << " entry " << i << " page " << p;
      }
    }
  }
}

TEST(BoundBatches, MirrorFollowsRandomAppendsForksAndCopyOnWrite) {
  PageAllocator alloc(4096);
  SequenceTable t(kLayers, kPage, &alloc);
  BoundBatches bb;
  std::mt19937 rng(7);
  std::vector<SeqId> seqs;
  for (int i = 0; i < 4; ++i) seqs.push_back(t.Create());
  ASSERT_TRUE(Append(t, bb, seqs[0], 0, 6).ok());  // partial page before binding
  const int32_t max_tokens = 203;                  // not a multiple of the page size
  absl::StatusOr<std::unique_ptr<BoundBatch>> b1 = BoundBatches::Build(t, seqs, max_tokens, 4096);
  ASSERT_TRUE(b1.ok()) << b1.status();
  EXPECT_EQ((*b1)->max_pages, 51);
  BoundBatch* p1 = b1->get();
  const int64_t id1 = bb.Add(std::move(*b1));
  // A second batch over some of them, in another order.
  const std::vector<SeqId> sub = {seqs[3], seqs[0]};
  absl::StatusOr<std::unique_ptr<BoundBatch>> b2 = BoundBatches::Build(t, sub, 120, 4096);
  ASSERT_TRUE(b2.ok());
  BoundBatch* p2 = b2->get();
  const int64_t id2 = bb.Add(std::move(*b2));
  EXPECT_NE(id1, id2);
  ExpectMirrors(t, *p1);
  ExpectMirrors(t, *p2);

  std::vector<SeqId> forks;
  for (int step = 0; step < 300; ++step) {
    const int32_t layer = int32_t(rng() % kLayers);
    const int kind = int(rng() % 10);
    if (kind == 0) {  // fork a bound sequence: the next append to either copies the page
      absl::StatusOr<SeqId> f = t.Fork(seqs[rng() % seqs.size()]);
      ASSERT_TRUE(f.ok());
      forks.push_back(*f);
    } else if (kind == 1 && !forks.empty()) {  // appends to / frees of unbound forks
      const size_t k = rng() % forks.size();
      if (rng() % 2) {
        ASSERT_TRUE(Append(t, bb, forks[k], layer, 1 + int32_t(rng() % 5)).ok());
      } else {
        ASSERT_TRUE(t.Free(forks[k], nullptr).ok());
        forks.erase(forks.begin() + long(k));
      }
    } else {
      const SeqId s = seqs[rng() % seqs.size()];
      const int32_t n = 1 + int32_t(rng() % 9);
      const int32_t len = *t.Length(s, layer);
      const int32_t limit = bb.BatchOf(s) == 0 ? 1 << 30 : (s == seqs[3] || s == seqs[0] ? 120 : max_tokens);
      const absl::Status st = Append(t, bb, s, layer, n);
      if (len + n > limit) {
        EXPECT_TRUE(absl::IsFailedPrecondition(st)) << st;
        EXPECT_EQ(*t.Length(s, layer), len);  // nothing appended
      } else {
        ASSERT_TRUE(st.ok()) << st;
      }
    }
    ExpectMirrors(t, *p1);
    ExpectMirrors(t, *p2);
  }
  EXPECT_EQ(bb.BatchOf(seqs[1]), id1);
  ASSERT_TRUE(bb.Remove(id1).ok());
  EXPECT_EQ(bb.BatchOf(seqs[1]), 0);
  EXPECT_EQ(bb.BatchOf(seqs[0]), id2);
  EXPECT_TRUE(absl::IsNotFound(bb.Remove(id1).status()));
  ExpectMirrors(t, *p2);
}

TEST(BoundBatches, BuildRefusesBadArguments) {
  PageAllocator alloc(64);
  SequenceTable t(kLayers, kPage, &alloc);
  const SeqId a = t.Create(), b = t.Create();
  auto plan = t.PlanAppend(a, 2, 10);
  ASSERT_TRUE(plan.ok());
  ASSERT_TRUE(t.CommitAppend(*plan, nullptr).ok());
  EXPECT_TRUE(absl::IsInvalidArgument(BoundBatches::Build(t, {}, 10, 1 << 20).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(BoundBatches::Build(t, {a, b, a}, 10, 1 << 20).status()));
  EXPECT_TRUE(absl::IsNotFound(BoundBatches::Build(t, {a, 999}, 10, 1 << 20).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(BoundBatches::Build(t, {a}, 0, 1 << 20).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(BoundBatches::Build(t, {a}, 9, 1 << 20).status()));  // has 10
  // Rows longer than the pool, and tables past 2^30 words with a pool that large.
  EXPECT_TRUE(absl::IsInvalidArgument(BoundBatches::Build(t, {a, b}, 2147483647, 1 << 20).status()));
  EXPECT_TRUE(
      absl::IsInvalidArgument(BoundBatches::Build(t, {a, b}, 1 << 30, int64_t(1) << 40).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(BoundBatches::Build(t, {a, b}, 4 * 65, 64).status()));
  EXPECT_TRUE(BoundBatches::Build(t, {a, b}, 4 * 64, 64).ok());  // the whole pool: fine
  EXPECT_TRUE(BoundBatches::Build(t, {a, b}, 10, 1 << 20).ok());
}

}  // namespace
}  // namespace twl

// The GPU row cache's fetch stage (pipeline/fetch/row_cache/RowCacheFetch: plan kernels,
// row copy, invalidation) against its host specification (cache/row_cache_policy.h):
//  * roomy cache (no evictions): every group's counts and the resident row set equal the
//    host policy's exactly, over steps of two groups with drifting kept lists;
//  * small cache (evictions, overflow read in place): each group's counts equal what the
//    policy implies from the device state just before the plan (hits, claims, evictable
//    slots after the hits are stamped), the previous group's rows survive the next group's
//    plan, maps stay inverse with no claim left;
//  * after every plan each resident row's slot holds exactly the pool's K row and V row;
//  * invalidating pages frees their rows' slots;
//  * the plan's miss report (a disk tier: pipeline/fetch/disk/miss_first_fetch.cuh) lists
//    exactly the blocks of the rows absent before the plan, each once per step, and a mark
//    abandoned (the store failed to make them resident) leaves the maps as before it.
//  * the plan's launches are the same at every call (step stamp and running sums on the
//    device): a bound stage's plan captured once in a CUDA graph replays like the policy,
//    with the stage's eager plans in between sharing the cache and the step stamp.
// Skips without a GPU.
#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <set>
#include <vector>

#include "cache/host_arena.h"
#include "cache/row_cache_policy.h"
#include "gpu_test_util.h"
#include "row_cache_check.h"
#include "pipeline/fetch/disk/miss_first_fetch.cuh"
#include "pipeline/fetch/row_cache/row_cache_fetch.cuh"

namespace twl {
namespace {

using testing::Download;
using testing::Upload;

struct RowFixture {
  PageGeometry g;
  int32_t B = 4, max_pages = 48;
  int64_t num_blocks = 0;
  std::unique_ptr<HostArena> pool;
  std::vector<int32_t> page_table, seq_len;
  gpu::DeviceBuffer d_page_table, d_seq_len, d_tokens, d_count;
  std::mt19937_64 rng;
  std::vector<std::vector<int32_t>> kept;  // [unit] sorted positions
  int32_t max_kept = 0;

  explicit RowFixture(uint64_t seed) : rng(seed) {
    g.page_size = 16;
    g.head_dim = 128;
    g.num_kv_heads = 2;
    const int64_t num_pages = int64_t(B) * max_pages + 7;
    num_blocks = num_pages * g.num_kv_heads;
    pool = std::move(*HostArena::Create(HostMemKind::kPinnedMapped, g.FpBlockBytes(),
                                        num_blocks, 16));
    auto* bytes = static_cast<uint8_t*>(pool->base());
    for (int64_t i = 0; i < num_blocks * g.FpBlockBytes(); ++i) bytes[i] = uint8_t(rng());
    std::vector<int32_t> ids(static_cast<size_t>(num_pages));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng);
    page_table.assign(ids.begin(), ids.begin() + int64_t(B) * max_pages);
    seq_len.assign(static_cast<size_t>(B), max_pages * g.page_size);
    seq_len[1] -= 5;  // a partial last page
    d_page_table = Upload(page_table);
    d_seq_len = Upload(seq_len);
    max_kept = max_pages * g.page_size;
    kept.assign(size_t(B) * g.num_kv_heads, {});
  }
  FetchSource Source() const {
    return FetchSource{pool->base(), pool->device_base(), g.FpBlockBytes(), num_blocks};
  }
  // New kept lists: each unit keeps `share` of its positions; `keep` of the old ones stay.
  void Draw(double share, double keep) {
    for (size_t u = 0; u < kept.size(); ++u) {
      const int32_t len = seq_len[u / size_t(g.num_kv_heads)];
      std::set<int32_t> next;
      for (int32_t p : kept[u]) {
        if (std::uniform_real_distribution<double>(0, 1)(rng) < keep) next.insert(p);
      }
      const int32_t want = std::max<int32_t>(1, int32_t(share * len));
      while (int32_t(next.size()) < want) next.insert(int32_t(rng() % uint64_t(len)));
      kept[u].assign(next.begin(), next.end());
    }
    std::vector<int32_t> tokens(kept.size() * size_t(max_kept), 0), count(kept.size());
    for (size_t u = 0; u < kept.size(); ++u) {
      count[u] = int32_t(kept[u].size());
      std::copy(kept[u].begin(), kept[u].end(), tokens.begin() + int64_t(u) * max_kept);
    }
    d_tokens = Upload(tokens);
    d_count = Upload(count);
  }
  int64_t RowOf(size_t unit, int32_t pos) const {
    const int32_t s = int32_t(unit) / g.num_kv_heads, h = int32_t(unit) % g.num_kv_heads;
    const int32_t page = page_table[size_t(s) * max_pages + pos / g.page_size];
    return g.BlockId(page, h) * g.page_size + pos % g.page_size;
  }
  // Group gi of two: sequences [0, B/2) or [B/2, B).
  SeqGroup Group(int32_t gi) const {
    SeqGroup grp;
    grp.first_seq = gi * B / 2;
    grp.num_seqs = B / 2;
    return grp;
  }
  BatchView Batch(const SeqGroup& grp) const {
    BatchView b;
    b.num_seqs = grp.num_seqs;
    b.num_q_heads = 2 * g.num_kv_heads;
    b.seq_len = d_seq_len.as<int32_t>() + grp.first_seq;
    b.page_table = d_page_table.as<int32_t>() + int64_t(grp.first_seq) * max_pages;
    b.max_pages = max_pages;
    return b;
  }
  KeptView Kept(const SeqGroup& grp) const {
    const int64_t u0 = int64_t(grp.first_seq) * g.num_kv_heads;
    return KeptView{d_tokens.as<int32_t>() + u0 * max_kept, d_count.as<int32_t>() + u0, max_kept};
  }
  std::vector<std::vector<int64_t>> Rows(const SeqGroup& grp) const {
    std::vector<std::vector<int64_t>> rows;
    const size_t u0 = size_t(grp.first_seq) * g.num_kv_heads;
    for (size_t u = u0; u < u0 + size_t(grp.num_seqs) * g.num_kv_heads; ++u) {
      rows.emplace_back();
      for (int32_t p : kept[u]) rows.back().push_back(RowOf(u, p));
    }
    return rows;
  }
};

using DeviceState = testing::RowCacheSnapshot;

DeviceState ReadState(const pipeline_cuda::RowCacheFetch& f, const PageGeometry& g) {
  return testing::ReadRowCache(f.state(), g.head_dim);
}

DeviceRowCounters ReadCounters(const pipeline_cuda::RowCacheFetch& f, int32_t group) {
  DeviceRowCounters c;
  EXPECT_TRUE(gpu::DeviceSync().ok());
  EXPECT_TRUE(gpu::CopyToHost(&c, static_cast<const DeviceRowCounters*>(f.counters()) + group,
                              sizeof(c)).ok());
  return c;
}

// Maps inverse, no claim left, every resident row's bytes equal to the pool's.
void ExpectConsistent(const DeviceState& s, const RowFixture& fx) {
  testing::ExpectRowCacheConsistent(s, fx.g, static_cast<const fp16_t*>(fx.pool->base()));
}

uint64_t Seed() {
  const int fixed = ::testing::UnitTest::GetInstance()->random_seed();
  return fixed > 0 ? uint64_t(fixed) : 1 + std::random_device{}() % 99999u;
}

// `f` over every row of the fixture (window 3), on a new stream (returned; null on failure).
cudaStream_t InitRoomy(const RowFixture& fx, pipeline_cuda::RowCacheFetch* f) {
  const int32_t slots = int32_t(fx.num_blocks * fx.g.page_size);
  EXPECT_TRUE(f->Init(fx.g, fx.num_blocks, slots, fx.Source(), 2).ok());
  f->SetWindow(3);
  auto stream = gpu::StreamCreate();
  if (!stream.ok()) return nullptr;
  const auto cs = static_cast<cudaStream_t>(*stream);
  f->AttachStream(cs);
  EXPECT_TRUE(f->GrowStep(int64_t(fx.B) * fx.g.num_kv_heads, 0).ok());
  return cs;
}

// A group's counters against the host policy's plan.
void ExpectPlan(const DeviceRowCounters& got, const RowGroupPlan& want) {
  EXPECT_EQ(got.error, 0);
  EXPECT_EQ(got.needed, want.counters.needed);
  EXPECT_EQ(got.hits, want.counters.hits);
  EXPECT_EQ(got.victims, want.counters.fetched);
  EXPECT_EQ(got.direct, want.counters.direct);
}

TEST(RowCacheGpuTest, RoomyCacheMatchesHostPolicyExactly) {
  TWL_SKIP_WITHOUT_GPU();
  const uint64_t seed = Seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  RowFixture fx(seed);
  const int32_t slots = int32_t(fx.num_blocks * fx.g.page_size);  // every row fits
  pipeline_cuda::RowCacheFetch f;
  const cudaStream_t cs = InitRoomy(fx, &f);
  ASSERT_NE(cs, nullptr);
  RowCachePolicy host =
      *RowCachePolicy::Create(fx.num_blocks * fx.g.page_size, slots, /*window=*/3);
  for (int32_t step = 0; step < 5; ++step) {
    fx.Draw(0.15, step == 0 ? 0.0 : 0.8);
    for (int32_t gi = 0; gi < 2; ++gi) {
      const SeqGroup grp = fx.Group(gi);
      TWL_ASSERT_OK(f.Fetch(gi, grp, fx.g, fx.Batch(grp), fx.Kept(grp), cs, nullptr));
      const RowGroupPlan want = *host.PlanGroup(fx.Rows(grp), gi == 0);
      const DeviceRowCounters got = ReadCounters(f, gi);
      SCOPED_TRACE(::testing::Message() << "step " << step << " group " << gi);
      ExpectPlan(got, want);
      EXPECT_EQ(got.evictions, 0);
      const int32_t units = grp.num_seqs * fx.g.num_kv_heads;
      const int64_t u0 = int64_t(grp.first_seq) * fx.g.num_kv_heads;
      std::vector<int32_t> uh(static_cast<size_t>(units)), ur(static_cast<size_t>(units));
      TWL_ASSERT_OK(gpu::CopyToHost(uh.data(), f.unit_hits() + u0, size_t(units) * 4));
      TWL_ASSERT_OK(gpu::CopyToHost(ur.data(), f.unit_blocks() + u0, size_t(units) * 4));
      EXPECT_EQ(uh, want.unit_hits);
      for (int32_t u = 0; u < units; ++u) {
        EXPECT_EQ(ur[size_t(u)], int32_t(fx.kept[size_t(u0 + u)].size()));
      }
      const DeviceState s = ReadState(f, fx.g);
      ExpectConsistent(s, fx);
      for (int64_t r = 0; r < int64_t(s.slot_of_row.size()); ++r) {
        ASSERT_EQ(s.slot_of_row[size_t(r)] >= 0, host.SlotOf(r) >= 0) << "row " << r;
      }
    }
  }
  gpu::StreamDestroy(cs);
}

TEST(RowCacheGpuTest, SmallCacheEvictsOnlyWhatThePolicyAllows) {
  TWL_SKIP_WITHOUT_GPU();
  const uint64_t seed = Seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  RowFixture fx(seed);
  const int32_t slots = 700;  // about one group's rows: evictions and overflow
  const uint32_t window = 1;
  pipeline_cuda::RowCacheFetch f;
  TWL_ASSERT_OK(f.Init(fx.g, fx.num_blocks, slots, fx.Source(), 2));
  f.SetWindow(window);
  auto stream = gpu::StreamCreate();
  ASSERT_TRUE(stream.ok());
  f.AttachStream(static_cast<cudaStream_t>(*stream));
  TWL_ASSERT_OK(f.GrowStep(int64_t(fx.B) * fx.g.num_kv_heads, 0));
  uint32_t step = 0;
  int64_t total_evictions = 0, total_direct = 0;
  for (int32_t it = 0; it < 8; ++it) {
    fx.Draw(0.12, it == 0 ? 0.0 : 0.7);
    std::set<int64_t> prev_group_rows;
    for (int32_t gi = 0; gi < 2; ++gi) {
      const SeqGroup grp = fx.Group(gi);
      if (gi == 0) ++step;
      // What the policy implies from the state before the plan.
      const DeviceState before = ReadState(f, fx.g);
      const std::vector<std::vector<int64_t>> rows = fx.Rows(grp);
      int64_t needed = 0, hits = 0;
      std::set<int64_t> claims, stamped;
      for (const auto& unit : rows) {
        for (int64_t r : unit) {
          ++needed;
          const int32_t sl = before.slot_of_row[size_t(r)];
          if (sl >= 0) {
            ++hits;
            stamped.insert(sl);
          } else if (!claims.insert(r).second) {
            ++hits;  // claimed by another unit
          }
        }
      }
      int64_t evictable = 0;
      for (int32_t sl = 0; sl < slots; ++sl) {
        const uint32_t lu = stamped.count(sl) ? step : before.last_use[size_t(sl)];
        evictable += RowSlotEvictable(before.row_of_slot[size_t(sl)], lu, step, window);
      }
      TWL_ASSERT_OK(f.Fetch(gi, grp, fx.g, fx.Batch(grp), fx.Kept(grp),
                            static_cast<cudaStream_t>(*stream), nullptr));
      const DeviceRowCounters got = ReadCounters(f, gi);
      SCOPED_TRACE(::testing::Message() << "iteration " << it << " group " << gi);
      EXPECT_EQ(got.error, 0);
      EXPECT_EQ(got.needed, needed);
      EXPECT_EQ(got.hits, hits);
      const int64_t fetched = std::min<int64_t>(int64_t(claims.size()), evictable);
      EXPECT_EQ(got.victims, fetched);
      EXPECT_EQ(got.direct, int64_t(claims.size()) - fetched);
      EXPECT_EQ(got.hits + got.victims + got.direct, got.needed);
      total_evictions += got.evictions;
      total_direct += got.direct;
      const DeviceState after = ReadState(f, fx.g);
      ExpectConsistent(after, fx);
      // The previous group of the step keeps every row it had (its attention may run).
      for (int64_t r : prev_group_rows) ASSERT_GE(after.slot_of_row[size_t(r)], 0) << r;
      prev_group_rows.clear();
      for (const auto& unit : rows) {
        for (int64_t r : unit) {
          if (after.slot_of_row[size_t(r)] >= 0) prev_group_rows.insert(r);
        }
      }
    }
  }
  EXPECT_GT(total_evictions, 0) << "the small cache never evicted";
  EXPECT_GT(total_direct, 0) << "the small cache never overflowed";
  gpu::StreamDestroy(*stream);
}

TEST(RowCacheGpuTest, InvalidatedPagesLeaveTheCache) {
  TWL_SKIP_WITHOUT_GPU();
  const uint64_t seed = Seed();
  RowFixture fx(seed);
  const int32_t slots = int32_t(fx.num_blocks * fx.g.page_size);
  pipeline_cuda::RowCacheFetch f;
  TWL_ASSERT_OK(f.Init(fx.g, fx.num_blocks, slots, fx.Source(), 2));
  auto stream = gpu::StreamCreate();
  ASSERT_TRUE(stream.ok());
  const auto cs = static_cast<cudaStream_t>(*stream);
  f.AttachStream(cs);
  TWL_ASSERT_OK(f.GrowStep(int64_t(fx.B) * fx.g.num_kv_heads, 0));
  fx.Draw(0.3, 0.0);
  const SeqGroup grp = fx.Group(0);
  TWL_ASSERT_OK(f.Fetch(0, grp, fx.g, fx.Batch(grp), fx.Kept(grp), cs, nullptr));
  // Drop the first 10 pages of sequence 0 and, by token, row 3 of its page 20.
  std::vector<int32_t> pages(fx.page_table.begin(), fx.page_table.begin() + 10);
  gpu::DeviceBuffer d_pages = Upload(pages);
  TWL_ASSERT_OK(f.InvalidatePages(d_pages.as<int32_t>(), 10, cs));
  const std::vector<int32_t> tok_page = {fx.page_table[20]}, tok_row = {3};
  gpu::DeviceBuffer d_tp = Upload(tok_page), d_tr = Upload(tok_row);
  TWL_ASSERT_OK(f.MirrorTokens(nullptr, d_tp.as<int32_t>(), d_tr.as<int32_t>(), 1, cs));
  const DeviceState s = ReadState(f, fx.g);
  ExpectConsistent(s, fx);
  int64_t resident_left = 0;
  for (size_t u = 0; u < size_t(fx.g.num_kv_heads); ++u) {
    for (int32_t p : fx.kept[u]) {
      const int64_t r = fx.RowOf(u, p);
      const bool dropped = p / fx.g.page_size < 10 || (p / fx.g.page_size == 20 && p % 16 == 3);
      if (dropped) {
        EXPECT_EQ(s.slot_of_row[size_t(r)], kRowAbsent) << "pos " << p;
      } else {
        resident_left += s.slot_of_row[size_t(r)] >= 0;
      }
    }
  }
  EXPECT_GT(resident_left, 0);
  // Freed slots take new rows at once: the same group again fetches exactly the dropped rows.
  TWL_ASSERT_OK(f.Fetch(0, grp, fx.g, fx.Batch(grp), fx.Kept(grp), cs, nullptr));
  const DeviceRowCounters c = ReadCounters(f, 0);
  EXPECT_EQ(c.direct, 0);
  EXPECT_EQ(c.hits + c.victims, c.needed);
  EXPECT_GT(c.victims, 0);
  ExpectConsistent(ReadState(f, fx.g), fx);
  gpu::StreamDestroy(*stream);
}

// The blocks of the rows absent before the plan (the claims), minus those already listed.
std::set<int32_t> MissedBlocks(const DeviceState& before,
                               const std::vector<std::vector<int64_t>>& rows, int32_t P,
                               const std::set<int32_t>& listed, int64_t* claimed_rows) {
  std::set<int32_t> want;
  std::set<int64_t> claims;
  for (const auto& unit : rows) {
    for (int64_t r : unit) {
      if (before.slot_of_row[size_t(r)] >= 0 || !claims.insert(r).second) continue;
      if (!listed.count(int32_t(r / P))) want.insert(int32_t(r / P));
    }
  }
  *claimed_rows = int64_t(claims.size());
  return want;
}

TEST(RowCacheGpuTest, MissReportListsTheBlocksOfMissedRowsOncePerStep) {
  TWL_SKIP_WITHOUT_GPU();
  const uint64_t seed = Seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  RowFixture fx(seed);
  const int32_t slots = 700;  // evictions and overflow (claims past the list) too
  pipeline_cuda::RowCacheFetch f;
  TWL_ASSERT_OK(f.Init(fx.g, fx.num_blocks, slots, fx.Source(), 2));
  f.SetWindow(1);
  auto stream = gpu::StreamCreate();
  ASSERT_TRUE(stream.ok());
  const auto cs = static_cast<cudaStream_t>(*stream);
  f.AttachStream(cs);
  TWL_ASSERT_OK(f.GrowStep(int64_t(fx.B) * fx.g.num_kv_heads, 0));
  pipeline_cuda::MissReportState rep;
  TWL_ASSERT_OK(rep.Init(fx.num_blocks, int32_t(fx.num_blocks), 2));
  cudaEvent_t pruned = nullptr;
  ASSERT_EQ(cudaEventCreate(&pruned), cudaSuccess);
  int64_t reported_total = 0;
  for (int32_t it = 0; it < 6; ++it) {
    fx.Draw(0.12, it == 0 ? 0.0 : 0.8);
    TWL_ASSERT_OK(rep.NewStep());
    std::set<int32_t> listed;  // reported earlier in this step
    for (int32_t gi = 0; gi < 2; ++gi) {
      SCOPED_TRACE(::testing::Message() << "iteration " << it << " group " << gi);
      const SeqGroup grp = fx.Group(gi);
      const DeviceState before = ReadState(f, fx.g);
      int64_t claimed = 0;
      const std::set<int32_t> want =
          MissedBlocks(before, fx.Rows(grp), fx.g.page_size, listed, &claimed);
      rep.ClearCount();
      ASSERT_EQ(cudaEventRecord(pruned, cs), cudaSuccess);
      TWL_ASSERT_OK(f.FetchMark(gi, grp, fx.g, fx.Batch(grp), fx.Kept(grp), pruned, nullptr,
                                rep.Report()));
      ASSERT_EQ(cudaStreamSynchronize(cs), cudaSuccess);
      ASSERT_LE(rep.count(), rep.capacity());
      std::set<int32_t> got;
      int64_t rows = 0;
      for (int32_t i = 0; i < rep.count(); ++i) {
        EXPECT_TRUE(got.insert(rep.blocks()[i]).second) << "block listed twice";
        EXPECT_GE(rep.rows()[i], 1);
        rows += rep.rows()[i];
      }
      EXPECT_EQ(got, want);
      EXPECT_LE(rows, claimed);
      reported_total += rep.count();
      listed.insert(got.begin(), got.end());
      TWL_ASSERT_OK(f.FetchComplete(gi, nullptr));
      // The halves set no ready flag (the stage may wait on flags): the wait is the
      // complete's event, and the mark used (group 0: bumped) the device step stamp.
      TWL_ASSERT_OK(f.WaitFetched(gi, cs));
      ASSERT_EQ(cudaStreamSynchronize(cs), cudaSuccess);
      EXPECT_EQ(ReadCounters(f, gi).step, it + 1);
      ExpectConsistent(ReadState(f, fx.g), fx);
    }
  }
  EXPECT_GT(reported_total, 0);
  cudaEventDestroy(pruned);
  gpu::StreamDestroy(*stream);
}

TEST(RowCacheGpuTest, AnAbandonedMarkLeavesTheMapsAsBefore) {
  TWL_SKIP_WITHOUT_GPU();
  const uint64_t seed = Seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  RowFixture fx(seed);
  pipeline_cuda::RowCacheFetch f;
  TWL_ASSERT_OK(f.Init(fx.g, fx.num_blocks, 900, fx.Source(), 2));
  auto stream = gpu::StreamCreate();
  ASSERT_TRUE(stream.ok());
  const auto cs = static_cast<cudaStream_t>(*stream);
  f.AttachStream(cs);
  TWL_ASSERT_OK(f.GrowStep(int64_t(fx.B) * fx.g.num_kv_heads, 0));
  pipeline_cuda::MissReportState rep;
  TWL_ASSERT_OK(rep.Init(fx.num_blocks, 3, 2));  // too small: the report says so
  cudaEvent_t pruned = nullptr;
  ASSERT_EQ(cudaEventCreate(&pruned), cudaSuccess);
  const SeqGroup grp = fx.Group(0);
  fx.Draw(0.1, 0.0);
  TWL_ASSERT_OK(f.Fetch(0, grp, fx.g, fx.Batch(grp), fx.Kept(grp), cs, nullptr));
  fx.Draw(0.1, 0.5);
  const DeviceState before = ReadState(f, fx.g);
  TWL_ASSERT_OK(rep.NewStep());
  rep.ClearCount();
  ASSERT_EQ(cudaEventRecord(pruned, cs), cudaSuccess);
  TWL_ASSERT_OK(f.FetchMark(0, grp, fx.g, fx.Batch(grp), fx.Kept(grp), pruned, nullptr,
                            rep.Report()));
  ASSERT_EQ(cudaStreamSynchronize(cs), cudaSuccess);
  int64_t claimed = 0;
  const std::set<int32_t> want = MissedBlocks(before, fx.Rows(grp), fx.g.page_size, {}, &claimed);
  ASSERT_GT(want.size(), 3u);
  EXPECT_EQ(rep.count(), int32_t(want.size()));  // counted past the capacity
  TWL_ASSERT_OK(f.FetchAbandon(0));
  const DeviceState after = ReadState(f, fx.g);
  EXPECT_EQ(after.slot_of_row, before.slot_of_row);
  EXPECT_EQ(after.row_of_slot, before.row_of_slot);
  EXPECT_EQ(after.free_stack, before.free_stack);
  ExpectConsistent(after, fx);
  // The next plan of the same lists fetches every missed row again.
  TWL_ASSERT_OK(f.Fetch(0, grp, fx.g, fx.Batch(grp), fx.Kept(grp), cs, nullptr));
  const DeviceRowCounters c = ReadCounters(f, 0);
  EXPECT_EQ(c.victims + c.direct, claimed);
  // The abandon left the running sums at 0 and the stamp bumped by its mark (steps 1, 2, 3).
  EXPECT_EQ(c.error, 0);
  EXPECT_EQ(c.hits + c.victims + c.direct, c.needed);
  EXPECT_EQ(c.step, 3);
  ExpectConsistent(ReadState(f, fx.g), fx);
  cudaEventDestroy(pruned);
  gpu::StreamDestroy(*stream);
}

TEST(RowCacheGpuTest, CapturedBoundPlanReplaysLikeThePolicy) {
  TWL_SKIP_WITHOUT_GPU();
  const uint64_t seed = Seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  RowFixture fx(seed);
  const int32_t slots = int32_t(fx.num_blocks * fx.g.page_size);  // every row fits
  pipeline_cuda::RowCacheFetch f;
  const cudaStream_t cs = InitRoomy(fx, &f);
  ASSERT_NE(cs, nullptr);
  const int64_t units = int64_t(fx.B) * fx.g.num_kv_heads;
  absl::StatusOr<std::unique_ptr<pipeline_cuda::CudaFetch>> made = f.MakeBoundFetch(units);
  TWL_ASSERT_OK(made.status());
  auto* bound = dynamic_cast<pipeline_cuda::BoundRowFetch*>(made->get());
  ASSERT_NE(bound, nullptr);
  RowCachePolicy host =
      *RowCachePolicy::Create(fx.num_blocks * fx.g.page_size, slots, /*window=*/3);
  // Kept lists at fixed addresses (the graph's), refilled from each draw.
  const size_t tok_bytes = size_t(units) * size_t(fx.max_kept) * 4;
  gpu::DeviceBuffer tokens, count;
  TWL_ASSERT_OK(tokens.Reserve(tok_bytes));
  TWL_ASSERT_OK(count.Reserve(size_t(units) * 4));
  auto load = [&] {
    ASSERT_EQ(cudaMemcpy(tokens.get(), fx.d_tokens.get(), tok_bytes, cudaMemcpyDeviceToDevice),
              cudaSuccess);
    ASSERT_EQ(cudaMemcpy(count.get(), fx.d_count.get(), size_t(units) * 4,
                         cudaMemcpyDeviceToDevice),
              cudaSuccess);
  };
  auto kept = [&](const SeqGroup& grp) {
    const int64_t u0 = int64_t(grp.first_seq) * fx.g.num_kv_heads;
    return KeptView{tokens.as<int32_t>() + u0 * fx.max_kept, count.as<int32_t>() + u0,
                    fx.max_kept};
  };
  fx.Draw(0.15, 0.0);
  load();
  cudaGraph_t graph = nullptr;
  cudaGraphExec_t exec = nullptr;
  ASSERT_EQ(cudaStreamBeginCapture(cs, cudaStreamCaptureModeThreadLocal), cudaSuccess);
  for (int32_t gi = 0; gi < 2; ++gi) {
    const SeqGroup grp = fx.Group(gi);
    TWL_ASSERT_OK(bound->Fetch(gi, grp, fx.g, fx.Batch(grp), kept(grp), cs, nullptr));
    TWL_ASSERT_OK(bound->WaitFetched(gi, cs));
  }
  ASSERT_EQ(cudaStreamEndCapture(cs, &graph), cudaSuccess);
  ASSERT_EQ(cudaGraphInstantiate(&exec, graph, 0ULL), cudaSuccess);
  for (int32_t step = 0; step < 8; ++step) {
    if (step > 0) {
      fx.Draw(0.15, 0.8);
      load();
    }
    // Odd steps: the stage's own eager plans over the same lists and cache.
    const bool replay = step % 2 == 0;
    if (replay) {
      ASSERT_EQ(cudaGraphLaunch(exec, cs), cudaSuccess);
    } else {
      for (int32_t gi = 0; gi < 2; ++gi) {
        const SeqGroup grp = fx.Group(gi);
        TWL_ASSERT_OK(f.Fetch(gi, grp, fx.g, fx.Batch(grp), kept(grp), cs, nullptr));
        TWL_ASSERT_OK(f.WaitFetched(gi, cs));
      }
    }
    ASSERT_EQ(cudaStreamSynchronize(cs), cudaSuccess);
    for (int32_t gi = 0; gi < 2; ++gi) {
      const SeqGroup grp = fx.Group(gi);
      SCOPED_TRACE(::testing::Message() << "step " << step << (replay ? " replay" : " eager")
                                        << " group " << gi);
      const RowGroupPlan want = *host.PlanGroup(fx.Rows(grp), gi == 0);
      DeviceRowCounters got;
      const DeviceRowCounters* rec =
          replay ? bound->buffers().counters() + gi
                 : static_cast<const DeviceRowCounters*>(f.counters()) + gi;
      TWL_ASSERT_OK(gpu::CopyToHost(&got, rec, sizeof(got)));
      EXPECT_EQ(got.step, step + 1) << "the plan's step stamp";
      ExpectPlan(got, want);
      const int64_t u0 = int64_t(grp.first_seq) * fx.g.num_kv_heads;
      const int32_t n = grp.num_seqs * fx.g.num_kv_heads;
      std::vector<int32_t> uh(static_cast<size_t>(n));
      const int32_t* hits = replay ? bound->buffers().unit_hits() : f.unit_hits();
      TWL_ASSERT_OK(gpu::CopyToHost(uh.data(), hits + u0, size_t(n) * 4));
      EXPECT_EQ(uh, want.unit_hits);
    }
    const DeviceState s = ReadState(f, fx.g);
    ExpectConsistent(s, fx);
    for (int64_t r = 0; r < int64_t(s.slot_of_row.size()); ++r) {
      ASSERT_EQ(s.slot_of_row[size_t(r)] >= 0, host.SlotOf(r) >= 0) << "row " << r;
    }
  }
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  gpu::StreamDestroy(cs);
}

}  // namespace
}  // namespace twl

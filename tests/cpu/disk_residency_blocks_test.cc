// runtime/disk_residency at block granularity and with victims by value (the GPU offload
// backend's pool over the NVMe tier): units of one (page, KV head) block so that only the
// blocks a step keeps are resident and read; a kept working set that fits the pool is read
// once, not every step (disk bytes per step); a cyclic working set slightly larger than the
// pool keeps most of itself resident (LRU re-reads all of it every cycle); calls that need no
// slot never wait for a read-ahead in flight; the kept lists -> distinct blocks mapping of
// the GPU backend (pipeline/fetch/disk/kept_blocks.h).
#include <algorithm>
#include <cstring>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "core/half.h"
#include "pipeline/fetch/disk/kept_blocks.h"
#include "runtime/disk_residency.h"
#include "runtime/geometry.h"
#include "runtime/runtime.h"
#include "support/disk_fixture.h"
#include "support/temp_dir.h"

namespace twl {
namespace {

using testing::TempDir;

// 4 KV heads, d = 8, page 4: 128-byte blocks, 512-byte pages.
RuntimeConfig SmallConfig(const std::string& dir, BackendKind backend, int64_t disk_bytes) {
  return testing::SmallDiskConfig(dir, 4, backend, disk_bytes);
}

using Fixture = testing::DiskFixture;

// units of heads_per_unit blocks (1: blocks, 0: pages), `slots` unit slots.
Fixture Make(const std::string& dir, int32_t units, int32_t slots, int32_t heads_per_unit) {
  Fixture f;
  const BackendKind backend = heads_per_unit == 1 ? BackendKind::kGpuOffload : BackendKind::kCpu;
  RuntimeConfig config = SmallConfig(dir, backend, 0);
  f.g = GeometryOf(config);
  const int64_t unit_bytes =
      int64_t(heads_per_unit == 1 ? 1 : f.g.num_kv_heads) * f.g.FpBlockBytes();
  config.disk_bytes = int64_t(units) * std::max<int64_t>(unit_bytes, 512);
  auto tier = CreatePageDiskTier(config);
  EXPECT_TRUE(tier.ok()) << tier.status();
  if (!tier.ok()) return f;
  EXPECT_EQ((*tier)->record_bytes(), unit_bytes);
  auto res = DiskResidency::Create(f.g, units, slots, std::move(*tier), HostMemKind::kAligned,
                                   heads_per_unit);
  EXPECT_TRUE(res.ok()) << res.status();
  if (res.ok()) f.d = std::move(*res);
  return f;
}

fp16_t Value(int64_t block, int64_t i) {
  return FloatToHalf(float((block * 37 + i) % 1000) * 0.01f);
}

// Writes every unit (distinct data per block) through Reserve + MarkDirty.
void WriteAll(Fixture& f) {
  const int32_t hpu = f.d->heads_per_unit();
  for (int32_t u = 0; u < f.d->num_pages(); ++u) {
    ASSERT_TRUE(f.d->Reserve({u}, nullptr).ok()) << u;
    ASSERT_TRUE(f.d->MarkDirty({u}).ok());
    for (int32_t j = 0; j < hpu; ++j) {
      const int64_t block = int64_t(u) * hpu + j;
      fp16_t* b = f.d->HostBlock(block);
      ASSERT_NE(b, nullptr);
      for (int64_t i = 0; i < f.g.FpBlockElems(); ++i) b[i] = Value(block, i);
    }
  }
}

void ExpectBlocksIntact(const Fixture& f) {
  const PageGeometry& g = f.g;
  const int32_t pages = f.d->num_pages() * f.d->heads_per_unit() / g.num_kv_heads;
  const int64_t row = int64_t(g.num_kv_heads) * g.head_dim;
  std::vector<fp16_t> k(size_t(g.page_size * row)), v(k.size());
  for (int32_t p = 0; p < pages; ++p) {
    ASSERT_TRUE(f.d->ReadRows(p, g.page_size, k.data(), v.data()).ok()) << p;
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      std::vector<fp16_t> want(size_t(g.FpBlockElems()));
      for (int64_t i = 0; i < g.FpBlockElems(); ++i) want[size_t(i)] = Value(g.BlockId(p, h), i);
      const FpKvView local{want.data(), nullptr};  // one block: block index 0
      for (int32_t r = 0; r < g.page_size; ++r) {
        ASSERT_EQ(std::memcmp(k.data() + r * row + h * g.head_dim, local.K(g, 0, r),
                              sizeof(fp16_t) * g.head_dim), 0) << "page " << p << " head " << h;
        ASSERT_EQ(std::memcmp(v.data() + r * row + h * g.head_dim, local.V(g, 0, r),
                              sizeof(fp16_t) * g.head_dim), 0) << "page " << p << " head " << h;
      }
    }
  }
}

// Kept blocks of one step: each KV head keeps different pages (head h: pages p with
// (p + h) % 4 == 0, of 32 pages): 8 blocks per head, 32 blocks, but 32 distinct pages.
std::vector<int32_t> KeptBlocksOfStep(const PageGeometry& g) {
  std::vector<int32_t> blocks;
  for (int32_t p = 0; p < 32; ++p) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      if ((p + h) % 4 == 0) blocks.push_back(int32_t(g.BlockId(p, h)));
    }
  }
  return blocks;
}

TEST(DiskResidencyBlocks, RecordsAreBlocksUnderTheGpuOffloadBackend) {
  TempDir dir("twl-blocks");
  RuntimeConfig gpu = SmallConfig(dir.path(), BackendKind::kGpuOffload, 64 << 10);
  RuntimeConfig cpu = SmallConfig(dir.path(), BackendKind::kCpu, 64 << 10);
  EXPECT_EQ(DiskUnitHeads(gpu), 1);
  EXPECT_EQ(DiskUnitHeads(cpu), 4);
  auto tg = CreatePageDiskTier(gpu);
  auto tc = CreatePageDiskTier(cpu);
  ASSERT_TRUE(tg.ok() && tc.ok());
  EXPECT_EQ((*tg)->record_bytes(), GeometryOf(gpu).FpBlockBytes());
  EXPECT_EQ((*tc)->record_bytes(), 4 * GeometryOf(cpu).FpBlockBytes());
  // Logical pages: host units - 1 + records, in pages.
  EXPECT_EQ(DiskTierPages(gpu, 10, **tg), (10 * 4 - 1 + (*tg)->capacity()) / 4);
  EXPECT_EQ(DiskTierPages(cpu, 10, **tc), 10 - 1 + (*tc)->capacity());
  // A residency refuses records that are not its units.
  const PageGeometry g = GeometryOf(gpu);
  auto bad = DiskResidency::Create(g, 16, 4, std::move(*tc), HostMemKind::kAligned, 1);
  EXPECT_TRUE(absl::IsInvalidArgument(bad.status())) << bad.status();
  auto odd = DiskResidency::Create(g, 16, 4, std::move(*tg), HostMemKind::kAligned, 3);
  EXPECT_TRUE(absl::IsInvalidArgument(odd.status())) << odd.status();
}

TEST(DiskResidencyBlocks, KeptBlocksThatFitThePoolAreReadOnceNotEveryStep) {
  TempDir dir("twl-blocks");
  // 32 pages x 4 heads = 128 blocks; the pool holds 40 blocks (10 pages' worth).
  Fixture f = Make(dir.path(), 128, 40, 1);
  ASSERT_TRUE(f.d);
  WriteAll(f);
  const std::vector<int32_t> kept = KeptBlocksOfStep(f.g);
  ASSERT_EQ(kept.size(), 32u);
  const int64_t block_bytes = f.g.FpBlockBytes();
  std::vector<int64_t> bytes_per_step;
  for (int32_t step = 0; step < 6; ++step) {
    DiskIoCounts io;
    // Two pipeline groups of one step.
    const absl::Span<const int32_t> all(kept);
    ASSERT_TRUE(f.d->Reserve(all.subspan(0, 16), &io, true).ok());
    ASSERT_TRUE(f.d->Reserve(all.subspan(16), &io, false).ok());
    for (const int32_t b : kept) ASSERT_NE(f.d->HostBlock(b), nullptr) << b;
    bytes_per_step.push_back(io.bytes_read);
    ASSERT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
  }
  // The first step reads what is on disk (at block size), later steps nothing.
  EXPECT_GT(bytes_per_step[0], 0);
  EXPECT_LE(bytes_per_step[0], int64_t(kept.size()) * block_bytes);
  EXPECT_EQ(bytes_per_step[0] % block_bytes, 0);
  for (size_t s = 1; s < bytes_per_step.size(); ++s) EXPECT_EQ(bytes_per_step[s], 0) << s;
  ExpectBlocksIntact(f);
}

TEST(DiskResidencyBlocks, PageUnitsOfTheSameKeptBlocksDoNotFit) {
  // The same kept set at page granularity touches 32 pages: more than the 10 page slots of
  // the same host memory (why the GPU backend uses blocks).
  TempDir dir("twl-blocks");
  Fixture f = Make(dir.path(), 32, 10, 0);
  ASSERT_TRUE(f.d);
  WriteAll(f);
  std::vector<int32_t> pages;
  for (const int32_t b : KeptBlocksOfStep(f.g)) {
    const int32_t p = b / f.g.num_kv_heads;
    if (std::find(pages.begin(), pages.end(), p) == pages.end()) pages.push_back(p);
  }
  const absl::Status s = f.d->Reserve(pages, nullptr);
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
}

// Loads per cycle of a cyclic working set of 4 steps x 10 units over 32 slots.
TEST(DiskResidencyBlocks, CyclicWorkingSetSlightlyLargerThanThePoolKeepsMostOfItResident) {
  TempDir dir("twl-blocks");
  Fixture f = Make(dir.path(), 64, 32, 1);
  ASSERT_TRUE(f.d);
  WriteAll(f);
  constexpr int32_t kSteps = 4, kPerStep = 10, kCycles = 12;
  std::vector<int64_t> loads;
  for (int32_t c = 0; c < kCycles; ++c) {
    int64_t n = 0;
    for (int32_t s = 0; s < kSteps; ++s) {
      std::vector<int32_t> units(kPerStep);
      std::iota(units.begin(), units.end(), s * kPerStep);
      std::vector<int32_t> rows(kPerStep, 3);
      DiskIoCounts io;
      ASSERT_TRUE(f.d->Reserve(units, &io, true, rows).ok());
      n += io.pages_loaded;
      ASSERT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
    }
    loads.push_back(n);
  }
  // LRU: 32 loads per cycle (each step finds only 2 of its units left by the 3 steps
  // between its uses). By value: 16 (the established units stay, the newcomers of one step
  // are the next step's victims).
  int64_t late = 0;
  for (int32_t c = 2; c < kCycles; ++c) late += loads[size_t(c)];
  const double per_cycle = double(late) / (kCycles - 2);
  std::printf("loads per cycle (working set 40, pool 32): %.1f\n", per_cycle);
  EXPECT_LE(per_cycle, 0.6 * kSteps * kPerStep);
  ExpectBlocksIntact(f);
}

TEST(DiskResidencyBlocks, ResidentUnitsNeverWaitForAReadAheadInFlight) {
  TempDir dir("twl-blocks");
  Fixture f = Make(dir.path(), 64, 24, 1);
  ASSERT_TRUE(f.d);
  WriteAll(f);
  // Units 40..63 are resident (written last); 0..7 are on disk.
  DiskIoCounts io;
  ASSERT_TRUE(f.d->Reserve({60, 61}, &io).ok());
  ASSERT_TRUE(f.d->StartReadAhead({0, 1, 2, 3}, 4, &io).ok());
  ASSERT_EQ(f.d->read_ahead_in_flight(), 4);
  // An append to resident units (Reserve + MarkDirty) and a release of a unit not in flight
  // leave the read-ahead in flight.
  ASSERT_TRUE(f.d->Reserve({60, 61, 62}, &io).ok());
  ASSERT_TRUE(f.d->MarkDirty({60, 61, 62}).ok());
  EXPECT_EQ(f.d->read_ahead_in_flight(), 4);
  EXPECT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
  // A Reserve that needs a unit in flight reaps it (no second read).
  DiskIoCounts next;
  ASSERT_TRUE(f.d->Reserve({1, 60}, &next).ok());
  EXPECT_EQ(f.d->read_ahead_in_flight(), 0);
  EXPECT_EQ(next.pages_loaded, 0);
  EXPECT_EQ(next.pages_read_ahead_done, 4);
  EXPECT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
  // Releasing a unit in flight reaps first.
  ASSERT_TRUE(f.d->StartReadAhead({4, 5}, 2, &io).ok());
  ASSERT_EQ(f.d->read_ahead_in_flight(), 2);
  f.d->Release(5);
  EXPECT_EQ(f.d->read_ahead_in_flight(), 0);
  EXPECT_TRUE(f.d->CheckConsistency().ok()) << f.d->CheckConsistency();
}

// The GPU offload backend's loop (runtime/gpu_offload_backend_disk.cu) on the shape of
// tests/gpu/offload_disk_test.cc: 3 layers x 8 sequences x 63 pages x 2 KV heads over a pool
// of a quarter of the blocks; each (layer, sequence, KV head) keeps 38 fixed pages; batches
// of 4 sequences decode 2 rounds of the 3 layers, two pipeline groups per step, and after
// each step the blocks the next layer kept last time are read ahead. The three layers' kept
// blocks exceed the pool, one step's fit: read-ahead starts, and its blocks are used.
TEST(DiskResidencyBlocks, ReadAheadOfTheNextLayerStartsAndIsUsedWhenLayersExceedThePool) {
  TempDir dir("twl-blocks");
  constexpr int32_t kLayers = 3, kSeqs = 8, kPages = 63, kHeads = 2, kBatch = 4;
  const int32_t blocks = kLayers * kSeqs * kPages * kHeads;  // 3024
  RuntimeConfig config = SmallConfig(dir.path(), BackendKind::kGpuOffload, 0);
  config.num_kv_heads = kHeads;
  config.num_q_heads = kHeads;
  const PageGeometry g = GeometryOf(config);
  config.disk_bytes = int64_t(blocks) * 512;
  auto tier = CreatePageDiskTier(config);
  ASSERT_TRUE(tier.ok()) << tier.status();
  auto res = DiskResidency::Create(g, blocks, blocks / 4, std::move(*tier),
                                   HostMemKind::kAligned, 1);
  ASSERT_TRUE(res.ok()) << res.status();
  DiskResidency& d = **res;
  d.set_decay_steps(8 * kLayers);
  // Prefill: every block written (pages of (layer, seq) consecutive).
  for (int32_t b = 0; b < blocks; b += 64) {
    std::vector<int32_t> chunk(size_t(std::min(64, blocks - b)));
    std::iota(chunk.begin(), chunk.end(), b);
    ASSERT_TRUE(d.Reserve(chunk, nullptr).ok());
    ASSERT_TRUE(d.MarkDirty(chunk).ok());
  }
  std::mt19937 rng(3);
  // kept[layer][seq]: its kept blocks (38 pages per KV head).
  std::vector<std::vector<std::vector<int32_t>>> kept(kLayers,
                                                      std::vector<std::vector<int32_t>>(kSeqs));
  for (int32_t l = 0; l < kLayers; ++l) {
    for (int32_t s = 0; s < kSeqs; ++s) {
      const int32_t page0 = (l * kSeqs + s) * kPages;
      for (int32_t h = 0; h < kHeads; ++h) {
        std::vector<int32_t> pages(kPages);
        std::iota(pages.begin(), pages.end(), page0);
        std::shuffle(pages.begin(), pages.end(), rng);
        for (int32_t i = 0; i < 38; ++i) {
          kept[size_t(l)][size_t(s)].push_back(int32_t(g.BlockId(pages[size_t(i)], h)));
        }
      }
    }
  }
  std::vector<std::vector<int32_t>> kept_by_layer(kLayers);
  DiskIoCounts total;
  int32_t last_layer = -1;
  std::vector<int32_t> next_layer(kLayers, -1);
  for (int32_t b = 0; b < kSeqs; b += kBatch) {
    for (int32_t round = 0; round < 2; ++round) {
      for (int32_t l = 0; l < kLayers; ++l) {
        if (last_layer >= 0) next_layer[size_t(last_layer)] = l;
        last_layer = l;
        std::vector<int32_t> step;
        for (int32_t grp = 0; grp < 2; ++grp) {
          std::vector<int32_t> group;
          for (int32_t s = b + grp * 2; s < b + grp * 2 + 2; ++s) {
            group.insert(group.end(), kept[size_t(l)][size_t(s)].begin(),
                         kept[size_t(l)][size_t(s)].end());
          }
          std::vector<int32_t> rows(group.size(), 2);
          ASSERT_TRUE(d.Reserve(group, &total, grp == 0, rows).ok());
          for (const int32_t blk : group) ASSERT_NE(d.HostBlock(blk), nullptr);
          step.insert(step.end(), group.begin(), group.end());
        }
        kept_by_layer[size_t(l)] = step;
        const int32_t next = next_layer[size_t(l)];
        if (next >= 0) {
          const int32_t room = d.num_slots() - int32_t(step.size());
          ASSERT_TRUE(d.StartReadAhead(kept_by_layer[size_t(next)], room, &total).ok());
        }
        ASSERT_TRUE(d.CheckConsistency().ok()) << d.CheckConsistency();
      }
    }
  }
  std::printf("blocks loaded %lld, read ahead %lld, read ahead and used %lld\n",
              static_cast<long long>(total.pages_loaded),
              static_cast<long long>(total.pages_read_ahead),
              static_cast<long long>(total.pages_read_ahead_done));
  EXPECT_GT(total.pages_read_ahead, 0);
  EXPECT_GT(total.pages_read_ahead_done, 0);
  EXPECT_GT(total.pages_loaded + total.pages_read_ahead_done, 0);
}

TEST(KeptBlocks, DistinctBlocksPerKvHeadWithTheirKeptRows) {
  PageGeometry g;
  g.page_size = 4;
  g.head_dim = 8;
  g.num_kv_heads = 2;
  // Two sequences; sequence 1 shares page 0 with sequence 0 (a fork).
  const int32_t seq_len[2] = {12, 10};
  const int32_t table[2 * 3] = {0, 1, 2, 0, 3, 4};
  const BatchView batch{2, 4, seq_len, table, 3};
  // counts [seq][head]; tokens ascending per (seq, head).
  const int32_t counts[4] = {3, 2, 2, 1};
  const int32_t tokens[8] = {0, 1, 9,  // s0 h0: page 0 x2, page 2
                             4, 5,     // s0 h1: page 1 x2
                             2, 5,     // s1 h0: page 0 (shared, listed), page 3
                             9};       // s1 h1: page 4
  BlockMarks marks;
  marks.NewStep(size_t(5 * 2));
  std::vector<int32_t> blocks, rows;
  ASSERT_TRUE(
      AppendKeptBlocks(g, batch, 0, 2, counts, tokens, &marks, &blocks, &rows).ok());
  EXPECT_EQ(blocks, (std::vector<int32_t>{0, 4, 3, 6, 9}));
  EXPECT_EQ(rows, (std::vector<int32_t>{2, 1, 2, 1, 1}));
  // Same step, another group listing the same blocks: nothing new.
  std::vector<int32_t> again, again_rows;
  ASSERT_TRUE(
      AppendKeptBlocks(g, batch, 0, 1, counts, tokens, &marks, &again, &again_rows).ok());
  EXPECT_TRUE(again.empty());
  // A new step lists them again; a token past the sequence's pages is an error.
  marks.NewStep(size_t(5 * 2));
  const int32_t bad_counts[2] = {1, 0};
  const int32_t bad_tokens[1] = {12};
  const absl::Status s =
      AppendKeptBlocks(g, batch, 0, 1, bad_counts, bad_tokens, &marks, &again, &again_rows);
  EXPECT_TRUE(absl::IsInternal(s)) << s;
}

TEST(KeptBlocks, ReportedMissesAreListedOncePerStepAndCheckedForRange) {
  // A GPU row cache's miss reports (pipeline/fetch/disk/miss_first_fetch.cuh): a block
  // another group of the step listed (by report or by kept lists) is not listed again.
  BlockMarks marks;
  marks.NewStep(10);
  std::vector<int32_t> blocks, rows;
  const int32_t g0[3] = {7, 2, 5}, g0_rows[3] = {3, 1, 0};
  ASSERT_TRUE(AppendReportedBlocks(g0, g0_rows, 3, &marks, &blocks, &rows).ok());
  EXPECT_EQ(blocks, (std::vector<int32_t>{7, 2, 5}));
  EXPECT_EQ(rows, (std::vector<int32_t>{3, 1, 1}));  // at least one row each
  const int32_t g1[3] = {2, 9, 7}, g1_rows[3] = {4, 2, 4};
  ASSERT_TRUE(AppendReportedBlocks(g1, g1_rows, 3, &marks, &blocks, &rows).ok());
  EXPECT_EQ(blocks, (std::vector<int32_t>{7, 2, 5, 9}));
  EXPECT_EQ(rows, (std::vector<int32_t>{3, 1, 1, 2}));
  // A new step lists them again; a block outside the map is a corrupt report.
  marks.NewStep(10);
  std::vector<int32_t> again, again_rows;
  ASSERT_TRUE(AppendReportedBlocks(g1, g1_rows, 3, &marks, &again, &again_rows).ok());
  EXPECT_EQ(again, (std::vector<int32_t>{2, 9, 7}));
  const int32_t bad[1] = {10}, bad_rows[1] = {1};
  EXPECT_TRUE(absl::IsInternal(
      AppendReportedBlocks(bad, bad_rows, 1, &marks, &again, &again_rows)));
}

}  // namespace
}  // namespace twl

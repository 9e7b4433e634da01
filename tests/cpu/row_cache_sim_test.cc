// Byte study for issue 11: block caching (cache/gpu_page_cache.h, residency by value) vs
// row caching (cache/row_cache_policy.h) over the serving loop's shape: L layers take turns
// on one GPU cache, each layer-step keeps ~2k-12k scattered rows per (sequence, KV head)
// (~1-4.5 per 16-row block, as the H200 run measured at 128k), the kept rows drift by a
// fraction per step. Same byte budget for both caches (10% of all layers' FP16 KV; the row
// cache pays its row map and slot arrays out of it). Reported per layer-step: hit rate and
// MB over PCIe (block cache: fetched blocks whole + rows read in place; row cache: fetched
// rows + rows read in place; 512 B a row, 8 KiB a block at d = 128).
// Default: B = 1 at 128k (seconds). TWL_ROW_SIM_FULL=1 adds B = 8 at 128k (a minute or two).
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "cache/gpu_page_cache.h"
#include "cache/row_cache_policy.h"
#include "gtest/gtest.h"

namespace twl {
namespace {

constexpr int32_t kPage = 16;
constexpr int64_t kRowBytes = 2 * 128 * 2;                    // K row + V row, d 128
constexpr int64_t kBlockBytes = kPage * kRowBytes;            // 8 KiB
// + row_of_slot, last_use, free stack, miss list (RowCacheFetch::SlotBytes)
constexpr int64_t kRowSlotBytes = kRowBytes + 8 + 4 + 4 + 16;

struct RowSimSpec {
  int32_t layers = 8, seqs = 1, heads = 8, pages = 8192;  // 128k context
  int32_t min_blocks = 1000, max_blocks = 3000;  // kept blocks per unit (uniform)
  double rows_p = 0.2;                           // rows per kept block: 1 + Binomial(15, p)
  double stable = 1.0;                           // fraction of kept rows kept next step
  double cache_frac = 0.10;
  int32_t steps = 16, warmup = 6;
  uint64_t seed = 7;
};

struct RowSimResult {
  // Block cache: hits / (hits + fetched + in place) by blocks; the row cache: by rows.
  double block_hit = 0, block_row_hit = 0, row_hit = 0;
  double block_mb = 0, row_mb = 0;        // MB over PCIe per layer-step
  double rows_per_unit = 0;
  int64_t block_slots = 0, row_slots = 0;
};

RowSimResult RunRowSim(const RowSimSpec& sp) {
  std::mt19937_64 rng(sp.seed);
  const int32_t units = sp.seqs * sp.heads;
  const int64_t blocks_per_layer = int64_t(units) * sp.pages;
  const int64_t num_blocks = int64_t(sp.layers) * blocks_per_layer;
  const int64_t cache_bytes = int64_t(double(num_blocks * kBlockBytes) * sp.cache_frac);
  const int32_t block_slots = int32_t(cache_bytes / kBlockBytes);
  const int64_t map_bytes = num_blocks * kPage * 4;
  const int32_t row_slots = int32_t((cache_bytes - map_bytes) / kRowSlotBytes);
  GpuPageCache blocks =
      GpuPageCache::Create(num_blocks, block_slots, std::max(8, 4 * sp.layers)).value();
  RowCachePolicy rows = RowCachePolicy::Create(num_blocks * kPage, row_slots,
                                               uint32_t(2 * sp.layers)).value();
  // Kept rows per (layer, unit) as (page, row) positions, sorted.
  std::vector<std::vector<int32_t>> kept(size_t(sp.layers) * units);
  std::binomial_distribution<int32_t> rows_dist(15, sp.rows_p);
  std::uniform_int_distribution<int32_t> nblocks(sp.min_blocks, sp.max_blocks);
  std::uniform_int_distribution<int32_t> any_pos(0, sp.pages * kPage - 1);
  std::uniform_real_distribution<double> u01(0, 1);
  for (auto& k : kept) {
    std::vector<uint8_t> used(size_t(sp.pages), 0);
    const int32_t nb = nblocks(rng);
    for (int32_t i = 0; i < nb; ++i) {
      int32_t p;
      do p = int32_t(rng() % uint64_t(sp.pages)); while (used[size_t(p)]);
      used[size_t(p)] = 1;
      std::vector<int32_t> r(kPage);
      for (int32_t j = 0; j < kPage; ++j) r[size_t(j)] = j;
      std::shuffle(r.begin(), r.end(), rng);
      const int32_t n = 1 + rows_dist(rng);
      for (int32_t j = 0; j < n; ++j) k.push_back(p * kPage + r[size_t(j)]);
    }
    std::sort(k.begin(), k.end());
  }
  const int32_t groups = sp.seqs >= 2 ? 2 : 1;
  RowCounters rc;
  CacheCounters bc;
  int64_t layer_steps = 0, kept_rows = 0;
  for (int32_t step = 0; step < sp.steps; ++step) {
    const bool count = step >= sp.warmup;
    for (int32_t l = 0; l < sp.layers; ++l) {
      std::vector<std::vector<int32_t>> block_lists(static_cast<size_t>(units));
      std::vector<std::vector<int64_t>> row_lists(static_cast<size_t>(units));
      for (int32_t u = 0; u < units; ++u) {
        auto& k = kept[size_t(l) * units + u];
        if (sp.stable < 1.0) {
          // Drift: each kept row leaves with probability 1 - stable, a new one comes in.
          std::vector<int32_t> next;
          int32_t dropped = 0;
          for (int32_t p : k) {
            if (u01(rng) < sp.stable) next.push_back(p);
            else ++dropped;
          }
          std::sort(next.begin(), next.end());
          for (int32_t i = 0; i < dropped; ++i) {
            const int32_t p = any_pos(rng);
            if (!std::binary_search(next.begin(), next.end(), p)) {
              next.insert(std::upper_bound(next.begin(), next.end(), p), p);
            }
          }
          k.swap(next);
        }
        const int64_t block0 = int64_t(l) * blocks_per_layer + int64_t(u) * sp.pages;
        for (const int32_t p : k) {
          const int64_t b = block0 + p / kPage;
          block_lists[size_t(u)].push_back(int32_t(b));
          row_lists[size_t(u)].push_back(b * kPage + p % kPage);
        }
        if (count) kept_rows += int64_t(k.size());
      }
      for (int32_t gi = 0; gi < groups; ++gi) {
        const int32_t u0 = gi * units / groups, u1 = (gi + 1) * units / groups;
        const absl::Span<const std::vector<int32_t>> bg(block_lists.data() + u0, size_t(u1 - u0));
        const absl::Span<const std::vector<int64_t>> rg(row_lists.data() + u0, size_t(u1 - u0));
        const GroupPlan bp = blocks.PlanGroup(bg, /*protect_previous=*/gi > 0).value();
        const RowGroupPlan rp = rows.PlanGroup(rg, /*starts_step=*/gi == 0).value();
        if (count) {
          bc += bp.counters;
          rc += rp.counters;
        }
      }
      if (count) ++layer_steps;
    }
  }
  RowSimResult r;
  const int64_t block_reads = bc.hits + bc.misses + bc.direct_blocks;
  r.block_hit = block_reads ? double(bc.hits) / double(block_reads) : 0;
  r.block_row_hit = kept_rows ? double(bc.hit_rows) / double(kept_rows) : 0;
  r.row_hit = rc.needed ? double(rc.hits) / double(rc.needed) : 0;
  r.block_mb = double(bc.misses * kBlockBytes + bc.direct_rows * kRowBytes) / 1e6 /
               double(layer_steps);
  r.row_mb = double((rc.fetched + rc.direct) * kRowBytes) / 1e6 / double(layer_steps);
  r.rows_per_unit = double(kept_rows) / double(layer_steps) / double(units);
  r.block_slots = block_slots;
  r.row_slots = row_slots;
  EXPECT_TRUE(rows.CheckConsistent().ok());
  return r;
}

void Report(const char* name, const RowSimSpec& sp, const RowSimResult& r) {
  std::printf(
      "%-22s B=%d ctx=%dk stable=%.2f rows/unit=%.0f | blocks: %lld slots, hit %.3f "
      "(rows %.3f), %.1f MB/layer-step | rows: %lld slots, hit %.3f, %.2f MB/layer-step\n",
      name, sp.seqs, sp.pages * kPage / 1024, sp.stable, r.rows_per_unit,
      static_cast<long long>(r.block_slots), r.block_hit, r.block_row_hit, r.block_mb,
      static_cast<long long>(r.row_slots), r.row_hit, r.row_mb);
}

// Runs `sp` at decreasing stability of the kept sets: the row cache must read fewer bytes than
// the block cache at each, and hit nearly always when the kept sets never change.
void ExpectRowsBeatBlocksAtEveryStability(const char* name, RowSimSpec sp) {
  for (const double stable : {1.0, 0.95, 0.8}) {
    sp.stable = stable;
    const RowSimResult r = RunRowSim(sp);
    Report(name, sp, r);
    EXPECT_LT(r.row_mb, r.block_mb);
    if (stable == 1.0) {
      EXPECT_GT(r.row_hit, 0.99);
    }
  }
}

TEST(RowCacheSim, ServingShapeB1) {
  ExpectRowsBeatBlocksAtEveryStability("B=1 128k", RowSimSpec());
}

// A cache far below the rows' working set (3% of the KV: ~1/3 of the kept rows of 8 layers):
// the recency window keeps what the cache holds and the rest is read in place, no thrash.
TEST(RowCacheSim, TightCacheB1) {
  RowSimSpec sp;
  sp.cache_frac = 0.03;
  const RowSimResult r = RunRowSim(sp);
  Report("B=1 128k cache 3%", sp, r);
  EXPECT_GT(r.row_hit, 0.2);
  EXPECT_LT(r.row_mb, r.block_mb);
}

TEST(RowCacheSim, ServingShapeB8) {
  const char* full = std::getenv("TWL_ROW_SIM_FULL");
  RowSimSpec sp;
  sp.seqs = 8;
  if (!(full && full[0] == '1')) {
    sp.pages = 1024;  // 16k context: the same kept density per block, 8x fewer rows
    sp.min_blocks = 125;
    sp.max_blocks = 375;
  }
  ExpectRowsBeatBlocksAtEveryStability("B=8", sp);
}

}  // namespace
}  // namespace twl

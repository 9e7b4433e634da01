// Device cache plan (LaunchCachePlan) on a cache state built on the host: every slot
// resident with a random age and a random block value, kept lists that hit some resident
// blocks and miss others (1 or 16 kept rows per page). Checks against the host spec
// (cache/gpu_page_cache.h): counts (needed, hits, misses, admitted = PairAdmissions over the
// same histograms, fetched, direct blocks and rows, evictions, pinned); victims are the
// lowest-value evictable slots (no surviving one has a lower key); admitted blocks are the
// highest-value misses; values bumped by the kept rows; maps stay inverse; a repeated plan
// of the same lists finds every admitted block resident and fetches no resident block.
#include <algorithm>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "gpu_test_util.h"
#include "pipeline/fetch/cache/cuda/cache_plan.h"

namespace twl {
namespace {

using testing::Upload;

struct PlanCase {
  int32_t tokens_per_page;
};

class CachePlanGpuTest : public ::testing::TestWithParam<PlanCase> {};

TEST_P(CachePlanGpuTest, AdmitsHighestValueMissesOverLowestValueSlots) {
  TWL_SKIP_WITHOUT_GPU();
  const int32_t tpp = GetParam().tokens_per_page;
  // Fresh every run; --gtest_random_seed=<seed from the failure message> repeats it.
  const int fixed = ::testing::UnitTest::GetInstance()->random_seed();
  const uint64_t seed = fixed > 0 ? uint64_t(fixed) : 1 + std::random_device{}() % 99999u;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed * 31 + uint64_t(tpp));
  PageGeometry g;
  g.page_size = 16;
  g.head_dim = 64;
  g.num_kv_heads = 2;
  const int32_t B = 3, H = g.num_kv_heads, max_pages = 64, units = B * H;
  const int32_t num_slots = 200;
  const int64_t num_pages = int64_t(B) * max_pages;
  const int64_t num_blocks = num_pages * H;
  std::vector<int32_t> page_table(size_t(B) * max_pages), seq_len(size_t(B), max_pages * 16);
  std::iota(page_table.begin(), page_table.end(), 0);
  std::shuffle(page_table.begin(), page_table.end(), rng);

  // Cache state: every slot holds a distinct random block, last used at stamp 1..300; every
  // block has a random value at the current epoch.
  std::vector<int32_t> blocks(static_cast<size_t>(num_blocks));
  std::iota(blocks.begin(), blocks.end(), 0);
  std::shuffle(blocks.begin(), blocks.end(), rng);
  std::vector<int32_t> sob(static_cast<size_t>(num_blocks), -1), bos(static_cast<size_t>(num_slots));
  std::vector<uint32_t> lu(static_cast<size_t>(num_slots));
  const uint32_t epoch = 5;
  std::vector<uint32_t> value(static_cast<size_t>(num_blocks));
  for (uint32_t& v : value) v = (epoch << 16) | uint32_t(1 + rng() % 200);
  for (int32_t s = 0; s < num_slots; ++s) {
    bos[size_t(s)] = blocks[size_t(s)];
    sob[size_t(blocks[size_t(s)])] = s;
    lu[size_t(s)] = 1 + uint32_t(rng() % 300);
  }
  const uint32_t current = 400;
  CacheStamps stamps{current, current, epoch};  // first group of a step: nothing pinned before

  // Kept lists: per unit a few resident pages (hits) and a few absent ones (misses).
  std::vector<std::set<int32_t>> kept_pages(static_cast<size_t>(units));
  std::set<int32_t> want_hit, want_miss;
  for (int32_t u = 0; u < units; ++u) {
    const int32_t s = u / H, h = u % H;
    for (int32_t p = 0; p < max_pages; ++p) {
      const int32_t b = page_table[size_t(s) * max_pages + p] * H + h;
      const bool resident = sob[size_t(b)] >= 0;
      const uint64_t r = rng() % 100;
      if ((resident && r < 40) || (!resident && r < 3)) {
        kept_pages[size_t(u)].insert(p);
        (resident ? want_hit : want_miss).insert(b);
      }
    }
  }
  ASSERT_GT(want_miss.size(), 0u);
  ASSERT_LT(want_hit.size() + want_miss.size(), size_t(num_slots));
  const int32_t max_kept = max_pages * g.page_size;
  std::vector<int32_t> tokens(size_t(units) * max_kept, -1), count(static_cast<size_t>(units));
  for (int32_t u = 0; u < units; ++u) {
    int32_t i = 0;
    for (int32_t p : kept_pages[size_t(u)]) {
      for (int32_t t = 0; t < tpp; ++t) tokens[size_t(u) * max_kept + i++] = p * 16 + t;
    }
    count[size_t(u)] = i;
  }
  // The host's expectation: values after the bump, both histograms, the pairing.
  std::vector<uint32_t> bumped = value;
  std::vector<int32_t> mhist(kCacheAgeBuckets, 0), vhist(kCacheAgeBuckets, 0);
  for (int32_t b : want_hit) bumped[size_t(b)] = BumpValue(value[size_t(b)], epoch, uint32_t(tpp));
  for (int32_t b : want_miss) {
    bumped[size_t(b)] = BumpValue(value[size_t(b)], epoch, uint32_t(tpp));
    ++mhist[size_t(ValueBucket(DecayedValue(bumped[size_t(b)], epoch)))];
  }
  auto key_of = [&](int32_t s) { return VictimKey(bos[size_t(s)], value.data(), epoch); };
  for (int32_t s = 0; s < num_slots; ++s) {
    if (!want_hit.count(bos[size_t(s)])) ++vhist[size_t(key_of(s))];  // evictable: not a hit
  }
  const AdmitCut cut = PairAdmissions(mhist.data(), vhist.data());
  const int32_t hits = int32_t(want_hit.size()), misses = int32_t(want_miss.size());
  ASSERT_GT(cut.admitted, 0) << "the draw admits nothing: the test would not test victims";

  gpu::DeviceBuffer d_pt = Upload(page_table), d_len = Upload(seq_len), d_tok = Upload(tokens),
                    d_cnt = Upload(count), d_sob = Upload(sob), d_bos = Upload(bos),
                    d_lu = Upload(lu), d_val = Upload(value);
  gpu::DeviceBuffer d_ns = Upload(std::vector<uint32_t>(size_t(num_blocks), 0));
  gpu::DeviceBuffer d_cc, d_cd, d_ub, d_missing, d_fetch, d_counters;
  for (auto* b : {&d_cc, &d_cd, &d_ub}) ASSERT_TRUE(b->Reserve(size_t(units) * 4).ok());
  ASSERT_TRUE(d_missing.Reserve(size_t(num_slots) * sizeof(FetchEntry)).ok());
  ASSERT_TRUE(d_fetch.Reserve(size_t(num_slots) * sizeof(FetchEntry)).ok());
  ASSERT_TRUE(d_counters.Reserve(sizeof(DeviceGroupCounters)).ok());
  ASSERT_TRUE(gpu::Memset(d_counters.get(), 0, sizeof(DeviceGroupCounters)).ok());
  DeviceCacheState cache{d_sob.as<int32_t>(), d_bos.as<int32_t>(), d_lu.as<uint32_t>(),
                         d_ns.as<uint32_t>(), nullptr, num_blocks, num_slots};
  cache.d_value = d_val.as<uint32_t>();
  CachePlanArgs a;
  a.g = g;
  a.batch.num_seqs = B;
  a.batch.num_q_heads = H;
  a.batch.seq_len = d_len.as<int32_t>();
  a.batch.page_table = d_pt.as<int32_t>();
  a.batch.max_pages = max_pages;
  a.kept = KeptView{d_tok.as<int32_t>(), d_cnt.as<int32_t>(), max_kept};
  a.stamps = stamps;
  a.d_counters = d_counters.as<DeviceGroupCounters>();
  a.d_count_cache = d_cc.as<int32_t>();
  a.d_count_direct = d_cd.as<int32_t>();
  a.d_unit_blocks = d_ub.as<int32_t>();
  a.d_missing = d_missing.as<FetchEntry>();
  a.d_fetch = d_fetch.as<FetchEntry>();

  TWL_ASSERT_OK(LaunchCachePlan(cache, a, nullptr));
  TWL_ASSERT_OK(gpu::DeviceSync());
  DeviceGroupCounters c;
  TWL_ASSERT_OK(gpu::CopyToHost(&c, d_counters.get(), sizeof(c)));
  EXPECT_EQ(c.error, 0);
  EXPECT_EQ(c.marked, 1);
  EXPECT_EQ(c.units_direct, 0);
  EXPECT_EQ(c.needed, hits + misses);
  EXPECT_EQ(c.hits, hits);
  EXPECT_EQ(c.hit_rows, hits * tpp);
  EXPECT_EQ(c.misses, misses);
  EXPECT_EQ(c.listed, misses);
  EXPECT_EQ(c.admitted, cut.admitted);
  EXPECT_EQ(c.fetched, cut.admitted);
  EXPECT_EQ(c.direct_blocks, misses - cut.admitted);
  EXPECT_EQ(c.direct_rows, (misses - cut.admitted) * tpp);
  EXPECT_EQ(c.evictions, cut.admitted - vhist[0]);  // free slots: none here
  EXPECT_EQ(c.pinned, hits + cut.admitted);
  EXPECT_EQ(c.acc_needed + c.acc_hits + c.acc_misses + c.acc_error + c.acc_listed +
                c.acc_direct + c.acc_direct_rows + c.acc_hit_rows,
            0)
      << "accumulators not reset";
  for (int32_t i = 0; i < kCacheAgeBuckets; ++i) ASSERT_EQ(c.mhist[i], 0) << "histogram kept";
  std::vector<int32_t> ub(static_cast<size_t>(units)), cc(static_cast<size_t>(units)),
      cd(static_cast<size_t>(units));
  TWL_ASSERT_OK(gpu::CopyToHost(ub.data(), d_ub.get(), ub.size() * 4));
  TWL_ASSERT_OK(gpu::CopyToHost(cc.data(), d_cc.get(), cc.size() * 4));
  TWL_ASSERT_OK(gpu::CopyToHost(cd.data(), d_cd.get(), cd.size() * 4));
  for (int32_t u = 0; u < units; ++u) {
    EXPECT_EQ(ub[size_t(u)], int32_t(kept_pages[size_t(u)].size())) << "unit " << u;
    EXPECT_EQ(cc[size_t(u)], count[size_t(u)]) << "unit " << u;
    EXPECT_EQ(cd[size_t(u)], 0) << "unit " << u;
  }
  ASSERT_LE(c.fetched, num_slots);
  std::vector<FetchEntry> fetch(static_cast<size_t>(std::max(c.fetched, 0)));
  TWL_ASSERT_OK(gpu::CopyToHost(fetch.data(), d_fetch.get(), fetch.size() * sizeof(FetchEntry)));
  std::vector<int32_t> sob2(sob.size()), bos2(bos.size());
  std::vector<uint32_t> lu2(lu.size()), value2(value.size());
  TWL_ASSERT_OK(gpu::CopyToHost(sob2.data(), d_sob.get(), sob2.size() * 4));
  TWL_ASSERT_OK(gpu::CopyToHost(bos2.data(), d_bos.get(), bos2.size() * 4));
  TWL_ASSERT_OK(gpu::CopyToHost(lu2.data(), d_lu.get(), lu2.size() * 4));
  TWL_ASSERT_OK(gpu::CopyToHost(value2.data(), d_val.get(), value2.size() * 4));
  EXPECT_EQ(value2, bumped) << "values not bumped by the kept rows";
  std::set<int32_t> victims, fetched_blocks;
  for (const FetchEntry& e : fetch) {
    ASSERT_TRUE(e.slot >= 0 && e.slot < num_slots);
    ASSERT_TRUE(e.block >= 0 && e.block < num_blocks) << "fetch entry block " << e.block;
    EXPECT_TRUE(victims.insert(e.slot).second) << "slot fetched twice";
    EXPECT_TRUE(fetched_blocks.insert(e.block).second) << "block fetched twice";
    EXPECT_EQ(want_miss.count(e.block), 1u) << "fetched a block that was not missing";
    EXPECT_EQ(sob2[size_t(e.block)], e.slot);
    EXPECT_EQ(bos2[size_t(e.slot)], e.block);
    EXPECT_EQ(lu2[size_t(e.slot)], current);
    EXPECT_EQ(sob2[size_t(bos[size_t(e.slot)])], -1) << "evicted block still mapped";
  }
  for (int32_t b : want_hit) {
    ASSERT_GE(sob2[size_t(b)], 0);
    EXPECT_EQ(sob2[size_t(b)], sob[size_t(b)]) << "hit moved";
    EXPECT_EQ(lu2[size_t(sob2[size_t(b)])], current) << "hit not re-stamped";
    EXPECT_EQ(victims.count(sob[size_t(b)]), 0u) << "a hit was evicted";
  }
  // Admitted: the highest-value misses; victims: the lowest-value evictable slots.
  auto miss_bucket = [&](int32_t b) { return ValueBucket(DecayedValue(bumped[size_t(b)], epoch)); };
  int32_t lowest_admitted = kCacheAgeBuckets, highest_in_place = -1;
  for (int32_t b : want_miss) {
    if (fetched_blocks.count(b)) {
      lowest_admitted = std::min(lowest_admitted, miss_bucket(b));
    } else {
      EXPECT_LT(sob2[size_t(b)], 0) << "a miss neither fetched nor in place";
      highest_in_place = std::max(highest_in_place, miss_bucket(b));
    }
  }
  EXPECT_GE(lowest_admitted, highest_in_place);
  EXPECT_GE(lowest_admitted, cut.miss_cut);
  int32_t highest_victim = -1, lowest_survivor = kCacheAgeBuckets;
  for (int32_t s = 0; s < num_slots; ++s) {
    if (want_hit.count(bos[size_t(s)])) continue;
    if (victims.count(s)) {
      highest_victim = std::max(highest_victim, key_of(s));
    } else {
      lowest_survivor = std::min(lowest_survivor, key_of(s));
    }
  }
  EXPECT_LE(highest_victim, lowest_survivor) << "a higher-value slot was evicted first";
  EXPECT_LE(highest_victim, cut.victim_cut);
  for (int64_t b = 0; b < num_blocks; ++b) {
    if (sob2[size_t(b)] >= 0) ASSERT_EQ(bos2[size_t(sob2[size_t(b)])], b);
  }

  // The same lists again (next group stamp, same step): every admitted block is a hit now,
  // and nothing resident is fetched.
  const std::vector<FetchEntry> poison(size_t(num_slots), FetchEntry{-9, -9});
  TWL_ASSERT_OK(gpu::CopyToDevice(d_fetch.get(), poison.data(), poison.size() * sizeof(FetchEntry)));
  a.stamps = CacheStamps{current + 1, current + 1, epoch};
  TWL_ASSERT_OK(LaunchCachePlan(cache, a, nullptr));
  TWL_ASSERT_OK(gpu::DeviceSync());
  TWL_ASSERT_OK(gpu::CopyToHost(&c, d_counters.get(), sizeof(c)));
  EXPECT_EQ(c.error, 0);
  EXPECT_EQ(c.needed, hits + misses);
  EXPECT_GE(c.hits, hits + cut.admitted);
  EXPECT_EQ(c.hits + c.fetched + c.direct_blocks, hits + misses);
  std::vector<FetchEntry> after(static_cast<size_t>(num_slots));
  TWL_ASSERT_OK(gpu::CopyToHost(after.data(), d_fetch.get(), after.size() * sizeof(FetchEntry)));
  ASSERT_LE(c.fetched, num_slots);
  for (int32_t i = 0; i < c.fetched; ++i) {
    const int32_t b = after[size_t(i)].block;
    ASSERT_TRUE(b >= 0 && b < num_blocks) << "fetch entry " << i << " block " << b;
    EXPECT_LT(sob2[size_t(b)], 0) << "refetched a resident block";
  }
  for (int32_t i = std::max(c.fetched, 0); i < num_slots; ++i) {
    ASSERT_EQ(after[size_t(i)].block, -9) << "wrote past the fetch list";
  }
}

INSTANTIATE_TEST_SUITE_P(Paths, CachePlanGpuTest,
                         ::testing::Values(PlanCase{1}, PlanCase{16}));

}  // namespace
}  // namespace twl

#include "pipeline/prune/twilight/score_partition.h"

#include <random>

#include <gtest/gtest.h>

namespace twl {
namespace {

constexpr int64_t kSlots = 2 * 132;  // two blocks per SM on an H100 / H200
constexpr int64_t kPages128k = 131072 / 16;

// The serving benchmark's shapes (32 x 8, 128k, pages of 16, runs of at most 1024 pages):
// the partitions bench/RESULTS.md's score-pass timings were measured with.
TEST(ScorePartition, ServingShapes) {
  struct Case {
    int64_t batch, blocks;
    int32_t run;
  };
  const Case cases[] = {
      {1, 33, 249},    // 8 pairs: one wave of 264 blocks
      {8, 8, 1024},    // 64 pairs: two waves of 512 (the run table caps the runs)
      {16, 8, 1024},   // 128 pairs: four waves
      {32, 8, 1024},   // 256 pairs: eight waves
  };
  for (const Case& c : cases) {
    const ScorePartition p = ChooseScorePartition(c.batch * 8, kPages128k, kSlots, 1024);
    EXPECT_EQ(p.blocks, c.blocks) << "B = " << c.batch;
    EXPECT_EQ(p.run, c.run) << "B = " << c.batch;
  }
}

// On any input: every page in exactly one block's run, no run past the table, no empty
// block, and no more blocks than one per 16 pages unless the run table needs them.
TEST(ScorePartition, CoversEveryPageWithinTheRunTable) {
  std::mt19937_64 rng(testing::UnitTest::GetInstance()->random_seed());
  for (int trial = 0; trial < 20000; ++trial) {
    const int64_t pairs = 1 + int64_t(rng() % 600);
    const int64_t pages = 1 + int64_t(rng() % 20000);
    const int64_t slots = 1 + int64_t(rng() % 1200);
    const int64_t max_run = 1 + int64_t(rng() % 2048);
    const ScorePartition p = ChooseScorePartition(pairs, pages, slots, max_run);
    SCOPED_TRACE(testing::Message() << "pairs " << pairs << " pages " << pages << " slots "
                                    << slots << " max_run " << max_run);
    ASSERT_GE(p.run, 1);
    ASSERT_LE(p.run, max_run);
    ASSERT_GE(p.blocks * p.run, pages);        // every page in a run
    ASSERT_LT((p.blocks - 1) * p.run, pages);  // the last block holds one at least
    ASSERT_LE(p.blocks, std::max((pages + 15) / 16, (pages + max_run - 1) / max_run));
  }
}

}  // namespace
}  // namespace twl

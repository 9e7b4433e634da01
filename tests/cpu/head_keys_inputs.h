// Inputs shared by the tests of the bench's score-pass studies over one KV head's paged keys
// (bit_planes_test.cc, coarse_ranking_test.cc): the geometry they use, a per-run seed base and
// a random query.
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "gtest/gtest.h"

namespace twl::bench {

constexpr int32_t kD = 128, kPs = 16;

// Fresh inputs per run: every draw is seeded from the gtest seed (printed on failure).
inline uint64_t SeedBase() {
  return uint64_t(::testing::UnitTest::GetInstance()->random_seed()) * 1000;
}

// A query of kD values ~ N(0, 1 / kD): scaled so that its scores are O(1).
inline std::vector<float> RandomQuery(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f / std::sqrt(float(kD)));
  std::vector<float> q(kD);
  for (float& x : q) x = n(rng);
  return q;
}

}  // namespace twl::bench

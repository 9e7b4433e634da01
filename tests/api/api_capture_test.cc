// twl_runtime_set_capture_kept / twl_runtime_last_step_kept: the attended positions of the
// last step agree with the per-KV-head telemetry counts, are ascending and in range, and give
// dense attention's answer when every token is kept (top-p = 1, full selector, exact K).
#include <algorithm>
#include <random>
#include <vector>

#include "api_test_util.h"

namespace {

using twl_test::AppendRandom;
using twl_test::MakeRuntime;
using twl_test::RandomHalf;
using twl_test::SmallConfig;

TEST(ApiCapture, KeptListsMatchTelemetryAndAreSorted) {
  twl_runtime_config c = SmallConfig();
  c.selector_budget_tokens = 16;
  twilight::RuntimePtr rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  std::mt19937 rng(5);
  const int32_t lens[2] = {70, 133};
  std::vector<twl_seq_id> seqs(2);
  for (int s = 0; s < 2; ++s) {
    ASSERT_EQ(twl_sequence_create(rt.get(), &seqs[s]), TWL_OK);
    for (int32_t layer = 0; layer < c.num_layers; ++layer) {
      ASSERT_EQ(AppendRandom(rt.get(), seqs[s], layer, lens[s], c.num_kv_heads, c.head_dim, &rng),
                TWL_OK);
    }
  }
  int32_t count = 0;
  // Nothing captured yet.
  EXPECT_STATUS_WITH_MESSAGE(twl_runtime_last_step_kept(rt.get(), 0, 0, nullptr, 0, &count),
                             TWL_FAILED_PRECONDITION, rt.get(), "twl_runtime_last_step_kept");
  EXPECT_STATUS_WITH_MESSAGE(twl_runtime_set_capture_kept(rt.get(), 2), TWL_INVALID_ARGUMENT,
                             rt.get(), "twl_runtime_set_capture_kept");
  ASSERT_EQ(twl_runtime_set_capture_kept(rt.get(), 1), TWL_OK);
  const std::vector<uint16_t> q = RandomHalf(&rng, size_t(2) * c.num_q_heads * c.head_dim, 3.0f);
  std::vector<uint16_t> out(q.size());
  ASSERT_EQ(twl_decode(rt.get(), 1, seqs.data(), 2, q.data(), out.data(), TWL_MEMORY_HOST,
                       nullptr, nullptr),
            TWL_OK)
      << twl_runtime_last_error(rt.get());
  std::vector<int32_t> kept_kv(size_t(2) * c.num_kv_heads);
  ASSERT_EQ(twl_runtime_last_step_heads(rt.get(), nullptr, nullptr, nullptr, 0, kept_kv.data(),
                                        int64_t(kept_kv.size())),
            TWL_OK);
  for (int32_t s = 0; s < 2; ++s) {
    for (int32_t h = 0; h < c.num_kv_heads; ++h) {
      // Size query: INVALID_ARGUMENT with the count filled in.
      EXPECT_EQ(twl_runtime_last_step_kept(rt.get(), s, h, nullptr, 0, &count),
                TWL_INVALID_ARGUMENT);
      EXPECT_EQ(count, kept_kv[size_t(s) * c.num_kv_heads + h]);
      std::vector<int32_t> tokens(static_cast<size_t>(count));
      ASSERT_EQ(twl_runtime_last_step_kept(rt.get(), s, h, tokens.data(), count, &count), TWL_OK);
      EXPECT_TRUE(std::is_sorted(tokens.begin(), tokens.end()));
      EXPECT_TRUE(std::adjacent_find(tokens.begin(), tokens.end()) == tokens.end());
      for (int32_t t : tokens) {
        EXPECT_GE(t, 0);
        EXPECT_LT(t, lens[s]);
      }
      EXPECT_FALSE(tokens.empty());
    }
  }
  EXPECT_EQ(twl_runtime_last_step_kept(rt.get(), 2, 0, nullptr, 0, &count), TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_runtime_last_step_kept(rt.get(), 0, c.num_kv_heads, nullptr, 0, &count),
            TWL_INVALID_ARGUMENT);
  EXPECT_EQ(twl_runtime_last_step_kept(rt.get(), 0, 0, nullptr, 0, nullptr), TWL_INVALID_ARGUMENT);
}

TEST(ApiCapture, DenseStepKeepsEveryToken) {
  twl_runtime_config c = SmallConfig();
  c.dense_layers = c.num_layers;
  twilight::RuntimePtr rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  std::mt19937 rng(9);
  twl_seq_id seq = 0;
  ASSERT_EQ(twl_sequence_create(rt.get(), &seq), TWL_OK);
  ASSERT_EQ(AppendRandom(rt.get(), seq, 0, 41, c.num_kv_heads, c.head_dim, &rng), TWL_OK);
  ASSERT_EQ(twl_runtime_set_capture_kept(rt.get(), 1), TWL_OK);
  const std::vector<uint16_t> q = RandomHalf(&rng, size_t(c.num_q_heads) * c.head_dim);
  std::vector<uint16_t> out(q.size());
  ASSERT_EQ(twl_decode(rt.get(), 0, &seq, 1, q.data(), out.data(), TWL_MEMORY_HOST, nullptr,
                       nullptr),
            TWL_OK);
  std::vector<int32_t> tokens(64);
  int32_t count = 0;
  ASSERT_EQ(twl_runtime_last_step_kept(rt.get(), 0, 1, tokens.data(), 64, &count), TWL_OK);
  ASSERT_EQ(count, 41);
  for (int32_t i = 0; i < count; ++i) EXPECT_EQ(tokens[size_t(i)], i);
  // Capture off: the lists of the last captured step stay readable.
  ASSERT_EQ(twl_runtime_set_capture_kept(rt.get(), 0), TWL_OK);
  EXPECT_EQ(twl_runtime_last_step_kept(rt.get(), 0, 1, tokens.data(), 64, &count), TWL_OK);
}

}  // namespace

namespace {

// twl_step_stats.step numbers the runtime's decodes: 0 before any, then the decode the
// figures describe (the CPU backend reports each decode's own figures).
TEST(ApiTelemetry, StepCountsTheRuntimesDecodes) {
  twl_runtime_config c = twl_test::SmallConfig();
  twilight::RuntimePtr rt = twl_test::MakeRuntime(c);
  ASSERT_TRUE(rt);
  std::mt19937 rng(9);
  twl_seq_id seq = 0;
  ASSERT_EQ(twl_sequence_create(rt.get(), &seq), TWL_OK);
  for (int32_t layer = 0; layer < c.num_layers; ++layer) {
    ASSERT_EQ(twl_test::AppendRandom(rt.get(), seq, layer, 40, c.num_kv_heads, c.head_dim, &rng),
              TWL_OK);
  }
  twl_step_stats st{};
  st.struct_size = sizeof(st);
  ASSERT_EQ(twl_runtime_last_step(rt.get(), &st), TWL_OK);
  EXPECT_EQ(st.step, 0);
  const std::vector<uint16_t> q =
      twl_test::RandomHalf(&rng, size_t(c.num_q_heads) * c.head_dim, 1.0f);
  std::vector<uint16_t> out(q.size());
  for (int i = 1; i <= 3; ++i) {
    ASSERT_EQ(twl_decode(rt.get(), i % c.num_layers, &seq, 1, q.data(), out.data(),
                         TWL_MEMORY_HOST, nullptr, nullptr),
              TWL_OK);
    ASSERT_EQ(twl_runtime_last_step(rt.get(), &st), TWL_OK);
    EXPECT_EQ(st.step, i);
    EXPECT_EQ(st.layer, i % c.num_layers);
  }
  // An older, smaller struct is still served (the field is simply not written).
  twl_step_stats small{};
  small.struct_size = offsetof(twl_step_stats, step);
  small.step = -7;
  ASSERT_EQ(twl_runtime_last_step(rt.get(), &small), TWL_OK);
  EXPECT_EQ(small.step, -7);
}

}  // namespace

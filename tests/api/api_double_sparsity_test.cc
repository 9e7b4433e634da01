// The Double Sparsity selector through the C API: the enum value is accepted and reported
// back, it needs a quantized K copy, its candidates respect the cap, and with a cap that
// covers every page and top-p = 1 the output is dense attention.
#include <cmath>
#include <random>
#include <vector>

#include "api_test_util.h"

namespace {

using twl_test::DenseAttention;
using twl_test::LayerKv;
using twl_test::MakeRuntime;
using twl_test::RandomHalf;
using twl_test::ReadKv;
using twl_test::SmallConfig;
using twl_test::ToFloat;

twl_runtime_config DsConfig() {
  twl_runtime_config c = SmallConfig();
  c.num_layers = 1;
  c.selector = TWL_SELECTOR_DOUBLE_SPARSITY;
  c.k_bits = 4;
  return c;
}

TEST(ApiDoubleSparsity, ConfigRoundTripsAndNeedsQuantizedK) {
  twl_runtime_config c = DsConfig();
  twilight::RuntimePtr rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  twl_runtime_config got;
  got.struct_size = sizeof(got);
  ASSERT_EQ(twl_runtime_get_config(rt.get(), &got), TWL_OK);
  EXPECT_EQ(got.selector, TWL_SELECTOR_DOUBLE_SPARSITY);

  c.k_bits = 16;  // nothing to score from
  twl_status s = TWL_OK;
  twilight::RuntimePtr bad = twilight::CreateRuntime(c, &s);
  EXPECT_FALSE(bad);
  EXPECT_EQ(s, TWL_INVALID_ARGUMENT);
}

TEST(ApiDoubleSparsity, CandidatesRespectTheCap) {
  twl_runtime_config c = DsConfig();
  c.top_p = 1.0f;
  c.selector_budget_tokens = 32;  // 4 pages of 8, plus the sink and the last page
  twilight::RuntimePtr rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  std::mt19937 rng(21);
  const int32_t len = 203;  // 26 pages, the last one partial
  twl_seq_id seq = -1;
  ASSERT_EQ(twl_sequence_create(rt.get(), &seq), TWL_OK);
  const size_t elems = size_t(len) * c.num_kv_heads * c.head_dim;
  const std::vector<uint16_t> k = RandomHalf(&rng, elems), v = RandomHalf(&rng, elems);
  ASSERT_EQ(twl_sequence_append(rt.get(), seq, 0, len, k.data(), v.data(), TWL_DTYPE_FP16,
                                TWL_MEMORY_HOST),
            TWL_OK)
      << twl_runtime_last_error(rt.get());
  const size_t q_elems = size_t(c.num_q_heads) * c.head_dim;
  const std::vector<uint16_t> q = RandomHalf(&rng, q_elems);
  std::vector<uint16_t> out(q_elems);
  ASSERT_EQ(twl_decode(rt.get(), 0, &seq, 1, q.data(), out.data(), TWL_MEMORY_HOST, nullptr,
                       nullptr),
            TWL_OK)
      << twl_runtime_last_error(rt.get());
  for (float x : ToFloat(out)) ASSERT_TRUE(std::isfinite(x));
  std::vector<int32_t> sel(4), kept(4), kept_kv(2);
  std::vector<float> mass(4);
  ASSERT_EQ(twl_runtime_last_step_heads(rt.get(), sel.data(), kept.data(), mass.data(), 4,
                                        kept_kv.data(), 2),
            TWL_OK)
      << twl_runtime_last_error(rt.get());
  // 4 ranked pages + the sink page (8 tokens each) + the last page (203 - 200 = 3 tokens).
  for (int h = 0; h < 4; ++h) EXPECT_EQ(sel[size_t(h)], 5 * 8 + 3) << "head " << h;
}

TEST(ApiDoubleSparsity, UncappedTopPOneIsDenseAttention) {
  twl_runtime_config c = DsConfig();
  c.top_p = 1.0f;
  c.selector_budget_tokens = 0;
  c.selector_budget_fraction = 1.0f;  // no cap: every page is a candidate
  twilight::RuntimePtr rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  std::mt19937 rng(22);
  const int32_t len = 77;
  twl_seq_id seq = -1;
  ASSERT_EQ(twl_sequence_create(rt.get(), &seq), TWL_OK);
  const size_t elems = size_t(len) * c.num_kv_heads * c.head_dim;
  const std::vector<uint16_t> k = RandomHalf(&rng, elems), v = RandomHalf(&rng, elems);
  ASSERT_EQ(twl_sequence_append(rt.get(), seq, 0, len, k.data(), v.data(), TWL_DTYPE_FP16,
                                TWL_MEMORY_HOST),
            TWL_OK);
  const size_t q_elems = size_t(c.num_q_heads) * c.head_dim;
  const std::vector<uint16_t> q = RandomHalf(&rng, q_elems);
  std::vector<uint16_t> out(q_elems);
  ASSERT_EQ(twl_decode(rt.get(), 0, &seq, 1, q.data(), out.data(), TWL_MEMORY_HOST, nullptr,
                       nullptr),
            TWL_OK)
      << twl_runtime_last_error(rt.get());
  const LayerKv kv = ReadKv(rt.get(), seq, 0);
  const std::vector<float> want =
      DenseAttention(ToFloat(q), kv, c.num_q_heads, c.num_kv_heads, c.head_dim);
  const std::vector<float> got = ToFloat(out);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 2e-3 + 2e-3 * std::fabs(want[i])) << "element " << i;
  }
}

}  // namespace

// The Double Sparsity selector through the C API: the enum value is accepted and reported
// back, it needs a quantized K copy, its candidates respect the cap, and with a cap that
// covers every page and top-p = 1 the output is dense attention.
#include <cmath>
#include <random>
#include <vector>

#include "api_test_util.h"

namespace twl_test {
namespace {

twl_runtime_config DsConfig() {
  twl_runtime_config c = SmallConfig();
  c.num_layers = 1;
  c.selector = TWL_SELECTOR_DOUBLE_SPARSITY;
  c.k_bits = 4;
  return c;
}

// One new sequence of `len` random tokens in layer 0 and a decode of one random query over it
// (both drawn from one generator seeded with `seed`): the step the decode tests check.
struct RandomDecode {
  twl_seq_id seq = -1;
  std::vector<uint16_t> q, out;

  void Run(twl_runtime* rt, const twl_runtime_config& c, int32_t len, uint32_t seed) {
    std::mt19937 rng(seed);
    ASSERT_EQ(twl_sequence_create(rt, &seq), TWL_OK);
    ASSERT_EQ(AppendRandom(rt, seq, 0, len, c.num_kv_heads, c.head_dim, &rng), TWL_OK)
        << twl_runtime_last_error(rt);
    q = RandomHalf(&rng, size_t(c.num_q_heads) * c.head_dim);
    out.resize(q.size());
    ASSERT_EQ(twl_decode(rt, 0, &seq, 1, q.data(), out.data(), TWL_MEMORY_HOST, nullptr,
                         nullptr),
              TWL_OK)
        << twl_runtime_last_error(rt);
  }
};

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
  RandomDecode d;
  // 203 tokens: 26 pages, the last one partial.
  ASSERT_NO_FATAL_FAILURE(d.Run(rt.get(), c, /*len=*/203, /*seed=*/21));
  for (float x : ToFloat(d.out)) ASSERT_TRUE(std::isfinite(x));
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
  RandomDecode d;
  ASSERT_NO_FATAL_FAILURE(d.Run(rt.get(), c, /*len=*/77, /*seed=*/22));
  const LayerKv kv = ReadKv(rt.get(), d.seq, 0);
  const std::vector<float> want =
      DenseAttention(ToFloat(d.q), kv, c.num_q_heads, c.num_kv_heads, c.head_dim);
  const std::vector<float> got = ToFloat(d.out);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 2e-3 + 2e-3 * std::fabs(want[i])) << "element " << i;
  }
}

}  // namespace
}  // namespace twl_test

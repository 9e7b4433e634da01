// Decode through the C API against answers known without the library: with top-p = 1, the
// full selector and exact K (k_bits 16) the output is dense attention; telemetry is
// consistent; per-sequence p orders budgets; fork is copy-on-write; the C++ wrapper frees.
#include <algorithm>
#include <cmath>
#include <random>
#include <vector>

#include "api_test_util.h"

namespace twl_test {
namespace {

// FP16 output of an FP32 computation: half-ULP of the value plus FP32 accumulation noise.
void ExpectNearDense(const std::vector<float>& got, const std::vector<float>& want,
                     const char* what) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    EXPECT_NEAR(got[i], want[i], 2e-3 + 2e-3 * std::fabs(want[i])) << what << " element " << i;
  }
}

TEST(ApiDecode, TopPOneFullSelectorExactKIsDenseAttention) {
  twl_runtime_config c = SmallConfig();
  c.top_p = 1.0f;
  c.selector = TWL_SELECTOR_FULL;
  c.k_bits = 16;
  twilight::RuntimePtr rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  std::mt19937 rng(11);
  // Odd lengths, different per sequence and layer, with FP32 and BF16 inputs too.
  const int32_t lens[3] = {1, 17, 45};
  std::vector<twl_seq_id> seqs(3);
  for (int s = 0; s < 3; ++s) {
    ASSERT_EQ(twl_sequence_create(rt.get(), &seqs[s]), TWL_OK);
    for (int32_t layer = 0; layer < c.num_layers; ++layer) {
      const int32_t n = lens[s] + layer;
      const size_t elems = size_t(n) * c.num_kv_heads * c.head_dim;
      std::normal_distribution<float> dist;
      std::vector<float> k(elems), v(elems);
      for (float& x : k) x = dist(rng);
      for (float& x : v) x = dist(rng);
      ASSERT_EQ(twl_sequence_append(rt.get(), seqs[s], layer, n, k.data(), v.data(), TWL_DTYPE_FP32,
                                    TWL_MEMORY_HOST),
                TWL_OK)
          << twl_runtime_last_error(rt.get());
      // FP32 input is stored as FP16: read back equals the rounded input.
      std::vector<uint16_t> k16(elems);
      twl_fp32_to_fp16(k.data(), k16.data(), elems);
      EXPECT_EQ(ReadKv(rt.get(), seqs[s], layer).k, k16);
    }
  }
  const size_t q_elems = size_t(c.num_q_heads) * c.head_dim;
  for (int32_t layer = 0; layer < c.num_layers; ++layer) {
    const std::vector<uint16_t> q = RandomHalf(&rng, q_elems * 3);
    std::vector<uint16_t> out(q_elems * 3);
    ASSERT_EQ(twl_decode(rt.get(), layer, seqs.data(), 3, q.data(), out.data(), TWL_MEMORY_HOST,
                         nullptr, nullptr),
              TWL_OK)
        << twl_runtime_last_error(rt.get());
    const std::vector<float> qf = ToFloat(q), outf = ToFloat(out);
    for (int s = 0; s < 3; ++s) {
      const LayerKv kv = ReadKv(rt.get(), seqs[s], layer);
      const std::vector<float> want = DenseAttention(
          std::vector<float>(qf.begin() + s * q_elems, qf.begin() + (s + 1) * q_elems), kv,
          c.num_q_heads, c.num_kv_heads, c.head_dim);
      ExpectNearDense(
          std::vector<float>(outf.begin() + s * q_elems, outf.begin() + (s + 1) * q_elems), want,
          "dense");
    }
    // p = 1 keeps every token: kept == selected == length, mass ~ 1.
    twl_step_stats st;
    st.struct_size = sizeof(st);
    ASSERT_EQ(twl_runtime_last_step(rt.get(), &st), TWL_OK);
    EXPECT_EQ(st.layer, layer);
    EXPECT_EQ(st.num_seqs, 3);
    std::vector<int32_t> sel(3 * 4), kept(3 * 4), kept_kv(3 * 2);
    std::vector<float> mass(3 * 4);
    ASSERT_EQ(twl_runtime_last_step_heads(rt.get(), sel.data(), kept.data(), mass.data(), 12,
                                          kept_kv.data(), 6),
              TWL_OK)
        << twl_runtime_last_error(rt.get());
    for (int s = 0; s < 3; ++s) {
      for (int h = 0; h < 4; ++h) {
        EXPECT_EQ(sel[s * 4 + h], lens[s] + layer);
        EXPECT_EQ(kept[s * 4 + h], lens[s] + layer);
        EXPECT_NEAR(mass[s * 4 + h], 1.0f, 1e-4f);
      }
      for (int h = 0; h < 2; ++h) EXPECT_EQ(kept_kv[s * 2 + h], lens[s] + layer);
    }
  }
}

TEST(ApiDecode, DefaultTwilightKeepsAPrefixOfMassAndLowerPKeepsFewer) {
  twl_runtime_config c = SmallConfig();
  c.num_layers = 1;
  twilight::RuntimePtr rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  std::mt19937 rng(12);
  twl_seq_id a = -1, b = -1;
  ASSERT_EQ(twl_sequence_create(rt.get(), &a), TWL_OK);
  ASSERT_EQ(AppendRandom(rt.get(), a, 0, 300, 2, 32, &rng), TWL_OK);
  ASSERT_EQ(twl_sequence_fork(rt.get(), a, &b), TWL_OK);  // same context, different p
  const size_t q_elems = size_t(c.num_q_heads) * c.head_dim;
  std::vector<uint16_t> q1 = RandomHalf(&rng, q_elems, 2.0f);  // peaked scores
  std::vector<uint16_t> q(q1);
  q.insert(q.end(), q1.begin(), q1.end());  // both sequences get the same query
  std::vector<uint16_t> out(2 * q_elems);
  const twl_seq_id batch[2] = {a, b};
  const float p[2] = {0.99f, 0.5f};
  ASSERT_EQ(twl_decode(rt.get(), 0, batch, 2, q.data(), out.data(), TWL_MEMORY_HOST, p, nullptr),
            TWL_OK)
      << twl_runtime_last_error(rt.get());
  std::vector<int32_t> sel(8), kept(8), kept_kv(4);
  std::vector<float> mass(8);
  ASSERT_EQ(twl_runtime_last_step_heads(rt.get(), sel.data(), kept.data(), mass.data(), 8,
                                        kept_kv.data(), 4),
            TWL_OK);
  twl_step_stats st;
  st.struct_size = sizeof(st);
  ASSERT_EQ(twl_runtime_last_step(rt.get(), &st), TWL_OK);
  double mean_kept = 0;
  for (int i = 0; i < 8; ++i) {
    EXPECT_GE(sel[i], 1);
    EXPECT_LE(sel[i], 300);
    EXPECT_LE(kept[i], sel[i]);
    EXPECT_GE(kept[i], 1);
    EXPECT_GE(mass[i], (i < 4 ? 0.99f : 0.5f) - 1e-4f) << "a head's own set reaches its p";
    mean_kept += kept[i];
  }
  EXPECT_NEAR(st.mean_kept_tokens, mean_kept / 8, 1e-9);
  for (int h = 0; h < 4; ++h) {
    EXPECT_LE(kept[4 + h], kept[h]) << "p 0.5 keeps no more than p 0.99 on the same scores";
  }
  for (int h = 0; h < 2; ++h) {
    // The KV head attends to the union of its two query heads' sets.
    EXPECT_GE(kept_kv[h], std::max(kept[2 * h], kept[2 * h + 1]));
    EXPECT_LE(kept_kv[h], kept[2 * h] + kept[2 * h + 1]);
  }
  for (float x : ToFloat(out)) EXPECT_TRUE(std::isfinite(x));
}

TEST(ApiDecode, ForkIsCopyOnWrite) {
  twilight::RuntimePtr rt = MakeRuntime(SmallConfig());
  ASSERT_TRUE(rt);
  std::mt19937 rng(13);
  twilight::Sequence parent = twilight::Sequence::Create(rt.get());
  ASSERT_TRUE(parent);
  for (int32_t layer = 0; layer < 2; ++layer) {
    ASSERT_EQ(AppendRandom(rt.get(), parent.id(), layer, 21, 2, 32, &rng), TWL_OK);
  }
  const LayerKv p0 = ReadKv(rt.get(), parent.id(), 0);
  twl_status s = TWL_INTERNAL;
  twilight::Sequence child = parent.Fork(&s);
  ASSERT_EQ(s, TWL_OK);
  EXPECT_TRUE(ReadKv(rt.get(), child.id(), 0) == p0);
  ASSERT_EQ(AppendRandom(rt.get(), child.id(), 0, 5, 2, 32, &rng), TWL_OK);
  ASSERT_EQ(AppendRandom(rt.get(), parent.id(), 0, 2, 2, 32, &rng), TWL_OK);
  const LayerKv c1 = ReadKv(rt.get(), child.id(), 0), p1 = ReadKv(rt.get(), parent.id(), 0);
  EXPECT_EQ(c1.len, 26);
  EXPECT_EQ(p1.len, 23);
  const size_t prefix = size_t(21) * 2 * 32;
  EXPECT_TRUE(std::equal(p0.k.begin(), p0.k.end(), c1.k.begin()));
  EXPECT_TRUE(std::equal(p0.k.begin(), p0.k.end(), p1.k.begin()));
  EXPECT_FALSE(std::equal(c1.k.begin() + prefix, c1.k.begin() + prefix + 64, p1.k.begin() + prefix))
      << "the two continuations are independent";

  // The wrapper frees on scope exit: the pool is empty afterwards.
  child.reset();
  parent.reset();
  twl_memory_usage m;
  m.struct_size = sizeof(m);
  ASSERT_EQ(twl_runtime_memory(rt.get(), &m), TWL_OK);
  EXPECT_EQ(m.host_pool_bytes_used, 0);
}

TEST(ApiDecode, TelemetryOffRefusesPerHeadQuery) {
  twl_runtime_config c = SmallConfig();
  c.collect_telemetry = 0;
  twilight::RuntimePtr rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  std::mt19937 rng(14);
  twilight::Sequence seq = twilight::Sequence::Create(rt.get());
  ASSERT_EQ(AppendRandom(rt.get(), seq.id(), 0, 9, 2, 32, &rng), TWL_OK);
  const std::vector<uint16_t> q = RandomHalf(&rng, 4 * 32);
  std::vector<uint16_t> out(4 * 32);
  const twl_seq_id id = seq.id();
  ASSERT_EQ(
      twl_decode(rt.get(), 0, &id, 1, q.data(), out.data(), TWL_MEMORY_HOST, nullptr, nullptr),
      TWL_OK);
  int32_t kept[4];
  EXPECT_STATUS_WITH_MESSAGE(
      twl_runtime_last_step_heads(rt.get(), nullptr, kept, nullptr, 4, nullptr, 0),
      TWL_FAILED_PRECONDITION, rt.get(), "twl_runtime_last_step_heads");
}

}  // namespace
}  // namespace twl_test

// twl_append_batch on the CPU backend: a batch (ragged counts, zero counts, partial pages,
// forked sequences, FP32 input) leaves every sequence exactly as per-sequence
// twl_sequence_append calls do, decodes the same, and every failure (duplicate or unknown id,
// negative count, pool exhausted by a later entry, null buffers) changes no sequence and
// returns pages it reserved to the pool.
#include <algorithm>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "api_test_util.h"

namespace {

using twl_test::LayerKv;
using twl_test::MakeRuntime;
using twl_test::RandomHalf;
using twl_test::ReadKv;

constexpr int32_t kSeqs = 5;

twl_runtime_config Config(int64_t pool_bytes = 0) {
  twl_runtime_config c = twl_test::SmallConfig();
  c.host_pool_bytes = pool_bytes;
  c.top_p = 0.9f;
  c.selector_budget_tokens = 16;
  return c;
}

// Every sequence's K/V of every layer.
std::vector<LayerKv> Snapshot(const twl_runtime* rt, const std::vector<twl_seq_id>& ids,
                              int32_t layers) {
  std::vector<LayerKv> out;
  for (twl_seq_id id : ids) {
    for (int32_t l = 0; l < layers; ++l) out.push_back(ReadKv(rt, id, l));
  }
  return out;
}

int64_t PoolUsed(const twl_runtime* rt) {
  twl_memory_usage m;
  m.struct_size = sizeof(m);
  EXPECT_EQ(twl_runtime_memory(rt, &m), TWL_OK);
  return m.host_pool_bytes_used;
}

// Two runtimes fed the same tokens: `batch` through twl_append_batch, `single` through one
// twl_sequence_append per sequence.
struct Pair {
  explicit Pair(const twl_runtime_config& c) : cfg(c), batch(MakeRuntime(c)), single(MakeRuntime(c)) {
    for (int32_t i = 0; i < kSeqs; ++i) {
      twl_seq_id a = 0, b = 0;
      EXPECT_EQ(twl_sequence_create(batch.get(), &a), TWL_OK);
      EXPECT_EQ(twl_sequence_create(single.get(), &b), TWL_OK);
      ids_batch.push_back(a);
      ids_single.push_back(b);
    }
  }
  size_t Row() const { return size_t(cfg.num_kv_heads) * cfg.head_dim; }

  // Appends counts[i] random tokens to sequence which[i] of both runtimes (FP16 host).
  void Append(int32_t layer, const std::vector<int32_t>& which, const std::vector<int32_t>& counts,
              std::mt19937* rng) {
    int32_t total = 0;
    for (int32_t n : counts) total += n;
    const std::vector<uint16_t> k = RandomHalf(rng, size_t(total) * Row());
    const std::vector<uint16_t> v = RandomHalf(rng, size_t(total) * Row());
    std::vector<twl_seq_id> seqs;
    for (int32_t w : which) seqs.push_back(ids_batch[size_t(w)]);
    ASSERT_EQ(twl_append_batch(batch.get(), layer, seqs.data(), counts.data(),
                               int32_t(seqs.size()), k.data(), v.data(), TWL_DTYPE_FP16,
                               TWL_MEMORY_HOST, nullptr),
              TWL_OK)
        << twl_runtime_last_error(batch.get());
    size_t at = 0;
    for (size_t i = 0; i < which.size(); ++i) {
      ASSERT_EQ(twl_sequence_append(single.get(), ids_single[size_t(which[i])], layer, counts[i],
                                    k.data() + at * Row(), v.data() + at * Row(), TWL_DTYPE_FP16,
                                    TWL_MEMORY_HOST),
                TWL_OK)
          << twl_runtime_last_error(single.get());
      at += size_t(counts[i]);
    }
  }

  void ExpectEqual() const {
    EXPECT_TRUE(Snapshot(batch.get(), ids_batch, cfg.num_layers) ==
                Snapshot(single.get(), ids_single, cfg.num_layers));
    EXPECT_EQ(PoolUsed(batch.get()), PoolUsed(single.get()));
  }

  twl_runtime_config cfg;
  twilight::RuntimePtr batch, single;
  std::vector<twl_seq_id> ids_batch, ids_single;
};

TEST(ApiAppendBatch, RaggedBatchesEqualPerSequenceAppendsAndDecodeTheSame) {
  Pair p(Config());
  std::mt19937 rng(7);
  for (int32_t layer = 0; layer < 2; ++layer) {
    // Prompts of different lengths (partial last pages), then decode-like steps of one token
    // each, a zero count, and a ragged chunk in the other order.
    p.Append(layer, {0, 1, 2, 3, 4}, {37, 8, 1, 20, 64}, &rng);
    for (int step = 0; step < 3; ++step) p.Append(layer, {0, 1, 2, 3, 4}, {1, 1, 1, 1, 1}, &rng);
    p.Append(layer, {4, 2, 0, 3, 1}, {5, 0, 17, 9, 2}, &rng);
  }
  p.ExpectEqual();

  // The caches are equal, so are the decode steps (same backend, same data).
  const int32_t Hq = p.cfg.num_q_heads, D = p.cfg.head_dim;
  const std::vector<uint16_t> q = RandomHalf(&rng, size_t(kSeqs) * Hq * D);
  std::vector<uint16_t> out_b(q.size()), out_s(q.size());
  for (int32_t layer = 0; layer < 2; ++layer) {
    ASSERT_EQ(twl_decode(p.batch.get(), layer, p.ids_batch.data(), kSeqs, q.data(), out_b.data(),
                         TWL_MEMORY_HOST, nullptr, nullptr),
              TWL_OK);
    ASSERT_EQ(twl_decode(p.single.get(), layer, p.ids_single.data(), kSeqs, q.data(),
                         out_s.data(), TWL_MEMORY_HOST, nullptr, nullptr),
              TWL_OK);
    EXPECT_EQ(out_b, out_s) << "layer " << layer;
  }
}

TEST(ApiAppendBatch, Fp32InputAndForkedSequences) {
  Pair p(Config());
  std::mt19937 rng(11);
  p.Append(0, {0, 1}, {21, 13}, &rng);
  // Forks share the partial last page: the batch copies it (copy-on-write) for both.
  twl_seq_id fb = 0, fs = 0;
  ASSERT_EQ(twl_sequence_fork(p.batch.get(), p.ids_batch[0], &fb), TWL_OK);
  ASSERT_EQ(twl_sequence_fork(p.single.get(), p.ids_single[0], &fs), TWL_OK);
  const int32_t counts[3] = {3, 4, 2};
  const size_t total = 9;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> k32(total * p.Row()), v32(total * p.Row());
  for (float& x : k32) x = nd(rng);
  for (float& x : v32) x = nd(rng);
  const twl_seq_id sb[3] = {p.ids_batch[0], fb, p.ids_batch[1]};
  ASSERT_EQ(twl_append_batch(p.batch.get(), 0, sb, counts, 3, k32.data(), v32.data(),
                             TWL_DTYPE_FP32, TWL_MEMORY_HOST, nullptr),
            TWL_OK)
      << twl_runtime_last_error(p.batch.get());
  const twl_seq_id ss[3] = {p.ids_single[0], fs, p.ids_single[1]};
  size_t at = 0;
  for (int i = 0; i < 3; ++i) {
    ASSERT_EQ(twl_sequence_append(p.single.get(), ss[i], 0, counts[i], k32.data() + at * p.Row(),
                                  v32.data() + at * p.Row(), TWL_DTYPE_FP32, TWL_MEMORY_HOST),
              TWL_OK);
    at += size_t(counts[i]);
  }
  p.ExpectEqual();
  EXPECT_TRUE(ReadKv(p.batch.get(), fb, 0) == ReadKv(p.single.get(), fs, 0));
  EXPECT_FALSE(ReadKv(p.batch.get(), fb, 0) == ReadKv(p.batch.get(), p.ids_batch[0], 0));
}

TEST(ApiAppendBatch, FailuresChangeNoSequence) {
  auto rt = MakeRuntime(Config());
  std::mt19937 rng(3);
  std::vector<twl_seq_id> ids(3);
  for (twl_seq_id& id : ids) ASSERT_EQ(twl_sequence_create(rt.get(), &id), TWL_OK);
  for (size_t i = 0; i < ids.size(); ++i) {
    ASSERT_EQ(twl_test::AppendRandom(rt.get(), ids[i], 0, 5 + int32_t(i), 2, 32, &rng), TWL_OK);
  }
  const std::vector<LayerKv> before = Snapshot(rt.get(), ids, 2);
  const int64_t used = PoolUsed(rt.get());
  const std::vector<uint16_t> k = RandomHalf(&rng, 64 * 2 * 32), v = RandomHalf(&rng, 64 * 2 * 32);
  twl_runtime* r = rt.get();
  auto batch = [&](std::vector<twl_seq_id> s, std::vector<int32_t> c, const void* kk,
                   const void* vv, int32_t layer = 0,
                   twl_memory_space space = TWL_MEMORY_HOST) {
    return twl_append_batch(r, layer, s.data(), c.data(), int32_t(s.size()), kk, vv,
                            TWL_DTYPE_FP16, space, nullptr);
  };
  const twl_seq_id a = ids[0], b = ids[1], c = ids[2];
  EXPECT_STATUS_WITH_MESSAGE(batch({a, b, a}, {1, 2, 3}, k.data(), v.data()),
                             TWL_INVALID_ARGUMENT, r, "twl_append_batch");
  EXPECT_NE(std::string(twl_runtime_last_error(r)).find("twice"), std::string::npos);
  EXPECT_STATUS_WITH_MESSAGE(batch({a, 999, c}, {1, 2, 3}, k.data(), v.data()), TWL_NOT_FOUND, r,
                             "twl_append_batch");
  EXPECT_NE(std::string(twl_runtime_last_error(r)).find("999"), std::string::npos);
  // An unknown id fails even with a zero count.
  EXPECT_STATUS_WITH_MESSAGE(batch({a, 999}, {1, 0}, k.data(), v.data()), TWL_NOT_FOUND, r,
                             "twl_append_batch");
  EXPECT_STATUS_WITH_MESSAGE(batch({a, b}, {1, -1}, k.data(), v.data()), TWL_INVALID_ARGUMENT, r,
                             "twl_append_batch");
  EXPECT_STATUS_WITH_MESSAGE(batch({a, b}, {1, 1}, nullptr, v.data()), TWL_INVALID_ARGUMENT, r,
                             "twl_append_batch");
  EXPECT_STATUS_WITH_MESSAGE(batch({a, b}, {1, 1}, k.data(), v.data(), 2), TWL_INVALID_ARGUMENT,
                             r, "twl_append_batch");
  EXPECT_STATUS_WITH_MESSAGE(batch({a, b}, {1, 1}, k.data(), v.data(), 0, TWL_MEMORY_DEVICE),
                             TWL_UNSUPPORTED, r, "twl_append_batch");
  const int32_t one = 1;
  EXPECT_STATUS_WITH_MESSAGE(twl_append_batch(r, 0, nullptr, &one, 1, k.data(), v.data(),
                                              TWL_DTYPE_FP16, TWL_MEMORY_HOST, nullptr),
                             TWL_INVALID_ARGUMENT, r, "twl_append_batch");
  EXPECT_STATUS_WITH_MESSAGE(twl_append_batch(r, 0, &a, &one, -1, k.data(), v.data(),
                                              TWL_DTYPE_FP16, TWL_MEMORY_HOST, nullptr),
                             TWL_INVALID_ARGUMENT, r, "twl_append_batch");
  EXPECT_STATUS_WITH_MESSAGE(twl_append_batch(r, 0, &a, &one, 1, k.data(), v.data(),
                                              twl_dtype(7), TWL_MEMORY_HOST, nullptr),
                             TWL_INVALID_ARGUMENT, r, "twl_append_batch");
  EXPECT_EQ(twl_append_batch(nullptr, 0, &a, &one, 1, k.data(), v.data(), TWL_DTYPE_FP16,
                             TWL_MEMORY_HOST, nullptr),
            TWL_INVALID_ARGUMENT);
  // No-ops: an empty batch (NULL arrays allowed), only zero counts (NULL k/v allowed).
  EXPECT_EQ(twl_append_batch(r, 0, nullptr, nullptr, 0, nullptr, nullptr, TWL_DTYPE_FP16,
                             TWL_MEMORY_HOST, nullptr),
            TWL_OK);
  EXPECT_EQ(batch({a, b, c}, {0, 0, 0}, nullptr, nullptr), TWL_OK) << twl_runtime_last_error(r);
  EXPECT_TRUE(Snapshot(r, ids, 2) == before);
  EXPECT_EQ(PoolUsed(r), used);
}

TEST(ApiAppendBatch, PoolExhaustedByALaterEntryRollsBackTheEarlierOnes) {
  // 40 pages of 8 tokens (2 KV heads x 32 channels x 2 (K, V) x 2 bytes x 8 rows = 2 KiB).
  auto rt = MakeRuntime(Config(40 * 2048));
  std::mt19937 rng(5);
  std::vector<twl_seq_id> ids(4);
  for (twl_seq_id& id : ids) ASSERT_EQ(twl_sequence_create(rt.get(), &id), TWL_OK);
  ASSERT_EQ(twl_test::AppendRandom(rt.get(), ids[0], 0, 12, 2, 32, &rng), TWL_OK);  // 2 pages
  const std::vector<LayerKv> before = Snapshot(rt.get(), ids, 2);
  const int64_t used = PoolUsed(rt.get());
  // 38 pages free: entries 0..2 need 1 + 16 + 16 = 33 of them, entry 3 needs 16 more.
  const std::vector<int32_t> counts = {5, 128, 128, 128};
  const std::vector<uint16_t> k = RandomHalf(&rng, 389 * 64), v = RandomHalf(&rng, 389 * 64);
  EXPECT_STATUS_WITH_MESSAGE(twl_append_batch(rt.get(), 0, ids.data(), counts.data(), 4, k.data(),
                                              v.data(), TWL_DTYPE_FP16, TWL_MEMORY_HOST, nullptr),
                             TWL_CAPACITY_EXHAUSTED, rt.get(), "twl_append_batch");
  EXPECT_NE(std::string(twl_runtime_last_error(rt.get())).find("entry 3"), std::string::npos)
      << twl_runtime_last_error(rt.get());
  EXPECT_TRUE(Snapshot(rt.get(), ids, 2) == before);
  EXPECT_EQ(PoolUsed(rt.get()), used);
  // The pages came back: the first three entries alone fit now, and equal single appends.
  EXPECT_EQ(twl_append_batch(rt.get(), 0, ids.data(), counts.data(), 3, k.data(), v.data(),
                             TWL_DTYPE_FP16, TWL_MEMORY_HOST, nullptr),
            TWL_OK)
      << twl_runtime_last_error(rt.get());
  const size_t row = 64;
  LayerKv want0 = before[0];
  want0.len += 5;
  want0.k.insert(want0.k.end(), k.begin(), k.begin() + 5 * row);
  want0.v.insert(want0.v.end(), v.begin(), v.begin() + 5 * row);
  EXPECT_TRUE(ReadKv(rt.get(), ids[0], 0) == want0);
  const LayerKv got2 = ReadKv(rt.get(), ids[2], 0);
  ASSERT_EQ(got2.len, 128);
  EXPECT_TRUE(std::equal(got2.k.begin(), got2.k.end(), k.begin() + 133 * row));
  EXPECT_TRUE(std::equal(got2.v.begin(), got2.v.end(), v.begin() + 133 * row));
}

TEST(ApiAppendBatch, CppWrapper) {
  auto rt = MakeRuntime(Config());
  twilight::Sequence s = twilight::Sequence::Create(rt.get());
  ASSERT_TRUE(s);
  std::mt19937 rng(1);
  const std::vector<uint16_t> k = RandomHalf(&rng, 3 * 64), v = RandomHalf(&rng, 3 * 64);
  const twl_seq_id id = s.id();
  const int32_t n = 3;
  EXPECT_EQ(twilight::AppendBatch(rt.get(), 1, &id, &n, 1, k.data(), v.data(), TWL_DTYPE_FP16),
            TWL_OK);
  int32_t len = 0;
  EXPECT_EQ(s.Length(1, &len), TWL_OK);
  EXPECT_EQ(len, 3);
}

}  // namespace

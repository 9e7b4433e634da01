// Reference attention: dense equals an independent FP64 computation; sparse over all tokens
// equals dense; over the oracle top-p set the error shrinks as p -> 1.
#include <algorithm>
#include <cmath>
#include <random>

#include "gtest/gtest.h"
#include "pipeline/attend/sparse/cpu/sparse_attend_cpu.h"
#include "reference/oracle_top_p.h"
#include "support/ref_store.h"

namespace twl {
namespace {

// Attention straight from the appended arrays in double: no pages, no views.
std::vector<float> NaiveAttention(const testing::RefStore& st) {
  const PageGeometry& g = st.g;
  std::vector<float> out;
  for (size_t s = 0; s < st.seq_len.size(); ++s) {
    for (int32_t qh = 0; qh < st.num_q_heads; ++qh) {
      const int32_t h = qh / st.group();
      const int32_t len = st.seq_len[s];
      std::vector<double> w(static_cast<size_t>(len));
      double mx = -1e300;
      for (int32_t t = 0; t < len; ++t) {
        double dot = 0;
        for (int32_t j = 0; j < g.head_dim; ++j) {
          dot += double(HalfToFloat(st.q[(s * size_t(st.num_q_heads) + size_t(qh)) * size_t(g.head_dim) + size_t(j)])) *
                 HalfToFloat(st.k_in[s][(size_t(t) * size_t(g.num_kv_heads) + size_t(h)) * size_t(g.head_dim) + size_t(j)]);
        }
        w[size_t(t)] = dot / std::sqrt(double(g.head_dim));
        mx = std::max(mx, w[size_t(t)]);
      }
      double sum = 0;
      for (auto& x : w) sum += (x = std::exp(x - mx));
      for (int32_t j = 0; j < g.head_dim; ++j) {
        double acc = 0;
        for (int32_t t = 0; t < len; ++t) {
          acc += w[size_t(t)] * HalfToFloat(st.v_in[s][(size_t(t) * size_t(g.num_kv_heads) + size_t(h)) * size_t(g.head_dim) + size_t(j)]);
        }
        out.push_back(float(acc / sum));
      }
    }
  }
  return out;
}

TEST(Attention, DenseMatchesIndependentFp64AndSparseOverAllMatchesDense) {
  for (int32_t d : {64, 128}) {
    PageGeometry g{16, d, 2, 4};
    auto st = testing::MakeRandomStore(g, 8, {1, 17, 300, 1000},
                                       ::testing::UnitTest::GetInstance()->random_seed() + d);
    BatchView b = st.Batch();
    std::vector<fp16_t> dense(st.q.size());
    ASSERT_TRUE(DenseAttentionRef(g, b, st.Query(), st.Kv(), OutputView{dense.data()}).ok());
    const auto naive = NaiveAttention(st);
    // FP32 accumulation + FP16 output: relative error far under 1e-3.
    EXPECT_LE(testing::RelError(testing::ToFloat(dense), naive), 1e-3);
    // Kept = every token.
    const int32_t max_kept = b.max_pages * g.page_size;
    std::vector<int32_t> tok(static_cast<size_t>(b.num_seqs * g.num_kv_heads * max_kept)), cnt(size_t(b.num_seqs * g.num_kv_heads));
    for (int32_t s = 0; s < b.num_seqs; ++s) {
      for (int32_t h = 0; h < g.num_kv_heads; ++h) {
        cnt[size_t(s * g.num_kv_heads + h)] = b.seq_len[s];
        for (int32_t t = 0; t < b.seq_len[s]; ++t) tok[size_t((s * g.num_kv_heads + h) * max_kept + t)] = t;
      }
    }
    std::vector<float> sparse(st.q.size());
    ASSERT_TRUE(SparseAttentionRefF32(g, b, st.Query(), st.Kv(), KeptView{tok.data(), cnt.data(), max_kept},
                                      sparse.data()).ok());
    EXPECT_LE(testing::RelError(sparse, naive), 1e-5);
    EXPECT_LE(testing::RelError(testing::ToFloat(dense), sparse), 1e-3);
  }
}

// The GPU cache's view (cache/gpu_page_cache.h): resident blocks through slot_of_block,
// the others (-1) read in place from miss_kv. Where bytes come from must not change the
// output: bit-identical to the identity view over the same blocks.
TEST(Attention, PartlyResidentCacheViewEqualsIdentityView) {
  PageGeometry g{16, 128, 2, 4};
  auto st = testing::MakeRandomStore(g, 8, {300, 1000}, ::testing::UnitTest::GetInstance()->random_seed());
  BatchView b = st.Batch();
  const int64_t num_blocks = st.num_pages * g.num_kv_heads;
  const int64_t block_elems = g.FpBlockElems();
  // Every third block resident, in shuffled slots of a separate slot array.
  std::mt19937_64 rng(7);
  std::vector<int32_t> slot_of_block(static_cast<size_t>(num_blocks), -1), resident;
  for (int64_t blk = 0; blk < num_blocks; ++blk) {
    if (blk % 3 == 0) resident.push_back(int32_t(blk));
  }
  std::shuffle(resident.begin(), resident.end(), rng);
  std::vector<fp16_t> slots(resident.size() * size_t(block_elems));
  for (size_t sl = 0; sl < resident.size(); ++sl) {
    slot_of_block[size_t(resident[sl])] = int32_t(sl);
    std::copy_n(st.kv.begin() + resident[sl] * block_elems, block_elems,
                slots.begin() + int64_t(sl) * block_elems);
  }
  const FpKvView cached{slots.data(), slot_of_block.data(), st.kv.data()};
  const int32_t max_kept = b.max_pages * g.page_size;
  std::vector<int32_t> tok(static_cast<size_t>(b.num_seqs * g.num_kv_heads * max_kept)),
      cnt(size_t(b.num_seqs * g.num_kv_heads));
  for (int32_t s = 0; s < b.num_seqs; ++s) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      int32_t n = 0;
      for (int32_t t = 0; t < b.seq_len[s]; t += 1 + int32_t(rng() % 5)) {
        tok[size_t((s * g.num_kv_heads + h) * max_kept + n++)] = t;
      }
      cnt[size_t(s * g.num_kv_heads + h)] = n;
    }
  }
  const KeptView kept{tok.data(), cnt.data(), max_kept};
  std::vector<float> a(st.q.size()), c(st.q.size());
  ASSERT_TRUE(SparseAttentionRefF32(g, b, st.Query(), st.Kv(), kept, a.data()).ok());
  ASSERT_TRUE(SparseAttentionRefF32(g, b, st.Query(), cached, kept, c.data()).ok());
  EXPECT_EQ(a, c);
}

TEST(Attention, OracleTopPErrorShrinksAsPGrowsToOne) {
  PageGeometry g{16, 128, 2, 4};
  auto st = testing::MakeRandomStore(g, 8, {2000, 777}, ::testing::UnitTest::GetInstance()->random_seed(), 1.5f);
  BatchView b = st.Batch();
  std::vector<float> dense;
  {
    const int32_t max_kept = b.max_pages * g.page_size;
    std::vector<int32_t> tok(static_cast<size_t>(b.num_seqs * g.num_kv_heads * max_kept)), cnt(size_t(b.num_seqs * g.num_kv_heads));
    ASSERT_TRUE(OracleTopPRef(g, b, st.Query(), st.Kv(), 1.0f, KeptView{tok.data(), cnt.data(), max_kept}, {}).ok());
    dense.resize(st.q.size());
    ASSERT_TRUE(SparseAttentionRefF32(g, b, st.Query(), st.Kv(), KeptView{tok.data(), cnt.data(), max_kept},
                                      dense.data()).ok());
  }
  double prev = 1e9;
  for (float p : {0.5f, 0.8f, 0.9f, 0.95f, 0.99f, 1.0f}) {
    const int32_t max_kept = b.max_pages * g.page_size;
    std::vector<int32_t> tok(static_cast<size_t>(b.num_seqs * g.num_kv_heads * max_kept)), cnt(size_t(b.num_seqs * g.num_kv_heads));
    KeptView kept{tok.data(), cnt.data(), max_kept};
    ASSERT_TRUE(OracleTopPRef(g, b, st.Query(), st.Kv(), p, kept, {}).ok());
    std::vector<float> mass(static_cast<size_t>(b.num_seqs * b.num_q_heads));
    ASSERT_TRUE(TrueKeptMassRef(g, b, st.Query(), st.Kv(), kept, mass.data()).ok());
    for (float m : mass) EXPECT_GE(m, p - 1e-5f);
    std::vector<float> out(st.q.size());
    ASSERT_TRUE(SparseAttentionRefF32(g, b, st.Query(), st.Kv(), kept, out.data()).ok());
    const double err = testing::RelError(out, dense);
    EXPECT_LE(err, prev * 1.05 + 1e-6) << "p " << p;
    prev = err;
    if (p == 1.0f) {
      EXPECT_LE(err, 1e-6);
    }
  }
}

}  // namespace
}  // namespace twl

// The CPU executor's grouped, chunked attention against the per-head reference: GQA groups of
// 1-8, head dims with and without a tail past the 8-wide sums, kept lists longer than a
// chunk, empty lists, dense, BF16 K/V, an unaligned output, bad input.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "pipeline/attend/sparse/cpu/grouped_attend_cpu.h"
#include "pipeline/attend/sparse/cpu/sparse_attend_cpu.h"
#include "support/ref_store.h"

namespace twl {
namespace {

uint64_t FreshSeed() { return ::testing::UnitTest::GetInstance()->random_seed(); }

// Kept lists: a random subset per unit of a random density, ascending; unit 1 empty.
std::vector<int32_t> RandomKept(const BatchView& b, const PageGeometry& g, int32_t max_kept,
                                std::mt19937_64& rng, std::vector<int32_t>* count) {
  std::vector<int32_t> tok(size_t(b.num_seqs) * size_t(g.num_kv_heads) * size_t(max_kept));
  count->assign(size_t(b.num_seqs) * size_t(g.num_kv_heads), 0);
  for (int32_t u = 0; u < b.num_seqs * g.num_kv_heads; ++u) {
    if (u == 1) continue;
    const double keep = std::uniform_real_distribution<double>(0.05, 1.0)(rng);
    int32_t n = 0;
    for (int32_t t = 0; t < b.seq_len[u / g.num_kv_heads]; ++t) {
      if (std::uniform_real_distribution<double>(0, 1)(rng) < keep) {
        tok[size_t(u) * size_t(max_kept) + size_t(n++)] = t;
      }
    }
    (*count)[size_t(u)] = n;
  }
  return tok;
}

// Each output within FP16's rounding of the reference's FP32 value (plus FP32 reordering).
void ExpectClose(const std::vector<fp16_t>& got, const std::vector<float>& want,
                 const std::string& what) {
  ASSERT_EQ(got.size(), want.size());
  double scale = 0;
  for (float w : want) scale = std::max(scale, double(std::fabs(w)));
  int32_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::fabs(double(HalfToFloat(got[i])) - double(want[i]));
    if (!(err <= std::ldexp(std::fabs(double(want[i])), -10) + 1e-5 * scale) && bad++ < 5) {
      ADD_FAILURE() << what << " element " << i << ": " << HalfToFloat(got[i]) << " vs "
                    << want[i];
    }
  }
  EXPECT_EQ(bad, 0) << what;
}

TEST(GroupedAttention, MatchesThePerHeadReference) {
  std::mt19937_64 rng(FreshSeed());
  for (int32_t group : {1, 4, 8}) {
    for (int32_t d : {64, 128, 38}) {
      for (int32_t dtype : {kKvFp16, kKvBf16}) {
        if (dtype == kKvBf16 && d != 128) continue;
        PageGeometry g{16, d, 2, 4};
        g.kv_dtype = dtype;
        const std::string what = "group " + std::to_string(group) + " d " + std::to_string(d) +
                                 " dtype " + std::to_string(dtype);
        auto st = testing::MakeRandomStore(g, 2 * group, {1, 17, 2500, 1030}, rng());
        const BatchView b = st.Batch();
        const int32_t max_kept = b.max_pages * g.page_size;
        std::vector<int32_t> cnt;
        std::vector<int32_t> tok = RandomKept(b, g, max_kept, rng, &cnt);
        const KeptView kept{tok.data(), cnt.data(), max_kept};
        std::vector<float> want(st.q.size());
        ASSERT_TRUE(SparseAttentionRefF32(g, b, st.Query(), st.Kv(), kept, want.data()).ok());
        std::vector<fp16_t> got(st.q.size(), 0x7e00u);
        ASSERT_TRUE(
            GroupedAttentionCpu(g, b, st.Query(), st.Kv(), &kept, OutputView{got.data()}).ok());
        ExpectClose(got, want, what + " sparse");
        // Unit 1 kept nothing: its heads' output is zero, as the reference's.
        for (int32_t j = 0; j < group * d; ++j) {
          ASSERT_EQ(got[size_t(group * d + j)], 0u) << what;
        }
        // Dense: every token (the reference over a kept list of all of them).
        std::vector<int32_t> all(tok.size()), all_cnt(cnt.size());
        for (int32_t u = 0; u < int32_t(all_cnt.size()); ++u) {
          all_cnt[size_t(u)] = b.seq_len[u / g.num_kv_heads];
          for (int32_t t = 0; t < all_cnt[size_t(u)]; ++t) all[size_t(u) * size_t(max_kept) + size_t(t)] = t;
        }
        ASSERT_TRUE(SparseAttentionRefF32(g, b, st.Query(), st.Kv(),
                                          KeptView{all.data(), all_cnt.data(), max_kept},
                                          want.data()).ok());
        ASSERT_TRUE(
            GroupedAttentionCpu(g, b, st.Query(), st.Kv(), nullptr, OutputView{got.data()}).ok());
        ExpectClose(got, want, what + " dense");
      }
    }
  }
}

TEST(GroupedAttention, WritesAnUnalignedOutputAndRefusesBadInput) {
  PageGeometry g{16, 64, 2, 4};
  auto st = testing::MakeRandomStore(g, 4, {40, 300}, FreshSeed());
  const BatchView b = st.Batch();
  std::vector<fp16_t> aligned(st.q.size());
  ASSERT_TRUE(
      GroupedAttentionCpu(g, b, st.Query(), st.Kv(), nullptr, OutputView{aligned.data()}).ok());
  std::vector<unsigned char> raw(st.q.size() * 2 + 1);
  fp16_t* odd = reinterpret_cast<fp16_t*>(raw.data() + 1);
  ASSERT_TRUE(GroupedAttentionCpu(g, b, st.Query(), st.Kv(), nullptr, OutputView{odd}).ok());
  EXPECT_EQ(std::memcmp(raw.data() + 1, aligned.data(), aligned.size() * 2), 0);
  EXPECT_EQ(GroupedAttentionCpu(g, b, QueryView{nullptr}, st.Kv(), nullptr,
                                OutputView{aligned.data()}).code(),
            absl::StatusCode::kInvalidArgument);
  const int32_t max_kept = b.max_pages * g.page_size;
  std::vector<int32_t> tok(size_t(b.num_seqs * g.num_kv_heads * max_kept), 0),
      cnt(size_t(b.num_seqs * g.num_kv_heads), 1);
  tok[0] = 40;  // past sequence 0's 40 tokens
  const KeptView kept{tok.data(), cnt.data(), max_kept};
  EXPECT_EQ(GroupedAttentionCpu(g, b, st.Query(), st.Kv(), &kept, OutputView{aligned.data()}).code(),
            absl::StatusCode::kInvalidArgument);
}

// The branch-free row conversion is HalfToFloat on every FP16 bit pattern.
TEST(GroupedAttention, BranchlessHalfConversionIsExactOnEveryPattern) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float a = HalfToFloatBranchless(fp16_t(h)), b = HalfToFloat(fp16_t(h));
    ASSERT_EQ(FloatToBits(a), FloatToBits(b)) << std::hex << h;
  }
}

}  // namespace
}  // namespace twl

// The Double Sparsity selector's CPU reference: its channel choice from known statistics
// (spread from block sums, weighted by q^2), its metadata hook against a direct sum, planted
// heavy tokens' pages found at the exact budget with the channels named, and the registry.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <vector>

#include "gtest/gtest.h"
#include "pipeline/select/double_sparsity/ds_selector.h"
#include "pipeline/select/selector.h"
#include "runtime/cpu/append_cpu.h"

namespace twl {
namespace {

TEST(DoubleSparsity, ChoosesTheLargestChannelsTiesToTheLower) {
  // From block sums: channel 0 has a large constant offset (no spread), channel 1 spreads.
  {
    PageGeometry g;
    g.page_size = 2;
    g.head_dim = 2;
    g.num_kv_heads = 1;
    // Two pages of 2 tokens: k0 = 5, 5 | 5, 5; k1 = -1, 1 | -1, 1.
    std::vector<float> meta = {10.0f, 0.0f, 50.0f, 2.0f, 10.0f, 0.0f, 50.0f, 2.0f};
    const std::vector<int32_t> len = {4}, table = {0, 1};
    QuantKView qk;
    qk.meta = reinterpret_cast<uint8_t*>(meta.data());
    qk.meta_bytes = DsMetadataBytesPerBlock(g);
    const BatchView b{1, 1, len.data(), table.data(), 2};
    const std::vector<float> spread = DsChannelSpreadRef(g, b, qk, 0, 0);
    EXPECT_EQ(spread, (std::vector<float>{0.0f, 4.0f}));  // n * variance
    EXPECT_EQ(DsChooseChannelsRef(spread.data(), 2, 1), (std::vector<int32_t>{1}));
  }
  const std::vector<float> sums = {1.0f, 9.0f, 3.0f, 9.0f, 0.5f, 7.0f, 3.0f, 2.0f};
  EXPECT_EQ(DsChooseChannelsRef(sums.data(), 8, 2), (std::vector<int32_t>{1, 3}));
  EXPECT_EQ(DsChooseChannelsRef(sums.data(), 8, 3), (std::vector<int32_t>{1, 3, 5}));
  // 3.0 twice at channels 2 and 6: the lower one wins the last place.
  EXPECT_EQ(DsChooseChannelsRef(sums.data(), 8, 4), (std::vector<int32_t>{1, 2, 3, 5}));
  EXPECT_EQ(DsChooseChannelsRef(sums.data(), 8, 8).size(), 8u);
}

TEST(DoubleSparsity, RegisteredWithItsOwnMetadata) {
  absl::StatusOr<const Selector*> s = FindSelector(SelectorKind::kDoubleSparsity);
  ASSERT_TRUE(s.ok()) << s.status();
  PageGeometry g;
  g.head_dim = 128;
  EXPECT_EQ((*s)->kind(), SelectorKind::kDoubleSparsity);
  EXPECT_EQ((*s)->OwnMetadataBytesPerBlock(g), 2 * 128 * 4);  // sums of k and of k^2
  EXPECT_EQ(DsNumChannels(g), 16);
  // Quest and Full keep no metadata of their own: their stores are unchanged.
  EXPECT_EQ((*FindSelector(SelectorKind::kQuest))->OwnMetadataBytesPerBlock(g), 0);
  EXPECT_EQ((*FindSelector(SelectorKind::kFull))->OwnMetadataBytesPerBlock(g), 0);
}

// One sequence of identity-addressed pages in host vectors, with the selector's metadata.
struct Store {
  PageGeometry g;
  int32_t num_q_heads;
  int32_t len;
  std::vector<fp16_t> kv, scale, zero, kmin, kmax;
  std::vector<uint8_t> range;  // channel ranges (k_scheme 1)
  std::vector<uint8_t> codes, meta;
  std::vector<int32_t> seq_len, table;

  Store(const PageGeometry& geo, int32_t q_heads, int32_t tokens)
      : g(geo), num_q_heads(q_heads), len(tokens) {
    const int32_t pages = (len + g.page_size - 1) / g.page_size;
    const int64_t blocks = int64_t(pages) * g.num_kv_heads;
    kv.resize(static_cast<size_t>(blocks * g.FpBlockElems()));
    codes.resize(static_cast<size_t>(blocks * g.CodeBlockBytes()));
    scale.resize(static_cast<size_t>(blocks * g.page_size));
    zero.resize(static_cast<size_t>(blocks * g.page_size));
    kmin.resize(static_cast<size_t>(blocks * g.head_dim));
    kmax.resize(static_cast<size_t>(blocks * g.head_dim));
    range.resize(static_cast<size_t>(blocks * g.RangeBlockBytes()));
    meta.resize(static_cast<size_t>(blocks * DsMetadataBytesPerBlock(g)));
    seq_len = {len};
    table.resize(static_cast<size_t>(pages));
    std::iota(table.begin(), table.end(), 0);
  }
  QuantKView Quant() {
    QuantKView q{codes.data(), scale.data(), zero.data(), kmin.data(), kmax.data()};
    q.range = range.empty() ? nullptr : range.data();
    q.meta = meta.data();
    q.meta_bytes = DsMetadataBytesPerBlock(g);
    return q;
  }
  FpKvView Kv() { return FpKvView{kv.data(), nullptr}; }
  BatchView Batch() const {
    BatchView b;
    b.num_seqs = 1;
    b.num_q_heads = num_q_heads;
    b.seq_len = seq_len.data();
    b.page_table = table.data();
    b.max_pages = int32_t(table.size());
    return b;
  }
  // Appends k ([len][num_kv_heads][head_dim] floats) through AppendRef and the hook.
  void Append(const std::vector<float>& k) {
    std::vector<fp16_t> k16(k.size()), v16(k.size(), FloatToHalf(0.0f));
    for (size_t i = 0; i < k.size(); ++i) k16[i] = FloatToHalf(k[i]);
    std::vector<int32_t> page(static_cast<size_t>(len)), slot(static_cast<size_t>(len));
    for (int32_t t = 0; t < len; ++t) {
      page[size_t(t)] = t / g.page_size;
      slot[size_t(t)] = t % g.page_size;
    }
    AppendView in;
    in.num_tokens = len;
    in.k = k16.data();
    in.v = v16.data();
    in.page_id = page.data();
    in.slot = slot.data();
    ASSERT_TRUE(AppendRef(g, in, Kv(), Quant()).ok());
    ASSERT_TRUE(DoubleSparsitySelector().UpdateMetadataOnHost(g, in, Kv(), Quant()).ok());
  }
};

TEST(DoubleSparsity, MetadataIsThePerChannelSumsOfKAndKSquared) {
  PageGeometry g;
  g.page_size = 16;
  g.head_dim = 32;
  g.num_kv_heads = 2;
  Store st(g, 2, 37);  // the last page holds 5 rows
  std::mt19937 rng(5);
  std::normal_distribution<float> dist;
  std::vector<float> k(static_cast<size_t>(st.len) * g.num_kv_heads * g.head_dim);
  for (float& x : k) x = HalfToFloat(FloatToHalf(dist(rng)));
  st.Append(k);
  for (int32_t p = 0; p < 3; ++p) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      const float* m = reinterpret_cast<const float*>(st.Quant().Meta(g.BlockId(p, h)));
      for (int32_t c = 0; c < g.head_dim; ++c) {
        double s1 = 0.0, s2 = 0.0;
        for (int32_t t = p * 16; t < std::min(st.len, p * 16 + 16); ++t) {
          const double x = k[(size_t(t) * g.num_kv_heads + size_t(h)) * g.head_dim + size_t(c)];
          s1 += x;
          s2 += x * x;
        }
        EXPECT_NEAR(m[c], s1, 1e-4 * (1.0 + std::fabs(s1))) << "page " << p << " head " << h;
        EXPECT_NEAR(m[g.head_dim + c], s2, 1e-4 * (1.0 + s2)) << "page " << p << " head " << h;
      }
    }
  }
}

// K: small noise everywhere, outlier channels of magnitude 2 with random signs (so they
// vary most); in a few
// planted pages one token's outlier channels point along q (magnitude 4). q is +-1 on the
// outlier channels and small elsewhere: over the outlier channels only the planted tokens
// stand out (32 against at most 16, well beyond the INT4 error).
struct Planted {
  Store st;
  std::vector<int32_t> outliers, heavy;
  std::vector<fp16_t> q;
};

Planted MakePlanted(int32_t k_scheme, bool plant_on_outliers, uint64_t seed) {
  PageGeometry g;
  g.page_size = 16;
  g.head_dim = 64;
  g.num_kv_heads = 2;
  g.k_bits = 4;
  g.k_scheme = k_scheme;
  Planted pl{Store(g, 4, 40 * 16 - 5), {5, 12, 30, 33, 47, 50, 58, 63}, {7, 13, 21, 34}, {}};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> noise(0.0f, 0.3f);
  std::bernoulli_distribution coin;
  const int32_t D = g.head_dim, H = g.num_kv_heads;
  std::vector<float> sign(static_cast<size_t>(H * D));
  for (float& s : sign) s = coin(rng) ? 1.0f : -1.0f;
  std::vector<bool> is_out(static_cast<size_t>(D), false);
  for (int32_t c : pl.outliers) is_out[size_t(c)] = true;
  // Channels that are not outliers (for the control: plant there instead).
  std::vector<int32_t> plain;
  for (int32_t c = 0; c < D; ++c) {
    if (!is_out[size_t(c)]) plain.push_back(c);
  }
  std::vector<float> k(static_cast<size_t>(pl.st.len) * H * D);
  for (int32_t t = 0; t < pl.st.len; ++t) {
    for (int32_t h = 0; h < H; ++h) {
      float* row = k.data() + (size_t(t) * H + size_t(h)) * D;
      for (int32_t c = 0; c < D; ++c) row[c] = is_out[size_t(c)] ? (coin(rng) ? 2.0f : -2.0f) : noise(rng);
      const int32_t page = t / g.page_size;
      if (std::find(pl.heavy.begin(), pl.heavy.end(), page) != pl.heavy.end() &&
          t % g.page_size == (page * 7) % g.page_size) {
        const std::vector<int32_t>& where = plant_on_outliers ? pl.outliers : plain;
        for (size_t i = 0; i < pl.outliers.size(); ++i) {
          const int32_t c = where[plant_on_outliers ? i : i * 5];
          row[c] = 4.0f * sign[size_t(h * D + c)];
        }
      }
    }
  }
  pl.st.Append(k);
  pl.q.resize(static_cast<size_t>(pl.st.num_q_heads) * D);
  const int32_t group = pl.st.num_q_heads / H;
  std::normal_distribution<float> qn(0.0f, 1.0f);
  for (int32_t qh = 0; qh < pl.st.num_q_heads; ++qh) {
    const int32_t h = qh / group;
    for (int32_t c = 0; c < D; ++c) {
      const bool plant_channel =
          plant_on_outliers ? is_out[size_t(c)]
                            : std::find(plain.begin(), plain.end(), c) - plain.begin() < 40 &&
                                  (std::find(plain.begin(), plain.end(), c) - plain.begin()) % 5 == 0;
      pl.q[size_t(qh) * D + size_t(c)] =
          FloatToHalf(plant_channel ? sign[size_t(h * D + c)] : 0.1f * qn(rng));
    }
  }
  return pl;
}

std::vector<std::vector<int32_t>> Select(Planted& pl, int32_t budget) {
  SelectorParams params;
  params.kind = SelectorKind::kDoubleSparsity;
  params.budget_pages = budget;
  params.sink_pages = 1;
  const BatchView b = pl.st.Batch();
  const int32_t stride = SelectStride(params, b.max_pages);
  const int32_t H = pl.st.g.num_kv_heads;
  std::vector<int32_t> pages(static_cast<size_t>(H * stride)), count(static_cast<size_t>(H));
  SelectionView out{pages.data(), count.data(), stride};
  const absl::Status s =
      DoubleSparsitySelector().SelectOnHost(pl.st.g, params, b, QueryView{pl.q.data()},
                                            pl.st.Quant(), out, 0.0f);
  EXPECT_TRUE(s.ok()) << s;
  std::vector<std::vector<int32_t>> sel(static_cast<size_t>(H));
  for (int32_t h = 0; h < H; ++h) {
    sel[size_t(h)].assign(pages.begin() + h * stride, pages.begin() + h * stride + count[size_t(h)]);
  }
  return sel;
}

class DoubleSparsityPlanted : public ::testing::TestWithParam<int32_t> {};

TEST_P(DoubleSparsityPlanted, FindsThePlantedPagesAtTheBudget) {
  Planted pl = MakePlanted(GetParam(), true, 77);
  // The channel statistics name exactly the outlier channels.
  for (int32_t h = 0; h < pl.st.g.num_kv_heads; ++h) {
    const std::vector<float> spread =
        DsChannelSpreadRef(pl.st.g, pl.st.Batch(), pl.st.Quant(), 0, h);
    EXPECT_EQ(DsChooseChannelsRef(spread.data(), pl.st.g.head_dim, DsNumChannels(pl.st.g)),
              pl.outliers);
    const std::vector<float> w =
        DsChannelWeightRef(pl.st.g, spread, pl.st.Batch(), QueryView{pl.q.data()}, 0, h);
    EXPECT_EQ(DsChooseChannelsRef(w.data(), pl.st.g.head_dim, DsNumChannels(pl.st.g)),
              pl.outliers);
  }
  const std::vector<int32_t> want = {0, 7, 13, 21, 34, 39};  // sink, planted, last page
  for (const std::vector<int32_t>& sel : Select(pl, 4)) EXPECT_EQ(sel, want);
  // Budget respected at every size: budget + sink + last, ascending, planted first.
  for (int32_t budget : {1, 2, 9, 30}) {
    for (const std::vector<int32_t>& sel : Select(pl, budget)) {
      ASSERT_EQ(int32_t(sel.size()), budget + 2) << "budget " << budget;
      EXPECT_TRUE(std::is_sorted(sel.begin(), sel.end()));
      EXPECT_EQ(sel.front(), 0);
      EXPECT_EQ(sel.back(), 39);
      if (budget >= 4) {
        for (int32_t p : pl.heavy) {
          EXPECT_TRUE(std::binary_search(sel.begin(), sel.end(), p)) << "budget " << budget;
        }
      }
    }
  }
}

INSTANTIATE_TEST_SUITE_P(KSchemes, DoubleSparsityPlanted,
                         ::testing::Values(kKSchemeToken, kKSchemePageChannel));

// The choice weighs each channel's spread by the group's q_c^2: a channel that varies a lot
// but that this step's queries ignore is left out, and so is one the queries weigh but that
// never varies (a constant offset, the usual K outlier): neither can rank tokens.
TEST(DoubleSparsity, WeighsChannelsBySpreadTimesQSquared) {
  PageGeometry g;
  g.page_size = 4;
  g.head_dim = 4;
  g.num_kv_heads = 1;
  const std::vector<float> spread = {100.0f, 1.0f, 4.0f, 0.0f};
  const std::vector<float> qf = {0, 3, 1, 5,   // query head 0
                                 0, 0, 1, 5};  // query head 1 (same KV head)
  std::vector<fp16_t> q(qf.size());
  for (size_t i = 0; i < q.size(); ++i) q[i] = FloatToHalf(qf[i]);
  const std::vector<int32_t> len = {4}, table = {0};
  const BatchView b{1, 2, len.data(), table.data(), 1};
  const std::vector<float> w = DsChannelWeightRef(g, spread, b, QueryView{q.data()}, 0, 0);
  EXPECT_EQ(w, (std::vector<float>{0.0f, 9.0f, 8.0f, 0.0f}));
  EXPECT_EQ(DsChooseChannelsRef(w.data(), 4, 2), (std::vector<int32_t>{1, 2}));
}

TEST(DoubleSparsity, RejectsAStoreWithoutItsMetadataAndExactK) {
  Planted pl = MakePlanted(kKSchemeToken, true, 79);
  SelectorParams params;
  params.kind = SelectorKind::kDoubleSparsity;
  params.budget_pages = 4;
  const BatchView b = pl.st.Batch();
  std::vector<int32_t> pages(static_cast<size_t>(2 * b.max_pages)), count(2);
  SelectionView out{pages.data(), count.data(), b.max_pages};
  QuantKView no_meta = pl.st.Quant();
  no_meta.meta = nullptr;
  EXPECT_FALSE(DsSelectRef(pl.st.g, params, b, QueryView{pl.q.data()}, no_meta, out).ok());
  PageGeometry exact = pl.st.g;
  exact.k_bits = 16;
  EXPECT_FALSE(DsSelectRef(exact, params, b, QueryView{pl.q.data()}, pl.st.Quant(), out).ok());
  params.budget_pages = 0;  // a fixed selector needs a budget
  EXPECT_FALSE(DsSelectRef(pl.st.g, params, b, QueryView{pl.q.data()}, pl.st.Quant(), out).ok());
}

}  // namespace
}  // namespace twl

// CI-sized checks of the accuracy harness (bench/accuracy/ and bench/lib): properties
// that must hold whatever the paper's goals show, and the goal criteria of issue 15
// (lib/accuracy_goals.h) shown able to fail: hand-made measurements with a good mean but bad
// heads or one bad seed are rejected, and on real runs INT2 estimation fails the mass, error
// and needle checks that INT8 (mass, error) and INT4 (error, needle) pass. The goals at CI
// size are asserted by the ctest twl_accuracy_goals (bench/CMakeLists.txt).
//  - the synthetic generator: deterministic, validated, heads from peaked to flat, sinks and
//    a local window that draw mass, needles that dense attention finds;
//  - the method runner: per-head own sets whose union is exactly what the pruner with the
//    whole GQA group keeps; dense equals DenseAttentionRef; top-p true mass vs p;
//    Quest budgets respected; incremental quantization equals bulk;
//  - the real model: its forward pass pinned by tokens from an independent implementation,
//    and the dense path through the C API giving the plain FP32 reference's greedy tokens.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "lib/accuracy_goals.h"
#include "lib/accuracy_stats.h"
#include "lib/capi_attention.h"
#include "lib/llama2_model.h"
#include "lib/model_eval.h"
#include "lib/model_methods.h"
#include "lib/ref_pipeline.h"
#include "lib/synthetic_attention.h"
#include "pipeline/attend/sparse/cpu/sparse_attend_cpu.h"
#include "pipeline/prune/twilight/cpu/twilight_prune_cpu.h"
#include "pipeline/select/quest/cpu/quest_select_cpu.h"
#include "reference/oracle_top_p.h"

namespace twl::bench {
namespace {

SyntheticConfig SmallConfig(uint64_t seed) {
  SyntheticConfig c;
  c.num_tokens = 2048;
  c.num_kv_heads = 4;
  c.group_size = 4;
  c.head_dim = 64;
  c.subspace_rank = 6;
  c.num_steps = 2;
  c.seed = seed;
  return c;
}

struct Loaded {
  SyntheticLayer gen;
  std::unique_ptr<PagedLayer> layer;
  std::vector<int32_t> seq_len;
};

Loaded Load(const SyntheticConfig& c, int page_size = 16,
            const std::optional<NeedleSpec>& needle = {}) {
  absl::StatusOr<SyntheticLayer> gen = GenerateLayer(c, 0, needle);
  EXPECT_TRUE(gen.ok()) << gen.status();
  Loaded l{std::move(*gen),
           std::make_unique<PagedLayer>(page_size, c.num_kv_heads, c.head_dim, c.num_tokens),
           {}};
  EXPECT_TRUE(l.layer->Append(c.num_tokens, l.gen.k.data(), l.gen.v.data()).ok());
  for (int t = 0; t < c.num_steps; ++t) l.seq_len.push_back(l.gen.StepLength(t));
  return l;
}

MethodResult RunM(Loaded& l, const Method& m) {
  absl::StatusOr<MethodResult> r =
      RunMethod(*l.layer, m, l.seq_len, l.gen.q.data(), l.gen.num_q_heads());
  EXPECT_TRUE(r.ok()) << m.name << ": " << r.status();
  return r.ok() ? *std::move(r) : MethodResult{};
}

Method Make(MethodKind kind, float p, int bits, float fraction = 0) {
  Method m;
  m.name = std::string(1, 'm');  // not = "m": GCC 12 -Wrestrict false positive
  m.kind = kind;
  m.p = p;
  m.k_bits = bits;
  m.budget_fraction = fraction;
  return m;
}

TEST(SyntheticAttention, DeterministicFiniteAndShaped) {
  const SyntheticConfig c = SmallConfig(5);
  absl::StatusOr<SyntheticLayer> a = GenerateLayer(c, 0), b = GenerateLayer(c, 0),
                                 other = GenerateLayer(c, 1);
  ASSERT_TRUE(a.ok() && b.ok() && other.ok());
  EXPECT_EQ(a->k.size(), size_t(c.num_tokens) * c.num_kv_heads * c.head_dim);
  EXPECT_EQ(a->q.size(), size_t(c.num_steps) * c.num_kv_heads * c.group_size * c.head_dim);
  EXPECT_EQ(a->k, b->k);
  EXPECT_EQ(a->v, b->v);
  EXPECT_EQ(a->q, b->q);
  EXPECT_NE(a->k, other->k) << "layers draw different keys";
  for (const auto* arr : {&a->k, &a->v, &a->q})
    for (fp16_t h : *arr) ASSERT_TRUE(std::isfinite(HalfToFloat(h)));
  EXPECT_EQ(a->StepLength(c.num_steps - 1), c.num_tokens);
}

TEST(SyntheticAttention, RejectsBadConfigs) {
  SyntheticConfig c = SmallConfig(1);
  c.subspace_rank = c.head_dim;  // larger than the semantic half
  EXPECT_EQ(GenerateLayer(c, 0).status().code(), absl::StatusCode::kInvalidArgument);
  c = SmallConfig(1);
  c.num_tokens = 8;
  EXPECT_EQ(GenerateLayer(c, 0).status().code(), absl::StatusCode::kInvalidArgument);
  c = SmallConfig(1);
  NeedleSpec n;
  n.depth = 1.5f;
  EXPECT_EQ(GenerateLayer(c, 0, n).status().code(), absl::StatusCode::kInvalidArgument);
}

// The generator's purpose: heads from very peaked to flat, with sinks and a local window
// that really draw attention in some heads.
TEST(SyntheticAttention, HeadsSpanPeakedToFlatWithSinksAndLocalWindow) {
  Loaded l = Load(SmallConfig(11));
  const MethodResult oracle = RunM(l, Make(MethodKind::kOracle, 0.95f, 16));
  const int hq = l.gen.num_q_heads();
  const int last = l.gen.config.num_steps - 1;
  const double ctx = l.seq_len[size_t(last)];
  std::vector<double> frac;
  for (int h = 0; h < hq; ++h) frac.push_back(oracle.kept[size_t(last) * hq + h] / ctx);
  const auto [lo, hi] = std::minmax_element(frac.begin(), frac.end());
  // Seen with this seed: 1.7% and 43% of the context.
  EXPECT_LT(*lo, 0.05) << "some head is peaked";
  EXPECT_GT(*hi, 0.25) << "some head is flat";
  EXPECT_GT(*hi / *lo, 8.0) << "budgets spread over an order of magnitude";
  // Mass on the sink tokens and on the last 32 tokens, per head (exact weights).
  auto mass_on = [&](int32_t first, int32_t count) {
    const PageGeometry g = l.layer->Geometry(16);
    std::vector<int32_t> tokens(size_t(l.gen.config.num_kv_heads) * l.layer->max_pages() * 16);
    std::vector<int32_t> counts(size_t(l.gen.config.num_kv_heads), count);
    const int32_t max_kept = l.layer->max_pages() * 16;
    for (int h = 0; h < l.gen.config.num_kv_heads; ++h)
      std::iota(tokens.begin() + int64_t(h) * max_kept,
                tokens.begin() + int64_t(h) * max_kept + count, first);
    const int32_t len = l.seq_len[size_t(last)];
    BatchView b{1, hq, &len, l.layer->page_table(), l.layer->max_pages()};
    std::vector<float> mass(static_cast<size_t>(hq));
    EXPECT_TRUE(TrueKeptMassRef(g, b, QueryView{l.gen.Q(last)}, l.layer->Kv(),
                                KeptView{tokens.data(), counts.data(), max_kept}, mass.data())
                    .ok());
    return *std::max_element(mass.begin(), mass.end());
  };
  // Seen with this seed: 0.86 and 0.71.
  EXPECT_GT(mass_on(0, l.gen.config.sink_tokens), 0.3) << "a sink head";
  EXPECT_GT(mass_on(int32_t(ctx) - 32, 32), 0.3) << "a local head";
}

TEST(SyntheticAttention, DenseAttentionFindsEveryNeedle) {
  for (float depth : {0.0f, 0.5f, 1.0f}) {
    SyntheticConfig c = SmallConfig(21);
    c.num_tokens = 1024;
    c.num_steps = 1;
    NeedleSpec n;
    n.depth = depth;
    Loaded l = Load(c, 16, n);
    ASSERT_GE(l.gen.needle_pos, c.sink_tokens);
    ASSERT_LE(l.gen.needle_pos + l.gen.needle_len, l.seq_len[0]);
    const MethodResult dense = RunM(l, Make(MethodKind::kDense, 1.0f, 16));
    for (int h = 0; h < l.gen.num_q_heads(); ++h) {
      const int g = h / c.group_size;
      double share = 0;
      for (int j = 0; j < c.head_dim; ++j)
        share +=
            dense.out[size_t(h) * c.head_dim + j] * l.gen.needle_dir[size_t(g) * c.head_dim + j];
      EXPECT_GT(share / l.gen.needle_value_scale, 0.5) << "depth " << depth << " head " << h;
    }
  }
}

// The harness computes each query head's own set with a group size of 1; their union must be
// exactly what the pruner keeps for the whole group.
TEST(AccuracyPipeline, UnionOfOwnSetsIsWhatThePrunerKeeps) {
  Loaded l = Load(SmallConfig(3));
  for (MethodKind kind : {MethodKind::kTwilight, MethodKind::kQuestTwilight}) {
    const Method m = Make(kind, 0.9f, 4, 0.1f);
    const MethodResult r = RunM(l, m);
    const PageGeometry g = l.layer->Geometry(4);
    const int32_t n = int32_t(l.seq_len.size()), hkv = g.num_kv_heads;
    std::vector<int32_t> table(size_t(n) * l.layer->max_pages());
    for (int s = 0; s < n; ++s)
      std::copy_n(l.layer->page_table(), l.layer->max_pages(),
                  table.begin() + int64_t(s) * l.layer->max_pages());
    BatchView b{n, l.gen.num_q_heads(), l.seq_len.data(), table.data(), l.layer->max_pages()};
    SelectorParams sp;
    sp.kind = kind == MethodKind::kTwilight ? SelectorKind::kFull : SelectorKind::kQuest;
    sp.budget_pages = QuestBudgetPages(m, l.seq_len[0], g.page_size);
    ASSERT_EQ(QuestBudgetPages(m, l.seq_len[1], g.page_size), sp.budget_pages);
    const int32_t stride = SelectStride(sp, b.max_pages);
    std::vector<int32_t> pages(size_t(n) * hkv * stride), count(size_t(n) * hkv);
    SelectionView sel{pages.data(), count.data(), stride};
    ASSERT_TRUE(SelectPagesRef(g, sp, b, QueryView{l.gen.q.data()}, l.layer->Quant(4), sel).ok());
    std::vector<int32_t> kept(size_t(n) * hkv * stride * g.page_size), kcount(size_t(n) * hkv);
    KeptView out{kept.data(), kcount.data(), stride * g.page_size};
    PrunerParams pp;
    pp.p = m.p;
    ASSERT_TRUE(PruneRef(g, pp, b, QueryView{l.gen.q.data()}, l.layer->Quant(4), l.layer->Kv(), sel,
                         out, HeadStatsView{})
                    .ok());
    for (int32_t item = 0; item < n * hkv; ++item) {
      ASSERT_EQ(r.kept_kv[size_t(item)], kcount[size_t(item)]) << "item " << item;
      for (int32_t i = 0; i < kcount[size_t(item)]; ++i)
        ASSERT_EQ(r.kept_tokens[size_t(item) * r.max_kept + i],
                  kept[size_t(item) * out.max_kept + i]);
    }
  }
}

TEST(AccuracyPipeline, DenseMethodEqualsDenseAttentionRef) {
  Loaded l = Load(SmallConfig(4), 7);  // odd page size: partial last pages
  const MethodResult r = RunM(l, Make(MethodKind::kDense, 1.0f, 16));
  const PageGeometry g = l.layer->Geometry(16);
  const int32_t n = int32_t(l.seq_len.size());
  std::vector<int32_t> table(size_t(n) * l.layer->max_pages());
  for (int s = 0; s < n; ++s)
    std::copy_n(l.layer->page_table(), l.layer->max_pages(),
                table.begin() + int64_t(s) * l.layer->max_pages());
  BatchView b{n, l.gen.num_q_heads(), l.seq_len.data(), table.data(), l.layer->max_pages()};
  std::vector<fp16_t> out(r.out.size());
  ASSERT_TRUE(
      DenseAttentionRef(g, b, QueryView{l.gen.q.data()}, l.layer->Kv(), OutputView{out.data()})
          .ok());
  std::vector<float> ref(out.size());
  for (size_t i = 0; i < out.size(); ++i) ref[i] = HalfToFloat(out[i]);
  // FP16 rounding of the reference output: relative error per head well below 1e-3.
  for (double e : RowRelErrors(r.out, ref, g.head_dim)) EXPECT_LT(e, 1e-3);
  for (float m : r.union_mass) EXPECT_NEAR(m, 1.0f, 1e-5f);
}

TEST(AccuracyPipeline, TopPSetsHoldTheirMass) {
  Loaded l = Load(SmallConfig(8));
  const float p = 0.9f;
  const MethodResult oracle = RunM(l, Make(MethodKind::kOracle, p, 16));
  for (float m : oracle.own_mass) EXPECT_GE(m, p - 1e-4f) << "oracle sets reach p exactly";
  const MethodResult exact = RunM(l, Make(MethodKind::kTwilight, p, 16));
  for (float m : exact.own_mass) EXPECT_GE(m, p - 1e-3f) << "FP16 estimation: only bisection slack";
  // INT8 estimation: mean true mass within 0.01 of the FP16-K estimate's and not below
  // p - 0.01, no head far below. (Both keep whole levels of equal FP16 estimates, as the GPU
  // does, so both overshoot p by their boundary level's mass: here, at 2k tokens, 0.01 on
  // average, about a token's share; the FP16-K estimate measured 0.909.)
  MethodAggregate int8;
  int8.p = p;
  int8.Add(RunM(l, Make(MethodKind::kTwilight, p, 8)), oracle);
  double exact_mean = 0.0;
  for (float m : exact.own_mass) exact_mean += m / double(exact.own_mass.size());
  EXPECT_NEAR(Summarize(int8.own_mass).mean, exact_mean, 0.01);
  EXPECT_GE(Summarize(int8.own_mass).mean, p - 0.01);
  EXPECT_GT(Summarize(int8.own_mass).min, p - 0.05);
  // The union over a GQA group covers at least each member's own mass.
  for (size_t i = 0; i < exact.own_mass.size(); ++i)
    EXPECT_GE(exact.union_mass[i], exact.own_mass[i] - 1e-5f);
}

TEST(AccuracyPipeline, QuestKeepsItsPageBudget) {
  Loaded l = Load(SmallConfig(9));
  const Method m = Make(MethodKind::kQuest, 0, 4, 0.05f);
  const MethodResult r = RunM(l, m);
  for (size_t s = 0; s < l.seq_len.size(); ++s) {
    const int32_t pages = QuestBudgetPages(m, l.seq_len[s], 16) + m.sink_pages + 1;
    for (int h = 0; h < l.gen.config.num_kv_heads; ++h) {
      const int32_t kept = r.kept_kv[s * l.gen.config.num_kv_heads + h];
      EXPECT_LE(kept, pages * 16);
      EXPECT_GT(kept, (pages - 1) * 16 - 16) << "the budget is used";
    }
  }
}

// The first 300 tokens of `gen` into `bulk` in one append and into `steps` in chunks of
// growing size, quantizing `steps` (INT4, `k_scheme`) after every chunk: the incremental
// path that the two IncrementalQuantization tests compare with the bulk one.
void AppendAllAndInChunks(const SyntheticLayer& gen, int32_t k_scheme, PagedLayer& bulk,
                          PagedLayer& steps) {
  ASSERT_TRUE(bulk.Append(300, gen.k.data(), gen.v.data()).ok());
  const int64_t row = int64_t(gen.config.num_kv_heads) * gen.config.head_dim;
  for (int done = 0; done < 300;) {
    const int n = std::min(300 - done, 1 + done % 13);
    ASSERT_TRUE(steps.Append(n, gen.k.data() + done * row, gen.v.data() + done * row).ok());
    steps.Quant(4, k_scheme);  // quantize what is there, then keep appending
    done += n;
  }
}

TEST(AccuracyPipeline, IncrementalQuantizationEqualsBulk) {
  const SyntheticConfig c = SmallConfig(12);
  absl::StatusOr<SyntheticLayer> gen = GenerateLayer(c, 0);
  ASSERT_TRUE(gen.ok());
  PagedLayer bulk(5, c.num_kv_heads, c.head_dim, 300), steps(5, c.num_kv_heads, c.head_dim, 300);
  ASSERT_NO_FATAL_FAILURE(AppendAllAndInChunks(*gen, kKSchemeToken, bulk, steps));
  const QuantKView a = bulk.Quant(4), b = steps.Quant(4);
  const PageGeometry g = bulk.Geometry(4);
  const int64_t rows = int64_t(bulk.max_pages()) * c.num_kv_heads * 5;
  EXPECT_TRUE(std::equal(a.codes, a.codes + rows * g.CodeBytesPerToken(), b.codes));
  EXPECT_TRUE(std::equal(a.scale, a.scale + rows, b.scale));
  EXPECT_TRUE(std::equal(a.kmin, a.kmin + bulk.max_pages() * c.num_kv_heads * c.head_dim, b.kmin));
  EXPECT_EQ(steps.Append(1, gen->k.data(), gen->v.data()).code(),
            absl::StatusCode::kResourceExhausted);
}

// The same with the per-page-channel scheme, where every block's codes are re-quantized when
// an append widens its range.
TEST(AccuracyPipeline, IncrementalPageChannelQuantizationEqualsBulk) {
  const SyntheticConfig c = SmallConfig(13);
  absl::StatusOr<SyntheticLayer> gen = GenerateLayer(c, 0);
  ASSERT_TRUE(gen.ok());
  PagedLayer bulk(5, c.num_kv_heads, c.head_dim, 300), steps(5, c.num_kv_heads, c.head_dim, 300);
  ASSERT_NO_FATAL_FAILURE(AppendAllAndInChunks(*gen, kKSchemePageChannel, bulk, steps));
  const QuantKView a = bulk.Quant(4, kKSchemePageChannel), b = steps.Quant(4, kKSchemePageChannel);
  const PageGeometry g = bulk.Geometry(4, kKSchemePageChannel);
  const int64_t rows = int64_t(bulk.max_pages()) * c.num_kv_heads * 5;
  EXPECT_TRUE(std::equal(a.codes, a.codes + rows * g.CodeBytesPerToken(), b.codes));
  const QuantKView tok = bulk.Quant(4);
  EXPECT_FALSE(std::equal(a.codes, a.codes + rows * g.CodeBytesPerToken(), tok.codes))
      << "the two schemes are stored apart";
}

TEST(AccuracyStats, SummarizeByNearestRank) {
  std::vector<double> v(100);
  std::iota(v.begin(), v.end(), 1.0);  // 1..100
  const Summary s = Summarize(v);
  EXPECT_DOUBLE_EQ(s.mean, 50.5);
  EXPECT_DOUBLE_EQ(s.p50, 50);
  EXPECT_DOUBLE_EQ(s.p99, 99);
  EXPECT_DOUBLE_EQ(s.min, 1);
  EXPECT_DOUBLE_EQ(s.max, 100);
  EXPECT_TRUE(std::isnan(Summarize({}).mean));
}

TEST(AccuracyStats, StudentTIntervalOfTheMean) {
  EXPECT_DOUBLE_EQ(StudentT975(4), 2.776);
  EXPECT_NEAR(StudentT975(1000), 1.962, 0.002);
  // 1..5: mean 3, sd sqrt(2.5), se sqrt(0.5); t_4 = 2.776.
  const Interval ci = MeanInterval95({1, 2, 3, 4, 5});
  EXPECT_DOUBLE_EQ(ci.mean, 3);
  EXPECT_NEAR(ci.hi - ci.mean, 2.776 * std::sqrt(0.5), 1e-12);
  EXPECT_NEAR(ci.mean - ci.lo, 2.776 * std::sqrt(0.5), 1e-12);
  EXPECT_TRUE(std::isnan(MeanInterval95({7}).lo));
  EXPECT_DOUBLE_EQ(FractionAtLeast({0.1, 0.5, 0.9, 1.0}, 0.5), 0.75);
}

// The goal checks on hand-made measurements: per-head and per-seed, not means.
TEST(AccuracyGoals, CriteriaArePerHeadAndPerSeed) {
  std::vector<SeedMeasure> seeds(5);
  for (int s = 0; s < 5; ++s) {
    seeds[size_t(s)].seed = uint64_t(s);
    seeds[size_t(s)].own_mass.assign(100, 0.95);
    seeds[size_t(s)].err.assign(100, 0.011);
    seeds[size_t(s)].oracle_err.assign(100, 0.01);
    seeds[size_t(s)].needle_kept.assign(100, 1.0);
    seeds[size_t(s)].needle_err.assign(100, 0.01);
    seeds[size_t(s)].needle_oracle_err.assign(100, 0.01);
  }
  EXPECT_TRUE(CheckMass(seeds, 0.95, "x").met);
  EXPECT_TRUE(CheckErrorRatio(seeds, "x").met);
  EXPECT_TRUE(CheckNeedleKept(seeds, "x").met);
  EXPECT_TRUE(CheckNeedleError(seeds, "x").met);
  // A mean that looks fine while 2% of heads are far below p: the per-head check fails.
  std::vector<SeedMeasure> bad = seeds;
  for (int i = 0; i < 10; ++i) bad[0].own_mass[size_t(i)] = 0.90;
  for (int i = 10; i < 100; ++i) bad[0].own_mass[size_t(i)] = 0.99;
  EXPECT_FALSE(CheckMass(bad, 0.95, "x").met);
  // One seed of five over 1.2x fails the error goal even if the mean ratio is fine.
  bad = seeds;
  bad[2].err.assign(100, 0.013);
  for (int s : {0, 1, 3, 4}) bad[size_t(s)].err.assign(100, 0.009);
  EXPECT_FALSE(CheckErrorRatio(bad, "x").met);
  // A needle dropped in 2% of cases.
  bad = seeds;
  bad[4].needle_kept[0] = bad[4].needle_kept[1] = 0.5;
  for (int s = 0; s < 5; ++s) bad[size_t(s)].needle_kept[7] = 0.2;
  EXPECT_FALSE(CheckNeedleKept(bad, "x").met);
  // Fewer than five seeds never pass.
  seeds.pop_back();
  EXPECT_FALSE(CheckMass(seeds, 0.95, "x").met);
  EXPECT_FALSE(CheckErrorRatio(seeds, "x").met);
}

// Needles with a distinct value per token: dense keeps all of the needle's mass; a method
// that drops one needle token loses that token's mass and changes the output.
TEST(AccuracyGoals, DistinctNeedleValuesAreScoredPerToken) {
  SyntheticConfig c = SmallConfig(31);
  c.num_tokens = 1024;
  c.num_steps = 1;
  NeedleSpec n;
  n.depth = 0.5f;
  n.margin = 0.0f;
  n.distractor_gap = 1.0f;
  n.distinct_values = true;
  Loaded l = Load(c, 16, n);
  const int d = c.head_dim;
  // Distinct values: the first two needle tokens' values point different ways.
  double dot = 0, n0 = 0, n1 = 0;
  for (int j = 0; j < d; ++j) {
    const double a = HalfToFloat(l.gen.v[(size_t(l.gen.needle_pos) * c.num_kv_heads) * d + j]);
    const double b = HalfToFloat(l.gen.v[(size_t(l.gen.needle_pos + 1) * c.num_kv_heads) * d + j]);
    dot += a * b;
    n0 += a * a;
    n1 += b * b;
  }
  EXPECT_LT(std::abs(dot) / std::sqrt(n0 * n1), 0.5);
  MethodResult dense = RunM(l, Make(MethodKind::kDense, 1.0f, 16));
  std::vector<double> share;
  for (double k : NeedleMassKept(l.gen, 0, dense, 0, &share)) EXPECT_DOUBLE_EQ(k, 1.0);
  for (double x : share) EXPECT_GT(x, 0.1) << "a low-margin needle still draws attention";
  // Remove one needle token from KV head 0's union: its heads lose about 1/8 of the needle.
  MethodResult holed = dense;
  int32_t* toks = holed.kept_tokens.data();
  int32_t& cnt = holed.kept_kv[0];
  std::vector<int32_t> keep;
  for (int32_t i = 0; i < cnt; ++i)
    if (toks[i] != l.gen.needle_pos + 3) keep.push_back(toks[i]);
  std::copy(keep.begin(), keep.end(), toks);
  cnt = int32_t(keep.size());
  const std::vector<double> k = NeedleMassKept(l.gen, 0, holed, 0);
  for (int h = 0; h < c.group_size; ++h) {
    EXPECT_LT(k[size_t(h)], 0.99) << h;
    EXPECT_GT(k[size_t(h)], 0.5) << h;
  }
  EXPECT_DOUBLE_EQ(k[size_t(c.group_size)], 1.0) << "other KV heads untouched";
}

// The goal criteria at CI size on real runs, 5 seeds: INT8 estimation passes the per-head
// mass check and INT2 fails it and the error check, so the checks can tell a working
// estimator from a broken one. INT4 passes the error check; its per-head mass misses the
// 99% target at this size (about 88-94% of heads reach p - 0.02: see bench/ACCURACY.md), which
// the ctest twl_accuracy_goals asserts as a known failure.
TEST(AccuracyGoals, Int2FailsTheChecksThatInt8Passes) {
  std::vector<SeedMeasure> int8, int4, int2;
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    SyntheticConfig c = SmallConfig(seed * 1000);
    Loaded l = Load(c);
    for (int bits : {2, 4, 8}) l.layer->Quant(bits);
    const MethodResult dense = RunM(l, Make(MethodKind::kDense, 1.0f, 16));
    const MethodResult oracle = RunM(l, Make(MethodKind::kOracle, kGoalP, 16));
    const std::vector<double> e_orc = RowRelErrors(oracle.out, dense.out, c.head_dim);
    for (auto [bits, v] : {std::pair{8, &int8}, std::pair{4, &int4}, std::pair{2, &int2}}) {
      const MethodResult r = RunM(l, Make(MethodKind::kTwilight, kGoalP, bits));
      SeedMeasure m;
      m.seed = seed;
      m.own_mass.assign(r.own_mass.begin(), r.own_mass.end());
      m.err = RowRelErrors(r.out, dense.out, c.head_dim);
      m.oracle_err = e_orc;
      v->push_back(m);
    }
  }
  const GoalCheck m8 = CheckMass(int8, kGoalP, "INT8"), m2 = CheckMass(int2, kGoalP, "INT2");
  EXPECT_TRUE(m8.met) << m8.measured;
  EXPECT_FALSE(m2.met) << m2.measured;
  const GoalCheck e8 = CheckErrorRatio(int8, "INT8"), e4 = CheckErrorRatio(int4, "INT4"),
                  e2 = CheckErrorRatio(int2, "INT2");
  EXPECT_TRUE(e8.met) << e8.measured;
  EXPECT_TRUE(e4.met) << e4.measured;
  EXPECT_FALSE(e2.met) << e2.measured;
  std::printf("INT4 at this size: %s\n", CheckMass(int4, kGoalP, "INT4").measured.c_str());
}

// Issue 15's per-head mass goal (p = 0.95: >= 99% of heads keep >= p - 0.02 of the true mass)
// on 5 fixed seeds at 2k: INT4 per token (the runtime's default until 2026-12) misses it (about
// 94% of heads; its outlier channels widen every token's step), INT4 per page channel (the
// default now, kKSchemeDefault) meets it with the same code bytes (4 bytes per token less), and
// its error stays within 1.2x of the oracle's on every seed.
TEST(AccuracyGoals, Int4PerPageChannelMeetsTheMassGoalThatPerTokenMisses) {
  std::vector<SeedMeasure> tok, pc;
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    Loaded l = Load(SmallConfig(seed * 1000));
    l.layer->Quant(4);
    l.layer->Quant(4, kKSchemePageChannel);
    const MethodResult dense = RunM(l, Make(MethodKind::kDense, 1.0f, 16));
    const MethodResult oracle = RunM(l, Make(MethodKind::kOracle, kGoalP, 16));
    const std::vector<double> e_orc = RowRelErrors(oracle.out, dense.out, l.gen.config.head_dim);
    for (auto [scheme, v] : {std::pair{kKSchemeToken, &tok}, std::pair{kKSchemePageChannel, &pc}}) {
      Method m = Make(MethodKind::kTwilight, kGoalP, 4);
      m.k_scheme = scheme;
      const MethodResult r = RunM(l, m);
      SeedMeasure s;
      s.seed = seed;
      s.own_mass.assign(r.own_mass.begin(), r.own_mass.end());
      s.err = RowRelErrors(r.out, dense.out, l.gen.config.head_dim);
      s.oracle_err = e_orc;
      v->push_back(s);
    }
  }
  const GoalCheck mt = CheckMass(tok, kGoalP, "INT4 per token");
  const GoalCheck mp = CheckMass(pc, kGoalP, "INT4 per page channel");
  const GoalCheck ep = CheckErrorRatio(pc, "INT4 per page channel");
  EXPECT_FALSE(mt.met) << mt.measured;
  EXPECT_TRUE(mp.met) << mp.measured;
  EXPECT_TRUE(ep.met) << ep.measured;
}

// Needles with low margins (-1/0/+1), distinct values and similar-key distractors at depths
// 0.1-0.9, 5 seeds at 2k: INT4 keeps >= 90% of every needle's mass, INT2 does not (it drops
// needle tokens in about a third of the cases), so the needle check can fail.
TEST(AccuracyGoals, Int2LosesLowMarginNeedlesThatInt4Keeps) {
  std::vector<SeedMeasure> int4, int2;
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    SeedMeasure m4, m2;
    m4.seed = m2.seed = seed;
    for (int di = 0; di < 5; ++di) {
      SyntheticConfig c = SmallConfig(seed * 7919 + uint64_t(di));
      c.num_kv_heads = 2;
      c.num_steps = 1;
      NeedleSpec n;
      n.depth = 0.1f + 0.2f * float(di);
      n.margin = float((di + int(seed)) % 3) - 1.0f;
      n.distractor_gap = 1.0f;
      n.distinct_values = true;
      Loaded l = Load(c, 16, n);
      for (int bits : {2, 4}) l.layer->Quant(bits);
      for (auto [bits, m] : {std::pair{4, &m4}, std::pair{2, &m2}}) {
        const MethodResult r = RunM(l, Make(MethodKind::kTwilight, kGoalP, bits));
        for (double k : NeedleMassKept(l.gen, 0, r, 0)) m->needle_kept.push_back(k);
      }
    }
    int4.push_back(m4);
    int2.push_back(m2);
  }
  const GoalCheck k4 = CheckNeedleKept(int4, "INT4"), k2 = CheckNeedleKept(int2, "INT2");
  EXPECT_TRUE(k4.met) << k4.measured;
  EXPECT_FALSE(k2.met) << k2.measured;
}

// ---- Real model ----
absl::StatusOr<Llama2Model> LoadModelOrSkip() { return Llama2Model::Load(Stories260KPath()); }

// Greedy tokens from BOS of an independent pure-Python implementation of the llama2.c forward
// pass (written for this check), which pins the loader's tensor order, RoPE pairing and GQA.
const std::vector<int32_t> kIndependentGreedy = {461, 461, 401, 401, 401, 461, 378, 455, 473, 456,
                                                 435, 299, 362, 409, 283, 264, 283, 452, 288, 13};

TEST(Llama2Model, ForwardMatchesAnIndependentImplementation) {
  absl::StatusOr<Llama2Model> model = LoadModelOrSkip();
  if (!model.ok()) GTEST_SKIP() << model.status();
  EXPECT_EQ(model->config().head_dim(), 8);
  EXPECT_EQ(model->config().n_kv_heads, 4);
  DenseAttention dense(model->config());
  absl::StatusOr<GreedyRun> run = RunGreedy(*model, dense.Fn(), int32_t(kIndependentGreedy.size()));
  ASSERT_TRUE(run.ok()) << run.status();
  EXPECT_EQ(run->tokens, kIndependentGreedy);
  std::vector<float> logits;
  EXPECT_EQ(model->Forward(512, 0, dense.Fn(), &logits).code(), absl::StatusCode::kInvalidArgument);
}

TEST(Llama2Model, RuntimeDenseThroughCApiMatchesPlainReference) {
  absl::StatusOr<Llama2Model> model = LoadModelOrSkip();
  if (!model.ok()) GTEST_SKIP() << model.status();
  const int32_t steps = 128;
  DenseAttention fp32(model->config());
  absl::StatusOr<GreedyRun> ref = RunGreedy(*model, fp32.Fn(), steps);
  ASSERT_TRUE(ref.ok()) << ref.status();
  CApiAttentionOptions dense;
  dense.p = 1.0f;  // keeps every token: dense attention through the runtime
  AttentionFactory factory = [&]() -> absl::StatusOr<AttentionInstance> {
    absl::StatusOr<std::unique_ptr<CApiAttention>> a =
        CApiAttention::Create(model->config(), dense);
    if (!a.ok()) return a.status();
    std::shared_ptr<CApiAttention> owner(std::move(*a));
    return AttentionInstance{owner, owner->Fn()};
  };
  absl::StatusOr<ModelComparison> c = CompareWithReference(*model, *ref, factory);
  ASSERT_TRUE(c.ok()) << c.status();
  // FP16 K/V/Q/output vs FP32: the logits differ by FP16 noise (max_logit_diff: 0.048 on
  // 2026-12-04), so an argmax may differ only at a near-tie within twice that noise (seen: a gap of 0.003 at step 37 of the free run once
  // the attention's dot products summed in another order), and the free run is identical up
  // to such a near-tie. Tiny KL.
  EXPECT_LT(c->max_logit_diff, 0.1);
  EXPECT_LE(c->max_margin_at_disagreement, 2 * c->max_logit_diff);
  EXPECT_GE(c->forced_top1_agree, steps - 2);
  if (c->first_divergence >= 0) {
    EXPECT_LE(c->margin_at_divergence, 2 * c->max_logit_diff)
        << "first divergence " << c->first_divergence;
  }
  EXPECT_LT(c->mean_kl, 1e-4);
  // Twilight at p = 0.95 through the same path runs and keeps fewer tokens than dense.
  CApiAttentionOptions tw;
  tw.p = 0.95f;
  absl::StatusOr<std::unique_ptr<CApiAttention>> a = CApiAttention::Create(model->config(), tw);
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<GreedyRun> run = RunGreedy(*model, (*a)->Fn(), 64);
  ASSERT_TRUE(run.ok()) << run.status();
  int64_t kept = 0, ctx = 0;
  for (size_t i = 0; i < (*a)->kept().size(); ++i) {
    kept += (*a)->kept()[i];
    ctx += (*a)->context()[i];
  }
  EXPECT_LT(kept, ctx);
  EXPECT_GT(kept, 0);
}

// Oracle top-p at p = 1 is dense attention; sampling is reproducible by seed; the read
// telemetry counts the KV-head union (at least each head's own set, at most the context).
TEST(ModelMethods, OracleAtPOneIsDenseAndSamplingIsSeeded) {
  absl::StatusOr<Llama2Model> model = LoadModelOrSkip();
  if (!model.ok()) GTEST_SKIP() << model.status();
  DenseAttention d1(model->config()), d2(model->config()), d3(model->config());
  absl::StatusOr<std::vector<int32_t>> a = SampleTokens(*model, d1.Fn(), 1, 96, 1.0, 5),
                                       b = SampleTokens(*model, d2.Fn(), 1, 96, 1.0, 5),
                                       c = SampleTokens(*model, d3.Fn(), 1, 96, 1.0, 6);
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_EQ(*a, *b);
  EXPECT_NE(*a, *c);
  DenseAttention dense(model->config());
  OracleTopPAttention all(model->config(), 1.0f), half(model->config(), 0.5f);
  std::vector<double> n_dense, n_all, n_half;
  ASSERT_TRUE(ScoreTokens(*model, *a, dense.Fn(), &n_dense).ok());
  ASSERT_TRUE(ScoreTokens(*model, *a, all.Fn(), &n_all).ok());
  ASSERT_TRUE(ScoreTokens(*model, *a, half.Fn(), &n_half).ok());
  ASSERT_EQ(n_dense.size(), a->size() - 1);
  double diff_all = 0, diff_half = 0;
  for (size_t t = 0; t < n_dense.size(); ++t) {
    diff_all = std::max(diff_all, std::abs(n_dense[t] - n_all[t]));
    diff_half += std::abs(n_dense[t] - n_half[t]);
  }
  EXPECT_LT(diff_all, 1e-4);
  EXPECT_GT(diff_half, 1e-3) << "p = 0.5 drops mass and changes the predictions";
  EXPECT_DOUBLE_EQ(all.read().Share(), 1.0);
  EXPECT_LT(half.read().Share(), 0.9);
  EXPECT_GT(half.read().Share(), 0.0);
}

// The oracle's top-p threshold (a weighted quickselect) against the definition: sort the
// weights descending and walk until the running sum reaches p. Peaked and flat rows, sizes
// around the selection's small-range cut-over, ties, and p near 0 and 1.
TEST(ModelMethods, TopPWeightThresholdEqualsTheSortedWalk) {
  std::mt19937_64 rng(::testing::UnitTest::GetInstance()->random_seed());
  std::vector<double> scratch;
  for (int trial = 0; trial < 400; ++trial) {
    const int32_t n = 1 + int32_t(rng() % (trial < 100 ? 40 : 5000));
    const double temp = std::exp(std::uniform_real_distribution<double>(-3, 3)(rng));
    std::vector<double> w(static_cast<size_t>(n));
    double sum = 0;
    for (double& x : w) {
      x = trial % 7 == 0 ? double(rng() % 4)  // ties
                         : std::exp(std::normal_distribution<double>(0, 1)(rng) * temp);
      sum += x;
    }
    if (sum == 0) continue;
    for (double& x : w) x /= sum;
    const double p = trial % 5 == 0 ? 0.999 : trial % 5 == 1 ? 0.01 : 0.9;
    std::vector<double> sorted = w;
    std::sort(sorted.begin(), sorted.end(), std::greater<double>());
    double acc = 0, before = 0, want = sorted.back();
    for (double x : sorted) {
      before = acc;
      acc += x;
      if (acc >= p) {
        want = x;
        break;
      }
    }
    const double got = TopPWeightThreshold(w.data(), n, p, &scratch);
    // Equal, or a neighbouring weight where the two summation orders straddle p: the walk's
    // sum just before or just after `want` is then p up to rounding.
    double kept = 0;
    for (double x : w) kept += x >= got ? x : 0;
    EXPECT_GE(kept, p - 1e-12) << "n " << n << " trial " << trial;
    if (got != want) {
      EXPECT_TRUE(std::abs(acc - p) < 1e-12 || std::abs(before - p) < 1e-12)
          << "n " << n << " trial " << trial << ": " << got << " vs " << want << ", walk "
          << before << " -> " << acc;
      const double lo = std::min(got, want), hi = std::max(got, want);
      EXPECT_EQ(std::count_if(w.begin(), w.end(), [&](double x) { return x > lo && x < hi; }), 0)
          << "got and want are neighbouring weights";
    }
  }
}

// The byte-text reader of the model tools: the file's bytes as tokens, at most n of them;
// a missing file and a model whose vocabulary is not bytes are refused.
TEST(ModelMethods, ReadByteTokensReadsBytesAndRefusesBadInput) {
  const std::string path = std::string(TWL_SOURCE_DIR) + "/bench/train/data/austen_heldout.txt";
  LlamaConfig bytes;
  bytes.vocab_size = 256;
  std::ifstream in(path, std::ios::binary);
  std::vector<int32_t> want;
  for (int i = 0; i < 300; ++i) want.push_back(int32_t(static_cast<unsigned char>(in.get())));
  ASSERT_TRUE(in.good());
  absl::StatusOr<std::vector<int32_t>> got = ReadByteTokens(path, 300, bytes);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, want);
  EXPECT_EQ(ReadByteTokens(path + ".missing", 10, bytes).status().code(),
            absl::StatusCode::kNotFound);
  LlamaConfig words = bytes;
  words.vocab_size = 512;
  EXPECT_EQ(ReadByteTokens(path, 10, words).status().code(), absl::StatusCode::kInvalidArgument);
  // A file shorter than n: every byte, no more.
  const std::string tiny = ::testing::TempDir() + "/twl_three_bytes.txt";
  std::ofstream(tiny, std::ios::binary) << "a\xffz";
  got = ReadByteTokens(tiny, 10, bytes);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(*got, (std::vector<int32_t>{'a', 255, 'z'}));
}

// The byte-level model written by bench/train/train_byte_llama.py (CPU smoke mode, 150 steps,
// GQA 4 q / 2 KV heads, untied RoPE tables) read by the C++ loader: dense FP32 loss over the
// first 256 held-out bytes equals PyTorch's, recorded in the checkpoint's .json
// (first_window_nats_per_byte). Pins the writer's tensor order, GQA mapping and RoPE pairing.
TEST(Llama2Model, ByteModelFromTheTrainerMatchesPyTorch) {
  const std::string dir = std::string(TWL_SOURCE_DIR) + "/bench/train/data/";
  absl::StatusOr<Llama2Model> model = Llama2Model::Load(dir + "byte_llama_smoke.bin");
  ASSERT_TRUE(model.ok()) << model.status();
  ASSERT_EQ(model->config().vocab_size, 256);
  ASSERT_EQ(model->config().n_kv_heads, 2);
  std::ifstream text(dir + "austen_heldout.txt", std::ios::binary);
  std::vector<int32_t> tokens;
  for (int i = 0; i < 256; ++i) tokens.push_back(int32_t(static_cast<unsigned char>(text.get())));
  ASSERT_TRUE(text.good());
  DenseAttention dense(model->config());
  std::vector<double> nll;
  ASSERT_TRUE(ScoreTokens(*model, tokens, dense.Fn(), &nll).ok());
  const double mean = std::accumulate(nll.begin(), nll.end(), 0.0) / double(nll.size());
  EXPECT_NEAR(mean, 3.1163909435272217, 2e-5);
  EXPECT_LT(mean, 4.0) << "trained: well below the uniform 5.55 nats/byte";
}

TEST(Llama2Model, LoadRejectsTruncatedAndMissingFiles) {
  EXPECT_EQ(Llama2Model::Load("/nonexistent/model.bin").status().code(),
            absl::StatusCode::kNotFound);
  absl::StatusOr<Llama2Model> model = LoadModelOrSkip();
  if (!model.ok()) GTEST_SKIP() << model.status();
  std::ifstream in(Stories260KPath(), std::ios::binary);
  std::vector<char> head(1000);
  in.read(head.data(), std::streamsize(head.size()));
  const std::string path = ::testing::TempDir() + "/truncated_model.bin";
  {
    std::ofstream out(path, std::ios::binary);
    out.write(head.data(), std::streamsize(head.size()));
  }
  EXPECT_EQ(Llama2Model::Load(path).status().code(), absl::StatusCode::kDataLoss);
  std::remove(path.c_str());
}

}  // namespace
}  // namespace twl::bench

// Runtime end to end on the CPU backend: appends read back exactly, decode matches dense
// attention when nothing is pruned, per-sequence p changes budgets, fork/copy-on-write keeps
// sequences apart, and every bad input returns its status and leaves the cache unchanged.
// Data: random FP16 K/V with planted keys (tests/support/ref_store), never zeros.
#include "runtime/runtime.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <thread>

#include <gtest/gtest.h>

#include "pipeline/attend/sparse/cpu/sparse_attend_cpu.h"
#include "runtime/cpu/append_cpu.h"
#include "runtime/cpu_backend.h"
#include "support/ref_store.h"
#include "runtime/geometry.h"
#include "support/runtime_fixture.h"

namespace twl {
namespace {

using testing::MakeRuntime;

using testing::MakeRandomStore;
using testing::RefStore;
using testing::RelError;
using testing::ToFloat;

RuntimeConfig SmallConfig(int32_t page_size = 16) {
  RuntimeConfig c;
  c.num_layers = 2;
  c.num_q_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 64;
  c.page_size = page_size;
  c.backend = BackendKind::kCpu;
  c.host_pool_bytes = int64_t(8) << 20;
  return c;
}

// Appends store sequence s's K/V to (seq, layer) in random chunk sizes.
void AppendInChunks(Runtime& rt, SeqId seq, int32_t layer, const RefStore& st, int32_t s,
                    std::mt19937_64& rng) {
  const int64_t row = int64_t(st.g.num_kv_heads) * st.g.head_dim;
  const int32_t len = st.seq_len[size_t(s)];
  for (int32_t at = 0; at < len;) {
    const int32_t n = std::min<int32_t>(len - at, 1 + int32_t(rng() % 29));
    ASSERT_TRUE(rt.Append(seq, layer, n, st.k_in[size_t(s)].data() + at * row,
                          st.v_in[size_t(s)].data() + at * row, DType::kFp16, MemSpace::kHost)
                    .ok());
    at += n;
  }
}

// Creates one sequence per store sequence and appends it in random chunks to each of `layers`
// (all of a sequence's layers before the next sequence, so the chunking draws stay in order).
std::vector<SeqId> CreateAndAppendInChunks(Runtime& rt, std::initializer_list<int32_t> layers,
                                           const RefStore& st, std::mt19937_64& rng) {
  std::vector<SeqId> ids;
  for (size_t s = 0; s < st.seq_len.size(); ++s) {
    ids.push_back(*rt.CreateSequence());
    for (int32_t layer : layers) AppendInChunks(rt, ids.back(), layer, st, int32_t(s), rng);
  }
  return ids;
}

// Appends all of store sequence s to (seq, layer) in one call.
absl::Status AppendWhole(Runtime& rt, SeqId seq, int32_t layer, const RefStore& st, int32_t s) {
  return rt.Append(seq, layer, st.seq_len[size_t(s)], st.k_in[size_t(s)].data(),
                   st.v_in[size_t(s)].data(), DType::kFp16, MemSpace::kHost);
}

void ExpectKv(const Runtime& rt, SeqId seq, int32_t layer, const std::vector<fp16_t>& k,
              const std::vector<fp16_t>& v) {
  std::vector<fp16_t> rk, rv;
  ASSERT_TRUE(rt.ReadKv(seq, layer, &rk, &rv).ok());
  EXPECT_EQ(rk, k);
  EXPECT_EQ(rv, v);
}

class RuntimeAppend : public ::testing::TestWithParam<int32_t> {};

TEST_P(RuntimeAppend, RandomChunksReadBackExactly) {
  const RuntimeConfig c = SmallConfig(GetParam());
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  const std::vector<int32_t> lens = {1, 17, 100, 333, 64};
  RefStore st = MakeRandomStore(GeometryOf(c), c.num_q_heads, lens, 11 + GetParam());
  RefStore st1 = MakeRandomStore(GeometryOf(c), c.num_q_heads, lens, 99 + GetParam());
  std::mt19937_64 rng(5);
  std::vector<SeqId> ids;
  for (size_t s = 0; s < lens.size(); ++s) ids.push_back(*rt->CreateSequence());
  for (size_t s = 0; s < lens.size(); ++s) {
    AppendInChunks(*rt, ids[s], 0, st, int32_t(s), rng);
    AppendInChunks(*rt, ids[s], 1, st1, int32_t(s), rng);
  }
  for (size_t s = 0; s < lens.size(); ++s) {
    EXPECT_EQ(*rt->SequenceLength(ids[s], 0), lens[s]);
    ExpectKv(*rt, ids[s], 0, st.k_in[s], st.v_in[s]);
    ExpectKv(*rt, ids[s], 1, st1.k_in[s], st1.v_in[s]);
  }
  const MemoryUsage m = rt->Memory();
  EXPECT_GT(m.host_pool_bytes_used, 0);
  EXPECT_LE(m.host_pool_bytes_used, m.host_pool_bytes_total);
  for (SeqId id : ids) ASSERT_TRUE(rt->FreeSequence(id).ok());
  EXPECT_EQ(rt->Memory().host_pool_bytes_used, 0);
}

INSTANTIATE_TEST_SUITE_P(PageSizes, RuntimeAppend, ::testing::Values(1, 3, 16, 17));

TEST(Runtime, AppendConvertsBf16AndFp32) {
  const RuntimeConfig c = SmallConfig();
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  const int32_t n = 21;
  const size_t elems = size_t(n) * c.num_kv_heads * c.head_dim;
  std::mt19937_64 rng(3);
  std::normal_distribution<float> nd(0.5f, 2.0f);
  std::vector<float> k32(elems), v32(elems);
  std::vector<bf16_t> k16(elems), v16(elems);
  std::vector<fp16_t> want_k32(elems), want_v32(elems), want_k16(elems), want_v16(elems);
  for (size_t i = 0; i < elems; ++i) {
    k32[i] = nd(rng);
    v32[i] = nd(rng);
    k16[i] = FloatToBf16(nd(rng));
    v16[i] = FloatToBf16(nd(rng));
    want_k32[i] = FloatToHalf(k32[i]);
    want_v32[i] = FloatToHalf(v32[i]);
    want_k16[i] = FloatToHalf(Bf16ToFloat(k16[i]));
    want_v16[i] = FloatToHalf(Bf16ToFloat(v16[i]));
  }
  const SeqId s = *rt->CreateSequence();
  ASSERT_TRUE(rt->Append(s, 0, n, k32.data(), v32.data(), DType::kFp32, MemSpace::kHost).ok());
  ASSERT_TRUE(rt->Append(s, 1, n, k16.data(), v16.data(), DType::kBf16, MemSpace::kHost).ok());
  ExpectKv(*rt, s, 0, want_k32, want_v32);
  ExpectKv(*rt, s, 1, want_k16, want_v16);
}

// The runtime's decode output against the reference dense attention over the same data.
void DecodeAndCompareWithDense(Runtime& rt, int32_t layer, const std::vector<SeqId>& ids,
                               RefStore& st, double tol, StepTelemetry* t) {
  std::vector<fp16_t> out(st.q.size(), FloatToHalf(std::numeric_limits<float>::quiet_NaN()));
  ASSERT_TRUE(rt.Decode(layer, ids, st.q.data(), out.data(), MemSpace::kHost, {}, nullptr, t).ok());
  std::vector<fp16_t> dense(st.q.size());
  ASSERT_TRUE(DenseAttentionRef(st.g, st.Batch(), st.Query(), st.Kv(), OutputView{dense.data()}).ok());
  const std::vector<float> a = ToFloat(out), b = ToFloat(dense);
  for (float x : a) ASSERT_TRUE(std::isfinite(x));
  EXPECT_LE(RelError(a, b), tol);
}

// A fresh runtime for `c` holding a random store of `lens` (seeded `store_seed`), appended to
// `layer` in random chunks (seeded `chunk_seed`), whose decode of `layer` must equal dense
// attention; `t` gets that step's telemetry.
void FreshRuntimeDecodesLikeDense(const RuntimeConfig& c, int32_t layer,
                                  const std::vector<int32_t>& lens, uint64_t store_seed,
                                  uint64_t chunk_seed, StepTelemetry* t) {
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  RefStore st = MakeRandomStore(GeometryOf(c), c.num_q_heads, lens, store_seed);
  std::mt19937_64 rng(chunk_seed);
  const std::vector<SeqId> ids = CreateAndAppendInChunks(*rt, {layer}, st, rng);
  DecodeAndCompareWithDense(*rt, layer, ids, st, 1e-3, t);
}

TEST(Runtime, FullSelectorAtPOneEqualsDenseAttention) {
  RuntimeConfig c = SmallConfig(16);
  c.selector = SelectorKind::kFull;
  c.top_p = 1.0f;
  const std::vector<int32_t> lens = {5, 200, 77, 513};
  StepTelemetry t;
  ASSERT_NO_FATAL_FAILURE(FreshRuntimeDecodesLikeDense(c, 1, lens, 21, 8, &t));
  EXPECT_EQ(t.layer, 1);
  EXPECT_EQ(t.num_seqs, 4);
  ASSERT_EQ(t.selected_tokens.size(), size_t(4 * c.num_q_heads));
  ASSERT_EQ(t.kept_tokens_kv.size(), size_t(4 * c.num_kv_heads));
  for (int32_t s = 0; s < 4; ++s) {
    for (int32_t h = 0; h < c.num_q_heads; ++h) {
      EXPECT_EQ(t.selected_tokens[size_t(s * c.num_q_heads + h)], lens[size_t(s)]);
      EXPECT_NEAR(t.est_mass[size_t(s * c.num_q_heads + h)], 1.0f, 1e-5f);
    }
  }
  EXPECT_GT(t.ms_total, 0.0);
  EXPECT_GE(t.ms_total, t.ms_prune);
  EXPECT_EQ(t.blocks_fetched, 0);
}

// Head dims that are not powers of two (96: Phi-3) and the largest one (256: Gemma) take the
// same paths: append in chunks, full selector at p = 1 equals dense attention, and the
// default growing Quest decodes.
TEST(Runtime, OtherHeadDimsDecodeLikeDenseAtPOne) {
  for (int32_t d : {96, 256}) {
    SCOPED_TRACE(d);
    RuntimeConfig c = SmallConfig(16);
    c.head_dim = d;
    c.selector = SelectorKind::kFull;
    c.top_p = 1.0f;
    auto rt = MakeRuntime(c);
    ASSERT_TRUE(rt);
    const std::vector<int32_t> lens = {7, 300, 129};
    RefStore st = MakeRandomStore(GeometryOf(c), c.num_q_heads, lens, 31 + d);
    std::mt19937_64 rng(d);
    std::vector<SeqId> ids;
    for (size_t s = 0; s < lens.size(); ++s) {
      ids.push_back(*rt->CreateSequence());
      AppendInChunks(*rt, ids.back(), 0, st, int32_t(s), rng);
      ExpectKv(*rt, ids.back(), 0, st.k_in[s], st.v_in[s]);
    }
    StepTelemetry t;
    DecodeAndCompareWithDense(*rt, 0, ids, st, 1e-3, &t);
    EXPECT_EQ(t.num_seqs, 3);
  }
}

// 16 query heads per KV head (64 q / 4 KV, the widest group the GPU backends take): the
// full selector and growing Quest at p = 1 both equal dense attention (Quest at
// p = 1 keeps every candidate of a selection that grows until its bound proves p = 1).
TEST(Runtime, SixteenQueryHeadsPerKvHeadDecodeLikeDenseAtPOne) {
  for (SelectorKind sel : {SelectorKind::kFull, SelectorKind::kQuest}) {
    SCOPED_TRACE(int(sel));
    RuntimeConfig c = SmallConfig(16);
    c.num_q_heads = 64;
    c.num_kv_heads = 4;
    c.selector = sel;
    c.top_p = 1.0f;
    StepTelemetry t;
    ASSERT_NO_FATAL_FAILURE(FreshRuntimeDecodesLikeDense(c, 0, {9, 260, 100}, 64, 64, &t));
    ASSERT_EQ(t.kept_tokens_kv.size(), size_t(3 * c.num_kv_heads));
    ASSERT_EQ(t.selected_tokens.size(), size_t(3 * c.num_q_heads));
  }
}

// kv_dtype BF16: FP32 K/V (values up to ~300: beyond FP16's 11 bits, within BF16's range)
// are stored rounded to BF16 and read back exactly so; decode at p = 1 (full selector; and
// growing Quest, whose INT4 estimate now quantizes the BF16 K) equals dense attention
// in double over the FP32 input within the BF16 tolerance: each K/V element carries a
// relative error <= 2^-9, so scores move by <= 2^-9 * sum |q_j k_j| (about 0.06 logits here)
// and the output by about that relative amount: 2e-2 relative L2. Over the BF16-rounded
// values themselves it matches to FP16 output rounding (2e-3).
TEST(Runtime, Bf16KvDecodesLikeDenseFp32WithinBf16Tolerance) {
  for (SelectorKind sel : {SelectorKind::kFull, SelectorKind::kQuest}) {
    SCOPED_TRACE(int(sel));
    RuntimeConfig c = SmallConfig(16);
    c.kv_dtype = DType::kBf16;
    c.selector = sel;
    c.top_p = 1.0f;
    auto rt = MakeRuntime(c);
    ASSERT_TRUE(rt);
    const int32_t H = c.num_kv_heads, D = c.head_dim, Hq = c.num_q_heads, G = Hq / H;
    const std::vector<int32_t> lens = {3, 150, 77};
    std::mt19937_64 rng(int(sel) + 5);
    std::normal_distribution<float> nd(0.0f, 1.0f);
    std::vector<SeqId> ids;
    std::vector<std::vector<float>> ks, vs;
    for (int32_t len : lens) {
      std::vector<float> k(size_t(len) * H * D), v(k.size());
      for (size_t i = 0; i < k.size(); ++i) {
        k[i] = 2.0f * float(i % D % 3) + (i % 29 == 0 ? 300.0f : 1.0f) * nd(rng);
        v[i] = 100.0f * nd(rng);
      }
      ids.push_back(*rt->CreateSequence());
      ASSERT_TRUE(rt->Append(ids.back(), 0, len, k.data(), v.data(), DType::kFp32,
                             MemSpace::kHost)
                      .ok());
      std::vector<fp16_t> rk, rv;
      ASSERT_TRUE(rt->ReadKv(ids.back(), 0, &rk, &rv).ok());
      ASSERT_EQ(rk.size(), k.size());
      for (size_t i = 0; i < k.size(); ++i) {
        ASSERT_EQ(rk[i], FloatToBf16(k[i])) << i;
        ASSERT_EQ(rv[i], FloatToBf16(v[i])) << i;
      }
      ks.push_back(std::move(k));
      vs.push_back(std::move(v));
    }
    std::vector<fp16_t> q(lens.size() * size_t(Hq) * D);
    for (auto& x : q) x = FloatToHalf(0.05f * nd(rng));
    std::vector<fp16_t> out(q.size());
    ASSERT_TRUE(rt->Decode(0, ids, q.data(), out.data(), MemSpace::kHost, {}, nullptr, nullptr).ok());
    // Dense attention in double over given K/V values.
    auto dense = [&](bool bf16_rounded) {
      std::vector<float> ref(q.size());
      for (size_t s = 0; s < lens.size(); ++s) {
        for (int32_t qh = 0; qh < Hq; ++qh) {
          const int32_t h = qh / G;
          const fp16_t* qr = q.data() + (s * Hq + size_t(qh)) * D;
          auto kv = [&](const std::vector<float>& x, int32_t t, int32_t j) {
            const float f = x[(size_t(t) * H + size_t(h)) * D + size_t(j)];
            return double(bf16_rounded ? Bf16ToFloat(FloatToBf16(f)) : f);
          };
          std::vector<double> w(static_cast<size_t>(lens[s]));
          double mx = -1e300;
          for (int32_t t = 0; t < lens[s]; ++t) {
            double dot = 0;
            for (int32_t j = 0; j < D; ++j) dot += double(HalfToFloat(qr[j])) * kv(ks[s], t, j);
            w[size_t(t)] = dot / std::sqrt(double(D));
            mx = std::max(mx, w[size_t(t)]);
          }
          double sum = 0;
          for (double& x : w) sum += (x = std::exp(x - mx));
          for (int32_t j = 0; j < D; ++j) {
            double a = 0;
            for (int32_t t = 0; t < lens[s]; ++t) a += w[size_t(t)] * kv(vs[s], t, j);
            ref[(s * Hq + size_t(qh)) * D + size_t(j)] = float(a / sum);
          }
        }
      }
      return ref;
    };
    const std::vector<float> got = ToFloat(out);
    for (float x : got) ASSERT_TRUE(std::isfinite(x));
    EXPECT_LE(RelError(got, dense(false)), 2e-2) << "vs FP32 K/V";
    EXPECT_LE(RelError(got, dense(true)), 2e-3) << "vs the BF16-rounded K/V";
  }
}

TEST(Runtime, DenseLayersIgnorePAndBudget) {
  RuntimeConfig c = SmallConfig(16);
  c.dense_layers = 1;
  c.top_p = 0.3f;                  // would prune hard on a sparse layer
  c.selector_budget_tokens = 16;   // and Quest would keep only a few pages
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  const std::vector<int32_t> lens = {300, 41};
  RefStore st = MakeRandomStore(GeometryOf(c), c.num_q_heads, lens, 5);
  std::mt19937_64 rng(1);
  const std::vector<SeqId> ids = CreateAndAppendInChunks(*rt, {0, 1}, st, rng);
  StepTelemetry t;
  DecodeAndCompareWithDense(*rt, 0, ids, st, 1e-3, &t);
  for (size_t s = 0; s < lens.size(); ++s) {
    for (int32_t h = 0; h < c.num_kv_heads; ++h) {
      EXPECT_EQ(t.kept_tokens_kv[s * c.num_kv_heads + h], lens[s]);
    }
  }
  // Layer 1 is sparse: Quest keeps budget + sink + last pages, then top-p prunes inside.
  std::vector<fp16_t> out(st.q.size());
  ASSERT_TRUE(rt->Decode(1, ids, st.q.data(), out.data(), MemSpace::kHost, {}, nullptr, &t).ok());
  const int32_t max_selected = (1 + c.sink_pages + 1) * c.page_size;
  int64_t kept_sum = 0;
  for (size_t i = 0; i < t.selected_tokens.size(); ++i) {
    EXPECT_LE(t.selected_tokens[i], max_selected);
    EXPECT_LE(t.kept_tokens[i], t.selected_tokens[i]);
    EXPECT_GE(t.kept_tokens[i], 1);
    EXPECT_GE(t.est_mass[i], 0.3f - 1e-4f);
    kept_sum += t.kept_tokens[i];
  }
  EXPECT_LT(kept_sum, int64_t(t.selected_tokens.size()) * max_selected);
}

TEST(Runtime, PerSequencePOverridesChangeBudgets) {
  RuntimeConfig c = SmallConfig(8);
  c.selector = SelectorKind::kFull;
  c.top_p = 0.9f;
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  // Flat-ish attention (weakly planted keys) so that budgets depend strongly on p.
  RefStore st = MakeRandomStore(GeometryOf(c), c.num_q_heads, {400}, 77, 1.0f);
  std::mt19937_64 rng(2);
  const SeqId a = *rt->CreateSequence();
  AppendInChunks(*rt, a, 0, st, 0, rng);
  const SeqId b = *rt->ForkSequence(a);  // identical content
  std::vector<fp16_t> q2(st.q.begin(), st.q.end());
  q2.insert(q2.end(), st.q.begin(), st.q.end());
  std::vector<fp16_t> out(q2.size());
  std::vector<SeqId> ids = {a, b};

  StepTelemetry base;
  ASSERT_TRUE(rt->Decode(0, ids, q2.data(), out.data(), MemSpace::kHost, {}, nullptr, &base).ok());
  const int32_t nq = c.num_q_heads;
  for (int32_t h = 0; h < nq; ++h) {  // same data, same default p: same budgets
    EXPECT_EQ(base.kept_tokens[size_t(h)], base.kept_tokens[size_t(nq + h)]);
  }
  StepTelemetry t;
  const std::vector<float> p = {0.5f, 0.99f};
  ASSERT_TRUE(rt->Decode(0, ids, q2.data(), out.data(), MemSpace::kHost, p, nullptr, &t).ok());
  int64_t low = 0, high = 0;
  for (int32_t h = 0; h < nq; ++h) {
    EXPECT_LE(t.kept_tokens[size_t(h)], base.kept_tokens[size_t(h)]);
    EXPECT_GE(t.kept_tokens[size_t(nq + h)], base.kept_tokens[size_t(nq + h)]);
    EXPECT_GE(t.est_mass[size_t(h)], 0.5f - 1e-4f);
    EXPECT_GE(t.est_mass[size_t(nq + h)], 0.99f - 1e-4f);
    low += t.kept_tokens[size_t(h)];
    high += t.kept_tokens[size_t(nq + h)];
  }
  EXPECT_LT(2 * low, high) << "p=0.5 kept " << low << ", p=0.99 kept " << high;
}

std::vector<fp16_t> Concat(std::vector<fp16_t> a, const std::vector<fp16_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

TEST(Runtime, ForkIsCopyOnWrite) {
  const RuntimeConfig c = SmallConfig(16);
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  // Parent: 37 tokens (2 full pages + 5 rows); extra data for the child and the parent.
  RefStore st = MakeRandomStore(GeometryOf(c), c.num_q_heads, {37, 20, 9}, 31);
  const SeqId parent = *rt->CreateSequence();
  ASSERT_TRUE(AppendWhole(*rt, parent, 0, st, 0).ok());
  const int64_t used_before_fork = rt->Memory().host_pool_bytes_used;
  auto child = rt->ForkSequence(parent);
  ASSERT_TRUE(child.ok());
  EXPECT_EQ(rt->Memory().host_pool_bytes_used, used_before_fork);  // nothing copied yet
  ExpectKv(*rt, *child, 0, st.k_in[0], st.v_in[0]);

  ASSERT_TRUE(AppendWhole(*rt, *child, 0, st, 1).ok());
  ExpectKv(*rt, parent, 0, st.k_in[0], st.v_in[0]);  // parent unchanged
  const std::vector<fp16_t> ck = Concat(st.k_in[0], st.k_in[1]);
  const std::vector<fp16_t> cv = Concat(st.v_in[0], st.v_in[1]);
  ExpectKv(*rt, *child, 0, ck, cv);

  ASSERT_TRUE(AppendWhole(*rt, parent, 0, st, 2).ok());
  ExpectKv(*rt, parent, 0, Concat(st.k_in[0], st.k_in[2]), Concat(st.v_in[0], st.v_in[2]));
  ExpectKv(*rt, *child, 0, ck, cv);

  ASSERT_TRUE(rt->FreeSequence(parent).ok());
  ExpectKv(*rt, *child, 0, ck, cv);  // shared pages survive the parent
  ASSERT_TRUE(rt->FreeSequence(*child).ok());
  EXPECT_EQ(rt->Memory().host_pool_bytes_used, 0);
}

// Replaces the contents of store sequence s (same length) with k/v, through AppendRef so the
// quantized K and page bounds follow.
void Overwrite(RefStore& st, int32_t s, const std::vector<fp16_t>& k,
               const std::vector<fp16_t>& v) {
  const int32_t n = st.seq_len[size_t(s)];
  ASSERT_EQ(k.size(), size_t(n) * st.g.num_kv_heads * st.g.head_dim);
  std::vector<int32_t> page_id(static_cast<size_t>(n)), slot(static_cast<size_t>(n));
  for (int32_t t = 0; t < n; ++t) {
    page_id[size_t(t)] = st.page_table[size_t(int64_t(s) * st.max_pages + t / st.g.page_size)];
    slot[size_t(t)] = t % st.g.page_size;
  }
  AppendView in{n, k.data(), v.data(), page_id.data(), slot.data()};
  ASSERT_TRUE(AppendRef(st.g, in, st.Kv(), st.Quant()).ok());
  st.k_in[size_t(s)] = k;
  st.v_in[size_t(s)] = v;
}

TEST(Runtime, ForkedSequencesDecodeLikeDenseOverTheirOwnData) {
  RuntimeConfig c = SmallConfig(16);
  c.selector = SelectorKind::kFull;
  c.top_p = 1.0f;
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  // Shared prefix D (45 tokens: the last page is partial), then the child appends E and the
  // parent F, both through copy-on-write of the shared partial page.
  RefStore data = MakeRandomStore(GeometryOf(c), c.num_q_heads, {45, 30, 10}, 41);
  const SeqId parent = *rt->CreateSequence();
  ASSERT_TRUE(AppendWhole(*rt, parent, 0, data, 0).ok());
  const SeqId child = *rt->ForkSequence(parent);
  ASSERT_TRUE(AppendWhole(*rt, child, 0, data, 1).ok());
  ASSERT_TRUE(AppendWhole(*rt, parent, 0, data, 2).ok());

  RefStore ref = MakeRandomStore(GeometryOf(c), c.num_q_heads, {55, 75}, 42);
  Overwrite(ref, 0, Concat(data.k_in[0], data.k_in[2]), Concat(data.v_in[0], data.v_in[2]));
  Overwrite(ref, 1, Concat(data.k_in[0], data.k_in[1]), Concat(data.v_in[0], data.v_in[1]));
  ExpectKv(*rt, parent, 0, ref.k_in[0], ref.v_in[0]);
  ExpectKv(*rt, child, 0, ref.k_in[1], ref.v_in[1]);
  StepTelemetry t;
  DecodeAndCompareWithDense(*rt, 0, {parent, child}, ref, 1e-3, &t);
}

// Snapshot of everything a failed call must leave alone.
struct CacheSnapshot {
  std::vector<std::vector<fp16_t>> k, v;
  std::vector<int32_t> len;
  int64_t used = 0;
};

CacheSnapshot Snapshot(const Runtime& rt, const std::vector<SeqId>& ids, int32_t layers) {
  CacheSnapshot s;
  for (SeqId id : ids) {
    for (int32_t l = 0; l < layers; ++l) {
      std::vector<fp16_t> k, v;
      EXPECT_TRUE(rt.ReadKv(id, l, &k, &v).ok());
      s.k.push_back(k);
      s.v.push_back(v);
      s.len.push_back(*rt.SequenceLength(id, l));
    }
  }
  s.used = rt.Memory().host_pool_bytes_used;
  return s;
}

void ExpectSame(const CacheSnapshot& a, const CacheSnapshot& b, const char* what) {
  EXPECT_EQ(a.len, b.len) << what;
  EXPECT_EQ(a.used, b.used) << what;
  EXPECT_TRUE(a.k == b.k && a.v == b.v) << what << ": cache contents changed";
}

TEST(Runtime, BadInputsReturnTheirStatusAndLeaveTheCacheUnchanged) {
  RuntimeConfig c = SmallConfig(16);
  c.host_pool_bytes = 40 * int64_t(c.num_kv_heads) * 2 * 2 * c.page_size * c.head_dim;  // 40 pages
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  RefStore st = MakeRandomStore(GeometryOf(c), c.num_q_heads, {50, 30, 700}, 61);
  std::mt19937_64 rng(6);
  const SeqId a = *rt->CreateSequence();
  const SeqId b = *rt->CreateSequence();
  const SeqId empty = *rt->CreateSequence();
  AppendInChunks(*rt, a, 0, st, 0, rng);
  AppendInChunks(*rt, b, 0, st, 1, rng);
  AppendInChunks(*rt, b, 1, st, 1, rng);
  const SeqId forked = *rt->ForkSequence(a);  // shares a's partial page
  const std::vector<SeqId> all = {a, b, empty, forked};
  const CacheSnapshot before = Snapshot(*rt, all, c.num_layers);
  const fp16_t* k = st.k_in[2].data();
  const fp16_t* v = st.v_in[2].data();
  using absl::StatusCode;

  struct AppendCase {
    const char* what;
    SeqId seq;
    int32_t layer, n;
    const void *k, *v;
    DType dtype;
    MemSpace space;
    StatusCode code;
  };
  const AppendCase cases[] = {
      {"null k", a, 0, 4, nullptr, v, DType::kFp16, MemSpace::kHost, StatusCode::kInvalidArgument},
      {"null v", a, 0, 4, k, nullptr, DType::kFp16, MemSpace::kHost, StatusCode::kInvalidArgument},
      {"n = 0", a, 0, 0, k, v, DType::kFp16, MemSpace::kHost, StatusCode::kInvalidArgument},
      {"n < 0", a, 0, -3, k, v, DType::kFp16, MemSpace::kHost, StatusCode::kInvalidArgument},
      {"layer -1", a, -1, 4, k, v, DType::kFp16, MemSpace::kHost, StatusCode::kInvalidArgument},
      {"layer too big", a, 2, 4, k, v, DType::kFp16, MemSpace::kHost,
       StatusCode::kInvalidArgument},
      {"unknown seq", 12345, 0, 4, k, v, DType::kFp16, MemSpace::kHost, StatusCode::kNotFound},
      {"bad dtype", a, 0, 4, k, v, static_cast<DType>(9), MemSpace::kHost,
       StatusCode::kInvalidArgument},
      {"bad space", a, 0, 4, k, v, DType::kFp16, static_cast<MemSpace>(5),
       StatusCode::kInvalidArgument},
      {"device ptr on cpu", a, 0, 4, k, v, DType::kFp16, MemSpace::kDevice,
       StatusCode::kInvalidArgument},
      {"pool exhausted", b, 0, 700, k, v, DType::kFp16, MemSpace::kHost,
       StatusCode::kResourceExhausted},
  };
  for (const AppendCase& t : cases) {
    absl::Status s = rt->Append(t.seq, t.layer, t.n, t.k, t.v, t.dtype, t.space);
    EXPECT_EQ(s.code(), t.code) << t.what << ": " << s;
    EXPECT_FALSE(s.message().empty()) << t.what;
    ExpectSame(before, Snapshot(*rt, all, c.num_layers), t.what);
  }

  // A backend failure during the write (also during the copy-on-write of a shared page)
  // rolls the allocation back.
  for (int32_t fail_after : {0, 1}) {
    SetCpuBackendWriteFailureForTesting(fail_after);
    absl::Status s = rt->Append(forked, 0, 40, k, v, DType::kFp16, MemSpace::kHost);
    SetCpuBackendWriteFailureForTesting(-1);
    EXPECT_EQ(s.code(), StatusCode::kInternal) << s;
    ExpectSame(before, Snapshot(*rt, all, c.num_layers), "injected backend failure");
  }

  std::vector<fp16_t> q(size_t(2) * c.num_q_heads * c.head_dim, FloatToHalf(0.25f));
  std::vector<fp16_t> out(q.size(), FloatToHalf(-7.0f));
  const std::vector<fp16_t> out_before = out;
  struct DecodeCase {
    const char* what;
    int32_t layer;
    std::vector<SeqId> seqs;
    std::vector<float> p;
    bool null_q;
    StatusCode code;
  };
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const DecodeCase dcases[] = {
      {"empty batch", 0, {}, {}, false, StatusCode::kInvalidArgument},
      {"unknown seq", 0, {a, 999}, {}, false, StatusCode::kNotFound},
      {"empty sequence", 0, {a, empty}, {}, false, StatusCode::kFailedPrecondition},
      {"empty layer", 1, {a, b}, {}, false, StatusCode::kFailedPrecondition},
      {"duplicate", 0, {a, a}, {}, false, StatusCode::kInvalidArgument},
      {"p = 0", 0, {a, b}, {0.0f, 0.5f}, false, StatusCode::kInvalidArgument},
      {"p > 1", 0, {a, b}, {0.9f, 1.5f}, false, StatusCode::kInvalidArgument},
      {"p nan", 0, {a, b}, {nan, 0.9f}, false, StatusCode::kInvalidArgument},
      {"p count", 0, {a, b}, {0.9f}, false, StatusCode::kInvalidArgument},
      {"layer", 2, {a, b}, {}, false, StatusCode::kInvalidArgument},
      {"null q", 0, {a, b}, {}, true, StatusCode::kInvalidArgument},
  };
  for (const DecodeCase& t : dcases) {
    StepTelemetry tel;
    absl::Status s = rt->Decode(t.layer, t.seqs, t.null_q ? nullptr : q.data(), out.data(),
                                MemSpace::kHost, t.p, nullptr, &tel);
    EXPECT_EQ(s.code(), t.code) << t.what << ": " << s;
    EXPECT_EQ(out, out_before) << t.what << ": output written on failure";
    ExpectSame(before, Snapshot(*rt, all, c.num_layers), t.what);
  }
  EXPECT_EQ(rt->Decode(0, {a}, q.data(), out.data(), MemSpace::kDevice, {}, nullptr, nullptr)
                .code(),
            StatusCode::kInvalidArgument);

  EXPECT_EQ(rt->FreeSequence(4242).code(), StatusCode::kNotFound);
  EXPECT_EQ(rt->ForkSequence(4242).status().code(), StatusCode::kNotFound);
  EXPECT_EQ(rt->SequenceLength(a, 7).status().code(), StatusCode::kInvalidArgument);
  std::vector<fp16_t> rk, rv;
  EXPECT_EQ(rt->ReadKv(4242, 0, &rk, &rv).code(), StatusCode::kNotFound);
  EXPECT_EQ(rt->ReadKv(a, 0, nullptr, &rv).code(), StatusCode::kInvalidArgument);
  ExpectSame(before, Snapshot(*rt, all, c.num_layers), "misc");

  // The good calls still work afterwards.
  ASSERT_TRUE(rt->Append(forked, 0, 40, k, v, DType::kFp16, MemSpace::kHost).ok());
  ASSERT_TRUE(rt->Decode(0, {a, b}, q.data(), out.data(), MemSpace::kHost, {}, nullptr, nullptr)
                  .ok());
}

TEST(Runtime, ThreadsDrivingDifferentSequencesConcurrently) {
  RuntimeConfig c = SmallConfig(8);
  c.selector = SelectorKind::kFull;
  c.top_p = 1.0f;
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  constexpr int kThreads = 4;
  std::vector<RefStore> stores;
  for (int i = 0; i < kThreads; ++i) {
    stores.push_back(MakeRandomStore(GeometryOf(c), c.num_q_heads, {60 + 37 * i}, 500 + i));
  }
  std::vector<std::thread> threads;
  std::vector<int> failures(kThreads, 0);
  for (int i = 0; i < kThreads; ++i) {
    threads.emplace_back([&, i] {
      RefStore& st = stores[size_t(i)];
      std::mt19937_64 rng(900 + i);
      const SeqId id = *rt->CreateSequence();
      AppendInChunks(*rt, id, 0, st, 0, rng);
      for (int round = 0; round < 3; ++round) {
        std::vector<fp16_t> k, v;
        if (!rt->ReadKv(id, 0, &k, &v).ok() || k != st.k_in[0] || v != st.v_in[0]) ++failures[i];
        std::vector<fp16_t> out(st.q.size()), dense(st.q.size());
        if (!rt->Decode(0, {id}, st.q.data(), out.data(), MemSpace::kHost, {}, nullptr, nullptr)
                 .ok()) {
          ++failures[i];
          continue;
        }
        (void)DenseAttentionRef(st.g, st.Batch(), st.Query(), st.Kv(), OutputView{dense.data()});
        if (RelError(ToFloat(out), ToFloat(dense)) > 1e-3) ++failures[i];
      }
      const SeqId fork = *rt->ForkSequence(id);
      if (!rt->FreeSequence(id).ok() || !rt->FreeSequence(fork).ok()) ++failures[i];
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kThreads; ++i) EXPECT_EQ(failures[size_t(i)], 0) << "thread " << i;
  EXPECT_EQ(rt->Memory().host_pool_bytes_used, 0);
}

TEST(Runtime, ConfigValidation) {
  using absl::StatusCode;
  auto code = [](auto mutate) {
    RuntimeConfig c = SmallConfig();
    mutate(c);
    return Runtime::Create(c).status().code();
  };
  EXPECT_EQ(code([](RuntimeConfig&) {}), StatusCode::kOk);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.num_q_heads = 7; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.num_kv_heads = 0; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.head_dim = 80; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.head_dim = 96; }), StatusCode::kOk);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.head_dim = 7; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.page_size = 0; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.k_bits = 3; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.top_p = 0.0f; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.top_p = 1.01f; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.num_layers = 0; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.dense_layers = 3; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.sink_pages = -1; }), StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.selector_budget_fraction = 0.0f; }),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.host_pool_bytes = 100; }),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.backend = static_cast<BackendKind>(9); }),
            StatusCode::kInvalidArgument);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.k_bits = 16; }), StatusCode::kOk);
  EXPECT_EQ(code([](RuntimeConfig& c) { c.k_bits = 2; c.head_dim = 8; }), StatusCode::kOk);
}

// The library's default K scheme is per page channel (issue 15's per-head mass goal holds
// there, not per token): RuntimeConfig's default and the geometry a runtime builds from it.
TEST(Runtime, DefaultKSchemeIsPageChannel) {
  EXPECT_EQ(kKSchemeDefault, kKSchemePageChannel);
  EXPECT_EQ(RuntimeConfig{}.k_scheme, kKSchemePageChannel);
  EXPECT_EQ(GeometryOf(RuntimeConfig{}).k_scheme, kKSchemePageChannel);
  EXPECT_FALSE(GeometryOf(RuntimeConfig{}).HasTokenScale());
}

// The selector a configuration runs (SelectorOf): the one it names; unnamed, FULL without a
// cap and Quest with a token or fraction cap, as TWL_SELECTOR_DEFAULT resolves in the C API
// (tests/api/api_basics_test.cc); a runtime reports the configuration it was given.
TEST(Runtime, DefaultSelectorIsFullUnlessCapped) {
  RuntimeConfig c;
  EXPECT_FALSE(c.selector.has_value());
  EXPECT_EQ(SelectorOf(c), SelectorKind::kFull);
  c.selector_budget_tokens = 256;
  EXPECT_EQ(SelectorOf(c), SelectorKind::kQuest);
  c.selector_budget_tokens = 0;
  c.selector_budget_fraction = 0.25f;
  EXPECT_EQ(SelectorOf(c), SelectorKind::kQuest);
  c.selector = SelectorKind::kDoubleSparsity;
  EXPECT_EQ(SelectorOf(c), SelectorKind::kDoubleSparsity);
  c.selector = SelectorKind::kFull;
  c.selector_budget_fraction = 1.0f;
  EXPECT_EQ(SelectorOf(c), SelectorKind::kFull);
  c.selector = SelectorKind::kQuest;
  EXPECT_EQ(SelectorOf(c), SelectorKind::kQuest);  // uncapped growing Quest, when named

  // A runtime with the default decodes bit for bit as one that names FULL.
  const std::vector<int32_t> lens = {700, 90};
  RuntimeConfig d = SmallConfig(16);
  d.top_p = 0.9f;
  const int seed = ::testing::UnitTest::GetInstance()->random_seed();  // fresh, printed
  RefStore st = MakeRandomStore(GeometryOf(d), d.num_q_heads, lens, seed);
  std::vector<std::vector<fp16_t>> outs;
  for (bool named : {false, true}) {
    if (named) d.selector = SelectorKind::kFull;
    auto rt = MakeRuntime(d);
    ASSERT_TRUE(rt);
    EXPECT_EQ(rt->config().selector.has_value(), named);
    std::mt19937_64 rng{uint64_t(seed)};  // the same chunking for both runtimes
    const std::vector<SeqId> ids = CreateAndAppendInChunks(*rt, {0}, st, rng);
    outs.emplace_back(st.q.size());
    ASSERT_TRUE(rt->Decode(0, ids, st.q.data(), outs.back().data(), MemSpace::kHost, {}, nullptr,
                           nullptr)
                    .ok());
  }
  EXPECT_EQ(std::memcmp(outs[0].data(), outs[1].data(), outs[0].size() * sizeof(fp16_t)), 0);
}

// k_scheme 1 (INT4 per page channel) runs on every backend: a GPU backend is not refused
// (it is created where a GPU is, Unavailable elsewhere), kAuto chooses as for k_scheme 0, an
// unknown scheme is invalid; on the CPU, p = 1 over the full selector is still dense attention.
TEST(Runtime, PageChannelSchemeOnEveryBackendAndDenseAtPOne) {
  RuntimeConfig c = SmallConfig(16);
  c.k_scheme = kKSchemePageChannel;
  for (BackendKind b : {BackendKind::kGpuHbm, BackendKind::kGpuOffload}) {
    RuntimeConfig x = c;
    x.backend = b;
    EXPECT_NE(Runtime::Create(x).status().code(), absl::StatusCode::kUnimplemented);
  }
  {
    RuntimeConfig x = c;
    x.backend = BackendKind::kAuto;
    auto rt = MakeRuntime(x);
    ASSERT_TRUE(rt);
    RuntimeConfig token = x;
    token.k_scheme = kKSchemeToken;
    auto rt0 = MakeRuntime(token);
    ASSERT_TRUE(rt0);
    EXPECT_EQ(rt->backend_kind(), rt0->backend_kind());
    EXPECT_EQ(rt->backend_name().find("k_scheme"), std::string::npos) << rt->backend_name();
    x.k_scheme = 2;
    EXPECT_EQ(Runtime::Create(x).status().code(), absl::StatusCode::kInvalidArgument);
  }
  c.selector = SelectorKind::kFull;
  c.top_p = 1.0f;
  StepTelemetry t;
  FreshRuntimeDecodesLikeDense(c, 1, {5, 200, 513}, 22, 9, &t);
}

TEST(Runtime, AutoBackendFallsBackToCpuWithoutAGpu) {
  RuntimeConfig c = SmallConfig();
  c.backend = BackendKind::kAuto;
  auto rt = MakeRuntime(c);
  ASSERT_TRUE(rt);
  if (rt->backend_kind() != BackendKind::kCpu) GTEST_SKIP() << "a GPU backend was chosen";
  EXPECT_EQ(rt->backend_name().rfind("cpu (", 0), 0u) << rt->backend_name();
  EXPECT_NE(rt->backend_name().find("no GPU found"), std::string::npos) << rt->backend_name();
#if !TWL_HAVE_CUDA
  c.backend = BackendKind::kGpuOffload;
  EXPECT_EQ(Runtime::Create(c).status().code(), absl::StatusCode::kUnavailable);
  c.backend = BackendKind::kGpuHbm;
  EXPECT_EQ(Runtime::Create(c).status().code(), absl::StatusCode::kUnavailable);
#endif
}

}  // namespace
}  // namespace twl

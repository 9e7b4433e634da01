// GPU Quest selector (LaunchSelectPages) on fresh random page metadata (a new seed per run)
// against SelectPagesRef, over random shapes: page sizes 8/16/32, head dims 64/128, GQA
// groups 1..16, 1-5 sequences from 1 token up, sinks 0..3, B0 from 1 page to every page,
// fixed and growing Quest, plus long sequences (16k pages with B0 = 8192; > 32k pages, where
// the top-B0 kernel reads the scores from global memory instead of shared memory).
//
// The metadata is synthetic (random kmin <= kmax per channel, a random offset per page so
// bounds spread, duplicated pages for exact ties) because the selector reads nothing else.
// Checks, with the tolerance of FP32 sums in another order, tol = 1e-4 * sum_c |q_c| *
// max(|kmin_c|, |kmax_c|) (the FP16 products are exact in FP32; 128 terms of rounding are
// below 1e-5 of that sum):
//  * fixed Quest: every page bound the GPU ranked by (its workspace: scores[pair][page], see
//    select.cu) is within tol of the reference; the GPU's page set is EXACTLY the top B0 of
//    its own bounds (ties to the lower page) plus sinks and the last page (no tolerance:
//    tests the radix select and compaction); counts equal the reference's; page sets differ
//    from the reference only at pages within (own tol + largest tol) of the budget-th bound;
//  * growing Quest: pages 0..n-1, count n, the cap, +inf for the sinks and the last page,
//    and each query head's bound * scale within tol * scale of the reference.
#include <algorithm>
#include <array>
#include <cmath>
#include <numeric>
#include <random>
#include <set>
#include <string>

#include "gpu_test_util.h"
#include "pipeline/select/quest/cpu/quest_select_cpu.h"
#include "pipeline/select/quest/cuda/select_launch.h"

namespace twl {
namespace {

using testing::Download;
using testing::Poisoned;
using testing::Upload;

// Page metadata of a batch (no K/V: the selector reads only kmin/kmax, q, the page table).
struct Meta {
  PageGeometry g;
  int32_t num_q_heads = 0, max_pages = 0;
  std::vector<int32_t> seq_len, page_table;
  std::vector<fp16_t> kmin, kmax, q;

  BatchView Batch() const {
    BatchView b;
    b.num_seqs = int32_t(seq_len.size());
    b.num_q_heads = num_q_heads;
    b.seq_len = seq_len.data();
    b.page_table = page_table.data();
    b.max_pages = max_pages;
    return b;
  }
  QuantKView Quant() {
    return QuantKView{nullptr, nullptr, nullptr, kmin.data(), kmax.data()};
  }
  int32_t group() const { return num_q_heads / g.num_kv_heads; }
};

Meta MakeMeta(const PageGeometry& g, int32_t group, const std::vector<int32_t>& lens,
              std::mt19937_64& rng) {
  Meta m;
  m.g = g;
  m.num_q_heads = g.num_kv_heads * group;
  m.seq_len = lens;
  int64_t total = 0;
  for (int32_t len : lens) {
    const int32_t n = (len + g.page_size - 1) / g.page_size;
    m.max_pages = std::max(m.max_pages, n);
    total += n;
  }
  m.max_pages += int32_t(rng() % 3);  // stride above the longest sequence
  // Page ids: a shuffled partition (not contiguous per sequence), a few spare ids.
  std::vector<int32_t> ids(static_cast<size_t>(total + 5));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  m.page_table.assign(lens.size() * size_t(m.max_pages), -1);
  size_t next = 0;
  for (size_t s = 0; s < lens.size(); ++s) {
    const int32_t n = (lens[s] + g.page_size - 1) / g.page_size;
    for (int32_t p = 0; p < n; ++p) m.page_table[s * size_t(m.max_pages) + size_t(p)] = ids[next++];
  }
  const int64_t blocks = int64_t(ids.size()) * g.num_kv_heads;
  const size_t d = size_t(g.head_dim);
  m.kmin.resize(size_t(blocks) * d);
  m.kmax.resize(size_t(blocks) * d);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(0.0f, 1.0f);
  for (int64_t b = 0; b < blocks; ++b) {
    const float offset = 0.5f * nd(rng);
    for (size_t c = 0; c < d; ++c) {
      const float a = offset + nd(rng), w = 1.5f * ud(rng);
      m.kmin[size_t(b) * d + c] = FloatToHalf(a - w);
      m.kmax[size_t(b) * d + c] = FloatToHalf(a + w);
    }
  }
  // Exact ties: some blocks copy another block's metadata (equal bounds on the GPU too).
  for (int64_t i = 0; i < blocks / 8; ++i) {
    const int64_t a = int64_t(rng() % uint64_t(blocks)), b = int64_t(rng() % uint64_t(blocks));
    std::copy_n(m.kmin.begin() + a * int64_t(d), d, m.kmin.begin() + b * int64_t(d));
    std::copy_n(m.kmax.begin() + a * int64_t(d), d, m.kmax.begin() + b * int64_t(d));
  }
  m.q.resize(lens.size() * size_t(m.num_q_heads) * d);
  for (fp16_t& x : m.q) x = FloatToHalf(nd(rng));
  return m;
}

// Reference bound of query head qh on page p of sequence s (unscaled) and its tolerance.
struct RefBound {
  float value, tol;
};
RefBound Bound(const Meta& m, int32_t s, int32_t qh, int32_t p) {
  const PageGeometry& g = m.g;
  const int32_t h = qh / m.group();
  const int64_t block = g.BlockId(m.page_table[size_t(s) * m.max_pages + size_t(p)], h);
  const fp16_t* q = m.q.data() + (int64_t(s) * m.num_q_heads + qh) * g.head_dim;
  std::vector<float> qr(static_cast<size_t>(g.head_dim));
  float mag = 0.0f;
  for (int32_t c = 0; c < g.head_dim; ++c) {
    qr[size_t(c)] = HalfToFloat(q[c]);
    const float lo = HalfToFloat(m.kmin[size_t(block * g.head_dim + c)]);
    const float hi = HalfToFloat(m.kmax[size_t(block * g.head_dim + c)]);
    mag += std::abs(qr[size_t(c)]) * std::max(std::abs(lo), std::abs(hi));
  }
  return RefBound{PageUpperBoundRef(g, qr.data(), m.kmin.data() + block * g.head_dim,
                                    m.kmax.data() + block * g.head_dim),
                  1e-4f * mag + 1e-6f};
}

// The GPU's outputs of one LaunchSelectPages call.
struct GpuOut {
  std::vector<int32_t> pages, count, limit;
  std::vector<float> bound, scores;
};

GpuOut RunGpu(Meta& m, const SelectorParams& sp, float softmax_scale) {
  const BatchView hb = m.Batch();
  const int32_t stride = SelectStride(sp, hb.max_pages);
  const size_t pairs = size_t(hb.num_seqs) * m.g.num_kv_heads;
  const size_t heads = size_t(hb.num_seqs) * m.num_q_heads;
  gpu::DeviceBuffer seq_len = Upload(m.seq_len), table = Upload(m.page_table),
                    kmin = Upload(m.kmin), kmax = Upload(m.kmax), q = Upload(m.q);
  gpu::DeviceBuffer pages = Poisoned<int32_t>(pairs * size_t(stride));
  gpu::DeviceBuffer count = Poisoned<int32_t>(pairs);
  gpu::DeviceBuffer limit = Poisoned<int32_t>(pairs);
  gpu::DeviceBuffer bound = Poisoned<float>(sp.grow ? heads * size_t(stride) : 1);
  BatchView db = hb;
  db.seq_len = seq_len.as<int32_t>();
  db.page_table = table.as<int32_t>();
  const QuantKView qk{nullptr, nullptr, nullptr, kmin.as<fp16_t>(), kmax.as<fp16_t>()};
  const size_t ws_bytes = SelectWorkspaceBytes(m.g, sp, hb.num_seqs, hb.max_pages);
  gpu::DeviceBuffer ws = Poisoned<char>(std::max<size_t>(ws_bytes, 1));
  const SelectionView sel{pages.as<int32_t>(), count.as<int32_t>(), stride,
                          sp.grow ? bound.as<float>() : nullptr,
                          sp.grow ? limit.as<int32_t>() : nullptr};
  const absl::Status st = LaunchSelectPages(m.g, sp, db, QueryView{q.as<fp16_t>()}, qk, sel,
                                            ws.get(), ws_bytes, nullptr, softmax_scale);
  EXPECT_TRUE(st.ok()) << st;
  GpuOut o;
  o.pages = Download<int32_t>(pages, pairs * size_t(stride));
  o.count = Download<int32_t>(count, pairs);
  if (sp.grow) {
    o.limit = Download<int32_t>(limit, pairs);
    o.bound = Download<float>(bound, heads * size_t(stride));
  } else if (ws_bytes) {
    o.scores = Download<float>(ws, ws_bytes / sizeof(float));
  }
  return o;
}

// Checks one call; adds the number of pages that differ from the reference at near ties.
void CheckCase(Meta& m, const SelectorParams& sp, float softmax_scale, int* ties = nullptr) {
  const BatchView hb = m.Batch();
  const PageGeometry& g = m.g;
  const int32_t stride = SelectStride(sp, hb.max_pages);
  const int32_t pairs = hb.num_seqs * g.num_kv_heads;
  const size_t heads = size_t(hb.num_seqs) * m.num_q_heads;
  std::vector<int32_t> rp(size_t(pairs) * stride), rc(static_cast<size_t>(pairs)), rl(static_cast<size_t>(pairs));
  std::vector<float> rb(sp.grow ? heads * size_t(stride) : 0);
  const absl::Status rs = SelectPagesRef(
      g, sp, hb, QueryView{m.q.data()}, m.Quant(),
      SelectionView{rp.data(), rc.data(), stride, sp.grow ? rb.data() : nullptr,
                    sp.grow ? rl.data() : nullptr},
      softmax_scale);
  EXPECT_TRUE(rs.ok()) << rs;
  const GpuOut o = RunGpu(m, sp, softmax_scale);
  const float scale = softmax_scale > 0.0f ? softmax_scale : 1.0f / std::sqrt(float(g.head_dim));
  int tie_diffs = 0;
  for (int32_t pair = 0; pair < pairs; ++pair) {
    const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
    const int32_t n = hb.NumPages(g, s);
    SCOPED_TRACE(::testing::Message() << "pair " << pair << " pages " << n);
    EXPECT_EQ(o.count[size_t(pair)], rc[size_t(pair)]);
    if (o.count[size_t(pair)] != rc[size_t(pair)]) return;
    const int32_t cnt = rc[size_t(pair)];
    const int32_t* gp = o.pages.data() + int64_t(pair) * stride;
    const int32_t* rpp = rp.data() + int64_t(pair) * stride;
    if (sp.grow) {
      EXPECT_EQ(o.limit[size_t(pair)], rl[size_t(pair)]);
      for (int32_t i = 0; i < cnt; ++i) ASSERT_EQ(gp[i], i);
      for (int32_t j = 0; j < m.group(); ++j) {
        const int32_t qh = h * m.group() + j;
        const float* gb = o.bound.data() + (int64_t(s) * m.num_q_heads + qh) * stride;
        const float* rbb = rb.data() + (int64_t(s) * m.num_q_heads + qh) * stride;
        for (int32_t p = 0; p < n; ++p) {
          if (std::isinf(rbb[p])) {
            ASSERT_TRUE(std::isinf(gb[p]) && gb[p] > 0) << "head " << qh << " page " << p;
            continue;
          }
          const RefBound r = Bound(m, s, qh, p);
          ASSERT_NEAR(gb[p], rbb[p], r.tol * scale) << "head " << qh << " page " << p;
        }
      }
      continue;
    }
    for (int32_t i = 1; i < cnt; ++i) ASSERT_LT(gp[i - 1], gp[i]) << "not ascending";
    const std::set<int32_t> got(gp, gp + cnt), want(rpp, rpp + cnt);
    const int64_t keep_all = int64_t(sp.budget_pages) + sp.sink_pages + 1;
    if (sp.kind == SelectorKind::kFull || n <= keep_all) {
      EXPECT_EQ(got, want);
      continue;
    }
    const int32_t first = sp.sink_pages, last = n - 1;
    // The GPU's own bounds against the reference (max over the group).
    const float* sc = o.scores.data() + int64_t(pair) * hb.max_pages;
    std::vector<float> ref(static_cast<size_t>(n)), tol(static_cast<size_t>(n));
    for (int32_t p = first; p < last; ++p) {
      float best = -INFINITY, t = 0.0f;
      for (int32_t j = 0; j < m.group(); ++j) {
        const RefBound r = Bound(m, s, h * m.group() + j, p);
        best = std::max(best, r.value);
        t = std::max(t, r.tol);
      }
      ref[size_t(p)] = best;
      tol[size_t(p)] = t;
      ASSERT_NEAR(sc[p], best, t) << "page bound " << p;
    }
    // Exactly the top budget of the GPU's own bounds, ties to the lower page.
    std::vector<int32_t> order(static_cast<size_t>(last - first));
    std::iota(order.begin(), order.end(), first);
    std::stable_sort(order.begin(), order.end(),
                     [&](int32_t a, int32_t b) { return sc[a] > sc[b]; });
    std::set<int32_t> own(order.begin(), order.begin() + sp.budget_pages);
    for (int32_t p = 0; p < first; ++p) own.insert(p);
    own.insert(last);
    ASSERT_EQ(got, own) << "not the top " << sp.budget_pages << " of the GPU's own bounds";
    // Against the reference: differences only at the budget-th bound.
    if (got == want) continue;
    // A page swapped in or out is within its own tolerance plus that of the page it
    // displaced (any ranked page: the largest tolerance) of the budget-th bound.
    float weakest = INFINITY;
    for (int32_t p : want) {
      if (p >= first && p < last) weakest = std::min(weakest, ref[size_t(p)]);
    }
    const float wtol = *std::max_element(tol.begin() + first, tol.begin() + last);
    std::vector<int32_t> diff;
    std::set_symmetric_difference(got.begin(), got.end(), want.begin(), want.end(),
                                  std::back_inserter(diff));
    for (int32_t p : diff) {
      ASSERT_TRUE(p >= first && p < last) << "sink/last page differs: " << p;
      EXPECT_LE(std::abs(ref[size_t(p)] - weakest), tol[size_t(p)] + wtol)
          << "page " << p << " differs beyond a near tie";
      ++tie_diffs;
    }
  }
  if (ties) *ties += tie_diffs;
}

// Fresh inputs every run; the seed (1..99999) is in every failure message and
// --gtest_random_seed=<seed> repeats it.
uint64_t Seed() {
  const int fixed = ::testing::UnitTest::GetInstance()->random_seed();
  const uint64_t seed = fixed > 0 ? uint64_t(fixed) : 1 + std::random_device{}() % 99999u;
  ::testing::Test::RecordProperty("seed", std::to_string(seed));
  return seed;
}

// `trials` random shapes with groups in [min_group, max_group]; head dims 64/128, or every
// GPU head dim when all_dims.
void RandomTrials(uint64_t salt, int trials, int32_t min_group, int32_t max_group,
                  bool all_dims) {
  const uint64_t seed = Seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed * 7919u + salt);
  int ties = 0;
  for (int trial = 0; trial < trials; ++trial) {
    PageGeometry g;
    g.page_size = std::array<int32_t, 3>{8, 16, 32}[rng() % 3];
    g.head_dim = all_dims ? std::array<int32_t, 4>{64, 96, 128, 256}[rng() % 4]
                          : (rng() % 2 ? 128 : 64);
    g.num_kv_heads = 1 + int32_t(rng() % 4);
    const int32_t group = min_group + int32_t(rng() % uint64_t(max_group - min_group + 1));
    std::vector<int32_t> lens(1 + rng() % 5);
    for (int32_t& len : lens) {
      switch (rng() % 4) {
        case 0: len = 1 + int32_t(rng() % 40); break;                 // a page or a few
        case 1: len = g.page_size * (1 + int32_t(rng() % 64)); break;  // whole pages
        default: len = 1 + int32_t(rng() % 4000); break;
      }
    }
    Meta m = MakeMeta(g, group, lens, rng);
    SelectorParams sp;
    sp.kind = SelectorKind::kQuest;
    sp.sink_pages = int32_t(rng() % 4);
    sp.grow = rng() % 3 == 0;
    const int32_t pages = m.max_pages;
    if (sp.grow) {
      sp.budget_pages = rng() % 2 ? 0 : 1 + int32_t(rng() % pages);
      sp.budget_fraction = rng() % 2 ? 0.0f : 0.25f;
    } else {
      switch (rng() % 4) {
        case 0: sp.budget_pages = 1; break;
        case 1: sp.budget_pages = std::max(1, pages - sp.sink_pages - 2); break;  // all but ~1
        case 2: sp.budget_pages = pages + 3; break;                              // every page
        default: sp.budget_pages = 1 + int32_t(rng() % pages); break;
      }
    }
    const float softmax_scale = rng() % 2 ? 0.0f : 0.05f;
    SCOPED_TRACE(::testing::Message()
                 << "trial " << trial << ": page " << g.page_size << " d " << g.head_dim << " H "
                 << g.num_kv_heads << " group " << group << " seqs " << lens.size() << " B0 "
                 << sp.budget_pages << " sinks " << sp.sink_pages << " grow " << sp.grow);
    CheckCase(m, sp, softmax_scale, &ties);
    if (::testing::Test::HasFailure()) return;
  }
  ::testing::Test::RecordProperty("tie_diffs", ties);
}

TEST(SelectBoundsGpuTest, RandomShapesMatchReference) {
  TWL_SKIP_WITHOUT_GPU();
  RandomTrials(1u, 48, 1, 8, false);
}

// Groups of 9..16 query heads per KV head (two warps per task, one 8-head tile each), every GPU
// head dim.
TEST(SelectBoundsGpuTest, WideGroupsMatchReference) {
  TWL_SKIP_WITHOUT_GPU();
  RandomTrials(2u, 32, 9, 16, true);
}

// The H200 benchmark's shapes at full length: 16k pages per (sequence, KV head) with
// B0 = 8192 (keys staged in shared memory), and one sequence of 40k pages (more than the
// 32k keys the top-B0 kernel stages: scores read from global memory), fixed and growing.
TEST(SelectBoundsGpuTest, LongSequences) {
  TWL_SKIP_WITHOUT_GPU();
  const uint64_t seed = Seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed * 7919u + 2u);
  {
    PageGeometry g;
    g.page_size = 16;
    g.head_dim = 128;
    g.num_kv_heads = 2;
    Meta m = MakeMeta(g, 4, {16384 * 16, 16384 * 16 - 5}, rng);
    SelectorParams sp;
    sp.kind = SelectorKind::kQuest;
    sp.budget_pages = 8192;
    sp.sink_pages = 1;
    CheckCase(m, sp, 0.0f);
    sp.grow = true;
    sp.budget_pages = 0;
    CheckCase(m, sp, 0.0f);
  }
  {
    PageGeometry g;
    g.page_size = 8;
    g.head_dim = 64;
    g.num_kv_heads = 1;
    Meta m = MakeMeta(g, 2, {40000 * 8 - 3}, rng);
    SelectorParams sp;
    sp.kind = SelectorKind::kQuest;
    sp.budget_pages = 8192;
    sp.sink_pages = 2;
    CheckCase(m, sp, 0.0f);
    sp.budget_pages = 39000;
    CheckCase(m, sp, 0.0f);
  }
}

TEST(SelectBoundsGpuTest, FullSelectorListsEveryPage) {
  TWL_SKIP_WITHOUT_GPU();
  const uint64_t seed = Seed();
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937_64 rng(seed * 7919u + 3u);
  PageGeometry g;
  g.num_kv_heads = 3;
  Meta m = MakeMeta(g, 2, {1, 17, 700}, rng);
  SelectorParams sp;
  sp.kind = SelectorKind::kFull;
  CheckCase(m, sp, 0.0f);
}

}  // namespace
}  // namespace twl

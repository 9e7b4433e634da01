// Double Sparsity on the GPU against its CPU reference on fresh random inputs (the seed is
// gtest's): the metadata kernels (plan recompute, and segments merged into stored sums,
// from the block store or a staging page) and the selection are bit-identical; the HBM and
// offload backends configured for it decode like the CPU backend, with the same selected
// counts and, for the offload store (whose estimation store is visible), the same sums.
#include <algorithm>
#include <numeric>
#include <random>

#include "gpu_test_util.h"
#include "pipeline/select/double_sparsity/ds_kernels.h"
#include "pipeline/select/double_sparsity/ds_selector.h"
#include "runtime/backend.h"
#include "runtime/gpu_offload_backend.h"

namespace twl {
namespace {

using testing::DeviceStore;
using testing::Download;
using testing::MakeRandomStore;
using testing::Poisoned;
using testing::RefStore;
using testing::Upload;

uint64_t Seed() { return ::testing::UnitTest::GetInstance()->random_seed(); }

// Every block's filled rows of a RefStore: (page ids, rows).
void StorePlan(const RefStore& st, std::vector<int32_t>* pages, std::vector<int32_t>* rows) {
  const BatchView b = st.Batch();
  for (int32_t s = 0; s < b.num_seqs; ++s) {
    for (int32_t p = 0; p < b.NumPages(st.g, s); ++p) {
      pages->push_back(b.PageId(s, p));
      rows->push_back(std::min(st.g.page_size, st.seq_len[size_t(s)] - p * st.g.page_size));
    }
  }
}

QuantKView WithMeta(QuantKView q, uint8_t* meta, const PageGeometry& g) {
  q.meta = meta;
  q.meta_bytes = DsMetadataBytesPerBlock(g);
  return q;
}

struct DsCase {
  int32_t head_dim, num_kv_heads, group, budget, sinks, k_scheme;
  bool grow;  // the Runtime's form: budget_pages is the cap (0: budget_fraction 0.3)
};

class DsSelectGpuTest : public ::testing::TestWithParam<DsCase> {};

TEST_P(DsSelectGpuTest, MatchesReferenceExactly) {
  TWL_SKIP_WITHOUT_GPU();
  const DsCase c = GetParam();
  PageGeometry g;
  g.page_size = 16;
  g.head_dim = c.head_dim;
  g.num_kv_heads = c.num_kv_heads;
  g.k_bits = 4;
  g.k_scheme = c.k_scheme;
  RefStore st = MakeRandomStore(g, c.num_kv_heads * c.group, {1003, 37, 517, 16, 2049, 250},
                                Seed() + uint64_t(c.group * 31 + c.head_dim));
  std::vector<int32_t> plan_pages, plan_rows;
  StorePlan(st, &plan_pages, &plan_rows);
  std::vector<uint8_t> meta(static_cast<size_t>(st.kmin.size() / size_t(g.head_dim)) *
                            size_t(DsMetadataBytesPerBlock(g)));
  const QuantKView hq = WithMeta(st.Quant(), meta.data(), g);
  DsUpdateBlocksRef(g, plan_pages.data(), plan_rows.data(), int32_t(plan_pages.size()), st.Kv(),
                    hq);
  SelectorParams params;
  params.kind = SelectorKind::kDoubleSparsity;
  params.budget_pages = c.budget;
  params.sink_pages = c.sinks;
  params.grow = c.grow;
  params.budget_fraction = c.grow && c.budget == 0 ? 0.3f : 0.0f;
  const BatchView hb = st.Batch();
  const int32_t stride = SelectStride(params, hb.max_pages);
  const size_t items = size_t(hb.num_seqs) * size_t(g.num_kv_heads);
  std::vector<int32_t> ref_pages(items * size_t(stride), -1), ref_count(items);
  TWL_ASSERT_OK(DsSelectRef(g, params, hb, st.Query(), hq,
                            SelectionView{ref_pages.data(), ref_count.data(), stride}));

  DeviceStore ds(st);
  gpu::DeviceBuffer d_meta = Upload(meta);
  const QuantKView dq = WithMeta(ds.Quant(), d_meta.as<uint8_t>(), g);
  gpu::DeviceBuffer d_pages = Poisoned<int32_t>(ref_pages.size());
  gpu::DeviceBuffer d_count = Poisoned<int32_t>(items);
  const Selector& sel = DoubleSparsitySelector();
  const size_t ws_bytes = sel.DeviceWorkspaceBytes(g, params, hb.num_seqs, hb.max_pages);
  gpu::DeviceBuffer ws;
  TWL_ASSERT_OK(ws.Reserve(ws_bytes));
  TWL_ASSERT_OK(sel.SelectOnDevice(g, params, ds.Batch(), ds.Query(), dq,
                                   SelectionView{d_pages.as<int32_t>(), d_count.as<int32_t>(),
                                                 stride},
                                   ws.get(), ws_bytes, nullptr, 0.0f));
  const std::vector<int32_t> count = Download<int32_t>(d_count, items);
  const std::vector<int32_t> pages = Download<int32_t>(d_pages, ref_pages.size());
  int32_t ranked_items = 0;
  for (size_t i = 0; i < items; ++i) {
    ASSERT_EQ(count[i], ref_count[i]) << "item " << i;
    const auto* gp = pages.data() + i * size_t(stride);
    const auto* rp = ref_pages.data() + i * size_t(stride);
    EXPECT_TRUE(std::equal(gp, gp + count[i], rp)) << "pages of item " << i;
    const int32_t s = int32_t(i) / g.num_kv_heads;
    ranked_items += count[i] < hb.NumPages(g, s) ? 1 : 0;
  }
  EXPECT_GT(ranked_items, 0) << "no (sequence, head) was ranked: the case tests nothing";
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, DsSelectGpuTest,
    ::testing::Values(DsCase{128, 8, 4, 9, 1, kKSchemeToken, false},
                      DsCase{128, 2, 8, 17, 2, kKSchemeToken, false},
                      DsCase{64, 4, 1, 5, 1, kKSchemePageChannel, false},
                      DsCase{64, 2, 4, 40, 0, kKSchemeToken, true},
                      DsCase{128, 3, 1, 1, 3, kKSchemePageChannel, false},
                      DsCase{128, 2, 4, 0, 1, kKSchemeToken, true}));

TEST(DsMetadataGpuTest, KernelsMatchReferenceExactly) {
  TWL_SKIP_WITHOUT_GPU();
  PageGeometry g;
  g.page_size = 16;
  g.head_dim = 128;
  g.num_kv_heads = 4;
  g.k_bits = 4;
  RefStore st = MakeRandomStore(g, 8, {700, 45, 16, 301}, Seed() + 7);
  std::vector<int32_t> plan_pages, plan_rows;
  StorePlan(st, &plan_pages, &plan_rows);
  const size_t blocks = st.kmin.size() / size_t(g.head_dim);
  const size_t mb = size_t(DsMetadataBytesPerBlock(g));
  std::vector<uint8_t> want(blocks * mb);
  DsUpdateBlocksRef(g, plan_pages.data(), plan_rows.data(), int32_t(plan_pages.size()), st.Kv(),
                    WithMeta(st.Quant(), want.data(), g));
  DeviceStore ds(st);
  const int32_t np = int32_t(plan_pages.size());

  // 1. Recompute over a plan (after LaunchAppend / a page copy).
  {
    gpu::DeviceBuffer d_meta = Poisoned<uint8_t>(want.size());
    gpu::DeviceBuffer d_pp = Upload(plan_pages), d_pr = Upload(plan_rows);
    const AppendPagePlan plan{d_pp.as<int32_t>(), d_pr.as<int32_t>(), np};
    TWL_ASSERT_OK(LaunchDsUpdateBlocks(g, plan, ds.Kv(),
                                       WithMeta(ds.Quant(), d_meta.as<uint8_t>(), g), nullptr));
    const std::vector<uint8_t> got = Download<uint8_t>(d_meta, want.size());
    for (int32_t i = 0; i < np; ++i) {
      for (int32_t h = 0; h < g.num_kv_heads; ++h) {
        const size_t at = size_t(g.BlockId(plan_pages[size_t(i)], h)) * mb;
        EXPECT_TRUE(std::equal(got.begin() + at, got.begin() + at + mb, want.begin() + at))
            << "plan page " << i << " head " << h;
      }
    }
  }
  // 2. Segments: every page's rows in two appends ([0, split) then [split, rows)), the
  //    second one of the first page read from a staging page instead of the block store.
  {
    gpu::DeviceBuffer d_meta = Poisoned<uint8_t>(want.size());
    std::vector<AppendSegment> first, second;
    for (int32_t i = 0; i < np; ++i) {
      const int32_t rows = plan_rows[size_t(i)], split = rows / 2 + (i % 3);
      const int32_t cut = std::min(split, rows);
      first.push_back(AppendSegment{plan_pages[size_t(i)], 0, cut, 0, -1});
      if (cut < rows) second.push_back(AppendSegment{plan_pages[size_t(i)], cut, rows, 0, -1});
    }
    ASSERT_FALSE(second.empty());
    second[0].stage = 0;
    // The staging page: the page's num_kv_heads blocks back to back, as LaunchAppendSegments
    // leaves them.
    const int64_t be = g.FpBlockElems();
    std::vector<fp16_t> stage(static_cast<size_t>(g.num_kv_heads * be));
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      const fp16_t* src = st.kv.data() + g.BlockId(second[0].page, h) * be;
      std::copy(src, src + be, stage.begin() + h * be);
    }
    gpu::DeviceBuffer d_stage = Upload(stage);
    gpu::DeviceBuffer d_first = Upload(first), d_second = Upload(second);
    const QuantKView dq = WithMeta(ds.Quant(), d_meta.as<uint8_t>(), g);
    TWL_ASSERT_OK(LaunchDsAppendSegments(g, d_first.as<AppendSegment>(), int32_t(first.size()),
                                         ds.Kv(), nullptr, dq, nullptr));
    TWL_ASSERT_OK(LaunchDsAppendSegments(g, d_second.as<AppendSegment>(),
                                         int32_t(second.size()), ds.Kv(),
                                         d_stage.as<fp16_t>(), dq, nullptr));
    const std::vector<uint8_t> got = Download<uint8_t>(d_meta, want.size());
    for (int32_t i = 0; i < np; ++i) {
      for (int32_t h = 0; h < g.num_kv_heads; ++h) {
        const size_t at = size_t(g.BlockId(plan_pages[size_t(i)], h)) * mb;
        EXPECT_TRUE(std::equal(got.begin() + at, got.begin() + at + mb, want.begin() + at))
            << "segments: page " << i << " head " << h;
      }
    }
  }
}

// The GPU stores allocate and fill the selector's metadata through its hooks.
TEST(DsBackendGpuTest, HbmAndOffloadDecodeLikeTheCpuBackend) {
  TWL_SKIP_WITHOUT_GPU();
  RuntimeConfig c;
  c.num_q_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 128;
  c.page_size = 16;
  c.k_bits = 4;
  c.selector = SelectorKind::kDoubleSparsity;
  const int64_t num_pages = 300;
  auto cpu = CreateCpuBackend(c, num_pages);
  auto hbm = CreateGpuHbmBackend(c, num_pages);
  auto off = CreateGpuOffloadBackendEx(c, num_pages);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  ASSERT_TRUE(hbm.ok()) << hbm.status();
  ASSERT_TRUE(off.ok()) << off.status();
  Backend* gpus[2] = {hbm->get(), off->get()};
  std::mt19937_64 rng(Seed() + 11);
  const std::vector<int32_t> lens = {1100, 37, 640};
  const int32_t max_pages = 80;
  std::vector<int32_t> pool(static_cast<size_t>(num_pages));
  std::iota(pool.begin(), pool.end(), 0);
  std::shuffle(pool.begin(), pool.end(), rng);
  std::vector<int32_t> table(lens.size() * size_t(max_pages), -1);
  size_t next = 0;
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t row = int64_t(c.num_kv_heads) * c.head_dim;
  for (size_t s = 0; s < lens.size(); ++s) {
    for (int32_t t0 = 0; t0 < lens[s];) {  // uneven appends: partial pages continue
      const int32_t n = std::min(lens[s] - t0, int32_t(1 + rng() % 70));
      std::vector<int32_t> page(static_cast<size_t>(n)), slot(static_cast<size_t>(n));
      for (int32_t i = 0; i < n; ++i) {
        int32_t& e = table[s * size_t(max_pages) + size_t((t0 + i) / c.page_size)];
        if (e < 0) e = pool[next++];
        page[size_t(i)] = e;
        slot[size_t(i)] = (t0 + i) % c.page_size;
      }
      std::vector<fp16_t> k(static_cast<size_t>(n * row)), v(static_cast<size_t>(n * row));
      for (int64_t i = 0; i < n * row; ++i) {
        const int64_t ch = i % c.head_dim;  // outlier channels: every 11th
        k[size_t(i)] = FloatToHalf((ch % 11 == 0 ? 4.0f : 0.5f) * nd(rng));
        v[size_t(i)] = FloatToHalf(nd(rng));
      }
      const AppendView in{n, k.data(), v.data(), page.data(), slot.data()};
      TWL_ASSERT_OK((*cpu)->Append(in, DType::kFp16, MemSpace::kHost, nullptr));
      for (Backend* b : gpus) TWL_ASSERT_OK(b->Append(in, DType::kFp16, MemSpace::kHost, nullptr));
      t0 += n;
    }
  }
  // The offload store's sums equal the reference over the FP16 rows read back.
  const PageGeometry g{c.page_size, c.head_dim, c.num_kv_heads, c.k_bits, c.k_scheme};
  TWL_ASSERT_OK((*off)->WaitAppends());
  const QuantKView oq = (*off)->DeviceQuant();
  ASSERT_NE(oq.meta, nullptr);
  ASSERT_EQ(oq.meta_bytes, DsMetadataBytesPerBlock(g));
  std::vector<float> dev_meta(static_cast<size_t>(num_pages * c.num_kv_heads * 2 * c.head_dim));
  TWL_ASSERT_OK(gpu::CopyToHost(dev_meta.data(), oq.meta, dev_meta.size() * 4));
  for (size_t s = 0; s < lens.size(); ++s) {
    for (int32_t p = 0; p * c.page_size < lens[s]; ++p) {
      const int32_t page = table[s * size_t(max_pages) + size_t(p)];
      const int32_t rows = std::min(c.page_size, lens[s] - p * c.page_size);
      std::vector<fp16_t> k(static_cast<size_t>(rows * row)), v(static_cast<size_t>(rows * row));
      TWL_ASSERT_OK((*cpu)->ReadPage(page, rows, k.data(), v.data()));
      for (int32_t h = 0; h < c.num_kv_heads; ++h) {
        const float* m = dev_meta.data() + g.BlockId(page, h) * 2 * c.head_dim;
        for (int32_t ch = 0; ch < c.head_dim; ++ch) {
          float s1 = 0.0f, s2 = 0.0f;
          for (int32_t r = 0; r < rows; ++r) {
            const float x = HalfToFloat(k[size_t((r * c.num_kv_heads + h) * c.head_dim + ch)]);
            s1 += x;
            s2 += x * x;
          }
          ASSERT_EQ(m[ch], s1) << "page " << page << " head " << h << " channel " << ch;
          ASSERT_EQ(m[c.head_dim + ch], s2) << "page " << page << " head " << h << " channel " << ch;
        }
      }
    }
  }
  BatchView batch;
  batch.num_seqs = int32_t(lens.size());
  batch.num_q_heads = c.num_q_heads;
  batch.seq_len = lens.data();
  batch.page_table = table.data();
  batch.max_pages = max_pages;
  const int64_t qn = int64_t(lens.size()) * c.num_q_heads * c.head_dim;
  std::vector<fp16_t> q(static_cast<size_t>(qn));
  for (auto& x : q) x = FloatToHalf(1.5f * nd(rng));
  DecodeRequest req;
  req.batch = batch;
  req.selector.kind = SelectorKind::kDoubleSparsity;
  req.selector.budget_pages = 12;
  req.pruner.p = 0.9f;
  req.q = q.data();
  std::vector<fp16_t> out_cpu(static_cast<size_t>(qn));
  req.out = out_cpu.data();
  StepTelemetry tc;
  TWL_ASSERT_OK((*cpu)->Decode(req, &tc));
  for (Backend* b : gpus) {
    SCOPED_TRACE(b->Name());
    std::vector<fp16_t> out_gpu(static_cast<size_t>(qn), 0x7E00);
    req.out = out_gpu.data();
    StepTelemetry tg;
    TWL_ASSERT_OK(b->Decode(req, &tg));
    const std::vector<float> a = testing::ToFloat(out_gpu), r = testing::ToFloat(out_cpu);
    ASSERT_TRUE(testing::AllFinite(a));
    // Same selection (checked below), but top-p at 0.9 over INT4 estimates summed in another
    // order may keep a few different marginal tokens: on the H200 (2026-12-02) one random
    // input gave 0.027 on both GPU backends alike. A broken selector or pruner is off by
    // far more than 5e-2.
    EXPECT_LE(testing::RelError(a, r), 5e-2) << "seed " << Seed();
    EXPECT_EQ(tg.selected_tokens, tc.selected_tokens);
  }
}

}  // namespace
}  // namespace twl

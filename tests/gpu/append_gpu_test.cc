// GPU append (LaunchAppend) against AppendRef: FP16 blocks, packed codes, scale/zero and the
// Quest min/max must be bit-identical over the whole store (written and untouched bytes),
// for several appends into partially filled pages, FP16/BF16/FP32 input, head dim 64/128,
// k_bits 2/4/8/16, and both K schemes (suites Shapes: per token; PageChannel: k_scheme 1).
#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "core/quantize.h"
#include "gpu_test_util.h"
#include "pipeline/fetch/row_cache/row_cache_fetch.cuh"
#include "row_cache_check.h"
#include "runtime/cpu/append_cpu.h"
#include "runtime/cuda/append_launch.h"

namespace twl {
namespace {

using testing::Download;
using testing::Upload;

struct AppendCase {
  int32_t head_dim, k_bits, num_kv_heads;
  KvInputType type;
  int32_t k_scheme = kKSchemeToken;
  bool bf16_store = false;  // PageGeometry::kv_dtype BF16
  // K >= 0 with a third of its values +0 or -0: every channel's minimum is a zero, which the
  // bounds, per-token zeros and range grids must store with the reference's bits (BoundInput,
  // core/half.h: the GPU's fminf and the host's std::min keep different ones of equal zeros).
  bool signed_zeros = false;
};

template <typename T>
std::vector<T> RandomBytesVec(size_t n, std::mt19937_64& rng) {
  std::vector<T> v(n);
  std::uniform_int_distribution<int> byte(0, 255);
  auto* p = reinterpret_cast<uint8_t*>(v.data());
  for (size_t i = 0; i < n * sizeof(T); ++i) p[i] = uint8_t(byte(rng));
  return v;
}

// One append round: sequence s (pages pages[s * pages_per_seq ...]) gets round[s] tokens
// after its len[s]; K/V drawn fresh (every 13th value an outlier) in `type`, and the same
// values rounded to the stored type g.kv_dtype for the reference (kh/vh). signed_zeros: see
// AppendCase.
struct AppendRound {
  std::vector<int32_t> page_id, slot;
  std::vector<float> kf, vf;                 // the draw (FP32 input)
  std::vector<uint16_t> k16, v16, kh, vh;    // FP16/BF16 input; stored type for the reference
  int32_t n() const { return int32_t(page_id.size()); }
};

AppendRound MakeRound(const PageGeometry& g, KvInputType type, const std::vector<int32_t>& pages,
                      int32_t pages_per_seq, const std::vector<int32_t>& round,
                      std::vector<int32_t>* len, std::mt19937_64& rng,
                      bool signed_zeros = false) {
  AppendRound r;
  for (size_t s = 0; s < round.size(); ++s) {
    for (int32_t i = 0; i < round[s]; ++i) {
      const int32_t t = (*len)[s]++;
      r.page_id.push_back(pages[size_t(int32_t(s) * pages_per_seq + t / g.page_size)]);
      r.slot.push_back(t % g.page_size);
    }
  }
  const int64_t row = int64_t(g.num_kv_heads) * g.head_dim, n = r.n();
  std::normal_distribution<float> nd(0.0f, 1.0f);
  r.kf.resize(size_t(n * row));
  r.vf.resize(size_t(n * row));
  for (int64_t i = 0; i < n * row; ++i) {
    r.kf[size_t(i)] = 0.2f * float(i % g.head_dim % 5) + (i % 13 == 0 ? 5.0f : 1.0f) * nd(rng);
    if (signed_zeros) {
      const uint64_t u = rng();
      r.kf[size_t(i)] = u % 3 == 0 ? ((u >> 8) & 1 ? -0.0f : 0.0f) : std::fabs(r.kf[size_t(i)]);
    }
    r.vf[size_t(i)] = nd(rng);
  }
  const size_t m = r.kf.size();
  r.k16.resize(m);
  r.v16.resize(m);
  r.kh.resize(m);
  r.vh.resize(m);
  for (size_t i = 0; i < m; ++i) {
    // The input's value, then one rounding to the stored type (as ConvertToKv / the kernels).
    float kin = r.kf[i], vin = r.vf[i];
    if (type == KvInputType::kBf16) {
      r.k16[i] = FloatToBf16(r.kf[i]);
      r.v16[i] = FloatToBf16(r.vf[i]);
      kin = Bf16ToFloat(r.k16[i]);
      vin = Bf16ToFloat(r.v16[i]);
    } else if (type == KvInputType::kFp16) {
      r.k16[i] = FloatToHalf(r.kf[i]);
      r.v16[i] = FloatToHalf(r.vf[i]);
      kin = HalfToFloat(r.k16[i]);
      vin = HalfToFloat(r.v16[i]);
    }
    r.kh[i] = g.FloatToKv(kin);
    r.vh[i] = g.FloatToKv(vin);
  }
  return r;
}

// The host reference store and its device copy, both starting from the same random bytes
// (so untouched bytes are compared too), with their views (k_scheme 1: no scale/zero).
struct TwinStores {
  std::vector<fp16_t> kv, scale, zero, kmin, kmax;
  std::vector<uint8_t> codes, range;
  gpu::DeviceBuffer d_kv, d_codes, d_scale, d_zero, d_kmin, d_kmax, d_range;
  FpKvView hkv, dkv;
  QuantKView hqk, dqk;
  TwinStores(const PageGeometry& g, int32_t num_pages, std::mt19937_64& rng) {
    const int64_t blocks = int64_t(num_pages) * g.num_kv_heads;
    kv = RandomBytesVec<fp16_t>(size_t(blocks * g.FpBlockElems()), rng);
    codes = RandomBytesVec<uint8_t>(size_t(blocks * g.CodeBlockBytes()), rng);
    scale = RandomBytesVec<fp16_t>(size_t(blocks * g.page_size), rng);
    zero = RandomBytesVec<fp16_t>(size_t(blocks * g.page_size), rng);
    kmin = RandomBytesVec<fp16_t>(size_t(blocks * g.head_dim), rng);
    kmax = RandomBytesVec<fp16_t>(size_t(blocks * g.head_dim), rng);
    range = RandomBytesVec<uint8_t>(size_t(blocks * g.RangeBlockBytes()), rng);
    d_kv = Upload(kv);
    d_codes = Upload(codes);
    d_scale = Upload(scale);
    d_zero = Upload(zero);
    d_kmin = Upload(kmin);
    d_kmax = Upload(kmax);
    d_range = Upload(range);
    hkv = FpKvView{kv.data(), nullptr};
    hqk = QuantKView{codes.data(), scale.data(), zero.data(), kmin.data(), kmax.data()};
    hqk.range = range.empty() ? nullptr : range.data();
    dkv = FpKvView{d_kv.as<fp16_t>(), nullptr};
    dqk = QuantKView{d_codes.as<uint8_t>(), d_scale.as<fp16_t>(), d_zero.as<fp16_t>(),
                     d_kmin.as<fp16_t>(), d_kmax.as<fp16_t>()};
    dqk.range = range.empty() ? nullptr : d_range.as<uint8_t>();
    if (!g.HasTokenScale()) dqk.scale = dqk.zero = nullptr;  // k_scheme 1 writes none
  }
  // Every byte of the device store equals the reference's.
  void ExpectDeviceEqualsHost() const {
    EXPECT_EQ(Download<fp16_t>(d_kv, kv.size()), kv);
    EXPECT_EQ(Download<uint8_t>(d_codes, codes.size()), codes);
    EXPECT_EQ(Download<fp16_t>(d_scale, scale.size()), scale);
    EXPECT_EQ(Download<fp16_t>(d_zero, zero.size()), zero);
    EXPECT_EQ(Download<fp16_t>(d_kmin, kmin.size()), kmin);
    EXPECT_EQ(Download<fp16_t>(d_kmax, kmax.size()), kmax);
    EXPECT_EQ(Download<uint8_t>(d_range, range.size()), range);
  }
};

// A GPU row cache (the offload store's RowCacheFetch, over the test's block store) as a
// decode step's append sees it: every row absent, `num_slots` slots on the free stack, the
// step stamp set to 7 so that the rows the append places must carry it.
struct DeviceRowSlots {
  static constexpr uint32_t kStamp = 7;
  int32_t num_slots, head_dim;
  pipeline_cuda::RowCacheFetch cache;
  const DeviceRowCache* view = nullptr;
  DeviceRowSlots(const PageGeometry& g, const fp16_t* d_store, int64_t num_blocks, int32_t n)
      : num_slots(n), head_dim(g.head_dim) {
    const FetchSource store{nullptr, d_store, g.FpBlockBytes(), num_blocks};
    EXPECT_TRUE(cache.Init(g, num_blocks, n, store, 1).ok());
    view = &cache.state();
    EXPECT_TRUE(gpu::CopyToDevice(view->d_step, &kStamp, 4).ok());
  }
  // The row cache's invariants (row_cache_check.h) against the store, every resident row
  // stamped; returns the resident rows.
  int64_t ExpectConsistent(const PageGeometry& g, const std::vector<fp16_t>& store) const {
    const testing::RowCacheSnapshot s = testing::ReadRowCache(*view, head_dim);
    testing::ExpectRowCacheConsistent(s, g, store.data());
    int64_t resident = 0;
    for (const int64_t r : s.row_of_slot) resident += r >= 0;
    for (size_t sl = 0; sl < s.row_of_slot.size(); ++sl) {
      if (s.row_of_slot[sl] >= 0) EXPECT_EQ(s.last_use[sl], kStamp) << "slot " << sl;
    }
    EXPECT_EQ(resident + int64_t(s.free_stack.size()), num_slots);
    return resident;
  }
};

class AppendGpuTest : public ::testing::TestWithParam<AppendCase> {};

TEST_P(AppendGpuTest, MatchesReferenceBitExact) {
  TWL_SKIP_WITHOUT_GPU();
  const AppendCase c = GetParam();
  PageGeometry g;
  g.page_size = 16;
  g.head_dim = c.head_dim;
  g.num_kv_heads = c.num_kv_heads;
  g.k_bits = c.k_bits;
  g.k_scheme = c.k_scheme;
  g.kv_dtype = c.bf16_store ? kKvBf16 : kKvFp16;
  std::mt19937_64 rng(::testing::UnitTest::GetInstance()->random_seed() + c.head_dim * 7 +
                      c.k_bits);
  const int32_t num_pages = 23;
  TwinStores ts(g, num_pages, rng);
  const FpKvView hkv = ts.hkv, dkv = ts.dkv;
  const QuantKView hqk = ts.hqk, dqk = ts.dqk;

  // Three sequences over shuffled pages, appended in uneven rounds (partial pages refilled).
  std::vector<int32_t> pages(num_pages);
  for (int32_t i = 0; i < num_pages; ++i) pages[size_t(i)] = i;
  std::shuffle(pages.begin(), pages.end(), rng);
  std::vector<int32_t> len = {0, 0, 0};
  const std::vector<std::vector<int32_t>> rounds = {{37, 1, 16}, {5, 16, 1}, {1, 30, 0}, {70, 2, 9}};
  for (const auto& round : rounds) {
    const AppendRound rd = MakeRound(g, c.type, pages, 8, round, &len, rng, c.signed_zeros);
    const int32_t n = rd.n();
    const std::vector<int32_t>& page_id = rd.page_id;
    const std::vector<int32_t>& slot = rd.slot;
    const std::vector<float>& kf = rd.kf;
    const std::vector<float>& vf = rd.vf;
    const std::vector<uint16_t>& k16 = rd.k16;
    const std::vector<uint16_t>& v16 = rd.v16;
    std::vector<uint16_t> kh = rd.kh, vh = rd.vh;
    const AppendView hin{n, kh.data(), vh.data(), page_id.data(), slot.data()};
    ASSERT_TRUE(AppendRef(g, hin, hkv, hqk).ok());

    gpu::DeviceBuffer d_k = c.type == KvInputType::kFp32 ? Upload(kf) : Upload(k16);
    gpu::DeviceBuffer d_v = c.type == KvInputType::kFp32 ? Upload(vf) : Upload(v16);
    gpu::DeviceBuffer d_page = Upload(page_id), d_slot = Upload(slot);
    std::vector<int32_t> plan_pages, plan_rows;
    PlanAppendPages(page_id.data(), slot.data(), n, &plan_pages, &plan_rows);
    gpu::DeviceBuffer d_pp = Upload(plan_pages), d_pr = Upload(plan_rows);
    const AppendView din{n, d_k.as<fp16_t>(), d_v.as<fp16_t>(), d_page.as<int32_t>(),
                         d_slot.as<int32_t>()};
    const AppendPagePlan plan{d_pp.as<int32_t>(), d_pr.as<int32_t>(),
                              int32_t(plan_pages.size())};
    TWL_ASSERT_OK(LaunchAppend(g, din, c.type, plan, dkv, dqk, nullptr));
    TWL_ASSERT_OK(gpu::DeviceSync());
  }
  ts.ExpectDeviceEqualsHost();
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AppendGpuTest,
    ::testing::Values(AppendCase{128, 4, 4, KvInputType::kFp16},
                      AppendCase{64, 4, 2, KvInputType::kFp16},
                      AppendCase{128, 2, 3, KvInputType::kFp16},
                      AppendCase{64, 8, 2, KvInputType::kFp16},
                      AppendCase{128, 16, 2, KvInputType::kFp16},
                      AppendCase{128, 4, 2, KvInputType::kBf16},
                      AppendCase{64, 4, 1, KvInputType::kFp32},
                      AppendCase{96, 4, 2, KvInputType::kFp16},
                      AppendCase{256, 2, 2, KvInputType::kBf16},
                      // BF16 storage from each input type.
                      AppendCase{128, 4, 4, KvInputType::kBf16, kKSchemeToken, true},
                      AppendCase{64, 4, 2, KvInputType::kFp16, kKSchemeToken, true},
                      AppendCase{96, 8, 2, KvInputType::kFp32, kKSchemeToken, true},
                      // Signed zeros: per-token zeros and the Quest bounds (MinMaxKernel).
                      AppendCase{128, 4, 2, KvInputType::kFp16, kKSchemeToken, false, true}));

// k_scheme 1 (per page channel): every append re-quantizes the touched blocks' filled rows
// against their new range (MinMaxKernel), bit-exact with AppendRef (the same correctly
// rounded FP32 step, quotient and rint, round half to even, as QuantizeBlockRowsRef).
INSTANTIATE_TEST_SUITE_P(
    PageChannel, AppendGpuTest,
    ::testing::Values(AppendCase{128, 4, 4, KvInputType::kFp16, kKSchemePageChannel},
                      AppendCase{64, 4, 2, KvInputType::kBf16, kKSchemePageChannel},
                      AppendCase{128, 2, 3, KvInputType::kFp16, kKSchemePageChannel},
                      AppendCase{64, 8, 2, KvInputType::kFp32, kKSchemePageChannel},
                      AppendCase{128, 4, 2, KvInputType::kBf16, kKSchemePageChannel, true},
                      AppendCase{64, 2, 2, KvInputType::kFp16, kKSchemePageChannel, true},
                      AppendCase{128, 4, 2, KvInputType::kFp32, kKSchemePageChannel, false,
                                 true}));

// The bulk append (LaunchAppendSegments: one launch per call, bounds merged in the same pass)
// against AppendRef, bit-exact over the whole store, with whole pages sent through a staging
// buffer and copied into the store afterwards (as the offload backend's copy-engine path does).
class AppendSegmentsGpuTest : public ::testing::TestWithParam<AppendCase> {};

TEST_P(AppendSegmentsGpuTest, MatchesReferenceBitExact) {
  TWL_SKIP_WITHOUT_GPU();
  const AppendCase c = GetParam();
  PageGeometry g;
  g.page_size = 16;
  g.head_dim = c.head_dim;
  g.num_kv_heads = c.num_kv_heads;
  g.k_bits = c.k_bits;
  g.k_scheme = c.k_scheme;
  g.kv_dtype = c.bf16_store ? kKvBf16 : kKvFp16;
  std::mt19937_64 rng(::testing::UnitTest::GetInstance()->random_seed() + c.head_dim * 5 +
                      c.k_bits);
  const int32_t num_pages = 40;
  TwinStores ts(g, num_pages, rng);
  const FpKvView hkv = ts.hkv, dkv = ts.dkv;
  const QuantKView hqk = ts.hqk, dqk = ts.dqk;
  const int64_t page_elems = int64_t(g.num_kv_heads) * g.FpBlockElems();
  gpu::DeviceBuffer d_stage;
  TWL_ASSERT_OK(d_stage.Reserve(size_t(num_pages * page_elems) * 2));

  // Four sequences of at most 10 pages over shuffled page ids; ragged rounds: whole pages,
  // partial first and last pages, single tokens, zero counts.
  std::vector<int32_t> pages(num_pages);
  for (int32_t i = 0; i < num_pages; ++i) pages[size_t(i)] = i;
  std::shuffle(pages.begin(), pages.end(), rng);
  std::vector<int32_t> len = {0, 0, 0, 0};
  const std::vector<std::vector<int32_t>> rounds = {
      {37, 1, 16, 64}, {5, 16, 1, 1}, {1, 30, 0, 1}, {70, 2, 9, 0}, {32, 40, 1, 13}};
  int32_t round_index = 0;
  // The inline rounds also insert their rows into a row cache with room for about half of
  // them (a decode step's append in the offload store); k_scheme 1 then re-quantizes the
  // earlier rows that have a slot from the slot.
  DeviceRowSlots row_slots(g, ts.d_kv.as<fp16_t>(), int64_t(num_pages) * g.num_kv_heads,
                           52 * g.num_kv_heads);
  int64_t inserted_rows = 0;
  for (const auto& round : rounds) {
    const AppendRound rd = MakeRound(g, c.type, pages, 10, round, &len, rng, c.signed_zeros);
    const int32_t n = rd.n();
    const std::vector<int32_t>& page_id = rd.page_id;
    const std::vector<int32_t>& slot = rd.slot;
    const std::vector<float>& kf = rd.kf;
    const std::vector<float>& vf = rd.vf;
    const std::vector<uint16_t>& k16 = rd.k16;
    const std::vector<uint16_t>& v16 = rd.v16;
    std::vector<uint16_t> kh = rd.kh, vh = rd.vh;
    const AppendView hin{n, kh.data(), vh.data(), page_id.data(), slot.data()};
    ASSERT_TRUE(AppendRef(g, hin, hkv, hqk).ok());

    std::vector<AppendSegment> segs;
    ASSERT_TRUE(PlanAppendSegments(page_id.data(), slot.data(), n, &segs));
    std::vector<std::pair<int32_t, int32_t>> staged;  // (stage, page)
    for (AppendSegment& sg : segs) {
      if (sg.row_begin == 0 && sg.row_end == g.page_size) {
        sg.stage = int32_t(staged.size());
        staged.emplace_back(sg.stage, sg.page);
      }
    }
    gpu::DeviceBuffer d_k = c.type == KvInputType::kFp32 ? Upload(kf) : Upload(k16);
    gpu::DeviceBuffer d_v = c.type == KvInputType::kFp32 ? Upload(vf) : Upload(v16);
    gpu::DeviceBuffer d_segs = Upload(segs);
    // Rounds alternate between the device array and the kernel-parameter form (a decode
    // step's append): the same bytes either way.
    if (++round_index % 2 == 0 && segs.size() <= size_t(kInlineAppendSegments)) {
      TWL_ASSERT_OK(LaunchAppendSegmentsInline(g, segs.data(), int32_t(segs.size()), d_k.get(),
                                               d_v.get(), c.type, dkv, d_stage.as<fp16_t>(),
                                               dqk, row_slots.view, nullptr));
      inserted_rows += int64_t(n) * g.num_kv_heads;
    } else {
      TWL_ASSERT_OK(LaunchAppendSegments(g, d_segs.as<AppendSegment>(), int32_t(segs.size()),
                                         d_k.get(), d_v.get(), c.type, dkv,
                                         d_stage.as<fp16_t>(), dqk, nullptr));
    }
    TWL_ASSERT_OK(gpu::DeviceSync());
    for (const auto& [st, page] : staged) {
      TWL_ASSERT_OK(gpu::CopyOnDevice(ts.d_kv.as<fp16_t>() + page * page_elems,
                                            d_stage.as<fp16_t>() + st * page_elems,
                                            size_t(page_elems) * 2));
    }
  }
  ts.ExpectDeviceEqualsHost();
  ASSERT_GT(inserted_rows, 0);
  EXPECT_EQ(row_slots.ExpectConsistent(g, ts.kv),
            std::min<int64_t>(inserted_rows, row_slots.num_slots));
}

INSTANTIATE_TEST_SUITE_P(
    Shapes, AppendSegmentsGpuTest,
    ::testing::Values(AppendCase{128, 4, 8, KvInputType::kFp16},
                      AppendCase{64, 4, 2, KvInputType::kFp16},
                      AppendCase{128, 2, 3, KvInputType::kFp16},
                      AppendCase{64, 8, 2, KvInputType::kFp16},
                      AppendCase{128, 16, 2, KvInputType::kFp16},
                      AppendCase{128, 4, 2, KvInputType::kBf16},
                      AppendCase{64, 4, 1, KvInputType::kFp32},
                      AppendCase{256, 4, 1, KvInputType::kFp16},
                      AppendCase{32, 4, 2, KvInputType::kBf16},
                      AppendCase{96, 4, 3, KvInputType::kFp16},
                      AppendCase{96, 2, 2, KvInputType::kFp32},
                      // BF16 storage: vector and scalar loads, each input type.
                      AppendCase{128, 4, 4, KvInputType::kBf16, kKSchemeToken, true},
                      AppendCase{64, 4, 2, KvInputType::kFp16, kKSchemeToken, true},
                      AppendCase{256, 8, 1, KvInputType::kFp32, kKSchemeToken, true},
                      AppendCase{96, 4, 2, KvInputType::kBf16, kKSchemePageChannel, true}));

// k_scheme 1: each segment's block re-quantizes rows [0, row_end), the earlier rows from the
// block store and its own rows from where it wrote them (store or staging).
INSTANTIATE_TEST_SUITE_P(
    PageChannel, AppendSegmentsGpuTest,
    ::testing::Values(AppendCase{128, 4, 8, KvInputType::kFp16, kKSchemePageChannel},
                      AppendCase{64, 4, 2, KvInputType::kBf16, kKSchemePageChannel},
                      AppendCase{128, 2, 3, KvInputType::kFp16, kKSchemePageChannel},
                      AppendCase{64, 8, 2, KvInputType::kFp32, kKSchemePageChannel},
                      AppendCase{256, 4, 1, KvInputType::kFp16, kKSchemePageChannel},
                      AppendCase{32, 4, 2, KvInputType::kBf16, kKSchemePageChannel},
                      // Signed zeros (see AppendCase): bounds, range grid, per-token zeros.
                      AppendCase{128, 4, 2, KvInputType::kFp16, kKSchemePageChannel, false,
                                 true},
                      AppendCase{64, 4, 2, KvInputType::kFp32, kKSchemePageChannel, false,
                                 true},
                      AppendCase{128, 4, 2, KvInputType::kFp16, kKSchemeToken, false, true}));

TEST(AppendGpu, RejectsBadArguments) {
  TWL_SKIP_WITHOUT_GPU();
  PageGeometry g;
  AppendView in{1, nullptr, nullptr, nullptr, nullptr};
  EXPECT_EQ(LaunchAppend(g, in, KvInputType::kFp16, {}, {}, {}, nullptr).code(),
            absl::StatusCode::kInvalidArgument);
  g.head_dim = 512;
  EXPECT_EQ(LaunchAppend(g, in, KvInputType::kFp16, {}, {}, {}, nullptr).code(),
            absl::StatusCode::kUnimplemented);
  // More segments than the kernel parameter holds: refused, nothing launched.
  PageGeometry pg;
  pg.head_dim = 64;
  gpu::DeviceBuffer kv, codes, mn, mx, rows;
  TWL_ASSERT_OK(kv.Reserve(size_t(pg.FpBlockElems()) * 2 * 64));
  TWL_ASSERT_OK(codes.Reserve(size_t(pg.CodeBlockBytes()) * 64));
  TWL_ASSERT_OK(mn.Reserve(size_t(pg.head_dim) * 2 * 64));
  TWL_ASSERT_OK(mx.Reserve(size_t(pg.head_dim) * 2 * 64));
  TWL_ASSERT_OK(rows.Reserve(4096));
  QuantKView qk;
  qk.codes = codes.as<uint8_t>();
  qk.kmin = mn.as<fp16_t>();
  qk.kmax = mx.as<fp16_t>();
  if (pg.HasTokenScale()) {
    qk.scale = mn.as<fp16_t>();
    qk.zero = mx.as<fp16_t>();
  }
  const std::vector<AppendSegment> many(size_t(kInlineAppendSegments) + 1);
  const absl::Status st = LaunchAppendSegmentsInline(
      pg, many.data(), int32_t(many.size()), rows.get(), rows.get(), KvInputType::kFp16,
      FpKvView{kv.as<fp16_t>(), nullptr}, nullptr, qk, nullptr, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(st.message().find("inline"), std::string::npos) << st;
}

}  // namespace
}  // namespace twl

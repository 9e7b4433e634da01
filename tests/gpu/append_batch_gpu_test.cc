// Runtime::AppendBatch on the GPU backends (offload with the copy-engine and the kernel
// append paths, HBM) from device (and host) memory on a caller's stream, against the CPU backend fed
// the same tokens: the cache reads back bit-exact, decode on the same stream and on another
// stream (ordering by events) matches the CPU reference; a batch big enough to take several
// staging rounds, ragged and zero counts, decode-time single tokens and forked sequences
// (copy-on-write) included. And the call does not wait for the device: enqueued behind a
// long kernel, it returns long before that kernel ends.
#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "gpu/device.h"
#include "gpu/synth.h"
#include "gpu_test_util.h"
#include "runtime/runtime.h"

namespace twl {
namespace {

using testing::RelError;
using testing::ToFloat;

enum class Kind { kOffloadCopy, kOffloadKernel, kHbm };

std::string Name(const ::testing::TestParamInfo<Kind>& info) {
  switch (info.param) {
    case Kind::kOffloadCopy:
      return "OffloadCopyEngine";
    case Kind::kOffloadKernel:
      return "OffloadKernel";
    default:
      return "Hbm";
  }
}

RuntimeConfig Config(BackendKind backend) {
  RuntimeConfig c;
  c.num_layers = 2;
  c.num_q_heads = 8;
  c.num_kv_heads = 4;
  c.head_dim = 128;
  c.page_size = 16;
  c.host_pool_bytes = int64_t(64) << 20;      // 2048 pages of 32 KiB: staging 2 x 512
  c.gpu_cache_bytes = int64_t(300) * 8192;    // 300 cached blocks
  c.selector_budget_fraction = 0.3f;
  c.backend = backend;
  return c;
}

// Creates the runtime under test; the offload append path is chosen by TWL_APPEND_PATH,
// read when the backend is created.
std::unique_ptr<Runtime> MakeGpu(Kind kind, RuntimeConfig c) {
  c.backend = kind == Kind::kHbm ? BackendKind::kGpuHbm : BackendKind::kGpuOffload;
  if (kind == Kind::kOffloadKernel) setenv("TWL_APPEND_PATH", "kernel", 1);
  auto rt = Runtime::Create(c);
  unsetenv("TWL_APPEND_PATH");
  EXPECT_TRUE(rt.ok()) << rt.status();
  return rt.ok() ? std::move(*rt) : nullptr;
}

std::vector<fp16_t> Random(std::mt19937_64& rng, size_t n) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<fp16_t> out(n);
  for (fp16_t& x : out) x = FloatToHalf(nd(rng));
  return out;
}

class AppendBatchGpuTest : public ::testing::TestWithParam<Kind> {};

TEST_P(AppendBatchGpuTest, DeviceInputOnCallerStreamMatchesCpu) {
  TWL_SKIP_WITHOUT_GPU();
  const RuntimeConfig cfg = Config(BackendKind::kCpu);
  auto gpu_rt = MakeGpu(GetParam(), cfg);
  auto cpu_rt = Runtime::Create(cfg);
  ASSERT_TRUE(gpu_rt && cpu_rt.ok());
  Runtime& rg = *gpu_rt;
  Runtime& rc = **cpu_rt;
  auto s1 = gpu::StreamCreate(), s2 = gpu::StreamCreate();
  ASSERT_TRUE(s1.ok() && s2.ok());
  std::vector<SeqId> ig, ic;
  for (int i = 0; i < 3; ++i) {
    ig.push_back(*rg.CreateSequence());
    ic.push_back(*rc.CreateSequence());
  }
  const int64_t row = int64_t(cfg.num_kv_heads) * cfg.head_dim;
  std::mt19937_64 rng(::testing::UnitTest::GetInstance()->random_seed() + 17);
  // Device inputs must live until their stream has consumed them: kept to the end.
  std::vector<gpu::DeviceBuffer> keep;
  auto append = [&](int32_t layer, const std::vector<int32_t>& counts, void* stream,
                    bool host_input = false) {
    int64_t total = 0;
    for (int32_t n : counts) total += n;
    const std::vector<fp16_t> k = Random(rng, size_t(total * row));
    const std::vector<fp16_t> v = Random(rng, size_t(total * row));
    keep.emplace_back();
    gpu::DeviceBuffer& d = keep.back();
    TWL_ASSERT_OK(d.Reserve(size_t(total * row) * 4 + 16));
    // Offset by 16 bytes from the allocation: aligned input, not 256-byte aligned.
    char* dk = d.as<char>() + 16;
    char* dv = dk + total * row * 2;
    TWL_ASSERT_OK(gpu::CopyToDevice(dk, k.data(), size_t(total * row) * 2, stream));
    TWL_ASSERT_OK(gpu::CopyToDevice(dv, v.data(), size_t(total * row) * 2, stream));
    std::vector<SeqId> sg(ig.begin(), ig.begin() + counts.size());
    std::vector<SeqId> sc(ic.begin(), ic.begin() + counts.size());
    if (host_input) {  // host rows: staged through pinned memory (in chunks when large)
      TWL_ASSERT_OK(rg.AppendBatch(layer, sg, counts, k.data(), v.data(), DType::kFp16,
                                   MemSpace::kHost, stream));
    } else {
      TWL_ASSERT_OK(rg.AppendBatch(layer, sg, counts, dk, dv, DType::kFp16, MemSpace::kDevice,
                                   stream));
    }
    TWL_ASSERT_OK(rc.AppendBatch(layer, sc, counts, k.data(), v.data(), DType::kFp16,
                                 MemSpace::kHost, nullptr));
  };
  auto decode = [&](int32_t layer, void* stream, const char* what) {
    const size_t n = ig.size() * cfg.num_q_heads * cfg.head_dim;
    const std::vector<fp16_t> q = Random(rng, n);
    std::vector<fp16_t> out(n, 0xFFFF), ref(n);
    gpu::DeviceBuffer dq, dout;
    TWL_ASSERT_OK(dq.Reserve(n * 2));
    TWL_ASSERT_OK(dout.Reserve(n * 2));
    TWL_ASSERT_OK(gpu::CopyToDevice(dq.get(), q.data(), n * 2, stream));
    TWL_ASSERT_OK(rg.Decode(layer, ig, dq.as<fp16_t>(), dout.as<fp16_t>(), MemSpace::kDevice, {},
                            stream, nullptr));
    TWL_ASSERT_OK(gpu::CopyToHost(out.data(), dout.get(), n * 2, stream));
    TWL_ASSERT_OK(gpu::StreamSync(stream));
    TWL_ASSERT_OK(rg.TakeAsyncError());
    TWL_ASSERT_OK(rc.Decode(layer, ic, q.data(), ref.data(), MemSpace::kHost, {}, nullptr,
                            nullptr));
    EXPECT_LE(RelError(ToFloat(out), ToFloat(ref)), 2e-2) << what << ", layer " << layer;
  };
  void* a = *s1;
  // Layer 0: a prefill batch of 1189 whole pages (three staging rounds of at most 512, the
  // halves of the staging alternating), with
  // partial last pages; layer 1: a smaller one. Then ragged and zero counts, single tokens.
  append(0, {7000, 12000, 37}, a);
  append(1, {300, 200, 37}, a);
  // Host input: a large batch (several chunks of pinned staging) and a small one (it rides
  // in the descriptor ring).
  append(1, {4500, 700, 0}, a, /*host_input=*/true);
  append(1, {3, 1, 2}, a, /*host_input=*/true);
  for (int32_t layer = 0; layer < 2; ++layer) {
    append(layer, {5, 0, 100}, a);
    for (int step = 0; step < 3; ++step) append(layer, {1, 1, 1}, a);
  }
  for (int32_t layer = 0; layer < 2; ++layer) decode(layer, a, "same stream");
  // Appends on one stream, decode on another: the runtime orders them.
  for (int32_t layer = 0; layer < 2; ++layer) append(layer, {1, 2, 3}, a);
  for (int32_t layer = 0; layer < 2; ++layer) decode(layer, *s2, "other stream");
  // A fork shares partial last pages: the next batch copies them (copy-on-write).
  ig.push_back(*rg.ForkSequence(ig[2]));
  ic.push_back(*rc.ForkSequence(ic[2]));
  for (int32_t layer = 0; layer < 2; ++layer) append(layer, {2, 3, 1, 4}, *s2);
  for (int32_t layer = 0; layer < 2; ++layer) decode(layer, a, "after fork");
  // The cache reads back exactly (ReadKv waits for the appends).
  for (size_t i = 0; i < ig.size(); ++i) {
    for (int32_t layer = 0; layer < 2; ++layer) {
      std::vector<fp16_t> kg, vg, kc, vc;
      TWL_ASSERT_OK(rg.ReadKv(ig[i], layer, &kg, &vg));
      TWL_ASSERT_OK(rc.ReadKv(ic[i], layer, &kc, &vc));
      EXPECT_TRUE(kg == kc && vg == vc) << "sequence " << i << " layer " << layer;
    }
  }
  TWL_ASSERT_OK(gpu::DeviceSync());
  keep.clear();
  gpu::StreamDestroy(*s1);
  gpu::StreamDestroy(*s2);
}

TEST_P(AppendBatchGpuTest, DoesNotWaitForTheStream) {
  TWL_SKIP_WITHOUT_GPU();
  auto rt = MakeGpu(GetParam(), Config(BackendKind::kCpu));
  ASSERT_TRUE(rt);
  auto s = gpu::StreamCreate();
  ASSERT_TRUE(s.ok());
  const RuntimeConfig& c = rt->config();
  const int64_t row = int64_t(c.num_kv_heads) * c.head_dim;
  std::vector<SeqId> ids = {*rt->CreateSequence(), *rt->CreateSequence()};
  const std::vector<int32_t> counts = {1000, 1000};
  std::mt19937_64 rng(5);
  const std::vector<fp16_t> k = Random(rng, size_t(2000 * row));
  gpu::DeviceBuffer dk, dv;
  TWL_ASSERT_OK(dk.Reserve(k.size() * 2));
  TWL_ASSERT_OK(dv.Reserve(k.size() * 2));
  TWL_ASSERT_OK(gpu::CopyToDevice(dk.get(), k.data(), k.size() * 2));
  TWL_ASSERT_OK(gpu::CopyToDevice(dv.get(), k.data(), k.size() * 2));
  // Warm-up: the first batch of a size may allocate (and then wait).
  TWL_ASSERT_OK(rt->AppendBatch(0, ids, counts, dk.get(), dv.get(), DType::kFp16,
                                MemSpace::kDevice, *s));
  TWL_ASSERT_OK(gpu::StreamSync(*s));
  // A 1.5 s kernel on the stream, then the append behind it.
  TWL_ASSERT_OK(LaunchBusyWait(1.5e6, 1, 32, 0, *s));
  const auto t0 = std::chrono::steady_clock::now();
  TWL_ASSERT_OK(rt->AppendBatch(1, ids, counts, dk.get(), dv.get(), DType::kFp16,
                                MemSpace::kDevice, *s));
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_LT(ms, 500.0) << "the append waited for the stream";
  // The rows are there once the stream gets past the append (ReadKv waits for it).
  std::vector<fp16_t> rk, rv;
  TWL_ASSERT_OK(rt->ReadKv(ids[1], 1, &rk, &rv));
  EXPECT_TRUE(std::equal(rk.begin(), rk.end(), k.begin() + 1000 * row));
  TWL_ASSERT_OK(gpu::StreamSync(*s));
  gpu::StreamDestroy(*s);
}

INSTANTIATE_TEST_SUITE_P(Backends, AppendBatchGpuTest,
                         ::testing::Values(Kind::kOffloadCopy, Kind::kOffloadKernel, Kind::kHbm),
                         Name);

}  // namespace
}  // namespace twl

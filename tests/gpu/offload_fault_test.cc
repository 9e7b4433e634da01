// Fault injection on the GPU backends (skipped without a GPU): the pinned host pool cannot be
// allocated (cache/host_arena.h limit hook), device memory runs out at creation (the hot-page
// cache or the HBM pool does not fit) and during a decode. Each returns ResourceExhausted
// (TWL_CAPACITY_EXHAUSTED at the C API) and leaks nothing, and a runtime created before keeps
// its appended K/V (bit for bit) and decodes as before once memory is back.
#include <algorithm>
#include <cmath>
#include <memory>
#include <random>
#include <vector>

#include "core/half.h"
#include "cache/host_arena.h"
#include "gpu/device.h"
#include "gtest/gtest.h"
#include "runtime/runtime.h"

namespace twl {
namespace {

#define TWL_FAULT_SKIP_WITHOUT_GPU()                                              \
  do {                                                                            \
    if (!::twl::gpu::GpuAvailable()) {                                            \
      GTEST_SKIP() << "no CUDA device visible: GPU fault test skipped (CPU only)"; \
    }                                                                             \
  } while (0)

RuntimeConfig Config(BackendKind backend) {
  RuntimeConfig c;
  c.num_layers = 1;
  c.num_q_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 128;
  c.page_size = 16;
  c.top_p = 0.9f;
  c.backend = backend;
  c.host_pool_bytes = 64ll << 20;
  c.gpu_cache_bytes = 4ll << 20;
  return c;
}

std::vector<fp16_t> RandomHalf(std::mt19937* rng, size_t n) {
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<fp16_t> x(n);
  for (fp16_t& h : x) h = FloatToHalf(d(*rng));
  return x;
}

// A runtime with `seqs` sequences of `len` random tokens, and a decode of all of them.
struct Loaded {
  std::unique_ptr<Runtime> rt;
  std::vector<SeqId> ids;
  std::vector<std::vector<fp16_t>> k, v;
  std::vector<fp16_t> q;

  absl::Status Decode(std::vector<fp16_t>* out) {
    out->assign(q.size(), 0);
    return rt->Decode(0, ids, q.data(), out->data(), MemSpace::kHost, {}, nullptr, nullptr);
  }
  // Every sequence still holds exactly what was appended.
  void ExpectKvIntact() {
    for (size_t i = 0; i < ids.size(); ++i) {
      std::vector<fp16_t> kk, vv;
      ASSERT_TRUE(rt->ReadKv(ids[i], 0, &kk, &vv).ok());
      EXPECT_EQ(kk, k[i]) << "sequence " << i;
      EXPECT_EQ(vv, v[i]) << "sequence " << i;
    }
  }
};

Loaded Load(const RuntimeConfig& c, int seqs, int32_t len, uint32_t seed) {
  Loaded l;
  auto rt = Runtime::Create(c);
  EXPECT_TRUE(rt.ok()) << rt.status();
  if (!rt.ok()) return l;
  l.rt = std::move(*rt);
  std::mt19937 rng(seed);
  const size_t tok = size_t(c.num_kv_heads) * c.head_dim;
  for (int s = 0; s < seqs; ++s) {
    l.ids.push_back(*l.rt->CreateSequence());
    l.k.push_back(RandomHalf(&rng, size_t(len) * tok));
    l.v.push_back(RandomHalf(&rng, size_t(len) * tok));
    EXPECT_TRUE(l.rt->Append(l.ids.back(), 0, len, l.k.back().data(), l.v.back().data(),
                             DType::kFp16, MemSpace::kHost)
                    .ok());
  }
  l.q = RandomHalf(&rng, size_t(seqs) * c.num_q_heads * c.head_dim);
  return l;
}

void ExpectNear(const std::vector<fp16_t>& a, const std::vector<fp16_t>& b, const char* what) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    const float x = HalfToFloat(a[i]), y = HalfToFloat(b[i]);
    ASSERT_LE(std::fabs(x - y), 1e-3f + 1e-3f * std::fabs(y)) << what << " at " << i;
  }
}

// Takes device memory until cudaMalloc fails, then gives back `keep_free` bytes' worth.
class DeviceHog {
 public:
  explicit DeviceHog(size_t keep_free) {
    for (size_t chunk : {size_t(1) << 30, size_t(64) << 20, size_t(4) << 20}) {
      while (true) {
        absl::StatusOr<void*> p = gpu::Malloc(chunk);
        if (!p.ok()) break;
        held_.push_back({*p, chunk});
      }
    }
    (void)gpu::LastError("hog");  // an allocation failure is not sticky; clear it anyway
    size_t freed = 0;
    while (freed < keep_free && !held_.empty()) {
      freed += held_.back().second;
      gpu::Free(held_.back().first);
      held_.pop_back();
    }
  }
  ~DeviceHog() {
    for (auto& [p, bytes] : held_) gpu::Free(p);
  }
  bool holding() const { return !held_.empty(); }

 private:
  std::vector<std::pair<void*, size_t>> held_;
};

TEST(GpuFaults, PinnedPoolAllocationFailureLeaksNothingAndKeepsOtherRuntimes) {
  TWL_FAULT_SKIP_WITHOUT_GPU();
  Loaded a = Load(Config(BackendKind::kGpuOffload), 2, 300, 1);
  ASSERT_TRUE(a.rt);
  std::vector<fp16_t> before, after;
  ASSERT_TRUE(a.Decode(&before).ok());
  const int64_t pinned = HostBytesInUse(HostMemKind::kPinnedMapped);
  // (The offload backend allocates no plain host arena, so only the pinned pool meets it.)
  SetHostAllocLimitForTesting(pinned + 4096);
  auto b = Runtime::Create(Config(BackendKind::kGpuOffload));
  SetHostAllocLimitForTesting(-1);
  ASSERT_FALSE(b.ok());
  EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted) << b.status();
  EXPECT_EQ(HostBytesInUse(HostMemKind::kPinnedMapped), pinned);
  a.ExpectKvIntact();
  ASSERT_TRUE(a.Decode(&after).ok());
  ExpectNear(after, before, "decode after a failed pinned allocation");
  EXPECT_TRUE(a.rt->TakeAsyncError().ok());
}

TEST(GpuFaults, DeviceMemoryExhaustedAtCreation) {
  TWL_FAULT_SKIP_WITHOUT_GPU();
  Loaded a = Load(Config(BackendKind::kGpuOffload), 2, 300, 2);
  ASSERT_TRUE(a.rt);
  std::vector<fp16_t> before, after;
  ASSERT_TRUE(a.Decode(&before).ok());
  {
    DeviceHog hog(size_t(96) << 20);  // less than the cache below, more than its INT4 K
    ASSERT_TRUE(hog.holding());
    RuntimeConfig offload = Config(BackendKind::kGpuOffload);
    offload.host_pool_bytes = 256ll << 20;  // INT4 K + bounds: about 40 MiB, fits
    offload.gpu_cache_bytes = 192ll << 20;  // the hot-page cache does not
    auto b = Runtime::Create(offload);
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.status().code(), absl::StatusCode::kResourceExhausted) << b.status();
    RuntimeConfig hbm = Config(BackendKind::kGpuHbm);
    hbm.host_pool_bytes = 1ll << 30;  // the HBM pool cannot fit
    auto h = Runtime::Create(hbm);
    ASSERT_FALSE(h.ok());
    EXPECT_EQ(h.status().code(), absl::StatusCode::kResourceExhausted) << h.status();
  }
  // Nothing leaked: the same creations work once memory is back.
  RuntimeConfig offload = Config(BackendKind::kGpuOffload);
  offload.host_pool_bytes = 256ll << 20;
  offload.gpu_cache_bytes = 192ll << 20;
  EXPECT_TRUE(Runtime::Create(offload).ok());
  a.ExpectKvIntact();
  ASSERT_TRUE(a.Decode(&after).ok());
  ExpectNear(after, before, "decode after failed creations");
}

TEST(GpuFaults, DeviceMemoryExhaustedDuringDecodeKeepsTheCache) {
  TWL_FAULT_SKIP_WITHOUT_GPU();
  for (BackendKind kind : {BackendKind::kGpuOffload, BackendKind::kGpuHbm}) {
    // One short sequence decoded first (small scratch), then a batch of long ones.
    Loaded a = Load(Config(kind), 12, 2000, 3);
    ASSERT_TRUE(a.rt);
    std::vector<fp16_t> out;
    {
      std::vector<fp16_t> q1(a.q.begin(), a.q.begin() + long(a.q.size() / 12)), o1(q1.size());
      ASSERT_TRUE(a.rt->Decode(0, {a.ids[0]}, q1.data(), o1.data(), MemSpace::kHost, {}, nullptr,
                               nullptr)
                      .ok());
    }
    absl::Status faulted;
    std::vector<fp16_t> during;
    {
      DeviceHog hog(0);
      faulted = a.Decode(&during);
    }
    if (!faulted.ok()) {
      EXPECT_EQ(faulted.code(), absl::StatusCode::kResourceExhausted) << faulted;
    }
    (void)a.rt->TakeAsyncError();
    a.ExpectKvIntact();
    ASSERT_TRUE(a.Decode(&out).ok());
    if (faulted.ok()) ExpectNear(during, out, "decode that fit in the remaining memory");
    // The same data decodes the same on a runtime that never ran out of memory.
    Loaded fresh = Load(Config(kind), 12, 2000, 3);
    std::vector<fp16_t> ref;
    ASSERT_TRUE(fresh.Decode(&ref).ok());
    ExpectNear(out, ref, "decode after running out of device memory");
  }
}

}  // namespace
}  // namespace twl

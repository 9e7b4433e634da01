// The NVMe tier under the GPU offload backend (skipped without a GPU): KV four times larger
// than the pinned host pool decodes like the same runtime with every page in the pool
// (outputs within 1e-3, K/V read back bit for bit), with pages read back from disk and read
// ahead across layers; a full disk during an append and read errors during a decode return
// their status and lose nothing already appended; a retry then decodes as before; a fork's
// copy-on-write reads the shared page back from disk and the fork decodes like the host run.
#include <stdlib.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"
#include "gpu/device.h"
#include "gtest/gtest.h"
#include "offload/fault_injection.h"
#include "support/temp_dir.h"
#include "runtime/disk_io_status.h"
#include "runtime/runtime.h"

namespace twl {
namespace {

using testing::ClearFaultsOnExit;
using testing::TempDir;

#define TWL_DISK_SKIP_WITHOUT_GPU()                                                    \
  do {                                                                                 \
    if (!::twl::gpu::GpuAvailable()) {                                                 \
      GTEST_SKIP() << "no CUDA device visible: GPU disk-tier test skipped (CPU only)"; \
    }                                                                                  \
  } while (0)

// The host pool holds a quarter of the KV (378 pages, 756 block slots). Each (sequence,
// layer) has 64 planted keys that the pruner keeps (~58 of them, on ~38 of its 63 pages per
// KV head), so a step keeps ~300 blocks and a batch's three layers ~900: more than the pool,
// while one step fits with room to read the next layer's blocks ahead. (With 12 planted keys
// the kept blocks of all three layers, ~260, fit in the pool after the first pass, and
// nothing was left to read ahead: why this test saw no read-ahead on the H200.
// tests/cpu/disk_residency_blocks_test.cc runs this loop's residency on the CPU.)
constexpr int32_t kLayers = 3;
constexpr int32_t kSeqs = 8;
constexpr int32_t kLen = 1000;     // 63 pages per sequence and layer
constexpr int32_t kBatch = 4;      // sequences per decode step
constexpr int32_t kPlanted = 64;   // planted keys per (sequence, layer)
constexpr int64_t kPageBytes = 2 * 2 * 16 * 128 * 2;  // 2 KV heads x K+V x 16 x 128 x FP16
constexpr int64_t kKvPages = int64_t(kLayers) * kSeqs * ((kLen + 15) / 16);  // 1512

RuntimeConfig Config() {
  RuntimeConfig c;
  c.num_layers = kLayers;
  c.num_q_heads = 8;
  c.num_kv_heads = 2;
  c.head_dim = 128;
  c.page_size = 16;
  c.top_p = 0.9f;
  c.backend = BackendKind::kGpuOffload;
  c.gpu_cache_bytes = 4ll << 20;  // 128 blocks: steps also attend straight from the pool
  c.host_pool_bytes = (kKvPages + 64) * kPageBytes;  // everything in host memory
  return c;
}

// The host pool holds a quarter of the KV; the rest goes to disk.
RuntimeConfig DiskConfig(const std::string& dir) {
  RuntimeConfig c = Config();
  c.host_pool_bytes = kKvPages / 4 * kPageBytes;
  c.disk_path = dir;
  c.disk_bytes = kKvPages * kPageBytes;
  return c;
}

std::vector<fp16_t> RandomHalf(std::mt19937* rng, size_t n, float scale) {
  std::normal_distribution<float> d(0.0f, scale);
  std::vector<fp16_t> x(n);
  for (fp16_t& h : x) h = FloatToHalf(d(*rng));
  return x;
}

struct Model {
  std::unique_ptr<Runtime> rt;
  std::vector<SeqId> ids;
  // [layer][seq] appended K and V
  std::vector<std::vector<std::vector<fp16_t>>> k, v;
};

// Same data for every runtime (seeded); K has a few planted large keys so that the pruner
// keeps a peaked subset.
absl::Status Fill(const RuntimeConfig& c, Model* m) {
  absl::StatusOr<std::unique_ptr<Runtime>> rt = Runtime::Create(c);
  if (!rt.ok()) return rt.status();
  m->rt = std::move(*rt);
  std::mt19937 rng(7);
  const size_t tok = size_t(c.num_kv_heads) * c.head_dim;
  m->k.assign(kLayers, {});
  m->v.assign(kLayers, {});
  for (int32_t s = 0; s < kSeqs; ++s) {
    absl::StatusOr<SeqId> id = m->rt->CreateSequence();
    if (!id.ok()) return id.status();
    m->ids.push_back(*id);
  }
  for (int32_t l = 0; l < kLayers; ++l) {
    for (int32_t s = 0; s < kSeqs; ++s) {
      std::vector<fp16_t> k = RandomHalf(&rng, size_t(kLen) * tok, 1.0f);
      std::vector<fp16_t> v = RandomHalf(&rng, size_t(kLen) * tok, 1.0f);
      for (int32_t i = 0; i < kPlanted; ++i) {  // planted keys
        const size_t row = size_t(rng() % kLen) * tok;
        for (size_t j = 0; j < tok; ++j) k[row + j] = FloatToHalf(4.0f);
      }
      if (absl::Status st = m->rt->Append(m->ids[size_t(s)], l, kLen, k.data(), v.data(),
                                          DType::kFp16, MemSpace::kHost);
          !st.ok()) {
        return st;
      }
      m->k[size_t(l)].push_back(std::move(k));
      m->v[size_t(l)].push_back(std::move(v));
    }
  }
  return absl::OkStatus();
}

std::vector<fp16_t> Queries(int32_t step, const RuntimeConfig& c) {
  std::mt19937 rng(1000 + uint32_t(step));
  std::vector<fp16_t> q = RandomHalf(&rng, size_t(kBatch) * c.num_q_heads * c.head_dim, 1.0f);
  for (size_t i = 0; i < q.size(); ++i) {
    if (i % 3 == 0) q[i] = FloatToHalf(1.0f);  // aligned with the planted keys
  }
  return q;
}

struct Outputs {
  std::vector<std::vector<fp16_t>> out;
  int64_t pages_loaded = 0, read_ahead = 0, read_ahead_used = 0, bytes_read = 0;
};

// Decodes like a serving loop: each batch of sequences `rounds` steps, every layer per step.

absl::Status DecodeAll(Model& m, const RuntimeConfig& c, int32_t rounds, Outputs* o) {
  int32_t step = 0;
  for (int32_t b = 0; b < kSeqs; b += kBatch) {
    for (int32_t r = 0; r < rounds; ++r) {
      for (int32_t l = 0; l < kLayers; ++l) {
        const std::vector<fp16_t> q = Queries(step++, c);
        std::vector<fp16_t> out(q.size(), 0);
        StepTelemetry t;
        absl::Span<const SeqId> seqs(m.ids.data() + b, kBatch);
        if (absl::Status s = m.rt->Decode(l, seqs, q.data(), out.data(), MemSpace::kHost, {},
                                          nullptr, &t);
            !s.ok()) {
          return s;
        }
        o->out.push_back(std::move(out));
        o->pages_loaded += t.disk_pages_loaded;
        o->read_ahead += t.disk_pages_read_ahead;
        o->read_ahead_used += t.disk_pages_read_ahead_used;
        o->bytes_read += t.disk_bytes_read;
      }
    }
  }
  return absl::OkStatus();
}

void ExpectSameOutputs(const Outputs& a, const Outputs& b) {
  ASSERT_EQ(a.out.size(), b.out.size());
  int64_t exact = 0, total = 0;
  for (size_t s = 0; s < a.out.size(); ++s) {
    ASSERT_EQ(a.out[s].size(), b.out[s].size());
    for (size_t i = 0; i < a.out[s].size(); ++i) {
      const float x = HalfToFloat(a.out[s][i]), y = HalfToFloat(b.out[s][i]);
      ASSERT_FALSE(std::isnan(x)) << "step " << s << " at " << i;
      ASSERT_LE(std::fabs(x - y), 1e-3f + 1e-3f * std::fabs(y)) << "step " << s << " at " << i;
      exact += a.out[s][i] == b.out[s][i];
      ++total;
    }
  }
  // Same kept sets over the same FP16 rows: expected bit for bit; the tolerance above only
  // leaves room for a different cache/direct split of the attention.
  std::printf("disk vs all-in-host: %lld of %lld outputs bit-identical\n",
              static_cast<long long>(exact), static_cast<long long>(total));
}

void ExpectKvIntact(Model& m) {
  for (int32_t l = 0; l < kLayers; ++l) {
    for (int32_t s = 0; s < kSeqs; ++s) {
      std::vector<fp16_t> k, v;
      ASSERT_TRUE(m.rt->ReadKv(m.ids[size_t(s)], l, &k, &v).ok());
      ASSERT_EQ(k, m.k[size_t(l)][size_t(s)]) << "layer " << l << " sequence " << s;
      ASSERT_EQ(v, m.v[size_t(l)][size_t(s)]) << "layer " << l << " sequence " << s;
    }
  }
}

TEST(GpuOffloadDisk, KvFourTimesTheHostPoolDecodesLikeAllInHost) {
  TWL_DISK_SKIP_WITHOUT_GPU();
  TempDir dir("twl-gpu-disk");
  const RuntimeConfig host = Config(), disk = DiskConfig(dir.path());
  Model a, b;
  ASSERT_TRUE(Fill(host, &a).ok());
  const absl::Status filled = Fill(disk, &b);
  ASSERT_TRUE(filled.ok()) << filled;
  EXPECT_NE(b.rt->backend_name().find("disk tier"), std::string::npos) << b.rt->backend_name();
  EXPECT_GT(b.rt->Memory().disk_bytes, 0);  // three quarters of the pages are on disk
  Outputs oa, ob;
  ASSERT_TRUE(DecodeAll(a, host, 2, &oa).ok());
  const absl::Status decoded = DecodeAll(b, disk, 2, &ob);
  ASSERT_TRUE(decoded.ok()) << decoded;
  ExpectSameOutputs(ob, oa);
  EXPECT_GT(ob.pages_loaded + ob.read_ahead_used, 0);
  EXPECT_GT(ob.read_ahead, 0);  // the next layer's pages were read ahead
  EXPECT_GT(ob.read_ahead_used, 0);
  EXPECT_GT(ob.bytes_read, 0);
  EXPECT_EQ(oa.pages_loaded + oa.read_ahead + oa.bytes_read, 0);
  ExpectKvIntact(b);
}

// A serving loop: per step and layer one appended token per sequence (AppendBatch), then the
// decode, over 24 steps (every sequence starts a new page at its 8th token: 1000 = 62 x 16
// + 8). The appends take the units the refills set on standby, the blocks being appended
// to stay resident, finished blocks are written behind (runtime/offload_disk_steps.h):
// outputs and every K/V row must match the runtime with everything in host memory.
TEST(GpuOffloadDisk, AppendsBetweenDecodeStepsMatchAllInHost) {
  TWL_DISK_SKIP_WITHOUT_GPU();
  TempDir dir("twl-gpu-disk");
  const RuntimeConfig host = Config(), disk = DiskConfig(dir.path());
  Model a, b;
  ASSERT_TRUE(Fill(host, &a).ok());
  ASSERT_TRUE(Fill(disk, &b).ok());
  const size_t tok = size_t(disk.num_kv_heads) * disk.head_dim;
  std::mt19937 rng(41);
  Outputs oa, ob;
  int32_t step = 0;
  for (int32_t batch = 0; batch < kSeqs; batch += kBatch) {
    const absl::Span<const SeqId> seqs_a(a.ids.data() + batch, kBatch);
    const absl::Span<const SeqId> seqs_b(b.ids.data() + batch, kBatch);
    const std::vector<int32_t> ones(kBatch, 1);
    for (int32_t t = 0; t < 24; ++t) {
      for (int32_t l = 0; l < kLayers; ++l) {
        const std::vector<fp16_t> k = RandomHalf(&rng, size_t(kBatch) * tok, 1.0f);
        const std::vector<fp16_t> v = RandomHalf(&rng, size_t(kBatch) * tok, 1.0f);
        for (Model* m : {&a, &b}) {
          const absl::Status st =
              m->rt->AppendBatch(l, m == &a ? seqs_a : seqs_b, ones, k.data(), v.data(),
                                 DType::kFp16, MemSpace::kHost, nullptr);
          ASSERT_TRUE(st.ok()) << st << " step " << t << " layer " << l;
          for (int32_t i = 0; i < kBatch; ++i) {
            std::vector<fp16_t>& mk = m->k[size_t(l)][size_t(batch + i)];
            std::vector<fp16_t>& mv = m->v[size_t(l)][size_t(batch + i)];
            mk.insert(mk.end(), k.begin() + std::ptrdiff_t(i * tok),
                      k.begin() + std::ptrdiff_t((i + 1) * tok));
            mv.insert(mv.end(), v.begin() + std::ptrdiff_t(i * tok),
                      v.begin() + std::ptrdiff_t((i + 1) * tok));
          }
        }
        const std::vector<fp16_t> q = Queries(step++, disk);
        for (Model* m : {&a, &b}) {
          std::vector<fp16_t> out(q.size(), 0);
          StepTelemetry tel;
          const absl::Status st = m->rt->Decode(l, m == &a ? seqs_a : seqs_b, q.data(),
                                                out.data(), MemSpace::kHost, {}, nullptr, &tel);
          ASSERT_TRUE(st.ok()) << st << " step " << t << " layer " << l;
          Outputs& o = m == &a ? oa : ob;
          o.out.push_back(std::move(out));
          o.pages_loaded += tel.disk_pages_loaded;
        }
      }
    }
  }
  ExpectSameOutputs(ob, oa);
  EXPECT_GT(b.rt->Memory().disk_bytes, 0);
  ExpectKvIntact(b);
}

TEST(GpuOffloadDisk, DiskFullDuringAppendLosesNothing) {
  TWL_DISK_SKIP_WITHOUT_GPU();
  ClearFaultsOnExit clear;
  TempDir dir("twl-gpu-disk");
  const RuntimeConfig disk = DiskConfig(dir.path());
  Model m;
  ASSERT_TRUE(Fill(disk, &m).ok());
  // Every spill fails: the disk is full.
  ProcessFaultInjector().FailRange(FaultSite::kDiskWrite, 1, -1, ENOSPC);
  std::mt19937 rng(99);
  const size_t tok = size_t(disk.num_kv_heads) * disk.head_dim;
  // Enough new tokens that pages must be spilled to write them.
  // 100 new pages (the page ids have room for them; the spills of the dirty pages in the
  // pool do not).
  const int32_t n = 100 * 16;
  const std::vector<fp16_t> k = RandomHalf(&rng, size_t(n) * tok, 1.0f);
  const std::vector<fp16_t> v = RandomHalf(&rng, size_t(n) * tok, 1.0f);
  absl::StatusOr<SeqId> extra = m.rt->CreateSequence();
  ASSERT_TRUE(extra.ok());
  const absl::Status s =
      m.rt->Append(*extra, 0, n, k.data(), v.data(), DType::kFp16, MemSpace::kHost);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(absl::IsResourceExhausted(s)) << s;
  EXPECT_NE(s.message().find("disk tier full"), std::string::npos) << s;
  ProcessFaultInjector().Clear();
  ExpectKvIntact(m);
  Outputs o;
  const absl::Status decoded = DecodeAll(m, disk, 1, &o);
  EXPECT_TRUE(decoded.ok()) << decoded;
}

TEST(GpuOffloadDisk, ReadErrorDuringDecodeIsReportedAndARetryMatches) {
  TWL_DISK_SKIP_WITHOUT_GPU();
  ClearFaultsOnExit clear;
  TempDir dir("twl-gpu-disk");
  const RuntimeConfig host = Config(), disk = DiskConfig(dir.path());
  Model a, b;
  ASSERT_TRUE(Fill(host, &a).ok());
  ASSERT_TRUE(Fill(disk, &b).ok());
  Outputs oa;
  ASSERT_TRUE(DecodeAll(a, host, 1, &oa).ok());
  // Every read fails until cleared: the first step that needs a page from disk reports it.
  ProcessFaultInjector().FailRange(FaultSite::kDiskRead, 1, -1, EIO);
  Outputs failed;
  const absl::Status s = DecodeAll(b, disk, 1, &failed);
  EXPECT_FALSE(s.ok());
  EXPECT_TRUE(IsDiskIoError(s)) << s;
  ProcessFaultInjector().Clear();
  ExpectKvIntact(b);
  Outputs ob;
  const absl::Status decoded = DecodeAll(b, disk, 1, &ob);
  ASSERT_TRUE(decoded.ok()) << decoded;
  ExpectSameOutputs(ob, oa);
}

TEST(GpuOffloadDisk, ForkCopyOnWriteReadsAndWritesThroughTheDiskTier) {
  TWL_DISK_SKIP_WITHOUT_GPU();
  TempDir dir("twl-gpu-disk");
  const RuntimeConfig host = Config(), disk = DiskConfig(dir.path());
  Model a, b;
  ASSERT_TRUE(Fill(host, &a).ok());
  ASSERT_TRUE(Fill(disk, &b).ok());
  std::mt19937 rng(5);
  const size_t tok = size_t(disk.num_kv_heads) * disk.head_dim;
  const std::vector<fp16_t> k = RandomHalf(&rng, 5 * tok, 1.0f);
  const std::vector<fp16_t> v = RandomHalf(&rng, 5 * tok, 1.0f);
  // Sequence 0's pages went to disk first; its last page is partial (1000 = 62 * 16 + 8), so
  // the fork's append copies it (CopyPage reads it back from disk).
  std::vector<SeqId> forks;
  for (Model* m : {&a, &b}) {
    absl::StatusOr<SeqId> f = m->rt->ForkSequence(m->ids[0]);
    ASSERT_TRUE(f.ok()) << f.status();
    for (int32_t l = 0; l < kLayers; ++l) {
      const absl::Status st =
          m->rt->Append(*f, l, 5, k.data(), v.data(), DType::kFp16, MemSpace::kHost);
      ASSERT_TRUE(st.ok()) << st;
    }
    forks.push_back(*f);
  }
  ExpectKvIntact(b);  // the parent is unchanged
  for (int32_t l = 0; l < kLayers; ++l) {
    std::vector<fp16_t> kk, vv;
    ASSERT_TRUE(b.rt->ReadKv(forks[1], l, &kk, &vv).ok());
    std::vector<fp16_t> want_k = b.k[size_t(l)][0], want_v = b.v[size_t(l)][0];
    want_k.insert(want_k.end(), k.begin(), k.end());
    want_v.insert(want_v.end(), v.begin(), v.end());
    ASSERT_EQ(kk, want_k) << "layer " << l;
    ASSERT_EQ(vv, want_v) << "layer " << l;
  }
  // The fork decodes like the all-in-host runtime's fork.
  for (int32_t l = 0; l < kLayers; ++l) {
    const std::vector<fp16_t> q = Queries(500 + l, disk);
    const size_t one = q.size() / kBatch;
    std::vector<fp16_t> oa(one), ob(one);
    const SeqId fa = forks[0], fb = forks[1];
    ASSERT_TRUE(a.rt->Decode(l, absl::MakeConstSpan(&fa, 1), q.data(), oa.data(),
                             MemSpace::kHost, {}, nullptr, nullptr).ok());
    const absl::Status st = b.rt->Decode(l, absl::MakeConstSpan(&fb, 1), q.data(), ob.data(),
                                         MemSpace::kHost, {}, nullptr, nullptr);
    ASSERT_TRUE(st.ok()) << st;
    Outputs x, y;
    x.out.push_back(ob);
    y.out.push_back(oa);
    ExpectSameOutputs(x, y);
  }
}

}  // namespace
}  // namespace twl

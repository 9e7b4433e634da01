// SplitAtBoundary8 (prune_hist.cuh), the kept pass's classifier of 8 FP16 scores against a
// head's boundary bin B1: its half2 shortcut (scores clearly above or below the bin settled
// by two FP16 thresholds, only the band between them tested slot by slot) must give the
// same kept bits and the same boundary calls (slot, sub-bin, weight) as the plain per-slot
// rule Bin1(mx - x) < B1 / == B1 on every slot. Fresh random heads per run: maxima from
// -40 to 40000, scores drawn around the bin's edges (within a few FP16 steps of
// mx - B1 / 8 and mx - (B1 + 1) / 8) and anywhere below the max, -inf rows, random masks,
// B1 from 0 to 255. Exact equality: both sides evaluate the same float expressions.
// Also: HistKernel's conversion-free level-1 bin and the shared weight function.
#include <cuda_runtime.h>

#include <cmath>
#include <random>
#include <vector>

#include "core/half.h"
#include "gpu_test_util.h"
#include "pipeline/prune/twilight/cuda/topp_bins.cuh"

namespace twl::testing {
namespace {

struct SplitCase {
  float mx;
  int b1;
  uint32_t keep, skip;  // half2 bits, as LoadChunkHeads makes them
};

struct SplitOut {
  uint32_t above;
  uint32_t in_bin;      // bit k: in_bin called for slot k
  int b2[8];
  float w[8];
};

__device__ void Classify(const uint4& raw, uint32_t vmask, const SplitCase& c, bool fast,
                         SplitOut* o) {
  o->in_bin = 0;
  for (int k = 0; k < 8; ++k) {
    o->b2[k] = -1;
    o->w[k] = 0.0f;
  }
  auto record = [&](int k, int b2, float w) {
    o->in_bin |= 1u << k;
    o->b2[k] = b2;
    o->w[k] = w;
  };
  if (fast) {
    o->above = cuda::SplitAtBoundary8(raw, vmask, c.mx, c.b1, c.keep, c.skip, record);
    return;
  }
  uint32_t above = 0;  // the plain rule, slot by slot
  for (int k = 0; k < 8; ++k) {
    if (!((vmask >> k) & 1u)) continue;
    const float d = c.mx - cuda::RawHalf(raw, k);
    const int b1 = cuda::Bin1(d);
    if (b1 < c.b1) {
      above |= 1u << k;
    } else if (b1 == c.b1) {
      const float w = cuda::TopPWeight(d);
      if (w > 0.0f) record(k, cuda::Bin2(d, b1), w);
    }
  }
  o->above = above;
}

__global__ void ClassifyKernel(const uint4* raw, const uint32_t* vmask, const SplitCase* cases,
                               int n, SplitOut* fast, SplitOut* plain) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  Classify(raw[i], vmask[i], cases[i], true, &fast[i]);
  Classify(raw[i], vmask[i], cases[i], false, &plain[i]);
}

SplitCase MakeCase(float mx, int b1) {
  const cuda::BinEdges e = cuda::BoundaryBinEdges(mx, b1);
  return SplitCase{mx, b1, e.keep, e.skip};
}

TEST(SplitAtBoundaryGpu, HalfShortcutMatchesPerSlotRule) {
  TWL_SKIP_WITHOUT_GPU();
  const uint32_t seed = ::testing::UnitTest::GetInstance()->random_seed();
  std::mt19937 rng(seed);
  constexpr int kGroups = 1 << 18;
  std::vector<uint4> raw(kGroups);
  std::vector<uint32_t> vmask(kGroups);
  std::vector<SplitCase> cases(kGroups);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  const float maxima[] = {-40.0f, -3.0f, 0.0f, 0.7f, 5.0f, 31.0f, 200.0f, 40000.0f};
  for (int i = 0; i < kGroups; ++i) {
    float mx = maxima[rng() % 8];
    if (rng() % 2) mx = mx + (u(rng) - 0.5f) * 8.0f;
    mx = HalfToFloat(FloatToHalf(mx));  // a stored FP16 max
    const int b1 = rng() % 5 == 0 ? (rng() % 2 ? 0 : 255) : int(rng() % 256);
    cases[i] = MakeCase(mx, b1);
    uint16_t h[8];
    for (int k = 0; k < 8; ++k) {
      float x;
      switch (rng() % 4) {
        case 0:  // near the bin's upper edge (mx - B1 / 8)
          x = mx - float(b1) / 8.0f + (u(rng) - 0.5f) * 0.06f;
          break;
        case 1:  // near its lower edge
          x = mx - float(b1 + 1) / 8.0f + (u(rng) - 0.5f) * 0.06f;
          break;
        case 2:  // anywhere within 33 logits below the max
          x = mx - u(rng) * 33.0f;
          break;
        default:
          x = rng() % 8 == 0 ? -INFINITY : mx - u(rng) * float(b1 + 1) / 8.0f;
      }
      x = std::fmin(x, mx);  // no score above the head's max
      h[k] = FloatToHalf(x);
    }
    raw[i] = make_uint4(h[0] | (uint32_t(h[1]) << 16), h[2] | (uint32_t(h[3]) << 16),
                        h[4] | (uint32_t(h[5]) << 16), h[6] | (uint32_t(h[7]) << 16));
    vmask[i] = rng() % 4 == 0 ? uint32_t(rng() & 0xFF) : 0xFFu;
  }
  const gpu::DeviceBuffer d_raw = Upload(raw), d_mask = Upload(vmask), d_cases = Upload(cases);
  const gpu::DeviceBuffer d_fast = Poisoned<SplitOut>(kGroups),
                          d_plain = Poisoned<SplitOut>(kGroups);
  ClassifyKernel<<<(kGroups + 255) / 256, 256>>>(
      static_cast<const uint4*>(d_raw.get()), static_cast<const uint32_t*>(d_mask.get()),
      static_cast<const SplitCase*>(d_cases.get()), kGroups,
      static_cast<SplitOut*>(d_fast.get()), static_cast<SplitOut*>(d_plain.get()));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto fast = Download<SplitOut>(d_fast, kGroups);
  const auto plain = Download<SplitOut>(d_plain, kGroups);
  int failures = 0;
  int64_t kept = 0, boundary = 0;
  for (int i = 0; i < kGroups && failures < 10; ++i) {
    const SplitOut& f = fast[size_t(i)];
    const SplitOut& p = plain[size_t(i)];
    bool same = f.above == p.above && f.in_bin == p.in_bin;
    for (int k = 0; k < 8 && same; ++k) same = f.b2[k] == p.b2[k] && f.w[k] == p.w[k];
    kept += __builtin_popcount(p.above);
    boundary += __builtin_popcount(p.in_bin);
    if (!same) {
      ++failures;
      ADD_FAILURE() << "group " << i << " mx " << cases[size_t(i)].mx << " B1 "
                    << cases[size_t(i)].b1 << ": above " << f.above << " vs " << p.above
                    << ", in bin " << f.in_bin << " vs " << p.in_bin;
    }
  }
  // The inputs exercise both outcomes (else the comparison proves little).
  EXPECT_GT(kept, kGroups / 4);
  EXPECT_GT(boundary, kGroups / 8);
}

// Bin1Near (HistKernel's level-1 bin without a conversion) equals Bin1 on every d the
// histogram takes (0 <= d < 28.5), and TopPWeight stays within the 3e-6 relative error of
// exp(-d) that the top-p tests allow for: d = mx - x over FP16 pairs, bin edges included.
__global__ void BinWeightKernel(const float* d, int n, int* bins, float* rel) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  bins[2 * i] = cuda::Bin1(d[i]);
  bins[2 * i + 1] = cuda::Bin1Near(d[i]);
  const float e = expf(-d[i]);
  rel[i] = e > 0.0f ? fabsf(cuda::TopPWeight(d[i]) - e) / e : cuda::TopPWeight(d[i]);
}

TEST(SplitAtBoundaryGpu, LevelOneBinAndWeight) {
  TWL_SKIP_WITHOUT_GPU();
  std::mt19937 rng(::testing::UnitTest::GetInstance()->random_seed());
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  std::vector<float> d;
  for (int b = 0; b < 228; ++b) d.push_back(float(b) / 8.0f);  // every bin edge
  while (d.size() < (1u << 16)) {
    const float mx = HalfToFloat(FloatToHalf((u(rng) - 0.5f) * 200.0f));
    const float x = HalfToFloat(FloatToHalf(mx - u(rng) * 28.5f));
    if (x <= mx && mx - x < 28.5f) d.push_back(mx - x);
  }
  const int n = int(d.size());
  const gpu::DeviceBuffer d_d = Upload(d);
  const gpu::DeviceBuffer d_bins = Poisoned<int>(2 * size_t(n)), d_rel = Poisoned<float>(size_t(n));
  BinWeightKernel<<<(n + 255) / 256, 256>>>(static_cast<const float*>(d_d.get()), n,
                                             static_cast<int*>(d_bins.get()),
                                             static_cast<float*>(d_rel.get()));
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  const auto bins = Download<int>(d_bins, 2 * size_t(n));
  const auto rel = Download<float>(d_rel, size_t(n));
  int bad = 0;
  for (int i = 0; i < n && bad < 10; ++i) {
    if (bins[2 * size_t(i)] != bins[2 * size_t(i) + 1] || !(rel[size_t(i)] <= 3e-6f)) {
      ++bad;
      ADD_FAILURE() << "d " << d[size_t(i)] << ": Bin1 " << bins[2 * size_t(i)] << " Bin1Near "
                    << bins[2 * size_t(i) + 1] << ", weight rel. error " << rel[size_t(i)];
    }
  }
}

}  // namespace
}  // namespace twl::testing

// AVX2 top-p window loops (see top_p_window.h): eight weights per step. The split keeps the
// lanes' double sums in two registers of four; the tail and the combination are the
// baseline's. The build and the compaction pack the weights that stay to the front of
// their output by one permutation per eight (the table below), in their order.
#include <limits>

#include "core/host_simd.h"
#include "pipeline/prune/twilight/cpu/top_p_window.h"
#include "pipeline/prune/twilight/cpu/top_p_window_lanes.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace twl {

#if defined(__x86_64__)

namespace {

// For each 8-bit mask: the lanes whose bit is set, in order (then zeros), and how many.
struct PackTable {
  alignas(32) int32_t lanes[256][8];
  uint8_t count[256];
};
constexpr PackTable MakePackTable() {
  PackTable t{};
  for (int m = 0; m < 256; ++m) {
    int c = 0;
    for (int k = 0; k < 8; ++k) {
      if (m & (1 << k)) t.lanes[m][c++] = k;
    }
    t.count[m] = uint8_t(c);
  }
  return t;
}
constexpr PackTable kPack = MakePackTable();

// Writes the lanes of v selected by `keep` to out[0, count) in order (and other lanes after
// them, up to out[7]); returns count.
TWL_TARGET_AVX2_F16C inline size_t PackStore(__m256 v, __m256 keep, float* out) {
  const int m = _mm256_movemask_ps(keep);
  const __m256i perm = _mm256_load_si256(reinterpret_cast<const __m256i*>(kPack.lanes[m]));
  _mm256_storeu_ps(out, _mm256_permutevar8x32_ps(v, perm));
  return kPack.count[m];
}

TWL_TARGET_AVX2_F16C inline int64_t CountLanes(__m256 mask) {
  return kPack.count[_mm256_movemask_ps(mask)];
}

}  // namespace

// Each 8-wide store lands at out + live with live <= i, so it ends by i + 8 <= n: within the
// window, and in place (the compaction) only over weights already loaded.
TWL_TARGET_AVX2_F16C WindowStart BuildWindowAvx2(const float* w, size_t n, float low, float high,
                                                 float tiny, float* window) {
  const __m256 vlow = _mm256_set1_ps(low), vhigh = _mm256_set1_ps(high),
               vtiny = _mm256_set1_ps(tiny), zero = _mm256_setzero_ps();
  __m256 tiny_max = _mm256_set1_ps(-1.0f);
  WindowStart s;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(w + i);
    const __m256 is_tiny =
        _mm256_and_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ), _mm256_cmp_ps(v, vtiny, _CMP_LT_OQ));
    const __m256 in =
        _mm256_and_ps(_mm256_cmp_ps(v, vlow, _CMP_GT_OQ), _mm256_cmp_ps(v, vhigh, _CMP_LT_OQ));
    s.live += PackStore(v, _mm256_andnot_ps(is_tiny, in), window + s.live);
    s.tiny_count += CountLanes(is_tiny);
    tiny_max = _mm256_blendv_ps(tiny_max, _mm256_max_ps(tiny_max, v), is_tiny);
    s.at_high += CountLanes(_mm256_cmp_ps(v, vhigh, _CMP_GE_OQ));
  }
  alignas(32) float m[8];
  _mm256_store_ps(m, tiny_max);
  for (float x : m) s.tiny_max = x > s.tiny_max ? x : s.tiny_max;  // a max: any order
  const WindowStart tail = BuildWindowBaseline(w + i, n - i, low, high, tiny, window + s.live);
  s.live += tail.live;
  s.tiny_count += tail.tiny_count;
  s.tiny_max = tail.tiny_max > s.tiny_max ? tail.tiny_max : s.tiny_max;
  s.at_high += tail.at_high;
  return s;
}

TWL_TARGET_AVX2_F16C size_t CompactWindowAvx2(float* x, size_t n, float low, float high) {
  const __m256 vlow = _mm256_set1_ps(low), vhigh = _mm256_set1_ps(high);
  size_t kept = 0, i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    kept += PackStore(
        v, _mm256_and_ps(_mm256_cmp_ps(v, vlow, _CMP_GT_OQ), _mm256_cmp_ps(v, vhigh, _CMP_LT_OQ)),
        x + kept);
  }
  for (; i < n; ++i) {
    const float v = x[i];
    x[kept] = v;
    kept += (v > low) & (v < high);
  }
  return kept;
}

TWL_TARGET_AVX2_F16C WindowSplit SplitWindowAvx2(const float* x, size_t n, float low, float high,
                                                 float mid) {
  const __m256 vlow = _mm256_set1_ps(low), vhigh = _mm256_set1_ps(high), vmid = _mm256_set1_ps(mid);
  __m256d mass_lo = _mm256_setzero_pd(), mass_hi = _mm256_setzero_pd();
  __m256 below = _mm256_set1_ps(-1.0f);
  __m256 above = _mm256_set1_ps(std::numeric_limits<float>::infinity());
  WindowLanes lanes;
  size_t i = 0;
  // Counts run in 32-bit lanes per block of at most 2^30 steps, then join the 64-bit ones.
  constexpr size_t kBlock = size_t(8) << 30;
  while (i + 8 <= n) {
    const size_t end = i + ((n - i) / 8 * 8 < kBlock ? (n - i) / 8 * 8 : kBlock);
    __m256i n_up = _mm256_setzero_si256(), n_down = _mm256_setzero_si256();
    for (; i < end; i += 8) {
      const __m256 v = _mm256_loadu_ps(x + i);
      const __m256 in =
          _mm256_and_ps(_mm256_cmp_ps(v, vlow, _CMP_GT_OQ), _mm256_cmp_ps(v, vhigh, _CMP_LT_OQ));
      const __m256 gt = _mm256_cmp_ps(v, vmid, _CMP_GT_OQ);
      const __m256 up = _mm256_and_ps(in, gt), down = _mm256_andnot_ps(gt, in);
      const __m256 up_v = _mm256_and_ps(v, up);  // +0.0 where not up
      mass_lo = _mm256_add_pd(mass_lo, _mm256_cvtps_pd(_mm256_castps256_ps128(up_v)));
      mass_hi = _mm256_add_pd(mass_hi, _mm256_cvtps_pd(_mm256_extractf128_ps(up_v, 1)));
      above = _mm256_blendv_ps(above, _mm256_min_ps(above, v), up);
      below = _mm256_blendv_ps(below, _mm256_max_ps(below, v), down);
      n_up = _mm256_sub_epi32(n_up, _mm256_castps_si256(up));  // a true lane is -1
      n_down = _mm256_sub_epi32(n_down, _mm256_castps_si256(down));
    }
    alignas(32) int32_t u[8], d[8];
    _mm256_store_si256(reinterpret_cast<__m256i*>(u), n_up);
    _mm256_store_si256(reinterpret_cast<__m256i*>(d), n_down);
    for (size_t k = 0; k < WindowLanes::kLanes; ++k) {
      lanes.n_above[k] += u[k];
      lanes.n_below[k] += d[k];
    }
  }
  _mm256_storeu_pd(lanes.mass, mass_lo);
  _mm256_storeu_pd(lanes.mass + 4, mass_hi);
  _mm256_storeu_ps(lanes.below, below);
  _mm256_storeu_ps(lanes.above, above);
  for (size_t k = 0; i < n; ++i, ++k) lanes.Add(x[i], k, low, high, mid);
  return lanes.Combine();
}

#else  // another ISA: never selected (core/host_simd.h), the baseline if called

WindowSplit SplitWindowAvx2(const float* x, size_t n, float low, float high, float mid) {
  return SplitWindowBaseline(x, n, low, high, mid);
}
WindowStart BuildWindowAvx2(const float* w, size_t n, float low, float high, float tiny,
                            float* window) {
  return BuildWindowBaseline(w, n, low, high, tiny, window);
}
size_t CompactWindowAvx2(float* x, size_t n, float low, float high) {
  return CompactWindowBaseline(x, n, low, high);
}

#endif

}  // namespace twl

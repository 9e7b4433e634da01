// AVX2 top-p window split (see top_p_window.h): eight weights per step, the lanes' double
// sums in two registers of four; the tail and the combination are the baseline's.
#include <limits>

#include "core/host_simd.h"
#include "pipeline/prune/twilight/cpu/top_p_window.h"
#include "pipeline/prune/twilight/cpu/top_p_window_lanes.h"

#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace twl {

#if defined(__x86_64__)

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

#endif

}  // namespace twl

// Host generator of the synthetic workloads (gpu/synth.h): the GPU generator's formulas
// (gpu/synth_math.h) in plain loops, for CPU runs of the benchmarks and for tests.
#include <algorithm>

#include "gpu/kernels.h"
#include "gpu/synth.h"
#include "gpu/synth_math.h"
#include "oneapi/tbb/blocked_range.h"
#include "oneapi/tbb/parallel_for.h"

namespace twl {

void SynthKvHost(const SynthSpec& spec, int32_t seq, int32_t pos0, int32_t n, int32_t len,
                 fp16_t* k, fp16_t* v) {
  // Every element is a function of its coordinates alone (the GPU generator's formulas), so
  // tokens are made in parallel with the same values: a CPU benchmark's prompts took most
  // of its run through this loop's logf and cosf.
  const int64_t row = int64_t(spec.num_kv_heads) * spec.head_dim;
  const int32_t grain = int32_t(std::max<int64_t>(1, 65536 / std::max<int64_t>(1, row)));
  const tbb::blocked_range<int32_t> tokens(0, n, grain);
  tbb::parallel_for(tokens, [&](const tbb::blocked_range<int32_t>& r) {
    for (int32_t t = r.begin(); t < r.end(); ++t) {
      int64_t i = int64_t(t) * row;
      for (int32_t h = 0; h < spec.num_kv_heads; ++h) {
        for (int c = 0; c < spec.head_dim; ++c, ++i) {
          synth::KvElement(spec, seq, pos0 + t, len, h, c, k + i, v + i);
        }
      }
    }
  });
}

void SynthQueriesHost(const SynthSpec& spec, const int32_t* seq_ids, int32_t num_seqs,
                      int32_t num_q_heads, int32_t region, fp16_t* q) {
  const int32_t group = num_q_heads / spec.num_kv_heads;
  int64_t i = 0;
  for (int32_t s = 0; s < num_seqs; ++s) {
    for (int32_t qh = 0; qh < num_q_heads; ++qh) {
      for (int c = 0; c < spec.head_dim; ++c, ++i) {
        q[i] = synth::QueryElement(spec, seq_ids ? seq_ids[s] : s, qh, group, c, region);
      }
    }
  }
}

#if !TWL_HAVE_CUDA
absl::Status LaunchSynthKv(const SynthSpec&, int32_t, int32_t, int32_t, int32_t, fp16_t*,
                           fp16_t*, void*) {
  return NoCudaKernels();
}
absl::Status LaunchSynthQueries(const SynthSpec&, int32_t, int32_t, fp16_t*, void*) {
  return NoCudaKernels();
}
absl::Status LaunchSynthQueriesFor(const SynthSpec&, const int32_t*, int32_t, int32_t, int32_t,
                                   fp16_t*, void*) {
  return NoCudaKernels();
}
absl::Status LaunchBusyWait(double, int32_t, int32_t, int32_t, void*) { return NoCudaKernels(); }
#endif  // !TWL_HAVE_CUDA

}  // namespace twl

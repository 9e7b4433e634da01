// Host generator of the synthetic workloads (gpu/synth.h): the GPU generator's formulas
// (gpu/synth_math.h) in plain loops, for CPU runs of the benchmarks and for tests.
#include "gpu/kernels.h"
#include "gpu/synth.h"
#include "gpu/synth_math.h"

namespace twl {

void SynthKvHost(const SynthSpec& spec, int32_t seq, int32_t pos0, int32_t n, int32_t len,
                 fp16_t* k, fp16_t* v) {
  int64_t i = 0;
  for (int32_t t = pos0; t < pos0 + n; ++t) {
    for (int32_t h = 0; h < spec.num_kv_heads; ++h) {
      for (int c = 0; c < spec.head_dim; ++c, ++i) {
        synth::KvElement(spec, seq, t, len, h, c, k + i, v + i);
      }
    }
  }
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

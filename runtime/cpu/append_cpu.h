// The append of the host stores (CPU backend; the host references of the tests and
// benchmarks): FP16 K/V rows into their blocks, K quantized to k_bits (core/quantize.h), and
// the Quest per-channel min/max of each touched block recomputed over its filled rows. The
// GPU stores' append kernels (runtime/cuda/append.cuh) write the same bytes.
#pragma once

#include "absl/status/status.h"
#include "core/stage_views.h"

namespace twl {

// Writes the tokens of `in` into `kv` and `qk` (kv.slot_of_block must be null).
absl::Status AppendRef(const PageGeometry& g, const AppendView& in, const FpKvView& kv,
                       const QuantKView& qk);

}  // namespace twl

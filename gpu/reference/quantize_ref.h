// CPU reference of the append stage: FP16 K/V rows into their blocks, K quantized to
// k_bits (g.k_scheme: one (scale, zero) group per (token, KV head), or per (block, channel)
// over the block's Quest range), and the Quest per-channel min/max of each touched block
// recomputed over its filled rows.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/stage_views.h"

namespace twl {

// Quantizes one K row of head_dim values: codes packed per page_layout.h.
void QuantizeRowRef(const PageGeometry& g, const fp16_t* k, uint8_t* codes, fp16_t* scale,
                    fp16_t* zero);
// Dequantized element j of a code row.
float DequantizeRef(const PageGeometry& g, const uint8_t* codes, fp16_t scale, fp16_t zero,
                    int32_t j);

// Per-page-channel scheme (core/page_layout.h): the FP32 step of channel j of a block.
float PageChannelStep(const PageGeometry& g, fp16_t kmin, fp16_t kmax);
// Re-quantizes rows [0, rows) of `block` against the block's kmin/kmax (which must cover them).
void QuantizeBlockRowsRef(const PageGeometry& g, const FpKvView& kv, const QuantKView& qk,
                          int64_t block, int32_t rows);
// Dequantized element j of row `row` of `block` under g.k_scheme (k_bits < 16).
float DequantizeAtRef(const PageGeometry& g, const QuantKView& qk, int64_t block, int32_t row,
                      int32_t j);

// Writes the tokens of `in` into `kv` and `qk` (kv.slot_of_block must be null).
absl::Status AppendRef(const PageGeometry& g, const AppendView& in, const FpKvView& kv,
                       const QuantKView& qk);

}  // namespace twl

// CPU reference of the append stage (see quantize_ref.h).
#include "gpu/reference/quantize_ref.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "absl/container/flat_hash_map.h"
#include "gpu/reference/validate.h"

namespace twl {

void QuantizeRowRef(const PageGeometry& g, const fp16_t* k, uint8_t* codes, fp16_t* scale,
                    fp16_t* zero) {
  float lo = std::numeric_limits<float>::infinity();
  float hi = -lo;
  for (int32_t j = 0; j < g.head_dim; ++j) {
    const float x = g.KvToFloat(LoadU16(k, j));  // k may be the caller's buffer: any address
    lo = std::min(lo, x);
    hi = std::max(hi, x);
  }
  const int32_t max_code = g.MaxCode();
  *scale = FloatToHalf((hi - lo) / float(max_code));
  *zero = FloatToHalf(lo);
  // Codes are computed against the FP16-rounded scale and zero that dequantization uses.
  const float s = HalfToFloat(*scale);
  const float z = HalfToFloat(*zero);
  std::memset(codes, 0, size_t(g.CodeBytesPerToken()));
  const int32_t per_byte = 8 / g.k_bits;
  for (int32_t j = 0; j < g.head_dim; ++j) {
    // Clamp in float before the conversion: with non-finite K (inf, NaN: the caller's data)
    // the quotient may be NaN or out of int range, and converting that is undefined. NaN
    // fails both comparisons and becomes code 0.
    float r = 0.0f;
    if (s > 0.0f) r = std::rint((g.KvToFloat(LoadU16(k, j)) - z) / s);
    const int32_t c = r >= float(max_code) ? max_code : (r > 0.0f ? int32_t(r) : 0);
    codes[j / per_byte] = uint8_t(codes[j / per_byte] | (c << ((j % per_byte) * g.k_bits)));
  }
}

float DequantizeRef(const PageGeometry& g, const uint8_t* codes, fp16_t scale, fp16_t zero,
                    int32_t j) {
  return float(UnpackCode(codes, j, g.k_bits)) * HalfToFloat(scale) + HalfToFloat(zero);
}

float PageChannelStep(const PageGeometry& g, fp16_t kmin, fp16_t kmax) {
  return (HalfToFloat(kmax) - HalfToFloat(kmin)) / float(g.MaxCode());
}

void QuantizeBlockRowsRef(const PageGeometry& g, const FpKvView& kv, const QuantKView& qk,
                          int64_t block, int32_t rows) {
  const fp16_t* mn = qk.kmin + block * g.head_dim;
  const fp16_t* mx = qk.kmax + block * g.head_dim;
  const int32_t max_code = g.MaxCode();
  const int32_t per_byte = 8 / g.k_bits;
  for (int32_t r = 0; r < rows; ++r) {
    uint8_t* codes = qk.Codes(g, block, r);
    const fp16_t* k = kv.K(g, block, r);
    std::memset(codes, 0, size_t(g.CodeBytesPerToken()));
    for (int32_t j = 0; j < g.head_dim; ++j) {
      const float s = PageChannelStep(g, mn[j], mx[j]);
      // As in QuantizeRowRef: clamp in float (non-finite K gives NaN, which becomes code 0).
      float q = 0.0f;
      if (s > 0.0f) q = std::rint((g.KvToFloat(k[j]) - HalfToFloat(mn[j])) / s);
      const int32_t c = q >= float(max_code) ? max_code : (q > 0.0f ? int32_t(q) : 0);
      codes[j / per_byte] = uint8_t(codes[j / per_byte] | (c << ((j % per_byte) * g.k_bits)));
    }
  }
}

float DequantizeAtRef(const PageGeometry& g, const QuantKView& qk, int64_t block, int32_t row,
                      int32_t j) {
  const uint8_t* codes = qk.Codes(g, block, row);
  if (g.k_scheme == kKSchemePageChannel) {
    const fp16_t mn = qk.kmin[block * g.head_dim + j];
    return HalfToFloat(mn) +
           float(UnpackCode(codes, j, g.k_bits)) * PageChannelStep(g, mn, qk.kmax[block * g.head_dim + j]);
  }
  const int64_t at = block * g.page_size + row;
  return DequantizeRef(g, codes, qk.scale[at], qk.zero[at], j);
}

absl::Status AppendRef(const PageGeometry& g, const AppendView& in, const FpKvView& kv,
                       const QuantKView& qk) {
  if (absl::Status st = ValidateGeometry(g); !st.ok()) return st;
  if (in.num_tokens < 0) return absl::InvalidArgumentError("num_tokens must be >= 0");
  if (in.num_tokens == 0) return absl::OkStatus();
  if (!in.k || !in.v || !in.page_id || !in.slot) {
    return absl::InvalidArgumentError("append k, v, page_id and slot must not be null");
  }
  if (!kv.kv || kv.slot_of_block) {
    return absl::InvalidArgumentError("append needs a direct (unindirected) FP16 block store");
  }
  if (!qk.kmin || !qk.kmax || (g.k_bits < 16 && !qk.codes) ||
      (g.HasTokenScale() && (!qk.scale || !qk.zero))) {
    return absl::InvalidArgumentError("append needs the quantized K store");
  }
  for (int32_t i = 0; i < in.num_tokens; ++i) {
    if (in.page_id[i] < 0 || in.slot[i] < 0 || in.slot[i] >= g.page_size) {
      return absl::InvalidArgumentError("append token has an invalid page id or slot");
    }
  }
  const int64_t row_elems = int64_t(g.num_kv_heads) * g.head_dim;
  absl::flat_hash_map<int32_t, int32_t> filled_rows;  // page -> rows filled after the call
  for (int32_t i = 0; i < in.num_tokens; ++i) {
    const int32_t page = in.page_id[i];
    const int32_t row = in.slot[i];
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      const int64_t block = g.BlockId(page, h);
      const fp16_t* k = in.k + i * row_elems + int64_t(h) * g.head_dim;
      const fp16_t* v = in.v + i * row_elems + int64_t(h) * g.head_dim;
      std::memcpy(kv.K(g, block, row), k, sizeof(fp16_t) * g.head_dim);
      std::memcpy(kv.V(g, block, row), v, sizeof(fp16_t) * g.head_dim);
      if (g.HasTokenScale()) {
        QuantizeRowRef(g, k, qk.Codes(g, block, row), &qk.scale[block * g.page_size + row],
                       &qk.zero[block * g.page_size + row]);
      }
    }
    int32_t& rows = filled_rows[page];
    rows = std::max(rows, row + 1);
  }
  // Quest bounds are recomputed over all filled rows, so they stay exact for partial pages.
  for (const auto& [page, rows] : filled_rows) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      const int64_t block = g.BlockId(page, h);
      fp16_t* mn = qk.kmin + block * g.head_dim;
      fp16_t* mx = qk.kmax + block * g.head_dim;
      for (int32_t c = 0; c < g.head_dim; ++c) {
        float lo = std::numeric_limits<float>::infinity();
        float hi = -lo;
        for (int32_t r = 0; r < rows; ++r) {
          const float x = g.KvToFloat(kv.K(g, block, r)[c]);
          lo = std::min(lo, x);
          hi = std::max(hi, x);
        }
        mn[c] = FloatToHalf(lo);  // exact for FP16 K (and BF16 K in FP16's normal range)
        mx[c] = FloatToHalf(hi);
      }
      // Per-page-channel codes are relative to the block's range: re-quantize every filled
      // row against the new bounds (a row appended later may have widened them).
      if (g.k_bits < 16 && g.k_scheme == kKSchemePageChannel) {
        QuantizeBlockRowsRef(g, kv, qk, block, rows);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace twl

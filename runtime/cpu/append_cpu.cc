// The append of the host stores (see append_cpu.h).
#include "runtime/cpu/append_cpu.h"

#include <algorithm>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "core/quantize.h"
#include "core/validate.h"

namespace twl {

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
      (g.HasTokenScale() && (!qk.scale || !qk.zero)) || (g.HasChannelRange() && !qk.HasRanges())) {
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
  std::vector<float> lo, hi, x(static_cast<size_t>(g.head_dim));
  for (const auto& [page, rows] : filled_rows) {
    for (int32_t h = 0; h < g.num_kv_heads; ++h) {
      const int64_t block = g.BlockId(page, h);
      fp16_t* mn = qk.kmin + block * g.head_dim;
      fp16_t* mx = qk.kmax + block * g.head_dim;
      // Row by row (each row converted once; the channels' min/max fill vector lanes), the
      // rows in order per channel as before.
      lo.assign(size_t(g.head_dim), std::numeric_limits<float>::infinity());
      hi.assign(size_t(g.head_dim), -std::numeric_limits<float>::infinity());
      for (int32_t r = 0; r < rows; ++r) {
        KvRowToFloat(g, kv.K(g, block, r), x.data());
        for (int32_t c = 0; c < g.head_dim; ++c) {
          const float v = BoundInput(x[size_t(c)]);
          lo[size_t(c)] = std::min(lo[size_t(c)], v);
          hi[size_t(c)] = std::max(hi[size_t(c)], v);
        }
      }
      for (int32_t c = 0; c < g.head_dim; ++c) {
        mn[c] = FloatToHalf(lo[size_t(c)]);  // exact for FP16 K (and BF16 K in FP16's normal range)
        mx[c] = FloatToHalf(hi[size_t(c)]);
      }
      // Per-page-channel codes are relative to the block's channel ranges: re-code them and
      // re-quantize every filled row (a row appended later may have widened the bounds).
      if (g.k_bits < 16 && g.k_scheme == kKSchemePageChannel) {
        QuantizeBlockRowsRef(g, kv, qk, block, rows);
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace twl

// Page layout of the KV cache: the one definition of where every byte of a page lives.
//
// A *page* covers `page_size` consecutive tokens of one (sequence, layer) for all KV heads.
// A *block* is one KV head's part of a page: block id = page id * num_kv_heads + kv head.
// The block is the unit of quantization metadata, fetch and GPU caching, because top-p
// keeps different tokens for different KV heads.
//
//   KV block     [2][page_size][head_dim] 16-bit K rows then V rows     (host pool, GPU cache)
//                of kv_dtype: FP16 (default) or BF16 (the same bytes; only the element
//                type differs, so every size below holds for both). "FP16 block" elsewhere
//                means this block whatever its kv_dtype.
//   K codes      [page_size][head_dim * k_bits / 8] bytes, element j of a row at byte
//                j*k_bits/8, bit offset (j % (8/k_bits))*k_bits, low bits first (GPU)
//   K scale/zero [page_size] fp16 each: one group per (token, KV head)      (GPU)
//   K min/max    [head_dim] fp16 each: Quest per-channel bounds of the block (GPU)
//   K ranges     [ChannelRangeBytes(head_dim)]: the block's 8-bit channel ranges, k_scheme 1
//                only (core/channel_range.h; 272 B at d = 128)                     (GPU)
//   selector     [meta_bytes]: what the runtime's selector keeps per block (GPU; see
//                pipeline/select/selector.h, e.g. Double Sparsity's channel statistics)
// Dequantization: k ~= code * scale + zero, scale = (max - min) / (2^bits - 1), zero = min.
// k_bits = 16 means "no quantized copy": the pruner estimates with the FP16 K itself.
//
// k_scheme selects how the codes are scaled (the codes' layout is the same in both):
//   kKSchemeToken        one (scale, zero) group per (token, KV head) over head_dim, as above
//                        (PageGeometry's own default, for kernel-level code and tests; the
//                        runtime's default was this scheme until 2026-12).
//   kKSchemePageChannel  one group per (block, channel) over a range [lo_j, hi_j] that
//                        contains the block's Quest K min/max: FP16 values coded in 8 bits
//                        each on a per-block grid (core/channel_range.h), so the score pass
//                        reads 272 B of ranges per block instead of 512. step_j =
//                        (hi_j - lo_j) / (2^bits - 1) in FP32, k_j ~= lo_j + code_j * step_j;
//                        no per-token scale/zero is stored.
//                        Channels keep their own range, so K's outlier channels no longer
//                        widen every other channel's step (KIVI-style per-channel K; every
//                        backend). A block's ranges are re-coded and its rows re-quantized
//                        whenever an append may have changed its min/max (the GPU append
//                        kernels: on every append).
//                        The runtime's default (kKSchemeDefault): at 4 bits it keeps >= p - 0.02
//                        of the true mass for 100 % of heads vs 95.3 % per token (16k, 5 seeds;
//                        bench/ACCURACY.md, "INT4 per page channel").
#pragma once

#include <cstdint>

#include "core/channel_range.h"
#include "core/half.h"

namespace twl {

inline constexpr int32_t kKSchemeToken = 0;
inline constexpr int32_t kKSchemePageChannel = 1;
// The scheme RuntimeConfig (and so the C and Python APIs) uses unless told otherwise.
// PageGeometry keeps kKSchemeToken as its member default: a geometry made by the runtime
// always carries the config's scheme (runtime/geometry.h).
inline constexpr int32_t kKSchemeDefault = kKSchemePageChannel;

// Element type of the stored K/V rows (PageGeometry::kv_dtype).
inline constexpr int32_t kKvFp16 = 0;
inline constexpr int32_t kKvBf16 = 1;

struct PageGeometry {
  int32_t page_size = 16;    // tokens per page
  int32_t head_dim = 128;    // channels per head
  int32_t num_kv_heads = 8;  // blocks per page
  int32_t k_bits = 4;        // bits per estimated K element: 2, 4, 8 (or 16 = exact)
  int32_t k_scheme = 0;      // kKSchemeToken or kKSchemePageChannel (see above)
  // Element type of the stored K/V (kKvFp16 or kKvBf16). The estimation copy's metadata
  // (scale/zero, Quest kmin/kmax) stays FP16 either way: it is computed from the stored K in
  // float and rounded to FP16 (exact for BF16 values in FP16's normal range; K beyond 65504
  // gives infinite bounds, BF16 K below 2^-14 rounds to FP16 subnormals).
  int32_t kv_dtype = kKvFp16;

  TWL_HD int64_t BlockId(int64_t page, int32_t kv_head) const {
    return page * num_kv_heads + kv_head;
  }
  TWL_HD int64_t FpBlockElems() const { return 2ll * page_size * head_dim; }
  TWL_HD int64_t FpBlockBytes() const { return FpBlockElems() * 2; }  // either kv_dtype
  // A stored K/V element as float, and a float rounded (to nearest even) to the stored type.
  TWL_HD float KvToFloat(uint16_t x) const {
    return kv_dtype == kKvBf16 ? Bf16ToFloat(x) : HalfToFloat(x);
  }
  TWL_HD uint16_t FloatToKv(float f) const {
    return kv_dtype == kKvBf16 ? FloatToBf16(f) : FloatToHalf(f);
  }
  TWL_HD int32_t CodeBytesPerToken() const {
    return k_bits >= 16 ? 0 : head_dim * k_bits / 8;
  }
  TWL_HD int64_t CodeBlockBytes() const { return int64_t(page_size) * CodeBytesPerToken(); }
  TWL_HD int32_t MaxCode() const { return (1 << k_bits) - 1; }
  // Per-token scale and zero stored: only the per-token scheme has them.
  TWL_HD bool HasTokenScale() const { return k_bits < 16 && k_scheme == 0; }
  // The 8-bit channel ranges stored: only the per-page-channel scheme has them.
  TWL_HD bool HasChannelRange() const { return k_bits < 16 && k_scheme == 1; }
  TWL_HD int64_t RangeBlockBytes() const {
    return HasChannelRange() ? ChannelRangeBytes(head_dim) : 0;
  }
  // Device bytes the estimation copy needs per block: codes + scale + zero + min + max +
  // channel ranges.
  TWL_HD int64_t QuantBlockBytes() const {
    return CodeBlockBytes() + (HasTokenScale() ? 4ll * page_size : 0) + 4ll * head_dim +
           RangeBlockBytes();
  }
};

// A stored K or V row of g.head_dim elements as floats (host only): KvToFloat of each,
// without a branch per element, so the loop vectorizes.
inline void KvRowToFloat(const PageGeometry& g, const uint16_t* src, float* dst) {
  if (g.kv_dtype == kKvBf16) {
    for (int32_t j = 0; j < g.head_dim; ++j) dst[j] = Bf16ToFloat(src[j]);
  } else {
    for (int32_t j = 0; j < g.head_dim; ++j) dst[j] = HalfToFloatBranchless(src[j]);
  }
}

// FP16 K/V blocks addressed by block id, optionally through a slot indirection (the GPU
// hot-page cache): block b lives at kv + slot * FpBlockElems(), slot = slot_of_block[b]
// when slot_of_block is set, else slot = b. With miss_kv set, a block whose slot is -1 (not
// resident: the cache did not admit it this step) is read in place from miss_kv at its block
// id (the mapped host pool: zero copy, only the rows the reader touches cross the bus).
struct FpKvView {
  fp16_t* kv = nullptr;                    // [num_slots][2][page_size][head_dim]
  const int32_t* slot_of_block = nullptr;  // [num_blocks] or null for identity
  const fp16_t* miss_kv = nullptr;         // [pool blocks][...], or null
  // Pool index of block b in miss_kv (a disk tier under the pool), or null: identity.
  const int32_t* miss_slot_of_block = nullptr;

  TWL_HD int64_t MissIndex(int64_t block) const {
    return miss_slot_of_block ? int64_t(miss_slot_of_block[block]) : block;
  }
  TWL_HD fp16_t* Block(const PageGeometry& g, int64_t block) const {
    const int64_t slot = slot_of_block ? slot_of_block[block] : block;
    if (slot < 0 && miss_kv) {
      return const_cast<fp16_t*>(miss_kv) + MissIndex(block) * g.FpBlockElems();
    }
    return kv + slot * g.FpBlockElems();
  }
  // Row mode (slot_of_row set; the GPU row cache, pipeline/fetch/row_cache/): kv holds rows,
  // not blocks: [num_row_slots][2][head_dim] (a K row then its V row, 512 B at d = 128), and
  // row r = block * page_size + row of a block is at slot slot_of_row[r], or read in place
  // from miss_kv when that is < 0. slot_of_block is unused then.
  const int32_t* slot_of_row = nullptr;    // [num_blocks * page_size] or null: block mode

  TWL_HD fp16_t* K(const PageGeometry& g, int64_t block, int32_t row) const {
    if (slot_of_row) return RowK(g, block, row);
    return Block(g, block) + int64_t(row) * g.head_dim;
  }
  TWL_HD fp16_t* V(const PageGeometry& g, int64_t block, int32_t row) const {
    if (slot_of_row) return RowK(g, block, row) + RowVOffset(g, block, row);
    return Block(g, block) + int64_t(g.page_size + row) * g.head_dim;
  }

  // Row mode: the K row, in its slot or in place; the V row follows it at RowVOffset.
  TWL_HD fp16_t* RowK(const PageGeometry& g, int64_t block, int32_t row) const {
    const int32_t s = slot_of_row[block * g.page_size + row];
    if (s >= 0 || !miss_kv) return kv + int64_t(s) * 2 * g.head_dim;
    return const_cast<fp16_t*>(miss_kv) + MissIndex(block) * g.FpBlockElems() +
           int64_t(row) * g.head_dim;
  }
  TWL_HD int64_t RowVOffset(const PageGeometry& g, int64_t block, int32_t row) const {
    return slot_of_row[block * g.page_size + row] >= 0 || !miss_kv
               ? int64_t(g.head_dim)
               : int64_t(g.page_size) * g.head_dim;
  }
};

// The estimation copy of K plus the selector's page metadata, addressed by block id.
struct QuantKView {
  uint8_t* codes = nullptr;  // [num_blocks][page_size][CodeBytesPerToken()]
  fp16_t* scale = nullptr;   // [num_blocks][page_size]
  fp16_t* zero = nullptr;    // [num_blocks][page_size]
  fp16_t* kmin = nullptr;    // [num_blocks][head_dim]
  fp16_t* kmax = nullptr;    // [num_blocks][head_dim]
  // Metadata owned by the runtime's selector (Selector::OwnMetadataBytesPerBlock; null and
  // 0 for Quest and Full, whose min/max above are shared with the k_scheme 1 quantizer).
  uint8_t* meta = nullptr;   // [num_blocks][meta_bytes]
  int64_t meta_bytes = 0;
  // The per-page-channel scheme's channel ranges (PageGeometry::HasChannelRange; null
  // otherwise): [num_blocks][ChannelRangeBytes(head_dim)], 16-byte aligned. A host store may
  // keep them decoded instead (range_lo / range_hi: [num_blocks][head_dim] FP16, the values
  // the record decodes to), so that its estimator does not decode them every step; host code
  // reads whichever is set (core/quantize.h), device code the record.
  uint8_t* range = nullptr;
  fp16_t* range_lo = nullptr;
  fp16_t* range_hi = nullptr;
  TWL_HD bool HasRanges() const { return range != nullptr || range_lo != nullptr; }

  TWL_HD uint8_t* Codes(const PageGeometry& g, int64_t block, int32_t row) const {
    return codes + (block * g.page_size + row) * g.CodeBytesPerToken();
  }
  TWL_HD uint8_t* Meta(int64_t block) const { return meta + block * meta_bytes; }
  TWL_HD uint8_t* Range(const PageGeometry& g, int64_t block) const {
    return range + block * ChannelRangeBytes(g.head_dim);
  }
};

// Extract element j of a packed code row (see the layout comment above).
TWL_HD uint32_t UnpackCode(const uint8_t* row, int32_t j, int32_t bits) {
  const int32_t per_byte = 8 / bits;
  return (uint32_t(row[j / per_byte]) >> ((j % per_byte) * bits)) & ((1u << bits) - 1u);
}

}  // namespace twl

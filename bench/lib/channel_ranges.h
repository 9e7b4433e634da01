// Cheaper per-channel ranges for INT4 per page channel K (k_scheme 1; study only, the library
// is unchanged). k_scheme 1 quantizes channel j of a block's rows over the block's FP16 Quest
// bounds [kmin_j, kmax_j], so the score pass reads 4 d bytes of ranges per block on top of the
// codes (d = 128, 16 tokens: 512 B + 1024 B, vs per token's 1088 B). The codings here store the
// ranges in fewer bytes, always rounded OUTWARD (decoded lo_j <= kmin_j and lo_j + 15 step_j >=
// kmax_j), so every row of the block stays inside its channel's code range and the dequantized
// error stays <= step_j / 2:
//   kFp16   the block's FP16 kmin_j / kmax_j as they are (k_scheme 1): 4 d bytes
//   kPc8    A = min_j kmin_j, Z = max_j kmax_j (FP16); lo_j, hi_j 8-bit codes on the grid
//           A + c D, D = (Z - A) / 255, lo rounded down, hi up; step_j = (hi_j - lo_j) / 15:
//           2 d + 4 bytes
//   kPc8Log lo_j as kPc8; step_j = S 2^(-e_j / 16), S = (Z - A) / 15, e_j an 8-bit code rounded
//           so that the step is rounded up (relative step resolution 4.4 %, independent of the
//           block's widest channel): 2 d + 4 bytes
//   kPc8Pow2 lo_j as kPc8; step_j = 2^(E - e_j), 2^E the power of two >= S, e_j a 4-bit code: a
//           power-of-two step makes FP16(q_j step_j) exact (one MMA in the tensor-core score
//           pass, as page4p2): 1.5 d + 4 bytes
//   kPc8W   lo_j as kPc8; the width hi_j - lo_j an 8-bit code on [0, W] rounded up, W the
//           block's widest (kmax_j - lo_j) in FP16: the width grid is not stretched by channels
//           that sit far from the others (offset outliers): 2 d + 6 bytes
//   kFp8    kmin_j / kmax_j as FP8 E4M3 rounded outward (down / up): 2 d bytes, no per-block
//           scalars; its relative precision (2^-3) is coarse for channels far from zero
// The decoders are what a score pass would compute, in FP32: D and S carry a 2^-10 relative
// margin so that the top code's rounding can never fall short of Z.
#pragma once

#include <cmath>
#include <cstdint>
#include <string>
#include <vector>

#include "core/half.h"

namespace twl::bench {

enum class RangeCoding { kFp16, kPc8, kPc8Log, kPc8Pow2, kPc8W, kFp8 };

// One block's coded ranges. For kFp16 lo_code/step_code are unused and the decoder needs the
// bounds themselves (they are the Quest metadata).
struct CodedRanges {
  fp16_t a = 0, z = 0;             // block min of kmin_j, max of kmax_j
  fp16_t w = 0;                    // kPc8W: the widest channel range from its lo
  std::vector<uint8_t> lo_code;    // kPc8*: lo_j on the grid A + c D (rounded down)
  std::vector<uint8_t> step_code;  // kPc8: hi_j's grid code; kPc8W: the width code;
                                   // kPc8Log/kPc8Pow2: the step code
  std::vector<float> lo_f, hi_f;   // kFp8: the E4M3 endpoints' values
};

// Bytes of range metadata per block that the score pass reads, head dim d.
double RangeMetadataBytes(RangeCoding coding, int32_t d);
const char* RangeCodingName(RangeCoding coding);

// Codes one block's ranges from its per-channel bounds (FP16 values given as float, finite,
// kmin[j] <= kmax[j]). Returns false only if outward rounding could not contain some channel
// (never expected: the tests check it does not happen).
bool EncodeRanges(RangeCoding coding, const float* kmin, const float* kmax, int32_t d,
                  CodedRanges* out);

// lo_j and step_j as a score pass would reconstruct them. kmin/kmax are read only by kFp16.
void DecodeRanges(RangeCoding coding, const CodedRanges& coded, const float* kmin,
                  const float* kmax, int32_t d, float* lo, float* step);

// Encode + decode: the per-channel lo and step the codes of this block are quantized over.
bool ChannelRanges(RangeCoding coding, const float* kmin, const float* kmax, int32_t d,
                   float* lo, float* step);

// The 4-bit code of one value over [lo, lo + 15 step] (round to nearest, clamped; step 0 gives
// 0) and its reconstruction, as quantize.cc's per-page-channel mode.
inline uint8_t QuantizeChannelValue(float k, float lo, float step) {
  if (!(step > 0.0f)) return 0;
  float c = std::rint((k - lo) / step);
  c = c < 0.0f ? 0.0f : (c > 15.0f ? 15.0f : c);
  return uint8_t(c);
}
inline float DequantizeChannelValue(uint8_t code, float lo, float step) {
  return float(code) * step + lo;
}

}  // namespace twl::bench

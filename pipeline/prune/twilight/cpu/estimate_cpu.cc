// Per-page-channel score estimate (see estimate_cpu.h).
#include "pipeline/prune/twilight/cpu/estimate_cpu.h"

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <vector>

#include "core/host_simd.h"
#include "core/quantize.h"
#include "pipeline/prune/twilight/cpu/estimate_cpu_avx2.h"

namespace twl {

namespace {

// deq[j * n + r] = table[j][code of channel j in row r], for rows [0, n) of a page's codes:
// channel-major, byte by byte (UnpackCode's packing: low bits first). kBits is a template
// argument so that a byte's codes unroll.
template <int kBits>
void GatherChannelMajor(const uint8_t* row0, size_t row_stride, size_t d, size_t n,
                        const float* table, float* deq) {
  constexpr size_t kPerByte = 8 / kBits, kCodes = size_t(1) << kBits;
  constexpr uint32_t kMask = uint32_t(kCodes) - 1u;
  for (size_t b = 0; b < d / kPerByte; ++b) {
    const size_t j0 = b * kPerByte;
    const float* t = table + j0 * kCodes;
    float* dst = deq + j0 * n;
    for (size_t r = 0; r < n; ++r) {
      const uint32_t v = row0[r * row_stride + b];
      for (size_t k = 0; k < kPerByte; ++k) {
        dst[k * n + r] = t[k * kCodes + ((v >> (k * kBits)) & kMask)];
      }
    }
  }
}

// out[r] = sum over j in order of q[j] * deq[j * 16 + r], for a page of 16 rows: the 16 sums
// stay in four vector registers across the channel loop (with a runtime row count they went
// through memory once per channel, a store after a load). Each lane does the scalar loop's
// multiply and add, so the sums are bit for bit the same.
constexpr size_t kFullPageRows = 16;
void DotFullPage(const float* q, const float* deq, size_t d, float* out) {
  typedef float Lanes __attribute__((vector_size(16)));
  Lanes a0 = {}, a1 = {}, a2 = {}, a3 = {};
  for (size_t j = 0; j < d; ++j) {
    const float w = q[j];
    const Lanes wv = {w, w, w, w};
    Lanes c0, c1, c2, c3;
    std::memcpy(&c0, deq + j * 16, 16);
    std::memcpy(&c1, deq + j * 16 + 4, 16);
    std::memcpy(&c2, deq + j * 16 + 8, 16);
    std::memcpy(&c3, deq + j * 16 + 12, 16);
    a0 += wv * c0;
    a1 += wv * c1;
    a2 += wv * c2;
    a3 += wv * c3;
  }
  std::memcpy(out, &a0, 16);
  std::memcpy(out + 4, &a1, 16);
  std::memcpy(out + 8, &a2, 16);
  std::memcpy(out + 12, &a3, 16);
}

}  // namespace

float EstimatePageChannelScoreRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                                  int64_t block, int32_t row) {
  std::vector<float> mn(size_t(g.head_dim)), mx(size_t(g.head_dim));
  PageChannelRangeValues(g, qk, block, mn.data(), mx.data());
  const float inverse = HalfToFloat(PageChannelInverseMaxCodeHalf(g));
  const uint8_t* codes = qk.Codes(g, block, row);
  float dot = 0.0f;
  for (int32_t j = 0; j < g.head_dim; ++j) {
    const float step = PageChannelStepValue(mn[size_t(j)], mx[size_t(j)], inverse);
    dot += q[j] * PageChannelDequantValue(int32_t(UnpackCode(codes, j, g.k_bits)), step,
                                          mn[size_t(j)]);
  }
  return dot;
}

void EstimatePageChannelBlockRef(const PageGeometry& g, const float* q, const QuantKView& qk,
                                 int64_t block, int32_t rows, float* out) {
  EstimatePageChannelBlockMultiRef(g, &q, 1, qk, block, rows, &out);
}

void EstimatePageChannelBlockMultiRef(const PageGeometry& g, const float* const* q,
                                      int32_t heads, const QuantKView& qk, int64_t block,
                                      int32_t rows, float* const* out) {
  if (ActiveHostSimd() == HostSimd::kAvx2F16c &&
      EstimatePageChannelBlockAvx2(g, q, heads, qk, block, rows, out)) {
    return;
  }
  const size_t d = size_t(g.head_dim), n = size_t(rows);
  // Reused per thread: the host pruner calls this once per page and step.
  thread_local std::vector<float> deq;
  deq.resize(d * n);
  // Each channel's 2^k_bits possible values (a table, channel-major; PageChannelDequantTable
  // vectorizes), then dequantized K channel-major by a gather: a page costs d * 2^k_bits
  // roundings whatever its rows and heads.
  const int32_t bits = g.k_bits;
  const uint32_t mask = (1u << bits) - 1u;
  const size_t codes = size_t(mask) + 1;
  const float inverse = HalfToFloat(PageChannelInverseMaxCodeHalf(g));
  thread_local std::vector<float> lo, step, table;
  lo.resize(d);
  step.resize(d);
  table.resize(d * codes);
  PageChannelRangeValues(g, qk, block, lo.data(), step.data());  // hi until the next loop
  for (size_t j = 0; j < d; ++j) step[j] = PageChannelStepValue(lo[j], step[j], inverse);
  PageChannelDequantTable(lo.data(), step.data(), g.head_dim, int32_t(mask), table.data());
  const uint8_t* row0 = qk.Codes(g, block, 0);
  const size_t row_stride = size_t(g.CodeBytesPerToken());
  switch (bits) {
    case 2: GatherChannelMajor<2>(row0, row_stride, d, n, table.data(), deq.data()); break;
    case 4: GatherChannelMajor<4>(row0, row_stride, d, n, table.data(), deq.data()); break;
    default: GatherChannelMajor<8>(row0, row_stride, d, n, table.data(), deq.data()); break;
  }
  // Channel-major: every row's sum still runs over j in order (the same FP32 result as the
  // per-row loop), while the rows' independent sums fill the vector lanes.
  for (int32_t hd = 0; hd < heads; ++hd) {
    if (n == kFullPageRows) {
      DotFullPage(q[hd], deq.data(), d, out[hd]);
      continue;
    }
    float* dot = out[hd];
    std::fill(dot, dot + n, 0.0f);
    for (size_t j = 0; j < d; ++j) {
      const float w = q[hd][j];
      const float* c = &deq[j * n];
      for (size_t r = 0; r < n; ++r) dot[r] += w * c[r];
    }
  }
}

}  // namespace twl

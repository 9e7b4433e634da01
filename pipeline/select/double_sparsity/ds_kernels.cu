// CUDA kernels of the Double Sparsity selector (see ds_selector.h and ds_kernels.h). Every
// sum is taken in the order of the CPU reference with explicitly rounded operations (no
// FMA contraction), so the device output equals DsSelectRef's bit for bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cub/block/block_scan.cuh>

#include "absl/strings/str_format.h"
#include "gpu/cuda/cuda_status.cuh"
#include "pipeline/select/double_sparsity/ds_kernels.h"
#include "pipeline/select/double_sparsity/ds_selector.h"

namespace twl {
namespace {

using cuda_status::AsStream;
using cuda_status::LaunchStatus;

constexpr int kThreads = 256;
constexpr int kMaxHeadDim = 256;  // channel sums in shared memory; r <= 32
constexpr int kWarpsPerBlock = kThreads / 32;

__device__ __forceinline__ float Hf(fp16_t h) { return __half2float(__ushort_as_half(h)); }
// A stored K element (g.kv_dtype FP16 or BF16) as float.
__device__ __forceinline__ float Kf(const PageGeometry& g, uint16_t x) {
  return g.kv_dtype == kKvBf16 ? __bfloat162float(__ushort_as_bfloat16(x)) : Hf(x);
}

__device__ __forceinline__ const float* SumsOf(const QuantKView& qk, int64_t block) {
  return reinterpret_cast<const float*>(qk.Meta(block));
}

// ---- Metadata -------------------------------------------------------------------------

__global__ void __launch_bounds__(kThreads)
    DsUpdateBlocksKernel(PageGeometry g, AppendPagePlan plan, FpKvView kv, QuantKView qk) {
  const int32_t i = int32_t(blockIdx.x / unsigned(g.num_kv_heads));
  const int32_t h = int32_t(blockIdx.x % unsigned(g.num_kv_heads));
  const int32_t rows = plan.d_rows[i];
  const int64_t block = g.BlockId(plan.d_page[i], h);
  float* sums = reinterpret_cast<float*>(qk.Meta(block));  // [sum k | sum k^2]
  for (int c = threadIdx.x; c < g.head_dim; c += blockDim.x) {
    float s1 = 0.0f, s2 = 0.0f;
    for (int32_t r = 0; r < rows; ++r) {
      const float x = Kf(g, kv.K(g, block, r)[c]);
      s1 = __fadd_rn(s1, x);
      s2 = __fadd_rn(s2, __fmul_rn(x, x));
    }
    sums[c] = s1;
    sums[g.head_dim + c] = s2;
  }
}

__global__ void __launch_bounds__(kThreads)
    DsSegmentsKernel(PageGeometry g, const AppendSegment* __restrict__ segs, FpKvView kv,
                     const fp16_t* stage, QuantKView qk) {
  const int32_t H = g.num_kv_heads;
  const AppendSegment seg = segs[blockIdx.x / unsigned(H)];
  const int32_t h = int32_t(blockIdx.x % unsigned(H));
  const int64_t block = g.BlockId(seg.page, h);
  // Where LaunchAppendSegments put the rows: the staging page or the identity block.
  const fp16_t* k = seg.stage >= 0 ? stage + (int64_t(seg.stage) * H + h) * g.FpBlockElems()
                                   : kv.kv + block * g.FpBlockElems();
  float* sums = reinterpret_cast<float*>(qk.Meta(block));  // [sum k | sum k^2]
  for (int c = threadIdx.x; c < g.head_dim; c += blockDim.x) {
    float s1 = seg.row_begin == 0 ? 0.0f : sums[c];
    float s2 = seg.row_begin == 0 ? 0.0f : sums[g.head_dim + c];
    for (int32_t r = seg.row_begin; r < seg.row_end; ++r) {
      const float x = Kf(g, k[int64_t(r) * g.head_dim + c]);
      s1 = __fadd_rn(s1, x);
      s2 = __fadd_rn(s2, __fmul_rn(x, x));
    }
    sums[c] = s1;
    sums[g.head_dim + c] = s2;
  }
}

// ---- Select ---------------------------------------------------------------------------

struct Item {
  int32_t s, h, num_pages, budget;
  bool all;  // every page is kept: nothing to rank
};

__device__ __forceinline__ Item ItemOf(const PageGeometry& g, const SelectorParams& params,
                                       const BatchView& batch, int32_t item) {
  Item it;
  it.s = item / g.num_kv_heads;
  it.h = item % g.num_kv_heads;
  it.num_pages = batch.NumPages(g, it.s);
  it.budget = params.grow ? GrowCapPages(params, it.num_pages) : params.budget_pages;
  it.all = it.num_pages <= int64_t(it.budget) + params.sink_pages + 1;
  return it;
}

// Channel weights (sum k^2 - (sum k)^2 / n over the sequence's pages, summed in page order,
// times the group's sum of q_c^2), then the r largest (ties to the lower channel), ascending.
__global__ void __launch_bounds__(kThreads)
    DsChannelsKernel(PageGeometry g, SelectorParams params, BatchView batch, QueryView q,
                     QuantKView qk, int32_t r, int32_t* channels) {
  const Item it = ItemOf(g, params, batch, int32_t(blockIdx.x));
  if (it.all) return;
  __shared__ float sums[kMaxHeadDim];
  __shared__ int32_t chosen[kMaxHeadDim];
  const int32_t D = g.head_dim;
  const float n = float(batch.seq_len[it.s]);
  for (int c = threadIdx.x; c < D; c += blockDim.x) {
    float s1 = 0.0f, s2 = 0.0f;
    for (int32_t p = 0; p < it.num_pages; ++p) {
      const float* m = SumsOf(qk, g.BlockId(batch.PageId(it.s, p), it.h));
      s1 = __fadd_rn(s1, m[c]);
      s2 = __fadd_rn(s2, m[D + c]);
    }
    const float spread = __fsub_rn(s2, __fdiv_rn(__fmul_rn(s1, s1), n));
    const int32_t group = batch.num_q_heads / g.num_kv_heads;
    float w = 0.0f;
    for (int32_t j = 0; j < group; ++j) {
      const float qv =
          Hf(q.q[(int64_t(it.s) * batch.num_q_heads + it.h * group + j) * D + c]);
      w = __fadd_rn(w, __fmul_rn(qv, qv));
    }
    sums[c] = __fmul_rn(spread, w);
  }
  __syncthreads();
  for (int c = threadIdx.x; c < D; c += blockDim.x) {
    int32_t rank = 0;
    for (int c2 = 0; c2 < D; ++c2) {
      rank += (sums[c2] > sums[c] || (sums[c2] == sums[c] && c2 < c)) ? 1 : 0;
    }
    chosen[c] = rank < r ? 1 : 0;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t* dst = channels + int64_t(blockIdx.x) * r;
    int32_t next = 0;
    for (int c = 0; c < D; ++c) {
      if (chosen[c]) dst[next++] = c;
    }
  }
}

// One warp per ranked page: max over its rows and the group's query heads of the partial
// dot product over the chosen channels (q unscaled, like the reference).
__global__ void __launch_bounds__(kThreads)
    DsScoreKernel(PageGeometry g, SelectorParams params, BatchView batch, QueryView q,
                  QuantKView qk, int32_t r, const int32_t* channels, float* scores,
                  int32_t score_stride) {
  const int32_t item = int32_t(blockIdx.x);
  const Item it = ItemOf(g, params, batch, item);
  if (it.all) return;
  extern __shared__ float smem[];
  const int32_t group = batch.num_q_heads / g.num_kv_heads;
  float* qs = smem;                                         // [group][r]
  int32_t* ch = reinterpret_cast<int32_t*>(smem + group * r);  // [r]
  for (int i = threadIdx.x; i < r; i += blockDim.x) ch[i] = channels[int64_t(item) * r + i];
  __syncthreads();
  for (int i = threadIdx.x; i < group * r; i += blockDim.x) {
    const int32_t j = i / r;
    const int64_t qrow = (int64_t(it.s) * batch.num_q_heads + it.h * group + j) * g.head_dim;
    qs[i] = Hf(q.q[qrow + ch[i % r]]);
  }
  __syncthreads();
  const int32_t lane = threadIdx.x % 32;
  const int32_t p = int32_t(blockIdx.y) * kWarpsPerBlock + int32_t(threadIdx.x / 32);
  const int32_t first = params.sink_pages, last = it.num_pages - 1;
  if (p < first || p >= last) return;  // no block-wide sync below
  const int64_t block = g.BlockId(batch.PageId(it.s, p), it.h);
  const bool page_channel = g.k_scheme == kKSchemePageChannel;
  const float max_code = float(g.MaxCode());
  float best = -INFINITY;
  for (int32_t pair = lane; pair < g.page_size * group; pair += 32) {
    const int32_t t = pair % g.page_size;
    const int32_t j = pair / g.page_size;
    const uint8_t* codes = qk.Codes(g, block, t);
    const int64_t at = block * g.page_size + t;
    float dot = 0.0f;
    for (int32_t i = 0; i < r; ++i) {
      const int32_t c = ch[i];
      const float code = float(UnpackCode(codes, c, g.k_bits));
      float kq;
      if (page_channel) {
        fp16_t mn, mx;  // the channel's range (core/channel_range.h)
        DecodeChannelRange(qk.Range(g, block), g.head_dim, c, &mn, &mx);
        const float step = __fdiv_rn(__fsub_rn(Hf(mx), Hf(mn)), max_code);
        kq = __fadd_rn(Hf(mn), __fmul_rn(code, step));
      } else {
        kq = __fadd_rn(__fmul_rn(code, Hf(qk.scale[at])), Hf(qk.zero[at]));
      }
      dot = __fadd_rn(dot, __fmul_rn(qs[j * r + i], kq));
    }
    best = fmaxf(best, dot);
  }
  for (int o = 16; o > 0; o >>= 1) best = fmaxf(best, __shfl_xor_sync(0xffffffffu, best, o));
  // + 0.0f turns -0 into +0: the reference ranks equal floats as ties (-0 == +0).
  if (lane == 0) scores[int64_t(item) * score_stride + p] = __fadd_rn(best, 0.0f);
}

// Float order as unsigned order.
__device__ __forceinline__ uint32_t OrderedKey(float f) {
  const uint32_t u = __float_as_uint(f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

// Block-wide count of the ranked pages whose key is >= lo (strictly above lo when `above`).
__device__ int32_t CountKeys(const float* sc, int32_t first, int32_t last, uint32_t lo,
                             bool above, int32_t* shared_count) {
  int32_t n = 0;
  for (int32_t p = first + int32_t(threadIdx.x); p < last; p += blockDim.x) {
    const uint32_t k = OrderedKey(sc[p]);
    n += (above ? k > lo : k >= lo) ? 1 : 0;
  }
  if (threadIdx.x == 0) *shared_count = 0;
  __syncthreads();
  if (n) atomicAdd(shared_count, n);
  __syncthreads();
  const int32_t total = *shared_count;
  __syncthreads();
  return total;
}

// Sinks, the top budget ranked pages (radix select on the ordered keys, ties to the lower
// page) and the last page, ascending.
__global__ void __launch_bounds__(kThreads)
    DsTopKKernel(PageGeometry g, SelectorParams params, BatchView batch, const float* scores,
                 int32_t score_stride, SelectionView out) {
  using Scan = cub::BlockScan<int32_t, kThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ int32_t shared_count;
  const int32_t item = int32_t(blockIdx.x);
  const Item it = ItemOf(g, params, batch, item);
  int32_t* dst = out.pages + int64_t(item) * out.max_select;
  if (it.all) {
    for (int32_t p = int32_t(threadIdx.x); p < it.num_pages; p += blockDim.x) dst[p] = p;
    if (threadIdx.x == 0) out.count[item] = it.num_pages;
    return;
  }
  const float* sc = scores + int64_t(item) * score_stride;
  const int32_t first = params.sink_pages, last = it.num_pages - 1;
  uint32_t T = 0;  // the largest key with count(key >= T) >= budget: the budget-th largest
  for (int bit = 31; bit >= 0; --bit) {
    const uint32_t cand = T | (1u << bit);
    if (CountKeys(sc, first, last, cand, false, &shared_count) >= it.budget) T = cand;
  }
  const int32_t need_eq = it.budget - CountKeys(sc, first, last, T, true, &shared_count);
  int32_t base_out = 0, base_eq = 0;
  for (int32_t start = 0; start < it.num_pages; start += kThreads) {
    const int32_t p = start + int32_t(threadIdx.x);
    const bool in = p < it.num_pages;
    const bool ranked = in && p >= first && p < last;
    const uint32_t k = ranked ? OrderedKey(sc[p]) : 0u;
    const int32_t eq = ranked && k == T ? 1 : 0;
    int32_t eq_before = 0, eq_total = 0;
    Scan(scan).ExclusiveSum(eq, eq_before, eq_total);
    __syncthreads();
    const int32_t sel =
        in && (!ranked || k > T || (eq && base_eq + eq_before < need_eq)) ? 1 : 0;
    int32_t sel_before = 0, sel_total = 0;
    Scan(scan).ExclusiveSum(sel, sel_before, sel_total);
    __syncthreads();
    if (sel) dst[base_out + sel_before] = p;
    base_out += sel_total;
    base_eq += eq_total;
  }
  if (threadIdx.x == 0) out.count[item] = base_out;
}

size_t AlignUp(size_t x) { return (x + 255) / 256 * 256; }

}  // namespace

absl::Status LaunchDsUpdateBlocks(const PageGeometry& g, const AppendPagePlan& plan,
                                  const FpKvView& kv, const QuantKView& qk, void* stream) {
  if (plan.num_pages < 0 || (plan.num_pages > 0 && (!plan.d_page || !plan.d_rows))) {
    return absl::InvalidArgumentError("double sparsity: bad page plan");
  }
  if (plan.num_pages == 0) return absl::OkStatus();
  if (!kv.kv || !qk.meta || qk.meta_bytes < DsMetadataBytesPerBlock(g)) {
    return absl::InvalidArgumentError("double sparsity: no FP16 store or metadata store");
  }
  const int64_t blocks = int64_t(plan.num_pages) * g.num_kv_heads;
  if (blocks > INT32_MAX) return absl::InvalidArgumentError("double sparsity: plan too large");
  DsUpdateBlocksKernel<<<unsigned(blocks), kThreads, 0, AsStream(stream)>>>(g, plan, kv, qk);
  return LaunchStatus("DsUpdateBlocksKernel");
}

absl::Status LaunchDsAppendSegments(const PageGeometry& g, const AppendSegment* d_segments,
                                    int32_t num_segments, const FpKvView& kv,
                                    const fp16_t* stage, const QuantKView& qk, void* stream) {
  if (num_segments < 0) return absl::InvalidArgumentError("double sparsity: segments < 0");
  if (num_segments == 0) return absl::OkStatus();
  if (!d_segments || !kv.kv || kv.slot_of_block || !qk.meta ||
      qk.meta_bytes < DsMetadataBytesPerBlock(g)) {
    return absl::InvalidArgumentError(
        "double sparsity: segments, an identity FP16 store and the metadata store needed");
  }
  const int64_t blocks = int64_t(num_segments) * g.num_kv_heads;
  if (blocks > INT32_MAX) return absl::InvalidArgumentError("double sparsity: too many segments");
  DsSegmentsKernel<<<unsigned(blocks), kThreads, 0, AsStream(stream)>>>(g, d_segments, kv,
                                                                        stage, qk);
  return LaunchStatus("DsSegmentsKernel");
}

size_t DsSelectWorkspaceBytes(const PageGeometry& g, int32_t num_seqs, int32_t max_pages) {
  const size_t items = size_t(num_seqs) * size_t(g.num_kv_heads);
  return AlignUp(items * size_t(DsNumChannels(g)) * 4) + items * size_t(max_pages) * 4;
}

absl::Status LaunchDsSelect(const PageGeometry& g, const SelectorParams& params,
                            const BatchView& batch, const QueryView& q, const QuantKView& qk,
                            const SelectionView& out, void* workspace, size_t workspace_bytes,
                            void* stream) {
  // Device arrays: the batch's lengths and page table are not read here.
  TWL_RETURN_IF_ERROR(DsCheckSelect(g, params, batch, qk, out, /*host_data=*/false));
  if (!q.q) return absl::InvalidArgumentError("select: q must not be null");
  if (g.head_dim > kMaxHeadDim) {
    return absl::UnimplementedError(absl::StrFormat(
        "double sparsity on the GPU supports head_dim <= %d, got %d", kMaxHeadDim, g.head_dim));
  }
  const int64_t items = int64_t(batch.num_seqs) * g.num_kv_heads;
  if (items == 0) return absl::OkStatus();
  const int64_t page_chunks = (int64_t(batch.max_pages) + kWarpsPerBlock - 1) / kWarpsPerBlock;
  if (items > INT32_MAX || page_chunks > 65535) {
    return absl::UnimplementedError("double sparsity: batch or page table too large");
  }
  const size_t need = DsSelectWorkspaceBytes(g, batch.num_seqs, batch.max_pages);
  if (!workspace || workspace_bytes < need) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "double sparsity: workspace of %d bytes, need %d", workspace_bytes, need));
  }
  const int32_t r = DsNumChannels(g);
  const int32_t group = batch.num_q_heads / g.num_kv_heads;
  auto* channels = static_cast<int32_t*>(workspace);
  auto* scores = reinterpret_cast<float*>(static_cast<char*>(workspace) +
                                          AlignUp(static_cast<size_t>(items) * size_t(r) * 4));
  cudaStream_t s = AsStream(stream);
  DsChannelsKernel<<<unsigned(items), kThreads, 0, s>>>(g, params, batch, q, qk, r, channels);
  TWL_RETURN_IF_ERROR(LaunchStatus("DsChannelsKernel"));
  const size_t smem = size_t(group + 1) * size_t(r) * 4;
  if (smem > 48 * 1024) return absl::UnimplementedError("double sparsity: GQA group too large");
  const dim3 grid{unsigned(items), unsigned(page_chunks), 1u};
  DsScoreKernel<<<grid, kThreads, smem, s>>>(g, params, batch, q, qk, r, channels, scores,
                                             batch.max_pages);
  TWL_RETURN_IF_ERROR(LaunchStatus("DsScoreKernel"));
  DsTopKKernel<<<unsigned(items), kThreads, 0, s>>>(g, params, batch, scores, batch.max_pages,
                                                    out);
  return LaunchStatus("DsTopKKernel");
}

}  // namespace twl

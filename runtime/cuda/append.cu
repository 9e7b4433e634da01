// Launchers of the append-stage kernels (see append.cuh and gpu/kernels.h).
#include "runtime/cuda/append.cuh"
#include "core/validate.h"

namespace twl {

using cuda::AsStream;
using cuda::LaunchStatus;

namespace {

absl::Status CheckAppendShapes(const PageGeometry& g, const FpKvView& kv, const QuantKView& qk) {
  TWL_RETURN_IF_ERROR(ValidateGeometry(g));
  if (g.head_dim > cuda::kMaxAppendHeadDim) {
    return absl::UnimplementedError(absl::StrFormat("GPU append supports head_dim <= %d, got %d",
                                                    cuda::kMaxAppendHeadDim, g.head_dim));
  }
  if (!kv.kv) return absl::InvalidArgumentError("append: null FP16 block store");
  if (!qk.kmin || !qk.kmax || (g.k_bits < 16 && !qk.codes) ||
      (g.HasTokenScale() && (!qk.scale || !qk.zero)) || (g.HasChannelRange() && !qk.range)) {
    return absl::InvalidArgumentError("append: the quantized K store is incomplete");
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status LaunchRecomputeMinMax(const PageGeometry& g, const AppendPagePlan& plan,
                                   const FpKvView& kv, const QuantKView& qk, void* stream) {
  TWL_RETURN_IF_ERROR(CheckAppendShapes(g, kv, qk));
  if (plan.num_pages < 0 || (plan.num_pages > 0 && (!plan.d_page || !plan.d_rows))) {
    return absl::InvalidArgumentError("append: bad page plan");
  }
  if (plan.num_pages == 0) return absl::OkStatus();
  const int64_t blocks = int64_t(plan.num_pages) * g.num_kv_heads;
  if (blocks > INT32_MAX) return absl::InvalidArgumentError("append: plan too large");
  const int threads = g.head_dim <= 128 ? 128 : 256;
  cuda::MinMaxKernel<<<unsigned(blocks), threads, 0, AsStream(stream)>>>(g, plan, kv, qk);
  return LaunchStatus("MinMaxKernel");
}

absl::Status LaunchAppend(const PageGeometry& g, const AppendView& in, KvInputType type,
                          const AppendPagePlan& plan, const FpKvView& kv, const QuantKView& qk,
                          void* stream) {
  TWL_RETURN_IF_ERROR(CheckAppendShapes(g, kv, qk));
  if (in.num_tokens < 0) return absl::InvalidArgumentError("append: num_tokens < 0");
  if (in.num_tokens == 0) return absl::OkStatus();
  if (!in.k || !in.v || !in.page_id || !in.slot) {
    return absl::InvalidArgumentError("append: k, v, page_id and slot must not be null");
  }
  const int64_t rows = int64_t(in.num_tokens) * g.num_kv_heads;
  const int64_t grid = (rows + cuda::kAppendWarps - 1) / cuda::kAppendWarps;
  if (grid > INT32_MAX) return absl::InvalidArgumentError("append: too many tokens");
  cuda::AppendRowsKernel<<<unsigned(grid), cuda::kAppendWarps * 32, 0, AsStream(stream)>>>(
      g, in, type, kv, qk);
  TWL_RETURN_IF_ERROR(LaunchStatus("AppendRowsKernel"));
  return LaunchRecomputeMinMax(g, plan, kv, qk, stream);
}

namespace {

// Either d_segments (device) or h_segments (host, at most kInlineAppendSegments) is set.
absl::Status LaunchSegments(const PageGeometry& g, const AppendSegment* d_segments,
                            const AppendSegment* h_segments, int32_t num_segments,
                            const void* k, const void* v, KvInputType type, const FpKvView& kv,
                            fp16_t* stage, const QuantKView& qk, const DeviceRowCache* insert,
                            void* stream) {
  TWL_RETURN_IF_ERROR(CheckAppendShapes(g, kv, qk));
  if (num_segments < 0) return absl::InvalidArgumentError("append: num_segments < 0");
  if (num_segments == 0) return absl::OkStatus();
  if (!(d_segments || h_segments) || !k || !v) {
    return absl::InvalidArgumentError("append: segments, k and v must not be null");
  }
  if (h_segments && num_segments > kInlineAppendSegments) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "append: %d segments inline, at most %d", num_segments, kInlineAppendSegments));
  }
  if (kv.slot_of_block) {
    return absl::InvalidArgumentError("append segments: the block store must be identity addressed");
  }
  if (g.head_dim % 8 != 0 || g.head_dim < 8 || g.head_dim > 256) {
    return absl::UnimplementedError(
        absl::StrFormat("append segments: head_dim %d is not a multiple of 8 in [8, 256]", g.head_dim));
  }
  auto aligned = [](const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; };
  if (!aligned(kv.kv) || (stage && !aligned(stage))) {
    return absl::InvalidArgumentError("append segments: block store and staging must be 16-byte aligned");
  }
  if (insert && (!insert->d_slot_of_row || !insert->d_row_of_slot || !insert->d_last_use ||
                 !insert->d_slots || !insert->d_free || !insert->d_free_top || !insert->d_step ||
                 insert->num_slots <= 0 || insert->num_rows <= 0 || !aligned(insert->d_slots))) {
    return absl::InvalidArgumentError("append segments: incomplete row cache to insert into");
  }
  const DeviceRowCache ins = insert ? *insert : DeviceRowCache{};  // null maps: no insertion
  const int64_t grid = int64_t(num_segments) * g.num_kv_heads;
  if (grid > INT32_MAX) return absl::InvalidArgumentError("append: too many segments");
  cuda::InlineSegments inl;
  if (h_segments) {
    for (int32_t i = 0; i < num_segments; ++i) inl.seg[i] = h_segments[i];
  }
  // Rows start at multiples of head_dim elements (>= 8), so aligned bases keep every
  // 8-element group of FP16/BF16 (16 bytes) and FP32 (32 bytes) input aligned too.
  const bool vec = aligned(k) && aligned(v);
  cuda::AppendSegmentsKernel<<<unsigned(grid), cuda::kSegThreads, 0, AsStream(stream)>>>(
      g, h_segments ? nullptr : d_segments, inl, k, v, type, vec, kv.kv, stage, qk, ins);
  return LaunchStatus("AppendSegmentsKernel");
}

}  // namespace

absl::Status LaunchAppendSegments(const PageGeometry& g, const AppendSegment* d_segments,
                                  int32_t num_segments, const void* k, const void* v,
                                  KvInputType type, const FpKvView& kv, fp16_t* stage,
                                  const QuantKView& qk, void* stream) {
  return LaunchSegments(g, d_segments, nullptr, num_segments, k, v, type, kv, stage, qk,
                        nullptr, stream);
}

absl::Status LaunchAppendSegmentsInline(const PageGeometry& g, const AppendSegment* h_segments,
                                        int32_t num_segments, const void* k, const void* v,
                                        KvInputType type, const FpKvView& kv, fp16_t* stage,
                                        const QuantKView& qk, const DeviceRowCache* insert,
                                        void* stream) {
  return LaunchSegments(g, nullptr, h_segments, num_segments, k, v, type, kv, stage, qk, insert,
                        stream);
}

}  // namespace twl

// Launchers of the append-stage kernels (see append.cuh and gpu/kernels.h).
#include "gpu/cuda/append.cuh"
#include "gpu/reference/validate.h"

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
  if (!qk.kmin || !qk.kmax || (g.k_bits < 16 && (!qk.codes || !qk.scale || !qk.zero))) {
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

}  // namespace twl

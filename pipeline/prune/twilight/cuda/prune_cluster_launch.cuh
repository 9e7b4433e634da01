// Host side of the fused cluster pruner (prune_cluster.cuh): whether a launch takes it, with
// which cluster, and its launcher. Included by prune.cu only (the pruner's kernels are
// defined in its headers, one translation unit); instantiations ClusterPruneKernel<64 | 128>.
#pragma once

#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <tuple>

#include "pipeline/prune/twilight/cuda/prune_cluster.cuh"

namespace twl {

// Auto mode takes the cluster from this many candidate slots per (sequence, KV head) on
// (the FULL selector's rows at long contexts; a Quest budget of a few thousand tokens keeps
// the passes, where a cluster's barriers would outweigh its few bytes).
constexpr int64_t kClusterAutoMinSlots = 32768;

struct ClusterPrunePlan {
  int32_t cluster = 0;  // blocks per (sequence, KV head); 0: the passes
  int32_t slots_per_block = 0;
  size_t smem_bytes = 0;  // dynamic shared memory per block
};

namespace cluster_detail {

using cuda::AsStream;
using cuda::LaunchStatus;

template <int kHeadDim>
auto ClusterKernel() {
  return cuda::ClusterPruneKernel<kHeadDim>;
}

// Sets the kernel's attributes for `smem` bytes of dynamic shared memory and cluster size C.
template <int kHeadDim>
bool PrepareKernel(int32_t cluster, size_t smem) {
  auto kernel = ClusterKernel<kHeadDim>();
  if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) !=
      cudaSuccess) {
    return false;
  }
  if (cluster > 8 &&
      cudaFuncSetAttribute(kernel, cudaFuncAttributeNonPortableClusterSizeAllowed, 1) !=
          cudaSuccess) {
    return false;
  }
  return true;
}

struct Occupancy {
  int blocks_per_sm = 0;  // resident blocks of this shape per SM
  int clusters = 0;       // clusters of size C resident on the whole device at once
};

// The device's answer for (head dim, C, smem), asked once per shape and device. A refused
// shape (too much shared memory, cluster too large) answers zeros; its error is cleared.
template <int kHeadDim>
Occupancy QueryOccupancy(int32_t cluster, size_t smem) {
  static std::mutex mu;
  static std::map<std::tuple<int, int, size_t>, Occupancy> cache;
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess) {
    cudaGetLastError();
    return {};
  }
  const auto key = std::make_tuple(dev, int(cluster), smem);
  std::lock_guard<std::mutex> lock(mu);
  if (const auto it = cache.find(key); it != cache.end()) return it->second;
  Occupancy o;
  if (PrepareKernel<kHeadDim>(cluster, smem)) {
    auto kernel = ClusterKernel<kHeadDim>();
    if (cudaOccupancyMaxActiveBlocksPerMultiprocessor(&o.blocks_per_sm, kernel,
                                                      cuda::kClThreads, smem) != cudaSuccess) {
      o.blocks_per_sm = 0;
    }
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(unsigned(cluster), 1u, 1u);
    cfg.blockDim = dim3(unsigned(cuda::kClThreads), 1u, 1u);
    cfg.dynamicSmemBytes = smem;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeClusterDimension;
    attr[0].val.clusterDim.x = unsigned(cluster);
    attr[0].val.clusterDim.y = 1;
    attr[0].val.clusterDim.z = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if (cudaOccupancyMaxActiveClusters(&o.clusters, kernel, &cfg) != cudaSuccess) o.clusters = 0;
  }
  cudaGetLastError();  // a refused shape is an answer, not a pending launch error
  cache[key] = o;
  return o;
}

// TWL_PRUNE_CLUSTER: unset (or anything else) -1 auto, "0" never, "1" whenever it fits.
// Read at every launch (a getenv: far below a launch's cost), so a test or a benchmark can
// compare both paths in one process.
inline int32_t ClusterMode() {
  const char* v = std::getenv("TWL_PRUNE_CLUSTER");
  if (v && std::strcmp(v, "0") == 0) return 0;
  if (v && std::strcmp(v, "1") == 0) return 1;
  return -1;
}

}  // namespace cluster_detail

// The mode is the environment's TWL_PRUNE_CLUSTER: unset, auto (at least
// kClusterAutoMinSlots candidates and two blocks per SM); "0" never (the passes, for A/B
// runs); "1" whenever the shape fits a cluster at all. The shape: INT4 per token, pages of
// 16, head dim 64/128, group <= 8, not growing, not dense. Queries the device (cached per
// shape). The result does not depend on the choice.
inline ClusterPrunePlan PlanClusterPrune(const PageGeometry& g, const PrunerParams& params,
                                         int32_t group, int32_t max_select, bool grow) {
  using namespace cluster_detail;
  const int32_t mode = ClusterMode();
  const bool shape_ok = g.k_bits == 4 && g.HasTokenScale() && g.page_size == 16 &&
                        (g.head_dim == 64 || g.head_dim == 128) && group >= 1 &&
                        group <= cuda::kClMaxG && !grow && !params.dense;
  const int64_t cand = int64_t(max_select) * g.page_size;
  if (mode == 0 || !shape_ok || cand < 1) return {};
  if (mode < 0 && cand < kClusterAutoMinSlots) return {};
  // The largest cluster first: the least shared memory per block and the most blocks.
  for (const int32_t c : {16, 8, 4, 2, 1}) {
    const int64_t per = (cand + c - 1) / c;
    const int32_t tb =
        int32_t((per + cuda::kClSlotAlign - 1) / cuda::kClSlotAlign * cuda::kClSlotAlign);
    const cuda::ClusterLayout l = cuda::MakeClusterLayout(group, tb, g.head_dim);
    const Occupancy o = g.head_dim == 128 ? QueryOccupancy<128>(c, l.bytes)
                                          : QueryOccupancy<64>(c, l.bytes);
    if (o.clusters < 1) continue;
    // Auto: two blocks per SM, so that one cluster's top-p phases overlap another's loads.
    if (mode < 0 && o.blocks_per_sm < 2) continue;
    return ClusterPrunePlan{c, tb, l.bytes};
  }
  return {};
}

// The fused pruner for plan.cluster > 0 (see prune_cluster.cuh): kept tokens, counts and
// telemetry, as LaunchPrune's passes; reads no workspace.
inline absl::Status LaunchClusterPrune(const ClusterPrunePlan& plan, const PageGeometry& g,
                                       const PrunerParams& params, const BatchView& batch,
                                       const QueryView& q, const QuantKView& qk,
                                       const SelectionView& selection, const KeptView& out,
                                       const HeadStatsView& stats, int32_t group, float scale,
                                       void* stream) {
  using namespace cluster_detail;
  if (plan.cluster < 1 || group > cuda::kClMaxG) {
    return absl::InvalidArgumentError("cluster prune: no plan for this shape");
  }
  const cuda::ClusterLayout l = cuda::MakeClusterLayout(group, plan.slots_per_block, g.head_dim);
  if (l.bytes != plan.smem_bytes) return absl::InternalError("cluster prune: layout mismatch");
  cuda::PruneShape shape;
  shape.group = group;
  shape.cand_stride = selection.max_select * g.page_size;
  shape.bit_words = (shape.cand_stride + 31) / 32;
  shape.scale = scale;
  const int64_t pairs = int64_t(batch.num_seqs) * g.num_kv_heads;
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = dim3(unsigned(plan.cluster), unsigned(pairs), 1u);
  cfg.blockDim = dim3(unsigned(cuda::kClThreads), 1u, 1u);
  cfg.dynamicSmemBytes = l.bytes;
  cfg.stream = AsStream(stream);
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeClusterDimension;
  attr[0].val.clusterDim.x = unsigned(plan.cluster);
  attr[0].val.clusterDim.y = 1;
  attr[0].val.clusterDim.z = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const float fx_scale = cuda::kFixedScale;  // HistWork's default, as the passes use
  auto launch = [&](auto kernel, bool ok) -> absl::Status {
    if (!ok) return LaunchStatus("ClusterPruneKernel attributes");
    cudaLaunchKernelEx(&cfg, kernel, g, params, batch, q, qk, selection, shape, l, fx_scale, out,
                       stats);  // its error: LaunchStatus
    return LaunchStatus("ClusterPruneKernel");
  };
  return g.head_dim == 128
             ? launch(ClusterKernel<128>(), PrepareKernel<128>(plan.cluster, l.bytes))
             : launch(ClusterKernel<64>(), PrepareKernel<64>(plan.cluster, l.bytes));
}

}  // namespace twl

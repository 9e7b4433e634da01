// Without CUDA the pruner's launchers answer Unavailable (prune.cu replaces them).
#include "pipeline/prune/twilight/cuda/prune_launch.h"

namespace twl {

#if !TWL_HAVE_CUDA
size_t PruneWorkspaceBytes(const PageGeometry&, int32_t, int32_t, int32_t) { return 0; }
PruneEstimates PruneWorkspaceEstimates(const PageGeometry&, int32_t, int32_t, int32_t,
                                       const void*) {
  return PruneEstimates{};
}
absl::Status LaunchPrune(const PageGeometry&, const PrunerParams&, const BatchView&,
                         const QueryView&, const QuantKView&, const FpKvView&,
                         const SelectionView&, const KeptView&, const HeadStatsView&, void*,
                         size_t, void*) {
  return NoCudaKernels();
}
absl::Status ProfilePrune(const PageGeometry&, const PrunerParams&, const BatchView&,
                          const QueryView&, const QuantKView&, const FpKvView&,
                          const SelectionView&, const KeptView&, const HeadStatsView&, void*,
                          size_t, void*, PruneProfile*) {
  return NoCudaKernels();
}
#endif  // !TWL_HAVE_CUDA

}  // namespace twl

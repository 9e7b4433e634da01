// Without CUDA the attention launchers answer Unavailable (attend.cu replaces them).
#include "pipeline/attend/sparse/cuda/attend_launch.h"

namespace twl {

#if !TWL_HAVE_CUDA
bool SetAttentionTensorCores(bool) { return false; }
int32_t SetAttentionPieceCost(int32_t) { return 0; }
size_t AttentionWorkspaceBytes(const PageGeometry&, int32_t, int32_t) { return 0; }
absl::Status LaunchSparseAttention(const PageGeometry&, const BatchView&, const QueryView&,
                                   const FpKvView&, const KeptView&, const OutputView&, float,
                                   void*, size_t, void*) {
  return NoCudaKernels();
}
absl::Status LaunchDenseAttention(const PageGeometry&, const BatchView&, const QueryView&,
                                  const FpKvView&, const OutputView&, float, void*, size_t,
                                  void*) {
  return NoCudaKernels();
}
#endif  // !TWL_HAVE_CUDA

}  // namespace twl

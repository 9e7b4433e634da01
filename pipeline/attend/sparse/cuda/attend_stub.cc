// Without CUDA the attention launchers answer Unavailable (attend.cu replaces them).
#include "pipeline/attend/sparse/cuda/attend_launch.h"

namespace twl {

#if !TWL_HAVE_CUDA
namespace {
absl::Status NoCuda() { return absl::UnavailableError("GPU kernels: built without CUDA"); }
}  // namespace

size_t AttentionWorkspaceBytes(const PageGeometry&, int32_t, int32_t) { return 0; }
absl::Status LaunchSparseAttention(const PageGeometry&, const BatchView&, const QueryView&,
                                   const FpKvView&, const KeptView&, const OutputView&, float,
                                   void*, size_t, void*) {
  return NoCuda();
}
absl::Status LaunchDenseAttention(const PageGeometry&, const BatchView&, const QueryView&,
                                  const FpKvView&, const OutputView&, float, void*, size_t,
                                  void*) {
  return NoCuda();
}
#endif  // !TWL_HAVE_CUDA

}  // namespace twl

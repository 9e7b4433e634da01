// Without CUDA the Quest / Full selection launchers answer Unavailable (select.cu
// replaces them).
#include "pipeline/select/quest/cuda/select_launch.h"

namespace twl {

#if !TWL_HAVE_CUDA
size_t SelectWorkspaceBytes(const PageGeometry&, const SelectorParams&, int32_t, int32_t) {
  return 0;
}
absl::Status LaunchSelectPages(const PageGeometry&, const SelectorParams&, const BatchView&,
                               const QueryView&, const QuantKView&, const SelectionView&, void*,
                               size_t, void*, float) {
  return NoCudaKernels();
}
absl::Status ProfileSelect(const PageGeometry&, const SelectorParams&, const BatchView&,
                           const QueryView&, const QuantKView&, const SelectionView&, void*,
                           size_t, void*, SelectProfile*, float) {
  return NoCudaKernels();
}
#endif  // !TWL_HAVE_CUDA

}  // namespace twl

// Without CUDA the Double Sparsity launchers answer Unavailable (like the other stages' cuda/*_stub.cc).
#include "pipeline/select/double_sparsity/ds_kernels.h"

#if !TWL_HAVE_CUDA
namespace twl {
namespace {
absl::Status NoCuda() { return absl::UnavailableError("built without CUDA"); }
}  // namespace

absl::Status LaunchDsUpdateBlocks(const PageGeometry&, const AppendPagePlan&, const FpKvView&,
                                  const QuantKView&, void*) {
  return NoCuda();
}
absl::Status LaunchDsAppendSegments(const PageGeometry&, const AppendSegment*, int32_t,
                                    const FpKvView&, const fp16_t*, const QuantKView&, void*) {
  return NoCuda();
}
size_t DsSelectWorkspaceBytes(const PageGeometry&, int32_t, int32_t) { return 0; }
absl::Status LaunchDsSelect(const PageGeometry&, const SelectorParams&, const BatchView&,
                            const QueryView&, const QuantKView&, const SelectionView&, void*,
                            size_t, void*) {
  return NoCuda();
}
}  // namespace twl
#endif  // !TWL_HAVE_CUDA

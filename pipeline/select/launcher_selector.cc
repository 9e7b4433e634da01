#include "pipeline/select/launcher_selector.h"

#include "pipeline/select/quest/cpu/quest_select_cpu.h"
#include "pipeline/select/quest/cuda/select_launch.h"

namespace twl {

size_t LauncherSelector::DeviceWorkspaceBytes(const PageGeometry& g,
                                              const SelectorParams& params, int32_t num_seqs,
                                              int32_t max_pages) const {
  return SelectWorkspaceBytes(g, params, num_seqs, max_pages);
}

absl::Status LauncherSelector::SelectOnDevice(const PageGeometry& g,
                                              const SelectorParams& params,
                                              const BatchView& batch, const QueryView& q,
                                              const QuantKView& qk, const SelectionView& out,
                                              void* workspace, size_t workspace_bytes,
                                              void* stream, float softmax_scale) const {
  return LaunchSelectPages(g, params, batch, q, qk, out, workspace, workspace_bytes, stream,
                           softmax_scale);
}

absl::Status LauncherSelector::SelectOnHost(const PageGeometry& g, const SelectorParams& params,
                                            const BatchView& batch, const QueryView& q,
                                            const QuantKView& qk, const SelectionView& out,
                                            float softmax_scale) const {
  return SelectPagesRef(g, params, batch, q, qk, out, softmax_scale);
}

}  // namespace twl

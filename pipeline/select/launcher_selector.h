// Shared body of the selectors whose kernels and CPU implementation are
// quest/cuda/select_launch.h LaunchSelectPages and quest/cpu/quest_select_cpu.h
// SelectPagesRef (Quest and Full: those test params.kind themselves). A selector with kernels of its own derives
// from Selector.
#pragma once

#include "pipeline/select/selector.h"

namespace twl {

class LauncherSelector : public Selector {
 public:
  size_t DeviceWorkspaceBytes(const PageGeometry& g, const SelectorParams& params,
                              int32_t num_seqs, int32_t max_pages) const override;
  absl::Status SelectOnDevice(const PageGeometry& g, const SelectorParams& params,
                              const BatchView& batch, const QueryView& q, const QuantKView& qk,
                              const SelectionView& out, void* workspace,
                              size_t workspace_bytes, void* stream,
                              float softmax_scale) const override;
  absl::Status SelectOnHost(const PageGeometry& g, const SelectorParams& params,
                            const BatchView& batch, const QueryView& q, const QuantKView& qk,
                            const SelectionView& out, float softmax_scale) const override;
};

}  // namespace twl

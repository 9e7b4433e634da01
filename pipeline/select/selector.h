// Stage 1 of the decode step, SELECT: per (sequence, KV head), the candidate pages the
// pruner scores, ranked from per-block metadata the append computed (Quest: per-channel
// min/max of K). One implementation per folder under pipeline/select/, registered in
// select/registry.cc under its SelectorKind; the executors look a selector up by kind and
// never test the kind themselves. A new selector: its folder, one SelectorKind value
// (core/stage_views.h), one line in registry.cc.
// No CUDA types: `stream` is a cudaStream_t as void*; every view of the device methods holds
// device pointers (gpu/kernels.h), of the host methods host pointers (gpu/reference/).
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/stage_views.h"

namespace twl {

class Selector {
 public:
  virtual ~Selector() = default;
  virtual SelectorKind kind() const = 0;
  virtual const char* name() const = 0;
  // Bytes of per-block metadata this selector reads (part of the estimation store, written
  // by the append kernels next to the quantized K).
  virtual int64_t MetadataBytesPerBlock(const PageGeometry& g) const = 0;
  // Pages per (sequence, KV head) of the selection output (SelectionView::max_select).
  int32_t Stride(const SelectorParams& params, int32_t max_pages) const {
    return SelectStride(params, max_pages);
  }
  // Device workspace of SelectOnDevice (depends only on shapes).
  virtual size_t DeviceWorkspaceBytes(const PageGeometry& g, const SelectorParams& params,
                                      int32_t num_seqs, int32_t max_pages) const = 0;
  // Enqueues the selection on `stream` (never synchronizes).
  virtual absl::Status SelectOnDevice(const PageGeometry& g, const SelectorParams& params,
                                      const BatchView& batch, const QueryView& q,
                                      const QuantKView& qk, const SelectionView& out,
                                      void* workspace, size_t workspace_bytes, void* stream,
                                      float softmax_scale) const = 0;
  // The same on the host (the CPU executor and the references of the GPU tests).
  virtual absl::Status SelectOnHost(const PageGeometry& g, const SelectorParams& params,
                                    const BatchView& batch, const QueryView& q,
                                    const QuantKView& qk, const SelectionView& out,
                                    float softmax_scale) const = 0;
};

// The selector registered for `kind`; InvalidArgument for an unknown kind.
absl::StatusOr<const Selector*> FindSelector(SelectorKind kind);

}  // namespace twl

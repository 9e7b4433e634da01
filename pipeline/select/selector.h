// Stage 1 of the decode step, SELECT: per (sequence, KV head), the candidate pages the
// pruner scores, ranked from per-block metadata the append computed (Quest: per-channel
// min/max of K). One implementation per folder under pipeline/select/, registered in
// select/registry.cc under its SelectorKind; the executors look a selector up by kind and
// never test the kind themselves. A new selector: its folder, one SelectorKind value
// (core/stage_views.h), one line in registry.cc (and the C enum value it answers to). A
// selector that needs metadata of its own declares its bytes per block and computes them in
// the append hooks below; the stores allocate and call them for the runtime's selector.
// No CUDA types: `stream` is a cudaStream_t as void*; every view of the device methods holds
// device pointers (gpu/kernels.h), of the host methods host pointers (pipeline/<stage>/cpu/).
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/stage_views.h"

namespace twl {

struct AppendPagePlan;  // core/stage_views.h
struct AppendSegment;   // core/stage_views.h

class Selector {
 public:
  virtual ~Selector() = default;
  virtual SelectorKind kind() const = 0;
  virtual const char* name() const = 0;
  // Bytes of per-block metadata this selector reads (part of the estimation store, written
  // by the append kernels next to the quantized K).
  virtual int64_t MetadataBytesPerBlock(const PageGeometry& g) const = 0;
  // Per-block metadata the selector owns (QuantKView::meta, [num_blocks][this many bytes]),
  // allocated by every store for the runtime's selector (0: none, no hooks are called).
  // Quest and Full own none: Quest's min/max stay in the estimation layout because the
  // k_scheme 1 quantizer and the pruner read them too.
  virtual int64_t OwnMetadataBytesPerBlock(const PageGeometry&) const { return 0; }
  // Append hooks, called by the stores after K rows reached the FP16 store and the
  // estimation copy: they compute the selector's own metadata of the touched blocks.
  // Host: blocks of every page of `in` (page_id/slot host arrays), over that page's rows
  // [0, max slot + 1), from the FP16 K in kv (host pointers).
  virtual absl::Status UpdateMetadataOnHost(const PageGeometry&, const AppendView& /*in*/,
                                            const FpKvView& /*kv*/,
                                            const QuantKView& /*qk*/) const {
    return absl::OkStatus();
  }
  // Device, after LaunchAppend or a page copy: the plan's blocks over rows [0, rows) from
  // the FP16 K in kv (device or device-mapped pointers). Enqueued on `stream`.
  virtual absl::Status UpdateMetadataOnDevice(const PageGeometry&, const AppendPagePlan&,
                                              const FpKvView& /*kv*/, const QuantKView& /*qk*/,
                                              void* /*stream*/) const {
    return absl::OkStatus();
  }
  // Device, after LaunchAppendSegments with the same arguments: each segment's rows
  // [row_begin, row_end) (read back from kv, or from `stage` for staged segments) merged
  // into the block's metadata (row_begin == 0 replaces it). Enqueued on `stream`.
  virtual absl::Status AppendSegmentsMetadataOnDevice(const PageGeometry&,
                                                      const AppendSegment* /*d_segments*/,
                                                      int32_t /*num_segments*/,
                                                      const FpKvView& /*kv*/,
                                                      const fp16_t* /*stage*/,
                                                      const QuantKView& /*qk*/,
                                                      void* /*stream*/) const {
    return absl::OkStatus();
  }
  // InvalidArgument for a geometry this selector cannot serve (the Runtime refuses such a
  // configuration up front).
  virtual absl::Status CheckGeometry(const PageGeometry&) const { return absl::OkStatus(); }
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

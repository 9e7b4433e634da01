// Stage 4 of the decode step, ATTEND: paged decode attention over each (sequence, KV head)
// kept set, or over every token (dense layers / the Full selector without pruning). The FP16
// rows come through FpKvView: identity addressed (HBM pool, mapped host pool) or redirected
// by slot_of_block (the offload store's GPU hot cache) — where they live is the fetch
// stage's business. Device methods enqueue cuda/attend_launch.h; host methods run
// pipeline/attend/sparse/cpu/grouped_attend_cpu (checked against sparse_attend_cpu's
// reference). Stateless.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "core/stage_views.h"

namespace twl {

class SparseAttention {
 public:
  size_t DeviceWorkspaceBytes(const PageGeometry& g, int32_t num_seqs,
                              int32_t num_q_heads) const;
  absl::Status AttendOnDevice(const PageGeometry& g, const BatchView& batch, const QueryView& q,
                              const FpKvView& kv, const KeptView& kept, const OutputView& out,
                              float softmax_scale, void* workspace, size_t workspace_bytes,
                              void* stream) const;
  absl::Status AttendDenseOnDevice(const PageGeometry& g, const BatchView& batch,
                                   const QueryView& q, const FpKvView& kv,
                                   const OutputView& out, float softmax_scale,
                                   void* workspace, size_t workspace_bytes, void* stream) const;
  absl::Status AttendOnHost(const PageGeometry& g, const BatchView& batch, const QueryView& q,
                            const FpKvView& kv, const KeptView& kept, const OutputView& out,
                            float softmax_scale) const;
};

}  // namespace twl

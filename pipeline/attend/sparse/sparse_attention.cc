#include "pipeline/attend/sparse/sparse_attention.h"

#include "pipeline/attend/sparse/cpu/grouped_attend_cpu.h"
#include "pipeline/attend/sparse/cuda/attend_launch.h"

namespace twl {

size_t SparseAttention::DeviceWorkspaceBytes(const PageGeometry& g, int32_t num_seqs,
                                             int32_t num_q_heads) const {
  return AttentionWorkspaceBytes(g, num_seqs, num_q_heads);
}

absl::Status SparseAttention::AttendOnDevice(const PageGeometry& g, const BatchView& batch,
                                             const QueryView& q, const FpKvView& kv,
                                             const KeptView& kept, const OutputView& out,
                                             float softmax_scale, void* workspace,
                                             size_t workspace_bytes, void* stream) const {
  return LaunchSparseAttention(g, batch, q, kv, kept, out, softmax_scale, workspace,
                               workspace_bytes, stream);
}

absl::Status SparseAttention::AttendDenseOnDevice(const PageGeometry& g, const BatchView& batch,
                                                  const QueryView& q, const FpKvView& kv,
                                                  const OutputView& out, float softmax_scale,
                                                  void* workspace, size_t workspace_bytes,
                                                  void* stream) const {
  return LaunchDenseAttention(g, batch, q, kv, out, softmax_scale, workspace, workspace_bytes,
                              stream);
}

absl::Status SparseAttention::AttendOnHost(const PageGeometry& g, const BatchView& batch,
                                           const QueryView& q, const FpKvView& kv,
                                           const KeptView& kept, const OutputView& out,
                                           float softmax_scale) const {
  return GroupedAttentionCpu(g, batch, q, kv, &kept, out, softmax_scale);
}

}  // namespace twl

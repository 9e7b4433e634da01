// Device side of Double Sparsity (ds_kernels.cu; Unavailable stand-ins without CUDA in
// ds_kernels_stub.cc). No CUDA types: `stream` is a cudaStream_t as void*.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "core/stage_views.h"

namespace twl {

// DsUpdateBlocksRef on the device for the plan's (page, rows).
absl::Status LaunchDsUpdateBlocks(const PageGeometry& g, const AppendPagePlan& plan,
                                  const FpKvView& kv, const QuantKView& qk, void* stream);
// After LaunchAppendSegments (same segments, kv, stage): each block's sums continued over
// the segment's rows [row_begin, row_end) (restarted at 0 when row_begin == 0), the rows
// read back from kv (identity addressed) or the staging page. Equals DsUpdateBlocksRef over
// the block's filled rows.
absl::Status LaunchDsAppendSegments(const PageGeometry& g, const AppendSegment* d_segments,
                                    int32_t num_segments, const FpKvView& kv,
                                    const fp16_t* stage, const QuantKView& qk, void* stream);

size_t DsSelectWorkspaceBytes(const PageGeometry& g, int32_t num_seqs, int32_t max_pages);
// DsSelectRef on the device: channel sums and choice, page scores, then a block-wide radix
// select of the top budget pages per (sequence, KV head). Same output, bit for bit.
absl::Status LaunchDsSelect(const PageGeometry& g, const SelectorParams& params,
                            const BatchView& batch, const QueryView& q, const QuantKView& qk,
                            const SelectionView& out, void* workspace, size_t workspace_bytes,
                            void* stream);

}  // namespace twl

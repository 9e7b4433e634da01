// Host launchers of the sparse and dense attention kernels (attend.cu); the contract of
// every launcher is gpu/kernels.h's.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "core/stage_views.h"
#include "gpu/kernels.h"

namespace twl {

// Whether groups of 3 or more query heads over FP16 K/V at head dim 64 or 128 compute on
// tensor cores (default; TWL_ATTN_TC=0 in the environment turns it off) or on CUDA cores.
// Process-wide; for A/B runs and for tests that check both forms. Returns the setting before.
bool SetAttentionTensorCores(bool on);

// Virtual tokens charged to the start of each (sequence, KV head) in the attention's
// stream-K split, so that blocks that start a pair's piece take fewer real tokens. -1: the
// default (64 KiB of K/V rows: 128 tokens at d = 128; 128 KiB for rows behind a slot table,
// whose starts pay more lookups); TWL_ATTN_PIECE_COST in the
// environment (0 to 4096) overrides it. Process-wide; for A/B runs and tests. The output
// does not depend on it beyond the partial states' summation order. Returns the setting
// before.
int32_t SetAttentionPieceCost(int32_t cost);

// Workspace of both attention launchers (partial softmax states of the split-K chunks).
size_t AttentionWorkspaceBytes(const PageGeometry& g, int32_t num_seqs, int32_t num_q_heads);

// Split-K (flash-decoding) attention over each (sequence, KV head) kept set, read once for
// all query heads of the group. The split is planned on the device from the kept counts
// (stream-K): every resident block takes an equal share of the batch's kept tokens (each
// pair's start counted as SetAttentionPieceCost's tokens), cut at
// (sequence, KV head) boundaries, so heavy and light heads spread evenly over the SMs.
// kv.slot_of_block is honoured (GPU cache slots). softmax_scale 0: 1/sqrt(head_dim).
absl::Status LaunchSparseAttention(const PageGeometry& g, const BatchView& batch,
                                   const QueryView& q, const FpKvView& kv,
                                   const KeptView& kept, const OutputView& out,
                                   float softmax_scale, void* workspace,
                                   size_t workspace_bytes, void* stream);

// The same kernels over every token of every sequence (the in-run dense baseline).
absl::Status LaunchDenseAttention(const PageGeometry& g, const BatchView& batch,
                                  const QueryView& q, const FpKvView& kv,
                                  const OutputView& out, float softmax_scale, void* workspace,
                                  size_t workspace_bytes, void* stream);

}  // namespace twl

// Host launchers of the Quest / Full selection kernels (select.cu); the contract of every
// launcher is gpu/kernels.h's.
#pragma once

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "core/stage_views.h"
#include "gpu/kernels.h"

namespace twl {

size_t SelectWorkspaceBytes(const PageGeometry& g, const SelectorParams& params,
                            int32_t num_seqs, int32_t max_pages);

// SelectPagesRef on the GPU: page bounds of every page of the batch, then per (sequence,
// KV head) the top budget pages by a block-wide radix select (ties to the lower page),
// plus sinks and the last page; output ascending. Growing Quest (params.grow): every page
// ascending with per query head bounds * softmax_scale (0: 1/sqrt(head_dim)) in out.bound and
// the cap in out.limit, as SelectPagesRef; no workspace.
absl::Status LaunchSelectPages(const PageGeometry& g, const SelectorParams& params,
                               const BatchView& batch, const QueryView& q, const QuantKView& qk,
                               const SelectionView& out, void* workspace,
                               size_t workspace_bytes, void* stream, float softmax_scale = 0.0f);

// Benchmark aid, not for the decode path: LaunchSelectPages with the page-bound and top-B0
// kernels timed by events. Synchronizes the stream.
struct SelectProfile {
  float ms_bounds = 0.0f, ms_top = 0.0f;
};
absl::Status ProfileSelect(const PageGeometry& g, const SelectorParams& params,
                           const BatchView& batch, const QueryView& q, const QuantKView& qk,
                           const SelectionView& out, void* workspace, size_t workspace_bytes,
                           void* stream, SelectProfile* profile, float softmax_scale = 0.0f);

}  // namespace twl

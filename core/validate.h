// Shape and argument checks shared by every stage (CPU implementations and kernel launchers):
// each returns InvalidArgument with a message naming the offending field.
#pragma once

#include "absl/status/status.h"
#include "core/stage_views.h"

namespace twl {

absl::Status ValidateGeometry(const PageGeometry& g);
// Checks counts and strides; with check_host_data also seq_len and page ids (host pointers).
absl::Status ValidateBatch(const PageGeometry& g, const BatchView& b, bool check_host_data);
// ValidateBatch with host data, and every page id of the batch below num_pages, in one pass
// over the page table (the decode path's per-step check; tables reach 10^5 ids at 128k).
absl::Status ValidateBatchPages(const PageGeometry& g, const BatchView& b, int64_t num_pages);
absl::Status ValidateP(float p);
// The selection output's stride holds what the selector writes (SelectStride).
absl::Status ValidateSelectStride(const SelectorParams& params, const BatchView& b,
                                  const SelectionView& out);
// The Quest / Full selection's arguments past the geometry and the batch (SelectPagesRef and
// LaunchSelectPages): q and the outputs, Quest's budget and sinks, growing Quest's outputs,
// Quest's page min/max, and the output stride.
absl::Status ValidateSelect(const SelectorParams& params, const BatchView& b, const QueryView& q,
                            const QuantKView& qk, const SelectionView& out);

}  // namespace twl

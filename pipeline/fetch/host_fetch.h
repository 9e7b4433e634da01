// Stage 3 of the decode step, FETCH, as the CPU executor sees it: the FP16 blocks the step
// reads must be in host memory. A store keeping every block in host memory has nothing to do
// (the default); the disk-backed store reads pages back from disk: the candidates before the
// prune when the pruner estimates with FP16 K (k_bits 16), the kept pages before attention.
#pragma once

#include "absl/status/status.h"
#include "core/stage_views.h"

namespace twl {

class HostFetch {
 public:
  virtual ~HostFetch() = default;
  // After select, before prune; called only when g.k_bits >= 16 (the pruner reads FP16 K).
  virtual absl::Status CandidatesBeforePrune(const BatchView& batch, const SelectionView& sel,
                                             bool grow) {
    (void)batch, (void)sel, (void)grow;
    return absl::OkStatus();
  }
  // After prune, before attention: the kept blocks.
  virtual absl::Status KeptBeforeAttend(const BatchView& batch, const KeptView& kept) {
    (void)batch, (void)kept;
    return absl::OkStatus();
  }
};

}  // namespace twl

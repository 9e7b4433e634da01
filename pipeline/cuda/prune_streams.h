// The second stream and the events with which the pruner pipelines parts of a batch
// (PruneStreams, pipeline/prune/twilight/cuda/prune_launch.h), owned by a step's scratch and
// made once, off the hot path.
#pragma once

#include "absl/status/status.h"
#include "pipeline/prune/twilight/cuda/prune_launch.h"

namespace twl::pipeline_cuda {

class PruneStreamSet {
 public:
  PruneStreamSet() = default;
  PruneStreamSet(const PruneStreamSet&) = delete;
  PruneStreamSet& operator=(const PruneStreamSet&) = delete;
  ~PruneStreamSet();

  // Makes the stream and events on the current device if not yet made. The stream has the
  // device's highest priority: a part's top-p (a chain of short, dependent passes) is then
  // scheduled before the blocks of the next part's score pass, which fill what it leaves.
  // TWL_PRUNE_AUX_PRIORITY=0 in the environment gives it the default priority instead.
  absl::Status Ensure();
  // Null until Ensure succeeded.
  const PruneStreams* get() const { return streams_.aux ? &streams_ : nullptr; }

 private:
  PruneStreams streams_;
};

}  // namespace twl::pipeline_cuda

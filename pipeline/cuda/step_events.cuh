// Timing events of one pipeline group of a step (recorded only when telemetry is asked
// for), in the order TelemetryRing slots hold them: slot event group * kNumGroupEvents + e.
#pragma once

#include <cstdint>

namespace twl::pipeline_cuda {
// Nested so that users can bring the names in without the rest of pipeline_cuda.
inline namespace group_events {

enum GroupEvent : int32_t {
  kSel0,    // compute: before select
  kSel1,    // compute: after select
  kPrune1,  // compute: after prune
  kFetch0,  // fetch stream: before the fetch (stores with a fetch stage)
  kFetch1,  // fetch stream: after it
  kAttn0,   // compute: before attention
  kAttn1,   // compute: after attention (and the merge of direct units)
  kNumGroupEvents
};

}  // namespace group_events

}  // namespace twl::pipeline_cuda

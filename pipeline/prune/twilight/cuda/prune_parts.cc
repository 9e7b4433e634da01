// How many parts LaunchPrune pipelines a batch in (prune_launch.h, PruneStreams).
#include <algorithm>
#include <cstdlib>

#include "pipeline/prune/twilight/cuda/prune_launch.h"

namespace twl {

int32_t PruneParts(const PrunerParams& params, int32_t num_seqs, int32_t parts) {
  if (params.dense || num_seqs < 2) return 1;
  if (parts >= 1) return std::min({num_seqs, parts, int32_t(kMaxPruneParts)});
  // Read once: the environment is the benchmark's switch, not a per-call setting.
  static const int32_t from_env = [] {
    const char* env = std::getenv("TWL_PRUNE_PARTS");
    const int v = env ? std::atoi(env) : 0;
    return v >= 1 && v <= kMaxPruneParts ? int32_t(v) : 0;
  }();
  return std::min(num_seqs, from_env ? from_env : 2);
}

}  // namespace twl

// Exact top-p sets over estimated or exact logits (sorted, no bisection), for the studies that
// measure an estimate alone (twl_est_study, twl_coarse_study): the pruner's bisection is left
// out so that only the estimate decides the set.
#pragma once

#include <cstdint>
#include <vector>

namespace twl::bench {

// The smallest set of tokens, taken by descending x, whose weight exp(x - max x) reaches p of
// the total (a token is added while the mass so far is below p of it). *log_threshold is the
// smallest kept x. x must not be empty.
std::vector<uint8_t> TopPSet(const std::vector<float>& x, float p, float* log_threshold);

}  // namespace twl::bench

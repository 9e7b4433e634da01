// Accuracy of one decode head against dense attention, from the stored FP16 K/V (what the
// serving benchmark reports next to its speed): the TRUE softmax mass of the attended set,
// the output's relative error, and what exact top-p (the oracle) would have kept.
#pragma once

#include <cstdint>
#include <vector>

#include "core/half.h"

namespace twl::bench {

struct HeadAccuracy {
  double true_mass = 0;     // exact softmax mass of the attended tokens
  double rel_err = 0;       // ||out - dense|| / ||dense||
  double oracle_err = 0;    // the same for exact top-p at p over all tokens
  int32_t oracle_kept = 0;  // tokens exact top-p keeps
  int32_t attended = 0;     // tokens attended (the KV head's union)
  std::vector<int32_t> oracle_tokens;  // the positions exact top-p keeps, ascending
};

// One query head over one (sequence, KV head): k, v are [len][num_kv_heads][head_dim] FP16
// (as twl_sequence_read_kv returns them), q and out [head_dim] FP16, attended ascending
// positions. Scores use scale 1/sqrt(head_dim), in double.
HeadAccuracy MeasureHead(const fp16_t* k, const fp16_t* v, int32_t len, int32_t num_kv_heads,
                         int32_t head_dim, int32_t kv_head, const fp16_t* q, const fp16_t* out,
                         const std::vector<int32_t>& attended, double p);

}  // namespace twl::bench

// Synthetic decode workloads generated on the GPU (benchmarks need tens of GB of K/V that
// would take minutes to make on the host). Attention is realistic, not uniform: each
// (sequence, KV head) has a random direction u; "heavy" tokens (every ~heavy_every-th by a
// hash, plus the last local_window tokens) have K = noise + (gamma/sqrt(d)) u, the rest pure
// N(0, 1) noise; the query heads of a KV group are q = beta u + 0.1 noise with beta_peaked
// for peaked heads and beta_flat for flat ones (bit h of flat_mask marks KV head h flat).
// Scores are then ~ beta * N(0, 1) for ordinary tokens and ~ beta * gamma for heavy ones:
// peaked heads put most of their mass on a few hundred tokens, flat heads spread it.
// Built without CUDA, the launchers return Unavailable.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "core/half.h"

namespace twl {

struct SynthSpec {
  uint64_t seed = 1;
  int32_t num_kv_heads = 8;
  int32_t head_dim = 128;
  float gamma = 8.0f;
  float beta_peaked = 1.2f;
  float beta_flat = 0.3f;
  int32_t heavy_every = 512;
  int32_t local_window = 32;
  uint32_t flat_mask = 0;
  // Flat heads' heavy-token gain (< 0: gamma). 0 makes a flat head's scores a plain
  // lognormal spread, so its top-p set is a large share of the context (beta_flat ~ 2: ~35%).
  float gamma_flat = -1.0f;
  // Drift: > 0 gives every region of region_tokens consecutive tokens its own hot direction,
  // and a query looks at one region (query_region), so the hot pages move when it changes.
  int32_t region_tokens = 0;
};

// K and V rows of tokens pos0 .. pos0 + n - 1 of sequence `seq` whose final length is
// `len`, as [n][num_kv_heads][head_dim] FP16 device arrays (AppendView layout).
absl::Status LaunchSynthKv(const SynthSpec& spec, int32_t seq, int32_t pos0, int32_t n,
                           int32_t len, fp16_t* k, fp16_t* v, void* stream);

// Queries [num_seqs][num_q_heads][head_dim] FP16 (device) matching the K of LaunchSynthKv;
// row s is sequence s, looking at region 0.
absl::Status LaunchSynthQueries(const SynthSpec& spec, int32_t num_seqs, int32_t num_q_heads,
                                fp16_t* q, void* stream);

// The same for the sequences seq_ids[0..num_seqs) (a DEVICE array), looking at `region`.
absl::Status LaunchSynthQueriesFor(const SynthSpec& spec, const int32_t* seq_ids,
                                   int32_t num_seqs, int32_t num_q_heads, int32_t region,
                                   fp16_t* q, void* stream);

// Host versions (any build; the same formulas): k/v/q are host arrays in the same layouts.
void SynthKvHost(const SynthSpec& spec, int32_t seq, int32_t pos0, int32_t n, int32_t len,
                 fp16_t* k, fp16_t* v);
void SynthQueriesHost(const SynthSpec& spec, const int32_t* seq_ids, int32_t num_seqs,
                      int32_t num_q_heads, int32_t region, fp16_t* q);

// Keeps `blocks` thread blocks of `threads` threads (and `smem_bytes` of shared memory each,
// to limit what else fits on an SM) busy on `stream` for `microseconds` of GPU time (a spin
// on the global timer, no memory traffic): a stand-in for a model's compute, e.g. a layer's
// prefill in the prefill benchmark, or a long kernel ahead of work in a test.
absl::Status LaunchBusyWait(double microseconds, int32_t blocks, int32_t threads,
                            int32_t smem_bytes, void* stream);

}  // namespace twl

// Test support: a host-memory KV store filled with random FP16 data through AppendRef, with
// a batch (sequence lengths, page tables) over it. Shared by the CPU reference tests and the
// GPU-vs-reference tests. Page ids are shuffled so that no test passes by assuming page i
// of a sequence is block i.
#pragma once

#include <cstdint>
#include <random>
#include <vector>

#include "core/stage_views.h"

namespace twl::testing {

struct RefStore {
  PageGeometry g;
  int32_t num_q_heads = 0;
  std::vector<int32_t> seq_len;     // [num_seqs]
  std::vector<int32_t> page_table;  // [num_seqs][max_pages]
  int32_t max_pages = 0;
  int64_t num_pages = 0;
  std::vector<fp16_t> kv;           // [num_pages * num_kv_heads][2][page_size][head_dim],
                                    // elements of g.kv_dtype (FP16 or BF16)
  std::vector<uint8_t> codes;
  std::vector<fp16_t> scale, zero, kmin, kmax;
  std::vector<uint8_t> range;       // channel ranges (k_scheme 1), [blocks][RangeBlockBytes]
  std::vector<fp16_t> q;            // [num_seqs][num_q_heads][head_dim]
  // The raw appended K/V per sequence, [len][num_kv_heads][head_dim], for checks.
  std::vector<std::vector<fp16_t>> k_in, v_in;

  BatchView Batch() const;
  FpKvView Kv() { return FpKvView{kv.data(), nullptr}; }
  QuantKView Quant() {
    QuantKView v{codes.data(), scale.data(), zero.data(), kmin.data(), kmax.data()};
    v.range = range.empty() ? nullptr : range.data();
    return v;
  }
  QueryView Query() const { return QueryView{q.data()}; }
  int32_t group() const { return num_q_heads / g.num_kv_heads; }
};

// Random K/V with per-channel offsets (so min/max bounds differ by page), a few planted keys
// aligned with each query (so attention is peaked, not uniform), and random queries.
// `peak` scales how strongly planted keys stand out (0: no planting).
RefStore MakeRandomStore(const PageGeometry& g, int32_t num_q_heads,
                         const std::vector<int32_t>& seq_len, uint64_t seed, float peak = 3.0f);

// Appends `n` more random tokens to sequence s (allocating pages as needed) via AppendRef.
void AppendRandom(RefStore& store, int32_t s, int32_t n, std::mt19937_64& rng);

// Fills store.q with fresh random queries, each aligned with a random planted key.
void RandomQueries(RefStore& store, std::mt19937_64& rng, float peak);

// Relative L2 error ||a - b|| / ||b||.
double RelError(const std::vector<float>& a, const std::vector<float>& b);
std::vector<float> ToFloat(const std::vector<fp16_t>& h);

}  // namespace twl::testing

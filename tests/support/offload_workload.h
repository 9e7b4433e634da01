// The offload tests' structured workload (tests/gpu/offload_test.cc), shared with the CPU
// test of its thin heads (tests/cpu/offload_workload_test.cc): random K/V with per-channel
// offsets, topic directions planted in a few keys, queries along one topic that drifts;
// optionally flat KV heads (one constant key) and wide, thin KV heads (a peak on the first
// token of every page).
#pragma once

#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "core/half.h"
#include "core/page_layout.h"

namespace twl::testing {

// Structured random K/V: per-channel offsets, topic directions planted in a few keys per
// sequence so that attention is peaked; queries aligned with one topic (drifting).
struct Workload {
  PageGeometry g;
  int32_t num_q_heads = 0;
  std::mt19937_64 rng;
  std::vector<std::vector<float>> topics;  // [num_topics][head_dim]
  int32_t flat_kv_heads = 0;  // KV heads [0, flat_kv_heads) get one constant K: flat attention
  uint64_t plant_every = 23;  // a topic is planted in about one key of this many
  float gain_base = 1.0f;     // query gains gain_base + (head % 4): larger = more peaked
  // KV heads [flat_kv_heads, flat_kv_heads + thin_kv_heads): the first token of every page
  // (positions counted from the start of each Tokens call) carries a large key equally
  // aligned with every topic, the others no topic: top-p keeps ~one token of every page
  // (wide, thin).
  int32_t thin_kv_heads = 0;
  static constexpr float kThinGain = 5.25f;  // x sqrt(d) along EquallyAligned()

  Workload(const PageGeometry& geo, int32_t hq, uint64_t seed)
      : g(geo), num_q_heads(hq), rng(seed) {
    std::normal_distribution<float> n(0.0f, 1.0f);
    for (int32_t t = 0; t < 12; ++t) {
      std::vector<float> v(static_cast<size_t>(g.head_dim));
      double norm = 0;
      for (float& x : v) {
        x = n(rng);
        norm += x * x;
      }
      for (float& x : v) x = float(x / std::sqrt(norm));
      topics.push_back(v);
    }
  }
  // The unit vector in the topics' span with the same dot product with every topic
  // (a = 1 / sqrt(1' G^-1 1), G the topics' Gram matrix: 0.28 +- 0.02 over draws, min 0.22
  // in 2000, for 12 topics at d = 128).
  // The thin heads' keys point along it, so every topic a query drifts to sees the same
  // peak. Along the plain sum of the topics a topic's alignment was 0.29 +- 0.09 (random
  // overlaps), and a draw's least aligned topic left the gain-2 heads ~5 logits of peak:
  // top-p then kept ~3 tokens a page (H200, 2026-12-03: 3 of 33 calibrations, rows from
  // the cache below 0.9 in 4 of 60 runs, 1 of 48 with the peak doubled; on the CPU,
  // OffloadWorkload's test failed 7 of 30 seeds along the plain sum, 0 of 40 along this).
  std::vector<float> EquallyAligned() const {
    const size_t T = topics.size(), D = size_t(g.head_dim);
    std::vector<double> m(T * (T + 1));  // [G | 1], solved in place for w = G^-1 1
    for (size_t i = 0; i < T; ++i) {
      for (size_t j = 0; j < T; ++j) {
        double dot = 0;
        for (size_t c = 0; c < D; ++c) dot += double(topics[i][c]) * topics[j][c];
        m[i * (T + 1) + j] = dot;
      }
      m[i * (T + 1) + T] = 1.0;
    }
    for (size_t i = 0; i < T; ++i) {  // Gauss-Jordan; G is near the identity (no pivoting)
      const double piv = m[i * (T + 1) + i];
      for (size_t j = 0; j <= T; ++j) m[i * (T + 1) + j] /= piv;
      for (size_t r = 0; r < T; ++r) {
        if (r == i) continue;
        const double f = m[r * (T + 1) + i];
        for (size_t j = 0; j <= T; ++j) m[r * (T + 1) + j] -= f * m[i * (T + 1) + j];
      }
    }
    std::vector<double> u(D, 0.0);
    for (size_t i = 0; i < T; ++i) {
      for (size_t c = 0; c < D; ++c) u[c] += m[i * (T + 1) + T] * topics[i][c];
    }
    double norm = 0;
    for (double x : u) norm += x * x;
    std::vector<float> out(D);
    for (size_t c = 0; c < D; ++c) out[c] = float(u[c] / std::sqrt(norm));
    return out;
  }
  void Tokens(int32_t n, std::vector<fp16_t>* k, std::vector<fp16_t>* v) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const int32_t H = g.num_kv_heads, D = g.head_dim;
    k->resize(size_t(n) * H * D);
    v->resize(k->size());
    const std::vector<float> all = thin_kv_heads > 0 ? EquallyAligned() : std::vector<float>();
    for (int32_t t = 0; t < n; ++t) {
      const bool planted = rng() % plant_every == 0;
      const auto& topic = topics[rng() % topics.size()];
      for (int32_t h = 0; h < H; ++h) {
        const bool thin = h >= flat_kv_heads && h < flat_kv_heads + thin_kv_heads;
        for (int32_t c = 0; c < D; ++c) {
          float x = 0.3f * std::sin(0.7f * float(c + h)) + 0.6f * nd(rng);
          if (planted && !thin) x += 3.5f * std::sqrt(float(D)) * topic[size_t(c)] / 4.0f;
          if (thin && t % g.page_size == 0) x += kThinGain * std::sqrt(float(D)) * all[size_t(c)];
          if (h < flat_kv_heads) x = 0.3f * std::sin(0.7f * float(c + h));  // every key equal
          (*k)[(size_t(t) * H + h) * D + c] = FloatToHalf(x);
          (*v)[(size_t(t) * H + h) * D + c] = FloatToHalf(nd(rng));
        }
      }
    }
  }
  std::vector<fp16_t> Queries(int32_t num_seqs, std::vector<int32_t>* topic_of_seq) {
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const int32_t D = g.head_dim;
    std::vector<fp16_t> q(size_t(num_seqs) * num_q_heads * D);
    for (int32_t s = 0; s < num_seqs; ++s) {
      if (rng() % 4 == 0) (*topic_of_seq)[size_t(s)] = int32_t(rng() % topics.size());  // drift
      const auto& topic = topics[size_t((*topic_of_seq)[size_t(s)])];
      for (int32_t h = 0; h < num_q_heads; ++h) {
        const float gain = gain_base + float(h % 4);  // peaked and flatter heads
        for (int32_t c = 0; c < D; ++c) {
          q[(size_t(s) * num_q_heads + h) * D + c] =
              FloatToHalf(gain * std::sqrt(float(D)) * topic[size_t(c)] * 0.5f + 0.3f * nd(rng));
        }
      }
    }
    return q;
  }
};

}  // namespace twl::testing

// Test support: growing-selection store and true weights (see grow_store.h).
#include "support/grow_store.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "gtest/gtest.h"
#include "runtime/cpu/append_cpu.h"

namespace twl::testing {

RefStore MakeGrowStore(const PageGeometry& g, int32_t num_q_heads,
                       const std::vector<int32_t>& seq_len, float flat_gain, float peak,
                       uint64_t seed) {
  RefStore st;
  st.g = g;
  st.num_q_heads = num_q_heads;
  st.seq_len = seq_len;
  st.k_in.resize(seq_len.size());
  st.v_in.resize(seq_len.size());
  st.max_pages = 1;
  for (int32_t len : seq_len) st.max_pages = std::max(st.max_pages, (len + g.page_size - 1) / g.page_size);
  st.page_table.assign(seq_len.size() * size_t(st.max_pages), -1);
  for (size_t s = 0; s < seq_len.size(); ++s) {
    for (int32_t i = 0; i < (seq_len[s] + g.page_size - 1) / g.page_size; ++i) {
      st.page_table[s * size_t(st.max_pages) + size_t(i)] = int32_t(st.num_pages++);
    }
  }
  const int64_t blocks = st.num_pages * g.num_kv_heads;
  st.kv.resize(size_t(blocks * g.FpBlockElems()));
  st.codes.resize(size_t(blocks * g.CodeBlockBytes()));
  st.scale.resize(size_t(blocks * g.page_size));
  st.zero.resize(size_t(blocks * g.page_size));
  st.kmin.resize(size_t(blocks * g.head_dim));
  st.kmax.resize(size_t(blocks * g.head_dim));
  st.range.resize(size_t(blocks * g.RangeBlockBytes()));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int64_t row = int64_t(g.num_kv_heads) * g.head_dim;
  for (size_t s = 0; s < seq_len.size(); ++s) {
    const int32_t len = seq_len[s];
    std::vector<fp16_t>& k = st.k_in[s];
    std::vector<fp16_t>& v = st.v_in[s];
    k.resize(size_t(len * row));
    v.resize(size_t(len * row));
    for (int32_t t = 0; t < len; ++t) {
      for (int32_t h = 0; h < g.num_kv_heads; ++h) {
        const float gain = h == 0 ? 1.0f : (t % 997 == 5 ? 2.0f : 0.1f);
        for (int32_t j = 0; j < g.head_dim; ++j) {
          const size_t at = size_t((int64_t(t) * g.num_kv_heads + h) * g.head_dim + j);
          k[at] = FloatToHalf(gain * nd(rng));
          v[at] = FloatToHalf(nd(rng));
        }
      }
    }
    std::vector<int32_t> page_id(static_cast<size_t>(len)), slot(static_cast<size_t>(len));
    for (int32_t t = 0; t < len; ++t) {
      page_id[size_t(t)] = st.page_table[s * size_t(st.max_pages) + size_t(t / g.page_size)];
      slot[size_t(t)] = t % g.page_size;
    }
    AppendView in{len, k.data(), v.data(), page_id.data(), slot.data()};
    EXPECT_TRUE(AppendRef(g, in, st.Kv(), st.Quant()).ok());
  }
  st.q.assign(seq_len.size() * size_t(num_q_heads) * g.head_dim, 0);
  for (size_t s = 0; s < seq_len.size(); ++s) {
    for (int32_t qh = 0; qh < num_q_heads; ++qh) {
      const int32_t h = qh / st.group();
      fp16_t* dst = st.q.data() + (int64_t(s) * num_q_heads + qh) * g.head_dim;
      if (h == 0) {
        for (int32_t j = 0; j < g.head_dim; ++j) dst[j] = FloatToHalf(flat_gain * nd(rng));
        continue;
      }
      const int32_t loud = std::uniform_int_distribution<int32_t>(0, (seq_len[s] - 6) / 997)(rng);
      const fp16_t* kk = st.k_in[s].data() + (int64_t(loud * 997 + 5) * g.num_kv_heads + h) * g.head_dim;
      float norm = 0.0f;
      for (int32_t j = 0; j < g.head_dim; ++j) norm += HalfToFloat(kk[j]) * HalfToFloat(kk[j]);
      norm = std::sqrt(std::max(norm, 1e-6f));
      for (int32_t j = 0; j < g.head_dim; ++j) {
        dst[j] = FloatToHalf(peak * HalfToFloat(kk[j]) / norm + 0.05f * nd(rng));
      }
    }
  }
  return st;
}

// Exact softmax weights (double, normalized) of (s, qh) from the appended FP16 K.
std::vector<double> TrueWeights(const RefStore& st, int32_t s, int32_t qh) {
  const PageGeometry& g = st.g;
  const int32_t h = qh / st.group();
  const int32_t len = st.seq_len[size_t(s)];
  const fp16_t* q = st.q.data() + (int64_t(s) * st.num_q_heads + qh) * g.head_dim;
  std::vector<double> w(static_cast<size_t>(len));
  double mx = -1e300;
  for (int32_t t = 0; t < len; ++t) {
    const fp16_t* k = st.k_in[size_t(s)].data() + (int64_t(t) * g.num_kv_heads + h) * g.head_dim;
    double acc = 0.0;
    for (int32_t j = 0; j < g.head_dim; ++j) acc += double(HalfToFloat(q[j])) * HalfToFloat(k[j]);
    w[size_t(t)] = acc / std::sqrt(double(g.head_dim));
    mx = std::max(mx, w[size_t(t)]);
  }
  double total = 0.0;
  for (double& x : w) total += (x = std::exp(x - mx));
  for (double& x : w) x /= total;
  return w;
}

double TrueMassOf(const RefStore& st, int32_t s, int32_t qh, const int32_t* tokens, int32_t n) {
  const std::vector<double> w = TrueWeights(st, s, qh);
  double m = 0.0;
  for (int32_t i = 0; i < n; ++i) {
    if (tokens[i] >= 0 && tokens[i] < int32_t(w.size())) m += w[size_t(tokens[i])];
  }
  return m;
}

}  // namespace twl::testing

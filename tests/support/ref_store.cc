// Test support: random host KV store (see ref_store.h).
#include "support/ref_store.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "runtime/cpu/append_cpu.h"

namespace twl::testing {

BatchView RefStore::Batch() const {
  BatchView b;
  b.num_seqs = int32_t(seq_len.size());
  b.num_q_heads = num_q_heads;
  b.seq_len = seq_len.data();
  b.page_table = page_table.data();
  b.max_pages = max_pages;
  return b;
}

namespace {

int64_t PagesFor(int32_t len, int32_t page_size) { return (len + page_size - 1) / page_size; }

void Resize(RefStore& st) {
  const int64_t blocks = st.num_pages * st.g.num_kv_heads;
  st.kv.resize(size_t(blocks * st.g.FpBlockElems()));
  st.codes.resize(size_t(blocks * st.g.CodeBlockBytes()));
  st.scale.resize(size_t(blocks * st.g.page_size));
  st.zero.resize(size_t(blocks * st.g.page_size));
  st.kmin.resize(size_t(blocks * st.g.head_dim));
  st.kmax.resize(size_t(blocks * st.g.head_dim));
  st.range.resize(size_t(blocks * st.g.RangeBlockBytes()));
}

float RandomKeyElement(std::mt19937_64& rng, int32_t channel) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  // Channel-dependent offset and a couple of outlier channels, like real K.
  const float offset = 0.3f * std::sin(0.7f * float(channel));
  const float gain = channel % 17 == 3 ? 4.0f : 1.0f;
  return offset + gain * n(rng);
}

}  // namespace

void AppendRandom(RefStore& st, int32_t s, int32_t n, std::mt19937_64& rng) {
  const PageGeometry& g = st.g;
  const int32_t old_len = st.seq_len[size_t(s)];
  const int32_t new_len = old_len + n;
  const int64_t need = PagesFor(new_len, g.page_size);
  if (need > st.max_pages) {
    // Grow the page table stride (re-layout rows).
    std::vector<int32_t> table(st.seq_len.size() * size_t(need), -1);
    for (size_t r = 0; r < st.seq_len.size(); ++r) {
      std::copy_n(st.page_table.begin() + int64_t(r) * st.max_pages, st.max_pages,
                  table.begin() + int64_t(r) * need);
    }
    st.page_table = std::move(table);
    st.max_pages = int32_t(need);
  }
  std::vector<int32_t> page_id(static_cast<size_t>(n)), slot(static_cast<size_t>(n));
  for (int32_t i = 0; i < n; ++i) {
    const int32_t t = old_len + i;
    int32_t& entry = st.page_table[size_t(int64_t(s) * st.max_pages + t / g.page_size)];
    if (t % g.page_size == 0) {
      entry = int32_t(st.num_pages++);
      Resize(st);
    }
    page_id[size_t(i)] = entry;
    slot[size_t(i)] = t % g.page_size;
  }
  const int64_t row = int64_t(g.num_kv_heads) * g.head_dim;
  std::vector<fp16_t> k(static_cast<size_t>(n * row)), v(size_t(n * row));
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int64_t i = 0; i < n * row; ++i) {
    // Rounded to the stored type (g.kv_dtype): FP16, or BF16.
    k[size_t(i)] = g.FloatToKv(RandomKeyElement(rng, int32_t(i % g.head_dim)));
    v[size_t(i)] = g.FloatToKv(nd(rng));
  }
  AppendView in{n, k.data(), v.data(), page_id.data(), slot.data()};
  (void)AppendRef(g, in, st.Kv(), st.Quant());
  st.k_in[size_t(s)].insert(st.k_in[size_t(s)].end(), k.begin(), k.end());
  st.v_in[size_t(s)].insert(st.v_in[size_t(s)].end(), v.begin(), v.end());
  st.seq_len[size_t(s)] = new_len;
}

void RandomQueries(RefStore& st, std::mt19937_64& rng, float peak) {
  const PageGeometry& g = st.g;
  const int32_t num_seqs = int32_t(st.seq_len.size());
  st.q.assign(size_t(num_seqs) * st.num_q_heads * g.head_dim, 0);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  for (int32_t s = 0; s < num_seqs; ++s) {
    std::uniform_int_distribution<int32_t> tok(0, st.seq_len[size_t(s)] - 1);
    for (int32_t qh = 0; qh < st.num_q_heads; ++qh) {
      const int32_t h = qh / st.group();
      // Align with a random key: q = peak * k_t / |k_t| * sqrt(d) + noise, so the planted
      // token's score stands out by about `peak` logits over the rest.
      const int32_t t = tok(rng);
      const fp16_t* k = st.k_in[size_t(s)].data() + (int64_t(t) * g.num_kv_heads + h) * g.head_dim;
      float norm = 0.0f;
      for (int32_t j = 0; j < g.head_dim; ++j) norm += g.KvToFloat(k[j]) * g.KvToFloat(k[j]);
      norm = std::sqrt(std::max(norm, 1e-6f));
      for (int32_t j = 0; j < g.head_dim; ++j) {
        const float aligned = peak * g.KvToFloat(k[j]) / norm * std::sqrt(float(g.head_dim));
        st.q[size_t((int64_t(s) * st.num_q_heads + qh) * g.head_dim + j)] =
            FloatToHalf(aligned + 0.5f * nd(rng));
      }
    }
  }
}

RefStore MakeRandomStore(const PageGeometry& g, int32_t num_q_heads,
                         const std::vector<int32_t>& seq_len, uint64_t seed, float peak) {
  RefStore st;
  st.g = g;
  st.num_q_heads = num_q_heads;
  st.seq_len.assign(seq_len.size(), 0);
  st.k_in.resize(seq_len.size());
  st.v_in.resize(seq_len.size());
  st.max_pages = 1;
  st.page_table.assign(seq_len.size(), -1);
  std::mt19937_64 rng(seed);
  // Interleave appends across sequences in uneven chunks so page ids are not contiguous.
  std::vector<int32_t> left = seq_len;
  for (bool more = true; more;) {
    more = false;
    for (size_t s = 0; s < seq_len.size(); ++s) {
      if (left[s] == 0) continue;
      const int32_t chunk = std::min(left[s], int32_t(1 + rng() % 37));
      AppendRandom(st, int32_t(s), chunk, rng);
      left[s] -= chunk;
      more = more || left[s] > 0;
    }
  }
  RandomQueries(st, rng, peak);
  return st;
}

double RelError(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < a.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

std::vector<float> ToFloat(const std::vector<fp16_t>& h) {
  std::vector<float> f(h.size());
  for (size_t i = 0; i < h.size(); ++i) f[i] = HalfToFloat(h[i]);
  return f;
}

}  // namespace twl::testing

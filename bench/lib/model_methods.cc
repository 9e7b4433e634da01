// Oracle top-p attention and sequence scoring for real models (see model_methods.h).
#include "lib/model_methods.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <numeric>
#include <random>

#include "absl/strings/str_format.h"

namespace twl::bench {

absl::StatusOr<std::vector<int32_t>> ReadByteTokens(const std::string& path, int32_t n,
                                                    const LlamaConfig& model) {
  if (model.vocab_size != 256) {
    return absl::InvalidArgumentError("text input needs a byte-level model (vocabulary 256)");
  }
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return absl::NotFoundError(absl::StrFormat("cannot read %s", path));
  std::vector<int32_t> text;
  for (int ch; int32_t(text.size()) < n && (ch = std::fgetc(f)) != EOF;) text.push_back(ch);
  std::fclose(f);
  return text;
}

double TopPWeightThreshold(const double* w, int32_t n, double p, std::vector<double>* scratch) {
  // Weighted quickselect, descending: O(n) expected instead of a sort per head and token (the
  // oracle runs at every position of every evaluated window).
  std::vector<double>& a = *scratch;
  a.assign(w, w + n);
  auto desc = std::greater<double>();
  size_t lo = 0, hi = a.size();
  double need = p;
  while (hi - lo > 32) {
    const size_t mid = lo + (hi - lo) / 2;
    std::nth_element(a.begin() + std::ptrdiff_t(lo), a.begin() + std::ptrdiff_t(mid),
                     a.begin() + std::ptrdiff_t(hi), desc);
    double upper = 0;  // a[lo, mid): every weight >= a[mid]
    for (size_t i = lo; i < mid; ++i) upper += a[i];
    if (upper >= need) {
      hi = mid;
    } else if (upper + a[mid] >= need) {
      return a[mid];
    } else {
      need -= upper + a[mid];
      lo = mid + 1;
    }
  }
  std::sort(a.begin() + std::ptrdiff_t(lo), a.begin() + std::ptrdiff_t(hi), desc);
  for (size_t i = lo; i < hi; ++i) {
    need -= a[i];
    if (need <= 0) return a[i];
  }
  // Rounding left a sliver of p unreached: every token.
  return hi > 0 ? a[hi - 1] : 0.0;
}

OracleTopPAttention::OracleTopPAttention(const LlamaConfig& c, float p)
    : c_(c), p_(p), kv_(c) {}

absl::Status OracleTopPAttention::operator()(int32_t layer, int32_t pos, const float* q,
                                             const float* k, const float* v, float* out) {
  if (absl::Status s = kv_.Store(layer, pos, k, v, "OracleTopPAttention"); !s.ok()) return s;
  const int32_t hd = c_.head_dim(), group = c_.n_heads / c_.n_kv_heads;
  const int32_t n = pos + 1;
  const float scale = 1.0f / std::sqrt(float(hd));
  std::vector<double> w(size_t(group) * n);
  std::vector<double> scratch;
  std::vector<char> in_union(static_cast<size_t>(n));
  for (int32_t g = 0; g < c_.n_kv_heads; ++g) {
    std::fill(in_union.begin(), in_union.end(), 0);
    // Exact weights of each query head of the group; own top-p sets into the union.
    for (int32_t r = 0; r < group; ++r) {
      const float* qh = q + int64_t(g * group + r) * hd;
      double* wr = &w[size_t(r) * n];
      double mx = -INFINITY, sum = 0;
      for (int32_t t = 0; t < n; ++t) {
        const float* kt = kv_.K(layer, t, g);
        double dot = 0;
        for (int32_t i = 0; i < hd; ++i) dot += double(qh[i]) * kt[i];
        wr[t] = dot * scale;
        mx = std::max(mx, wr[t]);
      }
      for (int32_t t = 0; t < n; ++t) {
        wr[t] = std::exp(wr[t] - mx);
        sum += wr[t];
      }
      for (int32_t t = 0; t < n; ++t) wr[t] /= sum;
      // p = 1 keeps every token (dense); otherwise the level set {w >= the top-p threshold}.
      const double t = p_ < 1.0f ? TopPWeightThreshold(wr, n, double(p_), &scratch) : 0.0;
      for (int32_t i = 0; i < n; ++i) in_union[size_t(i)] |= char(wr[i] >= t);
    }
    int32_t read = 0;
    for (char x : in_union) read += x;
    read_.Add(n, read, layer);
    // Each query head attends over the union with its exact weights, renormalized.
    for (int32_t r = 0; r < group; ++r) {
      const double* wr = &w[size_t(r) * n];
      float* o = out + int64_t(g * group + r) * hd;
      std::vector<double> acc(size_t(hd), 0.0);
      double z = 0;
      for (int32_t t = 0; t < n; ++t) {
        if (!in_union[size_t(t)]) continue;
        z += wr[t];
        const float* vt = kv_.V(layer, t, g);
        for (int32_t i = 0; i < hd; ++i) acc[size_t(i)] += wr[t] * vt[i];
      }
      for (int32_t i = 0; i < hd; ++i) o[i] = float(acc[size_t(i)] / z);
    }
  }
  return absl::OkStatus();
}

QuestRefAttention::QuestRefAttention(const LlamaConfig& c, int32_t page_size, float fraction,
                                     int32_t sink_pages)
    : c_(c), page_size_(page_size), sink_pages_(sink_pages), fraction_(fraction), kv_(c) {}

absl::Status QuestRefAttention::operator()(int32_t layer, int32_t pos, const float* q,
                                           const float* k, const float* v, float* out) {
  if (absl::Status s = kv_.Store(layer, pos, k, v, "QuestRefAttention"); !s.ok()) return s;
  const int32_t hd = c_.head_dim(), group = c_.n_heads / c_.n_kv_heads;
  const int32_t n = pos + 1, ps = page_size_;
  const int32_t pages = (n + ps - 1) / ps;
  const int32_t budget = std::clamp(
      int32_t(std::ceil(std::ceil(double(fraction_) * n) / ps)), 1, pages);
  const float scale = 1.0f / std::sqrt(float(hd));
  for (int32_t g = 0; g < c_.n_kv_heads; ++g) {
    std::vector<char> keep(static_cast<size_t>(pages), 0);
    if (pages <= budget + sink_pages_ + 1) {
      std::fill(keep.begin(), keep.end(), 1);
    } else {
      std::vector<float> score(static_cast<size_t>(pages), -INFINITY);
      for (int32_t p = sink_pages_; p < pages - 1; ++p) {
        std::vector<float> lo(size_t(hd), INFINITY), hi(size_t(hd), -INFINITY);
        for (int32_t t = p * ps; t < std::min(n, (p + 1) * ps); ++t)
          for (int32_t i = 0; i < hd; ++i) {
            const float x = kv_.K(layer, t, g)[i];
            lo[size_t(i)] = std::min(lo[size_t(i)], x);
            hi[size_t(i)] = std::max(hi[size_t(i)], x);
          }
        for (int32_t r = 0; r < group; ++r) {
          const float* qh = q + int64_t(g * group + r) * hd;
          float b = 0;
          for (int32_t i = 0; i < hd; ++i) b += std::max(qh[i] * lo[size_t(i)], qh[i] * hi[size_t(i)]);
          score[size_t(p)] = std::max(score[size_t(p)], b);
        }
      }
      std::vector<int32_t> ranked;
      for (int32_t p = sink_pages_; p < pages - 1; ++p) ranked.push_back(p);
      std::nth_element(ranked.begin(), ranked.begin() + (budget - 1), ranked.end(),
                       [&](int32_t a, int32_t b) {
                         return score[size_t(a)] != score[size_t(b)] ? score[size_t(a)] > score[size_t(b)]
                                                                     : a < b;
                       });
      for (int32_t i = 0; i < budget; ++i) keep[size_t(ranked[size_t(i)])] = 1;
      for (int32_t p = 0; p < sink_pages_; ++p) keep[size_t(p)] = 1;
      keep[size_t(pages - 1)] = 1;
    }
    int32_t read = 0;
    for (int32_t t = 0; t < n; ++t) read += keep[size_t(t / ps)];
    read_.Add(n, read, layer);
    for (int32_t r = 0; r < group; ++r) {
      const float* qh = q + int64_t(g * group + r) * hd;
      float* o = out + int64_t(g * group + r) * hd;
      double mx = -INFINITY;
      std::vector<double> w(static_cast<size_t>(n), 0.0);
      for (int32_t t = 0; t < n; ++t) {
        if (!keep[size_t(t / ps)]) continue;
        const float* kt = kv_.K(layer, t, g);
        double dot = 0;
        for (int32_t i = 0; i < hd; ++i) dot += double(qh[i]) * kt[i];
        w[size_t(t)] = dot * scale;
        mx = std::max(mx, w[size_t(t)]);
      }
      double z = 0;
      std::vector<double> acc(size_t(hd), 0.0);
      for (int32_t t = 0; t < n; ++t) {
        if (!keep[size_t(t / ps)]) continue;
        const double e = std::exp(w[size_t(t)] - mx);
        z += e;
        const float* vt = kv_.V(layer, t, g);
        for (int32_t i = 0; i < hd; ++i) acc[size_t(i)] += e * vt[i];
      }
      for (int32_t i = 0; i < hd; ++i) o[i] = float(acc[size_t(i)] / z);
    }
  }
  return absl::OkStatus();
}

absl::Status ScoreTokens(const Llama2Model& model, const std::vector<int32_t>& tokens,
                         const AttentionFn& attention, std::vector<double>* nll,
                         std::vector<std::vector<float>>* logits) {
  if (tokens.empty() || int64_t(tokens.size()) > model.config().seq_len)
    return absl::InvalidArgumentError(
        absl::StrFormat("ScoreTokens: %d tokens for a context of %d", int(tokens.size()),
                        model.config().seq_len));
  nll->clear();
  if (logits) logits->clear();
  std::vector<float> l;
  for (size_t t = 0; t < tokens.size(); ++t) {
    if (absl::Status s = model.Forward(tokens[t], int32_t(t), attention, &l); !s.ok()) return s;
    if (t + 1 < tokens.size()) {
      double mx = -INFINITY, sum = 0;
      for (float x : l) mx = std::max(mx, double(x));
      for (float x : l) sum += std::exp(double(x) - mx);
      nll->push_back(std::log(sum) + mx - double(l[size_t(tokens[t + 1])]));
    }
    if (logits) logits->push_back(l);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<int32_t>> SampleTokens(const Llama2Model& model,
                                                  const AttentionFn& attention, int32_t first,
                                                  int32_t steps, double temperature,
                                                  uint64_t seed) {
  if (steps < 1 || steps > model.config().seq_len || !(temperature > 0))
    return absl::InvalidArgumentError("SampleTokens: steps outside [1, seq_len] or T <= 0");
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u01(0.0, 1.0);
  std::vector<int32_t> tokens = {first};
  std::vector<float> l;
  for (int32_t pos = 0; pos + 1 < steps; ++pos) {
    if (absl::Status s = model.Forward(tokens.back(), pos, attention, &l); !s.ok()) return s;
    double mx = -INFINITY;
    for (float x : l) mx = std::max(mx, double(x));
    std::vector<double> pr(l.size());
    double sum = 0;
    for (size_t i = 0; i < l.size(); ++i) sum += pr[i] = std::exp((double(l[i]) - mx) / temperature);
    double r = u01(rng) * sum;
    int32_t pick = int32_t(l.size()) - 1;
    for (size_t i = 0; i < pr.size(); ++i) {
      r -= pr[i];
      if (r <= 0) {
        pick = int32_t(i);
        break;
      }
    }
    tokens.push_back(pick);
  }
  return tokens;
}

absl::StatusOr<std::vector<int32_t>> GreedyAfter(const Llama2Model& model,
                                                 const std::vector<int32_t>& prompt,
                                                 const AttentionFn& attention, int32_t n) {
  if (prompt.empty() || int64_t(prompt.size()) + n > model.config().seq_len)
    return absl::InvalidArgumentError("GreedyAfter: prompt + continuation exceed the context");
  std::vector<float> l;
  int32_t pos = 0;
  for (int32_t t : prompt)
    if (absl::Status s = model.Forward(t, pos++, attention, &l); !s.ok()) return s;
  std::vector<int32_t> out;
  for (int32_t i = 0; i < n; ++i) {
    out.push_back(Argmax(l));
    if (i + 1 < n)
      if (absl::Status s = model.Forward(out.back(), pos++, attention, &l); !s.ok()) return s;
  }
  return out;
}

}  // namespace twl::bench

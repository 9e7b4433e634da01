// llama2.c-format checkpoint loader and single-token forward pass (see llama2_model.h).
#include "lib/llama2_model.h"

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace twl::bench {
namespace {

void RmsNorm(float* out, const float* x, const float* w, int32_t n) {
  double ss = 0;
  for (int32_t i = 0; i < n; ++i) ss += double(x[i]) * x[i];
  const float inv = float(1.0 / std::sqrt(ss / n + 1e-5));
  for (int32_t i = 0; i < n; ++i) out[i] = w[i] * (x[i] * inv);
}

// sum a[i] * b[i] in FP32 over 8 interleaved partial sums: a single running sum is one long
// chain of dependent adds that the compiler may not reorder (no fast-math), so it runs at
// one add per add-latency; eight independent lanes vectorize. Every method of an evaluation
// shares this forward pass, so the order change is common to the reference and the methods.
float Dot(const float* a, const float* b, int32_t n) {
  constexpr int kLanes = 8;
  float part[kLanes] = {};
  int32_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    for (int k = 0; k < kLanes; ++k) part[k] += a[i + k] * b[i + k];
  }
  float tail = 0.0f;
  for (; i < n; ++i) tail += a[i] * b[i];
  return ((part[0] + part[4]) + (part[1] + part[5])) + ((part[2] + part[6]) + (part[3] + part[7])) +
         tail;
}

// out[rows] = W[rows][cols] * x[cols].
void MatVec(float* out, const float* w, const float* x, int32_t rows, int32_t cols) {
  for (int32_t r = 0; r < rows; ++r) out[r] = Dot(w + int64_t(r) * cols, x, cols);
}

// RoPE with theta 10000 over pairs (2j, 2j+1) of each head of `heads` heads.
void Rope(float* x, int32_t heads, int32_t head_dim, int32_t pos) {
  for (int32_t h = 0; h < heads; ++h) {
    float* v = x + int64_t(h) * head_dim;
    for (int32_t i = 0; i < head_dim; i += 2) {
      const float freq = 1.0f / std::pow(10000.0f, float(i) / float(head_dim));
      const float a = float(pos) * freq;
      const float c = std::cos(a), s = std::sin(a);
      const float v0 = v[i], v1 = v[i + 1];
      v[i] = v0 * c - v1 * s;
      v[i + 1] = v0 * s + v1 * c;
    }
  }
}

}  // namespace

absl::StatusOr<Llama2Model> Llama2Model::Load(const std::string& path) {
  std::ifstream f(path, std::ios::binary | std::ios::ate);
  if (!f) return absl::NotFoundError("cannot open model " + path);
  const int64_t bytes = int64_t(f.tellg());
  f.seekg(0);
  int32_t header[7];
  if (bytes < int64_t(sizeof(header)) || !f.read(reinterpret_cast<char*>(header), sizeof(header)))
    return absl::DataLossError("model header truncated: " + path);
  Llama2Model m;
  LlamaConfig& c = m.config_;
  c.dim = header[0];
  c.hidden_dim = header[1];
  c.n_layers = header[2];
  c.n_heads = header[3];
  c.n_kv_heads = header[4];
  c.vocab_size = header[5];
  c.seq_len = header[6];
  const bool shared = c.vocab_size > 0;
  c.vocab_size = std::abs(c.vocab_size);
  if (c.dim <= 0 || c.hidden_dim <= 0 || c.n_layers <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 ||
      c.n_heads % c.n_kv_heads != 0 || c.dim % c.n_heads != 0 || c.head_dim() % 2 != 0 ||
      c.vocab_size <= 0 || c.seq_len <= 0)
    return absl::DataLossError(absl::StrFormat(
        "model header not a llama2.c config: dim %d hidden %d layers %d heads %d/%d", c.dim,
        c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads));
  const int64_t L = c.n_layers, D = c.dim, KV = c.kv_dim(), Hd = c.hidden_dim;
  size_t at = 0;
  auto take = [&](int64_t n) {
    const size_t o = at;
    at += size_t(n);
    return o;
  };
  m.embed_ = take(int64_t(c.vocab_size) * D);
  m.rms_att_ = take(L * D);
  m.wq_ = take(L * D * D);
  m.wk_ = take(L * KV * D);
  m.wv_ = take(L * KV * D);
  m.wo_ = take(L * D * D);
  m.rms_ffn_ = take(L * D);
  m.w1_ = take(L * Hd * D);
  m.w2_ = take(L * D * Hd);
  m.w3_ = take(L * Hd * D);
  m.rms_final_ = take(D);
  take(int64_t(c.seq_len) * c.head_dim());  // legacy RoPE tables (real and imaginary halves)
  m.wcls_ = shared ? m.embed_ : take(int64_t(c.vocab_size) * D);
  const int64_t need = int64_t(sizeof(header)) + int64_t(at) * 4;
  if (bytes < need)
    return absl::DataLossError(
        absl::StrFormat("model %s has %d bytes, its config needs %d", path, bytes, need));
  m.weights_.resize(at);
  if (!f.read(reinterpret_cast<char*>(m.weights_.data()), std::streamsize(at * 4)))
    return absl::DataLossError("model tensors truncated: " + path);
  return m;
}

absl::Status Llama2Model::Forward(int32_t token, int32_t pos, const AttentionFn& attention,
                                  std::vector<float>* logits) const {
  const LlamaConfig& c = config_;
  if (token < 0 || token >= c.vocab_size)
    return absl::InvalidArgumentError(absl::StrFormat("token %d outside the vocabulary", token));
  if (pos < 0 || pos >= c.seq_len)
    return absl::InvalidArgumentError(
        absl::StrFormat("position %d outside the context of %d", pos, c.seq_len));
  const int32_t D = c.dim, KV = c.kv_dim(), Hd = c.hidden_dim, hd = c.head_dim();
  const float* w = weights_.data();
  std::vector<float> x(w + embed_ + int64_t(token) * D, w + embed_ + int64_t(token + 1) * D);
  std::vector<float> xb(D), q(D), k(KV), v(KV), att(D), proj(D), h1(Hd), h3(Hd);
  for (int32_t l = 0; l < c.n_layers; ++l) {
    RmsNorm(xb.data(), x.data(), w + rms_att_ + int64_t(l) * D, D);
    MatVec(q.data(), w + wq_ + int64_t(l) * D * D, xb.data(), D, D);
    MatVec(k.data(), w + wk_ + int64_t(l) * KV * D, xb.data(), KV, D);
    MatVec(v.data(), w + wv_ + int64_t(l) * KV * D, xb.data(), KV, D);
    Rope(q.data(), c.n_heads, hd, pos);
    Rope(k.data(), c.n_kv_heads, hd, pos);
    if (absl::Status s = attention(l, pos, q.data(), k.data(), v.data(), att.data()); !s.ok())
      return s;
    MatVec(proj.data(), w + wo_ + int64_t(l) * D * D, att.data(), D, D);
    for (int32_t i = 0; i < D; ++i) x[i] += proj[i];
    RmsNorm(xb.data(), x.data(), w + rms_ffn_ + int64_t(l) * D, D);
    MatVec(h1.data(), w + w1_ + int64_t(l) * Hd * D, xb.data(), Hd, D);
    MatVec(h3.data(), w + w3_ + int64_t(l) * Hd * D, xb.data(), Hd, D);
    for (int32_t i = 0; i < Hd; ++i) h1[i] = h1[i] / (1.0f + std::exp(-h1[i])) * h3[i];  // SwiGLU
    MatVec(proj.data(), w + w2_ + int64_t(l) * D * Hd, h1.data(), D, Hd);
    for (int32_t i = 0; i < D; ++i) x[i] += proj[i];
  }
  RmsNorm(xb.data(), x.data(), w + rms_final_, D);
  logits->resize(size_t(c.vocab_size));
  MatVec(logits->data(), w + wcls_, xb.data(), c.vocab_size, D);
  return absl::OkStatus();
}

ModelKvCache::ModelKvCache(const LlamaConfig& c) : c_(c) {
  k_.assign(size_t(c.n_layers), std::vector<float>(size_t(c.seq_len) * c.kv_dim()));
  v_.assign(size_t(c.n_layers), std::vector<float>(size_t(c.seq_len) * c.kv_dim()));
}

absl::Status ModelKvCache::Store(int32_t layer, int32_t pos, const float* k, const float* v,
                                 const char* owner) {
  if (layer < 0 || layer >= c_.n_layers || pos < 0 || pos >= c_.seq_len)
    return absl::InvalidArgumentError(absl::StrCat(owner, ": layer or position out of range"));
  const int32_t KV = c_.kv_dim();
  std::memcpy(&k_[size_t(layer)][size_t(pos) * KV], k, sizeof(float) * KV);
  std::memcpy(&v_[size_t(layer)][size_t(pos) * KV], v, sizeof(float) * KV);
  return absl::OkStatus();
}

DenseAttention::DenseAttention(const LlamaConfig& c) : c_(c), kv_(c) {}

absl::Status DenseAttention::operator()(int32_t layer, int32_t pos, const float* q, const float* k,
                                        const float* v, float* out) {
  if (absl::Status s = kv_.Store(layer, pos, k, v, "DenseAttention"); !s.ok()) return s;
  const int32_t hd = c_.head_dim(), group = c_.n_heads / c_.n_kv_heads;
  const float scale = 1.0f / std::sqrt(float(hd));
  std::vector<float> s(size_t(pos) + 1);
  for (int32_t h = 0; h < c_.n_heads; ++h) {
    const int32_t kvh = h / group;
    const float* qh = q + int64_t(h) * hd;
    float mx = -INFINITY;
    for (int32_t t = 0; t <= pos; ++t) {
      const float* kt = kv_.K(layer, t, kvh);
      s[size_t(t)] = Dot(qh, kt, hd) * scale;
      mx = std::max(mx, s[size_t(t)]);
    }
    double sum = 0;
    for (int32_t t = 0; t <= pos; ++t) {
      s[size_t(t)] = std::exp(s[size_t(t)] - mx);
      sum += s[size_t(t)];
    }
    float* o = out + int64_t(h) * hd;
    for (int32_t i = 0; i < hd; ++i) o[i] = 0.0f;
    for (int32_t t = 0; t <= pos; ++t) {
      const float a = float(s[size_t(t)] / sum);
      const float* vt = kv_.V(layer, t, kvh);
      for (int32_t i = 0; i < hd; ++i) o[i] += a * vt[i];
    }
  }
  return absl::OkStatus();
}

std::vector<double> Softmax(const std::vector<float>& logits) {
  double mx = -INFINITY;
  for (float x : logits) mx = std::max(mx, double(x));
  std::vector<double> p(logits.size());
  double sum = 0;
  for (size_t i = 0; i < logits.size(); ++i) {
    p[i] = std::exp(double(logits[i]) - mx);
    sum += p[i];
  }
  for (double& x : p) x /= sum;
  return p;
}

double KlDivergence(const std::vector<double>& p, const std::vector<double>& q) {
  double kl = 0;
  for (size_t i = 0; i < p.size() && i < q.size(); ++i) {
    if (p[i] > 0) kl += p[i] * (std::log(p[i]) - std::log(std::max(q[i], 1e-300)));
  }
  return std::max(0.0, kl);
}

int32_t Argmax(const std::vector<float>& logits) {
  int32_t best = 0;
  for (size_t i = 1; i < logits.size(); ++i)
    if (logits[i] > logits[size_t(best)]) best = int32_t(i);
  return best;
}

}  // namespace twl::bench

// Forward pass of a Llama-2-architecture checkpoint in the llama2.c format (the real trained
// model stories260K: 5 layers, 8 query / 4 KV heads, head dim 8), one token at a time, with
// attention delegated to a callback so that the accuracy harness can run it through the
// Twilight runtime (C API) and through a plain dense reference on the same weights.
//
//   x = embed[token]; per layer: h = RMSNorm(x); q, k, v = Wq h, Wk h, Wv h; RoPE(q, k, pos);
//   x += Wo Attention(q, k, v); x += W2 (SiLU(W1 RMSNorm(x)) * W3 RMSNorm(x));
//   logits = embed^T RMSNorm(x)   (classifier shared with the embedding)
//
// RoPE: interleaved pairs (2j, 2j+1) of each head, theta 10000; RMSNorm eps 1e-5.
// The weights are read from the shared folder (never copied into the repository).
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace twl::bench {

struct LlamaConfig {
  int32_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0;
  int32_t vocab_size = 0, seq_len = 0;
  int32_t head_dim() const { return dim / n_heads; }
  int32_t kv_dim() const { return head_dim() * n_kv_heads; }
};

// The attention of one layer for the token at `pos`: q [n_heads][head_dim] and the token's own
// k, v [n_kv_heads][head_dim] (q and k after RoPE). The callee appends k, v to its cache for
// `layer` and writes the attention output over positions 0..pos into out [n_heads][head_dim].
using AttentionFn = std::function<absl::Status(int32_t layer, int32_t pos, const float* q,
                                               const float* k, const float* v, float* out)>;

// The K/V cache of a reference attention outside the runtime: per layer, FP32 rows
// [seq_len][kv_dim], filled position by position as the model runs.
class ModelKvCache {
 public:
  explicit ModelKvCache(const LlamaConfig& c);
  // Copies the token's k, v [kv_dim] to (layer, pos); InvalidArgument, its message led by
  // `owner`, when either is outside the model.
  absl::Status Store(int32_t layer, int32_t pos, const float* k, const float* v, const char* owner);
  // KV head `kv_head`'s head_dim values of token t in `layer`.
  const float* K(int32_t layer, int32_t t, int32_t kv_head) const {
    return &k_[size_t(layer)][size_t(t) * c_.kv_dim() + size_t(kv_head) * c_.head_dim()];
  }
  const float* V(int32_t layer, int32_t t, int32_t kv_head) const {
    return &v_[size_t(layer)][size_t(t) * c_.kv_dim() + size_t(kv_head) * c_.head_dim()];
  }

 private:
  LlamaConfig c_;
  std::vector<std::vector<float>> k_, v_;  // per layer [seq_len][kv_dim]
};

class Llama2Model {
 public:
  static absl::StatusOr<Llama2Model> Load(const std::string& path);
  const LlamaConfig& config() const { return config_; }

  // Runs token `token` at position `pos` (positions must be fed in order 0, 1, ... to the
  // same attention callback) and writes the next-token logits [vocab_size].
  absl::Status Forward(int32_t token, int32_t pos, const AttentionFn& attention,
                       std::vector<float>* logits) const;

 private:
  LlamaConfig config_;
  std::vector<float> weights_;  // the whole tensor area of the file
  // Offsets into weights_.
  size_t embed_ = 0, rms_att_ = 0, wq_ = 0, wk_ = 0, wv_ = 0, wo_ = 0, rms_ffn_ = 0, w1_ = 0,
         w2_ = 0, w3_ = 0, rms_final_ = 0, wcls_ = 0;
};

// A plain dense FP32 attention with its own KV cache: the reference the runtime is compared to.
class DenseAttention {
 public:
  explicit DenseAttention(const LlamaConfig& c);
  absl::Status operator()(int32_t layer, int32_t pos, const float* q, const float* k,
                          const float* v, float* out);
  AttentionFn Fn() {
    return [this](int32_t l, int32_t p, const float* q, const float* k, const float* v, float* o) {
      return (*this)(l, p, q, k, v, o);
    };
  }

 private:
  LlamaConfig c_;
  ModelKvCache kv_;
};

// Numerics shared by the harness: softmax of logits, KL(p || q) in nats, argmax.
std::vector<double> Softmax(const std::vector<float>& logits);
double KlDivergence(const std::vector<double>& p, const std::vector<double>& q);
int32_t Argmax(const std::vector<float>& logits);

#ifdef TWL_SHARED_DIR
// The shared copy of the test model (TWL_SHARED_DIR is defined for bench mains and tests).
inline std::string Stories260KPath() { return TWL_SHARED_DIR "/models/stories260K.bin"; }
#endif

}  // namespace twl::bench

// Helpers for the C API tests. Only the public headers are visible here (the test binary links
// the shared library, not twilight_core), so FP16 goes through twl_fp32_to_fp16 and the
// reference attention is written out in plain C++.
#pragma once

#include <cmath>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include <unistd.h>

#include "gtest/gtest.h"
#include "twilight.h"
#include "twilight.hpp"

namespace twl_test {

// A small model that the CPU backend decodes in microseconds.
inline twl_runtime_config SmallConfig() {
  twl_runtime_config c = twl_runtime_config_default();
  c.num_layers = 2;
  c.num_q_heads = 4;
  c.num_kv_heads = 2;
  c.head_dim = 32;
  c.page_size = 8;
  c.backend = TWL_BACKEND_CPU;
  return c;
}

// A config as a caller compiled against an older twilight.h passes it: its struct ends where
// a newer field begins, and whatever follows it in memory (here 0xab bytes) must not be read.
struct OldCallerConfig {
  twl_runtime_config config;
  unsigned char junk[32];
};

// SmallConfig with struct_size cut to `struct_size`, every byte after the config 0xab; the
// test then sets the newer fields to values the library would refuse if it read them.
inline void InitOldCallerConfig(OldCallerConfig* old, size_t struct_size) {
  std::memset(old, 0xab, sizeof(*old));
  old->config = SmallConfig();
  old->config.struct_size = struct_size;
}

inline twilight::RuntimePtr MakeRuntime(const twl_runtime_config& c) {
  twl_status s = TWL_INTERNAL;
  twilight::RuntimePtr rt = twilight::CreateRuntime(c, &s);
  EXPECT_EQ(s, TWL_OK) << twl_runtime_last_error(nullptr);
  return rt;
}

// n values ~ N(0, 1) rounded to FP16.
inline std::vector<uint16_t> RandomHalf(std::mt19937* rng, size_t n, float scale = 1.0f) {
  std::normal_distribution<float> dist(0.0f, scale);
  std::vector<float> f(n);
  for (float& x : f) x = dist(*rng);
  std::vector<uint16_t> h(n);
  twl_fp32_to_fp16(f.data(), h.data(), n);
  return h;
}

inline std::vector<float> ToFloat(const std::vector<uint16_t>& h) {
  std::vector<float> f(h.size());
  twl_fp16_to_fp32(h.data(), f.data(), h.size());
  return f;
}

// Cached K/V of one (sequence, layer), FP16 bit patterns.
struct LayerKv {
  int32_t len = -1;
  std::vector<uint16_t> k, v;
  bool operator==(const LayerKv& o) const { return len == o.len && k == o.k && v == o.v; }
};

inline LayerKv ReadKv(const twl_runtime* rt, twl_seq_id seq, int32_t layer) {
  LayerKv kv;
  twl_runtime_config c;
  c.struct_size = sizeof(c);
  EXPECT_EQ(twl_runtime_get_config(rt, &c), TWL_OK);
  int32_t len = 0;
  EXPECT_EQ(twl_sequence_read_kv(rt, seq, layer, nullptr, nullptr, 0, &len), TWL_OK)
      << twl_runtime_last_error(rt);
  const size_t elems = size_t(len) * c.num_kv_heads * c.head_dim;
  kv.k.resize(elems);
  kv.v.resize(elems);
  EXPECT_EQ(twl_sequence_read_kv(rt, seq, layer, kv.k.data(), kv.v.data(), len, &kv.len), TWL_OK)
      << twl_runtime_last_error(rt);
  return kv;
}

// Dense softmax attention of every query head over all cached tokens (the answer of a
// top-p = 1 decode with the full selector and exact K), FP32.
inline std::vector<float> DenseAttention(const std::vector<float>& q, const LayerKv& kv,
                                         int32_t num_q_heads, int32_t num_kv_heads,
                                         int32_t head_dim) {
  const std::vector<float> k = ToFloat(kv.k), v = ToFloat(kv.v);
  const int32_t group = num_q_heads / num_kv_heads;
  const float scale = 1.0f / std::sqrt(float(head_dim));
  std::vector<float> out(size_t(num_q_heads) * head_dim, 0.0f);
  for (int32_t qh = 0; qh < num_q_heads; ++qh) {
    const int32_t h = qh / group;
    std::vector<double> w(kv.len);
    double max_s = -1e300;
    for (int32_t t = 0; t < kv.len; ++t) {
      double s = 0;
      for (int32_t c = 0; c < head_dim; ++c) {
        s +=
            double(q[size_t(qh) * head_dim + c]) * k[(size_t(t) * num_kv_heads + h) * head_dim + c];
      }
      w[t] = s * scale;
      max_s = std::max(max_s, w[t]);
    }
    double sum = 0;
    for (double& x : w) sum += (x = std::exp(x - max_s));
    for (int32_t t = 0; t < kv.len; ++t) {
      for (int32_t c = 0; c < head_dim; ++c) {
        out[size_t(qh) * head_dim + c] +=
            float(w[t] / sum * v[(size_t(t) * num_kv_heads + h) * head_dim + c]);
      }
    }
  }
  return out;
}

// Appends n random tokens (FP16) to (seq, layer); returns the status.
inline twl_status AppendRandom(twl_runtime* rt, twl_seq_id seq, int32_t layer, int32_t n,
                               int32_t num_kv_heads, int32_t head_dim, std::mt19937* rng) {
  const size_t elems = size_t(n) * num_kv_heads * head_dim;
  const std::vector<uint16_t> k = RandomHalf(rng, elems), v = RandomHalf(rng, elems);
  return twl_sequence_append(rt, seq, layer, n, k.data(), v.data(), TWL_DTYPE_FP16,
                             TWL_MEMORY_HOST);
}

// An empty directory under $TMPDIR (or /tmp) for a disk tier; removed (if empty) at the end.
class TempDir {
 public:
  TempDir() {
    const char* tmp = std::getenv("TMPDIR");
    std::string tmpl = std::string(tmp && *tmp ? tmp : "/tmp") + "/twl-api-XXXXXX";
    if (mkdtemp(tmpl.data()) != nullptr) path_ = tmpl;
  }
  ~TempDir() {
    if (!path_.empty()) rmdir(path_.c_str());
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const char* path() const { return path_.c_str(); }

 private:
  std::string path_;
};

// A failed call must leave a message that names the function.
#define EXPECT_STATUS_WITH_MESSAGE(call, expected, rt, fn)                         \
  do {                                                                             \
    const twl_status status_ = (call);                                             \
    EXPECT_EQ(status_, (expected)) << #call << ": " << twl_runtime_last_error(rt); \
    const std::string message_ = twl_runtime_last_error(rt);                       \
    EXPECT_NE(message_.find(fn), std::string::npos) << #call << ": " << message_;  \
    EXPECT_GT(message_.size(), std::string(fn).size() + 2) << #call;               \
  } while (0)

}  // namespace twl_test

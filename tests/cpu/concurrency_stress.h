// The worker of the concurrency stress tests, written once against a small adapter so that it
// drives both twl::Runtime (tests/cpu/concurrency_stress_test.cc) and the C API
// (tests/fuzz/capi_stress_test.cc).
//
// Each worker thread owns up to kMaxLive sequences and, until a deadline, creates, appends to
// (random layer, random length), forks, reads back, decodes and frees them, and makes a few
// deliberately wrong calls (a freed id, a layer with no tokens). It keeps a private model of
// every sequence's K/V (exactly what it appended) and checks each result against it:
//   - read-back equals the model bit for bit;
//   - decode of a sequence at p = 1 (full selector) or in a dense layer equals dense
//     attention computed from the model (|out - ref| <= 3e-3 + 3e-3 |ref|: FP16 output
//     rounding plus FP32 accumulation); at p < 1 every output lies inside the convex hull of
//     the attended V rows (attention over any subset is a convex combination), +-2e-3 relative;
//   - an append refused for capacity (other threads hold the pool) changes nothing;
//   - wrong calls return NOT_FOUND / FAILED_PRECONDITION.
// The runtime's configuration must use the full selector, so that p = 1 means dense.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "core/half.h"

namespace twl_stress {

enum class Code { kOk, kInvalid, kNotFound, kCapacity, kPrecondition, kOther };

inline const char* CodeName(Code c) {
  switch (c) {
    case Code::kOk: return "OK";
    case Code::kInvalid: return "INVALID";
    case Code::kNotFound: return "NOT_FOUND";
    case Code::kCapacity: return "CAPACITY";
    case Code::kPrecondition: return "PRECONDITION";
    case Code::kOther: return "OTHER";
  }
  return "?";
}

struct Shape {
  int32_t num_layers = 2;
  int32_t num_q_heads = 4;
  int32_t num_kv_heads = 2;
  int32_t head_dim = 32;
  int32_t dense_layers = 0;
  size_t TokenElems() const { return size_t(num_kv_heads) * size_t(head_dim); }
};

// What the worker calls. Every method is called from the worker's own thread only.
class Target {
 public:
  virtual ~Target() = default;
  virtual Code Create(int64_t* id) = 0;
  virtual Code Free(int64_t id) = 0;
  virtual Code Fork(int64_t parent, int64_t* child) = 0;
  virtual Code Append(int64_t id, int32_t layer, int32_t n, const uint16_t* k,
                      const uint16_t* v) = 0;
  // p empty: the runtime's default p for every sequence.
  virtual Code Decode(int32_t layer, const std::vector<int64_t>& seqs, const uint16_t* q,
                      uint16_t* out, const std::vector<float>& p) = 0;
  virtual Code Read(int64_t id, int32_t layer, std::vector<uint16_t>* k,
                    std::vector<uint16_t>* v) = 0;
  virtual std::string LastError() = 0;
};

struct WorkerStats {
  int64_t creates = 0, appends = 0, capacity_refusals = 0, forks = 0, frees = 0, reads = 0;
  int64_t decodes = 0, dense_checked = 0, hull_checked = 0, wrong_calls = 0;
  int failures = 0;
  std::string first_failure;
};

class Worker {
 public:
  static constexpr int kMaxLive = 3;
  static constexpr int32_t kMaxTokens = 96;  // per (sequence, layer): then it is freed

  Worker(Target* target, const Shape& shape, float default_p, uint32_t seed)
      : t_(*target), s_(shape), default_p_(default_p), rng_(seed) {}

  WorkerStats Run(std::chrono::steady_clock::time_point deadline) {
    while (std::chrono::steady_clock::now() < deadline && stats_.failures == 0) Step();
    while (!live_.empty()) FreeAt(0);
    return stats_;
  }

 private:
  struct Seq {
    int64_t id = -1;
    std::vector<std::vector<uint16_t>> k, v;  // [layer][len * token elems]
  };

  int32_t Len(const Seq& q, int32_t layer) const {
    return int32_t(q.k[size_t(layer)].size() / s_.TokenElems());
  }

  void Fail(const std::string& what, Code got) {
    if (stats_.failures++ == 0) {
      stats_.first_failure = what + ": " + CodeName(got) + " (" + t_.LastError() + ")";
    }
  }

  int Rand(int n) { return int(rng_() % uint32_t(n)); }

  std::vector<uint16_t> RandomHalf(size_t n) {
    std::uniform_real_distribution<float> d(-2.0f, 2.0f);
    std::vector<uint16_t> x(n);
    for (uint16_t& h : x) h = twl::FloatToHalf(d(rng_));
    return x;
  }

  void Step() {
    const int r = Rand(100);
    if (live_.empty() || (r < 8 && live_.size() < size_t(kMaxLive))) return DoCreate();
    if (r < 45) return DoAppend();
    if (r < 75) return DoDecode();
    if (r < 83) return DoRead();
    if (r < 88 && live_.size() < size_t(kMaxLive)) return DoFork();
    if (r < 93) return FreeAt(size_t(Rand(int(live_.size()))));
    DoWrongCall();
  }

  void DoCreate() {
    Seq q;
    const Code c = t_.Create(&q.id);
    if (c != Code::kOk) return Fail("create", c);
    q.k.resize(size_t(s_.num_layers));
    q.v.resize(size_t(s_.num_layers));
    live_.push_back(std::move(q));
    ++stats_.creates;
  }

  void FreeAt(size_t i) {
    const Code c = t_.Free(live_[i].id);
    if (c != Code::kOk) return Fail("free", c);
    freed_.push_back(live_[i].id);
    live_.erase(live_.begin() + long(i));
    ++stats_.frees;
  }

  void DoAppend() {
    const size_t i = size_t(Rand(int(live_.size())));
    Seq& q = live_[i];
    const int32_t layer = Rand(s_.num_layers);
    const int32_t n = Rand(10) == 0 ? 20 + Rand(20) : 1 + Rand(8);
    if (Len(q, layer) + n > kMaxTokens) return FreeAt(i);
    const std::vector<uint16_t> k = RandomHalf(size_t(n) * s_.TokenElems());
    const std::vector<uint16_t> v = RandomHalf(k.size());
    const Code c = t_.Append(q.id, layer, n, k.data(), v.data());
    if (c == Code::kCapacity) {  // the pool is shared: make room and go on
      ++stats_.capacity_refusals;
      return FreeAt(size_t(Rand(int(live_.size()))));
    }
    if (c != Code::kOk) return Fail("append", c);
    q.k[size_t(layer)].insert(q.k[size_t(layer)].end(), k.begin(), k.end());
    q.v[size_t(layer)].insert(q.v[size_t(layer)].end(), v.begin(), v.end());
    ++stats_.appends;
  }

  void DoRead() {
    const Seq& q = live_[size_t(Rand(int(live_.size())))];
    const int32_t layer = Rand(s_.num_layers);
    std::vector<uint16_t> k, v;
    const Code c = t_.Read(q.id, layer, &k, &v);
    if (c != Code::kOk) return Fail("read", c);
    if (k != q.k[size_t(layer)] || v != q.v[size_t(layer)]) {
      return Fail("read-back differs from what this thread appended", c);
    }
    ++stats_.reads;
  }

  void DoFork() {
    const Seq& parent = live_[size_t(Rand(int(live_.size())))];
    Seq child = parent;
    const Code c = t_.Fork(parent.id, &child.id);
    if (c != Code::kOk) return Fail("fork", c);
    live_.push_back(std::move(child));
    ++stats_.forks;
  }

  void DoWrongCall() {
    ++stats_.wrong_calls;
    if (!freed_.empty() && Rand(2) == 0) {
      const int64_t gone = freed_[size_t(Rand(int(freed_.size())))];
      const std::vector<uint16_t> kv(s_.TokenElems(), 0x3c00);
      Code c = t_.Append(gone, 0, 1, kv.data(), kv.data());
      if (c != Code::kNotFound) return Fail("append to a freed sequence", c);
      std::vector<uint16_t> q(size_t(s_.num_q_heads) * s_.head_dim, 0x3c00), out(q.size());
      c = t_.Decode(0, {gone}, q.data(), out.data(), {});
      if (c != Code::kNotFound) return Fail("decode of a freed sequence", c);
      return;
    }
    // A layer this thread has not appended to for some sequence: FAILED_PRECONDITION.
    for (const Seq& q : live_) {
      for (int32_t layer = 0; layer < s_.num_layers; ++layer) {
        if (Len(q, layer) != 0) continue;
        std::vector<uint16_t> query(size_t(s_.num_q_heads) * s_.head_dim, 0x3c00), out(query.size());
        const Code c = t_.Decode(layer, {q.id}, query.data(), out.data(), {});
        if (c != Code::kPrecondition) return Fail("decode of an empty layer", c);
        return;
      }
    }
  }

  void DoDecode() {
    const int32_t layer = Rand(s_.num_layers);
    std::vector<const Seq*> batch;
    for (const Seq& q : live_) {
      if (Len(q, layer) > 0 && Rand(3) != 0) batch.push_back(&q);
    }
    if (batch.empty()) return;
    std::vector<int64_t> ids;
    for (const Seq* q : batch) ids.push_back(q->id);
    std::vector<float> p;
    if (Rand(4) != 0) {
      const float choices[] = {1.0f, 1.0f, 0.9f, 0.6f};
      for (size_t i = 0; i < batch.size(); ++i) p.push_back(choices[Rand(4)]);
    }
    const size_t row = size_t(s_.num_q_heads) * s_.head_dim;
    const std::vector<uint16_t> q = RandomHalf(batch.size() * row);
    std::vector<uint16_t> out(q.size(), 0x7e00);
    const Code c = t_.Decode(layer, ids, q.data(), out.data(), p);
    if (c != Code::kOk) return Fail("decode", c);
    ++stats_.decodes;
    for (size_t i = 0; i < batch.size(); ++i) {
      const float pi = p.empty() ? default_p_ : p[i];
      const bool dense = layer < s_.dense_layers || pi == 1.0f;
      if (!Check(*batch[i], layer, q.data() + i * row, out.data() + i * row, dense)) return;
      ++(dense ? stats_.dense_checked : stats_.hull_checked);
    }
  }

  bool Check(const Seq& s, int32_t layer, const uint16_t* q, const uint16_t* out, bool dense) {
    const int32_t len = Len(s, layer);
    const int32_t group = s_.num_q_heads / s_.num_kv_heads;
    const double scale = 1.0 / std::sqrt(double(s_.head_dim));
    const std::vector<uint16_t>& K = s.k[size_t(layer)];
    const std::vector<uint16_t>& V = s.v[size_t(layer)];
    std::vector<double> w(static_cast<size_t>(len));
    for (int32_t qh = 0; qh < s_.num_q_heads; ++qh) {
      const int32_t h = qh / group;
      auto at = [&](int32_t t, int32_t c) {
        return (size_t(t) * s_.num_kv_heads + size_t(h)) * s_.head_dim + size_t(c);
      };
      double mx = -1e300;
      for (int32_t t = 0; t < len; ++t) {
        double dot = 0;
        for (int32_t c = 0; c < s_.head_dim; ++c) {
          dot += double(twl::HalfToFloat(q[size_t(qh) * s_.head_dim + c])) *
                 twl::HalfToFloat(K[at(t, c)]);
        }
        w[size_t(t)] = dot * scale;
        mx = std::max(mx, w[size_t(t)]);
      }
      double sum = 0;
      for (double& x : w) sum += (x = std::exp(x - mx));
      for (int32_t c = 0; c < s_.head_dim; ++c) {
        const float o = twl::HalfToFloat(out[size_t(qh) * s_.head_dim + c]);
        double ref = 0, lo = 1e300, hi = -1e300;
        for (int32_t t = 0; t < len; ++t) {
          const double x = twl::HalfToFloat(V[at(t, c)]);
          ref += w[size_t(t)] / sum * x;
          lo = std::min(lo, x);
          hi = std::max(hi, x);
        }
        const bool ok = dense ? std::fabs(o - ref) <= 3e-3 + 3e-3 * std::fabs(ref)
                              : std::isfinite(o) && o >= lo - 2e-3 * (1 + std::fabs(lo)) &&
                                    o <= hi + 2e-3 * (1 + std::fabs(hi));
        if (!ok) {
          Fail(std::string(dense ? "dense-equivalent decode differs from dense attention"
                                 : "decode output outside the hull of V") +
                   " (layer " + std::to_string(layer) + ", len " + std::to_string(len) +
                   ", head " + std::to_string(qh) + ", out " + std::to_string(o) + ", ref " +
                   std::to_string(ref) + ")",
               Code::kOk);
          return false;
        }
      }
    }
    return true;
  }

  Target& t_;
  const Shape s_;
  const float default_p_;
  std::mt19937 rng_;
  std::vector<Seq> live_;
  std::vector<int64_t> freed_;
  WorkerStats stats_;
};

// Seconds each stress test runs: TWL_STRESS_SECONDS, else `fallback`.
inline double StressSeconds(double fallback) {
  const char* env = std::getenv("TWL_STRESS_SECONDS");
  if (env == nullptr || *env == '\0') return fallback;
  const double s = std::atof(env);
  return s > 0 ? s : fallback;
}

}  // namespace twl_stress

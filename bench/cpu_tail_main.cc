// twl_cpu_tail: should a flat head's cold tail be attended on the CPU instead of being moved to
// the GPU? (issue 12.3: "measure, then decide"). A flat head keeps 20-50% of its context; what
// the GPU cache does not hold is read over PCIe, either gathered in place by the attention
// kernel or fetched into the cache first. The alternative (RetroInfer, HGCA): the host's cores
// attend over the tail where it lies and send back one partial result per query head (max,
// sum of weights, weighted V), which the GPU merges by log-sum-exp with its own part.
//
// This tool measures the CPU side of that trade on the machine it runs on: split-K attention
// over `units` tails of `tail` tokens each (one unit = one (sequence, KV head); its `group` query
// heads share every K/V row read), FP16 K/V in host memory, FP32 accumulation, TBB over (unit,
// chunk), AVX2/F16C/FMA when the CPU has them. It prints the CPU's rate in GB/s of K/V read and
// the time per layer-step beside what moving the same bytes costs at the GPU's measured rates
// (--gather_gbps: the attention kernel's in-place rows; --fetch_gbps: copy-engine fetch), plus a
// fixed --round_trip_us for q down and the partials up. A self-check against a double
// precision reference on the first unit runs first (exit 1 when it fails).
//
//   twl_cpu_tail [--units 16] [--tail 65536] [--group 4] [--head_dim 128] [--reps 5]
//                [--threads 0] [--gather_gbps 28] [--fetch_gbps 50.5] [--round_trip_us 30]
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "absl/flags/flag.h"
#include "core/half.h"
#include "core/host_simd.h"
#include "lib/tool_flags.h"
#include "oneapi/tbb/global_control.h"
#include "oneapi/tbb/parallel_for.h"

ABSL_FLAG(int32_t, units, 16, "flat (sequence, KV head) tails attended per layer-step");
ABSL_FLAG(int32_t, tail, 65536, "tokens in each tail");
ABSL_FLAG(int32_t, group, 4, "query heads per KV head (they share each K/V row read)");
ABSL_FLAG(int32_t, head_dim, 128, "head dimension (a multiple of 16)");
ABSL_FLAG(int32_t, reps, 5, "timed repetitions (the median is reported)");
ABSL_FLAG(int32_t, threads, 0, "worker threads (0: every core)");
ABSL_FLAG(double, gather_gbps, 28.0,
          "GPU attention reading rows in place from pinned memory, GB/s (H200, 2026-12-02)");
ABSL_FLAG(double, fetch_gbps, 50.5,
          "GPU gather of 4-8 KiB rows from mapped pinned memory, GB/s (H200, 2026-12-01)");
ABSL_FLAG(double, round_trip_us, 30.0,
          "q to the host and the partial results back, one round trip per layer-step (model)");

namespace {

constexpr int32_t kChunk = 512;  // tokens per task: K and V of a chunk (256 KiB) stay in L2
constexpr int32_t kMaxGroup = 16;

// One chunk's partial result per query head: softmax over the chunk's scores relative to m.
struct Partial {
  float m[kMaxGroup];
  float l[kMaxGroup];
  std::vector<float> acc;  // [group][head_dim]
};

// Scalar path: any CPU.
void ChunkScalar(const twl::fp16_t* k, const twl::fp16_t* v, int32_t rows, int32_t d,
                 const float* q, int32_t g, float scale, Partial* out, float* scores) {
  for (int32_t h = 0; h < g; ++h) {
    float m = -INFINITY;
    for (int32_t t = 0; t < rows; ++t) {
      float s = 0;
      for (int32_t c = 0; c < d; ++c) s += q[h * d + c] * twl::HalfToFloat(k[size_t(t) * d + c]);
      scores[t] = s * scale;
      m = std::max(m, scores[t]);
    }
    float l = 0;
    float* acc = out->acc.data() + size_t(h) * d;
    std::fill(acc, acc + d, 0.0f);
    for (int32_t t = 0; t < rows; ++t) {
      const float w = std::exp(scores[t] - m);
      l += w;
      for (int32_t c = 0; c < d; ++c) acc[c] += w * twl::HalfToFloat(v[size_t(t) * d + c]);
    }
    out->m[h] = m;
    out->l[h] = l;
  }
}

__attribute__((target("avx2,fma,f16c"))) inline float HorizontalSum(__m256 x) {
  const __m128 s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps(x, 1));
  const __m128 t = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(t, _mm_shuffle_ps(t, t, 1)));
}

// AVX2 path: each K row is converted once and dotted with every query head of the group; each
// V row once and accumulated into every head (the GQA sharing that makes the CPU read a row once).
__attribute__((target("avx2,fma,f16c"))) void ChunkAvx2(const twl::fp16_t* k,
                                                        const twl::fp16_t* v, int32_t rows,
                                                        int32_t d, const float* q, int32_t g,
                                                        float scale, Partial* out,
                                                        float* scores /* [g][rows] */) {
  const int32_t nv = d / 8;
  for (int32_t t = 0; t < rows; ++t) {
    const auto* kr = reinterpret_cast<const __m128i*>(k + size_t(t) * d);
    __m256 sum[kMaxGroup];
    for (int32_t h = 0; h < g; ++h) sum[h] = _mm256_setzero_ps();
    for (int32_t j = 0; j < nv; ++j) {
      const __m256 kv = _mm256_cvtph_ps(_mm_loadu_si128(kr + j));
      for (int32_t h = 0; h < g; ++h)
        sum[h] = _mm256_fmadd_ps(_mm256_loadu_ps(q + size_t(h) * d + j * 8), kv, sum[h]);
    }
    for (int32_t h = 0; h < g; ++h) scores[size_t(h) * rows + t] = HorizontalSum(sum[h]) * scale;
  }
  for (int32_t h = 0; h < g; ++h) {
    float m = -INFINITY;
    float* s = scores + size_t(h) * rows;
    for (int32_t t = 0; t < rows; ++t) m = std::max(m, s[t]);
    float l = 0;
    for (int32_t t = 0; t < rows; ++t) {
      s[t] = std::exp(s[t] - m);
      l += s[t];
    }
    out->m[h] = m;
    out->l[h] = l;
    std::fill(out->acc.begin() + size_t(h) * d, out->acc.begin() + size_t(h + 1) * d, 0.0f);
  }
  for (int32_t t = 0; t < rows; ++t) {
    const auto* vr = reinterpret_cast<const __m128i*>(v + size_t(t) * d);
    for (int32_t j = 0; j < nv; ++j) {
      const __m256 vv = _mm256_cvtph_ps(_mm_loadu_si128(vr + j));
      for (int32_t h = 0; h < g; ++h) {
        float* a = out->acc.data() + size_t(h) * d + j * 8;
        _mm256_storeu_ps(a, _mm256_fmadd_ps(_mm256_set1_ps(scores[size_t(h) * rows + t]), vv,
                                            _mm256_loadu_ps(a)));
      }
    }
  }
}

// Merges chunk partials by log-sum-exp into the final output [group][head_dim] of one unit.
void Merge(const std::vector<Partial>& parts, int32_t g, int32_t d, float* out) {
  for (int32_t h = 0; h < g; ++h) {
    float m = -INFINITY;
    for (const Partial& p : parts) m = std::max(m, p.m[h]);
    double l = 0;
    std::vector<double> acc(size_t(d), 0.0);
    for (const Partial& p : parts) {
      const double w = std::exp(double(p.m[h]) - m);
      l += w * p.l[h];
      for (int32_t c = 0; c < d; ++c) acc[size_t(c)] += w * p.acc[size_t(h) * d + c];
    }
    for (int32_t c = 0; c < d; ++c) out[size_t(h) * d + c] = float(acc[size_t(c)] / l);
  }
}

struct Workload {
  int32_t units, tail, g, d;
  std::vector<twl::fp16_t> k, v;  // [units][tail][d]
  std::vector<float> q;           // [units][g][d]
};

Workload MakeWorkload(int32_t units, int32_t tail, int32_t g, int32_t d) {
  Workload w{units, tail, g, d, {}, {}, {}};
  const size_t n = size_t(units) * tail * d;
  w.k.resize(n);
  w.v.resize(n);
  w.q.resize(size_t(units) * g * d);
  // Filled in parallel: the first touch also places the pages on the workers' NUMA nodes.
  tbb::parallel_for(0, units, [&](int32_t u) {
    std::mt19937 rng(1234u + uint32_t(u));
    std::normal_distribution<float> nd(0.0f, 1.0f);
    const size_t base = size_t(u) * tail * d;
    for (size_t i = 0; i < size_t(tail) * d; ++i) {
      w.k[base + i] = twl::FloatToHalf(nd(rng));
      w.v[base + i] = twl::FloatToHalf(nd(rng));
    }
    // A flat head: q small against K's spread, so the softmax spreads over the whole tail.
    for (int32_t i = 0; i < g * d; ++i) w.q[size_t(u) * g * d + size_t(i)] = 0.05f * nd(rng);
  });
  return w;
}

// Attends every unit; out [units][g][d].
void AttendAll(const Workload& w, bool avx2, std::vector<float>* out) {
  const int32_t chunks = (w.tail + kChunk - 1) / kChunk;
  const float scale = 1.0f / std::sqrt(float(w.d));
  std::vector<Partial> parts(size_t(w.units) * chunks);
  for (Partial& p : parts) p.acc.resize(size_t(w.g) * w.d);
  tbb::parallel_for(0, w.units * chunks, [&](int32_t item) {
    const int32_t u = item / chunks, c = item % chunks;
    const int32_t t0 = c * kChunk, rows = std::min(kChunk, w.tail - t0);
    const size_t off = (size_t(u) * w.tail + t0) * w.d;
    thread_local std::vector<float> scores;
    scores.resize(size_t(kMaxGroup) * kChunk);
    const float* q = w.q.data() + size_t(u) * w.g * w.d;
    if (avx2) {
      ChunkAvx2(w.k.data() + off, w.v.data() + off, rows, w.d, q, w.g, scale, &parts[size_t(item)],
                scores.data());
    } else {
      ChunkScalar(w.k.data() + off, w.v.data() + off, rows, w.d, q, w.g, scale,
                  &parts[size_t(item)], scores.data());
    }
  });
  out->assign(size_t(w.units) * w.g * w.d, 0.0f);
  tbb::parallel_for(0, w.units, [&](int32_t u) {
    std::vector<Partial> mine(parts.begin() + size_t(u) * chunks,
                              parts.begin() + size_t(u + 1) * chunks);
    Merge(mine, w.g, w.d, out->data() + size_t(u) * w.g * w.d);
  });
}

// Double precision softmax attention of unit 0, head h; returns the largest relative error of
// `got` (normalised by the output's largest magnitude).
double CheckUnit0(const Workload& w, const std::vector<float>& got) {
  const double scale = 1.0 / std::sqrt(double(w.d));
  double worst = 0;
  for (int32_t h = 0; h < w.g; ++h) {
    std::vector<double> s(size_t(w.tail));
    double m = -INFINITY;
    for (int32_t t = 0; t < w.tail; ++t) {
      double dot = 0;
      for (int32_t c = 0; c < w.d; ++c)
        dot += double(w.q[size_t(h) * w.d + c]) * twl::HalfToFloat(w.k[size_t(t) * w.d + c]);
      s[size_t(t)] = dot * scale;
      m = std::max(m, s[size_t(t)]);
    }
    double l = 0;
    std::vector<double> o(size_t(w.d), 0.0);
    for (int32_t t = 0; t < w.tail; ++t) {
      const double p = std::exp(s[size_t(t)] - m);
      l += p;
      for (int32_t c = 0; c < w.d; ++c) o[size_t(c)] += p * twl::HalfToFloat(w.v[size_t(t) * w.d + c]);
    }
    double mag = 0, err = 0;
    for (int32_t c = 0; c < w.d; ++c) mag = std::max(mag, std::abs(o[size_t(c)] / l));
    for (int32_t c = 0; c < w.d; ++c)
      err = std::max(err, std::abs(o[size_t(c)] / l - got[size_t(h) * w.d + c]));
    worst = std::max(worst, err / std::max(mag, 1e-30));
  }
  return worst;
}

double Median(std::vector<double> x) {
  std::sort(x.begin(), x.end());
  return x[x.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  twl::tools::ParseToolFlags(argc, argv, __FILE__,
                             "twl_cpu_tail: CPU split-K attention over flat heads' cold tails "
                             "vs moving them to the GPU");
  const int32_t units = absl::GetFlag(FLAGS_units), tail = absl::GetFlag(FLAGS_tail);
  const int32_t g = absl::GetFlag(FLAGS_group), d = absl::GetFlag(FLAGS_head_dim);
  const int32_t reps = absl::GetFlag(FLAGS_reps), threads = absl::GetFlag(FLAGS_threads);
  twl::tools::RequireFlag(units >= 1 && units <= 4096, "units", "must be in [1, 4096]");
  twl::tools::RequireFlag(tail >= 1 && tail <= (1 << 22), "tail", "must be in [1, 4194304]");
  twl::tools::RequireFlag(g >= 1 && g <= kMaxGroup, "group", "must be in [1, 16]");
  twl::tools::RequireFlag(d >= 16 && d <= 512 && d % 16 == 0, "head_dim",
                          "must be a multiple of 16 in [16, 512]");
  twl::tools::RequireFlag(reps >= 1 && reps <= 1000, "reps", "must be in [1, 1000]");
  twl::tools::RequireFlag(threads >= 0 && threads <= 4096, "threads", "must be in [0, 4096]");
  const double gather = absl::GetFlag(FLAGS_gather_gbps), fetch = absl::GetFlag(FLAGS_fetch_gbps);
  const double rt_us = absl::GetFlag(FLAGS_round_trip_us);
  twl::tools::RequireFlag(gather > 0 && fetch > 0, "gather_gbps/fetch_gbps", "must be > 0");
  twl::tools::RequireFlag(rt_us >= 0, "round_trip_us", "must be >= 0");
  const double bytes = double(units) * tail * d * 2 * 2;  // K and V, FP16
  twl::tools::RequireFlag(bytes <= 64e9, "units x tail", "K/V above 64 GB");

  std::unique_ptr<tbb::global_control> limit;
  if (threads > 0)
    limit = std::make_unique<tbb::global_control>(tbb::global_control::max_allowed_parallelism,
                                                  size_t(threads));
  const bool avx2 = twl::HostSupports(twl::HostSimd::kAvx2F16c) && __builtin_cpu_supports("fma");
  std::printf("twl_cpu_tail: %d units x %d tokens, group %d, d %d: %.1f MB of K/V; %s, %d threads\n",
              units, tail, g, d, bytes / 1e6, avx2 ? "AVX2+F16C" : "scalar",
              int(tbb::global_control::active_value(tbb::global_control::max_allowed_parallelism)));
  std::fflush(stdout);

  Workload w = MakeWorkload(units, tail, g, d);
  std::vector<float> out;
  AttendAll(w, avx2, &out);  // warm-up, and the output the self-check reads
  const double err = CheckUnit0(w, out);
  std::printf("self-check (unit 0 vs double precision): max error %.2e of the output's magnitude "
              "(tolerance 1e-3)\n", err);
  if (!(err <= 1e-3)) {
    std::fprintf(stderr, "twl_cpu_tail: self-check failed\n");
    return 1;
  }
  std::vector<double> ms;
  for (int32_t r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    AttendAll(w, avx2, &out);
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                     .count());
    std::printf("  rep %d/%d: %.3f ms\n", r + 1, reps, ms.back());
    std::fflush(stdout);
  }
  const double cpu_ms = Median(ms);
  const double cpu_gbps = bytes / (cpu_ms * 1e6);
  const double gather_ms = bytes / (gather * 1e6), fetch_ms = bytes / (fetch * 1e6);
  std::printf("\n%-34s %10s %10s\n", "per layer-step", "ms", "GB/s");
  std::printf("%-34s %10.3f %10.1f\n", "CPU attends the tails (+ round trip)",
              cpu_ms + rt_us / 1e3, cpu_gbps);
  std::printf("%-34s %10.3f %10.1f\n", "GPU reads them in place", gather_ms, gather);
  std::printf("%-34s %10.3f %10.1f\n", "GPU fetches them (copy engine)", fetch_ms, fetch);
  const double best_gpu = std::min(gather_ms, fetch_ms);
  std::printf("decision at this size: %s (CPU %.2fx the faster GPU path)\n",
              cpu_ms + rt_us / 1e3 < best_gpu ? "attend the tails on the CPU"
                                              : "move them to the GPU",
              (cpu_ms + rt_us / 1e3) / best_gpu);
  return 0;
}

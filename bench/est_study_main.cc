// twl_est_study: how the pruner's K estimate (its quantization scheme and its keep rule) decides
// the true softmax mass and the size of the kept sets (issues 12 and 15). CPU only.
//
// For synthetic layers (bench/lib/synthetic_attention.h: the accuracy harness's mixed heads,
// the offload benchmark's peaked heads, or the flat ones) every decode query is scored exactly
// (FP32 over FP16 K, as oracle_top_p.cc) and with each estimate; top-p over the estimated weights
// (sorted, exact: the pruner's bisection is left out so that only the estimate is measured)
// gives each query head's own set. Per scheme it reports the share of heads whose own set holds
// true mass >= p - 0.02, the min and median true mass, the own-set size over the oracle's, the
// KV head's union over the oracle union, the score error's RMS in logits, and the estimation
// bytes per token.
//
// Schemes (all 4-bit unless named):
//   tok4      per-token asymmetric scale/zero over head_dim (quantize.cc's per-token mode)
//   tok8      the same at 8 bits
//   ctr4      tok4 of k - c, c = per-channel mean of K over the first --centre_tokens tokens
//   pctr4     tok4 of k - c_page, c_page = the block's Quest mid-range (q . c_page added back)
//   pmean4    the same, c_page = the page's per-channel mean (stored: 2 d bytes per block)
//   prow4     the same, c_page = the page's first row (fixed when the page opens)
//   tok4g32   per-token scale/zero per group of 32 channels (4 per token at d = 128; the score
//             pass keeps one q fragment for every page and scales each group's partial dot)
//   tok4g16   the same over groups of 16 channels (one MMA k-step per group)
//   nrm4      tok4 of (k - c) / s, c and s = per-channel mean and std of K over the first
//             --centre_tokens tokens (q . c and q * s folded in once per step)
//   nrm4g32   nrm4 with groups of 32 channels
//   page4p2   page4 with each step rounded up to a power of two (so FP16(q_j step_j) is exact:
//             the GPU score pass would need no hi/lo split)
//   page4     per-channel over the page's rows, range = the Quest kmin/kmax of the block
//             (quantize.cc's per-page-channel mode: no per-token scale or zero)
//   pc8       page4 over ranges coded in 8 bits per end on the block's [min kmin, max kmax]
//             grid, rounded outward (bench/lib/channel_ranges.h: 2 d + 4 bytes per block)
//   pc8log    lo as pc8, the step as an 8-bit log code rounded up (2 d + 4 bytes)
//   pc8p2     lo as pc8, the step a power of two, a 4-bit exponent code (1.5 d + 4 bytes)
//   pc8w      lo as pc8, the width an 8-bit code on [0, widest channel] (2 d + 6 bytes)
//   fp8       kmin / kmax as FP8 E4M3 rounded outward (2 d bytes)
// Keep rules on top of a scheme:
//   (plain)   top-p over exp(estimate)
//   +defl     top-p over exp(estimate - sigma^2 / 2), sigma = the token's score-noise std
//   +ksig     tokens whose estimate + k sigma exceeds the plain threshold (k = 1, 2)
//   @p'       plain top-p at a raised p'
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "core/half.h"
#include "core/page_layout.h"
#include "core/quantize.h"
#include "lib/channel_ranges.h"
#include "lib/llama2_model.h"
#include "lib/model_methods.h"
#include "lib/synthetic_attention.h"
#include "lib/tool_flags.h"
#include "lib/head_truth.h"
#include "lib/top_p_set.h"

ABSL_FLAG(int32_t, ctx, 16384, "context tokens");
ABSL_FLAG(int32_t, seeds, 2, "seeds (1..seeds)");
ABSL_FLAG(int32_t, steps, 2, "decode steps per layer");
ABSL_FLAG(int32_t, layers, 2, "layers per seed");
ABSL_FLAG(int32_t, head_dim, 128, "head dimension");
ABSL_FLAG(int32_t, page_size, 16, "tokens per page");
ABSL_FLAG(float, p, 0.95f, "top-p mass");
ABSL_FLAG(std::string, workload, "mixed", "mixed (the accuracy harness), peaked or flat");
ABSL_FLAG(std::string, model, "", "a llama2.c model: measure its real K/Q instead (teacher-forced)");
ABSL_FLAG(std::string, text, "", "byte-level model: text file fed as bytes (else tokens sampled "
          "from dense attention at temperature 1)");
ABSL_FLAG(int32_t, tokens, 1024, "model mode: tokens run");
ABSL_FLAG(int32_t, every, 64, "model mode: measure every this many positions");
ABSL_FLAG(int32_t, min_ctx, 256, "model mode: measure from this context length on");
ABSL_FLAG(float, outlier_scale, 6.0f,
          "synthetic: magnitude of the outlier channels' mean key (6: the harness; larger: the "
          "massive fixed outlier channels of large models)");
ABSL_FLAG(std::string, schemes, "",
          "comma-separated scheme names to report (default: all); exact is always computed");
ABSL_FLAG(int32_t, centre_tokens, 1024,
          "ctr4: the centre is the per-channel mean of K over the first this many tokens");

namespace {

using twl::fp16_t;
using twl::HalfToFloat;
using twl::FloatToHalf;

struct Scheme {
  std::string name;
  // 0 tok4, 1 tok8, 2 page4, 3 exact, 4 ctr4, 5 pctr4, 6 pmean4, 7 prow4, 8 page4p2, 9 pc8,
  // 10 pc8log, 11 pc8p2, 12 pc8w, 13 fp8, 14 tok4 in groups, 15 nrm4 (in groups)
  int scheme = 0;
  int group = 0;    // schemes 14-15: channels per scale/zero group (0: all of head_dim)
  int rule = 0;     // 0 plain, 1 deflate, 2 k sigma
  float k = 0.0f;   // sigmas for rule 2
  float p_add = 0;  // raised p: p' = p + p_add
  double bytes = 0;       // per token: codes + per-token scale/zero (as the 2026-12-02 tables)
  double read_bytes = 0;  // per token: all the score pass reads, per-block range metadata included
  // accumulated
  std::vector<double> mass, size_ratio, union_ratio, rms;
};

// Estimated scores and noise std of one query row (already scaled) against every token of one
// KV head under scheme `sc`, for the first `len` tokens.
void Estimate(int sc, int group, const std::vector<float>& kf, int32_t len, int32_t d,
              int32_t ps, const float* q, std::vector<float>* est, std::vector<float>* sig) {
  est->resize(size_t(len));
  sig->resize(size_t(len));
  double q2 = 0;
  for (int32_t j = 0; j < d; ++j) q2 += double(q[j]) * q[j];
  if (sc == 14 || sc == 15) {
    // Per-token INT4 with one FP16 scale/zero per group of channels, of k itself (14) or of
    // the channel-normalised (k - c) / s (15, c and s from the first centre_tokens tokens, in
    // FP16; the estimate folds s into q and adds q . c back).
    const int32_t gs = group > 0 ? std::min(group, d) : d;
    std::vector<float> centre(static_cast<size_t>(d), 0.0f), scale(static_cast<size_t>(d), 1.0f);
    std::vector<float> kn(static_cast<size_t>(d));
    float qc = 0.0f;
    if (sc == 15) {
      const int32_t n0 = std::max(1, std::min(len, absl::GetFlag(FLAGS_centre_tokens)));
      for (int32_t j = 0; j < d; ++j) {
        double sum = 0, sum2 = 0;
        for (int32_t t = 0; t < n0; ++t) {
          const double x = kf[size_t(t) * d + j];
          sum += x, sum2 += x * x;
        }
        const double mean = sum / n0, var = std::max(0.0, sum2 / n0 - mean * mean);
        centre[size_t(j)] = HalfToFloat(FloatToHalf(float(mean)));
        const float sd = HalfToFloat(FloatToHalf(float(std::sqrt(var))));
        scale[size_t(j)] = sd > 0.0f ? sd : 1.0f;
        qc += q[j] * centre[size_t(j)];
      }
    }
    double s2 = 0;
    for (int32_t t = 0; t < len; ++t) {
      for (int32_t j = 0; j < d; ++j)
        kn[size_t(j)] = (kf[size_t(t) * d + j] - centre[size_t(j)]) / scale[size_t(j)];
      float a = 0;
      s2 = 0;
      for (int32_t g0 = 0; g0 < d; g0 += gs) {
        const int32_t g1 = std::min(d, g0 + gs);
        float lo = kn[size_t(g0)], hi = lo;
        for (int32_t j = g0 + 1; j < g1; ++j)
          lo = std::min(lo, kn[size_t(j)]), hi = std::max(hi, kn[size_t(j)]);
        const float st = HalfToFloat(FloatToHalf((hi - lo) / 15.0f));
        const float z = HalfToFloat(FloatToHalf(lo));
        for (int32_t j = g0; j < g1; ++j) {
          float c = st > 0 ? std::rint((kn[size_t(j)] - z) / st) : 0.0f;
          c = std::clamp(c, 0.0f, 15.0f);
          const float qs = q[j] * scale[size_t(j)];
          a += qs * (c * st + z);
          s2 += double(qs) * qs * double(st) * st;
        }
      }
      (*est)[size_t(t)] = a + qc;
      (*sig)[size_t(t)] = float(std::sqrt(s2 / 12.0));
    }
    return;
  }
  if (sc == 3) {
    for (int32_t t = 0; t < len; ++t) {
      float a = 0;
      for (int32_t j = 0; j < d; ++j) a += q[j] * kf[size_t(t) * d + j];
      (*est)[size_t(t)] = a;
      (*sig)[size_t(t)] = 0;
    }
    return;
  }
  if (sc == 0 || sc == 1 || sc == 4) {
    const int32_t max_code = sc == 1 ? 255 : 15;
    // ctr4: per-token INT4 of k - c, c = FP16 mean of K over the first centre_tokens tokens;
    // q . c is added back (top-p ignores it; the RMS compares absolute logits).
    std::vector<float> centre(static_cast<size_t>(d), 0.0f), kc(static_cast<size_t>(d));
    float qc = 0.0f;
    if (sc == 4) {
      const int32_t n0 = std::max(1, std::min(len, absl::GetFlag(FLAGS_centre_tokens)));
      for (int32_t j = 0; j < d; ++j) {
        float sum = 0.0f;
        for (int32_t t = 0; t < n0; ++t) sum += kf[size_t(t) * d + j];
        centre[size_t(j)] = HalfToFloat(FloatToHalf(sum / float(n0)));
        qc += q[j] * centre[size_t(j)];
      }
    }
    for (int32_t t = 0; t < len; ++t) {
      for (int32_t j = 0; j < d; ++j) kc[size_t(j)] = kf[size_t(t) * d + j] - centre[size_t(j)];
      const float* k = kc.data();
      float lo = k[0], hi = k[0];
      for (int32_t j = 1; j < d; ++j) lo = std::min(lo, k[j]), hi = std::max(hi, k[j]);
      const float s = HalfToFloat(FloatToHalf((hi - lo) / float(max_code)));
      const float z = HalfToFloat(FloatToHalf(lo));
      float a = 0;
      for (int32_t j = 0; j < d; ++j) {
        float c = s > 0 ? std::rint((k[j] - z) / s) : 0.0f;
        c = std::clamp(c, 0.0f, float(max_code));
        a += q[j] * (c * s + z);
      }
      (*est)[size_t(t)] = a + qc;
      (*sig)[size_t(t)] = float(double(s) * std::sqrt(q2 / 12.0));
    }
    return;
  }
  if (sc == 5 || sc == 6 || sc == 7) {
    // Per-page centres, per-token INT4 of k - c_page, q . c_page added back per page:
    //   pctr4  c_page = FP16 mid-range of the block's Quest kmin/kmax (stored anyway)
    //   pmean4 c_page = FP16 per-channel mean of the page's rows (d more values per block)
    //   prow4  c_page = the page's first row (fixed when the page opens: no re-quantization)
    std::vector<float> kc(static_cast<size_t>(d)), mid(static_cast<size_t>(d));
    for (int32_t p0 = 0; p0 < len; p0 += ps) {
      const int32_t rows = std::min(ps, len - p0);
      float qc = 0.0f;
      for (int32_t j = 0; j < d; ++j) {
        float l = kf[size_t(p0) * d + j], h = l;
        for (int32_t r = 1; r < rows; ++r) {
          l = std::min(l, kf[size_t(p0 + r) * d + j]);
          h = std::max(h, kf[size_t(p0 + r) * d + j]);
        }
        mid[size_t(j)] = HalfToFloat(FloatToHalf(0.5f * (HalfToFloat(FloatToHalf(l)) + HalfToFloat(FloatToHalf(h)))));
        if (sc == 6) {
          float sum = 0.0f;
          for (int32_t r = 0; r < rows; ++r) sum += kf[size_t(p0 + r) * d + j];
          mid[size_t(j)] = HalfToFloat(FloatToHalf(sum / float(rows)));
        } else if (sc == 7) {
          mid[size_t(j)] = kf[size_t(p0) * d + j];
        }
        qc += q[j] * mid[size_t(j)];
      }
      for (int32_t r = 0; r < rows; ++r) {
        for (int32_t j = 0; j < d; ++j) kc[size_t(j)] = kf[size_t(p0 + r) * d + j] - mid[size_t(j)];
        float lo = kc[0], hi = kc[0];
        for (int32_t j = 1; j < d; ++j) lo = std::min(lo, kc[size_t(j)]), hi = std::max(hi, kc[size_t(j)]);
        const float s = HalfToFloat(FloatToHalf((hi - lo) / 15.0f));
        const float z = HalfToFloat(FloatToHalf(lo));
        float a = 0;
        for (int32_t j = 0; j < d; ++j) {
          float c = s > 0 ? std::rint((kc[size_t(j)] - z) / s) : 0.0f;
          c = std::clamp(c, 0.0f, 15.0f);
          a += q[j] * (c * s + z);
        }
        (*est)[size_t(p0 + r)] = a + qc;
        (*sig)[size_t(p0 + r)] = 0;
      }
    }
    return;
  }
  // page4: per channel over the page's rows (the Quest bounds), or over coded ranges that
  // contain them (pc8*).
  const twl::bench::RangeCoding coding = sc == 9    ? twl::bench::RangeCoding::kPc8
                                         : sc == 10 ? twl::bench::RangeCoding::kPc8Log
                                         : sc == 11 ? twl::bench::RangeCoding::kPc8Pow2
                                         : sc == 12 ? twl::bench::RangeCoding::kPc8W
                                         : sc == 13 ? twl::bench::RangeCoding::kFp8
                                                    : twl::bench::RangeCoding::kFp16;
  std::vector<float> lo(static_cast<size_t>(d)), step(static_cast<size_t>(d));
  std::vector<float> kmin(static_cast<size_t>(d)), kmax(static_cast<size_t>(d));
  for (int32_t p0 = 0; p0 < len; p0 += ps) {
    const int32_t rows = std::min(ps, len - p0);
    for (int32_t j = 0; j < d; ++j) {
      float l = kf[size_t(p0) * d + j], h = l;
      for (int32_t r = 1; r < rows; ++r) {
        l = std::min(l, kf[size_t(p0 + r) * d + j]);
        h = std::max(h, kf[size_t(p0 + r) * d + j]);
      }
      kmin[size_t(j)] = l;
      kmax[size_t(j)] = h;
    }
    twl::bench::ChannelRanges(coding, kmin.data(), kmax.data(), d, lo.data(), step.data());
    double s2 = 0;
    for (int32_t j = 0; j < d; ++j) {
      // page4p2: the step rounded up to a power of two (q_j * step_j exact in FP16).
      if (sc == 8 && step[size_t(j)] > 0.0f) {
        step[size_t(j)] = std::exp2(std::ceil(std::log2(step[size_t(j)])));
      }
      s2 += double(q[j]) * q[j] * double(step[size_t(j)]) * step[size_t(j)];
    }
    const float sg = float(std::sqrt(s2 / 12.0));
    for (int32_t r = 0; r < rows; ++r) {
      const float* k = &kf[size_t(p0 + r) * d];
      float a = 0;
      for (int32_t j = 0; j < d; ++j) {
        float c = step[size_t(j)] > 0 ? std::rint((k[j] - lo[size_t(j)]) / step[size_t(j)]) : 0.0f;
        c = std::clamp(c, 0.0f, 15.0f);
        a += q[j] * (c * step[size_t(j)] + lo[size_t(j)]);
      }
      (*est)[size_t(p0 + r)] = a;
      (*sig)[size_t(p0 + r)] = sg;
    }
  }
}

// One KV head's group of (scaled) query rows over the first len tokens of kf [len][d].
void EvalGroup(const std::vector<float>& kf, int32_t len, int32_t d, int32_t ps, float p,
       const std::vector<std::vector<float>>& qs, std::vector<Scheme>* schemes_p,
       std::vector<double>* oracle_sizes) {
  std::vector<Scheme>& schemes = *schemes_p;
  const int32_t G = int32_t(qs.size());
  std::vector<uint8_t> oracle_union(static_cast<size_t>(len), 0);
  std::vector<std::vector<uint8_t>> unions(schemes.size(), std::vector<uint8_t>(size_t(len), 0));
  std::vector<float> exact, sig0, est, sig;
  for (int32_t g = 0; g < G; ++g) {
    const std::vector<float>& q = qs[size_t(g)];
    Estimate(3, 0, kf, len, d, ps, q.data(), &exact, &sig0);
    float lt;
    const std::vector<uint8_t> ok = twl::bench::TopPSet(exact, p, &lt);
    const twl::bench::HeadTruth truth = twl::bench::HeadTruth::Of(exact, nullptr, d);
    double osize = 0;
    for (int32_t t = 0; t < len; ++t) {
      osize += ok[size_t(t)];
      oracle_union[size_t(t)] |= ok[size_t(t)];
    }
    oracle_sizes->push_back(osize);
    int last_sc = -1;
    for (size_t si = 0; si < schemes.size(); ++si) {
      Scheme& S = schemes[si];
      const int key = S.scheme * 4096 + S.group;  // consecutive rows of one estimate reuse it
      if (key != last_sc) Estimate(S.scheme, S.group, kf, len, d, ps, q.data(), &est, &sig);
      last_sc = key;
      std::vector<float> x = est;
      if (S.rule == 1)
        for (int32_t t = 0; t < len; ++t) x[size_t(t)] -= 0.5f * sig[size_t(t)] * sig[size_t(t)];
      std::vector<uint8_t> keep = twl::bench::TopPSet(x, std::min(1.0f, p + S.p_add), &lt);
      if (S.rule == 2)
        for (int32_t t = 0; t < len; ++t) keep[size_t(t)] |= uint8_t(est[size_t(t)] + S.k * sig[size_t(t)] >= lt);
      double n = 0, e2 = 0;
      for (int32_t t = 0; t < len; ++t) {
        n += keep[size_t(t)];
        unions[si][size_t(t)] |= keep[size_t(t)];
        const double e = double(est[size_t(t)]) - exact[size_t(t)];
        e2 += e * e;
      }
      S.mass.push_back(truth.Mass(keep));
      S.size_ratio.push_back(n / std::max(1.0, osize));
      S.rms.push_back(std::sqrt(e2 / len));
    }
  }
  double ou = 0;
  for (uint8_t b : oracle_union) ou += b;
  for (size_t si = 0; si < schemes.size(); ++si) {
    double u = 0;
    for (uint8_t b : unions[si]) u += b;
    schemes[si].union_ratio.push_back(u / std::max(1.0, ou));
  }
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v[v.size() / 2];
}

void PrintTable(const std::vector<Scheme>& schemes, const std::vector<double>& oracle_sizes,
                const std::string& what, float p) {
  std::printf("%s page %d p %.3f: %zu head samples, oracle own set median %.0f mean %.0f\n",
              what.c_str(), absl::GetFlag(FLAGS_page_size), double(p), oracle_sizes.size(), Median(oracle_sizes),
              std::accumulate(oracle_sizes.begin(), oracle_sizes.end(), 0.0) / double(oracle_sizes.size()));
  std::printf("%-12s %8s %7s %7s %9s %9s %9s %8s %6s %8s\n", "scheme", "heads_ok", "min",
              "median", "own/orc", "own/orc50", "union/orc", "rms_lgt", "B/tok", "rd_B/tok");
  for (const Scheme& S : schemes) {
    double okc = 0;
    for (double m : S.mass) okc += m >= double(p) - 0.02 - 1e-9;
    double sr = 0, ur = 0;
    for (double r : S.size_ratio) sr += r;
    for (double r : S.union_ratio) ur += r;
    std::printf("%-12s %7.2f%% %7.4f %7.4f %9.3f %9.3f %9.3f %8.4f %6.0f %8.2f\n", S.name.c_str(),
                100.0 * okc / double(S.mass.size()), *std::min_element(S.mass.begin(), S.mass.end()),
                Median(S.mass), sr / double(S.size_ratio.size()), Median(S.size_ratio),
                ur / double(S.union_ratio.size()), Median(S.rms), S.bytes, S.read_bytes);
  }
}

// Teacher-forced (or sampled) run of a llama2.c model with dense FP32 attention; at every
// --every-th position from --min_ctx on, each KV head's group is measured on the FP16-rounded
// K cache (what the runtime stores).
bool RunModel(const std::string& path, int32_t ps, float p, std::vector<Scheme>* schemes,
              std::vector<double>* oracle_sizes) {
  absl::StatusOr<twl::bench::Llama2Model> model = twl::bench::Llama2Model::Load(path);
  if (!model.ok()) {
    std::fprintf(stderr, "twl_est_study: %s\n", std::string(model.status().message()).c_str());
    return false;
  }
  const twl::bench::LlamaConfig& c = model->config();
  const int32_t n = std::min(absl::GetFlag(FLAGS_tokens), c.seq_len);
  const int32_t d = c.head_dim(), H = c.n_kv_heads, G = c.n_heads / c.n_kv_heads;
  std::vector<int32_t> text;
  if (const std::string tf = absl::GetFlag(FLAGS_text); !tf.empty()) {
    absl::StatusOr<std::vector<int32_t>> read = twl::bench::ReadByteTokens(tf, n, c);
    if (!read.ok()) {
      std::fprintf(stderr, "twl_est_study: --text: %s\n",
                   std::string(read.status().message()).c_str());
      return false;
    }
    text = std::move(*read);
  }
  const int32_t every = std::max(1, absl::GetFlag(FLAGS_every));
  const int32_t min_ctx = absl::GetFlag(FLAGS_min_ctx);
  std::vector<std::vector<float>> kc(size_t(c.n_layers)), vc(size_t(c.n_layers));
  const int32_t kv = c.kv_dim();
  auto attention = [&](int32_t layer, int32_t pos, const float* q, const float* k, const float* v,
                       float* out) -> absl::Status {
    std::vector<float>& K = kc[size_t(layer)];
    std::vector<float>& V = vc[size_t(layer)];
    K.insert(K.end(), k, k + kv);
    V.insert(V.end(), v, v + kv);
    const int32_t len = pos + 1;
    const float sc = 1.0f / std::sqrt(float(d));
    std::vector<float> w(static_cast<size_t>(len));
    for (int32_t qh = 0; qh < c.n_heads; ++qh) {
      const int32_t h = qh / G;
      float mx = -std::numeric_limits<float>::infinity();
      for (int32_t t = 0; t < len; ++t) {
        float a = 0;
        for (int32_t j = 0; j < d; ++j) a += q[qh * d + j] * K[size_t(t) * kv + size_t(h) * d + j];
        w[size_t(t)] = a * sc;
        mx = std::max(mx, w[size_t(t)]);
      }
      double tot = 0;
      for (float& x : w) tot += (x = std::exp(x - mx));
      for (int32_t j = 0; j < d; ++j) {
        double o = 0;
        for (int32_t t = 0; t < len; ++t) o += double(w[size_t(t)]) * V[size_t(t) * kv + size_t(h) * d + j];
        out[qh * d + j] = float(o / tot);
      }
    }
    if (len < min_ctx || len % every != 0) return absl::OkStatus();
    for (int32_t h = 0; h < H; ++h) {
      std::vector<float> kf(static_cast<size_t>(len) * size_t(d));
      for (int32_t t = 0; t < len; ++t)
        for (int32_t j = 0; j < d; ++j)
          kf[size_t(t) * d + j] = HalfToFloat(FloatToHalf(K[size_t(t) * kv + size_t(h) * d + j]));
      std::vector<std::vector<float>> qs;
      for (int32_t g = 0; g < G; ++g) {
        std::vector<float> qr(static_cast<size_t>(d));
        for (int32_t j = 0; j < d; ++j)
          qr[size_t(j)] = HalfToFloat(FloatToHalf(q[(h * G + g) * d + j])) * sc;
        qs.push_back(std::move(qr));
      }
      EvalGroup(kf, len, d, ps, p, qs, schemes, oracle_sizes);
    }
    return absl::OkStatus();
  };
  std::vector<float> logits;
  std::mt19937_64 rng(1);
  int32_t token = text.empty() ? 1 : text[0];  // BOS for the sampled mode
  for (int32_t pos = 0; pos < n; ++pos) {
    if (absl::Status st = model->Forward(token, pos, attention, &logits); !st.ok()) {
      std::fprintf(stderr, "twl_est_study: %s\n", std::string(st.message()).c_str());
      return false;
    }
    if (!text.empty()) {
      if (pos + 1 >= int32_t(text.size())) break;
      token = text[size_t(pos + 1)];
    } else {
      const std::vector<double> pr = twl::bench::Softmax(logits);
      token = int32_t(std::discrete_distribution<int32_t>(pr.begin(), pr.end())(rng));
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  twl::tools::ParseToolFlags(argc, argv, __FILE__,
                             "twl_est_study: INT4 estimate schemes and keep rules vs true mass");
  const int32_t ctx = absl::GetFlag(FLAGS_ctx), d = absl::GetFlag(FLAGS_head_dim);
  const int32_t ps = absl::GetFlag(FLAGS_page_size);
  const float p = absl::GetFlag(FLAGS_p);
  const std::string wl = absl::GetFlag(FLAGS_workload);
  twl::tools::RequireFlag(wl == "mixed" || wl == "peaked" || wl == "flat", "workload",
                          "mixed, peaked or flat");
  twl::tools::RequireFlag(ctx >= 256 && ctx <= (1 << 20), "ctx", "in [256, 2^20]");
  twl::tools::RequireFlag(ps >= 1 && ps <= 4096, "page_size", "in [1, 4096]");
  twl::tools::RequireFlag(d >= 2 && d <= 1024 && d % 2 == 0, "head_dim", "even, in [2, 1024]");
  twl::tools::RequireFlag(p > 0.0f && p < 1.0f, "p", "in (0, 1)");
  twl::tools::RequireFlag(absl::GetFlag(FLAGS_seeds) >= 1 && absl::GetFlag(FLAGS_seeds) <= 1000,
                          "seeds", "in [1, 1000]");
  twl::tools::RequireFlag(absl::GetFlag(FLAGS_layers) >= 1 && absl::GetFlag(FLAGS_layers) <= 64,
                          "layers", "in [1, 64]");
  twl::tools::RequireFlag(absl::GetFlag(FLAGS_steps) >= 1 && absl::GetFlag(FLAGS_steps) <= 64,
                          "steps", "in [1, 64]");
  twl::tools::RequireFlag(absl::GetFlag(FLAGS_tokens) >= 2, "tokens", ">= 2");
  std::vector<Scheme> schemes;
  const double code = d / 2.0;
  const std::string only = absl::GetFlag(FLAGS_schemes);
  // bytes: per token as the 2026-12-02 tables (codes + per-token scale/zero); read: all the score
  // pass reads per token, the per-block range metadata spread over the page's tokens.
  auto add = [&](std::string n, int sc, int rule, float k, float pa, double bytes, double read) {
    if (!only.empty() && sc != 3 && ("," + only + ",").find("," + n + ",") == std::string::npos) return;
    Scheme s;
    s.name = std::move(n);
    s.scheme = sc, s.rule = rule, s.k = k, s.p_add = pa, s.bytes = bytes, s.read_bytes = read;
    schemes.push_back(std::move(s));
  };
  using twl::bench::RangeCoding;
  using twl::bench::RangeMetadataBytes;
  const double per_block = 1.0 / ps;  // per-block bytes spread over a full page's tokens
  add("exact", 3, 0, 0, 0, 2.0 * d, 2.0 * d);
  add("tok8", 1, 0, 0, 0, d + 4.0, d + 4.0);
  add("tok4", 0, 0, 0, 0, code + 4, code + 4);
  add("tok4+defl", 0, 1, 0, 0, code + 4, code + 4);
  add("tok4+1sig", 0, 2, 1, 0, code + 4, code + 4);
  add("tok4+2sig", 0, 2, 2, 0, code + 4, code + 4);
  add("tok4@p+.02", 0, 0, 0, 0.02f, code + 4, code + 4);
  add("ctr4", 4, 0, 0, 0, code + 4, code + 4);
  auto add_grouped = [&](std::string n, int sc, int group) {
    const double meta = 4.0 * std::ceil(double(d) / std::min(group, d));  // FP16 scale + zero
    const size_t before = schemes.size();
    add(std::move(n), sc, 0, 0, 0, code + meta, code + meta);
    if (schemes.size() > before) schemes.back().group = group;
  };
  add_grouped("tok4g32", 14, 32);
  add_grouped("tok4g16", 14, 16);
  add_grouped("nrm4", 15, d);
  add_grouped("nrm4g32", 15, 32);
  add("pctr4", 5, 0, 0, 0, code + 4, code + 4 + 4.0 * d * per_block);
  add("pmean4", 6, 0, 0, 0, code + 4 + 2.0 * d / ps, code + 4 + 2.0 * d * per_block);
  add("prow4", 7, 0, 0, 0, code + 4, code + 4 + 2.0 * d * per_block);
  const double fp16_read = code + RangeMetadataBytes(RangeCoding::kFp16, d) * per_block;
  add("page4", 2, 0, 0, 0, code, fp16_read);
  add("page4p2", 8, 0, 0, 0, code, fp16_read);
  add("page4+defl", 2, 1, 0, 0, code, fp16_read);
  add("page4+1sig", 2, 2, 1, 0, code, fp16_read);
  add("page4@p+.01", 2, 0, 0, 0.01f, code, fp16_read);
  add("pc8", 9, 0, 0, 0, code, code + RangeMetadataBytes(RangeCoding::kPc8, d) * per_block);
  add("pc8log", 10, 0, 0, 0, code, code + RangeMetadataBytes(RangeCoding::kPc8Log, d) * per_block);
  add("pc8p2", 11, 0, 0, 0, code, code + RangeMetadataBytes(RangeCoding::kPc8Pow2, d) * per_block);
  add("pc8w", 12, 0, 0, 0, code, code + RangeMetadataBytes(RangeCoding::kPc8W, d) * per_block);
  add("fp8", 13, 0, 0, 0, code, code + RangeMetadataBytes(RangeCoding::kFp8, d) * per_block);
  for (absl::string_view want : absl::StrSplit(only, ',', absl::SkipEmpty())) {
    const bool known = want == "exact" || std::any_of(schemes.begin(), schemes.end(),
                                                      [&](const Scheme& s) { return s.name == want; });
    twl::tools::RequireFlag(known, "schemes", "names from the list at the top of est_study_main.cc");
  }
  std::vector<double> oracle_sizes;
  const std::string model_path = absl::GetFlag(FLAGS_model);
  if (!model_path.empty()) {
    if (!RunModel(model_path, ps, p, &schemes, &oracle_sizes)) return 1;
    PrintTable(schemes, oracle_sizes, "model " + model_path, p);
    return 0;
  }
  for (int32_t seed = 1; seed <= absl::GetFlag(FLAGS_seeds); ++seed) {
    for (int32_t layer = 0; layer < absl::GetFlag(FLAGS_layers); ++layer) {
      twl::bench::SyntheticConfig c;
      c.num_tokens = ctx;
      c.head_dim = d;
      c.num_steps = absl::GetFlag(FLAGS_steps);
      c.seed = uint64_t(seed);
      c.outlier_scale = absl::GetFlag(FLAGS_outlier_scale);
      twl::bench::ApplyWorkloadPreset(wl, &c);  // validated above
      auto gen = twl::bench::GenerateLayer(c, layer);
      if (!gen.ok()) {
        std::fprintf(stderr, "twl_est_study: %s\n", std::string(gen.status().message()).c_str());
        return 1;
      }
      const int32_t H = c.num_kv_heads, G = c.group_size;
      for (int32_t h = 0; h < H; ++h) {
        std::vector<float> kf(static_cast<size_t>(ctx) * size_t(d));
        for (int32_t t = 0; t < ctx; ++t)
          for (int32_t j = 0; j < d; ++j)
            kf[size_t(t) * d + j] = HalfToFloat(gen->k[(size_t(t) * H + h) * d + j]);
        for (int32_t st = 0; st < c.num_steps; ++st) {
          const int32_t len = gen->StepLength(st);
          std::vector<std::vector<float>> qs;
          for (int32_t g = 0; g < G; ++g) {
            const int32_t qh = h * G + g;
            std::vector<float> q(static_cast<size_t>(d));
            const float sc = 1.0f / std::sqrt(float(d));
            for (int32_t j = 0; j < d; ++j) q[size_t(j)] = HalfToFloat(gen->Q(st)[size_t(qh) * d + j]) * sc;
            qs.push_back(std::move(q));
          }
          EvalGroup(kf, len, d, ps, p, qs, &schemes, &oracle_sizes);
        }
      }
    }
  }
  PrintTable(schemes, oracle_sizes,
             "workload " + wl + " ctx " + std::to_string(ctx) + " head_dim " + std::to_string(d),
             p);
  return 0;
}

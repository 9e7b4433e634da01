// Synthetic attention generator (see synthetic_attention.h for the model of each mechanism).
// Work is split per KV head (independent random streams), in parallel with oneTBB.
#include "lib/synthetic_attention.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "absl/strings/str_format.h"
#include "tbb/parallel_for.h"

namespace twl::bench {
namespace {

using Rng = std::mt19937_64;

uint64_t Mix(uint64_t a, uint64_t b) {
  // splitmix64 of a combination: independent streams per (seed, layer, head, purpose).
  uint64_t z = a * 0x9E3779B97F4A7C15ull + b + 0x632BE59BD9B4E019ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

float Dot(const float* a, const float* b, int n) {
  float s = 0;
  for (int i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

void Normalize(std::vector<float>& x) {
  const float n = std::sqrt(Dot(x.data(), x.data(), int(x.size())));
  if (n > 0)
    for (float& v : x) v /= n;
}

// Random unit vector on the channels where `mask` is true.
std::vector<float> RandomUnit(Rng& rng, int d, const std::vector<bool>& mask) {
  std::normal_distribution<float> n01;
  std::vector<float> x(d, 0.0f);
  for (int c = 0; c < d; ++c)
    if (mask[c]) x[c] = n01(rng);
  Normalize(x);
  return x;
}

// Orthonormal vectors (Gram-Schmidt) on the masked channels.
std::vector<std::vector<float>> RandomOrthonormal(Rng& rng, int d, int count,
                                                  const std::vector<bool>& mask) {
  std::vector<std::vector<float>> out;
  while (int(out.size()) < count) {
    std::vector<float> x = RandomUnit(rng, d, mask);
    for (const auto& b : out) {
      const float p = Dot(x.data(), b.data(), d);
      for (int c = 0; c < d; ++c) x[c] -= p * b[c];
    }
    const float n = std::sqrt(Dot(x.data(), x.data(), d));
    if (n < 1e-3f) continue;  // nearly dependent draw: retry
    for (float& v : x) v /= n;
    out.push_back(std::move(x));
  }
  return out;
}

float LogSumExp(const std::vector<float>& x) {
  float m = -INFINITY;
  for (float v : x) m = std::max(m, v);
  double s = 0;
  for (float v : x) s += std::exp(double(v - m));
  return m + float(std::log(s));
}

}  // namespace

void ApplyRope(float* x, int32_t head_dim, int32_t pos, float theta) {
  for (int32_t j = 0; j < head_dim / 2; ++j) {
    const double freq = std::pow(double(theta), -2.0 * j / head_dim);
    const double a = pos * freq;
    const float c = float(std::cos(a)), s = float(std::sin(a));
    const float x0 = x[2 * j], x1 = x[2 * j + 1];
    x[2 * j] = x0 * c - x1 * s;
    x[2 * j + 1] = x0 * s + x1 * c;
  }
}

absl::Status ValidateSyntheticConfig(const SyntheticConfig& c) {
  if (c.head_dim < 8 || c.head_dim % 4 != 0)
    return absl::InvalidArgumentError(
        absl::StrFormat("head_dim %d: need a multiple of 4, >= 8", c.head_dim));
  if (c.num_kv_heads <= 0 || c.group_size <= 0)
    return absl::InvalidArgumentError("num_kv_heads and group_size must be positive");
  if (c.num_steps <= 0 || c.num_tokens < c.num_steps + c.sink_tokens + 16)
    return absl::InvalidArgumentError(
        absl::StrFormat("num_tokens %d too small for %d steps and %d sinks", c.num_tokens,
                        c.num_steps, c.sink_tokens));
  const int lf_channels = c.head_dim / 2 - std::min(c.num_outlier_channels, c.head_dim / 2);
  if (c.subspace_rank <= 0 || c.subspace_rank + 1 > lf_channels)
    return absl::InvalidArgumentError(
        absl::StrFormat("subspace_rank %d must be in [1, %d)", c.subspace_rank, lf_channels));
  if (c.num_outlier_channels < 0 || c.num_outlier_channels > c.head_dim / 4)
    return absl::InvalidArgumentError("num_outlier_channels must be in [0, head_dim/4]");
  if (!(c.topic_correlation >= 0 && c.topic_correlation < 1) ||
      !(c.query_drift >= 0 && c.query_drift <= 1))
    return absl::InvalidArgumentError("topic_correlation in [0,1), query_drift in [0,1]");
  if (!(c.topic_std_min > 0 && c.topic_std_min <= c.topic_std_max))
    return absl::InvalidArgumentError("need 0 < topic_std_min <= topic_std_max");
  if (c.spike_spans < 0 || c.spike_span <= 0 || c.sink_tokens < 0)
    return absl::InvalidArgumentError("spike_spans >= 0, spike_span > 0, sink_tokens >= 0");
  if (!(c.rope_theta > 1)) return absl::InvalidArgumentError("rope_theta must be > 1");
  return absl::OkStatus();
}

bool ApplyWorkloadPreset(const std::string& name, SyntheticConfig* c) {
  if (name == "peaked") {
    c->topic_std_min = 4.0f, c->topic_std_max = 6.0f;
    c->spike_offset_min = 3.0f, c->spike_offset_max = 5.0f;
    c->local_offset_min = -1.5f, c->local_offset_max = 1.0f;
    c->sink_offset_min = 0.5f, c->sink_offset_max = 2.5f;
  } else if (name == "flat") {
    c->topic_std_min = 2.0f, c->topic_std_max = 4.0f;
    c->spike_offset_min = -3.0f, c->spike_offset_max = 2.0f;
    c->local_offset_min = -4.0f, c->local_offset_max = 0.0f;
    c->sink_offset_min = -3.0f, c->sink_offset_max = 2.0f;
  } else if (name != "mixed") {
    return false;
  }
  return true;
}

absl::StatusOr<SyntheticLayer> GenerateLayer(const SyntheticConfig& cfg, int32_t layer,
                                             const std::optional<NeedleSpec>& needle) {
  if (absl::Status s = ValidateSyntheticConfig(cfg); !s.ok()) return s;
  const int d = cfg.head_dim, n_tok = cfg.num_tokens, hkv = cfg.num_kv_heads;
  const int group = cfg.group_size, hq = hkv * group, steps = cfg.num_steps;
  const float sqrt_d = std::sqrt(float(d));
  const float ln_ctx = std::log(float(n_tok));

  SyntheticLayer out;
  out.config = cfg;
  out.k.resize(size_t(n_tok) * hkv * d);
  out.v.resize(size_t(n_tok) * hkv * d);
  out.q.resize(size_t(steps) * hq * d);
  out.heads.resize(hq);
  const int first_step_len = out.StepLength(0);
  if (needle) {
    if (needle->length <= 0 || needle->length > first_step_len / 4 ||
        !(needle->depth >= 0 && needle->depth <= 1) || needle->num_distractors < 0 ||
        needle->num_distractors + needle->length > first_step_len / 2)
      return absl::InvalidArgumentError("needle: bad depth, length or distractor count");
    const int span = first_step_len - 1 - cfg.sink_tokens - needle->length;
    out.needle_pos = cfg.sink_tokens + int(std::lround(needle->depth * std::max(0, span)));
    out.needle_len = needle->length;
    out.needle_value_scale = needle->value_scale;
    out.needle_dir.assign(size_t(hkv) * d, 0.0f);
  }

  tbb::parallel_for(0, hkv, [&](int g) {
    Rng rng(Mix(Mix(cfg.seed, uint64_t(layer)), uint64_t(g)));
    std::normal_distribution<float> n01;
    std::uniform_real_distribution<float> u01(0.0f, 1.0f);

    // Channel classes: high-frequency half [0, d/2), low-frequency half [d/2, d).
    std::vector<int> lf(d / 2);
    std::iota(lf.begin(), lf.end(), d / 2);
    std::shuffle(lf.begin(), lf.end(), rng);
    std::vector<bool> outlier(d, false), hf_mask(d, false), lf_clean(d, false), clean(d, true);
    for (int i = 0; i < cfg.num_outlier_channels; ++i) outlier[lf[i]] = true;
    for (int c = 0; c < d; ++c) {
      hf_mask[c] = c < d / 2;
      lf_clean[c] = c >= d / 2 && !outlier[c];
      clean[c] = !outlier[c];
    }

    // Mean key with outlier channels; semantic basis B and sink direction u.
    // mu lives on the high-frequency half (plus the outliers): a mean on the semantic
    // channels would, once rotated, add a large slowly varying positional bias to every
    // query's topic component and drown the semantic match.
    std::vector<float> mu(d, 0.0f);
    for (int c = 0; c < d / 2; ++c) mu[c] = cfg.mean_scale * n01(rng);
    for (int c = 0; c < d; ++c)
      if (outlier[c]) mu[c] = (u01(rng) < 0.5f ? -1.0f : 1.0f) * cfg.outlier_scale;
    const auto basis = RandomOrthonormal(rng, d, cfg.subspace_rank + 1, lf_clean);
    const std::vector<float>& u_sink = basis.back();
    float mu_hf_norm = 0;
    for (int c = 0; c < d / 2; ++c) mu_hf_norm += mu[c] * mu[c];
    mu_hf_norm = std::sqrt(std::max(mu_hf_norm, 1e-12f));

    // Keys (float, post-RoPE) for this KV head: [n_tok][d].
    std::vector<float> keys(size_t(n_tok) * d);
    const float rho = cfg.topic_correlation, innov = std::sqrt(1 - rho * rho);
    std::vector<float> z(cfg.subspace_rank);
    for (float& x : z) x = n01(rng);
    for (int n = 0; n < n_tok; ++n) {
      if (n > 0)
        for (float& x : z) x = rho * x + innov * n01(rng);
      float* k = &keys[size_t(n) * d];
      for (int c = 0; c < d; ++c) k[c] = mu[c] + cfg.noise_scale * n01(rng);
      for (int r = 0; r < cfg.subspace_rank; ++r)
        for (int c = 0; c < d; ++c) k[c] += cfg.key_scale * z[r] * basis[r][c];
      ApplyRope(k, d, n, cfg.rope_theta);
      if (n < cfg.sink_tokens)
        for (int c = 0; c < d; ++c) k[c] += cfg.sink_scale * sqrt_d * u_sink[c];
    }

    // Query heads of the group: profiles, spike directions and spans.
    std::vector<std::vector<float>> spike_dir(group);
    for (int r = 0; r < group; ++r) {
      HeadProfile& hp = out.heads[g * group + r];
      const float lo = std::log(cfg.topic_std_min), hi = std::log(cfg.topic_std_max);
      hp.topic_std = std::exp(lo + (hi - lo) * u01(rng));
      hp.local_logit = std::max(0.0f, ln_ctx + cfg.local_offset_min +
                                          (cfg.local_offset_max - cfg.local_offset_min) * u01(rng));
      hp.sink_logit =
          cfg.sink_tokens == 0
              ? 0.0f
              : std::max(0.0f, ln_ctx + cfg.sink_offset_min +
                                   (cfg.sink_offset_max - cfg.sink_offset_min) * u01(rng));
      const int spike_tokens = cfg.spike_spans * cfg.spike_span;
      hp.spike_logit =
          spike_tokens == 0
              ? 0.0f
              : std::max(0.0f, ln_ctx - std::log(float(spike_tokens)) + cfg.spike_offset_min +
                                   (cfg.spike_offset_max - cfg.spike_offset_min) * u01(rng));
      spike_dir[r] = RandomUnit(rng, d, clean);
      std::uniform_int_distribution<int> start(
          cfg.sink_tokens, std::max(cfg.sink_tokens, first_step_len - cfg.spike_span - 1));
      for (int s = 0; s < cfg.spike_spans; ++s) {
        const int p0 = start(rng);
        for (int i = p0; i < std::min(p0 + cfg.spike_span, first_step_len); ++i)
          for (int c = 0; c < d; ++c)
            keys[size_t(i) * d + c] += cfg.spike_key_scale * sqrt_d * spike_dir[r][c];
      }
    }

    // Queries (float) [steps][group][d].
    std::vector<float> qs(size_t(steps) * group * d);
    std::vector<float> w_group(cfg.subspace_rank);
    for (float& x : w_group) x = n01(rng);
    Normalize(w_group);
    const float share = std::clamp(cfg.group_similarity, 0.0f, 1.0f);
    for (int r = 0; r < group; ++r) {
      const HeadProfile& hp = out.heads[g * group + r];
      const float a_top = hp.topic_std * sqrt_d / cfg.key_scale;
      const float a_loc = hp.local_logit * sqrt_d / mu_hf_norm;
      const float a_sink = hp.sink_logit / cfg.sink_scale;
      const float a_spike = hp.spike_logit / cfg.spike_key_scale;
      std::vector<float> w(cfg.subspace_rank);
      for (float& x : w) x = n01(rng);
      Normalize(w);
      for (int i = 0; i < cfg.subspace_rank; ++i)
        w[i] = std::sqrt(share) * w_group[i] + std::sqrt(1 - share) * w[i];
      Normalize(w);
      const float wr = 1.0f - cfg.query_drift, wi = std::sqrt(std::max(0.0f, 1 - wr * wr));
      for (int t = 0; t < steps; ++t) {
        if (t > 0) {
          std::vector<float> xi(cfg.subspace_rank);
          for (float& x : xi) x = n01(rng);
          Normalize(xi);
          for (int i = 0; i < cfg.subspace_rank; ++i) w[i] = wr * w[i] + wi * xi[i];
          Normalize(w);
        }
        float* q = &qs[(size_t(t) * group + r) * d];
        for (int c = 0; c < d; ++c) q[c] = c < d / 2 ? a_loc * mu[c] / mu_hf_norm : 0.0f;
        for (int i = 0; i < cfg.subspace_rank; ++i)
          for (int c = 0; c < d; ++c) q[c] += a_top * w[i] * basis[i][c];
        ApplyRope(q, d, out.StepLength(t) - 1, cfg.rope_theta);
        for (int c = 0; c < d; ++c)
          q[c] += a_sink * u_sink[c] + a_spike * spike_dir[r][c] + cfg.query_noise * n01(rng);
      }
    }

    // Values [n_tok][d].
    std::vector<float> vals(size_t(n_tok) * d);
    {
      std::vector<bool> all(d, true);
      const auto vbasis = RandomOrthonormal(rng, d, cfg.subspace_rank, all);
      std::vector<float> vmean(d);
      for (float& x : vmean) x = cfg.value_mean_scale * n01(rng);
      std::vector<float> zv(cfg.subspace_rank);
      for (float& x : zv) x = n01(rng);
      for (int n = 0; n < n_tok; ++n) {
        if (n > 0)
          for (float& x : zv) x = rho * x + innov * n01(rng);
        float* v = &vals[size_t(n) * d];
        for (int c = 0; c < d; ++c) v[c] = vmean[c] + cfg.value_noise * n01(rng);
        for (int r = 0; r < cfg.subspace_rank; ++r)
          for (int c = 0; c < d; ++c) v[c] += cfg.value_scale * zv[r] * vbasis[r][c];
      }
    }

    // Needle: a key direction shared by the group's queries, calibrated on the last step.
    // Needle and distractor keys are reset to the content-free key RoPE(mu) + noise before
    // the needle direction is added, so that their logits differ from head to head only by
    // the query's needle component (a trained model writes such keys for the passkey).
    if (needle) {
      auto plain_key = [&](int n) {
        float* k = &keys[size_t(n) * d];
        for (int c = 0; c < d; ++c) k[c] = mu[c] + cfg.noise_scale * n01(rng);
        ApplyRope(k, d, n, cfg.rope_theta);
      };
      const std::vector<float> ndir = RandomUnit(rng, d, clean);
      const float base = ln_ctx + needle->margin;
      const float a_n = std::sqrt(std::max(1.0f, base) * sqrt_d);
      const int last = steps - 1, len_last = out.StepLength(last);
      std::vector<bool> used(n_tok, false);
      std::vector<int> distractors;
      std::uniform_int_distribution<int> pos(cfg.sink_tokens, first_step_len - 2);
      for (int i = out.needle_pos; i < out.needle_pos + needle->length; ++i) {
        used[i] = true;
        plain_key(i);
      }
      while (int(distractors.size()) < needle->num_distractors) {
        const int p = pos(rng);
        if (used[p]) continue;
        used[p] = true;
        distractors.push_back(p);
        plain_key(p);
      }
      for (int t = 0; t < steps; ++t)
        for (int r = 0; r < group; ++r)
          for (int c = 0; c < d; ++c) qs[(size_t(t) * group + r) * d + c] += a_n * ndir[c];
      // Needle key strength so that every token of the needle, for every head of the
      // group, reaches lse(background) + margin - ln(length). A head's logit gain per unit
      // of needle key is q.ndir / sqrt(d): a_n plus the projection of its other components.
      std::vector<float> gain(group);
      std::vector<std::vector<float>> logits(group, std::vector<float>(len_last));
      float need_c = 0;
      for (int r = 0; r < group; ++r) {
        const float* q = &qs[(size_t(last) * group + r) * d];
        gain[r] = std::max(0.25f * a_n, Dot(q, ndir.data(), d)) / sqrt_d;
        for (int n = 0; n < len_last; ++n) logits[r][n] = Dot(q, &keys[size_t(n) * d], d) / sqrt_d;
        const float target =
            LogSumExp(logits[r]) + needle->margin - std::log(float(needle->length));
        for (int i = out.needle_pos; i < out.needle_pos + needle->length; ++i)
          need_c = std::max(need_c, (target - logits[r][i]) / gain[r]);
      }
      for (int i = out.needle_pos; i < out.needle_pos + needle->length; ++i)
        for (int c = 0; c < d; ++c) keys[size_t(i) * d + c] += need_c * ndir[c];
      // Each distractor as strong as allowed: distractor_gap below the weakest needle token,
      // for every head of the group.
      for (int p : distractors) {
        float c_p = INFINITY;
        for (int r = 0; r < group; ++r) {
          float needle_min = INFINITY;
          for (int i = out.needle_pos; i < out.needle_pos + needle->length; ++i)
            needle_min = std::min(needle_min, logits[r][i] + need_c * gain[r]);
          c_p = std::min(c_p, (needle_min - needle->distractor_gap - logits[r][p]) / gain[r]);
        }
        c_p = std::max(0.0f, c_p);
        for (int c = 0; c < d; ++c) keys[size_t(p) * d + c] += c_p * ndir[c];
      }
      std::vector<float> vdir = RandomUnit(rng, d, std::vector<bool>(d, true));
      for (int c = 0; c < d; ++c) out.needle_dir[size_t(g) * d + c] = vdir[c];
      for (int i = out.needle_pos; i < out.needle_pos + needle->length; ++i) {
        if (needle->distinct_values && i > out.needle_pos)
          vdir = RandomUnit(rng, d, std::vector<bool>(d, true));
        for (int c = 0; c < d; ++c)
          vals[size_t(i) * d + c] = needle->value_scale * vdir[c] + 0.1f * n01(rng);
      }
      if (g == 0) out.distractors = distractors;
    }

    // FP16 outputs.
    for (int n = 0; n < n_tok; ++n)
      for (int c = 0; c < d; ++c) {
        const size_t o = (size_t(n) * hkv + g) * d + c;
        out.k[o] = FloatToHalf(keys[size_t(n) * d + c]);
        out.v[o] = FloatToHalf(vals[size_t(n) * d + c]);
      }
    for (int t = 0; t < steps; ++t)
      for (int r = 0; r < group; ++r)
        for (int c = 0; c < d; ++c)
          out.q[(size_t(t) * hq + g * group + r) * d + c] =
              FloatToHalf(qs[(size_t(t) * group + r) * d + c]);
  });
  return out;
}

}  // namespace twl::bench

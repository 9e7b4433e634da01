// Goal checks of issue 15 (see accuracy_goals.h).
#include "lib/accuracy_goals.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_format.h"
#include "core/half.h"
#include "lib/accuracy_stats.h"

namespace twl::bench {
namespace {

std::string SeedCount(const std::vector<SeedMeasure>& seeds) {
  return absl::StrFormat("%d seeds", int(seeds.size()));
}

double Mean(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? NAN : s / double(v.size());
}

}  // namespace

GoalCheck CheckMass(const std::vector<SeedMeasure>& seeds, double p, const std::string& who) {
  GoalCheck c;
  c.goal = absl::StrFormat("%s p=%g: own-set true mass >= p-%.2f for >= %.0f%% of heads", who, p,
                           kMassTolerance, 100 * kMassHeadShare);
  std::vector<double> all, per_seed;
  for (const SeedMeasure& s : seeds) {
    all.insert(all.end(), s.own_mass.begin(), s.own_mass.end());
    per_seed.push_back(FractionAtLeast(s.own_mass, p - kMassTolerance));
  }
  const double share = FractionAtLeast(all, p - kMassTolerance);
  const Interval ci = MeanInterval95(per_seed);
  const Summary m = Summarize(all);
  c.measured = absl::StrFormat(
      "%.2f%% of %d heads (per seed %.2f%% [%.2f, %.2f]; worst seed %.2f%%); mass min %.4f "
      "p50 %.4f; %s",
      100 * share, int(all.size()), 100 * ci.mean, 100 * ci.lo, 100 * ci.hi,
      100 * *std::min_element(per_seed.begin(), per_seed.end()), m.min, m.p50, SeedCount(seeds));
  c.met = int(seeds.size()) >= kMinSeeds && share >= kMassHeadShare;
  return c;
}

GoalCheck CheckErrorRatio(const std::vector<SeedMeasure>& seeds, const std::string& who) {
  GoalCheck c;
  c.goal = absl::StrFormat("%s: mean output error <= %.1fx oracle top-p's on every seed", who,
                           kErrRatio);
  std::vector<double> ratios, head_ratios;
  int ok = 0;
  for (const SeedMeasure& s : seeds) {
    const double r = Mean(s.err) / Mean(s.oracle_err);
    ratios.push_back(r);
    ok += r <= kErrRatio ? 1 : 0;
    // Per head, with a floor so that heads the oracle reproduces almost exactly do not blow
    // the ratio up (1e-3 relative error is below FP16 output rounding at these norms).
    for (size_t i = 0; i < s.err.size() && i < s.oracle_err.size(); ++i)
      head_ratios.push_back((s.err[i] + 1e-3) / (s.oracle_err[i] + 1e-3));
  }
  const Interval ci = MeanInterval95(ratios);
  std::vector<double> sorted = ratios;
  std::sort(sorted.begin(), sorted.end());
  const Summary h = Summarize(head_ratios);
  c.measured = absl::StrFormat(
      "%d/%d seeds; ratio per seed %.3f [%.3f, %.3f], range %.3f-%.3f; per head p50 %.2fx, "
      "p99 %.2fx, %.1f%% of heads <= %.1fx",
      ok, int(seeds.size()), ci.mean, ci.lo, ci.hi, sorted.empty() ? NAN : sorted.front(),
      sorted.empty() ? NAN : sorted.back(), h.p50, h.p99,
      100 * (1 - FractionAtLeast(head_ratios, kErrRatio + 1e-12)), kErrRatio);
  c.met = int(seeds.size()) >= kMinSeeds && ok == int(seeds.size());
  return c;
}

GoalCheck CheckNeedleKept(const std::vector<SeedMeasure>& seeds, const std::string& who) {
  GoalCheck c;
  c.goal = absl::StrFormat("%s: needle mass kept >= %.0f%% for >= %.0f%% of (case, head)", who,
                           100 * kNeedleKept, 100 * kNeedleShare);
  std::vector<double> all, per_seed;
  for (const SeedMeasure& s : seeds) {
    all.insert(all.end(), s.needle_kept.begin(), s.needle_kept.end());
    per_seed.push_back(FractionAtLeast(s.needle_kept, kNeedleKept));
  }
  const double share = FractionAtLeast(all, kNeedleKept);
  const Interval ci = MeanInterval95(per_seed);
  c.measured = absl::StrFormat("%.2f%% of %d (per seed %.2f%% [%.2f, %.2f]); kept min %.3f mean %.4f",
                               100 * share, int(all.size()), 100 * ci.mean, 100 * ci.lo,
                               100 * ci.hi, Summarize(all).min, Mean(all));
  c.met = int(seeds.size()) >= kMinSeeds && share >= kNeedleShare;
  return c;
}

GoalCheck CheckNeedleError(const std::vector<SeedMeasure>& seeds, const std::string& who) {
  GoalCheck c;
  c.goal = absl::StrFormat("%s: needle output error <= %.1fx oracle top-p's on every seed", who,
                           kErrRatio);
  std::vector<double> ratios;
  int ok = 0;
  for (const SeedMeasure& s : seeds) {
    const double r = Mean(s.needle_err) / Mean(s.needle_oracle_err);
    ratios.push_back(r);
    ok += r <= kErrRatio ? 1 : 0;
  }
  const Interval ci = MeanInterval95(ratios);
  std::vector<double> sorted = ratios;
  std::sort(sorted.begin(), sorted.end());
  c.measured = absl::StrFormat("%d/%d seeds; ratio %.3f [%.3f, %.3f], range %.3f-%.3f", ok,
                               int(seeds.size()), ci.mean, ci.lo, ci.hi,
                               sorted.empty() ? NAN : sorted.front(),
                               sorted.empty() ? NAN : sorted.back());
  c.met = int(seeds.size()) >= kMinSeeds && ok == int(seeds.size());
  return c;
}

std::vector<double> NeedleMassKept(const SyntheticLayer& gen, int32_t step, const MethodResult& r,
                                   int32_t seq_index, std::vector<double>* needle_share) {
  const SyntheticConfig& c = gen.config;
  const int32_t d = c.head_dim, hkv = c.num_kv_heads, group = c.group_size;
  const int32_t hq = hkv * group, len = gen.StepLength(step);
  std::vector<double> kept(size_t(hq), 0.0);
  if (needle_share) needle_share->assign(size_t(hq), 0.0);
  if (gen.needle_len <= 0) return kept;
  const float scale = 1.0f / std::sqrt(float(d));
  std::vector<double> s(static_cast<size_t>(len));
  for (int32_t h = 0; h < hq; ++h) {
    const int32_t g = h / group;
    const fp16_t* q = gen.Q(step) + int64_t(h) * d;
    double mx = -INFINITY;
    for (int32_t t = 0; t < len; ++t) {
      const fp16_t* k = gen.k.data() + (int64_t(t) * hkv + g) * d;
      double dot = 0;
      for (int32_t j = 0; j < d; ++j) dot += double(HalfToFloat(q[j])) * HalfToFloat(k[j]);
      s[size_t(t)] = dot * scale;
      mx = std::max(mx, s[size_t(t)]);
    }
    double total = 0, needle = 0, in_kept = 0;
    for (int32_t t = 0; t < len; ++t) {
      s[size_t(t)] = std::exp(s[size_t(t)] - mx);
      total += s[size_t(t)];
    }
    const size_t item = size_t(seq_index) * hkv + g;
    const int32_t* toks = r.kept_tokens.data() + item * size_t(r.max_kept);
    const int32_t n = r.kept_kv[item];
    for (int32_t t = gen.needle_pos; t < gen.needle_pos + gen.needle_len && t < len; ++t) {
      needle += s[size_t(t)];
      if (std::binary_search(toks, toks + n, t)) in_kept += s[size_t(t)];
    }
    kept[size_t(h)] = needle > 0 ? in_kept / needle : 1.0;
    if (needle_share) (*needle_share)[size_t(h)] = needle / total;
  }
  return kept;
}

}  // namespace twl::bench

// twl_threshold_drift: how far each query head's top-p threshold moves from one decode step
// to the next, and how many tokens a floor predicted from the previous step would let through
// (bench/lib/threshold_drift.h). CPU only; exact FP32 scores, no estimate.
//
// Sources of consecutive steps:
//   --model M [--text T]  a llama2.c model teacher-forced over T (or sampling): every position
//                         from --min_ctx on is a step of every (layer, query head)
//   (no model)            the synthetic layers of bench/lib/synthetic_attention.h: --steps
//                         consecutive decode queries at the end of a --ctx context, queries
//                         drifting by the harness's AR(1) query_drift (an assumption, not data)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "core/half.h"
#include "lib/llama2_model.h"
#include "lib/model_methods.h"
#include "lib/png_plot.h"
#include "lib/synthetic_attention.h"
#include "lib/study_output.h"
#include "lib/table.h"
#include "lib/threshold_drift.h"
#include "lib/tool_flags.h"

ABSL_FLAG(std::string, model, "", "a llama2.c model (else the synthetic layers)");
ABSL_FLAG(std::string, text, "", "byte-level model: text fed as bytes (else tokens sampled)");
ABSL_FLAG(int32_t, tokens, 2048, "model: positions run");
ABSL_FLAG(int32_t, min_ctx, 512, "model: steps from this context length on");
ABSL_FLAG(int32_t, ctx, 16384, "synthetic: context tokens");
ABSL_FLAG(int32_t, steps, 32, "synthetic: consecutive decode steps");
ABSL_FLAG(int32_t, seeds, 2, "synthetic: seeds (1..seeds), one layer each");
ABSL_FLAG(std::string, workload, "mixed", "synthetic: mixed, peaked or flat");
ABSL_FLAG(double, p, 0.95, "top-p mass");
ABSL_FLAG(std::string, out, "out/threshold_drift", "output directory (created)");

namespace twl::bench {
namespace {

const std::vector<double> kDeltas = {0.0, 0.25, 0.5, 1.0, 2.0, 4.0};

double Quantile(std::vector<double> v, double q) {
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  std::sort(v.begin(), v.end());
  return v[std::min(v.size() - 1, size_t(q * double(v.size())))];
}

double Mean(const std::vector<double>& v) {
  if (v.empty()) return std::numeric_limits<double>::quiet_NaN();
  double s = 0;
  for (double x : v) s += x;
  return s / double(v.size());
}

// Exact scores of one query row (already scaled) over the first n rows of k [n][stride].
void Scores(const float* q, const float* k, int64_t stride, int32_t n, int32_t d,
            std::vector<float>* s) {
  s->resize(size_t(n));
  for (int32_t t = 0; t < n; ++t) {
    float a = 0;
    for (int32_t j = 0; j < d; ++j) a += q[j] * k[int64_t(t) * stride + j];
    (*s)[size_t(t)] = a;
  }
}

bool RunModel(const std::string& path, double p, DriftTally* tally) {
  absl::StatusOr<Llama2Model> model = Llama2Model::Load(path);
  if (!model.ok()) {
    std::fprintf(stderr, "twl_threshold_drift: %s\n",
                 std::string(model.status().message()).c_str());
    return false;
  }
  const LlamaConfig& c = model->config();
  const int32_t n = std::min(absl::GetFlag(FLAGS_tokens), c.seq_len);
  std::vector<int32_t> text;
  if (const std::string tf = absl::GetFlag(FLAGS_text); !tf.empty()) {
    absl::StatusOr<std::vector<int32_t>> read = twl::bench::ReadByteTokens(tf, n, c);
    if (!read.ok()) {
      std::fprintf(stderr, "twl_threshold_drift: --text: %s\n",
                   std::string(read.status().message()).c_str());
      return false;
    }
    text = std::move(*read);
  }
  const int32_t d = c.head_dim(), G = c.n_heads / c.n_kv_heads, kv = c.kv_dim();
  const int32_t min_ctx = absl::GetFlag(FLAGS_min_ctx);
  const float scale = 1.0f / std::sqrt(float(d));
  std::vector<std::vector<float>> K(size_t(c.n_layers)), V(size_t(c.n_layers));
  std::vector<HeadStep> prev(size_t(c.n_layers) * size_t(c.n_heads));
  std::vector<float> s, qs(static_cast<size_t>(d));
  auto attention = [&](int32_t layer, int32_t pos, const float* q, const float* k, const float* v,
                       float* out) -> absl::Status {
    std::vector<float>& Kl = K[size_t(layer)];
    std::vector<float>& Vl = V[size_t(layer)];
    Kl.insert(Kl.end(), k, k + kv);
    Vl.insert(Vl.end(), v, v + kv);
    const int32_t len = pos + 1;
    if (layer == 0 && (len % 256 == 0 || len == n)) {
      std::fprintf(stderr, "\rtwl_threshold_drift: position %d / %d, %lld transitions", len, n,
                   static_cast<long long>(tally->transitions));
    }
    for (int32_t qh = 0; qh < c.n_heads; ++qh) {
      const int32_t h = qh / G;
      for (int32_t j = 0; j < d; ++j) qs[size_t(j)] = q[qh * d + j] * scale;
      Scores(qs.data(), Kl.data() + int64_t(h) * d, kv, len, d, &s);
      // Dense attention output (the model runs on it).
      const float mx = *std::max_element(s.begin(), s.end());
      std::vector<double> w(static_cast<size_t>(len));
      double tot = 0;
      for (int32_t t = 0; t < len; ++t) tot += (w[size_t(t)] = std::exp(double(s[size_t(t)] - mx)));
      for (int32_t j = 0; j < d; ++j) {
        double o = 0;
        for (int32_t t = 0; t < len; ++t)
          o += w[size_t(t)] * Vl[size_t(t) * kv + size_t(h) * d + j];
        out[qh * d + j] = float(o / tot);
      }
      if (len < min_ctx - 1) continue;
      const HeadStep now = MeasureHeadStep(s, p);
      HeadStep& pr = prev[size_t(layer) * c.n_heads + qh];
      if (len >= min_ctx) tally->Add(pr, now, s);
      pr = now;
    }
    return absl::OkStatus();
  };
  // Teacher-forced over the text, else sampled from the model (temperature 1, seed 1).
  absl::Status st;
  if (!text.empty()) {
    std::vector<double> nll;
    st = ScoreTokens(*model, text, attention, &nll);
  } else {
    st = SampleTokens(*model, attention, 1, n, 1.0, 1).status();
  }
  if (!st.ok()) {
    std::fprintf(stderr, "twl_threshold_drift: %s\n", std::string(st.message()).c_str());
    return false;
  }
  std::fprintf(stderr, "\n");
  return true;
}

bool RunSynthetic(double p, DriftTally* tally) {
  const std::string wl = absl::GetFlag(FLAGS_workload);
  for (int32_t seed = 1; seed <= absl::GetFlag(FLAGS_seeds); ++seed) {
    SyntheticConfig c;
    c.num_tokens = absl::GetFlag(FLAGS_ctx);
    c.num_steps = absl::GetFlag(FLAGS_steps);
    c.seed = uint64_t(seed);
    ApplyWorkloadPreset(wl, &c);  // validated in Main
    absl::StatusOr<SyntheticLayer> gen = GenerateLayer(c, 0);
    if (!gen.ok()) {
      std::fprintf(stderr, "twl_threshold_drift: %s\n",
                   std::string(gen.status().message()).c_str());
      return false;
    }
    const int32_t H = c.num_kv_heads, G = c.group_size, d = c.head_dim;
    const float scale = 1.0f / std::sqrt(float(d));
    std::vector<float> kf(static_cast<size_t>(c.num_tokens) * size_t(d)), q(static_cast<size_t>(d)),
        s;
    for (int32_t h = 0; h < H; ++h) {
      for (int32_t t = 0; t < c.num_tokens; ++t)
        for (int32_t j = 0; j < d; ++j)
          kf[size_t(t) * d + j] = HalfToFloat(gen->k[(size_t(t) * H + h) * d + j]);
      for (int32_t g = 0; g < G; ++g) {
        HeadStep prev;
        for (int32_t st = 0; st < c.num_steps; ++st) {
          for (int32_t j = 0; j < d; ++j)
            q[size_t(j)] = HalfToFloat(gen->Q(st)[size_t(h * G + g) * d + j]) * scale;
          Scores(q.data(), kf.data(), d, gen->StepLength(st), d, &s);
          const HeadStep now = MeasureHeadStep(s, p);
          if (st > 0) tally->Add(prev, now, s);
          prev = now;
        }
      }
      std::fprintf(stderr, "\rtwl_threshold_drift: seed %d, KV head %d / %d", seed, h + 1, H);
    }
  }
  std::fprintf(stderr, "\n");
  return true;
}

int Main(int argc, char** argv) {
  tools::ParseToolFlags(argc, argv, __FILE__,
                        "twl_threshold_drift: top-p threshold movement between decode steps");
  const double p = absl::GetFlag(FLAGS_p);
  const std::string wl = absl::GetFlag(FLAGS_workload);
  tools::RequireFlag(p > 0.0 && p < 1.0, "p", "in (0, 1)");
  tools::RequireFlag(wl == "mixed" || wl == "peaked" || wl == "flat", "workload",
                     "mixed, peaked or flat");
  tools::RequireFlag(absl::GetFlag(FLAGS_tokens) >= 2, "tokens", ">= 2");
  tools::RequireFlag(absl::GetFlag(FLAGS_min_ctx) >= 2, "min_ctx", ">= 2");
  tools::RequireFlag(absl::GetFlag(FLAGS_ctx) >= 256 && absl::GetFlag(FLAGS_ctx) <= (1 << 20),
                     "ctx", "in [256, 2^20]");
  tools::RequireFlag(absl::GetFlag(FLAGS_steps) >= 2 && absl::GetFlag(FLAGS_steps) <= 1024 &&
                         absl::GetFlag(FLAGS_steps) < absl::GetFlag(FLAGS_ctx),
                     "steps", "in [2, 1024] and below --ctx");
  tools::RequireFlag(absl::GetFlag(FLAGS_seeds) >= 1 && absl::GetFlag(FLAGS_seeds) <= 1000, "seeds",
                     "in [1, 1000]");
  tools::RequireWritableDir("out", absl::GetFlag(FLAGS_out));
  DriftTally tally(kDeltas);
  const std::string model = absl::GetFlag(FLAGS_model);
  if (!(model.empty() ? RunSynthetic(p, &tally) : RunModel(model, p, &tally))) return 1;
  if (tally.transitions == 0) {
    std::fprintf(stderr,
                 "twl_threshold_drift: no step transitions (raise --tokens or lower --min_ctx)\n");
    return 1;
  }
  const std::string source =
      model.empty() ? "synthetic " + wl : std::filesystem::path(model).filename().string();
  Table t({"floor", "delta", "valid", "survivors_share_median", "survivors_share_mean",
           "over_kept_median", "over_kept_p90"});
  // Transitions whose max rose by more than m logits: where an anchor at the previous max + m
  // would not hold this step's max.
  auto rose_above = [&](double m) {
    int64_t n = 0;
    for (double c : tally.max_change) n += c > m ? 1 : 0;
    return double(n) / double(tally.transitions);
  };
  t.title = absl::StrFormat(
      "%s, p %.3g: %lld transitions; theta change p10/p50/p90 %.3f / %.3f / "
      "%.3f logits, depth change p10/p50/p90 %.3f / %.3f / %.3f; max change p50/p90/p99 "
      "%.3f / %.3f / %.3f, rose by > 1 / 2 / 4 logits in %.4f / %.4f / %.4f",
      source, p, static_cast<long long>(tally.transitions), Quantile(tally.theta_change, 0.1),
      Quantile(tally.theta_change, 0.5), Quantile(tally.theta_change, 0.9),
      Quantile(tally.depth_change, 0.1), Quantile(tally.depth_change, 0.5),
      Quantile(tally.depth_change, 0.9), Quantile(tally.max_change, 0.5),
      Quantile(tally.max_change, 0.9), Quantile(tally.max_change, 0.99), rose_above(1.0),
      rose_above(2.0), rose_above(4.0));
  Plot plot;
  plot.title = "Previous-step floor, " + source;
  plot.x_label = "margin delta below the predicted floor (logits)";
  plot.y_label = "fraction";
  const char* names[2] = {"absolute", "relative"};
  for (int f = 0; f < 2; ++f) {
    std::vector<double> valid_frac, share;
    for (size_t i = 0; i < kDeltas.size(); ++i) {
      const double v = double(tally.valid[f][i]) / double(tally.transitions);
      valid_frac.push_back(v);
      share.push_back(Mean(tally.share[f][i]));
      t.AddRow({names[f], Cell(kDeltas[i], 3), Cell(v, 4),
                Cell(Quantile(tally.share[f][i], 0.5), 3), Cell(Mean(tally.share[f][i]), 3),
                Cell(Quantile(tally.over_kept[f][i], 0.5), 3),
                Cell(Quantile(tally.over_kept[f][i], 0.9), 3)});
    }
    plot.AddSeries(std::string(names[f]) + ": valid steps", kDeltas, valid_frac,
                   Style::kLinePoints);
    plot.AddSeries(std::string(names[f]) + ": survivors / context (mean)", kDeltas, share,
                   Style::kLinePoints);
  }
  return PrintAndWriteStudy("twl_threshold_drift", absl::GetFlag(FLAGS_out), "threshold_drift", t, plot);
}

}  // namespace
}  // namespace twl::bench

int main(int argc, char** argv) { return twl::bench::Main(argc, argv); }

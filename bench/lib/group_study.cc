#include "lib/group_study.h"

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "absl/strings/str_format.h"
#include "core/half.h"
#include "lib/study_output.h"
#include "lib/synthetic_attention.h"
#include "lib/top_p_set.h"
#include "tbb/parallel_for.h"
#include "lib/tool_flags.h"

namespace twl::bench {

void RuleTally::Append(const RuleTally& other) {
  mass.insert(mass.end(), other.mass.begin(), other.mass.end());
  error_ratio.insert(error_ratio.end(), other.error_ratio.begin(), other.error_ratio.end());
  kept_ratio.insert(kept_ratio.end(), other.kept_ratio.begin(), other.kept_ratio.end());
  pages_share.insert(pages_share.end(), other.pages_share.begin(), other.pages_share.end());
}

double Quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v.empty() ? std::nan("") : v[std::min(v.size() - 1, size_t(q * double(v.size())))];
}

double MeanOf(const std::vector<double>& v) {
  double s = 0;
  for (double x : v) s += x;
  return v.empty() ? std::nan("") : s / double(v.size());
}

double ShareAtLeast(const std::vector<double>& v, double floor) {
  double n = 0;
  for (double x : v) n += x >= floor - 1e-12;
  return v.empty() ? std::nan("") : n / double(v.size());
}

GroupTruth GroupTruth::Of(const std::vector<float>& k, const std::vector<float>& v, int32_t len,
                          int32_t d, const std::vector<std::vector<float>>& qs, float p) {
  GroupTruth truth;
  std::vector<float> exact(static_cast<size_t>(len));
  for (const std::vector<float>& q : qs) {
    for (int32_t t = 0; t < len; ++t) {
      float a = 0;  // FP32 in channel order
      for (int32_t j = 0; j < d; ++j) a += q[size_t(j)] * k[size_t(t) * size_t(d) + size_t(j)];
      exact[size_t(t)] = a;
    }
    truth.heads.push_back(HeadTruth::Of(exact, v.data(), d));
    float threshold;
    double oracle_mass, oracle_error;
    truth.heads.back().Score(TopPSet(exact, p, &threshold), &oracle_mass, &oracle_error);
    truth.oracle_error.push_back(oracle_error);
  }
  return truth;
}

std::vector<int32_t> CheckSyntheticStudyFlags(double p, const std::vector<std::string>& workloads,
                                              const std::vector<std::string>& contexts,
                                              int32_t seeds, int32_t layers, int32_t steps) {
  tools::RequireFlag(p > 0.0 && p < 1.0, "p", "in (0, 1)");
  tools::RequireFlag(!workloads.empty(), "workloads", "at least one of peaked, mixed, flat");
  for (const std::string& w : workloads)
    tools::RequireFlag(w == "mixed" || w == "peaked" || w == "flat", "workloads",
                       "peaked, mixed or flat");
  std::vector<int32_t> ctx = tools::IntListFlag(contexts, "contexts", 256, 1 << 20);
  tools::RequireFlag(seeds >= 1 && seeds <= 1000, "seeds", "in [1, 1000]");
  tools::RequireFlag(layers >= 1 && layers <= 64, "layers", "in [1, 64]");
  tools::RequireFlag(steps >= 1 && steps <= 64, "steps", "in [1, 64]");
  return ctx;
}

absl::StatusOr<std::vector<RuleTally>> RunSyntheticGroups(const SyntheticRun& run, size_t rules,
                                                          const GroupEval& eval) {
  std::vector<RuleTally> total(rules);
  const int32_t d = run.head_dim;
  for (int32_t seed = 1; seed <= run.seeds; ++seed) {
    for (int32_t layer = 0; layer < run.layers; ++layer) {
      std::fprintf(stderr, "\r%s: %s ctx %d: seed %d / %d, layer %d / %d   ", run.tool.c_str(),
                   run.workload.c_str(), run.ctx, seed, run.seeds, layer + 1, run.layers);
      SyntheticConfig c;
      c.num_tokens = run.ctx;
      c.head_dim = d;
      c.num_steps = run.steps;
      c.seed = uint64_t(seed);
      if (!ApplyWorkloadPreset(run.workload, &c)) {
        return absl::InvalidArgumentError("unknown workload '" + run.workload + "'");
      }
      absl::StatusOr<SyntheticLayer> gen = GenerateLayer(c, layer);
      if (!gen.ok()) return gen.status();
      const int32_t H = c.num_kv_heads, G = c.group_size;
      std::vector<std::vector<RuleTally>> per_head(static_cast<size_t>(H));
      std::vector<absl::Status> head_status(static_cast<size_t>(H));
      tbb::parallel_for(0, H, [&](int32_t h) {
        std::vector<float> kf(size_t(run.ctx) * size_t(d)), vf(size_t(run.ctx) * size_t(d));
        for (size_t t = 0; t < size_t(run.ctx); ++t) {
          for (int32_t j = 0; j < d; ++j) {
            const size_t at = (t * size_t(H) + size_t(h)) * size_t(d) + size_t(j);
            kf[t * size_t(d) + size_t(j)] = HalfToFloat(gen->k[at]);
            vf[t * size_t(d) + size_t(j)] = HalfToFloat(gen->v[at]);
          }
        }
        std::vector<RuleTally> mine(rules);
        const float scale = 1.0f / std::sqrt(float(d));
        for (int32_t st = 0; st < c.num_steps; ++st) {
          std::vector<std::vector<float>> qs(static_cast<size_t>(G), std::vector<float>(size_t(d)));
          for (int32_t g = 0; g < G; ++g) {
            for (int32_t j = 0; j < d; ++j) {
              qs[size_t(g)][size_t(j)] =
                  HalfToFloat(gen->Q(st)[size_t(h * G + g) * size_t(d) + size_t(j)]) * scale;
            }
          }
          absl::StatusOr<std::vector<RuleTally>> t = eval(kf, vf, gen->StepLength(st), qs);
          if (!t.ok()) {
            head_status[size_t(h)] = t.status();
            return;
          }
          if (t->size() != rules) {
            head_status[size_t(h)] = absl::InternalError("a study returned the wrong rule count");
            return;
          }
          for (size_t r = 0; r < rules; ++r) mine[r].Append((*t)[r]);
        }
        per_head[size_t(h)] = std::move(mine);
      });
      for (const absl::Status& st : head_status) {
        if (!st.ok()) return st;
      }
      for (const std::vector<RuleTally>& head : per_head) {  // KV head order: deterministic
        for (size_t r = 0; r < rules; ++r) total[r].Append(head[r]);
      }
    }
  }
  return total;
}

Table StudyTable(double p, std::vector<std::string> keys, const std::vector<std::string>& extra,
                 const std::string& bytes_frac) {
  keys.insert(keys.end(), {"pages_mean", "pages_max", "bytes_frac", "heads_ok", "mass_min",
                           "mass_median", "err_ok", "err_ratio_median"});
  keys.insert(keys.end(), extra.begin(), extra.end());
  Table table(std::move(keys));
  table.title = absl::StrFormat(
      "p %.3g: heads_ok = share of query heads with true mass >= %.3g; err_ok = share with "
      "output error <= %.1fx the oracle top-p's; bytes_frac = %s",
      p, p - kStudyMassSlack, kStudyErrorRatioGoal, bytes_frac);
  return table;
}

std::vector<Cell> TallyRow(std::vector<Cell> keys, const RuleTally& t, double bytes_frac, double p) {
  keys.insert(keys.end(),
              {Cell(MeanOf(t.pages_share), 3),
               Cell(*std::max_element(t.pages_share.begin(), t.pages_share.end()), 3),
               Cell(bytes_frac, 3), Cell(ShareAtLeast(t.mass, p - kStudyMassSlack), 4),
               Cell(*std::min_element(t.mass.begin(), t.mass.end()), 4),
               Cell(Quantile(t.mass, 0.5), 4),
               Cell(1.0 - ShareAtLeast(t.error_ratio, kStudyErrorRatioGoal + 1e-9), 4),
               Cell(Quantile(t.error_ratio, 0.5), 3)});
  return keys;
}

Plot MassVsBytesPlot(std::string title) {
  Plot plot;
  plot.title = std::move(title);
  plot.x_label = "estimation bytes / today's full INT4 pass";
  plot.y_label = "min true mass over query heads";
  return plot;
}

int FinishStudy(const std::string& tool, const std::string& dir, const std::string& stem,
                double p, const Table& table, Plot plot) {
  std::fprintf(stderr, "\n");
  plot.AddHLine(p - kStudyMassSlack, "p - 0.02");
  return PrintAndWriteStudy(tool, dir, stem, table, plot);
}

}  // namespace twl::bench

// twl_coarse_study: can a cheap per-page summary rank a KV head's pages so that the pruner's
// INT4 score pass only needs to read the top-ranked ones? CPU only (bench/ACCURACY.md,
// "Coarse page ranking before the INT4 pass").
//
// For synthetic layers (bench/lib/synthetic_attention.h) every decode query is scored exactly
// (FP32 over FP16 K) and with the library's INT4 estimate (bench/lib/paged_head_keys.h). Per
// coarse summary (bench/lib/coarse_ranking.h: quest, mean) a KV head's pages are ranked, the
// first pages refined under each rule, and top-p taken per query head over the refined tokens'
// estimates. Reported per rule: the share of query heads whose own set holds true mass >=
// p - 0.02, the min and median true mass, the share with output error within 1.3x of the
// oracle top-p's, the pages refined, and the estimation bytes read over today's full pass.
// Rules: fixed fractions of the pages, and the adaptive stop (AdaptiveRefinedPages) at each
// --eps. The row "full" is today's pass (every page refined, no coarse pass).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "lib/coarse_ranking.h"
#include "lib/group_study.h"
#include "lib/paged_head_keys.h"
#include "lib/png_plot.h"
#include "lib/study_output.h"
#include "lib/table.h"
#include "lib/tool_flags.h"

ABSL_FLAG(std::vector<std::string>, workloads, std::vector<std::string>({"peaked", "mixed", "flat"}),
          "synthetic workloads: peaked, mixed, flat");
ABSL_FLAG(std::vector<std::string>, contexts, std::vector<std::string>({"16384", "65536"}),
          "context lengths (tokens)");
ABSL_FLAG(int32_t, seeds, 1, "seeds (1..seeds), --layers layers each");
ABSL_FLAG(int32_t, layers, 2, "layers per seed");
ABSL_FLAG(int32_t, steps, 2, "decode queries per layer");
ABSL_FLAG(double, p, 0.95, "top-p mass");
ABSL_FLAG(std::vector<std::string>, eps, std::vector<std::string>({"0.01", "0.05"}),
          "adaptive stop: outside mass (coarse estimate) <= eps x refined mass");
ABSL_FLAG(double, chunk, 1.0, "adaptive stop: percent of the pages refined per chunk");
ABSL_FLAG(std::string, out, "out/coarse_study", "output directory (created)");

namespace twl::bench {
namespace {

constexpr int32_t kHeadDim = 128, kPageSize = 16;
const std::vector<double> kFractions = {0.02, 0.05, 0.10, 0.20, 0.40};

// A way to choose a KV head's refined pages: a summary with a fixed fraction or an adaptive
// eps, or the full pass (every page, no coarse pass).
struct Rule {
  bool full = false;
  CoarseSummary summary = CoarseSummary::kMean;
  double fraction = 0;  // > 0: fixed fraction
  double eps = 0;       // fraction == 0: adaptive
  std::string Name() const {
    if (full) return "full";
    return fraction > 0 ? absl::StrFormat("%g%%", 100 * fraction) : absl::StrFormat("eps %g", eps);
  }
};

// One KV head at one decode step: every rule's outcome for its query heads qs (scaled).
absl::StatusOr<std::vector<RuleTally>> EvalGroup(const std::vector<Rule>& rules,
                                                 const std::vector<float>& kf,
                                                 const std::vector<float>& vf, int32_t len,
                                                 const std::vector<std::vector<float>>& qs,
                                                 float p, int32_t chunk_pages) {
  const int32_t d = kHeadDim, G = int32_t(qs.size());
  absl::StatusOr<PagedHeadKeys> keys = PagedHeadKeys::Build(kf.data(), len, d, kPageSize);
  if (!keys.ok()) return keys.status();
  const GroupTruth truth = GroupTruth::Of(kf, vf, len, d, qs, p);
  std::vector<std::vector<float>> est(static_cast<size_t>(G));
  std::vector<std::vector<int32_t>> est_order(static_cast<size_t>(G));
  for (int32_t g = 0; g < G; ++g) {
    keys->EstimateAll(qs[size_t(g)].data(), &est[size_t(g)]);
    est_order[size_t(g)] = DescendingOrder(est[size_t(g)]);
  }
  std::vector<std::vector<float>> coarse[2];
  std::vector<int32_t> rank[2];
  for (CoarseSummary s : {CoarseSummary::kQuest, CoarseSummary::kMean}) {
    std::vector<std::vector<float>>& c = coarse[int(s)];
    c.resize(size_t(G));
    for (int32_t g = 0; g < G; ++g) CoarsePageScores(s, *keys, qs[size_t(g)].data(), &c[size_t(g)]);
    rank[int(s)] = RankPages(c);
  }
  const int32_t pages = keys->pages();
  std::vector<RuleTally> tallies(rules.size());
  for (size_t r = 0; r < rules.size(); ++r) {
    const Rule& rule = rules[r];
    const std::vector<int32_t>& order = rank[int(rule.summary)];
    int32_t count = pages;
    if (!rule.full && rule.fraction > 0) {
      count = std::max(1, int32_t(std::ceil(rule.fraction * pages)));
    } else if (!rule.full) {
      count = AdaptiveRefinedPages(*keys, order, coarse[int(rule.summary)], est, rule.eps,
                                   chunk_pages);
    }
    const std::vector<uint8_t> refined = FirstPages(order, count, pages);
    tallies[r].pages_share.push_back(double(count) / pages);
    for (int32_t g = 0; g < G; ++g) {
      double mass, error;
      truth.heads[size_t(g)].Score(
          TopPOverRefined(est[size_t(g)], est_order[size_t(g)], refined, kPageSize, p), &mass,
          &error);
      tallies[r].mass.push_back(mass);
      tallies[r].error_ratio.push_back(error / std::max(truth.oracle_error[size_t(g)], 1e-9));
    }
  }
  return tallies;
}

// Every rule's tally over --seeds x --layers synthetic layers of one workload and context.
absl::StatusOr<std::vector<RuleTally>> RunWorkload(const std::vector<Rule>& rules,
                                                   const std::string& workload, int32_t ctx,
                                                   float p, double chunk_percent) {
  const int32_t pages = (ctx + kPageSize - 1) / kPageSize;
  const int32_t chunk_pages = std::max(1, int32_t(std::lround(chunk_percent / 100.0 * pages)));
  SyntheticRun run{"twl_coarse_study", workload, ctx, kHeadDim, absl::GetFlag(FLAGS_seeds),
                   absl::GetFlag(FLAGS_layers), absl::GetFlag(FLAGS_steps)};
  return RunSyntheticGroups(
      run, rules.size(),
      [&](const std::vector<float>& k, const std::vector<float>& v, int32_t len,
          const std::vector<std::vector<float>>& qs) {
        return EvalGroup(rules, k, v, len, qs, p, chunk_pages);
      });
}

int Main(int argc, char** argv) {
  tools::ParseToolFlags(argc, argv, __FILE__,
                        "twl_coarse_study: coarse page ranking before the INT4 score pass");
  const double p = absl::GetFlag(FLAGS_p);
  const std::vector<std::string> workloads = absl::GetFlag(FLAGS_workloads);
  const std::vector<int32_t> contexts = CheckSyntheticStudyFlags(
      p, workloads, absl::GetFlag(FLAGS_contexts), absl::GetFlag(FLAGS_seeds),
      absl::GetFlag(FLAGS_layers), absl::GetFlag(FLAGS_steps));
  tools::RequireWritableDir("out", absl::GetFlag(FLAGS_out));
  const double chunk = absl::GetFlag(FLAGS_chunk);
  tools::RequireFlag(chunk > 0.0 && chunk <= 100.0, "chunk", "in (0, 100]");
  std::vector<double> eps;
  for (const std::string& e : absl::GetFlag(FLAGS_eps)) {
    double x = 0;
    tools::RequireFlag(absl::SimpleAtod(e, &x) && x > 0.0 && x < 1e6, "eps",
                       "positive numbers, comma-separated");
    eps.push_back(x);
  }

  std::vector<Rule> rules = {Rule{true}};
  for (CoarseSummary s : {CoarseSummary::kQuest, CoarseSummary::kMean}) {
    for (double f : kFractions) rules.push_back(Rule{false, s, f, 0});
    for (double e : eps) rules.push_back(Rule{false, s, 0, e});
  }
  const double today = FineBytesPerToken(kHeadDim, kPageSize);
  Table table = StudyTable(p, {"workload", "ctx", "summary", "rule"}, {},
                           absl::StrFormat("estimation bytes over today's %.0f B/token", today));
  Plot plot = MassVsBytesPlot("Coarse ranking then INT4: min true mass vs estimation bytes");
  for (const std::string& w : workloads) {
    for (int32_t ctx : contexts) {
      tools::RequireFlag(absl::GetFlag(FLAGS_steps) < ctx, "steps", "below every context");
      const absl::StatusOr<std::vector<RuleTally>> run = RunWorkload(rules, w, ctx, float(p), chunk);
      if (!run.ok()) {
        std::fprintf(stderr, "\ntwl_coarse_study: %s\n", std::string(run.status().message()).c_str());
        return 1;
      }
      const std::vector<RuleTally>& tallies = *run;
      std::vector<double> xs[2], ys[2];
      for (size_t r = 0; r < rules.size(); ++r) {
        const Rule& rule = rules[r];
        const RuleTally& t = tallies[r];
        const double coarse = rule.full ? 0 : CoarseBytesPerToken(rule.summary, kHeadDim, kPageSize);
        const double bytes = (coarse + MeanOf(t.pages_share) * today) / today;
        table.AddRow(TallyRow(
            {w, ctx, rule.full ? "-" : CoarseSummaryName(rule.summary), rule.Name()}, t, bytes, p));
        if (!rule.full && rule.fraction > 0) {
          xs[int(rule.summary)].push_back(bytes);
          ys[int(rule.summary)].push_back(*std::min_element(t.mass.begin(), t.mass.end()));
        }
      }
      for (CoarseSummary s : {CoarseSummary::kQuest, CoarseSummary::kMean}) {
        plot.AddSeries(absl::StrFormat("%s %s %dk", CoarseSummaryName(s), w, ctx / 1024),
                       xs[int(s)], ys[int(s)], Style::kLinePoints);
      }
    }
  }
  return FinishStudy("twl_coarse_study", absl::GetFlag(FLAGS_out), "coarse_study", p, table,
                     std::move(plot));
}

}  // namespace
}  // namespace twl::bench

int main(int argc, char** argv) { return twl::bench::Main(argc, argv); }

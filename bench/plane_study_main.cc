// twl_plane_study: can the pruner's score pass read the INT4 codes of K in two tiers, every
// token's high 2 bits first and the low 2 bits only for the pages that need them, and still
// keep every head's true mass? CPU only (bench/ACCURACY.md, "Bit-plane two-tier score pass").
//
// For synthetic layers (bench/lib/synthetic_attention.h) every decode query is scored exactly
// (FP32 over FP16 K), with the library's INT4 estimate (bench/lib/paged_head_keys.h) and with
// the high-plane estimate (bench/lib/bit_planes.h). Per rule a KV head's pages are chosen for
// refinement (for the whole GQA group: the GPU pass works per KV head and page), those pages'
// tokens take the INT4 estimate and the others keep the high-plane one, and top-p runs per
// query head over every token. Rules: none ("2-bit only"); fixed shares of the pages ranked by
// their best high-plane token relative to each head's best (RankPages over PageMaxima); the
// margin rule (MarginPages at each --margins, around each head's top-p threshold over the
// high-plane estimates); the weight rule (WeightPages at each --weights: pages holding a token
// whose high-plane weight share reaches eps for some head); "full" is today's pass. Reported
// per rule as in twl_coarse_study, plus the kept tokens over the full INT4 pass's (a coarser
// estimate may keep more, which costs attention bytes).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <utility>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "lib/bit_planes.h"
#include "lib/coarse_ranking.h"
#include "lib/group_study.h"
#include "lib/paged_head_keys.h"
#include "lib/png_plot.h"
#include "lib/study_output.h"
#include "lib/table.h"
#include "lib/tool_flags.h"
#include "lib/top_p_set.h"

ABSL_FLAG(std::vector<std::string>, workloads,
          std::vector<std::string>({"peaked", "mixed", "flat"}),
          "synthetic workloads: peaked, mixed, flat");
ABSL_FLAG(std::vector<std::string>, contexts, std::vector<std::string>({"16384", "65536"}),
          "context lengths (tokens)");
ABSL_FLAG(int32_t, seeds, 1, "seeds (1..seeds), --layers layers each");
ABSL_FLAG(int32_t, layers, 2, "layers per seed");
ABSL_FLAG(int32_t, steps, 2, "decode queries per layer");
ABSL_FLAG(double, p, 0.95, "top-p mass");
ABSL_FLAG(std::vector<std::string>, shares,
          std::vector<std::string>({"0.05", "0.1", "0.2", "0.4"}),
          "fixed rule: shares of the pages refined, in (0, 1]");
ABSL_FLAG(std::vector<std::string>, margins, std::vector<std::string>({"0.5", "1", "2"}),
          "margin rule: refine pages holding a token within this many scaled logits (nats) "
          "below a head's high-plane top-p threshold, in [0, 100]");
ABSL_FLAG(std::vector<std::string>, weights,
          std::vector<std::string>({"0.001", "0.0001", "0.00001"}),
          "weight rule: refine pages holding a token whose high-plane weight share reaches this "
          "for some head of the group, in (0, 1]");
ABSL_FLAG(std::string, out, "out/plane_study", "output directory (created)");

namespace twl::bench {
namespace {

constexpr int32_t kHeadDim = 128, kPageSize = 16;

// How a KV head's refined pages are chosen.
struct Rule {
  enum Kind { kFull, kNone, kShare, kMargin, kWeight } kind = kFull;
  double value = 0;  // kShare: share of the pages; kMargin: the margin; kWeight: eps
  std::string Name() const {
    switch (kind) {
      case kFull: return "full";
      case kNone: return "2-bit only";
      case kShare: return absl::StrFormat("share %g%%", 100 * value);
      case kMargin: return absl::StrFormat("margin %g", value);
      default: return absl::StrFormat("weight %g", value);
    }
  }
};

// One KV head at one decode step: every rule's outcome for its query heads qs (scaled).
absl::StatusOr<std::vector<RuleTally>> EvalGroup(const std::vector<Rule>& rules,
                                                 const std::vector<float>& kf,
                                                 const std::vector<float>& vf, int32_t len,
                                                 const std::vector<std::vector<float>>& qs,
                                                 float p) {
  const size_t G = qs.size();
  absl::StatusOr<PagedHeadKeys> keys = PagedHeadKeys::Build(kf.data(), len, kHeadDim, kPageSize);
  if (!keys.ok()) return keys.status();
  const int32_t pages = keys->pages();
  const GroupTruth truth = GroupTruth::Of(kf, vf, len, kHeadDim, qs, p);
  std::vector<std::vector<float>> fine(G), coarse(G), page_top(G);
  std::vector<float> threshold(G);
  std::vector<double> full_kept(G);
  for (size_t g = 0; g < G; ++g) {
    keys->EstimateAll(qs[g].data(), &fine[g]);
    HighPlaneEstimateAll(*keys, qs[g].data(), &coarse[g]);
    page_top[g] = PageMaxima(coarse[g], kPageSize);
    TopPSet(coarse[g], p, &threshold[g]);
    float unused;
    const std::vector<uint8_t> keep = TopPSet(fine[g], p, &unused);
    full_kept[g] = double(std::count(keep.begin(), keep.end(), uint8_t(1)));
  }
  const std::vector<int32_t> order = RankPages(page_top);
  std::vector<RuleTally> tallies(rules.size());
  for (size_t r = 0; r < rules.size(); ++r) {
    const Rule& rule = rules[r];
    std::vector<uint8_t> refined;
    switch (rule.kind) {
      case Rule::kFull: refined.assign(size_t(pages), 1); break;
      case Rule::kNone: refined.assign(size_t(pages), 0); break;
      case Rule::kShare:
        refined = FirstPages(order, std::max(1, int32_t(std::ceil(rule.value * pages))), pages);
        break;
      case Rule::kMargin: refined = MarginPages(coarse, threshold, rule.value, kPageSize); break;
      case Rule::kWeight: refined = WeightPages(coarse, rule.value, kPageSize); break;
    }
    tallies[r].pages_share.push_back(RefinedShare(refined));
    for (size_t g = 0; g < G; ++g) {
      float unused;
      const std::vector<uint8_t> keep =
          TopPSet(MixedEstimate(coarse[g], fine[g], refined, kPageSize), p, &unused);
      double mass, error;
      truth.heads[g].Score(keep, &mass, &error);
      tallies[r].mass.push_back(mass);
      tallies[r].error_ratio.push_back(error / std::max(truth.oracle_error[g], 1e-9));
      tallies[r].kept_ratio.push_back(double(std::count(keep.begin(), keep.end(), uint8_t(1))) /
                                      std::max(full_kept[g], 1.0));
    }
  }
  return tallies;
}

int Main(int argc, char** argv) {
  tools::ParseToolFlags(argc, argv, __FILE__,
                        "twl_plane_study: a two-tier (bit-plane) INT4 score pass");
  const double p = absl::GetFlag(FLAGS_p);
  const std::vector<std::string> workloads = absl::GetFlag(FLAGS_workloads);
  const std::vector<int32_t> contexts = CheckSyntheticStudyFlags(
      p, workloads, absl::GetFlag(FLAGS_contexts), absl::GetFlag(FLAGS_seeds),
      absl::GetFlag(FLAGS_layers), absl::GetFlag(FLAGS_steps));
  tools::RequireWritableDir("out", absl::GetFlag(FLAGS_out));
  for (int32_t ctx : contexts)
    tools::RequireFlag(absl::GetFlag(FLAGS_steps) < ctx, "steps", "below every context");
  const std::vector<double> shares =
      tools::DoubleListFlag(absl::GetFlag(FLAGS_shares), "shares", 1e-6, 1.0);
  const std::vector<double> margins =
      tools::DoubleListFlag(absl::GetFlag(FLAGS_margins), "margins", 0.0, 100.0);
  const std::vector<double> weights =
      tools::DoubleListFlag(absl::GetFlag(FLAGS_weights), "weights", 1e-12, 1.0);

  std::vector<Rule> rules = {Rule{Rule::kFull}, Rule{Rule::kNone}};
  for (double s : shares) rules.push_back(Rule{Rule::kShare, s});
  for (double m : margins) rules.push_back(Rule{Rule::kMargin, m});
  for (double e : weights) rules.push_back(Rule{Rule::kWeight, e});
  const double today = FineBytesPerToken(kHeadDim, kPageSize);
  Table table = StudyTable(
      p, {"workload", "ctx", "rule"}, {"kept_ratio_mean", "kept_ratio_max"},
      absl::StrFormat("(32 + 17 + 32 x pages) / %.0f B/token; kept_ratio = kept tokens / the "
                      "full INT4 pass's",
                      today));
  Plot plot = MassVsBytesPlot("Bit-plane two-tier pass: min true mass vs estimation bytes");
  for (const std::string& w : workloads) {
    for (int32_t ctx : contexts) {
      const SyntheticRun run{"twl_plane_study", w, ctx, kHeadDim, absl::GetFlag(FLAGS_seeds),
                             absl::GetFlag(FLAGS_layers), absl::GetFlag(FLAGS_steps)};
      const absl::StatusOr<std::vector<RuleTally>> tallies = RunSyntheticGroups(
          run, rules.size(),
          [&](const std::vector<float>& k, const std::vector<float>& v, int32_t len,
              const std::vector<std::vector<float>>& qs) {
            return EvalGroup(rules, k, v, len, qs, float(p));
          });
      if (!tallies.ok()) {
        std::fprintf(stderr, "\ntwl_plane_study: %s\n",
                     std::string(tallies.status().message()).c_str());
        return 1;
      }
      std::vector<double> xs[3], ys[3];  // share, margin and weight rules
      for (size_t r = 0; r < rules.size(); ++r) {
        const Rule& rule = rules[r];
        const RuleTally& t = (*tallies)[r];
        const double share = MeanOf(t.pages_share);
        const double bytes =
            rule.kind == Rule::kFull ? 1.0 : PlaneBytesPerToken(kHeadDim, kPageSize, share) / today;
        const double mass_min = *std::min_element(t.mass.begin(), t.mass.end());
        std::vector<Cell> row = TallyRow({w, ctx, rule.Name()}, t, bytes, p);
        row.push_back(Cell(MeanOf(t.kept_ratio), 3));
        row.push_back(Cell(*std::max_element(t.kept_ratio.begin(), t.kept_ratio.end()), 3));
        table.AddRow(std::move(row));
        if (rule.kind != Rule::kFull && rule.kind != Rule::kNone) {
          const int series = rule.kind == Rule::kShare ? 0 : rule.kind == Rule::kMargin ? 1 : 2;
          xs[series].push_back(bytes);
          ys[series].push_back(mass_min);
        }
      }
      static const char* const kSeries[3] = {"share", "margin", "weight"};
      for (int series = 0; series < 3; ++series) {
        plot.AddSeries(absl::StrFormat("%s %s %dk", kSeries[series], w, ctx / 1024),
                       xs[series], ys[series], Style::kLinePoints);
      }
    }
  }
  return FinishStudy("twl_plane_study", absl::GetFlag(FLAGS_out), "plane_study", p, table,
                     std::move(plot));
}

}  // namespace
}  // namespace twl::bench

int main(int argc, char** argv) { return twl::bench::Main(argc, argv); }

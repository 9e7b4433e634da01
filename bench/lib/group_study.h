// The frame the CPU studies of the pruner's score pass share (twl_coarse_study,
// twl_plane_study): synthetic layers of one workload and context, each KV head at each decode
// step handed with its GQA group's scaled queries to the study's own evaluation, whose per-rule
// tallies are gathered in KV-head order (deterministic whatever the threads do); plus the truth
// every rule is scored against, the statistics the tables print, and the table and plot
// themselves. The studies differ only in what a rule reads, so only that stays in their mains.
#pragma once

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "lib/head_truth.h"
#include "lib/png_plot.h"
#include "lib/table.h"

namespace twl::bench {

// One rule's outcomes: per query head the true mass of its kept set, its output error over the
// oracle top-p's and its kept tokens over the full INT4 pass's (left empty by studies that do
// not measure it); per KV head and step the share of the pages the rule refined.
struct RuleTally {
  std::vector<double> mass, error_ratio, kept_ratio, pages_share;
  void Append(const RuleTally& other);
};

// Nearest-rank quantile (NaN when empty), mean (NaN when empty), share of values >= floor
// (up to 1e-12 below counts: a mass that equals the floor passes).
double Quantile(std::vector<double> v, double q);
double MeanOf(const std::vector<double>& v);
double ShareAtLeast(const std::vector<double>& v, double floor);

// A GQA group's truth at one step: per query head the exact attention (FP32 logits over the
// FP16 K, HeadTruth) and the output error of the exact top-p set at p (the oracle every rule's
// error is compared with). k, v: [len][d]; they must outlive the result (HeadTruth keeps v).
struct GroupTruth {
  std::vector<HeadTruth> heads;
  std::vector<double> oracle_error;
  static GroupTruth Of(const std::vector<float>& k, const std::vector<float>& v, int32_t len,
                       int32_t d, const std::vector<std::vector<float>>& qs, float p);
};

// A study's evaluation of one KV head at one step: k, v [len][d] (FP16 values as floats), the
// group's queries qs[g][d] already scaled by 1/sqrt(d); returns one tally per rule. Called from
// several threads at once (one per KV head).
using GroupEval = std::function<absl::StatusOr<std::vector<RuleTally>>(
    const std::vector<float>& k, const std::vector<float>& v, int32_t len,
    const std::vector<std::vector<float>>& qs)>;

struct SyntheticRun {
  std::string tool;      // for the progress line on stderr
  std::string workload;  // a preset of bench/lib/synthetic_attention.h (checked by the tool)
  int32_t ctx = 0, head_dim = 128, seeds = 1, layers = 2, steps = 2;
};

// The flags both studies take, checked the same way (a bad one: a clear message, exit 2):
// p in (0, 1), workloads among peaked, mixed, flat, contexts in [256, 2^20], seeds in
// [1, 1000], layers and steps in [1, 64]. Returns the contexts.
std::vector<int32_t> CheckSyntheticStudyFlags(double p, const std::vector<std::string>& workloads,
                                              const std::vector<std::string>& contexts,
                                              int32_t seeds, int32_t layers, int32_t steps);

// Every rule's tallies over seeds 1..seeds x layers of the workload at ctx: `eval` on every KV
// head of every decode step, gathered in (seed, layer, KV head, step) order.
absl::StatusOr<std::vector<RuleTally>> RunSyntheticGroups(const SyntheticRun& run, size_t rules,
                                                          const GroupEval& eval);

// The goals every rule is judged by: a query head's true mass >= p - kStudyMassSlack (heads_ok)
// and its output error within kStudyErrorRatioGoal x the oracle top-p's (err_ok).
inline constexpr double kStudyMassSlack = 0.02;
inline constexpr double kStudyErrorRatioGoal = 1.3;

// A study's table: the columns `keys` (the row's workload, context and rule), the tally
// columns of TallyRow, then `extra`; titled with the goals above at p, then "bytes_frac = "
// and `bytes_frac`, the study's own account of its bytes (and of its extra columns).
Table StudyTable(double p, std::vector<std::string> keys, const std::vector<std::string>& extra,
                 const std::string& bytes_frac);

// `keys`, then one rule's tally under StudyTable's tally columns: pages_mean, pages_max,
// bytes_frac (the study's estimation bytes over today's full pass), heads_ok, mass_min,
// mass_median, err_ok, err_ratio_median.
std::vector<Cell> TallyRow(std::vector<Cell> keys, const RuleTally& t, double bytes_frac, double p);

// The plot both studies draw, one series per family of rules: the min true mass over query
// heads against the estimation bytes over today's full INT4 pass.
Plot MassVsBytesPlot(std::string title);

// A study's last step: ends the progress line on stderr, marks p - kStudyMassSlack on the plot,
// then PrintAndWriteStudy (lib/study_output.h); returns the tool's exit code.
int FinishStudy(const std::string& tool, const std::string& dir, const std::string& stem,
                double p, const Table& table, Plot plot);

}  // namespace twl::bench

// twl_accuracy's sections (bench/accuracy_main.cc parses the flags and runs them): the
// options and sizes they share, the helpers several use, and one entry point per section.
//   common.cc         sizes per mode, generator overrides, the method tables, output paths
//   synthetic.cc      1. synthetic attention (the method table), 1b. its goals over seeds
//   needle.cc         2. needle retrieval
//   real_models.cc    3. stories260K, 4. the byte-level model on real text
//   goals_report.cc   the goals table of issue 15 and the exit decision
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <map>
#include <set>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "lib/accuracy_goals.h"
#include "lib/accuracy_stats.h"
#include "lib/capi_attention.h"
#include "lib/llama2_model.h"
#include "lib/model_eval.h"
#include "lib/model_methods.h"
#include "lib/png_plot.h"
#include "lib/ref_pipeline.h"
#include "lib/synthetic_attention.h"
#include "lib/table.h"
#include "oneapi/tbb/parallel_for.h"

namespace twl::accuracy_tool {

namespace tb = ::twl::bench;
using Clock = std::chrono::steady_clock;

struct Sizes {
  int prompts = 3, layers = 2, ctx = 16384, kv_heads = 8, group = 4, head_dim = 128;
  int steps = 2, page_size = 16;
  std::vector<int> needle_ctx = {4096, 16384};
  std::vector<float> depths;
  int needle_kv = 2, needle_group = 4, needle_trials = 1;
  int model_tokens = 512;  // stories260K context
  int model_seqs = 24;  // sampled sequences of the stories260K section
};

struct Options {
  std::vector<std::pair<std::string, float>> gen;  // --gen name=value overrides
  std::string mode = "default";
  std::string out_dir;  // required: results never land in the working directory
  bool synthetic = true, needle = true, model = true;
  uint64_t seed = 1;
  int model_tokens = 0;                  // 0: size default
  int seeds = 5;                         // seeds of the goal measurements (--seeds)
  int model_seqs = 0;                    // 0: size default (stories260K sampled sequences)
  bool realtext = false;                 // --only realtext (needs --text-model, --text)
  std::string text_model, text_file;
  std::set<std::string> known_failures;  // asserted goal ids expected to fail (--known-failures)
  int text_ctx = 4096, text_seqs = 4, passkeys = 8;
  // More oracle top-p rows (--text-oracle-p): what p this model needs to read a given share.
  std::vector<float> text_oracle_p;
  bool goals_seeds = true;               // the per-seed synthetic goal runs
  int ctx = 0, prompts = 0, layers = 0;  // 0: size default (synthetic section)
};

// Results the goals section reads.
struct GoalInputs {
  std::map<std::string, tb::MethodAggregate> synth;               // by MethodKey
  std::vector<tb::GoalCheck> model_goals;  // from the stories260K section
  // Per goal method (twilight-int4/int8/int2 at p = kGoalP) and seed.
  std::map<std::string, std::vector<tb::SeedMeasure>> seeds;
  bool have_synth = false, have_needle = false, have_model = false, have_seeds = false;

  tb::SeedMeasure& SeedFor(const std::string& method, uint64_t seed) {
    std::vector<tb::SeedMeasure>& v = seeds[method];
    for (tb::SeedMeasure& m : v)
      if (m.seed == seed) return m;
    v.emplace_back();
    v.back().seed = seed;
    return v.back();
  }
};


// Method name of Twilight with INT4 per token (TWL_K_SCHEME_TOKEN), and the p of the tables.
inline constexpr const char* kTok = "twilight-int4tok";
inline const std::vector<float> kPs = {0.8f, 0.9f, 0.95f, 0.99f};

Sizes SizesFor(const std::string& mode);
double Elapsed(Clock::time_point t0);
std::string Path(const Options& o, const std::string& name);
// Applies --gen overrides of generator parameters (see lib/synthetic_attention.h).
bool ApplyGen(const Options& o, tb::SyntheticConfig* c);
// Exits 1 with the message when s is an error (a tool, not the library).
void Check(const absl::Status& s, const char* what);
// Prints a section's table and writes it as <stem>.csv and <stem>.json in the output folder.
void PrintAndWrite(const tb::Table& t, const Options& o, const std::string& stem);
std::string BudgetLabel(const tb::Method& m);
// A method of the tables: INT`bits` estimate under the default K scheme; Quest budgets in
// tokens (> 0) or as a fraction of the context (> 0).
tb::Method M(const std::string& name, tb::MethodKind kind, float p, int bits, int tokens = 0,
             float fraction = 0);
tb::Method MTok(const std::string& name, tb::MethodKind kind, float p);
tb::Method MDS(const std::string& name, tb::MethodKind kind, float p, float fraction);
void QuantizeAll(tb::PagedLayer& layer);
std::vector<tb::Method> SyntheticMethods(int ctx);
std::vector<tb::Method> NeedleMethods();
std::string MethodKey(const tb::Method& m);
// Layer `layer` of the synthetic sections at the mode's sizes, generator seed `seed`, with the
// --gen overrides (the key subspace's rank clamped below head_dim / 2); exits on an error.
tb::SyntheticLayer SectionLayer(const Options& o, const Sizes& sz, uint64_t seed, int layer);
// Every method on one generated layer of `ctx` tokens (paged, every estimate quantized), in
// parallel, decoding the steps of lengths seq_len; exits on an error.
std::vector<tb::MethodResult> RunMethodsOnLayer(const tb::SyntheticLayer& gen, int page_size,
                                                int kv_heads, int head_dim, int ctx,
                                                const std::vector<tb::Method>& methods,
                                                const std::vector<int32_t>& seq_len);

void RunSynthetic(const Options& o, const Sizes& sz, GoalInputs* goals);
void RunSyntheticSeeds(const Options& o, const Sizes& sz, GoalInputs* goals);
void RunNeedle(const Options& o, const Sizes& sz, GoalInputs* goals);
void RunModel(const Options& o, const Sizes& sz, GoalInputs* goals);
void RunRealText(const Options& o, GoalInputs* goals);
// Prints and writes the goals; false when an asserted goal failed.
bool ReportGoals(const Options& o, const GoalInputs& g);

}  // namespace twl::accuracy_tool

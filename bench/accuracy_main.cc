// twl_accuracy: does adaptive top-p (Twilight) keep dense attention's answers at a fraction of
// the budget? Compares, on the same inputs, dense attention, oracle top-p, Twilight (full
// selector + pruner, INT4/INT8/INT2/FP16 estimation), Quest at fixed page budgets and Quest +
// Twilight pruner, on:
//   1. synthetic attention shaped like real LLM attention (lib/synthetic_attention.h): the
//      full method table on the first seed, and the goal methods on --seeds seeds;
//   2. needle retrieval: low-margin needles with a distinct value per token among similar-key
//      distractors, depths 0.1-0.9, every seed;
//   3. the real trained model stories260K: sequences sampled with temperature, scored
//      teacher-forced (NLL change with intervals, share of the context read);
//   4. (--text-model) a byte-level model trained on Austen (bench/train/) at 4k context:
//      held-out perplexity and pass-key retrieval inside real text.
// Everything runs on the CPU references and the runtime's CPU backend, so no GPU is needed.
// Prints tables, writes CSV/JSON + PNG plots into --out, and ends with the goals of issue 15
// (lib/accuracy_goals.h); the exit status is 3 when an asserted goal fails.
//
//   twl_accuracy --out DIR [--ci | --quick | --full] [--seeds N] [--only ...] (see --help)
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "accuracy/accuracy_tool.h"

using namespace twl::accuracy_tool;  // NOLINT: the tool's own sections

namespace {

constexpr char kUsage[] =
    "usage: twl_accuracy --out DIR [--ci | --quick | --full] [--seeds N] [--seed N]\n"
    "  [--only synthetic,seeds,needle,model,realtext]  (default: all but realtext)\n"
    "  [--ctx N] [--prompts N] [--layers N]  (synthetic section sizes)\n"
    "  [--model-tokens N] [--model-seqs N]  (stories260K: sampled sequences and their length)\n"
    "  [--text-model FILE --text FILE [--text-ctx N] [--text-seqs N] [--passkeys N (0: none)]\n"
    "   [--text-oracle-p P,...  (extra oracle top-p rows, each p in (0, 1])]]\n"
    "      (realtext: a byte-level llama2.c model from bench/train/ and held-out text)\n"
    "  [--gen key_scale=2,outlier_scale=6,...  synthetic generator parameters]\n"
    "  [--known-failures id,...]  asserted goals (ids in the goals table: int4-mass, "
    "int4-error,\n      int4-needle-kept, int4-needle-error (the default scheme), int4tok-* (per "
    "token), int2-rejected)\n      expected to fail; "
    "one that passes fails the run\n"
    "Exit status: 0 when every asserted goal is met, 3 when one fails, 1 on errors, 2 on bad "
    "flags.\n";

bool ParseInt(const std::string& s, int lo, int hi, int* out) {
  int v = 0;
  if (!absl::SimpleAtoi(s, &v) || v < lo || v > hi) return false;
  *out = v;
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  bool only = false;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i], v;
    const size_t eq = a.find('=');
    const bool inline_value = a.rfind("--", 0) == 0 && eq != std::string::npos;
    if (inline_value) {
      v = a.substr(eq + 1);
      a = a.substr(0, eq);
    }
    auto value = [&]() -> bool {
      if (inline_value) return true;
      if (i + 1 >= argc) return false;
      v = argv[++i];
      return true;
    };
    auto bad = [&](const char* why) {
      std::fprintf(stderr, "twl_accuracy: %s: %s\n%s", a.c_str(), why, kUsage);
      return 2;
    };
    int n = 0;
    if (a == "--quick" || a == "--full" || a == "--ci") {
      o.mode = a.substr(2);
    } else if (a == "--help" || a == "-h") {
      std::printf("%s", kUsage);
      return 0;
    } else if (a == "--gen") {
      if (!value()) return bad("needs a value");
      for (absl::string_view kv : absl::StrSplit(v, ',')) {
        const std::vector<std::string> parts = absl::StrSplit(kv, '=');
        float f = 0;
        if (parts.size() != 2 || !absl::SimpleAtof(parts[1], &f))
          return bad("wants name=value[,name=value]");
        o.gen.emplace_back(parts[0], f);
      }
      tb::SyntheticConfig probe;
      if (!ApplyGen(o, &probe)) return bad("unknown generator parameter");
    } else if (a == "--only") {
      if (!value()) return bad("needs a value");
      only = true;
      o.synthetic = o.needle = o.model = o.goals_seeds = o.realtext = false;
      for (absl::string_view part : absl::StrSplit(v, ',')) {
        if (part == "synthetic")
          o.synthetic = true;
        else if (part == "seeds")
          o.goals_seeds = true;
        else if (part == "needle")
          o.needle = true;
        else if (part == "model")
          o.model = true;
        else if (part == "realtext")
          o.realtext = true;
        else
          return bad("unknown section");
      }
    } else if (a == "--known-failures") {
      if (!value()) return bad("needs a value");
      for (absl::string_view id : absl::StrSplit(v, ',', absl::SkipEmpty()))
        o.known_failures.insert(std::string(id));
    } else if (a == "--out" || a == "--text-model" || a == "--text") {
      if (!value() || v.empty()) return bad("needs a value");
      (a == "--out" ? o.out_dir : a == "--text" ? o.text_file : o.text_model) = v;
    } else if (a == "--text-oracle-p") {
      if (!value()) return bad("needs a value");
      for (absl::string_view part : absl::StrSplit(v, ',')) {
        float p = 0;
        if (!absl::SimpleAtof(part, &p) || !(p > 0.0f && p <= 1.0f))
          return bad("wants p values in (0, 1], comma separated");
        o.text_oracle_p.push_back(p);
      }
    } else if (a == "--passkeys") {
      if (!value() || !ParseInt(v, 0, 1 << 20, &n)) return bad("needs an integer in [0, 2^20]");
      o.passkeys = n;
    } else if (a == "--seed") {
      if (!value() || !absl::SimpleAtoi(v, &o.seed)) return bad("needs an unsigned integer");
    } else if (a == "--seeds" || a == "--ctx" || a == "--prompts" || a == "--layers" ||
               a == "--model-tokens" || a == "--model-seqs" || a == "--text-ctx" ||
               a == "--text-seqs") {
      if (!value() || !ParseInt(v, 1, 1 << 20, &n)) return bad("needs an integer in [1, 2^20]");
      if (a == "--seeds") o.seeds = n;
      if (a == "--ctx") o.ctx = n;
      if (a == "--prompts") o.prompts = n;
      if (a == "--layers") o.layers = n;
      if (a == "--model-tokens") o.model_tokens = n;
      if (a == "--model-seqs") o.model_seqs = n;
      if (a == "--text-ctx") o.text_ctx = n;
      if (a == "--text-seqs") o.text_seqs = n;
    } else {
      return bad("unknown flag");
    }
  }
  if (o.out_dir.empty()) {
    std::fprintf(stderr, "twl_accuracy: --out DIR is required\n%s", kUsage);
    return 2;
  }
  if (!only && !o.text_model.empty()) o.realtext = true;
  Sizes sz = SizesFor(o.mode);
  if (o.ctx > 0) sz.ctx = o.ctx;
  if (o.prompts > 0) sz.prompts = o.prompts;
  if (o.layers > 0) sz.layers = o.layers;
  std::error_code ec;
  std::filesystem::create_directories(o.out_dir, ec);
  if (ec) {
    std::fprintf(stderr, "twl_accuracy: cannot create %s: %s\n", o.out_dir.c_str(),
                 ec.message().c_str());
    return 1;
  }
  const auto t0 = Clock::now();
  std::printf("twl_accuracy (%s): CPU references, %d seeds from %llu, output in %s\n",
              o.mode.c_str(), o.seeds, static_cast<unsigned long long>(o.seed),
              o.out_dir.c_str());
  GoalInputs goals;
  if (o.synthetic) RunSynthetic(o, sz, &goals);
  if (o.goals_seeds) RunSyntheticSeeds(o, sz, &goals);
  if (o.needle) RunNeedle(o, sz, &goals);
  if (o.model) RunModel(o, sz, &goals);
  if (o.realtext) RunRealText(o, &goals);
  const bool met = ReportGoals(o, goals);
  std::printf("\ntotal %.1f s; CSV/JSON/PNG in %s\n", Elapsed(t0), o.out_dir.c_str());
  return met ? 0 : 3;
}

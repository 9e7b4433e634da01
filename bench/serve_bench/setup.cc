// twl_serve_bench: helpers, the method table and the workloads' generator specs.
#include "serve_bench/serve_bench.h"

namespace twl::serve_bench {

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "twl_serve_bench: %s\n", what.c_str());
  std::exit(1);
}

[[noreturn]] void BadFlag(const std::string& what) { tools::ToolFlagError(what); }

void Check(twl_status s, twl_runtime* rt, const char* what) {
  if (s == TWL_OK) return;
  std::string msg = absl::StrCat(what, ": ", twl_status_string(s), ": ", twl_runtime_last_error(rt));
  if (s == TWL_CAPACITY_EXHAUSTED || s == TWL_OUT_OF_MEMORY) throw DoesNotFit{std::move(msg)};
  Die(msg);
}

void CheckOk(const absl::Status& s, const char* what) {
  if (s.ok()) return;
  std::string msg = absl::StrCat(what, ": ", s.message());
  if (absl::IsResourceExhausted(s)) throw DoesNotFit{std::move(msg)};
  Die(msg);
}

bool ParseInts(const std::string& s, std::vector<int32_t>* out, std::string* err) {
  out->clear();
  for (absl::string_view p : absl::StrSplit(s, ',', absl::SkipEmpty())) {
    int32_t v = 0;
    if (!absl::SimpleAtoi(p, &v) || v < 1) {
      *err = absl::StrCat("'", p, "' is not a positive integer");
      return false;
    }
    out->push_back(v);
  }
  if (out->empty()) *err = "empty list";
  return !out->empty();
}

std::vector<std::string> ParseNames(const std::string& s) {
  std::vector<std::string> v;
  for (absl::string_view p : absl::StrSplit(s, ',', absl::SkipEmpty())) v.emplace_back(p);
  return v;
}

double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

bool MakeMethod(const std::string& name, int32_t quest_budget, Method* m) {
  m->name = name;
  if (name == "twilight") {
    m->backend = TWL_BACKEND_GPU_OFFLOAD;
  } else if (name == "twilight-blocks" || name == "twilight-rows") {
    m->backend = TWL_BACKEND_GPU_OFFLOAD;  // the GPU cache's granularity pinned (issue 11)
    m->cache_rows = name == "twilight-rows" ? 2 : 1;
  } else if (name == "twilight-b8k") {
    m->backend = TWL_BACKEND_GPU_OFFLOAD;
    m->budget_tokens = quest_budget;
  } else if (name == "quest-b8k") {
    m->backend = TWL_BACKEND_GPU_OFFLOAD;
    m->budget_tokens = quest_budget;
    m->quest_alone = true;
  } else if (name == "hbm-b8k") {
    m->backend = TWL_BACKEND_GPU_HBM;
    m->budget_tokens = quest_budget;
  } else if (name == "hbm") {
    m->backend = TWL_BACKEND_GPU_HBM;
  } else if (name == "hbm-graph" || name == "hbm-bound") {
    m->backend = TWL_BACKEND_GPU_HBM;
    m->bound = true;
    m->graph = name == "hbm-graph";
  } else if (name == "offload-graph" || name == "offload-bound") {
    m->backend = TWL_BACKEND_GPU_OFFLOAD;
    m->bound = true;
    m->graph = name == "offload-graph";
  } else if (name == "hbm-full") {
    m->backend = TWL_BACKEND_GPU_HBM;
    m->selector = TWL_SELECTOR_FULL;
  } else if (name == "hbm-quest") {
    m->backend = TWL_BACKEND_GPU_HBM;
    m->selector = TWL_SELECTOR_QUEST;
  } else if (name == "twilight-quest") {
    m->backend = TWL_BACKEND_GPU_OFFLOAD;
    m->selector = TWL_SELECTOR_QUEST;
  } else if (name == "dense-hbm") {
    m->backend = TWL_BACKEND_GPU_HBM;
    m->dense = true;
  } else if (name == "full-offload") {
    m->backend = TWL_BACKEND_GPU_OFFLOAD;
    m->dense = true;
  } else if (name == "twilight-disk") {
    m->backend = TWL_BACKEND_GPU_OFFLOAD;
    m->disk = true;
  } else if (name == "cpu" || name == "cpu-bound") {
    m->backend = TWL_BACKEND_CPU;
    m->bound = name == "cpu-bound";
  } else if (name == "cpu-dense") {
    m->backend = TWL_BACKEND_CPU;
    m->dense = true;
  } else {
    return false;
  }
  return true;
}

SynthSpec Workload(const std::string& name, int32_t kv_heads, int32_t head_dim, int32_t context,
                   uint64_t seed, int32_t layer) {
  SynthSpec s;
  s.seed = seed * 1000003ull + uint64_t(layer) * 7919ull;
  s.num_kv_heads = kv_heads;
  s.head_dim = head_dim;
  if (name == "mixed") {
    // Two flat KV heads: lognormal scores with sigma ~ beta_flat and no hot tokens, so exact
    // top-p at 0.95 keeps about a third of their context.
    s.flat_mask = 0x3u;
    s.beta_flat = 2.0f;
    s.gamma_flat = 0.0f;
  } else if (name == "drifting") {
    s.region_tokens = std::max(64, context / 8);
  }
  return s;
}

double Median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace twl::serve_bench

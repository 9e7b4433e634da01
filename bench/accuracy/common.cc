// twl_accuracy: what the sections share (see accuracy_tool.h).
#include "accuracy/accuracy_tool.h"

namespace twl::accuracy_tool {

Sizes SizesFor(const std::string& mode) {
  Sizes s;
  // Depths away from the always-kept sink and last pages.
  for (int i = 1; i <= 9; ++i) s.depths.push_back(i / 10.0f);
  if (mode == "quick") {
    s.prompts = 2;
    s.layers = 1;
    s.ctx = 2048;
    s.kv_heads = 4;
    s.group = 4;
    s.steps = 2;
    s.needle_ctx = {1024, 4096};
    s.depths = {0.1f, 0.3f, 0.5f, 0.7f, 0.9f};
    s.needle_kv = 2;
    s.needle_group = 2;
  } else if (mode == "ci") {
    // The goal checks at CI size (ctest, 2 cores, well under 60 s).
    s.prompts = 2;
    s.layers = 1;
    s.ctx = 2048;
    s.kv_heads = 4;
    s.group = 4;
    s.head_dim = 64;
    s.steps = 2;
    s.needle_ctx = {2048};
    s.depths = {0.1f, 0.3f, 0.5f, 0.7f, 0.9f};
    s.needle_kv = 2;
    s.needle_group = 4;
    s.model_tokens = 128;
    s.model_seqs = 6;
  } else if (mode == "full") {
    s.prompts = 4;
    s.layers = 2;
    s.ctx = 32768;
    s.steps = 4;
    s.needle_ctx = {4096, 16384, 65536, 131072};
    s.model_tokens = 512;
  }
  return s;
}

double Elapsed(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

std::string Path(const Options& o, const std::string& name) { return o.out_dir + "/" + name; }

// Applies --gen overrides of generator parameters (see lib/synthetic_attention.h).
bool ApplyGen(const Options& o, tb::SyntheticConfig* c) {
  const std::map<std::string, float*> fields = {{"key_scale", &c->key_scale},
                                                {"mean_scale", &c->mean_scale},
                                                {"noise_scale", &c->noise_scale},
                                                {"outlier_scale", &c->outlier_scale},
                                                {"topic_std_min", &c->topic_std_min},
                                                {"topic_std_max", &c->topic_std_max},
                                                {"local_offset_min", &c->local_offset_min},
                                                {"local_offset_max", &c->local_offset_max},
                                                {"sink_offset_min", &c->sink_offset_min},
                                                {"sink_offset_max", &c->sink_offset_max},
                                                {"spike_offset_min", &c->spike_offset_min},
                                                {"spike_offset_max", &c->spike_offset_max},
                                                {"query_drift", &c->query_drift},
                                                {"query_noise", &c->query_noise},
                                                {"group_similarity", &c->group_similarity},
                                                {"topic_correlation", &c->topic_correlation},
                                                {"rope_theta", &c->rope_theta}};
  for (const auto& [name, v] : o.gen) {
    if (name == "num_outlier_channels") {
      c->num_outlier_channels = int32_t(v);
    } else if (name == "subspace_rank") {
      c->subspace_rank = int32_t(v);
    } else if (auto it = fields.find(name); it != fields.end()) {
      *it->second = v;
    } else {
      return false;
    }
  }
  return true;
}

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "twl_accuracy: %s: %s\n", what, s.ToString().c_str());
    std::exit(1);
  }
}

void PrintAndWrite(const tb::Table& t, const Options& o, const std::string& stem) {
  t.Print();
  Check(t.WriteCsv(Path(o, stem + ".csv")), "csv");
  Check(t.WriteJson(Path(o, stem + ".json")), "json");
}

std::string BudgetLabel(const tb::Method& m) {
  if (m.kind != tb::MethodKind::kQuest && m.kind != tb::MethodKind::kQuestTwilight) return "-";
  if (m.budget_tokens > 0) return absl::StrFormat("%d tok", m.budget_tokens);
  return absl::StrFormat("%g%%", 100.0 * m.budget_fraction);
}

tb::Method M(const std::string& name, tb::MethodKind kind, float p, int bits, int tokens,
             float fraction) {
  tb::Method m;
  m.name = name;
  m.kind = kind;
  m.p = p;
  m.k_bits = bits;
  m.k_scheme = twl::kKSchemeDefault;  // "twilight-intN": the library's default scheme
  m.budget_tokens = tokens;
  m.budget_fraction = fraction;
  return m;
}

// INT4 per token (core/page_layout.h, kKSchemeToken; C API TWL_K_SCHEME_TOKEN): the scheme
// the library used by default until the per-page-channel one (kKSchemeDefault) replaced it.
tb::Method MTok(const std::string& name, tb::MethodKind kind, float p) {
  tb::Method m = M(name, kind, p, 4);
  m.k_scheme = twl::kKSchemeToken;
  return m;
}

// Double Sparsity (pipeline/select/double_sparsity/) in Quest's place: same fixed budgets.
tb::Method MDS(const std::string& name, tb::MethodKind kind, float p, float fraction) {
  tb::Method m = M(name, kind, p, 4, 0, fraction);
  m.selector = twl::SelectorKind::kDoubleSparsity;
  return m;
}

// Every estimation copy the methods read, made before methods run in parallel (Quant is not
// thread-safe while rows are pending).
void QuantizeAll(tb::PagedLayer& layer) {
  for (int bits : {2, 4, 8}) layer.Quant(bits, twl::kKSchemeDefault);
  layer.Quant(4, twl::kKSchemeToken);
}

// The methods compared on the synthetic workload (Quest token budgets below the context).
std::vector<tb::Method> SyntheticMethods(int ctx) {
  using K = tb::MethodKind;
  std::vector<tb::Method> ms;
  ms.push_back(M("dense", K::kDense, 1.0f, 16));
  for (float p : kPs) ms.push_back(M("oracle", K::kOracle, p, 16));
  for (int bits : {4, 8, 2, 16}) {
    const std::string name =
        bits == 16 ? "twilight-fp16est" : absl::StrFormat("twilight-int%d", bits);
    for (float p : kPs) ms.push_back(M(name, K::kTwilight, p, bits));
    if (bits == 4)
      for (float p : kPs) ms.push_back(MTok(kTok, K::kTwilight, p));
  }
  for (float f : {0.01f, 0.04f, 0.08f, 0.16f, 0.32f, 0.5f})
    ms.push_back(M("quest", K::kQuest, 0, 4, 0, f));
  for (int t : {256, 1024, 4096})
    if (t < ctx / 2) ms.push_back(M("quest", K::kQuest, 0, 4, t));
  for (float f : {0.04f, 0.08f, 0.25f})
    ms.push_back(M("quest+twilight", K::kQuestTwilight, 0.95f, 4, 0, f));
  // At Quest's budgets, for the row against Quest at equal budget (bench/ACCURACY.md).
  for (float f : {0.04f, 0.08f, 0.16f}) ms.push_back(MDS("double-sparsity", K::kQuest, 0, f));
  for (float f : {0.04f, 0.08f, 0.25f})
    ms.push_back(MDS("double-sparsity+twilight", K::kQuestTwilight, 0.95f, f));
  return ms;
}

std::vector<tb::Method> NeedleMethods() {
  using K = tb::MethodKind;
  return {M("dense", K::kDense, 1.0f, 16),
          M("oracle", K::kOracle, 0.95f, 16),
          M("twilight-int4", K::kTwilight, 0.95f, 4),
          M("twilight-int4", K::kTwilight, 0.8f, 4),
          MTok(kTok, K::kTwilight, 0.95f),
          M("twilight-int8", K::kTwilight, 0.95f, 8),
          M("twilight-int2", K::kTwilight, 0.95f, 2),
          M("quest", K::kQuest, 0, 4, 0, 0.01f),
          M("quest", K::kQuest, 0, 4, 0, 0.04f),
          M("quest", K::kQuest, 0, 4, 256),
          M("quest+twilight", K::kQuestTwilight, 0.95f, 4, 0, 0.08f)};
}

std::string MethodKey(const tb::Method& m) {
  return absl::StrFormat("%s|%g|%d|%s", m.name, m.p, m.k_bits, BudgetLabel(m));  // name: scheme
}

std::vector<tb::MethodResult> RunMethodsOnLayer(const tb::SyntheticLayer& gen, int page_size,
                                                int kv_heads, int head_dim, int ctx,
                                                const std::vector<tb::Method>& methods,
                                                const std::vector<int32_t>& seq_len) {
  tb::PagedLayer layer(page_size, kv_heads, head_dim, ctx);
  Check(layer.Append(ctx, gen.k.data(), gen.v.data()), "append");
  QuantizeAll(layer);
  std::vector<absl::StatusOr<tb::MethodResult>> res(methods.size(),
                                                    absl::UnknownError("not run"));
  tbb::parallel_for(size_t(0), methods.size(), [&](size_t i) {
    res[i] = tb::RunMethod(layer, methods[i], seq_len, gen.q.data(), gen.num_q_heads());
  });
  std::vector<tb::MethodResult> out;
  for (size_t i = 0; i < methods.size(); ++i) {
    Check(res[i].status(), methods[i].name.c_str());
    out.push_back(std::move(*res[i]));
  }
  return out;
}

tb::SyntheticLayer SectionLayer(const Options& o, const Sizes& sz, uint64_t seed, int layer) {
  tb::SyntheticConfig sc;
  sc.num_tokens = sz.ctx;
  sc.num_kv_heads = sz.kv_heads;
  sc.group_size = sz.group;
  sc.head_dim = sz.head_dim;
  sc.subspace_rank = std::min(sc.subspace_rank, sz.head_dim / 2 - 2);
  sc.num_steps = sz.steps;
  sc.seed = seed;
  ApplyGen(o, &sc);
  absl::StatusOr<tb::SyntheticLayer> gen = tb::GenerateLayer(sc, layer);
  Check(gen.status(), "GenerateLayer");
  return std::move(*gen);
}

}  // namespace twl::accuracy_tool

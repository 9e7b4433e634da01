// twl_accuracy sections 1 and 1b: synthetic attention, and its goal methods over seeds.
#include "accuracy/accuracy_tool.h"

namespace twl::accuracy_tool {

// ---- 1. Synthetic attention ----------------------------------------------------------------
void RunSynthetic(const Options& o, const Sizes& sz, GoalInputs* goals) {
  const auto t0 = Clock::now();
  const std::vector<tb::Method> methods = SyntheticMethods(sz.ctx);
  std::vector<tb::MethodAggregate> agg(methods.size());
  for (size_t i = 0; i < methods.size(); ++i)
    agg[i].p = methods[i].kind == tb::MethodKind::kOracle ||
                       methods[i].kind == tb::MethodKind::kTwilight ||
                       methods[i].kind == tb::MethodKind::kQuestTwilight
                   ? methods[i].p
                   : 0.0;
  tb::Table heads({"prompt", "layer", "head", "topic_std", "local_logit", "sink_logit",
                   "spike_logit", "context", "oracle95_kept", "twilight95_kept", "oracle95_pct"});
  tb::Table prompts({"prompt", "context", "oracle95_mean_kept", "oracle95_mean_pct", "oracle95_min",
                     "oracle95_max", "twilight95_mean_pct"});
  prompts.title = "Oracle top-p budget per prompt (p = 0.95, mean over heads, last step)";
  std::printf(
      "\n[synthetic] %d prompts x %d layers, context %d, %d KV heads x %d, d %d, "
      "page %d, %d steps, %zu methods\n",
      sz.prompts, sz.layers, sz.ctx, sz.kv_heads, sz.group, sz.head_dim, sz.page_size, sz.steps,
      methods.size());
  // Per (prompt, layer): oracle / twilight p=0.95 budgets for the spread plot.
  std::vector<std::pair<std::string, std::vector<double>>> spread;
  for (int pr = 0; pr < sz.prompts; ++pr) {
    std::vector<double> prompt_pct, prompt_kept, prompt_tw;
    for (int l = 0; l < sz.layers; ++l) {
      const tb::SyntheticLayer gen = SectionLayer(o, sz, o.seed * 1000 + uint64_t(pr), l);
      std::vector<int32_t> seq_len;
      for (int t = 0; t < sz.steps; ++t) seq_len.push_back(gen.StepLength(t));
      const int hq = gen.num_q_heads();
      const std::vector<tb::MethodResult> res = RunMethodsOnLayer(
          gen, sz.page_size, sz.kv_heads, sz.head_dim, sz.ctx, methods, seq_len);
      for (size_t i = 0; i < methods.size(); ++i) agg[i].Add(res[i], res[0]);
      // Per-head budgets at the last step.
      const tb::MethodResult* oracle95 = nullptr;
      const tb::MethodResult* tw95 = nullptr;
      for (size_t i = 0; i < methods.size(); ++i) {
        if (methods[i].kind == tb::MethodKind::kOracle && methods[i].p == 0.95f)
          oracle95 = &res[i];
        if (methods[i].name == "twilight-int4" && methods[i].p == 0.95f) tw95 = &res[i];
      }
      const int last = sz.steps - 1;
      std::vector<double> budgets;
      for (int h = 0; h < hq; ++h) {
        const size_t at = size_t(last) * hq + h;
        const double ctx = seq_len[size_t(last)];
        const tb::HeadProfile& hp = gen.heads[size_t(h)];
        heads.AddRow({pr, l, h, tb::Cell(hp.topic_std, 3), tb::Cell(hp.local_logit, 3),
                      tb::Cell(hp.sink_logit, 3), tb::Cell(hp.spike_logit, 3), int(ctx),
                      oracle95->kept[at], tw95->kept[at],
                      tb::Cell(100.0 * oracle95->kept[at] / ctx, 3)});
        budgets.push_back(oracle95->kept[at]);
        prompt_pct.push_back(100.0 * oracle95->kept[at] / ctx);
        prompt_kept.push_back(oracle95->kept[at]);
        prompt_tw.push_back(100.0 * tw95->kept[at] / ctx);
      }
      spread.emplace_back(absl::StrFormat("prompt %d layer %d", pr, l), budgets);
      const tb::Summary b = tb::Summarize(budgets);
      std::printf(
          "  .. prompt %d layer %d done (%.1f s): oracle p=0.95 budget per head "
          "min %.0f p50 %.0f max %.0f tokens\n",
          pr, l, Elapsed(t0), b.min, b.p50, b.max);
      std::fflush(stdout);
    }
    const tb::Summary k = tb::Summarize(prompt_kept);
    prompts.AddRow({pr, sz.ctx, tb::Cell(k.mean, 5), tb::Cell(tb::Summarize(prompt_pct).mean, 3),
                    int(k.min), int(k.max), tb::Cell(tb::Summarize(prompt_tw).mean, 3)});
  }

  tb::Table t({"method", "p", "k_bits", "budget", "kept_mean", "kept_p50", "kept_p99", "kept_min",
               "kept_max", "kept_pct", "attended_pct", "true_mass_own", "true_mass_min",
               "below_p-0.01", "true_mass_union", "rel_err_mean", "rel_err_p50", "rel_err_p99",
               "err_vs_oracle"});
  t.title = absl::StrFormat(
      "Synthetic attention: %d prompts x %d layers x %d steps x %d query heads, context %d",
      sz.prompts, sz.layers, sz.steps, sz.kv_heads * sz.group, sz.ctx);
  std::map<float, double> oracle_err;
  for (size_t i = 0; i < methods.size(); ++i)
    if (methods[i].kind == tb::MethodKind::kOracle)
      oracle_err[methods[i].p] = tb::Summarize(agg[i].rel_err).mean;
  for (size_t i = 0; i < methods.size(); ++i) {
    const tb::Method& m = methods[i];
    const tb::MethodAggregate& a = agg[i];
    const tb::Summary kept = tb::Summarize(a.kept), err = tb::Summarize(a.rel_err);
    const tb::Summary own = tb::Summarize(a.own_mass);
    const bool top_p = a.p > 0;
    const double ratio =
        top_p && oracle_err.count(m.p) && oracle_err[m.p] > 0 ? err.mean / oracle_err[m.p] : NAN;
    t.AddRow({m.name, top_p ? tb::Cell(double(m.p), 3) : tb::Cell("-"),
              m.kind == tb::MethodKind::kDense || m.kind == tb::MethodKind::kOracle
                  ? tb::Cell("-")
                  : tb::Cell(m.k_bits),
              BudgetLabel(m), tb::Cell(kept.mean, 5), tb::Cell(kept.p50, 5), tb::Cell(kept.p99, 5),
              tb::Cell(kept.min, 5), tb::Cell(kept.max, 5),
              tb::Cell(100 * tb::Summarize(a.kept_frac).mean, 3),
              tb::Cell(100 * tb::Summarize(a.attended_frac).mean, 3), tb::Cell(own.mean, 4),
              tb::Cell(own.min, 4), top_p ? tb::Cell(a.FractionBelow(0.01), 3) : tb::Cell("-"),
              tb::Cell(tb::Summarize(a.union_mass).mean, 4), tb::Cell(err.mean, 3),
              tb::Cell(err.p50, 3), tb::Cell(err.p99, 3), tb::Cell(ratio, 3)});
    goals->synth[MethodKey(m)] = a;
  }
  goals->have_synth = true;
  PrintAndWrite(t, o, "synthetic");
  prompts.Print();
  Check(heads.WriteCsv(Path(o, "synthetic_heads.csv")), "csv");
  Check(prompts.WriteCsv(Path(o, "synthetic_prompts.csv")), "csv");

  // Plots.
  {
    tb::Plot p;
    p.title = "Oracle top-p budget per head (p = 0.95), heads sorted";
    p.x_label = "query head (sorted by budget)";
    p.y_label = "kept tokens";
    p.log_y = true;
    for (size_t s = 0; s < spread.size() && s < 8; ++s) {
      std::vector<double> xs, ys = spread[s].second;
      std::sort(ys.begin(), ys.end());
      for (size_t h = 0; h < ys.size(); ++h) xs.push_back(double(h));
      p.AddSeries(spread[s].first, xs, ys, tb::Style::kLinePoints);
    }
    p.AddHLine(sz.ctx, "context");
    Check(p.SavePng(Path(o, "budget_spread.png")), "png");
  }
  {
    tb::Plot p;
    p.title = "Attention output error vs budget";
    p.x_label = "tokens attended (% of context)";
    p.y_label = "relative error vs dense (mean)";
    p.log_x = p.log_y = true;
    std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> series;
    std::vector<std::string> order;
    for (size_t i = 1; i < methods.size(); ++i) {
      const std::string key = methods[i].name;
      if (!series.count(key)) order.push_back(key);
      series[key].first.push_back(100 * tb::Summarize(agg[i].attended_frac).mean);
      series[key].second.push_back(tb::Summarize(agg[i].rel_err).mean);
    }
    for (const std::string& k : order) {
      // Not a structured binding: clang 14 cannot capture one in the lambda below.
      auto& xs = series[k].first;
      auto& ys = series[k].second;
      // Lines join points in order of budget.
      std::vector<size_t> idx(xs.size());
      for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
      std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return xs[a] < xs[b]; });
      std::vector<double> sx, sy;
      for (size_t i : idx) {
        sx.push_back(xs[i]);
        sy.push_back(ys[i]);
      }
      p.AddSeries(k, sx, sy, tb::Style::kLinePoints);
    }
    Check(p.SavePng(Path(o, "error_vs_budget.png")), "png");
  }
  {
    tb::Plot p;
    p.title = "True attention mass of each head's top-p set";
    p.x_label = "p";
    p.y_label = "true mass kept (mean over heads)";
    std::map<std::string, std::pair<std::vector<double>, std::vector<double>>> series;
    std::vector<std::string> order;
    for (size_t i = 0; i < methods.size(); ++i) {
      if (methods[i].kind != tb::MethodKind::kOracle &&
          methods[i].kind != tb::MethodKind::kTwilight)
        continue;
      const std::string key = methods[i].name;
      if (!series.count(key)) order.push_back(key);
      series[key].first.push_back(methods[i].p);
      series[key].second.push_back(tb::Summarize(agg[i].own_mass).mean);
    }
    for (const std::string& k : order)
      p.AddSeries(k, series[k].first, series[k].second, tb::Style::kLinePoints);
    p.AddSeries("mass = p", {0.8, 0.99}, {0.8, 0.99}, tb::Style::kDashed);
    Check(p.SavePng(Path(o, "mass_vs_p.png")), "png");
  }
  std::printf("[synthetic] done in %.1f s\n", Elapsed(t0));
}

// ---- 1b. Synthetic goals over seeds -----------------------------------------------------------
// The goal methods only (oracle top-p and Twilight at kGoalP with INT4/INT8/INT2 estimation),
// on --seeds independent seeds of the synthetic workload: per-head mass and per-seed error
// ratios for the goals.
void RunSyntheticSeeds(const Options& o, const Sizes& sz, GoalInputs* goals) {
  const auto t0 = Clock::now();
  using K = tb::MethodKind;
  const std::vector<tb::Method> methods = {
      M("dense", K::kDense, 1.0f, 16), M("oracle", K::kOracle, tb::kGoalP, 16),
      M("twilight-int4", K::kTwilight, tb::kGoalP, 4),
      MTok(kTok, K::kTwilight, tb::kGoalP),
      M("twilight-int8", K::kTwilight, tb::kGoalP, 8),
      M("twilight-int2", K::kTwilight, tb::kGoalP, 2)};
  std::printf(
      "\n[seeds] goal methods on %d seeds x %d prompts x %d layers x %d steps x %d query heads, "
      "context %d\n",
      o.seeds, sz.prompts, sz.layers, sz.steps, sz.kv_heads * sz.group, sz.ctx);
  for (int si = 0; si < o.seeds; ++si) {
    const uint64_t seed = o.seed + uint64_t(si);
    for (int pr = 0; pr < sz.prompts; ++pr) {
      for (int l = 0; l < sz.layers; ++l) {
        const tb::SyntheticLayer gen = SectionLayer(o, sz, seed * 1000 + uint64_t(pr), l);
        std::vector<int32_t> seq_len;
        for (int t = 0; t < sz.steps; ++t) seq_len.push_back(gen.StepLength(t));
        const std::vector<tb::MethodResult> res = RunMethodsOnLayer(
            gen, sz.page_size, sz.kv_heads, sz.head_dim, sz.ctx, methods, seq_len);
        const std::vector<double> e_orc = tb::RowRelErrors(res[1].out, res[0].out, sz.head_dim);
        for (size_t i = 2; i < methods.size(); ++i) {
          tb::SeedMeasure& m = goals->SeedFor(methods[i].name, seed);
          const std::vector<double> e = tb::RowRelErrors(res[i].out, res[0].out, sz.head_dim);
          m.own_mass.insert(m.own_mass.end(), res[i].own_mass.begin(), res[i].own_mass.end());
          m.err.insert(m.err.end(), e.begin(), e.end());
          m.oracle_err.insert(m.oracle_err.end(), e_orc.begin(), e_orc.end());
        }
      }
    }
    const tb::SeedMeasure& m4 = goals->SeedFor("twilight-int4", seed);
    double se = 0, so = 0;
    for (size_t j = 0; j < m4.err.size(); ++j) {
      se += m4.err[j];
      so += m4.oracle_err[j];
    }
    std::printf(
        "  .. seed %llu (%.1f s): INT4 heads with mass >= p-%.2f: %.2f%%, error %.3fx oracle\n",
        static_cast<unsigned long long>(seed), Elapsed(t0), tb::kMassTolerance,
        100 * tb::FractionAtLeast(m4.own_mass, tb::kGoalP - tb::kMassTolerance), se / so);
    std::fflush(stdout);
  }
  goals->have_seeds = true;
  // Per-seed table.
  tb::Table t({"method", "seed", "heads", "mass_ok_pct", "mass_min", "mass_p50", "err_mean",
               "oracle_err_mean", "err_ratio"});
  t.title = absl::StrFormat("Synthetic goal methods per seed (p = %g)", tb::kGoalP);
  for (const auto& [name, v] : goals->seeds)
    for (const tb::SeedMeasure& m : v) {
      if (m.own_mass.empty()) continue;
      const tb::Summary ms = tb::Summarize(m.own_mass);
      const double e = tb::Summarize(m.err).mean, eo = tb::Summarize(m.oracle_err).mean;
      t.AddRow({name, int(m.seed), int(m.own_mass.size()),
                tb::Cell(100 * tb::FractionAtLeast(m.own_mass, tb::kGoalP - tb::kMassTolerance), 4),
                tb::Cell(ms.min, 4), tb::Cell(ms.p50, 4), tb::Cell(e, 4), tb::Cell(eo, 4),
                tb::Cell(e / eo, 4)});
    }
  t.Print();
  Check(t.WriteCsv(Path(o, "seeds.csv")), "csv");
  std::printf("[seeds] done in %.1f s\n", Elapsed(t0));
}

}  // namespace twl::accuracy_tool

// twl_accuracy section 2: needle retrieval.
#include "accuracy/accuracy_tool.h"

namespace twl::accuracy_tool {

// ---- 2. Needle retrieval --------------------------------------------------------------------
// Low-margin needles (margins -1, 0, +1: the needle holds ~27-73% of a head's attention before
// distractors), a distinct value per needle token (dropping any needle token changes the
// output), distractor keys along the needle's own key direction 1 logit below it, at depths
// 0.1-0.9 (away from the always-kept sink and last pages). Scored per (case, query head) by
// the share of the needle's dense attention mass in the tokens the method attends, and by the
// relative output error vs dense. Runs every seed of --seeds; feeds the needle goals.
tb::NeedleSpec NeedleFor(float depth, int variant) {
  tb::NeedleSpec n;
  n.depth = depth;
  n.length = 8;
  n.margin = float(variant % 3) - 1.0f;
  n.num_distractors = 32;
  n.distractor_gap = 1.0f;
  n.value_scale = 4.0f;
  n.distinct_values = true;
  return n;
}

void RunNeedle(const Options& o, const Sizes& sz, GoalInputs* goals) {
  const auto t0 = Clock::now();
  const std::vector<tb::Method> methods = NeedleMethods();
  const int seeds = o.seeds;
  std::printf("\n[needle] contexts");
  for (int c : sz.needle_ctx) std::printf(" %d", c);
  std::printf(
      ", %zu depths, %d KV heads x %d, %d seeds, %zu methods; distinct needle values, "
      "margins -1/0/+1, 32 distractors 1 logit below\n",
      sz.depths.size(), sz.needle_kv, sz.needle_group, seeds, methods.size());
  const size_t nc = sz.needle_ctx.size(), nd = sz.depths.size();
  // Per method: needle mass kept and error per (seed, ctx, depth, head) sample, with the
  // context and depth index of each sample.
  std::vector<std::vector<double>> kept(methods.size()), err(methods.size()),
      att(methods.size());
  std::vector<int> sample_ctx, sample_depth;
  std::vector<double> needle_share;  // dense share of the needle per sample
  size_t i_oracle = 0;
  for (size_t i = 0; i < methods.size(); ++i)
    if (methods[i].kind == tb::MethodKind::kOracle) i_oracle = i;
  for (int si = 0; si < seeds; ++si) {
    const uint64_t seed = o.seed + uint64_t(si);
    for (size_t c = 0; c < nc; ++c) {
      const int ctx = sz.needle_ctx[c];
      for (size_t di = 0; di < nd; ++di) {
        tb::SyntheticConfig sc;
        sc.num_tokens = ctx;
        sc.num_kv_heads = sz.needle_kv;
        sc.group_size = sz.needle_group;
        sc.head_dim = sz.head_dim;
        sc.num_steps = 1;
        sc.seed = seed * 7919 + uint64_t(c) * 101 + di;
        ApplyGen(o, &sc);
        const tb::NeedleSpec needle = NeedleFor(sz.depths[di], int(di + c + size_t(si)));
        absl::StatusOr<tb::SyntheticLayer> gen = tb::GenerateLayer(sc, 0, needle);
        Check(gen.status(), "GenerateLayer(needle)");
        const std::vector<int32_t> seq_len = {gen->StepLength(0)};
        const int hq = gen->num_q_heads();
        const std::vector<tb::MethodResult> res = RunMethodsOnLayer(
            *gen, sz.page_size, sz.needle_kv, sz.head_dim, ctx, methods, seq_len);
        std::vector<double> share;
        for (size_t i = 0; i < methods.size(); ++i) {
          const std::vector<double> k =
              tb::NeedleMassKept(*gen, 0, res[i], 0, i == 0 ? &share : nullptr);
          const std::vector<double> e = tb::RowRelErrors(res[i].out, res[0].out, sz.head_dim);
          for (int h = 0; h < hq; ++h) {
            kept[i].push_back(k[size_t(h)]);
            err[i].push_back(e[size_t(h)]);
            att[i].push_back(double(res[i].kept_kv[size_t(h / sz.needle_group)]) / seq_len[0]);
          }
        }
        for (int h = 0; h < hq; ++h) {
          sample_ctx.push_back(int(c));
          sample_depth.push_back(int(di));
          needle_share.push_back(share[size_t(h)]);
        }
      }
    }
    // Goal inputs of this seed: the last hq * nc * nd samples of each method.
    const size_t per_seed = size_t(sz.needle_kv * sz.needle_group) * nc * nd;
    for (size_t i = 0; i < methods.size(); ++i) {
      if (methods[i].kind != tb::MethodKind::kTwilight || methods[i].p != tb::kGoalP) continue;
      tb::SeedMeasure& m = goals->SeedFor(methods[i].name, seed);
      const size_t from = kept[i].size() - per_seed;
      m.needle_kept.assign(kept[i].begin() + int64_t(from), kept[i].end());
      m.needle_err.assign(err[i].begin() + int64_t(from), err[i].end());
      m.needle_oracle_err.assign(err[i_oracle].begin() + int64_t(from), err[i_oracle].end());
    }
    std::printf("  .. seed %llu done (%.1f s)\n", static_cast<unsigned long long>(seed),
                Elapsed(t0));
    std::fflush(stdout);
  }
  const tb::Summary ns = tb::Summarize(needle_share);
  std::vector<std::string> cols = {"method", "p", "k_bits", "budget"};
  for (int c : sz.needle_ctx) cols.push_back(absl::StrFormat("ok@%d", c));
  for (const char* x : {"ok_all", "kept_mean", "kept_min", "err_mean", "err_p99",
                               "err_vs_oracle", "attended_pct"})
    cols.push_back(x);
  tb::Table t(cols);
  t.title = absl::StrFormat(
      "Needle retrieval, %d seeds: ok = the attended tokens hold >= %.0f%% of the needle's "
      "dense mass (per case and query head); needle share of dense attention min %.2f p50 %.2f "
      "max %.2f",
      seeds, 100 * tb::kNeedleKept, ns.min, ns.p50, ns.max);
  tb::Table by_depth({"method", "budget", "p", "context", "depth", "ok", "kept_mean", "err_mean"});
  const double oracle_err = tb::Summarize(err[i_oracle]).mean;
  tb::Plot plot;
  plot.title = "Needle mass kept vs depth (all contexts and seeds)";
  plot.x_label = "needle depth (fraction of context)";
  plot.y_label = "share of cases keeping >= 90% of the needle";
  plot.y_min = -0.05;
  plot.y_max = 1.05;
  for (size_t i = 0; i < methods.size(); ++i) {
    const tb::Method& m = methods[i];
    std::vector<tb::Cell> row = {
        m.name,
        m.kind == tb::MethodKind::kQuest || m.kind == tb::MethodKind::kDense
            ? tb::Cell("-")
            : tb::Cell(double(m.p), 3),
        m.kind == tb::MethodKind::kDense || m.kind == tb::MethodKind::kOracle ? tb::Cell("-")
                                                                              : tb::Cell(m.k_bits),
        BudgetLabel(m)};
    for (size_t c = 0; c < nc; ++c) {
      std::vector<double> v;
      for (size_t j = 0; j < kept[i].size(); ++j)
        if (sample_ctx[j] == int(c)) v.push_back(kept[i][j]);
      row.push_back(tb::Cell(100 * tb::FractionAtLeast(v, tb::kNeedleKept), 4));
    }
    const tb::Summary k = tb::Summarize(kept[i]), e = tb::Summarize(err[i]);
    row.push_back(tb::Cell(100 * tb::FractionAtLeast(kept[i], tb::kNeedleKept), 4));
    row.push_back(tb::Cell(k.mean, 4));
    row.push_back(tb::Cell(k.min, 3));
    row.push_back(tb::Cell(e.mean, 3));
    row.push_back(tb::Cell(e.p99, 3));
    row.push_back(tb::Cell(oracle_err > 0 ? e.mean / oracle_err : NAN, 3));
    row.push_back(tb::Cell(100 * tb::Summarize(att[i]).mean, 3));
    t.AddRow(row);
    std::vector<double> xs, ys;
    for (size_t di = 0; di < nd; ++di) {
      for (size_t c = 0; c < nc; ++c) {
        std::vector<double> kv, ev;
        for (size_t j = 0; j < kept[i].size(); ++j)
          if (sample_ctx[j] == int(c) && sample_depth[j] == int(di)) {
            kv.push_back(kept[i][j]);
            ev.push_back(err[i][j]);
          }
        by_depth.AddRow({m.name, BudgetLabel(m), tb::Cell(double(m.p), 3), sz.needle_ctx[c],
                         tb::Cell(double(sz.depths[di]), 3),
                         tb::Cell(tb::FractionAtLeast(kv, tb::kNeedleKept), 3),
                         tb::Cell(tb::Summarize(kv).mean, 4), tb::Cell(tb::Summarize(ev).mean, 3)});
      }
      std::vector<double> kv;
      for (size_t j = 0; j < kept[i].size(); ++j)
        if (sample_depth[j] == int(di)) kv.push_back(kept[i][j]);
      xs.push_back(sz.depths[di]);
      ys.push_back(tb::FractionAtLeast(kv, tb::kNeedleKept));
    }
    std::string label = m.name;
    if (m.kind == tb::MethodKind::kQuest)
      label += " " + BudgetLabel(m);
    else if (m.kind == tb::MethodKind::kQuestTwilight)
      label += " " + BudgetLabel(m) + absl::StrFormat(" p=%g", m.p);
    else if (m.kind != tb::MethodKind::kDense)
      label += absl::StrFormat(" p=%g", m.p);
    plot.AddSeries(label, xs, ys, tb::Style::kLinePoints);
  }
  goals->have_needle = true;
  PrintAndWrite(t, o, "needle");
  Check(by_depth.WriteCsv(Path(o, "needle_by_depth.csv")), "csv");
  Check(plot.SavePng(Path(o, "needle.png")), "png");
  std::printf("[needle] done in %.1f s\n", Elapsed(t0));
}

}  // namespace twl::accuracy_tool

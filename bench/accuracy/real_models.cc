// twl_accuracy sections 3 and 4: stories260K, and the byte-level model on real text.
#include "accuracy/accuracy_tool.h"

namespace twl::accuracy_tool {

// ---- 3. Real models -------------------------------------------------------------------------
// Methods on a real model, each a fresh attention state per sequence.
struct ModelMethod {
  std::string name;
  float p = 1.0f;
  int bits = 0;  // estimation width (0: none)
  tb::MethodFactory make;
};

tb::MethodFactory CApiFactory(const tb::LlamaConfig& c, const tb::CApiAttentionOptions& opt) {
  return [c, opt]() -> absl::StatusOr<tb::MethodInstance> {
    absl::StatusOr<std::unique_ptr<tb::CApiAttention>> a = tb::CApiAttention::Create(c, opt);
    if (!a.ok()) return a.status();
    std::shared_ptr<tb::CApiAttention> owner(std::move(*a));
    return tb::MethodInstance{owner, owner->Fn(), [owner] { return &owner->read(); }};
  };
}

tb::MethodFactory OracleFactory(const tb::LlamaConfig& c, float p) {
  return [c, p]() -> absl::StatusOr<tb::MethodInstance> {
    auto owner = std::make_shared<tb::OracleTopPAttention>(c, p);
    return tb::MethodInstance{owner, owner->Fn(), [owner] { return &owner->read(); }};
  };
}

tb::MethodFactory DenseFactory(const tb::LlamaConfig& c) {
  return [c]() -> absl::StatusOr<tb::MethodInstance> {
    auto owner = std::make_shared<tb::DenseAttention>(c);
    return tb::MethodInstance{owner, owner->Fn(), nullptr};
  };
}

ModelMethod MM(const std::string& name, float p, int bits, tb::MethodFactory f) {
  return ModelMethod{name, p, bits, std::move(f)};
}

// Per method and sequence: NLL change vs dense FP32 (mean per token), KL, top-1 agreement.
struct SeqScore {
  std::vector<double> dnll, kl, agree;  // per sequence
  double nll_sum = 0;                   // over all scored tokens
  int64_t tokens = 0;
  tb::ReadStats read;
};


// Scores `seqs` with every method (teacher-forced) against dense FP32 on the same tokens.
std::vector<SeqScore> ScoreMethods(const tb::Llama2Model& model,
                                   const std::vector<std::vector<int32_t>>& seqs,
                                   const std::vector<ModelMethod>& methods, int32_t long_from,
                                   Clock::time_point t0) {
  std::vector<SeqScore> out(methods.size());
  std::vector<std::vector<double>> ref_nll(seqs.size());
  std::vector<std::vector<std::vector<float>>> ref_logits(seqs.size());
  // Sequences in parallel (each method instance owns its cache); TBB uses the cores we have.
  tbb::parallel_for(size_t(0), seqs.size(), [&](size_t s) {
    tb::DenseAttention dense(model.config());
    Check(tb::ScoreTokens(model, seqs[s], dense.Fn(), &ref_nll[s], &ref_logits[s]), "dense");
  });
  // Every (method, sequence) pair in parallel: each method instance owns its cache.
  const size_t S = seqs.size(), jobs = methods.size() * S;
  std::vector<double> dnll(jobs), kl(jobs), agree(jobs), nll(jobs);
  std::vector<tb::ReadStats> reads(jobs);
  tbb::parallel_for(size_t(0), jobs, [&](size_t j) {
    const size_t m = j / S, s = j % S;
    absl::StatusOr<tb::MethodInstance> inst = methods[m].make();
    Check(inst.status(), methods[m].name.c_str());
    if (inst->read) inst->read()->long_from = long_from;
    std::vector<double> my_nll;
    std::vector<std::vector<float>> my_logits;
    Check(tb::ScoreTokens(model, seqs[s], inst->fn, &my_nll, &my_logits), "score");
    double d = 0, k = 0, a = 0, n = 0;
    for (size_t t = 0; t < my_nll.size(); ++t) {
      d += my_nll[t] - ref_nll[s][t];
      n += my_nll[t];
      k += tb::KlDivergence(tb::Softmax(ref_logits[s][t]), tb::Softmax(my_logits[t]));
      a += tb::Argmax(ref_logits[s][t]) == tb::Argmax(my_logits[t]) ? 1 : 0;
    }
    const double cnt = double(my_nll.size());
    dnll[j] = d / cnt;
    kl[j] = k / cnt;
    agree[j] = a / cnt;
    nll[j] = n;
    if (inst->read) reads[j] = *inst->read();
  });
  for (size_t m = 0; m < methods.size(); ++m) {
    for (size_t s = 0; s < S; ++s) {
      const size_t j = m * S + s;
      out[m].dnll.push_back(dnll[j]);
      out[m].kl.push_back(kl[j]);
      out[m].agree.push_back(agree[j]);
      out[m].nll_sum += nll[j];
      out[m].tokens += int64_t(seqs[s].size()) - 1;
      out[m].read.Merge(reads[j]);
    }
  }
  std::printf("  .. %zu methods x %zu sequences scored (%.1f s)\n", methods.size(), S, Elapsed(t0));
  std::fflush(stdout);
  return out;
}

// "L0 L1 ..." read shares of the long contexts in percent, space-separated ("" for dense).
std::string LayerShares(const ModelMethod& m, const tb::ReadStats& r) {
  std::string out;
  if (!m.make || r.layer_context_long.empty()) return out;
  for (size_t l = 0; l < r.layer_context_long.size(); ++l)
    absl::StrAppend(&out, l ? " " : "", absl::StrFormat("%.0f", 100 * r.LayerLongShare(l)));
  return out;
}

double ReadPct(const ModelMethod& m, const tb::ReadStats& r, bool long_only) {
  if (!m.make || r.context == 0) return 100.0;
  return 100.0 * (long_only ? r.LongShare() : r.Share());
}

// stories260K: many sequences sampled from the dense model with temperature, each scored
// teacher-forced by every method: NLL change vs dense FP32 with a t-interval over sequences,
// KL, top-1 agreement and the share of the context actually read (KV-head union).
void RunModel(const Options& o, const Sizes& sz, GoalInputs* goals) {
  const auto t0 = Clock::now();
  absl::StatusOr<tb::Llama2Model> model = tb::Llama2Model::Load(tb::Stories260KPath());
  if (!model.ok()) {
    std::printf("\n[model] skipped: %s\n", model.status().ToString().c_str());
    return;
  }
  const tb::LlamaConfig& c = model->config();
  const int steps = std::min(o.model_tokens > 0 ? o.model_tokens : sz.model_tokens, c.seq_len);
  const int nseq = o.model_seqs > 0 ? o.model_seqs : sz.model_seqs;
  const double temperature = 1.0;
  std::printf(
      "\n[model] stories260K (%d layers, %d q / %d KV heads, head dim %d): %d sequences of %d "
      "tokens sampled from dense FP32 at temperature %.1f (seeds %llu..), teacher-forced\n",
      c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim(), nseq, steps, temperature,
      static_cast<unsigned long long>(o.seed * 1000));
  std::vector<std::vector<int32_t>> seqs(static_cast<size_t>(nseq));
  tbb::parallel_for(0, nseq, [&](int i) {
    tb::DenseAttention dense(c);
    absl::StatusOr<std::vector<int32_t>> t =
        tb::SampleTokens(*model, dense.Fn(), 1, steps, temperature, o.seed * 1000 + uint64_t(i));
    Check(t.status(), "sample");
    seqs[size_t(i)] = *std::move(t);
  });
  std::vector<ModelMethod> methods;
  {
    tb::CApiAttentionOptions d;
    d.p = 1.0f;
    methods.push_back(MM("runtime dense (p=1)", 1.0f, 4, CApiFactory(c, d)));
  }
  for (float p : {0.9f, 0.95f, 0.99f}) methods.push_back(MM("oracle top-p", p, 0, OracleFactory(c, p)));
  {
    tb::CApiAttentionOptions x;
    x.p = 0.95f;
    x.k_bits = 16;
    methods.push_back(MM("twilight exact scores (FP16)", 0.95f, 16, CApiFactory(c, x)));
  }
  for (float p : kPs) {
    tb::CApiAttentionOptions x;
    x.p = p;
    methods.push_back(MM("twilight-int4", p, 4, CApiFactory(c, x)));
  }
  for (float p : {0.9f, 0.95f}) {
    tb::CApiAttentionOptions x;
    x.p = p;
    x.k_scheme = TWL_K_SCHEME_TOKEN;
    methods.push_back(MM(kTok, p, 4, CApiFactory(c, x)));
  }
  for (int bits : {8, 2}) {
    tb::CApiAttentionOptions x;
    x.p = 0.95f;
    x.k_bits = bits;
    methods.push_back(MM(absl::StrFormat("twilight-int%d", bits), 0.95f, bits, CApiFactory(c, x)));
  }
  {
    tb::CApiAttentionOptions x;
    x.p = 0.95f;
    x.selector = TWL_SELECTOR_QUEST;
    x.budget_fraction = 0.25f;
    methods.push_back(MM("quest 25% + twilight-int4", 0.95f, 4, CApiFactory(c, x)));
    x.p = 1.0f;  // every candidate: Quest alone
    methods.push_back(MM("quest 25% alone", 1.0f, 4, CApiFactory(c, x)));
    // The same Quest selection in FP32 outside the runtime (lib/model_methods.h).
    methods.push_back(MM("quest 25% alone (FP32 reference)", 1.0f, 0,
                         [c]() -> absl::StatusOr<tb::MethodInstance> {
                           auto owner = std::make_shared<tb::QuestRefAttention>(c, 4, 0.25f, 1);
                           return tb::MethodInstance{owner, owner->Fn(),
                                                     [owner] { return &owner->read(); }};
                         }));
    // Double Sparsity at Quest's budget (head dim 8 here: it scores from 1 channel of 8).
    x.selector = TWL_SELECTOR_DOUBLE_SPARSITY;
    x.p = 0.95f;
    methods.push_back(MM("double-sparsity 25% + twilight-int4", 0.95f, 4, CApiFactory(c, x)));
    x.p = 1.0f;
    methods.push_back(MM("double-sparsity 25% alone", 1.0f, 4, CApiFactory(c, x)));
  }
  const std::vector<SeqScore> sc = ScoreMethods(*model, seqs, methods, 128, t0);
  tb::Table t({"method", "p", "k_bits", "read_pct", "read_pct_ctx>=128", "dnll_mean", "dnll_lo",
               "dnll_hi", "dnll_pct", "kl_mean", "top1_agree_pct"});
  double dense_nll = 0;
  {
    // Dense NLL per token from the first method's sums minus its change.
    double dsum = 0;
    for (size_t s = 0; s < seqs.size(); ++s) dsum += sc[0].dnll[s] * double(seqs[s].size() - 1);
    dense_nll = (sc[0].nll_sum - dsum) / double(sc[0].tokens);
  }
  t.title = absl::StrFormat(
      "stories260K: %d sampled sequences x %d tokens; NLL change vs dense FP32 (dense NLL "
      "%.4f nats/token), mean over sequences with a 95%% t-interval; read = tokens attended "
      "(KV-head union) / context",
      nseq, steps, dense_nll);
  std::vector<double> kl_p, kl_v, agree_v, dn_v;
  for (size_t m = 0; m < methods.size(); ++m) {
    const tb::Interval ci = tb::MeanInterval95(sc[m].dnll);
    const ModelMethod& mm = methods[m];
    t.AddRow({mm.name, tb::Cell(double(mm.p), 3), mm.bits > 0 ? tb::Cell(mm.bits) : tb::Cell("-"),
              tb::Cell(ReadPct(mm, sc[m].read, false), 3),
              tb::Cell(ReadPct(mm, sc[m].read, true), 3), tb::Cell(ci.mean, 3),
              tb::Cell(ci.lo, 3), tb::Cell(ci.hi, 3), tb::Cell(100 * ci.mean / dense_nll, 3),
              tb::Cell(tb::Summarize(sc[m].kl).mean, 3),
              tb::Cell(100 * tb::Summarize(sc[m].agree).mean, 4)});
    if (mm.name == "twilight-int4") {
      kl_p.push_back(mm.p);
      kl_v.push_back(tb::Summarize(sc[m].kl).mean);
      agree_v.push_back(tb::Summarize(sc[m].agree).mean);
      dn_v.push_back(ci.mean);
      if (mm.p == tb::kGoalP) {
        tb::GoalCheck g;
        g.goal = "stories260K Twilight INT4 p=0.95: NLL change vs dense (95% CI over sequences)";
        g.measured = absl::StrFormat(
            "%+.4f nats/token [%+.4f, %+.4f] (%+.2f%% of %.3f), reading %.1f%% of contexts >= 128",
            ci.mean, ci.lo, ci.hi, 100 * ci.mean / dense_nll, dense_nll,
            ReadPct(mm, sc[m].read, true));
        g.met = ci.hi <= 0.01 * dense_nll;  // reported: within 1% of dense NLL
        goals->model_goals.push_back(g);
      }
    }
  }
  goals->have_model = true;
  PrintAndWrite(t, o, "model");
  tb::Plot p;
  p.title = "stories260K: Twilight (INT4) vs dense, sampled sequences";
  p.x_label = "p";
  p.y_label = "fraction / nats";
  p.AddSeries("teacher-forced top-1 agreement", kl_p, agree_v, tb::Style::kLinePoints);
  p.AddSeries("mean KL", kl_p, kl_v, tb::Style::kLinePoints);
  p.AddSeries("NLL change", kl_p, dn_v, tb::Style::kLinePoints);
  Check(p.SavePng(Path(o, "model.png")), "png");
  std::printf("[model] done in %.1f s\n", Elapsed(t0));
}

// ---- 4. A real model on real text (bench/train/train_byte_llama.py) ---------------------------
// Byte-level model: held-out perplexity over windows of --text-ctx bytes, and pass-key
// retrieval inside real held-out text, for dense, oracle top-p, Twilight over Full and over
// Quest, and Quest alone.
std::vector<int32_t> Bytes(const std::string& s) {
  std::vector<int32_t> t;
  for (unsigned char ch : s) t.push_back(int32_t(ch));
  return t;
}

void RunRealText(const Options& o, GoalInputs* goals) {
  const auto t0 = Clock::now();
  if (o.text_model.empty() || o.text_file.empty()) {
    std::printf("\n[realtext] skipped: needs --text-model and --text\n");
    return;
  }
  absl::StatusOr<tb::Llama2Model> model = tb::Llama2Model::Load(o.text_model);
  Check(model.status(), "load --text-model");
  const tb::LlamaConfig& c = model->config();
  std::string text;
  {
    std::FILE* f = std::fopen(o.text_file.c_str(), "rb");
    if (!f) {
      std::fprintf(stderr, "twl_accuracy: cannot read %s\n", o.text_file.c_str());
      std::exit(1);
    }
    char buf[65536];
    for (size_t n; (n = std::fread(buf, 1, sizeof(buf), f)) > 0;) text.append(buf, n);
    std::fclose(f);
  }
  const int ctx = std::min(o.text_ctx, c.seq_len);
  if (c.vocab_size != 256) {
    std::fprintf(stderr, "twl_accuracy: --text-model must be byte-level (vocab 256, got %d)\n",
                 c.vocab_size);
    std::exit(1);
  }
  if (int64_t(text.size()) < 2 * int64_t(ctx)) {
    std::fprintf(stderr, "twl_accuracy: --text has %zu bytes, needs at least 2 x %d\n",
                 text.size(), ctx);
    std::exit(1);
  }
  std::printf(
      "\n[realtext] %s (dim %d, %d layers, %d q / %d KV heads, head dim %d, vocab %d) on %s "
      "(%zu bytes): %d windows of %d bytes, %d pass keys\n",
      o.text_model.c_str(), c.dim, c.n_layers, c.n_heads, c.n_kv_heads, c.head_dim(),
      c.vocab_size, o.text_file.c_str(), text.size(), o.text_seqs, ctx, o.passkeys);
  std::vector<ModelMethod> methods;
  methods.push_back(MM("dense (FP32)", 1.0f, 0, DenseFactory(c)));
  methods.push_back(MM("oracle top-p", tb::kGoalP, 0, OracleFactory(c, tb::kGoalP)));
  for (float p : o.text_oracle_p) {
    methods.push_back(MM(absl::StrFormat("oracle top-p %g", p), p, 0, OracleFactory(c, p)));
  }
  {
    tb::CApiAttentionOptions x;
    x.p = tb::kGoalP;
    methods.push_back(MM("twilight over full (int4)", tb::kGoalP, 4, CApiFactory(c, x)));
    {
      tb::CApiAttentionOptions tok = x;
      tok.k_scheme = TWL_K_SCHEME_TOKEN;
      methods.push_back(MM("twilight over full (int4tok)", tb::kGoalP, 4, CApiFactory(c, tok)));
    }
    x.selector = TWL_SELECTOR_QUEST;
    x.budget_fraction = 0.25f;
    methods.push_back(MM("twilight over quest 25% (int4)", tb::kGoalP, 4, CApiFactory(c, x)));
    for (float f : {0.1f, 0.25f}) {
      tb::CApiAttentionOptions q;
      q.p = 1.0f;  // keep every candidate: Quest alone
      q.selector = TWL_SELECTOR_QUEST;
      q.budget_fraction = f;
      methods.push_back(
          MM(absl::StrFormat("quest alone %g%%", 100 * f), 1.0f, 4, CApiFactory(c, q)));
    }
    // Double Sparsity at Quest's budgets (head dim 32 here: 4 channels scored).
    x.selector = TWL_SELECTOR_DOUBLE_SPARSITY;
    methods.push_back(
        MM("twilight over double-sparsity 25% (int4)", tb::kGoalP, 4, CApiFactory(c, x)));
    for (float f : {0.1f, 0.25f}) {
      tb::CApiAttentionOptions q;
      q.p = 1.0f;
      q.selector = TWL_SELECTOR_DOUBLE_SPARSITY;
      q.budget_fraction = f;
      methods.push_back(MM(absl::StrFormat("double-sparsity alone %g%%", 100 * f), 1.0f, 4,
                           CApiFactory(c, q)));
    }
  }
  // Perplexity windows, evenly spaced over the held-out text.
  std::vector<std::vector<int32_t>> seqs;
  const size_t span = text.size() - size_t(ctx);
  for (int i = 0; i < o.text_seqs; ++i)
    seqs.push_back(Bytes(text.substr(span * size_t(i) / size_t(std::max(1, o.text_seqs)),
                                     size_t(ctx))));
  const int32_t long_from = ctx / 4;
  const std::vector<SeqScore> sc = ScoreMethods(*model, seqs, methods, long_from, t0);
  // Pass keys: the training layout (bench/train/train_byte_llama.py) in held-out text with
  // fresh keys at depths 0.1-0.9; greedy answer of 5 bytes after the question.
  std::vector<std::vector<int>> hit(methods.size(), std::vector<int>(size_t(o.passkeys), 0));
  {
    std::mt19937_64 rng(o.seed * 31 + 7);
    std::vector<std::vector<int32_t>> prompts;
    std::vector<std::string> keys;
    for (int i = 0; i < o.passkeys; ++i) {
      std::string key;
      for (int j = 0; j < 5; ++j) key += char('0' + int(rng() % 10));
      const std::string plant = " The pass key is " + key + ". Remember it. " + key +
                                " is the pass key. ";
      const std::string ask = " What is the pass key? The pass key is ";
      const size_t body = size_t(ctx) - plant.size() - ask.size() - 5;
      const size_t start = size_t(rng() % (text.size() - body));
      std::string b = text.substr(start, body);
      const double depth = o.passkeys > 1 ? 0.1 + 0.8 * i / (o.passkeys - 1) : 0.5;
      const size_t at = size_t(depth * double(body));
      prompts.push_back(Bytes(b.substr(0, at) + plant + b.substr(at) + ask));
      keys.push_back(key);
    }
    const size_t P = size_t(o.passkeys);
    tbb::parallel_for(size_t(0), methods.size() * P, [&](size_t j) {
      const size_t m = j / P, i = j % P;
      absl::StatusOr<tb::MethodInstance> inst = methods[m].make();
      Check(inst.status(), methods[m].name.c_str());
      absl::StatusOr<std::vector<int32_t>> ans = tb::GreedyAfter(*model, prompts[i], inst->fn, 5);
      Check(ans.status(), "passkey");
      std::string got;
      for (int32_t b : *ans) got += char(b);
      hit[m][i] = got == keys[i] ? 1 : 0;
    });
    std::printf("  .. pass keys done (%.1f s)\n", Elapsed(t0));
    std::fflush(stdout);
  }
  const double dense_nll = sc[0].nll_sum / double(sc[0].tokens);
  tb::Table t({"method", "p", "read_pct", "read_pct_long", "ppl", "dppl_pct", "dnll_lo_pct",
               "dnll_hi_pct", "kl_mean", "top1_agree_pct", "passkey", "read_pct_long_by_layer"});
  t.title = absl::StrFormat(
      "Real text: %d held-out windows of %d bytes (dense %.4f nats/byte, perplexity %.4f); "
      "change vs dense with a 95%% t-interval over windows; read_pct_long: contexts >= %d",
      o.text_seqs, ctx, dense_nll, std::exp(dense_nll), long_from);
  const int dense_keys = std::accumulate(hit[0].begin(), hit[0].end(), 0);
  for (size_t m = 0; m < methods.size(); ++m) {
    const ModelMethod& mm = methods[m];
    const double nll = sc[m].nll_sum / double(sc[m].tokens);
    const tb::Interval ci = tb::MeanInterval95(sc[m].dnll);
    const int keys = std::accumulate(hit[m].begin(), hit[m].end(), 0);
    const double dppl = 100 * (std::exp(nll - dense_nll) - 1);
    t.AddRow({mm.name, tb::Cell(double(mm.p), 3), tb::Cell(ReadPct(mm, sc[m].read, false), 3),
              tb::Cell(ReadPct(mm, sc[m].read, true), 3), tb::Cell(std::exp(nll), 5),
              tb::Cell(dppl, 3), tb::Cell(100 * (std::exp(ci.lo) - 1), 3),
              tb::Cell(100 * (std::exp(ci.hi) - 1), 3),
              tb::Cell(tb::Summarize(sc[m].kl).mean, 3),
              tb::Cell(100 * tb::Summarize(sc[m].agree).mean, 4),
              absl::StrFormat("%d/%d", keys, o.passkeys), LayerShares(mm, sc[m].read)});
    if (mm.name.rfind("twilight", 0) == 0) {
      tb::GoalCheck g;
      g.goal = absl::StrFormat(
          "real text %d: %s perplexity within 1%% of dense, reading <= 10%%, pass keys = dense",
          ctx, mm.name);
      g.measured = absl::StrFormat("%+.2f%% [%+.2f, %+.2f], reads %.1f%% of contexts >= %d, "
                                   "pass keys %d/%d vs dense %d/%d",
                                   dppl, 100 * (std::exp(ci.lo) - 1), 100 * (std::exp(ci.hi) - 1),
                                   ReadPct(mm, sc[m].read, true), long_from, keys, o.passkeys,
                                   dense_keys, o.passkeys);
      // Without pass keys (--passkeys 0) that part is not measured, so the goal is not met.
      g.met = dppl <= 1.0 && ReadPct(mm, sc[m].read, true) <= 10.0 && o.passkeys > 0 &&
              keys >= dense_keys;
      goals->model_goals.push_back(g);
    }
  }
  PrintAndWrite(t, o, "realtext");
  std::printf("[realtext] done in %.1f s\n", Elapsed(t0));
}

}  // namespace twl::accuracy_tool

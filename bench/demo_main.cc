// twl_demo: the main job. Decodes a batch of long sequences with the Twilight runtime and
// shows what adaptive top-p does: per-step kept budgets per head, time per stage, tokens/s,
// and the error of the output against dense attention over the same cache.
//
// K/V/Q come from the synthetic attention generator (bench/lib/synthetic_attention.h:
// RoPE, attention sinks, a local window, retrieval spikes, heads from peaked to flat). The
// context of each sequence is prefilled, then every decode step appends one token per
// sequence and layer and decodes every layer for the whole batch.
//
//   twl_demo [--seqs 4] [--context 4096] [--layers 4] [--steps 6] [--p 0.95]
//            [--backend auto|cpu|gpu-hbm|gpu-offload] [--selector default|full|quest]
//            [--budget 0 (no cap) | fraction of the context that caps Quest's candidates]
//            [--page-size 16] [--k-bits 4] [--dense-layers 0] [--seed 1]
//            [--disk DIR [--host-pool-mb MB]]        (twl_demo --help lists every flag)
// --disk puts a disk tier (a file in DIR sized for the whole KV) under a host pool smaller
// than the KV (default: one layer's KV + 25%), on the CPU backend: every step then reads the
// pages it keeps back from disk, and the table shows how many.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>
#include <vector>

#include <unistd.h>

#include "absl/flags/flag.h"
#include "absl/strings/str_format.h"
#include "gpu/device.h"
#include "lib/synthetic_attention.h"
#include "lib/table.h"
#include "lib/tool_flags.h"
#include "oneapi/tbb/parallel_for.h"
#include "runtime/runtime.h"

ABSL_FLAG(int32_t, seqs, 4, "sequences decoded as one batch");
ABSL_FLAG(int32_t, context, 4096, "prompt tokens of the longest sequence (others up to 25% shorter)");
ABSL_FLAG(int32_t, layers, 4, "layers");
ABSL_FLAG(int32_t, steps, 6, "decode steps (one token per sequence and layer each)");
ABSL_FLAG(float, p, 0.95f, "top-p mass each head keeps, in (0, 1]");
ABSL_FLAG(std::string, backend, "auto",
          "auto|cpu|gpu-hbm|gpu-offload (auto: gpu-offload with a GPU, else cpu)");
ABSL_FLAG(float, budget, 0.0f,
          "optional cap on Quest's candidate pages as a fraction of each sequence's context, "
          "(0, 1]; 0: no cap (no base budget: each head grows its candidates until the kept "
          "set holds p of the full-context mass)");
ABSL_FLAG(std::string, selector, "default",
          "default|full|quest: default is the library's choice, as in the C API (full: every "
          "page a candidate; quest when --budget caps it)");
ABSL_FLAG(int32_t, page_size, 16, "tokens per page");
ABSL_FLAG(int32_t, k_bits, 4, "bits of the K estimate: 2, 4, 8 or 16 (FP16)");
ABSL_FLAG(int32_t, dense_layers, 0, "first layers decoded densely");
ABSL_FLAG(int32_t, q_heads, 32, "query heads");
ABSL_FLAG(int32_t, kv_heads, 8, "KV heads (--q-heads must be a multiple)");
ABSL_FLAG(int32_t, head_dim, 128, "head dimension: 8, 16, 32, 64, 96, 128 or 256 (all on the GPU but 8-32)");
ABSL_FLAG(uint64_t, seed, 1, "seed of the synthetic data");
ABSL_FLAG(std::string, disk, "",
          "directory for a disk tier holding the whole KV (CPU or gpu-offload backend); empty: "
          "none");
ABSL_FLAG(int32_t, host_pool_mb, 0,
          "with --disk: host pool in MiB (0: one layer's KV + 25%)");

namespace {

using twl::fp16_t;

struct Options {
  int seqs, context, layers, steps;
  float p;
  twl::BackendKind backend;
  float budget;
  std::string selector;
  int page_size, k_bits, dense_layers, q_heads, kv_heads, head_dim;
  uint64_t seed;
  std::string disk;  // disk tier directory ("": none)
  int host_pool_mb;  // with --disk: host pool size (0: one layer's KV + 25%)
};

constexpr char kUsage[] =
    "usage: twl_demo [flags]\n"
    "Decodes a batch of synthetic long-context sequences with Twilight (FULL or Quest\n"
    "selector + top-p pruner + sparse attention) and compares each output with dense attention.\n"
    "Backends: gpu-hbm = all KV in GPU memory, gpu-offload = FP16 KV in pinned host memory.\n"
    "--disk DIR: KV larger than host memory: a disk tier file in DIR holds the whole KV and the\n"
    "host pool only --host-pool-mb; CPU backend (auto) or --backend gpu-offload. Columns of "
    "the output: README.md.";

Options ParseArgs(int argc, char** argv) {
  using twl::tools::RequireFlag;
  twl::tools::ParseToolFlags(argc, argv, __FILE__, kUsage);
  Options o;
  o.seqs = absl::GetFlag(FLAGS_seqs);
  o.context = absl::GetFlag(FLAGS_context);
  o.layers = absl::GetFlag(FLAGS_layers);
  o.steps = absl::GetFlag(FLAGS_steps);
  o.p = absl::GetFlag(FLAGS_p);
  o.backend = twl::tools::ParseBackendFlag(absl::GetFlag(FLAGS_backend));
  o.budget = absl::GetFlag(FLAGS_budget);
  o.selector = absl::GetFlag(FLAGS_selector);
  o.page_size = absl::GetFlag(FLAGS_page_size);
  o.k_bits = absl::GetFlag(FLAGS_k_bits);
  o.dense_layers = absl::GetFlag(FLAGS_dense_layers);
  o.q_heads = absl::GetFlag(FLAGS_q_heads);
  o.kv_heads = absl::GetFlag(FLAGS_kv_heads);
  o.head_dim = absl::GetFlag(FLAGS_head_dim);
  o.seed = absl::GetFlag(FLAGS_seed);
  o.disk = absl::GetFlag(FLAGS_disk);
  o.host_pool_mb = absl::GetFlag(FLAGS_host_pool_mb);
  // Ranges that keep the demo's own sizing arithmetic and allocations sane; the runtime checks
  // the model shape again (and says why) when it is created.
  RequireFlag(o.seqs >= 1 && o.seqs <= 4096, "seqs", "must be in [1, 4096]");
  RequireFlag(o.context >= 64 && o.context <= (1 << 22), "context", "must be in [64, 4194304]");
  RequireFlag(o.layers >= 1 && o.layers <= 256, "layers", "must be in [1, 256]");
  RequireFlag(o.steps >= 1 && o.steps <= 100000, "steps", "must be in [1, 100000]");
  RequireFlag(o.p > 0.0f && o.p <= 1.0f, "p", "must be in (0, 1]");
  RequireFlag(o.budget >= 0.0f && o.budget <= 1.0f, "budget", "must be 0 (no cap) or in (0, 1]");
  RequireFlag(o.selector == "default" || o.selector == "quest" || o.selector == "full",
              "selector", "default, full or quest");
  RequireFlag(o.budget == 0.0f || o.selector != "full", "budget",
              "caps Quest's candidates: not with --selector full");
  RequireFlag(o.page_size >= 1 && o.page_size <= 4096, "page_size", "must be in [1, 4096]");
  RequireFlag(o.k_bits == 2 || o.k_bits == 4 || o.k_bits == 8 || o.k_bits == 16, "k_bits",
              "must be 2, 4, 8 or 16");
  RequireFlag(o.dense_layers >= 0, "dense_layers", "must be >= 0");
  RequireFlag(o.kv_heads >= 1 && o.kv_heads <= 1024, "kv_heads", "must be in [1, 1024]");
  RequireFlag(o.q_heads >= 1 && o.q_heads <= 4096 && o.q_heads % o.kv_heads == 0, "q_heads",
              "must be in [1, 4096] and a multiple of --kv-heads");
  RequireFlag(o.head_dim >= 1 && o.head_dim <= 256, "head_dim", "must be in [1, 256]");
  RequireFlag(o.host_pool_mb >= 0, "host_pool_mb", "must be >= 0");
  RequireFlag(o.host_pool_mb == 0 || !o.disk.empty(), "host_pool_mb", "needs --disk");
  return o;
}

// Progress on stderr: rewritten in place on a terminal, one line per update otherwise.
void Progress(const std::string& line, bool final_line = false) {
  static const bool tty = isatty(fileno(stderr)) != 0;
  if (tty) {
    std::fprintf(stderr, "\r%-70s%s", line.c_str(), final_line ? "\n" : "");
  } else if (final_line) {
    std::fprintf(stderr, "%s\n", line.c_str());
  }
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

// Dense attention over the first `len` tokens, FP32 accumulation: the yardstick.
// k, v [>= len][kv_heads][d]; q, out [q_heads][d].
void DenseAttention(const fp16_t* k, const fp16_t* v, int len, int kv_heads, int q_heads, int d,
                    const fp16_t* q, float* out) {
  const int group = q_heads / kv_heads;
  const float scale = 1.0f / std::sqrt(float(d));
  tbb::parallel_for(0, kv_heads, [&](int h) {
    const size_t n = static_cast<size_t>(len);
    std::vector<float> kf(n * d), vf(n * d), w(n), qf(static_cast<size_t>(d));
    for (int t = 0; t < len; ++t) {
      const int64_t at = (int64_t(t) * kv_heads + h) * d;
      for (int j = 0; j < d; ++j) {
        kf[size_t(t) * d + j] = twl::HalfToFloat(k[at + j]);
        vf[size_t(t) * d + j] = twl::HalfToFloat(v[at + j]);
      }
    }
    for (int g = 0; g < group; ++g) {
      const int qh = h * group + g;
      for (int j = 0; j < d; ++j) qf[size_t(j)] = twl::HalfToFloat(q[int64_t(qh) * d + j]) * scale;
      float mx = -INFINITY;
      for (int t = 0; t < len; ++t) {
        const float* kr = kf.data() + size_t(t) * d;
        float s = 0.0f;
        for (int j = 0; j < d; ++j) s += qf[size_t(j)] * kr[j];
        w[size_t(t)] = s;
        mx = std::max(mx, s);
      }
      double sum = 0.0;
      for (int t = 0; t < len; ++t) {
        w[size_t(t)] = std::exp(w[size_t(t)] - mx);
        sum += w[size_t(t)];
      }
      float* o = out + int64_t(qh) * d;
      std::fill(o, o + d, 0.0f);
      for (int t = 0; t < len; ++t) {
        const float a = float(w[size_t(t)] / sum);
        const float* vr = vf.data() + size_t(t) * d;
        for (int j = 0; j < d; ++j) o[j] += a * vr[j];
      }
    }
  });
}

}  // namespace

int main(int argc, char** argv) {
  const Options opt = ParseArgs(argc, argv);
  const double t_begin = Now();

  twl::RuntimeConfig cfg;
  cfg.num_layers = opt.layers;
  cfg.num_q_heads = opt.q_heads;
  cfg.num_kv_heads = opt.kv_heads;
  cfg.head_dim = opt.head_dim;
  cfg.page_size = opt.page_size;
  cfg.k_bits = opt.k_bits;
  cfg.top_p = opt.p;
  if (opt.selector != "default") {  // else the library's choice (twl::SelectorOf)
    cfg.selector = opt.selector == "full" ? twl::SelectorKind::kFull : twl::SelectorKind::kQuest;
  }
  cfg.selector_budget_fraction = opt.budget > 0.0f ? opt.budget : 1.0f;  // 1: no cap
  const bool quest = twl::SelectorOf(cfg) == twl::SelectorKind::kQuest;
  cfg.dense_layers = opt.dense_layers;
  cfg.backend = opt.backend;
  // Size the host pool for the whole run (with slack for partial pages), not the default.
  const int64_t pages_per_seq_layer = (opt.context + opt.page_size - 1) / opt.page_size + 1;
  const int64_t page_bytes = int64_t(opt.kv_heads) * 4 * opt.page_size * opt.head_dim;
  const int64_t kv_bytes = pages_per_seq_layer * opt.seqs * opt.layers * page_bytes + page_bytes;
  cfg.host_pool_bytes = kv_bytes;
  if (!opt.disk.empty()) {
    // The disk holds the whole KV (records are pages rounded up to 4 KiB); the host pool one
    // layer's working set, so each layer's step reads its kept pages back.
    const int64_t record = (page_bytes + 4095) / 4096 * 4096;
    cfg.disk_path = opt.disk;
    cfg.disk_bytes = (kv_bytes / page_bytes + 1) * record;
    cfg.host_pool_bytes = opt.host_pool_mb > 0 ? int64_t(opt.host_pool_mb) << 20
                                               : kv_bytes / opt.layers * 5 / 4 + page_bytes;
    if (cfg.backend == twl::BackendKind::kAuto) cfg.backend = twl::BackendKind::kCpu;
  }

  auto created = twl::Runtime::Create(cfg);
  if (!created.ok()) {
    std::fprintf(stderr, "twl_demo: cannot create the runtime: %s\n",
                 created.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<twl::Runtime> rt = std::move(*created);
  const bool on_cpu = rt->backend_kind() == twl::BackendKind::kCpu;
  std::printf("twl_demo: Twilight decode on backend %s\n", rt->backend_name().c_str());
  if (on_cpu && cfg.backend == twl::BackendKind::kAuto) {
    std::printf("no GPU found: using the CPU backend\n");
  }
  std::printf(
      "model: %d layers, %d query / %d KV heads, head dim %d; page %d tokens, K estimate %s\n",
      opt.layers, opt.q_heads, opt.kv_heads, opt.head_dim, opt.page_size,
      opt.k_bits == 16 ? "FP16" : absl::StrFormat("INT%d", opt.k_bits).c_str());
  if (!opt.disk.empty()) {
    std::printf("disk tier: KV %.1f MiB, host pool %.1f MiB (%.0f%% of the KV), disk file in %s\n",
                kv_bytes / 1048576.0, cfg.host_pool_bytes / 1048576.0,
                100.0 * double(cfg.host_pool_bytes) / double(kv_bytes), opt.disk.c_str());
  }
  std::printf("twilight: p = %.3g, selector %s%s, dense layers %d\n", opt.p,
              quest ? "quest" : "full",
              !quest ? " (every page a candidate)"
              : opt.budget > 0.0f
                  ? absl::StrFormat(" (growing, capped at %.0f%% of the context)",
                                    100.0 * opt.budget).c_str()
                  : " (growing, no cap)",
              opt.dense_layers);

  // ---- Synthetic batch: mixed lengths around --context ---------------------------------
  // layer_data[l][s]: K/V of the whole context plus the decode steps, and the step queries.
  std::vector<std::vector<twl::bench::SyntheticLayer>> data(size_t(opt.layers));
  std::vector<int> ctx(size_t(opt.seqs));
  for (int s = 0; s < opt.seqs; ++s) {
    ctx[size_t(s)] = std::max(64, opt.context - (opt.context / 4) * s / std::max(1, opt.seqs));
  }
  Progress("generating synthetic K/V/Q ...");
  for (int l = 0; l < opt.layers; ++l) {
    for (int s = 0; s < opt.seqs; ++s) {
      twl::bench::SyntheticConfig sc;
      sc.num_tokens = ctx[size_t(s)] + opt.steps - 1;  // prefill + one token per later step
      sc.num_kv_heads = opt.kv_heads;
      sc.group_size = opt.q_heads / std::max(1, opt.kv_heads);
      sc.head_dim = opt.head_dim;
      sc.num_steps = opt.steps;
      sc.seed = opt.seed * 7919 + uint64_t(s);
      auto layer = twl::bench::GenerateLayer(sc, l);
      if (!layer.ok()) {
        std::fprintf(stderr, "\ntwl_demo: generator: %s\n", layer.status().ToString().c_str());
        return 1;
      }
      data[size_t(l)].push_back(std::move(*layer));
    }
  }
  Progress(absl::StrFormat("generated synthetic K/V/Q for %d sequences x %d layers in %.1f s",
                           opt.seqs, opt.layers, Now() - t_begin),
           true);

  // ---- Prefill ----------------------------------------------------------------------------
  std::vector<twl::SeqId> ids;
  for (int s = 0; s < opt.seqs; ++s) ids.push_back(*rt->CreateSequence());
  const int64_t row = int64_t(opt.kv_heads) * opt.head_dim;
  const double t_prefill = Now();
  int64_t prefill_tokens = 0;
  for (int l = 0; l < opt.layers; ++l) {
    for (int s = 0; s < opt.seqs; ++s) {
      const auto& d = data[size_t(l)][size_t(s)];
      const int len = d.StepLength(0);
      for (int at = 0; at < len; at += 1024) {  // chunked prefill, as a server would
        const int n = std::min(1024, len - at);
        absl::Status st = rt->Append(ids[size_t(s)], l, n, d.k.data() + at * row,
                                     d.v.data() + at * row, twl::DType::kFp16,
                                     twl::MemSpace::kHost);
        if (!st.ok()) {
          std::fprintf(stderr, "twl_demo: append: %s\n", st.ToString().c_str());
          return 1;
        }
        prefill_tokens += n;
      }
    }
    Progress(absl::StrFormat("prefill: layer %d/%d", l + 1, opt.layers));
  }
  Progress(absl::StrFormat("prefill: %d tokens (%d sequences x %d layers) in %.2f s",
                           prefill_tokens, opt.seqs, opt.layers, Now() - t_prefill),
           true);

  // ---- Decode -----------------------------------------------------------------------------
  const size_t qn = size_t(opt.seqs) * opt.q_heads * opt.head_dim;
  std::vector<fp16_t> q(qn), out(qn);
  std::vector<float> dense(qn);
  void* d_q = nullptr;
  void* d_out = nullptr;
  if (!on_cpu) {  // GPU backends take q/out in device memory
    auto a = twl::gpu::Malloc(qn * sizeof(fp16_t));
    auto b = twl::gpu::Malloc(qn * sizeof(fp16_t));
    if (!a.ok() || !b.ok()) {
      std::fprintf(stderr, "twl_demo: cannot allocate device buffers\n");
      return 1;
    }
    d_q = *a;
    d_out = *b;
  }

  const bool disk = !opt.disk.empty();
  std::vector<std::string> columns = {"step", "layer", "ctx", "sel/head", "kept mean",
                                      "kept min", "kept max", "kept %", "kv union", "est mass",
                                      "select ms", "prune ms", "fetch ms", "attend ms",
                                      "total ms", "rel err"};
  if (disk) {
    columns.insert(columns.end() - 1, "disk loads");
    columns.insert(columns.end() - 1, "disk spills");
  }
  twl::bench::Table table(columns);
  table.title = "per step and layer: kept tokens per query head (own top-p set) over the batch";
  double ms_select = 0, ms_prune = 0, ms_fetch = 0, ms_attend = 0, ms_total = 0;
  double ms_disk = 0;
  int64_t disk_loads = 0, disk_spills = 0;
  double err_sum = 0, err_max = 0, kept_frac_sum = 0;
  int64_t kept_min_all = INT64_MAX, kept_max_all = 0;
  int64_t cap_hits = 0, head_steps = 0;
  double full_mass_min = 2.0;  // > 1: no head reported a full-context mass
  int rows = 0;
  for (int step = 0; step < opt.steps; ++step) {
    for (int l = 0; l < opt.layers; ++l) {
      // The new token of this step (the prefill already holds step 0's context).
      if (step > 0) {
        for (int s = 0; s < opt.seqs; ++s) {
          const auto& d = data[size_t(l)][size_t(s)];
          const int pos = d.StepLength(step) - 1;
          absl::Status st = rt->Append(ids[size_t(s)], l, 1, d.k.data() + pos * row,
                                       d.v.data() + pos * row, twl::DType::kFp16,
                                       twl::MemSpace::kHost);
          if (!st.ok()) {
            std::fprintf(stderr, "twl_demo: append: %s\n", st.ToString().c_str());
            return 1;
          }
        }
      }
      const size_t per_seq = size_t(opt.q_heads) * opt.head_dim;
      for (int s = 0; s < opt.seqs; ++s) {
        const fp16_t* qs = data[size_t(l)][size_t(s)].Q(step);
        std::copy(qs, qs + per_seq, q.begin() + int64_t(s) * per_seq);
      }
      twl::StepTelemetry t;
      absl::Status st;
      if (on_cpu) {
        st = rt->Decode(l, ids, q.data(), out.data(), twl::MemSpace::kHost, {}, nullptr, &t);
      } else {
        st = twl::gpu::CopyToDevice(d_q, q.data(), qn * sizeof(fp16_t));
        if (st.ok()) {
          st = rt->Decode(l, ids, static_cast<const fp16_t*>(d_q), static_cast<fp16_t*>(d_out),
                          twl::MemSpace::kDevice, {}, nullptr, &t);
        }
        if (st.ok()) st = twl::gpu::CopyToHost(out.data(), d_out, qn * sizeof(fp16_t));
      }
      if (!st.ok()) {
        std::fprintf(stderr, "twl_demo: decode: %s\n", st.ToString().c_str());
        return 1;
      }

      // Dense attention over the same tokens, and the relative L2 error of the output.
      double num = 0, den = 0;
      int64_t ctx_sum = 0;
      for (int s = 0; s < opt.seqs; ++s) {
        const auto& d = data[size_t(l)][size_t(s)];
        const int len = d.StepLength(step);
        ctx_sum += len;
        DenseAttention(d.k.data(), d.v.data(), len, opt.kv_heads, opt.q_heads, opt.head_dim,
                       q.data() + int64_t(s) * per_seq, dense.data() + int64_t(s) * per_seq);
      }
      for (size_t i = 0; i < qn; ++i) {
        const double a = twl::HalfToFloat(out[i]), b = dense[i];
        num += (a - b) * (a - b);
        den += b * b;
      }
      const double err = std::sqrt(num / std::max(den, 1e-30));

      int64_t kmin = INT64_MAX, kmax = 0, ksum = 0, sel = 0, union_sum = 0;
      double mass = 0, frac = 0;
      for (int s = 0; s < opt.seqs; ++s) {
        const int len = data[size_t(l)][size_t(s)].StepLength(step);
        for (int h = 0; h < opt.q_heads; ++h) {
          const size_t i = size_t(s) * opt.q_heads + h;
          const int64_t k = t.kept_tokens[i];
          kmin = std::min(kmin, k);
          kmax = std::max(kmax, k);
          ksum += k;
          sel += t.selected_tokens[i];
          mass += t.est_mass[i];
          frac += double(k) / len;
        }
      }
      for (int32_t k : t.kept_tokens_kv) union_sum += k;
      const double heads = double(opt.seqs) * opt.q_heads;
      std::vector<twl::bench::Cell> cells = {
          step, l, twl::bench::Cell(double(ctx_sum) / opt.seqs, 5),
          twl::bench::Cell(sel / heads, 4), twl::bench::Cell(ksum / heads, 4), kmin, kmax,
          twl::bench::Cell(100.0 * frac / heads, 3),
          twl::bench::Cell(double(union_sum) / t.kept_tokens_kv.size(), 4),
          twl::bench::Cell(mass / heads, 4), twl::bench::Cell(t.ms_select, 3),
          twl::bench::Cell(t.ms_prune, 3), twl::bench::Cell(t.ms_fetch, 3),
          twl::bench::Cell(t.ms_attend, 3), twl::bench::Cell(t.ms_total, 3),
          twl::bench::Cell(err, 3)};
      if (disk) {
        cells.insert(cells.end() - 1, twl::bench::Cell(t.disk_pages_loaded));
        cells.insert(cells.end() - 1, twl::bench::Cell(t.disk_pages_spilled));
      }
      table.AddRow(cells);
      ms_disk += t.ms_disk;
      disk_loads += t.disk_pages_loaded;
      disk_spills += t.disk_pages_spilled;
      ms_select += t.ms_select;
      ms_prune += t.ms_prune;
      ms_fetch += t.ms_fetch;
      ms_attend += t.ms_attend;
      ms_total += t.ms_total;
      err_sum += err;
      err_max = std::max(err_max, err);
      kept_frac_sum += frac / heads;
      // Growing Quest: heads stopped at the cap, and the lowest full-context mass bound.
      for (size_t i = 0; i < t.cap_hit.size(); ++i) cap_hits += t.cap_hit[i] != 0;
      for (float fm : t.full_mass) {
        if (fm >= 0.0f) full_mass_min = std::min(full_mass_min, double(fm));
      }
      head_steps += int64_t(heads);
      kept_min_all = std::min(kept_min_all, kmin);
      kept_max_all = std::max(kept_max_all, kmax);
      ++rows;
      Progress(absl::StrFormat("decode: step %d/%d layer %d/%d", step + 1, opt.steps, l + 1,
                               opt.layers),
               step + 1 == opt.steps && l + 1 == opt.layers);
    }
  }
  if (!on_cpu) {
    twl::gpu::Free(d_q);
    twl::gpu::Free(d_out);
  }

  std::printf("\n");
  table.Print();
  std::printf("\n");
  const double share = ms_total > 0 ? 100.0 / ms_total : 0.0;
  std::printf("time per stage (sum of %d layer-steps): select %.1f ms (%.0f%%), prune %.1f ms "
              "(%.0f%%), fetch %.1f ms (%.0f%%), attend %.1f ms (%.0f%%), total %.1f ms\n",
              rows, ms_select, ms_select * share, ms_prune, ms_prune * share, ms_fetch,
              ms_fetch * share, ms_attend, ms_attend * share, ms_total);
  const double tokens = double(opt.seqs) * opt.steps;
  std::printf("decode throughput: %.1f tokens/s (%d sequences x %d steps, attention of all %d "
              "layers: %.1f ms per step)\n",
              tokens / (ms_total / 1e3), opt.seqs, opt.steps, opt.layers, ms_total / opt.steps);
  std::printf("kept per query head: mean %.2f%% of the context (min %lld, max %lld tokens)\n",
              100.0 * kept_frac_sum / rows, static_cast<long long>(kept_min_all),
              static_cast<long long>(kept_max_all));
  std::printf("output vs dense attention: relative L2 error mean %.3g, max %.3g\n",
              err_sum / rows, err_max);
  if (quest) {
    std::printf("quest growth: %lld of %lld head-steps stopped at the cap%s%s\n",
                static_cast<long long>(cap_hits), static_cast<long long>(head_steps),
                cap_hits > 0 ? " (they keep p of their candidates' mass, not of the context)" : "",
                full_mass_min <= 1.0
                    ? absl::StrFormat("; lowest full-context mass bound %.4f", full_mass_min)
                          .c_str()
                    : "");
  }
  const twl::MemoryUsage m = rt->Memory();
  std::printf("memory: host pool %.1f of %.1f MiB used; GPU quant %.1f MiB, cache %.1f MiB\n",
              m.host_pool_bytes_used / 1048576.0, m.host_pool_bytes_total / 1048576.0,
              m.gpu_quant_bytes / 1048576.0, m.gpu_cache_bytes / 1048576.0);
  if (disk) {
    // Loads per layer-step: the kept pages (union over the batch's KV heads) not in the pool.
    const double mib = double(disk_loads + disk_spills) * double(page_bytes) / 1048576.0;
    std::printf("disk tier: %.1f MiB in use; per layer-step %.1f pages loaded, %.1f spilled; "
                "%.1f ms of disk I/O in all (%.0f%% of decode time, %.0f MiB/s moved)\n",
                m.disk_bytes / 1048576.0, double(disk_loads) / rows,
                double(disk_spills) / rows, ms_disk, ms_total > 0 ? 100.0 * ms_disk / ms_total : 0.0,
                ms_disk > 0 ? mib / (ms_disk / 1e3) : 0.0);
  }
  std::printf("done in %.1f s\n", Now() - t_begin);
  return 0;
}

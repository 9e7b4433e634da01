// twl_serve_bench: the serving-loop benchmark, the acceptance benchmark for speed.
//
// It drives the public C API (api/twilight.h) the way a serving engine does: one runtime holds
// L layers of B sequences of mixed lengths; per step and layer it appends the new token of
// every sequence with one twl_append_batch (K/V made on the GPU, device pointers) and then
// decodes the batch with one twl_decode, both queued on the engine's stream; the host waits
// once per step (as an engine does to sample the next tokens). Continuous batching: every --churn_every steps the oldest
// sequence finishes and a new one is prefilled (prefill time is reported apart from the
// decode time). Workloads (gpu/synth.h generators):
//   peaked    every KV head has a few hundred hot tokens (paper-like budgets)
//   mixed     two of the eight KV heads are flat: top-p needs 20-50% of their context
//   drifting  each query looks at one region of the context; the region moves every
//             --drift_every steps, so the hot pages move
// Methods (each its own runtime, same workload and seeds):
//   twilight        gpu-offload, library defaults (Quest + Twilight)
//   twilight-b8k    gpu-offload, Quest B0 = --quest_budget tokens + Twilight
//   quest-b8k       gpu-offload, Quest B0 alone (p = 1 per call: every candidate is kept)
//   hbm-b8k         gpu-hbm (all FP16 KV in HBM), Quest B0 + Twilight
//   hbm             gpu-hbm, library defaults
//   hbm-graph       gpu-hbm, library defaults, the batch bound (twl_batch_create) and each
//                   layer's twl_decode_batch replayed from a CUDA graph captured once (per
//                   step: eager append, q copied into the graph's buffer, replay): what an
//                   engine that captures its decode step pays on the host. Bound decodes
//                   publish no telemetry: its stage split comes from the telemetry steps,
//                   decoded eagerly; rebound and recaptured at each churn.
//   offload-graph   gpu-offload (row cache), library defaults, bound and replayed from CUDA
//                   graphs like hbm-graph (the row cache's plan runs inside the graph with
//                   its step stamp on the device); compare with twilight (eager twl_decode).
//   hbm-full        gpu-hbm, TWL_SELECTOR_FULL (top-p over every token's INT4 estimate),
//                   library defaults otherwise (issue 12: <= 0.3x dense SDPA at B = 8, 128k;
//                   the default selector is FULL now, so this equals hbm)
//   hbm-quest, twilight-quest  gpu-hbm / gpu-offload with TWL_SELECTOR_QUEST: growing Quest
//                   (the default selector before the third session of 2026-12-02)
//   dense-hbm       gpu-hbm, every layer dense (the project's own dense kernel)
//   full-offload    gpu-offload, every layer dense (all KV over PCIe each step)
//   cpu, cpu-dense  the CPU backend (what a run without a GPU measures; CI's tiny run)
//   twilight-blocks, twilight-rows  twilight with the GPU cache's granularity pinned
//                   (twl_runtime_config.cache_rows 1 / 2: whole 16-row blocks by value, or
//                   single K+V rows; issue 11); hit and MB h2d then count blocks or rows
//   twilight-disk   gpu-offload over the NVMe tier: host pool --disk_host_pool_gib (default
//                   a quarter of the KV), the rest in a file in --disk_dir; compare its tok/s
//                   with twilight's (everything in the host pool). Its rows also give the
//                   disk read rate of the measured steps (/proc/self/io) next to the
//                   device's sequential and 8 KiB random read rates, probed once through the
//                   same tier (--disk_probe_mib).
// Baseline: the fastest dense decode on the machine, measured by bench/sdpa_serving.py in the
// same gpu-check run (PyTorch SDPA: cuDNN / flash / efficient, whichever is fastest; the
// CSV names it), read with --sdpa_csv. Dense attention cost is linear in the batch's tokens,
// so it is measured at the batch's mean length.
//
// Reported per (shape, batch, workload, method): wall time per layer-step with appends,
// tokens/s, stage split, blocks and bytes over PCIe (from --telemetry_steps extra steps whose
// every decode is waited for and read, so each layer's figures count, not the one decode in L
// that a step publishes without waiting), GPU memory / FP16 KV bytes, and for a
// sample of (sequence, KV head) pairs the TRUE softmax mass of what was attended (from the
// stored FP16 K, via twl_runtime_last_step_kept) and the output error vs dense, next to
// exact top-p's error (the oracle). Table + CSV + JSON + PNG under --out; a progress line.
#include <algorithm>
#include <iterator>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "gpu/device.h"
#include "gpu/synth.h"
#include "lib/disk_probe.h"
#include "lib/png_plot.h"
#include "lib/serve_accuracy.h"
#include "lib/table.h"
#include "lib/tool_flags.h"
#include "twilight.h"

ABSL_FLAG(std::string, mode, "auto", "auto (gpu when one is visible), gpu or cpu");
ABSL_FLAG(std::string, shapes, "32x8,64x8", "attention shapes: q_heads x kv_heads (head_dim 128)");
ABSL_FLAG(int32_t, head_dim, 128, "head dimension");
ABSL_FLAG(int32_t, layers, 8, "layers in the runtime (>= 1)");
ABSL_FLAG(std::string, batches, "1,8,16", "batch sizes (running sequences)");
ABSL_FLAG(int32_t, context, 131072, "mean prompt length in tokens");
ABSL_FLAG(double, len_spread, 0.25, "lengths are uniform in context * [1 - s, 1 + s]");
ABSL_FLAG(std::string, workloads, "peaked,mixed,drifting", "peaked, mixed, drifting");
ABSL_FLAG(std::string, methods, "",
          "comma list (default: gpu: twilight,twilight-b8k,quest-b8k,hbm-b8k,hbm,dense-hbm,"
          "full-offload; cpu: cpu,cpu-dense)");
ABSL_FLAG(int32_t, steps, 16, "measured decode steps per configuration");
ABSL_FLAG(int32_t, warmup, 2, "unmeasured steps first");
ABSL_FLAG(int32_t, telemetry_steps, 2,
          "unmeasured steps after the measured ones in which every decode waits for the device "
          "and its figures are read: the stage split, hit rate and bytes of every layer (the "
          "measured steps see only what is published without waiting, about one decode in L, "
          "and graph replays publish nothing); 0: off");
ABSL_FLAG(bool, profile_last_step, false,
          "mark the last step as the profiled range (run under ncu/nsys with profiling from "
          "start off: per-kernel times of one step)");
ABSL_FLAG(int32_t, churn_every, 8, "a sequence finishes and a new one starts every N steps (0: off)");
ABSL_FLAG(int32_t, drift_every, 32, "drifting: steps between moves of the hot region");
ABSL_FLAG(double, cache_frac, 0.10, "GPU hot-page cache as a fraction of all layers' FP16 KV");
ABSL_FLAG(int32_t, cache_rows, 0,
          "what the offload methods' GPU cache holds (twl_runtime_config.cache_rows): 0 library "
          "default, 1 blocks, 2 rows (twilight-blocks / twilight-rows pin one)");
ABSL_FLAG(int32_t, quest_budget, 8192, "B0 in tokens of the *-b8k methods");
ABSL_FLAG(double, top_p, 0.95, "top-p of the Twilight methods");
ABSL_FLAG(int32_t, k_scheme, 0,
          "estimation K scheme of every method (twl_runtime_config.k_scheme): 0 the library's "
          "default (per page channel), 1 per page channel, 2 per token");
ABSL_FLAG(int32_t, sample_units, 16, "(sequence, KV head) pairs whose accuracy is measured");
ABSL_FLAG(int32_t, accuracy_layer, -1, "layer whose accuracy is measured (-1: the middle one)");
ABSL_FLAG(int32_t, full_offload_steps, 2, "measured steps of full-offload (each moves all KV)");
ABSL_FLAG(int32_t, prefill_chunk, 8192, "tokens per prefill append call");
ABSL_FLAG(std::string, sdpa_csv, "", "CSV of bench/sdpa_serving.py (the dense baseline)");
ABSL_FLAG(std::string, out, "out/serve", "output directory (created)");
ABSL_FLAG(uint64_t, seed, 20261201, "workload seed");
ABSL_FLAG(std::string, disk_dir, "/tmp", "twilight-disk: directory of the disk tier's file");
ABSL_FLAG(double, disk_host_pool_gib, 0,
          "twilight-disk: host pool in GiB (0: a quarter of the KV)");
ABSL_FLAG(int32_t, disk_probe_mib, 2048,
          "twilight-disk: MiB of the read-rate probe (0: no probe)");

namespace twl {
namespace {

using bench::Cell;

// ---- Small helpers ---------------------------------------------------------------------

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "twl_serve_bench: %s\n", what.c_str());
  std::exit(1);
}

// A bad flag value: say which and exit 2 (the shared tool behaviour, bench/lib/tool_flags.h).
[[noreturn]] void BadFlag(const std::string& what) { tools::ToolFlagError(what); }

void Check(twl_status s, twl_runtime* rt, const char* what) {
  if (s != TWL_OK) {
    Die(absl::StrCat(what, ": ", twl_status_string(s), ": ", twl_runtime_last_error(rt)));
  }
}

void CheckOk(const absl::Status& s, const char* what) {
  if (!s.ok()) Die(absl::StrCat(what, ": ", s.message()));
}

template <typename T>
T OrDie(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) Die(absl::StrCat(what, ": ", v.status().message()));
  return std::move(*v);
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

using Clock = std::chrono::steady_clock;
double MsSince(Clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
}

// ---- Configuration -----------------------------------------------------------------------

struct Shape {
  int32_t q_heads = 32, kv_heads = 8;
  std::string Name() const { return absl::StrCat(q_heads, "x", kv_heads); }
};

struct Method {
  std::string name;
  twl_backend backend = TWL_BACKEND_GPU_OFFLOAD;
  int32_t budget_tokens = 0;  // 0: library default
  bool dense = false;         // every layer dense
  bool quest_alone = false;   // p = 1 per call
  bool disk = false;          // a disk tier under a smaller host pool
  bool graph = false;         // bound batch, each layer's decode replayed from a CUDA graph
  twl_selector selector = TWL_SELECTOR_DEFAULT;
  int32_t cache_rows = -1;    // GPU cache of blocks (1) or rows (2); -1: --cache_rows
};

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
  } else if (name == "hbm-graph") {
    m->backend = TWL_BACKEND_GPU_HBM;
    m->graph = true;
  } else if (name == "offload-graph") {
    m->backend = TWL_BACKEND_GPU_OFFLOAD;
    m->graph = true;
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
  } else if (name == "cpu") {
    m->backend = TWL_BACKEND_CPU;
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

// ---- Device / host buffers (the bench's own memory, not the runtime's) -------------------

class Buf {
 public:
  Buf() = default;
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  ~Buf() { Reset(); }
  void Reset() {
    if (p_ && device_) gpu::Free(p_);
    host_.clear();
    host_.shrink_to_fit();
    p_ = nullptr;
    bytes_ = 0;
  }
  void Resize(size_t bytes, bool device) {
    if (bytes <= bytes_ && device == device_ && (p_ || bytes == 0)) return;
    Reset();
    device_ = device;
    bytes_ = std::max<size_t>(bytes, 256);
    if (device) {
      p_ = OrDie(gpu::Malloc(bytes_), "device allocation");
    } else {
      host_.assign(bytes_, 0);
      p_ = host_.data();
    }
  }
  template <typename T>
  T* as() const {
    return static_cast<T*>(p_);
  }

 private:
  void* p_ = nullptr;
  size_t bytes_ = 0;
  bool device_ = false;
  std::vector<char> host_;
};

// ---- One configuration --------------------------------------------------------------------

struct Running {
  twl_seq_id id = TWL_INVALID_SEQ_ID;
  int32_t synth_id = 0;  // the generator's sequence index
  int32_t len = 0;       // tokens cached in every layer
  int32_t target = 0;    // prompt length
};

struct Result {
  std::string shape, workload, method;
  int32_t batch = 0, mean_len = 0;
  double ms_layer_step = NAN, gpu_ms_layer_step = NAN, tokens_per_s = NAN;
  double ms_select = 0, ms_prune = 0, ms_fetch = 0, ms_attend = 0;
  double ms_append = NAN;  // per layer-step, host wall time of the appends alone
  double ms_issue = NAN;   // per layer-step, host time until every call of the step returned
  double hit_rate = NAN, mb_h2d = 0, kept_kv = 0, kept_q = 0;
  std::string kept_by_layer;  // "L<layer>:<mean attended tokens per KV head>" ...
  // From the telemetry steps (--telemetry_steps), per layer: "L<layer>:<hit>/<MB h2d>/<MB in
  // place>" (the offload store's cache differs by layer: the mean alone hides which layers
  // read in place); the number of layer figures behind the stage split and the source.
  std::string tele_by_layer;
  int32_t tele_decodes = 0;
  double mb_in_place = 0;  // of mb_h2d: kept rows read in place (not admitted to the cache)
  double gpu_mem_ratio = NAN;  // GPU bytes of the runtime / FP16 KV bytes cached now
  // GPU bytes / the FP16 pool's capacity: the runtime sizes its GPU stores (INT4 K, selector
  // metadata, cache) by the pool, which this benchmark sizes for the largest batch it can hold
  // (longest lengths + replacement sequences), so gpu/kv overstates the structural cost.
  double gpu_pool_ratio = NAN;
  double prefill_gbps = NAN, churn_prefill_ms = NAN;
  // Accuracy over the sampled query heads.
  int32_t heads = 0;
  double min_mass = NAN, mean_mass = NAN, frac_mass_ok = NAN;
  double median_err = NAN, max_err = NAN, median_err_ratio = NAN, max_err_ratio = NAN;
  double median_oracle_kept = NAN;
  // Over the sampled (sequence, KV head) units: tokens attended (the group's union) and the
  // union of the group's exact top-p sets, both means: the like-for-like size comparison
  // (kept kv above is a mean over every unit; oracle kept a median over query heads).
  double sample_attended = NAN, sample_oracle_union = NAN;
  // Disk tier: MB/s read from storage over the measured steps (wall time), and the step
  // figures of the last layer of each measured step (bytes read, read-ahead, waits).
  double disk_mb_s = NAN, disk_mb_step = NAN, disk_waits = NAN, disk_read_ahead = NAN;
  double host_pool_gib = NAN, kv_gib = NAN;
};

// Sums of published step figures (the stage split, cache and bytes), and their mean.
struct StageFigures {
  double sel = 0, pru = 0, fet = 0, att = 0, hit = 0, h2d = 0, inplace = 0, kkv = 0, kq = 0;
  int32_t n = 0;
  void Add(const twl_step_stats& s) {
    sel += s.ms_select, pru += s.ms_prune, fet += s.ms_fetch, att += s.ms_attend;
    hit += s.cache_hit_rate, h2d += double(s.bytes_h2d), inplace += double(s.bytes_in_place);
    kkv += s.mean_kept_tokens_kv, kq += s.mean_kept_tokens;
    ++n;
  }
  // Adds the mean of `f` as one sample (a mean of per-layer means).
  void AddMean(const StageFigures& f) {
    const double d = std::max(f.n, 1);
    sel += f.sel / d, pru += f.pru / d, fet += f.fet / d, att += f.att / d;
    hit += f.hit / d, h2d += f.h2d / d, inplace += f.inplace / d;
    kkv += f.kkv / d, kq += f.kq / d;
    ++n;
  }
  void WriteMean(Result* r) const {
    const double d = std::max(n, 1);
    r->ms_select = sel / d, r->ms_prune = pru / d, r->ms_fetch = fet / d, r->ms_attend = att / d;
    r->hit_rate = hit / d, r->mb_h2d = h2d / d / 1e6, r->mb_in_place = inplace / d / 1e6;
    r->kept_kv = kkv / d, r->kept_q = kq / d;
  }
};

double Median(std::vector<double> v) {
  if (v.empty()) return NAN;
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

class Config {
 public:
  Config(const Shape& shape, int32_t batch, const std::string& workload, const Method& m,
         bool gpu)
      : shape_(shape), batch_(batch), workload_(workload), method_(m), gpu_(gpu) {}
  ~Config() {
    UnbindGraphs();
    if (rt_) twl_runtime_free(rt_);
    if (stream_) gpu::StreamDestroy(stream_);
    for (void* e : {ev0_, ev1_}) {
      if (e) gpu::EventDestroy(e);
    }
  }

  Result Run();

 private:
  int32_t D() const { return absl::GetFlag(FLAGS_head_dim); }
  int32_t L() const { return absl::GetFlag(FLAGS_layers); }
  int64_t RowElems() const { return int64_t(shape_.kv_heads) * D(); }
  int32_t DrawLength() {
    const double ctx = absl::GetFlag(FLAGS_context), s = absl::GetFlag(FLAGS_len_spread);
    std::uniform_real_distribution<double> u(ctx * (1 - s), ctx * (1 + s));
    return std::max(16, int32_t(u(rng_)));
  }
  SynthSpec Spec(int32_t layer) const {
    return Workload(workload_, shape_.kv_heads, D(), absl::GetFlag(FLAGS_context),
                    absl::GetFlag(FLAGS_seed), layer);
  }
  void CreateRuntime(int64_t max_tokens);
  void Prefill(Running* r);  // appends r->target tokens in every layer
  void StartSequence(Running* r);
  void GenerateSegment(int32_t first_step, int32_t steps);
  // poll_kept: read the newest published figures after every decode (per-layer attended
  // tokens); done only in warm-up steps, so the timed steps hold the engine's calls alone.
  // sync_each (the telemetry steps): wait for the device after every decode and record the
  // figures then published (the previous decode's: every layer but a step's last) by layer;
  // graph methods decode eagerly there (bound decodes publish nothing).
  void Step(int32_t seg_step, double* append_ms, bool poll_kept, bool sync_each = false);
  // Records published figures (once per decode id) into kept_by_layer_ (warm-up) or
  // tele_by_layer_ (telemetry steps).
  void Poll(bool telemetry);
  void MeasureAccuracy(Result* res);
  void BindGraphs();    // method_.graph: bind the batch, capture one graph per layer
  void UnbindGraphs();  // destroys the graphs, frees the batch (before any sequence leaves)

  const Shape shape_;
  const int32_t batch_;
  const std::string workload_;
  const Method method_;
  const bool gpu_;
  std::mt19937_64 rng_{absl::GetFlag(FLAGS_seed)};
  twl_runtime* rt_ = nullptr;
  void* stream_ = nullptr;
  void* ev0_ = nullptr;
  void* ev1_ = nullptr;
  std::string disk_path_;
  std::vector<Running> seqs_;
  int32_t next_synth_id_ = 0;
  Buf chunk_k_, chunk_v_;  // prefill staging
  Buf seg_q_, seg_k_, seg_v_, out_;
  std::vector<int32_t> synth_ids_;
  Buf synth_ids_dev_;
  double prefill_ms_ = 0;
  int64_t prefill_bytes_ = 0;
  // Mean attended tokens per (sequence, KV head), by layer, over the warm-up decodes whose
  // figures were published (the accuracy sample reads one layer; budgets differ by layer).
  std::map<int32_t, std::pair<double, int32_t>> kept_by_layer_;
  int64_t kept_seen_step_ = -1;
  // Sums of the telemetry steps' figures by layer.
  std::map<int32_t, StageFigures> tele_by_layer_;
  int32_t graph_room_ = 0;  // tokens per sequence and layer the bound batch has room for
  twl_batch_id batch_id_ = TWL_INVALID_BATCH_ID;
  std::vector<void*> graphs_;  // [layer] instantiated graphs of twl_decode_batch
  Buf graph_q_, graph_out_;    // the graphs' fixed q [layer][B][Hq][D] and out buffers

 public:
  // The telemetry steps' figures: each layer's mean, then the mean over layers (every layer
  // weighs the same, as in the per layer-step time). False when none were recorded.
  bool TelemetryByLayer(Result* res) const {
    if (tele_by_layer_.empty()) return false;
    StageFigures m;
    std::string by_layer;
    int32_t decodes = 0;
    for (const auto& [layer, f] : tele_by_layer_) {
      const double n = std::max(f.n, 1);
      m.AddMean(f);
      decodes += f.n;
      absl::StrAppend(&by_layer, by_layer.empty() ? "" : " ",
                      absl::StrFormat("L%d:%.3f/%.1f/%.1f", layer, f.hit / n, f.h2d / n / 1e6,
                                      f.inplace / n / 1e6));
    }
    m.WriteMean(res);
    res->tele_by_layer = by_layer;
    res->tele_decodes = decodes;
    return true;
  }
  std::string KeptByLayer() const {
    std::string out;
    for (const auto& [layer, sum] : kept_by_layer_) {
      absl::StrAppend(&out, out.empty() ? "" : " ", "L", layer, ":",
                      int64_t(sum.first / std::max(sum.second, 1)));
    }
    return out;
  }
};

void Config::CreateRuntime(int64_t max_tokens) {
  twl_runtime_config c = twl_runtime_config_default();
  c.num_layers = L();
  c.num_q_heads = shape_.q_heads;
  c.num_kv_heads = shape_.kv_heads;
  c.head_dim = D();
  c.backend = method_.backend;
  c.selector_budget_tokens = method_.budget_tokens;
  c.selector = method_.selector;
  c.dense_layers = method_.dense ? L() : 0;
  c.top_p = float(absl::GetFlag(FLAGS_top_p));
  c.k_scheme = absl::GetFlag(FLAGS_k_scheme);
  c.cache_rows = method_.cache_rows >= 0 ? method_.cache_rows : absl::GetFlag(FLAGS_cache_rows);
  c.collect_telemetry = 1;
  const int64_t page = 16;
  const int64_t kv_bytes_all = max_tokens * L() * RowElems() * 2 * 2;
  // Pool: every sequence's pages in every layer, plus a page of slack per (sequence, layer).
  c.host_pool_bytes = kv_bytes_all + int64_t(batch_ + 1) * L() * page * RowElems() * 4 +
                      (int64_t(64) << 20);
  if (method_.disk) {
    // The same page capacity, most of it on disk.
    const double gib = absl::GetFlag(FLAGS_disk_host_pool_gib);
    const int64_t all = c.host_pool_bytes;
    c.host_pool_bytes = gib > 0 ? int64_t(gib * double(int64_t(1) << 30)) : kv_bytes_all / 4;
    disk_path_ = absl::GetFlag(FLAGS_disk_dir);
    c.disk_path = disk_path_.c_str();
    c.disk_bytes = all;
  }
  if (method_.backend == TWL_BACKEND_GPU_OFFLOAD) {
    c.gpu_cache_bytes = std::max<int64_t>(int64_t(absl::GetFlag(FLAGS_cache_frac) * kv_bytes_all),
                                          int64_t(1) << 20);
  }
  Check(twl_runtime_create(&c, &rt_), nullptr, "twl_runtime_create");
}

void Config::Prefill(Running* r) {
  const int32_t chunk = std::max(16, absl::GetFlag(FLAGS_prefill_chunk));
  const size_t bytes = size_t(chunk) * size_t(RowElems()) * 2;
  chunk_k_.Resize(bytes, gpu_);
  chunk_v_.Resize(bytes, gpu_);
  const twl_memory_space space = gpu_ ? TWL_MEMORY_DEVICE : TWL_MEMORY_HOST;
  for (int32_t l = 0; l < L(); ++l) {
    const SynthSpec spec = Spec(l);
    for (int32_t t0 = 0; t0 < r->target; t0 += chunk) {
      const int32_t n = std::min(chunk, r->target - t0);
      if (gpu_) {
        CheckOk(LaunchSynthKv(spec, r->synth_id, t0, n, r->target, chunk_k_.as<fp16_t>(),
                              chunk_v_.as<fp16_t>(), stream_),
                "synth kv");
        CheckOk(gpu::StreamSync(stream_), "synth sync");
      } else {
        SynthKvHost(spec, r->synth_id, t0, n, r->target, chunk_k_.as<fp16_t>(),
                    chunk_v_.as<fp16_t>());
      }
      // One batched append on the engine's stream, timed to its completion.
      const auto t_start = Clock::now();
      Check(twl_append_batch(rt_, l, &r->id, &n, 1, chunk_k_.as<void>(), chunk_v_.as<void>(),
                             TWL_DTYPE_FP16, space, stream_),
            rt_, "prefill append");
      if (gpu_) CheckOk(gpu::StreamSync(stream_), "prefill sync");
      prefill_ms_ += MsSince(t_start);
      prefill_bytes_ += int64_t(n) * RowElems() * 4;
    }
  }
  r->len = r->target;
}

void Config::StartSequence(Running* r) {
  Check(twl_sequence_create(rt_, &r->id), rt_, "twl_sequence_create");
  r->synth_id = next_synth_id_++;
  r->target = DrawLength();
  Prefill(r);
}

// Inputs of `steps` steps starting at `first_step` for the current batch, made before the
// timed loop so that the loop holds only the engine's calls: q [step][layer][B][Hq][D],
// new K/V [step][layer][B][Hkv][D].
void Config::GenerateSegment(int32_t first_step, int32_t steps) {
  const int32_t B = batch_, Hq = shape_.q_heads;
  const size_t q_elems = size_t(steps) * L() * B * Hq * D();
  const size_t kv_elems = size_t(steps) * L() * B * size_t(RowElems());
  seg_q_.Resize(q_elems * 2, gpu_);
  seg_k_.Resize(kv_elems * 2, gpu_);
  seg_v_.Resize(kv_elems * 2, gpu_);
  out_.Resize(size_t(B) * Hq * D() * 2, gpu_);
  synth_ids_.resize(size_t(B));
  const int32_t drift = std::max(1, absl::GetFlag(FLAGS_drift_every));
  for (int32_t st = 0; st < steps; ++st) {
    const int32_t step = first_step + st;
    for (int32_t l = 0; l < L(); ++l) {
      const SynthSpec spec = Spec(l);
      const size_t base = (size_t(st) * L() + l) * B;
      for (int32_t b = 0; b < B; ++b) {
        const Running& r = seqs_[size_t(b)];
        synth_ids_[size_t(b)] = r.synth_id;
        const int32_t pos = r.len + st;  // the new token's position
        fp16_t* k = seg_k_.as<fp16_t>() + (base + b) * RowElems();
        fp16_t* v = seg_v_.as<fp16_t>() + (base + b) * RowElems();
        if (gpu_) {
          CheckOk(LaunchSynthKv(spec, r.synth_id, pos, 1, pos + 1, k, v, stream_), "synth kv");
        } else {
          SynthKvHost(spec, r.synth_id, pos, 1, pos + 1, k, v);
        }
      }
      // Drifting: the region each query looks at moves every `drift` steps (per sequence
      // offset, so sequences do not move together).
      const int32_t regions =
          spec.region_tokens > 0 ? std::max(1, absl::GetFlag(FLAGS_context) / spec.region_tokens)
                                 : 1;
      fp16_t* q = seg_q_.as<fp16_t>() + base * Hq * D();
      for (int32_t b = 0; b < B; ++b) {
        const int32_t region = (step / drift + b) % regions;
        if (gpu_) {
          synth_ids_dev_.Resize(4, true);
          CheckOk(gpu::CopyToDevice(synth_ids_dev_.as<void>(), &synth_ids_[size_t(b)], 4,
                                    nullptr),
                  "ids");
          CheckOk(LaunchSynthQueriesFor(spec, synth_ids_dev_.as<int32_t>(), 1, Hq, region,
                                        q + int64_t(b) * Hq * D(), nullptr),
                  "synth q");
          CheckOk(gpu::DeviceSync(), "synth q sync");
        } else {
          SynthQueriesHost(spec, &synth_ids_[size_t(b)], 1, Hq, region,
                           q + int64_t(b) * Hq * D());
        }
      }
    }
  }
  if (gpu_) CheckOk(gpu::DeviceSync(), "segment inputs");
}

// One decode step over all layers: per layer, append every sequence's new token, then decode.
void Config::Step(int32_t seg_step, double* append_ms, bool poll_kept, bool sync_each) {
  const int32_t B = batch_, Hq = shape_.q_heads;
  const twl_memory_space space = gpu_ ? TWL_MEMORY_DEVICE : TWL_MEMORY_HOST;
  std::vector<twl_seq_id> ids(static_cast<size_t>(B));
  for (int32_t b = 0; b < B; ++b) ids[size_t(b)] = seqs_[size_t(b)].id;
  std::vector<float> ones(static_cast<size_t>(B), 1.0f);
  const std::vector<int32_t> counts(static_cast<size_t>(B), 1);
  for (int32_t l = 0; l < L(); ++l) {
    const size_t base = (size_t(seg_step) * L() + l) * B;
    const auto ta = Clock::now();
    // The new token of every sequence in one call, queued on the engine's stream.
    Check(twl_append_batch(rt_, l, ids.data(), counts.data(), B,
                           seg_k_.as<fp16_t>() + base * RowElems(),
                           seg_v_.as<fp16_t>() + base * RowElems(), TWL_DTYPE_FP16, space,
                           stream_),
          rt_, "twl_append_batch");
    if (append_ms) *append_ms += MsSince(ta);
    const fp16_t* q = seg_q_.as<fp16_t>() + base * Hq * D();
    if (method_.graph && !sync_each) {
      // The engine's q projection would write into the graph's buffer; here it is copied.
      const size_t q_bytes = size_t(B) * Hq * D() * 2;
      CheckOk(gpu::CopyOnDevice(graph_q_.as<char>() + size_t(l) * q_bytes, q, q_bytes, stream_),
              "graph q");
      CheckOk(gpu::GraphLaunch(graphs_[size_t(l)], stream_), "graph launch");
      continue;
    }
    Check(twl_decode(rt_, l, ids.data(), B, q, out_.as<void>(), space,
                     method_.quest_alone ? ones.data() : nullptr, stream_),
          rt_, "twl_decode");
    if (sync_each) {
      if (gpu_) CheckOk(gpu::StreamSync(stream_), "telemetry sync");
      Poll(/*telemetry=*/true);
    } else if (poll_kept) {
      Poll(/*telemetry=*/false);
    }
  }
  for (Running& r : seqs_) ++r.len;
}

void Config::Poll(bool telemetry) {
  twl_step_stats st{};
  st.struct_size = sizeof(st);
  if (twl_runtime_last_step(rt_, &st) != TWL_OK || st.num_seqs <= 0 ||
      st.step == kept_seen_step_) {
    return;
  }
  kept_seen_step_ = st.step;
  if (!telemetry) {
    auto& acc = kept_by_layer_[st.layer];
    acc.first += st.mean_kept_tokens_kv;
    ++acc.second;
    return;
  }
  tele_by_layer_[st.layer].Add(st);
}

void Config::BindGraphs() {
  const int32_t B = batch_, Hq = shape_.q_heads;
  std::vector<twl_seq_id> ids(static_cast<size_t>(B));
  for (int32_t b = 0; b < B; ++b) ids[size_t(b)] = seqs_[size_t(b)].id;
  Check(twl_batch_create(rt_, ids.data(), B, graph_room_, &batch_id_), rt_, "twl_batch_create");
  const size_t q_bytes = size_t(B) * Hq * D() * 2;
  graph_q_.Resize(q_bytes * L(), true);
  graph_out_.Resize(q_bytes, true);
  CheckOk(gpu::Memset(graph_q_.as<void>(), 0, q_bytes * L(), stream_), "graph q");
  // One eager decode per layer first: one-time kernel attributes are set outside the capture.
  for (int32_t l = 0; l < L(); ++l) {
    Check(twl_decode_batch(rt_, batch_id_, l, graph_q_.as<char>() + size_t(l) * q_bytes,
                           graph_out_.as<void>(), TWL_DTYPE_FP16, stream_),
          rt_, "twl_decode_batch (warm-up)");
  }
  CheckOk(gpu::StreamSync(stream_), "graph warm-up");
  for (int32_t l = 0; l < L(); ++l) {
    CheckOk(gpu::StreamBeginCapture(stream_), "begin capture");
    Check(twl_decode_batch(rt_, batch_id_, l, graph_q_.as<char>() + size_t(l) * q_bytes,
                           graph_out_.as<void>(), TWL_DTYPE_FP16, stream_),
          rt_, "twl_decode_batch (capture)");
    graphs_.push_back(OrDie(gpu::StreamEndCapture(stream_), "end capture"));
  }
}

void Config::UnbindGraphs() {
  if (batch_id_ == TWL_INVALID_BATCH_ID) return;
  CheckOk(gpu::StreamSync(stream_), "graph drain");
  for (void* g : graphs_) gpu::GraphDestroy(g);
  graphs_.clear();
  Check(twl_batch_free(rt_, batch_id_), rt_, "twl_batch_free");
  batch_id_ = TWL_INVALID_BATCH_ID;
}

void Config::MeasureAccuracy(Result* res) {
  // One more step with capture on; the sampled units are read back at the middle layer.
  const int32_t B = batch_, Hq = shape_.q_heads, H = shape_.kv_heads;
  const int32_t group = Hq / H;
  const int32_t chosen = absl::GetFlag(FLAGS_accuracy_layer);
  const int32_t layer = chosen >= 0 && chosen < L() ? chosen : L() / 2;
  GenerateSegment(1 << 20, 1);
  Check(twl_runtime_set_capture_kept(rt_, 1), rt_, "capture on");
  std::vector<twl_seq_id> ids(static_cast<size_t>(B));
  for (int32_t b = 0; b < B; ++b) ids[size_t(b)] = seqs_[size_t(b)].id;
  const twl_memory_space space = gpu_ ? TWL_MEMORY_DEVICE : TWL_MEMORY_HOST;
  std::vector<float> ones(static_cast<size_t>(B), 1.0f);
  const std::vector<int32_t> counts(static_cast<size_t>(B), 1);
  for (int32_t l = 0; l < L(); ++l) {
    const size_t base = size_t(l) * B;
    Check(twl_append_batch(rt_, l, ids.data(), counts.data(), B,
                           seg_k_.as<fp16_t>() + base * RowElems(),
                           seg_v_.as<fp16_t>() + base * RowElems(), TWL_DTYPE_FP16, space,
                           stream_),
          rt_, "twl_append_batch");
    if (l != layer) continue;
    Check(twl_decode(rt_, l, ids.data(), B, seg_q_.as<fp16_t>() + base * Hq * D(),
                     out_.as<void>(), space, method_.quest_alone ? ones.data() : nullptr,
                     stream_),
          rt_, "twl_decode (capture)");
  }
  if (gpu_) CheckOk(gpu::StreamSync(stream_), "capture sync");
  Check(twl_runtime_set_capture_kept(rt_, 0), rt_, "capture off");
  for (Running& r : seqs_) ++r.len;

  const size_t qo = size_t(B) * Hq * D();
  std::vector<fp16_t> q(qo), out(qo);
  const fp16_t* q_src = seg_q_.as<fp16_t>() + size_t(layer) * B * Hq * D();
  if (gpu_) {
    CheckOk(gpu::CopyToHost(q.data(), q_src, qo * 2, nullptr), "q back");
    CheckOk(gpu::CopyToHost(out.data(), out_.as<void>(), qo * 2, nullptr), "out back");
  } else {
    std::memcpy(q.data(), q_src, qo * 2);
    std::memcpy(out.data(), out_.as<void>(), qo * 2);
  }
  // Sample units: spread over sequences and KV heads (every KV head of a few sequences, so
  // flat and peaked heads are both seen).
  const int32_t want = std::min(absl::GetFlag(FLAGS_sample_units), B * H);
  const int32_t n_seqs = std::max(1, std::min(B, (want + H - 1) / H));
  const double p = method_.quest_alone || method_.dense ? 1.0 : absl::GetFlag(FLAGS_top_p);
  const double p_eval = absl::GetFlag(FLAGS_top_p);  // oracle reference at the runtime's p
  std::vector<double> mass, err, ratio, oracle_kept;
  double attended_sum = 0, union_sum = 0;
  int32_t units = 0;
  int32_t mass_ok = 0;
  for (int32_t si = 0; si < n_seqs; ++si) {
    const int32_t b = int32_t(int64_t(si) * B / n_seqs);
    const twl_seq_id id = ids[size_t(b)];
    int32_t len = 0;
    Check(twl_sequence_read_kv(rt_, id, layer, nullptr, nullptr, 0, &len), rt_, "kv size");
    std::vector<uint16_t> k(size_t(len) * RowElems()), v(size_t(len) * RowElems());
    Check(twl_sequence_read_kv(rt_, id, layer, k.data(), v.data(), len, &len), rt_, "read kv");
    for (int32_t h = 0; h < H; ++h) {
      // A size query (capacity 0) answers INVALID_ARGUMENT when the list is not empty, with
      // the count filled in.
      int32_t count = 0;
      twl_runtime_last_step_kept(rt_, b, h, nullptr, 0, &count);
      std::vector<int32_t> kept(size_t(std::max(count, 1)));
      Check(twl_runtime_last_step_kept(rt_, b, h, kept.data(), int64_t(kept.size()), &count),
            rt_, "kept");
      kept.resize(size_t(count));
      std::vector<int32_t> oracle_union;
      for (int32_t g = 0; g < group; ++g) {
        const int32_t qh = h * group + g;
        const size_t off = (size_t(b) * Hq + qh) * D();
        const bench::HeadAccuracy a =
            bench::MeasureHead(k.data(), v.data(), len, H, D(), h, q.data() + off,
                               out.data() + off, kept, p_eval);
        mass.push_back(a.true_mass);
        err.push_back(a.rel_err);
        // FP16 output rounding floors the error near 1e-3; the ratio uses that floor.
        ratio.push_back(a.rel_err / std::max(a.oracle_err, 2e-3));
        oracle_kept.push_back(a.oracle_kept);
        if (a.true_mass >= std::min(p, p_eval) - 0.02) ++mass_ok;
        std::vector<int32_t> merged;
        std::set_union(oracle_union.begin(), oracle_union.end(), a.oracle_tokens.begin(),
                       a.oracle_tokens.end(), std::back_inserter(merged));
        oracle_union.swap(merged);
      }
      attended_sum += double(kept.size());
      union_sum += double(oracle_union.size());
      ++units;
    }
  }
  res->heads = int32_t(mass.size());
  if (mass.empty()) return;
  res->min_mass = *std::min_element(mass.begin(), mass.end());
  double s = 0;
  for (double m : mass) s += m;
  res->mean_mass = s / double(mass.size());
  res->frac_mass_ok = double(mass_ok) / double(mass.size());
  res->median_err = Median(err);
  res->max_err = *std::max_element(err.begin(), err.end());
  res->median_err_ratio = Median(ratio);
  res->max_err_ratio = *std::max_element(ratio.begin(), ratio.end());
  res->median_oracle_kept = Median(oracle_kept);
  res->sample_attended = attended_sum / double(std::max(units, 1));
  res->sample_oracle_union = union_sum / double(std::max(units, 1));
}

Result Config::Run() {
  Result res;
  res.shape = shape_.Name();
  res.workload = workload_;
  res.method = method_.name;
  res.batch = batch_;
  if (gpu_) {
    stream_ = OrDie(gpu::StreamCreate(), "stream");
    ev0_ = OrDie(gpu::EventCreate(), "event");
    ev1_ = OrDie(gpu::EventCreate(), "event");
  }
  const int32_t steps = method_.name == "full-offload"
                            ? std::max(1, absl::GetFlag(FLAGS_full_offload_steps))
                            : std::max(1, absl::GetFlag(FLAGS_steps));
  const int32_t warmup = std::max(0, absl::GetFlag(FLAGS_warmup));
  const int32_t churn = absl::GetFlag(FLAGS_churn_every);
  const double ctx = absl::GetFlag(FLAGS_context), spread = absl::GetFlag(FLAGS_len_spread);
  const int32_t max_len = int32_t(ctx * (1 + spread)) + 1;
  const int32_t churns = churn > 0 ? (warmup + steps) / churn + 1 : 0;
  // The disk tier's steps take seconds: its figures come from the measured steps.
  const int32_t tele_steps =
      method_.disk ? 0 : std::max(0, absl::GetFlag(FLAGS_telemetry_steps));
  // Room for the batch, the sequences that replace finished ones while pages are held, and
  // the decoded tokens.
  const int64_t max_tokens =
      int64_t(batch_ + std::min(churns, 2)) * (max_len + warmup + steps + tele_steps + 8);
  CreateRuntime(max_tokens);

  seqs_.resize(size_t(batch_));
  const auto p0 = Clock::now();
  for (Running& r : seqs_) {
    StartSequence(&r);
    if (method_.disk) {  // a disk-tier prefill of tens of GiB takes minutes: say where it is
      std::fprintf(stderr, "    prefill %d/%d sequences (%.0f s)\n", int(&r - seqs_.data()) + 1,
                   batch_, MsSince(p0) / 1000);
    }
  }
  if (gpu_) CheckOk(gpu::DeviceSync(), "prefill");
  if (method_.graph) {
    graph_room_ = max_len + warmup + steps + tele_steps + 8;
    BindGraphs();
  }
  res.prefill_gbps = prefill_ms_ > 0 ? double(prefill_bytes_) / (prefill_ms_ * 1e6) : NAN;
  int64_t tokens = 0;
  for (const Running& r : seqs_) tokens += r.len;
  res.mean_len = int32_t(tokens / batch_);

  double wall_ms = 0, gpu_ms = 0, issue_ms = 0, append_ms = 0, churn_ms = 0;
  int32_t measured = 0, churn_count = 0;
  StageFigures timed_figures;  // published during the measured steps (about one layer in L)
  double disk_bytes = 0, disk_waits = 0, disk_ahead = 0;
  int64_t disk_read = 0;  // bytes read from storage during the measured steps
  int64_t last_step_id = -1;  // telemetry already counted
  int32_t step = 0;
  const int32_t total = warmup + steps;
  while (step < total) {
    // A segment runs until the next churn point (or the end).
    int32_t seg = total - step;
    if (churn > 0) seg = std::min(seg, churn - step % churn);
    GenerateSegment(step, seg);
    for (int32_t st = 0; st < seg; ++st, ++step) {
      const bool timed = step >= warmup;
      const bool profiled = gpu_ && step == total - 1 && absl::GetFlag(FLAGS_profile_last_step);
      if (gpu_) CheckOk(gpu::StreamSync(stream_), "sync");
      if (profiled) gpu::ProfilerRange(true);
      if (gpu_) CheckOk(gpu::EventRecord(ev0_, stream_), "event");
      const int64_t io0 = bench::ProcessDiskReadBytes();
      const auto t0 = Clock::now();
      double a_ms = 0;
      Step(st, &a_ms, /*poll_kept=*/!timed);
      // Host time to issue the step's calls: equal to the wall time when the host paces the
      // GPU (launch/call overhead), well below it when the GPU does.
      const double issued = MsSince(t0);
      if (gpu_) CheckOk(gpu::EventRecord(ev1_, stream_), "event");
      if (gpu_) CheckOk(gpu::StreamSync(stream_), "sync");
      const double w = MsSince(t0);
      if (profiled) gpu::ProfilerRange(false);
      if (!timed) continue;
      if (io0 >= 0) disk_read += bench::ProcessDiskReadBytes() - io0;
      if (method_.disk) {
        std::fprintf(stderr, "    step %d/%d: %.1f ms\n", step + 1, total, w);
      }
      wall_ms += w;
      issue_ms += issued;
      append_ms += a_ms;
      if (gpu_) gpu_ms += double(OrDie(gpu::EventElapsedMs(ev0_, ev1_), "elapsed"));
      ++measured;
      // The newest decode whose figures were published (GPU backends publish a landed
      // earlier decode without waiting; `step` tells a new one from one already counted).
      twl_step_stats s{};
      s.struct_size = sizeof(s);
      if (twl_runtime_last_step(rt_, &s) == TWL_OK && s.num_seqs > 0 && s.step != last_step_id) {
        last_step_id = s.step;
        timed_figures.Add(s);
        disk_bytes += double(s.disk_bytes_read);
        disk_waits += double(s.disk_waits);
        disk_ahead += double(s.disk_pages_read_ahead);
      }
    }
    if (churn > 0 && step < total && step % churn == 0) {
      // The oldest running sequence finishes; a new request is prefilled in its place.
      const int32_t victim = churn_count % batch_;
      Running& r = seqs_[size_t(victim)];
      UnbindGraphs();  // a bound sequence cannot be freed
      Check(twl_sequence_free(rt_, r.id), rt_, "twl_sequence_free");
      const double before = prefill_ms_;
      StartSequence(&r);
      if (gpu_) CheckOk(gpu::DeviceSync(), "churn prefill");
      if (method_.graph) BindGraphs();
      churn_ms += prefill_ms_ - before;
      ++churn_count;
    }
  }
  const double layer_steps = double(measured) * L();
  res.ms_layer_step = wall_ms / layer_steps;
  res.gpu_ms_layer_step = gpu_ ? gpu_ms / layer_steps : NAN;
  res.ms_append = append_ms / layer_steps;
  res.ms_issue = issue_ms / layer_steps;
  res.tokens_per_s = double(batch_) * measured / (wall_ms * 1e-3);
  const int32_t tele = timed_figures.n;
  if (tele > 0) {
    timed_figures.WriteMean(&res);  // replaced by the telemetry steps' figures when they run
    if (method_.disk) {
      res.disk_mb_step = disk_bytes / tele / 1e6;
      res.disk_waits = disk_waits / tele;
      res.disk_read_ahead = disk_ahead / tele;
    }
  }
  if (method_.disk) res.disk_mb_s = double(disk_read) / 1e6 / (wall_ms * 1e-3);
  if (tele_steps > 0) {
    // After the measured steps (no churn inside): the stage split of every layer.
    GenerateSegment(step, tele_steps);
    for (int32_t st = 0; st < tele_steps; ++st, ++step) {
      Step(st, nullptr, /*poll_kept=*/false, /*sync_each=*/true);
    }
    TelemetryByLayer(&res);
  }
  res.churn_prefill_ms = churn_count ? churn_ms / churn_count : NAN;

  twl_memory_usage mem{};
  mem.struct_size = sizeof(mem);
  Check(twl_runtime_memory(rt_, &mem), rt_, "twl_runtime_memory");
  int64_t cached = 0;
  for (const Running& r : seqs_) cached += r.len;
  const double kv_bytes = double(cached) * L() * double(RowElems()) * 4;
  const double gpu_bytes =
      double(mem.gpu_quant_bytes + mem.gpu_cache_bytes + mem.gpu_fp16_bytes);
  res.gpu_mem_ratio = gpu_ ? gpu_bytes / kv_bytes : 0.0;
  res.gpu_pool_ratio =
      gpu_ && mem.host_pool_bytes_total > 0 ? gpu_bytes / double(mem.host_pool_bytes_total) : 0.0;
  res.host_pool_gib = double(mem.host_pool_bytes_total) / double(int64_t(1) << 30);
  res.kv_gib = kv_bytes / double(int64_t(1) << 30);

  res.kept_by_layer = KeptByLayer();
  MeasureAccuracy(&res);
  return res;
}

// ---- Baseline CSV (bench/sdpa_serving.py) --------------------------------------------------

struct SdpaRow {
  double ms = NAN;
  std::string backend;
};

std::map<std::string, SdpaRow> ReadSdpa(const std::string& path) {
  std::map<std::string, SdpaRow> rows;
  if (path.empty()) return rows;
  std::ifstream f(path);
  if (!f) {
    std::fprintf(stderr, "twl_serve_bench: cannot read --sdpa_csv %s (no baseline)\n",
                 path.c_str());
    return rows;
  }
  std::string line;
  std::getline(f, line);  // header: q_heads,kv_heads,batch,context,backend,ms
  while (std::getline(f, line)) {
    std::vector<std::string> c = absl::StrSplit(line, ',');
    if (c.size() < 6) continue;
    double ms = 0;
    if (!absl::SimpleAtod(c[5], &ms)) continue;
    const std::string key = absl::StrCat(c[0], "x", c[1], "/", c[2], "/", c[3]);
    auto it = rows.find(key);
    if (it == rows.end() || ms < it->second.ms) rows[key] = SdpaRow{ms, c[4]};
  }
  return rows;
}

int Main(int argc, char** argv) {
  tools::ParseToolFlags(
      argc, argv, __FILE__,
      "twl_serve_bench: the serving-loop benchmark of the Twilight runtime (see the file "
      "comment of bench/serve_bench_main.cc).\nExample: twl_serve_bench --batches=8 "
      "--context=131072 --sdpa_csv=sdpa_serving.csv --out=out/serve");
  std::string mode = absl::GetFlag(FLAGS_mode);
  if (mode != "auto" && mode != "gpu" && mode != "cpu") {
    BadFlag(absl::StrCat("--mode must be auto, gpu or cpu, got '", mode, "'"));
  }
  const bool have_gpu = gpu::GpuAvailable();
  if (mode == "auto") {
    mode = have_gpu ? "gpu" : "cpu";
    if (!have_gpu) std::printf("twl_serve_bench: no GPU visible: CPU backend run\n");
  }
  if (mode == "gpu" && !have_gpu) BadFlag("--mode=gpu but no GPU is visible");
  const bool gpu = mode == "gpu";

  std::string err;
  std::vector<int32_t> batches;
  if (!ParseInts(absl::GetFlag(FLAGS_batches), &batches, &err)) BadFlag("--batches: " + err);
  std::vector<Shape> shapes;
  for (const std::string& s : ParseNames(absl::GetFlag(FLAGS_shapes))) {
    std::vector<std::string> p = absl::StrSplit(s, 'x');
    Shape sh;
    if (p.size() != 2 || !absl::SimpleAtoi(p[0], &sh.q_heads) ||
        !absl::SimpleAtoi(p[1], &sh.kv_heads) || sh.q_heads < 1 || sh.kv_heads < 1 ||
        sh.q_heads % sh.kv_heads != 0) {
      BadFlag(absl::StrCat("--shapes: '", s, "' is not QxKV with Q a multiple of KV"));
    }
    shapes.push_back(sh);
  }
  if (shapes.empty()) BadFlag("--shapes: empty");
  const std::vector<std::string> workloads = ParseNames(absl::GetFlag(FLAGS_workloads));
  for (const std::string& w : workloads) {
    if (w != "peaked" && w != "mixed" && w != "drifting") {
      BadFlag(absl::StrCat("--workloads: unknown '", w, "' (peaked, mixed, drifting)"));
    }
  }
  if (workloads.empty()) BadFlag("--workloads: empty");
  std::string method_list = absl::GetFlag(FLAGS_methods);
  if (method_list.empty()) {
    method_list = gpu ? "twilight,twilight-b8k,quest-b8k,hbm-b8k,hbm,dense-hbm,full-offload"
                      : "cpu,cpu-dense";
  }
  std::vector<Method> methods;
  for (const std::string& n : ParseNames(method_list)) {
    Method m;
    if (!MakeMethod(n, absl::GetFlag(FLAGS_quest_budget), &m)) {
      BadFlag(absl::StrCat("--methods: unknown '", n, "'"));
    }
    if (!gpu && m.backend != TWL_BACKEND_CPU) BadFlag("method " + n + " needs a GPU");
    methods.push_back(m);
  }
  if (absl::GetFlag(FLAGS_layers) < 1 || absl::GetFlag(FLAGS_context) < 16 ||
      absl::GetFlag(FLAGS_steps) < 1 || absl::GetFlag(FLAGS_head_dim) < 8 ||
      !(absl::GetFlag(FLAGS_len_spread) >= 0 && absl::GetFlag(FLAGS_len_spread) < 1) ||
      !(absl::GetFlag(FLAGS_cache_frac) > 0 && absl::GetFlag(FLAGS_cache_frac) <= 1) ||
      !(absl::GetFlag(FLAGS_top_p) > 0 && absl::GetFlag(FLAGS_top_p) <= 1) ||
      absl::GetFlag(FLAGS_quest_budget) < 16 || absl::GetFlag(FLAGS_churn_every) < 0 ||
      absl::GetFlag(FLAGS_warmup) < 0 || absl::GetFlag(FLAGS_sample_units) < 0 ||
      absl::GetFlag(FLAGS_telemetry_steps) < 0 || absl::GetFlag(FLAGS_k_scheme) < 0 ||
      absl::GetFlag(FLAGS_k_scheme) > 2) {
    BadFlag("a flag is out of range: --layers >= 1, --context >= 16, --steps >= 1, --head_dim >= 8, "
        "0 <= --len_spread < 1, 0 < --cache_frac <= 1, 0 < --top_p <= 1, --quest_budget >= 16, "
        "--churn_every/--warmup/--sample_units/--telemetry_steps >= 0, --k_scheme 0, 1 or 2");
  }
  const std::string out = absl::GetFlag(FLAGS_out);
  if (std::system(absl::StrCat("mkdir -p '", out, "'").c_str()) != 0) {
    Die("cannot create --out " + out);
  }
  const std::map<std::string, SdpaRow> sdpa = ReadSdpa(absl::GetFlag(FLAGS_sdpa_csv));

  if (gpu) {
    auto dev = gpu::CurrentDevice();
    std::printf("device: %s\n", dev.ok() ? dev->name.c_str() : "?");
  }
  std::printf("twl_serve_bench: %s mode, %d layers, context %d (+-%.0f%%), %d steps, "
              "churn every %d, cache %.0f%% of KV, k_scheme %d (%s)\n",
              mode.c_str(), absl::GetFlag(FLAGS_layers), absl::GetFlag(FLAGS_context),
              100 * absl::GetFlag(FLAGS_len_spread), absl::GetFlag(FLAGS_steps),
              absl::GetFlag(FLAGS_churn_every), 100 * absl::GetFlag(FLAGS_cache_frac),
              absl::GetFlag(FLAGS_k_scheme),
              absl::GetFlag(FLAGS_k_scheme) == TWL_K_SCHEME_TOKEN ? "INT4 per token"
              : absl::GetFlag(FLAGS_k_scheme) == TWL_K_SCHEME_PAGE_CHANNEL
                  ? "INT4 per page channel"
                  : "library default: INT4 per page channel");

  // The device's reference read rates, once, when a method runs over the disk tier.
  bench::DiskRates rates;
  bool probed = false;
  for (const Method& m : methods) {
    if (!m.disk || probed || absl::GetFlag(FLAGS_disk_probe_mib) <= 0) continue;
    std::fprintf(stderr, "probing %s: %d MiB, sequential and 8 KiB random reads ...\n",
                 absl::GetFlag(FLAGS_disk_dir).c_str(), absl::GetFlag(FLAGS_disk_probe_mib));
    absl::StatusOr<bench::DiskRates> r = bench::ProbeDiskReadRates(
        absl::GetFlag(FLAGS_disk_dir), absl::GetFlag(FLAGS_disk_probe_mib), 128, 10.0);
    CheckOk(r.status(), "disk probe");
    rates = *r;
    probed = true;
    std::printf("disk %s (%s%s): sequential reads %.0f MiB/s, 8 KiB random reads %.0f MiB/s\n",
                absl::GetFlag(FLAGS_disk_dir).c_str(), rates.engine.c_str(),
                rates.direct_io ? ", O_DIRECT" : "", rates.seq_mib_s, rates.rand8k_mib_s);
  }

  bench::Table table({"shape", "B", "workload", "method", "ms/layer-step", "x dense", "tok/s",
                      "issue ms", "append ms", "sel", "prune", "fetch", "attend", "hit", "MB h2d",
                      "kept kv", "gpu/kv", "gpu/pool", "prefill GB/s", "min mass", "mass ok",
                      "med err", "max err", "err/oracle med", "err/oracle max",
                      "oracle kept", "sample kept kv", "oracle union kv", "baseline",
                      "host pool GiB", "KV GiB", "disk MB/s", "disk/seq", "disk/rand8k",
                      "disk MB/step", "disk waits", "read-ahead pages", "MB in place",
                      "telemetry decodes"});
  table.title = "serving loop: per layer-step with appends (wall time), accuracy vs dense";
  const int32_t n_total = int32_t(shapes.size() * batches.size() * workloads.size() * methods.size());
  int32_t done = 0;
  std::map<std::string, std::vector<std::pair<double, double>>> plot_points;
  for (const Shape& shape : shapes) {
    for (const std::string& w : workloads) {
      for (int32_t B : batches) {
        for (const Method& m : methods) {
          ++done;
          std::fprintf(stderr, "[%d/%d] %s B=%d %s %s ...\n", done, n_total,
                       shape.Name().c_str(), B, w.c_str(), m.name.c_str());
          const auto t0 = Clock::now();
          Result r;
          {
            Config cfg(shape, B, w, m, gpu);
            r = cfg.Run();
          }
          const std::string key =
              absl::StrCat(shape.Name(), "/", B, "/", absl::GetFlag(FLAGS_context));
          auto it = sdpa.find(key);
          const double base_ms = it != sdpa.end() ? it->second.ms : NAN;
          const std::string base_name =
              it != sdpa.end() ? "sdpa-" + it->second.backend : "none";
          const double ratio = r.ms_layer_step / base_ms;
          table.AddRow({r.shape, B, r.workload, r.method, Cell(r.ms_layer_step, 4),
                        Cell(ratio, 3), Cell(r.tokens_per_s, 4), Cell(r.ms_issue, 3), Cell(r.ms_append, 3),
                        Cell(r.ms_select, 3), Cell(r.ms_prune, 3), Cell(r.ms_fetch, 3),
                        Cell(r.ms_attend, 3), Cell(r.hit_rate, 3), Cell(r.mb_h2d, 3),
                        Cell(r.kept_kv, 4), Cell(r.gpu_mem_ratio, 3), Cell(r.gpu_pool_ratio, 3),
                        Cell(r.prefill_gbps, 3),
                        Cell(r.min_mass, 3), Cell(r.frac_mass_ok, 3), Cell(r.median_err, 3),
                        Cell(r.max_err, 3), Cell(r.median_err_ratio, 3),
                        Cell(r.max_err_ratio, 3), Cell(r.median_oracle_kept, 4),
                        Cell(r.sample_attended, 4), Cell(r.sample_oracle_union, 4), base_name,
                        Cell(r.host_pool_gib, 3), Cell(r.kv_gib, 3), Cell(r.disk_mb_s, 4),
                        Cell(probed ? r.disk_mb_s / (rates.seq_mib_s * 1.048576) : NAN, 3),
                        Cell(probed ? r.disk_mb_s / (rates.rand8k_mib_s * 1.048576) : NAN, 3),
                        Cell(r.disk_mb_step, 4), Cell(r.disk_waits, 3),
                        Cell(r.disk_read_ahead, 4), Cell(r.mb_in_place, 3),
                        int64_t(r.tele_decodes)});
          std::fprintf(stderr,
                       "    %.4f ms/layer-step (%.3fx %s), gpu %.4f ms, host issue %.4f ms (append %.4f), "
                       "sel/prune/fetch/attend %.3f/%.3f/%.3f/%.3f ms, hit %.3f, %.1f MB h2d (in place %.1f), "
                       "min true mass %.3f, max err %.3g (%.1f s)\n",
                       r.ms_layer_step, ratio, base_name.c_str(), r.gpu_ms_layer_step,
                       r.ms_issue, r.ms_append, r.ms_select, r.ms_prune, r.ms_fetch,
                       r.ms_attend, r.hit_rate, r.mb_h2d, r.mb_in_place, r.min_mass, r.max_err,
                       MsSince(t0) / 1000);
          if (!r.tele_by_layer.empty()) {
            std::fprintf(stderr,
                         "    stage split over %d decodes of every layer (telemetry steps); "
                         "hit / MB h2d / MB in place by layer: %s\n",
                         r.tele_decodes, r.tele_by_layer.c_str());
          }
          if (!r.kept_by_layer.empty()) {
            std::fprintf(stderr,
                         "    attended tokens per KV head by layer (warm-up steps): %s\n",
                         r.kept_by_layer.c_str());
          }
          if (w == workloads.front() && shape.Name() == shapes.front().Name()) {
            plot_points[m.name].push_back({double(B), r.ms_layer_step});
            if (!std::isnan(base_ms)) plot_points["dense " + base_name].push_back({double(B), base_ms});
          }
        }
      }
    }
  }
  table.Print();
  CheckOk(table.WriteCsv(out + "/serve.csv"), "csv");
  CheckOk(table.WriteJson(out + "/serve.json"), "json");
  bench::Plot plot;
  plot.title = absl::StrCat("serving loop, ", shapes.front().Name(), ", ", workloads.front(),
                            ", context ", absl::GetFlag(FLAGS_context));
  plot.x_label = "batch (sequences)";
  plot.y_label = "ms per layer-step (appends included)";
  plot.log_y = true;
  for (auto& [name, pts] : plot_points) {
    std::sort(pts.begin(), pts.end());
    pts.erase(std::unique(pts.begin(), pts.end()), pts.end());
    std::vector<double> xs, ys;
    for (auto& [x, y] : pts) {
      xs.push_back(x);
      ys.push_back(y);
    }
    plot.AddSeries(name, xs, ys, bench::Style::kLinePoints);
  }
  CheckOk(plot.SavePng(out + "/serve.png"), "png");
  std::printf("wrote %s/serve.{csv,json,png}\n", out.c_str());
  return 0;
}

}  // namespace
}  // namespace twl

int main(int argc, char** argv) { return twl::Main(argc, argv); }

// twl_serve_bench's parts (bench/serve_bench_main.cc holds the flags, the baseline CSV and
// the loop over configurations): the methods and workloads, the bench's own buffers, and one
// configuration (a runtime of one method over one batch and workload) with its result.
//   setup.cc    helpers, the method table, the workload generators' specs
//   config.cc   Config: create the runtime, prefill, step, measure, accuracy
#pragma once

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
#include "absl/flags/declare.h"

ABSL_DECLARE_FLAG(int32_t, head_dim);
ABSL_DECLARE_FLAG(int32_t, layers);
ABSL_DECLARE_FLAG(int32_t, context);
ABSL_DECLARE_FLAG(double, len_spread);
ABSL_DECLARE_FLAG(int32_t, steps);
ABSL_DECLARE_FLAG(int32_t, warmup);
ABSL_DECLARE_FLAG(int32_t, telemetry_steps);
ABSL_DECLARE_FLAG(bool, profile_last_step);
ABSL_DECLARE_FLAG(int32_t, churn_every);
ABSL_DECLARE_FLAG(int32_t, drift_every);
ABSL_DECLARE_FLAG(double, cache_frac);
ABSL_DECLARE_FLAG(int32_t, cache_rows);
ABSL_DECLARE_FLAG(double, top_p);
ABSL_DECLARE_FLAG(int32_t, k_scheme);
ABSL_DECLARE_FLAG(int32_t, sample_units);
ABSL_DECLARE_FLAG(int32_t, accuracy_layer);
ABSL_DECLARE_FLAG(int32_t, full_offload_steps);
ABSL_DECLARE_FLAG(int32_t, prefill_chunk);
ABSL_DECLARE_FLAG(bool, graph_appends);
ABSL_DECLARE_FLAG(uint64_t, seed);
ABSL_DECLARE_FLAG(std::string, disk_dir);
ABSL_DECLARE_FLAG(double, disk_host_pool_gib);

namespace twl::serve_bench {

using bench::Cell;

// Tokens per page: the runtime's default, which the benchmark does not change.
constexpr int32_t kPageTokens = 16;

[[noreturn]] void Die(const std::string& what);
// Thrown instead of dying where a method runs out of memory (the runtime's status
// TWL_CAPACITY_EXHAUSTED or TWL_OUT_OF_MEMORY, or the benchmark's own device buffers): the
// method does not fit this machine (e.g. B = 16 x 128k in HBM on an 80 GB card). Main
// reports its row as such and goes on with the next method and configuration.
struct DoesNotFit {
  std::string what;
};
// A bad flag value: say which and exit 2 (the shared tool behaviour, bench/lib/tool_flags.h).
[[noreturn]] void BadFlag(const std::string& what);
void Check(twl_status s, twl_runtime* rt, const char* what);
void CheckOk(const absl::Status& s, const char* what);
template <typename T>
T OrDie(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) CheckOk(v.status(), what);
  return std::move(*v);
}
bool ParseInts(const std::string& s, std::vector<int32_t>* out, std::string* err);
std::vector<std::string> ParseNames(const std::string& s);
using Clock = std::chrono::steady_clock;
double MsSince(Clock::time_point t0);

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
  bool bound = false;         // bound batch (twl_batch_create), decoded by twl_decode_batch
  bool graph = false;         // bound, and each layer's decode replayed from a CUDA graph
  twl_selector selector = TWL_SELECTOR_DEFAULT;
  int32_t cache_rows = -1;    // GPU cache of blocks (1) or rows (2); -1: --cache_rows
};

bool MakeMethod(const std::string& name, int32_t quest_budget, Method* m);
SynthSpec Workload(const std::string& name, int32_t kv_heads, int32_t head_dim, int32_t context,
                   uint64_t seed, int32_t layer);

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
  // Attended rows per distinct attended block (16-row page of one KV head) over the sample:
  // how many row lookups a per-block residency summary would fold into one.
  double sample_rows_per_block = NAN;
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

double Median(std::vector<double> v);

class Config {
 public:
  Config(const Shape& shape, int32_t batch, const std::string& workload, const Method& m,
         bool gpu)
      : shape_(shape), batch_(batch), workload_(workload), method_(m), gpu_(gpu) {}
  ~Config() {
    UnbindBatch();
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
  // method_.bound: bind the batch; method_.graph: also capture one graph per layer, or with
  // --graph_appends one graph of the whole step (every layer's twl_batch_append and
  // twl_decode_batch), after a first reservation (taken here, consumed by the next Step).
  void BindBatch();
  void UnbindBatch();  // destroys the graphs, frees the batch (before any sequence leaves)
  // A step replayed from the whole-step graph: one eager twl_batch_reserve, the step's K, V
  // and q copied into the graph's buffers, one launch.
  void StepGraph(int32_t seg_step, double* append_ms);

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
  int32_t bound_room_ = 0;  // tokens per sequence and layer the bound batch has room for
  twl_batch_id batch_id_ = TWL_INVALID_BATCH_ID;
  std::vector<void*> graphs_;  // [layer] instantiated graphs of twl_decode_batch, or the step's
  Buf graph_q_, graph_out_;    // the graphs' fixed q [layer][B][Hq][D] and out buffers
  Buf graph_k_, graph_v_;      // the step graph's fixed K and V [layer][B][H][D]
  bool reserved_ = false;      // BindBatch's reservation awaits the next StepGraph

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

}  // namespace twl::serve_bench

// twl_kernels: GPU kernel benchmarks of the in-HBM Twilight decode step (issue 4).
//
//  * device copy bandwidth (cudaMemcpy D2D, bytes read + written): the memory ceiling;
//  * own dense paged attention (LaunchDenseAttention) vs PyTorch SDPA measured by
//    bench/sdpa_baseline.py in the same run (--sdpa_csv);
//  * Quest alone (select + attention over every selected token) and in-GPU Twilight
//    (Quest select + top-p pruner + sparse attention) at p = 0.9 / 0.95, with kept budgets;
//  * pruner throughput: INT4 bytes (codes + scale/zero) read per second by the estimator,
//    for the Quest candidates and for the whole context, over the copy bandwidth.
// Workload: 32 query / 8 KV heads, head dim 128, page 16, INT4 K, synthetic K/V with planted
// peaked and flat heads (gpu/synth.h: KV heads 0-5 peaked, 6-7 flat), batch 1/8/16,
// context 32k/128k/512k (a batch that does not fit in memory is skipped and said so).
// The step (select -> prune -> attend) is the library's: the CUDA executor
// (pipeline/cuda/cuda_executor.cuh) over this store with every block resident, as the HBM
// store runs it; select_ms / prune_ms / attend_ms time each stage object alone on the same
// scratch, and the profile columns the stage launchers' phases.
// Every time is the median over --reps runs timed by CUDA events, L2 flushed before each;
// "graph" times replay the whole step captured in a CUDA graph (no launch gaps).
// Prints a table; writes kernels.csv and kernels.png (latency vs context) into --out.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <numeric>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/flags/flag.h"
#include "gpu/device.h"
#include "gpu/synth.h"
#include "lib/png_plot.h"
#include "lib/table.h"
#include "lib/tool_flags.h"
#include "pipeline/attend/sparse/cuda/attend_launch.h"
#include "pipeline/prune/twilight/cuda/prune_launch.h"
#include "pipeline/select/quest/cuda/select_launch.h"
#include "runtime/cuda/append_launch.h"

#if TWL_HAVE_CUDA
#include <cuda_runtime.h>

#include "pipeline/attend/sparse/sparse_attention.h"
#include "pipeline/cuda/cuda_executor.cuh"
#include "pipeline/cuda/step_scratch.cuh"
#include "pipeline/prune/twilight/twilight_pruner.h"
#include "pipeline/select/selector.h"
#endif

ABSL_FLAG(std::vector<std::string>, batches, std::vector<std::string>({"1", "8", "16"}),
          "batch sizes, comma-separated");
ABSL_FLAG(std::vector<std::string>, contexts,
          std::vector<std::string>({"32768", "131072", "524288"}),
          "context lengths in tokens, comma-separated");
ABSL_FLAG(int32_t, reps, 20, "timed runs per point (the median is reported)");
ABSL_FLAG(std::string, out, ".", "directory for kernels.csv and kernels.png");
ABSL_FLAG(std::string, sdpa_csv, "", "PyTorch SDPA times from bench/sdpa_baseline.py (optional)");
ABSL_FLAG(float, quest_fraction, 0.125f, "Quest budget B0 as a fraction of the context, (0, 1]");
ABSL_FLAG(int32_t, k_scheme, 0,
          "INT4 K scheme, as twl_runtime_config.k_scheme: 0 the library's default (per page "
          "channel), 1 per page channel, 2 per token");

namespace twl {
namespace {

struct Options {
  std::vector<int32_t> batches;
  std::vector<int32_t> contexts;
  int reps = 20;
  std::string out_dir = ".";
  std::string sdpa_csv;
  float quest_fraction = 0.125f;  // B0 as a fraction of the context
  int32_t k_scheme = kKSchemeDefault;  // core/page_layout.h's value (not the flag's)
};

Options ParseArgs(int argc, char** argv) {
  tools::ParseToolFlags(argc, argv, __FILE__,
                        "usage: twl_kernels [flags]\n"
                        "GPU kernel benchmarks of the in-HBM Twilight decode step (needs a GPU).");
  Options o;
  o.batches = tools::IntListFlag(absl::GetFlag(FLAGS_batches), "batches", 1, 4096);
  o.contexts = tools::IntListFlag(absl::GetFlag(FLAGS_contexts), "contexts", 64, 1 << 24);
  o.reps = absl::GetFlag(FLAGS_reps);
  tools::RequireFlag(o.reps >= 1 && o.reps <= 100000, "reps", "must be in [1, 100000]");
  o.out_dir = absl::GetFlag(FLAGS_out);
  tools::RequireWritableDir("out", o.out_dir);
  o.sdpa_csv = absl::GetFlag(FLAGS_sdpa_csv);
  o.quest_fraction = absl::GetFlag(FLAGS_quest_fraction);
  tools::RequireFlag(o.quest_fraction > 0.0f && o.quest_fraction <= 1.0f, "quest_fraction",
                     "must be in (0, 1]");
  const int32_t k_scheme = absl::GetFlag(FLAGS_k_scheme);
  tools::RequireFlag(k_scheme >= 0 && k_scheme <= 2, "k_scheme", "must be 0, 1 or 2");
  o.k_scheme = k_scheme == 0 ? kKSchemeDefault : k_scheme == 2 ? kKSchemeToken : kKSchemePageChannel;
  std::sort(o.batches.begin(), o.batches.end());
  std::sort(o.contexts.begin(), o.contexts.end());
  return o;
}

// SDPA rows from bench/sdpa_baseline.py: best backend per (batch, context).
std::map<std::pair<int32_t, int32_t>, std::pair<std::string, double>> ReadSdpa(
    const std::string& path) {
  std::map<std::pair<int32_t, int32_t>, std::pair<std::string, double>> best;
  std::ifstream f(path);
  std::string line;
  std::getline(f, line);  // header
  while (std::getline(f, line)) {
    std::stringstream ss(line);
    std::string b, c, name, ms;
    if (!std::getline(ss, b, ',') || !std::getline(ss, c, ',') || !std::getline(ss, name, ',') ||
        !std::getline(ss, ms, ',')) {
      continue;
    }
    const auto key = std::make_pair(int32_t(std::atol(b.c_str())), int32_t(std::atol(c.c_str())));
    const double t = std::atof(ms.c_str());
    auto it = best.find(key);
    if (it == best.end() || t < it->second.second) best[key] = {name, t};
  }
  return best;
}

#if TWL_HAVE_CUDA

#define CK(expr)                                                                       \
  do {                                                                                 \
    const cudaError_t _e = (expr);                                                     \
    if (_e != cudaSuccess) {                                                           \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr,                \
                   cudaGetErrorString(_e));                                            \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)
#define OK(expr)                                                                       \
  do {                                                                                 \
    const absl::Status _s = (expr);                                                    \
    if (!_s.ok()) {                                                                    \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr,                \
                   std::string(_s.message()).c_str());                                 \
      std::exit(1);                                                                    \
    }                                                                                  \
  } while (0)

constexpr int32_t kQHeads = 32, kKvHeads = 8, kHeadDim = 128, kPage = 16;
constexpr uint32_t kFlatMask = 0xC0;  // KV heads 6 and 7 flat, 0-5 peaked

template <typename T>
T* DevAlloc(size_t n) {
  void* p = nullptr;
  CK(cudaMalloc(&p, std::max<size_t>(n * sizeof(T), 256)));
  return static_cast<T*>(p);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Times `fn` (enqueues on s) with events, L2 flushed before each run.
class Timer {
 public:
  Timer(cudaStream_t s, int reps) : s_(s), reps_(reps) {
    CK(cudaEventCreate(&a_));
    CK(cudaEventCreate(&b_));
    flush_ = DevAlloc<char>(flush_bytes_);
  }
  ~Timer() {
    cudaEventDestroy(a_);
    cudaEventDestroy(b_);
    cudaFree(flush_);
  }
  template <typename F>
  double Ms(F fn) {
    for (int i = 0; i < 2; ++i) fn();
    CK(cudaStreamSynchronize(s_));
    std::vector<double> t;
    for (int r = 0; r < reps_; ++r) {
      CK(cudaMemsetAsync(flush_, r & 0xff, flush_bytes_, s_));
      CK(cudaEventRecord(a_, s_));
      fn();
      CK(cudaEventRecord(b_, s_));
      CK(cudaEventSynchronize(b_));
      float ms = 0;
      CK(cudaEventElapsedTime(&ms, a_, b_));
      t.push_back(ms);
    }
    return Median(t);
  }
  void Flush() { CK(cudaMemsetAsync(flush_, 0, flush_bytes_, s_)); }
  // Captures fn into a graph once and times its replays.
  template <typename F>
  double GraphMs(F fn) {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    CK(cudaStreamBeginCapture(s_, cudaStreamCaptureModeThreadLocal));
    fn();
    CK(cudaStreamEndCapture(s_, &graph));
    CK(cudaGraphInstantiate(&exec, graph, 0));
    const double ms = Ms([&] { CK(cudaGraphLaunch(exec, s_)); });
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(graph);
    return ms;
  }

 private:
  cudaStream_t s_;
  int reps_;
  cudaEvent_t a_, b_;
  char* flush_ = nullptr;
  size_t flush_bytes_ = 256ull << 20;
};

double CopyBandwidthGBs(cudaStream_t s, int reps) {
  const size_t bytes = 2ull << 30;
  char* a = DevAlloc<char>(bytes);
  char* b = DevAlloc<char>(bytes);
  CK(cudaMemsetAsync(a, 1, bytes, s));
  Timer t(s, reps);
  const double ms = t.Ms([&] { CK(cudaMemcpyAsync(b, a, bytes, cudaMemcpyDeviceToDevice, s)); });
  cudaFree(a);
  cudaFree(b);
  return 2.0 * double(bytes) / (ms * 1e-3) / 1e9;
}

// One context length's KV store for `seqs` sequences, filled through the real append path.
struct Store {
  PageGeometry g;
  int32_t seqs = 0, ctx = 0, pages_per_seq = 0;
  fp16_t* kv = nullptr;
  uint8_t *codes = nullptr, *range = nullptr;
  fp16_t *scale = nullptr, *zero = nullptr, *kmin = nullptr, *kmax = nullptr;
  int32_t *seq_len = nullptr, *page_table = nullptr;
  fp16_t *q = nullptr, *out = nullptr, *out_dense = nullptr;
  double fill_ms = 0;

  FpKvView Kv() const { return FpKvView{kv, nullptr}; }
  QuantKView Quant() const {
    QuantKView v{codes, scale, zero, kmin, kmax};
    v.range = range;
    return v;
  }
  BatchView Batch(int32_t b) const { return BatchView{b, kQHeads, seq_len, page_table, pages_per_seq}; }
  void Free() {
    for (void* p : std::initializer_list<void*>{kv, codes, range, scale, zero, kmin, kmax, seq_len,
                                                page_table, q, out, out_dense}) {
      cudaFree(p);
    }
  }
};

int64_t StoreBytes(const PageGeometry& g, int32_t seqs, int32_t ctx) {
  const int64_t blocks = int64_t(seqs) * (ctx / kPage) * kKvHeads;
  return blocks * (g.FpBlockBytes() + g.QuantBlockBytes());
}

Store MakeStore(const PageGeometry& g, int32_t seqs, int32_t ctx, cudaStream_t s) {
  Store st;
  st.g = g;
  st.seqs = seqs;
  st.ctx = ctx;
  st.pages_per_seq = ctx / kPage;
  const int64_t pages = int64_t(seqs) * st.pages_per_seq;
  const int64_t blocks = pages * kKvHeads;
  st.kv = DevAlloc<fp16_t>(size_t(blocks * g.FpBlockElems()));
  st.codes = DevAlloc<uint8_t>(size_t(blocks * g.CodeBlockBytes()));
  st.scale = DevAlloc<fp16_t>(size_t(blocks * kPage));
  st.zero = DevAlloc<fp16_t>(size_t(blocks * kPage));
  st.kmin = DevAlloc<fp16_t>(size_t(blocks * kHeadDim));
  st.kmax = DevAlloc<fp16_t>(size_t(blocks * kHeadDim));
  if (g.HasChannelRange()) st.range = DevAlloc<uint8_t>(size_t(blocks * g.RangeBlockBytes()));
  // Physical pages in random order (a real allocator interleaves sequences).
  std::vector<int32_t> perm(static_cast<size_t>(pages));
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), std::mt19937_64(ctx + seqs));
  std::vector<int32_t> lens(static_cast<size_t>(seqs), ctx);
  st.seq_len = DevAlloc<int32_t>(size_t(seqs));
  st.page_table = DevAlloc<int32_t>(size_t(pages));
  CK(cudaMemcpy(st.seq_len, lens.data(), lens.size() * 4, cudaMemcpyHostToDevice));
  CK(cudaMemcpy(st.page_table, perm.data(), perm.size() * 4, cudaMemcpyHostToDevice));
  const size_t qn = size_t(seqs) * kQHeads * kHeadDim;
  st.q = DevAlloc<fp16_t>(qn);
  st.out = DevAlloc<fp16_t>(qn);
  st.out_dense = DevAlloc<fp16_t>(qn);

  SynthSpec spec;
  spec.flat_mask = kFlatMask;
  spec.num_kv_heads = kKvHeads;
  spec.head_dim = kHeadDim;
  const int32_t chunk = 16384;
  fp16_t* k = DevAlloc<fp16_t>(size_t(chunk) * kKvHeads * kHeadDim);
  fp16_t* v = DevAlloc<fp16_t>(size_t(chunk) * kKvHeads * kHeadDim);
  int32_t* d_meta = DevAlloc<int32_t>(size_t(chunk) * 2 + 2 * size_t(chunk / kPage + 2));
  std::vector<int32_t> meta;
  cudaEvent_t e0, e1;
  CK(cudaEventCreate(&e0));
  CK(cudaEventCreate(&e1));
  CK(cudaEventRecord(e0, s));
  for (int32_t sq = 0; sq < seqs; ++sq) {
    for (int32_t t0 = 0; t0 < ctx; t0 += chunk) {
      const int32_t n = std::min(chunk, ctx - t0);
      std::vector<int32_t> page_id(static_cast<size_t>(n)), slot(static_cast<size_t>(n));
      for (int32_t i = 0; i < n; ++i) {
        page_id[size_t(i)] = perm[size_t(int64_t(sq) * st.pages_per_seq + (t0 + i) / kPage)];
        slot[size_t(i)] = (t0 + i) % kPage;
      }
      std::vector<int32_t> pp, pr;
      PlanAppendPages(page_id.data(), slot.data(), n, &pp, &pr);
      meta.assign(page_id.begin(), page_id.end());
      meta.insert(meta.end(), slot.begin(), slot.end());
      meta.insert(meta.end(), pp.begin(), pp.end());
      meta.insert(meta.end(), pr.begin(), pr.end());
      CK(cudaStreamSynchronize(s));  // d_meta reused
      CK(cudaMemcpyAsync(d_meta, meta.data(), meta.size() * 4, cudaMemcpyHostToDevice, s));
      OK(LaunchSynthKv(spec, sq, t0, n, ctx, k, v, s));
      const AppendView in{n, k, v, d_meta, d_meta + n};
      const AppendPagePlan plan{d_meta + 2 * n, d_meta + 2 * n + pp.size(), int32_t(pp.size())};
      OK(LaunchAppend(g, in, KvInputType::kFp16, plan, st.Kv(), st.Quant(), s));
    }
  }
  CK(cudaEventRecord(e1, s));
  OK(LaunchSynthQueries(spec, seqs, kQHeads, st.q, s));
  CK(cudaStreamSynchronize(s));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, e0, e1));
  st.fill_ms = ms;
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cudaFree(k);
  cudaFree(v);
  cudaFree(d_meta);
  return st;
}

// One Twilight/Quest step for `b` sequences: its stages and the scratch the CUDA executor
// runs them in (shaped and grown by the executor, as the HBM store's).
struct Step {
  SelectorParams sel;
  PrunerParams pr;
  const Selector* selector = nullptr;
  pipeline_cuda::StepScratch scratch{0};
  const pipeline_cuda::CudaExecutor executor{};
  const TwilightPruner pruner{};
  const SparseAttention attention{};

  Step(const PageGeometry& g, const SelectorParams& sp, int32_t b, int32_t max_pages) : sel(sp) {
    absl::StatusOr<const Selector*> found = FindSelector(sp.kind);
    OK(found.status());
    selector = *found;
    OK(executor.PrepareScratch(scratch, g, *selector, sp, b, kQHeads, max_pages,
                               /*select_prune=*/true, "twl_kernels")
           .status());
  }
  SelectionView Sel() const { return scratch.Selection(0); }
  KeptView Kept() const { return scratch.Kept(0); }
  HeadStatsView Stats() const { return scratch.Stats(0); }
};

struct StepResult {
  double graph_ms = 0, stream_ms = 0, sel_ms = 0, prune_ms = 0, attend_ms = 0;
  double kept_peaked = 0, kept_flat = 0, selected = 0, est_mass = 0, rel_err = 0;
  double int4_gbs = 0, score_ms = 0, topp_ms = 0, compact_ms = 0, grow_ms = 0, bounds_ms = 0,
      top_ms = 0;
  double prune_int4_gbs = 0, bounds_gbs = 0, min_full_mass = 0;
};

double RelErr(const Store& st, int32_t b) {
  const size_t n = size_t(b) * kQHeads * kHeadDim;
  std::vector<fp16_t> a(n), r(n);
  CK(cudaMemcpy(a.data(), st.out, n * 2, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(r.data(), st.out_dense, n * 2, cudaMemcpyDeviceToHost));
  double num = 0, den = 0;
  for (size_t i = 0; i < n; ++i) {
    const double x = HalfToFloat(a[i]), y = HalfToFloat(r[i]);
    if (!std::isfinite(x)) return INFINITY;
    num += (x - y) * (x - y);
    den += y * y;
  }
  return std::sqrt(num / std::max(den, 1e-30));
}

StepResult RunStep(const Store& st, int32_t b, Step& step, Timer& timer, cudaStream_t s) {
  const PageGeometry& g = st.g;
  const BatchView batch = st.Batch(b);
  const QueryView q{st.q};
  const pipeline_cuda::StepScratch& sc = step.scratch;
  // The whole step: the CUDA executor over the store, every block resident (as the HBM
  // store runs it).
  pipeline_cuda::CudaStep cs;
  cs.g = g;
  cs.selector = step.selector;
  cs.selector_params = step.sel;
  cs.pruner = step.pr;
  cs.batch = batch;
  cs.q = st.q;
  cs.out = st.out;
  cs.qk = st.Quant();
  cs.prune_kv = st.Kv();
  cs.compute = s;
  auto run = [&] { OK(step.executor.RunResident(cs, sc, st.Kv())); };
  // Each stage alone, through the same stage objects and scratch.
  auto select = [&] {
    OK(step.selector->SelectOnDevice(g, step.sel, batch, q, st.Quant(), step.Sel(),
                                     sc.select_workspace(), sc.select_workspace_bytes(), s,
                                     step.pr.softmax_scale));
  };
  auto prune = [&] {
    OK(step.pruner.PruneOnDevice(g, step.pr, batch, q, st.Quant(), st.Kv(), step.Sel(),
                                 step.Kept(), step.Stats(), sc.prune_workspace(),
                                 sc.prune_workspace_bytes(), s));
  };
  auto attend = [&] {
    OK(step.attention.AttendOnDevice(g, batch, q, st.Kv(), step.Kept(), OutputView{st.out},
                                     step.pr.softmax_scale, sc.attend_workspace(),
                                     sc.attend_workspace_bytes(), s));
  };
  StepResult r;
  r.graph_ms = timer.GraphMs(run);
  r.stream_ms = timer.Ms(run);
  r.sel_ms = timer.Ms(select);
  r.prune_ms = timer.Ms(prune);
  r.attend_ms = timer.Ms(attend);
  CK(cudaStreamSynchronize(s));
  r.rel_err = RelErr(st, b);
  // Kept budgets per KV head kind, candidates, estimated mass.
  const size_t pairs = size_t(b) * kKvHeads, heads = size_t(b) * kQHeads;
  std::vector<int32_t> kc(pairs), sel(heads), scount(pairs);
  std::vector<float> mass(heads);
  CK(cudaMemcpy(kc.data(), step.Kept().count, pairs * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(scount.data(), step.Sel().count, pairs * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(sel.data(), step.Stats().selected, heads * 4, cudaMemcpyDeviceToHost));
  CK(cudaMemcpy(mass.data(), step.Stats().est_mass, heads * 4, cudaMemcpyDeviceToHost));
  double kp = 0, kf = 0, np = 0, nf = 0;
  for (size_t i = 0; i < pairs; ++i) {
    if ((kFlatMask >> (i % kKvHeads)) & 1u) {
      kf += kc[i];
      ++nf;
    } else {
      kp += kc[i];
      ++np;
    }
  }
  r.kept_peaked = np ? kp / np : 0;
  r.kept_flat = nf ? kf / nf : 0;
  r.selected = std::accumulate(sel.begin(), sel.end(), 0.0) / double(heads);
  r.est_mass = std::accumulate(mass.begin(), mass.end(), 0.0) / double(heads);
  if (step.sel.kind == SelectorKind::kQuest) {
    std::vector<double> bounds, top;
    for (int i = 0; i < 7; ++i) {
      timer.Flush();
      SelectProfile p;
      OK(ProfileSelect(g, step.sel, batch, q, st.Quant(), step.Sel(), sc.select_workspace(),
                       sc.select_workspace_bytes(), s, &p));
      bounds.push_back(p.ms_bounds);
      top.push_back(p.ms_top);
    }
    r.bounds_ms = Median(bounds);
    r.top_ms = Median(top);
    // The bound pass reads kmin + kmax of every ranked page of every (sequence, KV head).
    const double meta = double(b) * kKvHeads * (st.ctx / kPage) * 2.0 * kHeadDim * 2.0;
    r.bounds_gbs = r.bounds_ms > 0 ? meta / (r.bounds_ms * 1e-3) / 1e9 : 0.0;
  }
  // Estimator phase: INT4 codes + scale/zero (per page channel: the channel ranges) of every selected
  // page, read once per KV head.
  if (!step.pr.dense) {
    std::vector<double> score, topp, compact, grow_part;
    for (int i = 0; i < 7; ++i) {
      timer.Flush();
      PruneProfile p;
      OK(ProfilePrune(g, step.pr, batch, q, st.Quant(), st.Kv(), step.Sel(), step.Kept(),
                      step.Stats(), sc.prune_workspace(), sc.prune_workspace_bytes(), s, &p));
      score.push_back(p.ms_score);
      topp.push_back(p.ms_topp);
      compact.push_back(p.ms_compact);
      grow_part.push_back(p.ms_grow);
    }
    r.score_ms = Median(score);
    r.topp_ms = Median(topp);
    r.compact_ms = Median(compact);
    r.grow_ms = Median(grow_part);
    const double pages = std::accumulate(scount.begin(), scount.end(), 0.0);
    // Per page: the codes and the scheme's metadata (per token: scale + zero, 4 B a token;
    // per page channel: the block's channel-range record, 272 B at d = 128).
    const double bytes = pages * (kPage * g.CodeBytesPerToken() +
                                  (g.HasTokenScale() ? kPage * 4 : double(g.RangeBlockBytes())));
    r.int4_gbs = bytes / (r.score_ms * 1e-3) / 1e9;
    // The whole pruner (every kernel of LaunchPrune) over the same bytes.
    r.prune_int4_gbs = bytes / (r.prune_ms * 1e-3) / 1e9;
    std::vector<float> full(heads);
    CK(cudaMemcpy(full.data(), step.Stats().full_mass, heads * 4, cudaMemcpyDeviceToHost));
    r.min_full_mass = *std::min_element(full.begin(), full.end());
  }
  return r;
}

int Run(const Options& o) {
  absl::StatusOr<gpu::DeviceInfo> dev = gpu::CurrentDevice();
  if (!dev.ok()) {
    std::printf("twl_kernels: no GPU (%s); nothing to measure\n", std::string(dev.status().message()).c_str());
    return 0;
  }
  cudaStream_t s;
  CK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const double copy_gbs = CopyBandwidthGBs(s, o.reps);
  std::printf("device: %s, %d SMs, %.1f GiB; measured D2D copy %.0f GB/s (read + write)\n",
              dev->name.c_str(), dev->sm_count, double(dev->total_bytes) / (1 << 30), copy_gbs);
  const auto sdpa = o.sdpa_csv.empty() ? decltype(ReadSdpa("")){} : ReadSdpa(o.sdpa_csv);

  PageGeometry g;
  g.page_size = kPage;
  g.head_dim = kHeadDim;
  g.num_kv_heads = kKvHeads;
  g.k_bits = 4;
  g.k_scheme = o.k_scheme;
  Timer timer(s, o.reps);
  bench::Table t({"batch", "context", "method", "ms", "vs_dense", "select_ms", "prune_ms",
                  "attend_ms", "kept_peaked", "kept_flat", "selected", "est_mass", "rel_err",
                  "GB_s", "of_copy", "bounds_ms", "top_ms", "score_ms", "topp_ms",
                  "compact_ms", "grow_ms", "prune_GB_s", "prune_of_copy", "bounds_GB_s",
                  "bounds_of_copy",
                  "min_full_mass"});
  t.title = "twl_kernels: " + dev->name + ", 32 q / 8 KV heads, d=128, page 16, INT4 K" +
            (o.k_scheme == kKSchemePageChannel ? " per page channel" : " per token");
  struct Point {
    int32_t b, ctx;
    std::string method;
    double ms;
  };
  std::vector<Point> points;

  for (int32_t ctx : o.contexts) {
    size_t free_b = 0, total_b = 0;
    CK(cudaMemGetInfo(&free_b, &total_b));
    int32_t bmax = 0;
    for (int32_t b : o.batches) {
      // Store + a full-context pruner workspace + slack.
      const int64_t need = StoreBytes(g, b, ctx) + int64_t(b) * kQHeads * ctx * 4 + (1ll << 30);
      if (need < int64_t(0.9 * double(free_b))) bmax = b;
    }
    for (int32_t b : o.batches) {
      if (b > bmax) {
        std::printf("context %d batch %d: needs %.1f GiB of device memory, %.1f GiB free: skipped\n",
                    ctx, b, double(StoreBytes(g, b, ctx)) / (1 << 30), double(free_b) / (1 << 30));
      }
    }
    if (bmax == 0) continue;
    Store st = MakeStore(g, bmax, ctx, s);
    std::printf("context %d: %d sequences filled via LaunchAppend in %.1f ms (%.1f GB/s of FP16 K/V)\n",
                ctx, bmax, st.fill_ms,
                double(bmax) * ctx * kKvHeads * kHeadDim * 4 / (st.fill_ms * 1e-3) / 1e9);
    for (int32_t b : o.batches) {
      if (b > bmax) continue;
      const BatchView batch = st.Batch(b);
      const double kv_bytes = double(b) * ctx * kKvHeads * kHeadDim * 4;
      // Dense baseline (own).
      const size_t ws_b = AttentionWorkspaceBytes(g, b, kQHeads);
      char* ws = DevAlloc<char>(ws_b);
      auto dense = [&] {
        OK(LaunchDenseAttention(g, batch, QueryView{st.q}, st.Kv(), OutputView{st.out_dense}, 0.0f,
                                ws, ws_b, s));
      };
      const double dense_graph = timer.GraphMs(dense);
      const double dense_stream = timer.Ms(dense);
      cudaFree(ws);
      t.AddRow({b, ctx, "dense(own)", bench::Cell(dense_graph, 4), 1.0, "", "", bench::Cell(dense_stream, 4),
                ctx, ctx, ctx, 1.0, 0.0, bench::Cell(kv_bytes / (dense_graph * 1e-3) / 1e9, 4),
                bench::Cell(kv_bytes / (dense_graph * 1e-3) / 1e9 / copy_gbs, 3)});
      points.push_back({b, ctx, "dense(own)", dense_graph});
      const auto it = sdpa.find({b, ctx});
      if (it != sdpa.end()) {
        const double ms = it->second.second;
        t.AddRow({b, ctx, "sdpa(" + it->second.first + ")", bench::Cell(ms, 4),
                  bench::Cell(dense_graph / ms, 3), "", "", "", ctx, ctx, ctx, 1.0, "",
                  bench::Cell(kv_bytes / (ms * 1e-3) / 1e9, 4),
                  bench::Cell(kv_bytes / (ms * 1e-3) / 1e9 / copy_gbs, 3)});
        points.push_back({b, ctx, "sdpa", ms});
      }
      // Quest alone, Twilight at two p, and the pruner over the whole context.
      SelectorParams quest;
      quest.kind = SelectorKind::kQuest;
      quest.budget_pages = std::max(1, int32_t(o.quest_fraction * float(ctx / kPage)));
      quest.sink_pages = 1;
      struct Variant {
        std::string name;
        SelectorParams sel;
        float p;
        bool dense;
        int32_t grow_seed = -1;  // PrunerParams::grow_seed_pages
      };
      SelectorParams full;
      full.kind = SelectorKind::kFull;
      SelectorParams grow = quest;  // the runtime's default: no B0, grown to full-context mass
      grow.grow = true;
      grow.budget_pages = 0;
      const std::vector<Variant> variants = {
          {"quest", quest, 1.0f, true},
          {"twilight p=0.9", quest, 0.9f, false},
          {"twilight p=0.95", quest, 0.95f, false},
          {"twilight-full p=0.9", full, 0.9f, false},
          {"twilight-grow p=0.95", grow, 0.95f, false},
          // The same rule with a seed stage first (1/16 of the pages, as the automatic seed
          // was below kOneStageBytes): the automatic choice is now one stage (every page
          // scored once) up to 4 GB of INT4 per call; this row shows what a seed would save.
          {"twilight-grow-2stage p=0.95", grow, 0.95f, false, std::max(64, ctx / kPage / 16)},
      };
      for (const Variant& v : variants) {
        Step step(g, v.sel, b, st.pages_per_seq);
        step.pr.p = v.p;
        step.pr.dense = v.dense;
        step.pr.grow_seed_pages = v.grow_seed;
        const StepResult r = RunStep(st, b, step, timer, s);
        const bool estimator = !v.dense;
        t.AddRow({b, ctx, v.name, bench::Cell(r.graph_ms, 4), bench::Cell(dense_graph / r.graph_ms, 3),
                  bench::Cell(r.sel_ms, 3), bench::Cell(r.prune_ms, 3), bench::Cell(r.attend_ms, 3),
                  bench::Cell(r.kept_peaked, 4), bench::Cell(r.kept_flat, 4), bench::Cell(r.selected, 4),
                  bench::Cell(r.est_mass, 4), bench::Cell(r.rel_err, 3),
                  estimator ? bench::Cell(r.int4_gbs, 4) : bench::Cell(""),
                  estimator ? bench::Cell(r.int4_gbs / copy_gbs, 3) : bench::Cell(""),
                  bench::Cell(r.bounds_ms, 3), bench::Cell(r.top_ms, 3),
                  estimator ? bench::Cell(r.score_ms, 3) : bench::Cell(""),
                  estimator ? bench::Cell(r.topp_ms, 3) : bench::Cell(""),
                  estimator ? bench::Cell(r.compact_ms, 3) : bench::Cell(""),
                  v.sel.grow ? bench::Cell(r.grow_ms, 3) : bench::Cell(""),
                  estimator ? bench::Cell(r.prune_int4_gbs, 4) : bench::Cell(""),
                  estimator ? bench::Cell(r.prune_int4_gbs / copy_gbs, 3) : bench::Cell(""),
                  r.bounds_gbs > 0 ? bench::Cell(r.bounds_gbs, 4) : bench::Cell(""),
                  r.bounds_gbs > 0 ? bench::Cell(r.bounds_gbs / copy_gbs, 3) : bench::Cell(""),
                  estimator ? bench::Cell(r.min_full_mass, 4) : bench::Cell("")});
        points.push_back({b, ctx, v.name, r.graph_ms});
        if (r.bounds_gbs > 0) {  // the select rate, as it happens (issue 11 item 4 goal >= 0.7)
          std::printf("select %s, batch %d, context %d: bound pass %.4f ms = %.0f GB/s = %.3f of "
                      "copy; top-B0 %.4f ms (B0 %d pages)\n",
                      v.name.c_str(), b, ctx, r.bounds_ms, r.bounds_gbs, r.bounds_gbs / copy_gbs,
                      r.top_ms, v.sel.grow ? 0 : v.sel.budget_pages);
        }
        std::fflush(stdout);
      }
    }
    st.Free();
  }
  t.Print();
  std::printf("vs_dense: own dense time / this row's time (sdpa row: own dense / sdpa, goal <= 1.2).\n");
  std::printf("GB_s: dense/sdpa rows = FP16 K+V bytes / time; twilight rows = INT4 codes + "
              "scale/zero of the candidates / estimator (score kernel) time; of_copy = over the "
              "measured copy bandwidth %.0f GB/s\n", copy_gbs);
  std::printf("score_ms / topp_ms / compact_ms: ProfilePrune's phases (estimates incl. the "
              "growing search / histogram top-p: level-1 pass + level-2/kept-bits pass + boundary "
              "bits / token lists "
              "+ telemetry); grow_ms: the part of score_ms in the growing seed/mass/search kernels\n");
  std::printf("prune_GB_s: the same INT4 bytes / the whole pruner's time (every LaunchPrune "
              "kernel; issue 12 goal: prune_of_copy >= 0.7 for twilight-full); bounds_GB_s: "
              "Quest kmin+kmax bytes of every page / the bound kernel's time (goal: bounds_of_copy "
              ">= 0.7); min_full_mass: the smallest per-head lower bound of the full-context "
              "estimated mass (twilight-grow: >= p unless capped; fixed Quest: -1 = unknown)\n");
  OK(t.WriteCsv(o.out_dir + "/kernels.csv"));

  // Latency vs context, one panel per batch size, composed side by side.
  std::vector<bench::Image> panels;
  for (int32_t b : o.batches) {
    bench::Plot p;
    p.title = "decode step, batch " + std::to_string(b);
    p.x_label = "context (tokens)";
    p.y_label = "ms";
    p.log_x = p.log_y = true;
    p.width = 520;
    p.height = 420;
    for (const char* m : {"dense(own)", "sdpa", "quest", "twilight p=0.9", "twilight p=0.95"}) {
      std::vector<double> xs, ys;
      for (const Point& pt : points) {
        if (pt.b == b && pt.method == m) {
          xs.push_back(pt.ctx);
          ys.push_back(pt.ms);
        }
      }
      if (!xs.empty()) p.AddSeries(m, xs, ys, bench::Style::kLinePoints);
    }
    panels.push_back(p.Render());
  }
  if (!panels.empty()) {
    bench::Image all(int(panels.size()) * panels[0].width(), panels[0].height());
    for (size_t i = 0; i < panels.size(); ++i) {
      for (int y = 0; y < panels[i].height(); ++y) {
        for (int x = 0; x < panels[i].width(); ++x) {
          all.Set(int(i) * panels[0].width() + x, y, panels[i].Get(x, y));
        }
      }
    }
    OK(all.SavePng(o.out_dir + "/kernels.png"));
  }
  cudaStreamDestroy(s);
  return 0;
}

#else

int Run(const Options& o) {
  if (!o.sdpa_csv.empty()) ReadSdpa(o.sdpa_csv);  // keeps the parser compiled and checked
  std::printf("twl_kernels: built without CUDA; nothing to measure\n");
  return 0;
}

#endif

}  // namespace
}  // namespace twl

int main(int argc, char** argv) { return twl::Run(twl::ParseArgs(argc, argv)); }

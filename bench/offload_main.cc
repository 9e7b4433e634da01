// twl_offload: the offload runtime against its baselines, in one run on one GPU.
//
//   dense_hbm        dense paged attention with all FP16 KV in device memory (the HBM store's
//                    dense step: full selector, dense pruner)
//   full_offload     copy the batch's whole FP16 KV of the layer from pinned host memory each
//                    step (copy engine or gather, whichever the calibration says is faster
//                    for long runs), then the same dense attention
//   quest_offload    Quest, fixed budget, on the same offload path (selected pages' blocks are
//                    fetched through the same cache and gather)
//   twilight_offload Quest (B0 = 1/4 of the context) + Twilight top-p, offload path
//   quest_twilight_offload  Quest at the quest_offload budget + Twilight top-p (Twilight
//                    pruning Quest's selection, the paper's "Quest + Twilight")
//   twilight_ce      the same with the copy engine instead of the gather (B = 8 only)
//
// Workloads (bench/lib/synthetic_attention.h): "peaked" heads whose p = 0.95 sets hold a few
// hundred tokens on average at 128k (the paper's budgets), and a "flat" mix (about 5% of
// the context). Every sequence of a batch holds its own copy of the
// layer (distinct pages, so the cache sees B independent sequences) and decodes its own
// query stream (the generator's drifting queries, offset by the sequence index). Sequence
// lengths stay fixed during the measured steps (appends between steps are covered by
// tests/gpu/offload_test.cc).
//
// Prints a table with progress, writes CSV/JSON and a PNG (latency vs context) under --out.
// Flags: --batches=1,8,16 --contexts=32768,131072,524288 --workloads=peaked,flat
//        --steps=5 --warmup=2 --cache_frac=0.1 --max_host_gb=48 --out=out/offload
//        --flat_max_context=131072 --quest_budget=8192
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <memory>
#include <numeric>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/flags/flag.h"
#include "core/page_layout.h"
#include "gpu/device.h"
#include "lib/png_plot.h"
#include "lib/synthetic_attention.h"
#include "lib/table.h"
#include "lib/tool_flags.h"
#include "offload/fetch_calibration.h"
#include "offload/fetch_transport.h"
#include "pipeline/attend/sparse/cuda/attend_launch.h"
#include "runtime/backend.h"
#include "runtime/gpu_offload_backend.h"

#if TWL_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

ABSL_FLAG(std::vector<std::string>, batches, std::vector<std::string>({"1", "8", "16"}),
          "batch sizes, comma-separated");
ABSL_FLAG(std::vector<std::string>, contexts,
          std::vector<std::string>({"32768", "131072", "524288"}),
          "context lengths in tokens, comma-separated");
ABSL_FLAG(std::vector<std::string>, workloads, std::vector<std::string>({"peaked", "flat"}),
          "synthetic workloads: peaked, flat");
ABSL_FLAG(int32_t, steps, 5, "measured decode steps per point");
ABSL_FLAG(int32_t, warmup, 2, "unmeasured steps before them");
ABSL_FLAG(double, cache_frac, 0.10, "GPU hot-page cache as a fraction of the KV, [0, 1]");
ABSL_FLAG(double, max_host_gb, 48, "skip points whose pinned host KV exceeds this many GB");
ABSL_FLAG(int32_t, flat_max_context, 131072, "longest context of the flat workload");
ABSL_FLAG(int32_t, quest_budget, 8192, "Quest's fixed budget in tokens");
ABSL_FLAG(std::string, out, "out/offload", "output directory (CSV, PNG)");

namespace twl {
namespace {

using bench::Cell;

struct Options {
  std::vector<int32_t> batches;
  std::vector<int32_t> contexts;
  std::vector<std::string> workloads;
  int32_t steps = 5;
  int32_t warmup = 2;
  double cache_frac = 0.10;
  double max_host_gb = 48;
  int32_t flat_max_context = 131072;
  int32_t quest_budget = 8192;
  std::string out = "out/offload";
};

Options Parse(int argc, char** argv) {
  using tools::RequireFlag;
  tools::ParseToolFlags(argc, argv, __FILE__,
                        "usage: twl_offload [flags]\n"
                        "Offloaded Twilight against dense in HBM, full offload and Quest on the "
                        "same path (needs a GPU).");
  Options o;
  o.batches = tools::IntListFlag(absl::GetFlag(FLAGS_batches), "batches", 1, 4096);
  o.contexts = tools::IntListFlag(absl::GetFlag(FLAGS_contexts), "contexts", 64, 1 << 24);
  o.workloads = absl::GetFlag(FLAGS_workloads);
  RequireFlag(!o.workloads.empty(), "workloads", "needs at least one of peaked, flat");
  for (const std::string& w : o.workloads) {
    RequireFlag(w == "peaked" || w == "flat", "workloads", "each must be peaked or flat");
  }
  o.steps = absl::GetFlag(FLAGS_steps);
  RequireFlag(o.steps >= 1 && o.steps <= 100000, "steps", "must be in [1, 100000]");
  o.warmup = absl::GetFlag(FLAGS_warmup);
  RequireFlag(o.warmup >= 0 && o.warmup <= 100000, "warmup", "must be in [0, 100000]");
  o.cache_frac = absl::GetFlag(FLAGS_cache_frac);
  RequireFlag(o.cache_frac >= 0 && o.cache_frac <= 1, "cache_frac", "must be in [0, 1]");
  o.max_host_gb = absl::GetFlag(FLAGS_max_host_gb);
  RequireFlag(o.max_host_gb > 0 && o.max_host_gb < 1e6, "max_host_gb", "must be > 0");
  o.flat_max_context = absl::GetFlag(FLAGS_flat_max_context);
  RequireFlag(o.flat_max_context >= 64, "flat_max_context", "must be >= 64");
  o.quest_budget = absl::GetFlag(FLAGS_quest_budget);
  RequireFlag(o.quest_budget >= 1, "quest_budget", "must be >= 1");
  o.out = absl::GetFlag(FLAGS_out);
  RequireFlag(!o.out.empty(), "out", "must not be empty");
  return o;
}

bench::SyntheticConfig WorkloadConfig(const std::string& name, int32_t tokens, int32_t steps) {
  bench::SyntheticConfig c;
  c.num_tokens = tokens;
  c.num_kv_heads = 8;
  c.group_size = 4;
  c.head_dim = 128;
  c.num_steps = steps;
  c.seed = 20250202;
  // Exact top-p on the CPU at 128k (bench/lib generator of f0c941b): "peaked" mean 341 tokens
  // per query head at p = 0.95 (median 14, p75 427, max 3357), 0.26% of the context; "flat"
  // (any other name here) mean 6137 tokens, 4.7%.
  bench::ApplyWorkloadPreset(name == "peaked" ? "peaked" : "flat", &c);
  return c;
}

double Median(std::vector<double> v) {
  if (v.empty()) return std::nan("");
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

int64_t DeviceFreeBytes() {
#if TWL_HAVE_CUDA
  size_t free_b = 0, total = 0;
  if (cudaMemGetInfo(&free_b, &total) != cudaSuccess) return 0;
  return int64_t(free_b);
#else
  return 0;
#endif
}

#define CHECK_OK(expr)                                                         \
  do {                                                                         \
    const absl::Status _s = (expr);                                            \
    if (!_s.ok()) {                                                            \
      std::fprintf(stderr, "%s:%d %s: %s\n", __FILE__, __LINE__, #expr,        \
                   std::string(_s.message()).c_str());                         \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

template <typename T>
T ValueOrDie(absl::StatusOr<T> v, const char* what) {
  if (!v.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, std::string(v.status().message()).c_str());
    std::exit(1);
  }
  return std::move(*v);
}

struct MethodResult {
  std::string method;
  double gpu_ms = 0, wall_ms = 0;
  double kept_q = 0, kept_kv = 0;     // mean tokens per query head / per KV head (union)
  double hit_rate = 0, blocks_needed = 0, blocks_fetched = 0, mb_h2d = 0;
  double fetch_ms = 0, fetch_gbps = 0, direct_units = 0;
  double gpu_mb = 0;                   // device memory the method needs for this batch
};

class Bench {
 public:
  explicit Bench(const Options& o) : opt_(o) {}

  int Run() {
    if (!gpu::GpuAvailable()) {
      std::printf("twl_offload: no GPU visible; nothing to measure (the offload backend needs "
                  "CUDA).\n");
      return 0;
    }
    auto dev = gpu::CurrentDevice();
    std::printf("device: %s, %d SMs, %.1f GiB\n", dev.ok() ? dev->name.c_str() : "?",
                dev.ok() ? dev->sm_count : 0, dev.ok() ? dev->total_bytes / 1073741824.0 : 0);
    cal_ = ValueOrDie(CalibrateFetch(g_.FpBlockBytes(), 4096, 7), "calibration");
    std::printf("%s\n", cal_.Summary().c_str());
    stream_ = ValueOrDie(gpu::StreamCreate(), "stream");
    e0_ = ValueOrDie(gpu::EventCreate(), "event");
    e1_ = ValueOrDie(gpu::EventCreate(), "event");

    int32_t total = 0, done = 0;
    for (const auto& w : opt_.workloads) {
      for (int32_t n : opt_.contexts) {
        if (w == "flat" && n > opt_.flat_max_context) continue;
        total += int32_t(opt_.batches.size());
      }
    }
    for (const auto& w : opt_.workloads) {
      for (int32_t n : opt_.contexts) {
        if (w == "flat" && n > opt_.flat_max_context) continue;
        RunContext(w, n, &done, total);
      }
    }
    table_.title = "offload decode step (one layer), median over steps";
    table_.Print();
    CHECK_OK(table_.WriteCsv(opt_.out + "/offload.csv"));
    CHECK_OK(table_.WriteJson(opt_.out + "/offload.json"));
    WritePlot();
    std::printf("wrote %s/offload.{csv,json,png}\n", opt_.out.c_str());
    return 0;
  }

 private:
  // One (workload, context): generate the layer once, then every batch size.
  void RunContext(const std::string& workload, int32_t n, int32_t* done, int32_t total) {
    const int32_t max_b = *std::max_element(opt_.batches.begin(), opt_.batches.end());
    const int32_t q_steps = opt_.warmup + 2 * opt_.steps + max_b + 1;
    const auto t0 = std::chrono::steady_clock::now();
    bench::SyntheticLayer layer =
        ValueOrDie(bench::GenerateLayer(WorkloadConfig(workload, n, q_steps), 0), "generate");
    const int32_t len = layer.StepLength(0);  // every sequence's length while measured
    std::fprintf(stderr, "generated %s layer of %d tokens in %.1f s\n", workload.c_str(), n,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    // K/V and queries on the device once.
    const size_t kv_bytes = layer.k.size() * 2;
    gpu::DeviceBuffer d_k, d_v, d_qall;
    CHECK_OK(d_k.Reserve(kv_bytes));
    CHECK_OK(d_v.Reserve(kv_bytes));
    CHECK_OK(gpu::CopyToDevice(d_k.get(), layer.k.data(), kv_bytes));
    CHECK_OK(gpu::CopyToDevice(d_v.get(), layer.v.data(), kv_bytes));
    CHECK_OK(d_qall.Reserve(layer.q.size() * 2));
    CHECK_OK(gpu::CopyToDevice(d_qall.get(), layer.q.data(), layer.q.size() * 2));
    for (int32_t b : opt_.batches) {
      ++*done;
      std::fprintf(stderr, "[%d/%d] %s N=%d B=%d\n", *done, total, workload.c_str(), n, b);
      RunBatch(workload, layer, len, b, d_k, d_v, d_qall);
    }
  }

  void RunBatch(const std::string& workload, const bench::SyntheticLayer& layer, int32_t len,
                int32_t B, const gpu::DeviceBuffer& d_k, const gpu::DeviceBuffer& d_v,
                const gpu::DeviceBuffer& d_qall) {
    const int32_t Hq = layer.num_q_heads(), H = g_.num_kv_heads, D = g_.head_dim;
    const int32_t P = (len + g_.page_size - 1) / g_.page_size;  // pages per sequence
    const int64_t num_pages = int64_t(B) * P;
    const double host_gb = double(num_pages) * H * g_.FpBlockBytes() / 1e9;
    const double hbm_kv_mb = double(B) * len * H * D * 4 / 1e6;  // FP16 K + V, all in HBM
    if (host_gb > opt_.max_host_gb) {
      std::fprintf(stderr, "  skipped: host pool %.1f GB > --max_host_gb\n", host_gb);
      return;
    }
    // Queries of every step, [step][B][Hq][D]: sequence s uses the generator's query t + s.
    const int32_t total_steps = opt_.warmup + 2 * opt_.steps;
    const size_t qrow = size_t(Hq) * D;
    gpu::DeviceBuffer d_q;
    CHECK_OK(d_q.Reserve(size_t(total_steps) * B * qrow * 2));
    for (int32_t t = 0; t < total_steps; ++t) {
      for (int32_t s = 0; s < B; ++s) {
        CHECK_OK(gpu::CopyOnDevice(d_q.as<fp16_t>() + (size_t(t) * B + s) * qrow,
                                   d_qall.as<fp16_t>() + size_t(t + s) * qrow, qrow * 2));
      }
    }
    gpu::DeviceBuffer d_out;
    CHECK_OK(d_out.Reserve(size_t(B) * qrow * 2));
    // Page table: sequence s owns pages [s * P, (s + 1) * P).
    std::vector<int32_t> seq_len(static_cast<size_t>(B), len), table(size_t(B) * P);
    std::iota(table.begin(), table.end(), 0);
    BatchView hb;
    hb.num_seqs = B;
    hb.num_q_heads = Hq;
    hb.seq_len = seq_len.data();
    hb.page_table = table.data();
    hb.max_pages = P;

    std::vector<MethodResult> results;
    // ---- dense, all KV in HBM (one device copy aliased by every sequence's page table) ----
    results.push_back(RunDense(hb, len, B, P, d_k, d_v, d_q, d_out, hbm_kv_mb));

    // ---- offload backend: fill the pinned pool through the append kernel -----------------
    RuntimeConfig cfg;
    cfg.num_q_heads = Hq;
    cfg.num_kv_heads = H;
    cfg.head_dim = D;
    cfg.page_size = g_.page_size;
    cfg.gpu_cache_bytes =
        std::max<int64_t>(int64_t(opt_.cache_frac * double(num_pages) * H * g_.FpBlockBytes()),
                          g_.FpBlockBytes() * 64);
    const int64_t free_before = DeviceFreeBytes();
    auto off = ValueOrDie(CreateGpuOffloadBackendEx(cfg, num_pages), "offload backend");
    AppendKv(*off, len, B, P, d_k, d_v);
    const MemoryUsage mem = off->Memory();
    const double off_gpu_mb = double(mem.gpu_quant_bytes + mem.gpu_cache_bytes) / 1e6;
    std::fprintf(stderr, "  offload backend: %d cache slots, quant %.0f MB, cache %.0f MB\n",
                 off->num_cache_slots(), mem.gpu_quant_bytes / 1e6, mem.gpu_cache_bytes / 1e6);

    // ---- full offload: the batch's whole KV over PCIe each step, then dense ---------------
    results.push_back(RunFullOffload(*off, layer, len, B, P, d_q, d_out, hbm_kv_mb));

    // ---- Twilight and Quest on the offload path -------------------------------------------
    SelectorParams twl_sel;
    twl_sel.kind = SelectorKind::kQuest;
    twl_sel.budget_pages = std::max(1, (len / 4 + g_.page_size - 1) / g_.page_size);
    twl_sel.sink_pages = 1;
    PrunerParams twl_pr;
    twl_pr.p = 0.95f;
    SelectorParams quest_sel = twl_sel;
    quest_sel.budget_pages = std::min(P, std::max(1, opt_.quest_budget / g_.page_size));
    PrunerParams quest_pr;
    quest_pr.dense = true;  // keep every selected token: Quest alone

    const int64_t used = free_before - DeviceFreeBytes();  // pool maps, quant K, cache
    auto run_off = [&](const std::string& name, const SelectorParams& sel,
                       const PrunerParams& pr) {
      results.push_back(RunOffload(*off, name, hb, B, qrow, sel, pr, d_q, d_out));
      // Device memory of the offload path: everything the backend holds (quantized K and
      // bounds, cache slots and maps, step scratch), measured by cudaMemGetInfo.
      results.back().gpu_mb = double(free_before - DeviceFreeBytes()) / 1e6;
    };
    (void)used;
    (void)off_gpu_mb;
    run_off("twilight_offload", twl_sel, twl_pr);
    run_off("quest_offload", quest_sel, quest_pr);
    run_off("quest_twilight_offload", quest_sel, twl_pr);  // Twilight prunes Quest's pages
    if (B == 8) {
      off->SetFetchPath(FetchPath::kCopyEngine);
      run_off("twilight_ce", twl_sel, twl_pr);
      off->SetFetchPath(FetchPath::kGather);
    }
    off.reset();

    const MethodResult& dense = results[0];
    double full_ms = 0, quest_ms = 0;
    for (const auto& r : results) {
      if (r.method == "full_offload") full_ms = r.gpu_ms;
      if (r.method == "quest_offload") quest_ms = r.gpu_ms;
    }
    for (const auto& r : results) {
      table_.AddRow({workload, B, len, r.method, Cell(r.gpu_ms, 4), Cell(r.wall_ms, 4),
                     Cell(dense.gpu_ms / r.gpu_ms, 3), Cell(full_ms / r.gpu_ms, 4),
                     Cell(quest_ms / r.gpu_ms, 3), Cell(r.kept_q, 4), Cell(r.kept_kv, 4),
                     Cell(r.hit_rate, 3), Cell(r.blocks_fetched, 4), Cell(r.mb_h2d, 4),
                     Cell(r.fetch_ms, 3), Cell(r.fetch_gbps, 3),
                     Cell(r.fetch_gbps / cal_.pcie_peak_gbps, 3), Cell(r.direct_units, 3),
                     Cell(r.gpu_mb, 4), Cell(hbm_kv_mb, 4), Cell(r.gpu_mb / hbm_kv_mb, 3)});
      if (workload == "peaked" && B == 8) plot_[r.method].emplace_back(double(len), r.gpu_ms);
    }
    // Progress: the batch's rows as they come.
    bench::Table t(table_.columns());
    for (size_t i = table_.num_rows() - results.size(); i < table_.num_rows(); ++i) {
      t.AddRow(table_.rows()[i]);
    }
    std::fprintf(stderr, "%s", t.ToText().c_str());
  }

  // Dense attention with every sequence's FP16 KV in device memory: the library's HBM store
  // and its dense step (full selector, dense pruner: the dense attention kernel straight
  // away), timed like the offload methods (events around Decode on our stream). Every
  // sequence holds its own copy of the layer (pages s * P ...), so that no sequence reads
  // another's KV out of L2: dense moves B * len tokens from HBM, as it would in serving.
  MethodResult RunDense(const BatchView& hb, int32_t len, int32_t B, int32_t P,
                        const gpu::DeviceBuffer& d_k, const gpu::DeviceBuffer& d_v,
                        const gpu::DeviceBuffer& d_q, const gpu::DeviceBuffer& d_out,
                        double hbm_kv_mb) {
    MethodResult r;
    r.method = "dense_hbm";
    RuntimeConfig cfg;
    cfg.num_q_heads = hb.num_q_heads;
    cfg.num_kv_heads = g_.num_kv_heads;
    cfg.head_dim = g_.head_dim;
    cfg.page_size = g_.page_size;
    absl::StatusOr<std::unique_ptr<Backend>> hbm = CreateGpuHbmBackend(cfg, int64_t(B) * P);
    if (!hbm.ok()) {
      std::fprintf(stderr, "  dense_hbm skipped: %s\n",
                   std::string(hbm.status().message()).c_str());
      r.gpu_ms = r.wall_ms = std::nan("");
      return r;
    }
    AppendKv(**hbm, len, B, P, d_k, d_v);
    SelectorParams sel;
    sel.kind = SelectorKind::kFull;
    PrunerParams pr;
    pr.dense = true;
    const size_t qrow = size_t(hb.num_q_heads) * g_.head_dim;
    std::vector<double> gms, wms;
    for (int32_t t = 0; t < opt_.warmup + opt_.steps; ++t) {
      const StepTime st = TimedDecode(**hbm, hb, d_q.as<fp16_t>() + size_t(t) * B * qrow,
                                      d_out.as<fp16_t>(), sel, pr, nullptr);
      if (t >= opt_.warmup) {
        gms.push_back(st.gpu_ms);
        wms.push_back(st.wall_ms);
      }
    }
    r.gpu_ms = Median(gms);
    r.wall_ms = Median(wms);
    r.kept_q = r.kept_kv = len;
    r.hit_rate = 1;
    r.gpu_mb = hbm_kv_mb;
    return r;
  }

  struct StepTime {
    double gpu_ms = 0, wall_ms = 0;
  };
  // One decode step of `store` on our stream (device q / out): GPU time between events
  // around the Decode call, and host wall time to the stream's end.
  StepTime TimedDecode(Backend& store, const BatchView& hb, const fp16_t* q, fp16_t* out,
                       const SelectorParams& sel, const PrunerParams& pr, StepTelemetry* tel) {
    DecodeRequest req;
    req.batch = hb;
    req.q = q;
    req.out = out;
    req.space = MemSpace::kDevice;
    req.selector = sel;
    req.pruner = pr;
    req.stream = stream_;
    const auto w0 = std::chrono::steady_clock::now();
    CHECK_OK(gpu::EventRecord(e0_, stream_));
    CHECK_OK(store.Decode(req, tel));
    CHECK_OK(gpu::EventRecord(e1_, stream_));
    CHECK_OK(gpu::StreamSync(stream_));
    StepTime t;
    t.wall_ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - w0).count();
    t.gpu_ms = ValueOrDie(gpu::EventElapsedMs(e0_, e1_), "decode timing");
    CHECK_OK(store.TakeAsyncError());
    return t;
  }

  // Every sequence s of the batch gets the layer's len tokens in pages [s * P, (s + 1) * P),
  // appended through the store's own append path from device K/V.
  void AppendKv(Backend& store, int32_t len, int32_t B, int32_t P, const gpu::DeviceBuffer& d_k,
                const gpu::DeviceBuffer& d_v) {
    std::vector<int32_t> page_id(static_cast<size_t>(len)), slot(static_cast<size_t>(len));
    for (int32_t s = 0; s < B; ++s) {
      for (int32_t i = 0; i < len; ++i) {
        page_id[size_t(i)] = s * P + i / g_.page_size;
        slot[size_t(i)] = i % g_.page_size;
      }
      AppendView a;
      a.num_tokens = len;
      a.k = d_k.as<fp16_t>();
      a.v = d_v.as<fp16_t>();
      a.page_id = page_id.data();
      a.slot = slot.data();
      CHECK_OK(store.Append(a, DType::kFp16, MemSpace::kDevice, nullptr));
    }
    CHECK_OK(gpu::DeviceSync());
  }

  MethodResult RunFullOffload(OffloadBackend& off, const bench::SyntheticLayer& layer,
                              int32_t len, int32_t B, int32_t P, const gpu::DeviceBuffer& d_q,
                              const gpu::DeviceBuffer& d_out, double hbm_kv_mb) {
    const int32_t H = g_.num_kv_heads, Hq = layer.num_q_heads();
    const int64_t blocks = int64_t(B) * P * H;
    MethodResult r;
    r.method = "full_offload";
    gpu::DeviceBuffer staging;
    if (!staging.Reserve(size_t(blocks * g_.FpBlockBytes())).ok()) {
      std::fprintf(stderr, "  full_offload skipped: no device memory for %ld blocks\n",
                   long(blocks));
      r.gpu_ms = r.wall_ms = std::nan("");
      return r;
    }
    // Each sequence's blocks are one contiguous run of the pool (pages s * P ...), so the
    // copy engine moves the batch as B large copies: its best case, at the measured PCIe
    // peak (the calibration's contiguous number), with no per-block host work.
    FetchSource src = off.HostPool();
    const int64_t seq_bytes = int64_t(P) * H * g_.FpBlockBytes();
    src.block_bytes = seq_bytes;
    src.num_blocks = B;
    const FetchDest dst{staging.get(), B};
    auto transport = ValueOrDie(CreateCopyEngineTransport(src, dst), "full offload transport");
    std::vector<FetchEntry> list(static_cast<size_t>(B));
    for (int32_t s = 0; s < B; ++s) list[size_t(s)] = FetchEntry{s, s};
    std::vector<int32_t> seq_len(static_cast<size_t>(B), len), table(size_t(B) * P);
    std::iota(table.begin(), table.end(), 0);
    gpu::DeviceBuffer d_batch;
    CHECK_OK(d_batch.Reserve((seq_len.size() + table.size()) * 4));
    CHECK_OK(gpu::CopyToDevice(d_batch.get(), seq_len.data(), seq_len.size() * 4));
    CHECK_OK(gpu::CopyToDevice(d_batch.as<int32_t>() + B, table.data(), table.size() * 4));
    BatchView db;
    db.num_seqs = B;
    db.num_q_heads = Hq;
    db.seq_len = d_batch.as<int32_t>();
    db.page_table = d_batch.as<int32_t>() + B;
    db.max_pages = P;
    gpu::DeviceBuffer ws;
    const size_t ws_bytes = AttentionWorkspaceBytes(g_, B, Hq);
    CHECK_OK(ws.Reserve(std::max<size_t>(ws_bytes, 256)));
    const size_t qrow = size_t(Hq) * g_.head_dim;
    std::vector<double> gms, wms;
    const int32_t steps = std::max(1, std::min(opt_.steps, 3));
    for (int32_t t = 0; t < 1 + steps; ++t) {
      const auto w0 = std::chrono::steady_clock::now();
      CHECK_OK(gpu::EventRecord(e0_, stream_));
      CHECK_OK(transport->SubmitHost(list.data(), int32_t(list.size()), stream_));
      CHECK_OK(LaunchDenseAttention(g_, db, QueryView{d_q.as<fp16_t>() + size_t(t) * B * qrow},
                                    FpKvView{staging.as<fp16_t>(), nullptr},
                                    OutputView{d_out.as<fp16_t>()}, 0.0f, ws.get(), ws_bytes,
                                    stream_));
      CHECK_OK(gpu::EventRecord(e1_, stream_));
      const float ms = ValueOrDie(gpu::EventElapsedMs(e0_, e1_), "full offload timing");
      if (t >= 1) {
        gms.push_back(ms);
        wms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - w0).count());
      }
    }
    r.gpu_ms = Median(gms);
    r.wall_ms = Median(wms);
    r.kept_q = r.kept_kv = len;
    r.blocks_fetched = double(blocks);
    r.mb_h2d = double(blocks) * g_.FpBlockBytes() / 1e6;
    r.fetch_ms = r.gpu_ms;
    r.fetch_gbps = r.mb_h2d / r.gpu_ms;  // MB/ms = GB/s, attention included (small)
    r.gpu_mb = hbm_kv_mb;
    return r;
  }

  // Timed steps run without telemetry (events around the Decode call on our stream, plus
  // host wall time to the stream's end); then as many steps again, continuing the query
  // drift, with telemetry (budgets, hit rate, bytes, stage times), whose D2H and host
  // synchronisation would otherwise be inside the timing.
  MethodResult RunOffload(OffloadBackend& off, const std::string& name, const BatchView& hb,
                          int32_t B, size_t qrow, const SelectorParams& sel,
                          const PrunerParams& pr, const gpu::DeviceBuffer& d_q,
                          const gpu::DeviceBuffer& d_out) {
    MethodResult r;
    r.method = name;
    std::vector<double> gms, wms, kq, kkv, hit, fetched, mb, fms, gbps, direct;
    const int32_t timed_end = opt_.warmup + opt_.steps;
    for (int32_t t = 0; t < timed_end + opt_.steps; ++t) {
      StepTelemetry tel;
      const bool with_tel = t >= timed_end;
      const StepTime st = TimedDecode(off, hb, d_q.as<fp16_t>() + size_t(t) * B * qrow,
                                      d_out.as<fp16_t>(), sel, pr, with_tel ? &tel : nullptr);
      if (t < opt_.warmup) continue;
      if (!with_tel) {
        gms.push_back(st.gpu_ms);
        wms.push_back(st.wall_ms);
        continue;
      }
      kq.push_back(std::accumulate(tel.kept_tokens.begin(), tel.kept_tokens.end(), 0.0) /
                   double(std::max<size_t>(1, tel.kept_tokens.size())));
      kkv.push_back(std::accumulate(tel.kept_tokens_kv.begin(), tel.kept_tokens_kv.end(), 0.0) /
                    double(std::max<size_t>(1, tel.kept_tokens_kv.size())));
      hit.push_back(tel.CacheHitRate());
      fetched.push_back(double(tel.blocks_fetched));
      mb.push_back(double(tel.bytes_h2d) / 1e6);
      fms.push_back(tel.ms_fetch);
      // Gathered bytes over the fetch stage (cache planning included); rows of blocks read
      // in place (not admitted to the cache) are in MB_h2d but not here.
      const OffloadStepStats ost = off.LastStepStats();
      const double gathered_mb = double(ost.cache.misses) * g_.FpBlockBytes() / 1e6;
      gbps.push_back(tel.ms_fetch > 0 ? gathered_mb / tel.ms_fetch : 0);
      direct.push_back(double(ost.direct_blocks));
      if (off.LastStepStats().errors) {
        std::fprintf(stderr, "  %s: cache plan reported errors\n", name.c_str());
      }
      if (t == timed_end) {
        std::fprintf(stderr, "  %s stages (ms, overlapped): select %.3f prune %.3f fetch %.3f "
                     "attend %.3f total %.3f\n", name.c_str(), tel.ms_select, tel.ms_prune,
                     tel.ms_fetch, tel.ms_attend, tel.ms_total);
      }
    }
    r.gpu_ms = Median(gms);
    r.wall_ms = Median(wms);
    r.kept_q = Median(kq);
    r.kept_kv = Median(kkv);
    r.hit_rate = Median(hit);
    r.blocks_fetched = Median(fetched);
    r.mb_h2d = Median(mb);
    r.fetch_ms = Median(fms);
    r.fetch_gbps = Median(gbps);
    r.direct_units = Median(direct);
    return r;
  }

  void WritePlot() {
    bench::Plot p;
    p.title = "offload decode step, peaked workload, B = 8 (one layer)";
    p.x_label = "context (tokens)";
    p.y_label = "ms per step";
    p.log_x = true;
    p.log_y = true;
    for (const auto& [name, pts] : plot_) {
      std::vector<double> xs, ys;
      for (const auto& [x, y] : pts) {
        xs.push_back(x);
        ys.push_back(y);
      }
      p.AddSeries(name, xs, ys, bench::Style::kLinePoints);
    }
    CHECK_OK(p.SavePng(opt_.out + "/offload.png"));
  }

  Options opt_;
  PageGeometry g_ = [] {
    PageGeometry g;
    g.page_size = 16;
    g.head_dim = 128;
    g.num_kv_heads = 8;
    g.k_bits = 4;
    return g;
  }();
  FetchCalibration cal_;
  void* stream_ = nullptr;
  void* e0_ = nullptr;
  void* e1_ = nullptr;
  bench::Table table_{{"workload", "B", "N", "method", "gpu_ms", "wall_ms", "x_vs_dense",
                       "x_vs_full", "x_vs_quest", "kept_q", "kept_kv", "hit_rate",
                       "blocks_fetched", "MB_h2d", "fetch_ms", "fetch_GBps", "fetch_of_peak",
                       "direct_units", "gpu_MB", "hbm_kv_MB", "gpu_frac"}};
  std::map<std::string, std::vector<std::pair<double, double>>> plot_;
};

}  // namespace
}  // namespace twl

int main(int argc, char** argv) {
  const twl::Options o = twl::Parse(argc, argv);
  std::string mk = "mkdir -p '" + o.out + "'";
  if (std::system(mk.c_str()) != 0) {
    std::fprintf(stderr, "cannot create %s\n", o.out.c_str());
    return 1;
  }
  return twl::Bench(o).Run();
}

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
//                   step: eager append, q copied into the graph's buffer, replay); with
//                   --graph_appends the whole step from one graph (per step one eager
//                   twl_batch_reserve, K, V and q copied into the graph's buffers, one launch
//                   holding every layer's twl_batch_append and twl_decode_batch): what an
//                   engine that captures its decode step pays. Bound decodes
//                   publish no telemetry: its stage split comes from the telemetry steps,
//                   decoded eagerly; rebound and recaptured at each churn.
//   offload-graph   gpu-offload (row cache), library defaults, bound and replayed from CUDA
//                   graphs like hbm-graph (the row cache's plan runs inside the graph with
//                   its step stamp on the device); compare with twilight (eager twl_decode).
//   hbm-bound, offload-bound, cpu-bound  the batch bound as above but each layer's
//                   twl_decode_batch called eagerly, no graph: an engine that binds its
//                   batch and does not capture (no page-table upload, no telemetry copies).
//   hbm-full        gpu-hbm, TWL_SELECTOR_FULL (top-p over every token's INT4 estimate),
//                   library defaults otherwise (issue 12: <= 0.3x dense SDPA at B = 8, 128k;
//                   the default selector is FULL now, so this equals hbm)
//   hbm-quest, twilight-quest  gpu-hbm / gpu-offload with TWL_SELECTOR_QUEST: growing Quest
//                   (the default selector before the third session of 2026-12-02)
//   dense-hbm       gpu-hbm, every layer dense (the project's own dense kernel)
//   full-offload    gpu-offload, every layer dense (all KV over PCIe each step)
//   cpu, cpu-dense  the CPU backend (what a run without a GPU measures; CI's tiny run);
//                   without an SDPA figure, cpu-dense (every token, the same host attention)
//                   is the "x dense" baseline of its configuration
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
// A method that runs out of memory in a configuration (TWL_CAPACITY_EXHAUSTED or
// TWL_OUT_OF_MEMORY, e.g. B = 16 x 128k in HBM on an 80 GB card) gets a row whose status is
// "does not fit", and the run goes on; any other failure stops the run with its message.
// This file: the flags, the baseline CSV, the loop over configurations and the report; the
// methods, workloads and one configuration's run are in bench/serve_bench/.
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
#include "core/host_simd.h"
#include "gpu/device.h"
#include "gpu/synth.h"
#include "lib/disk_probe.h"
#include "lib/png_plot.h"
#include "lib/serve_accuracy.h"
#include "lib/table.h"
#include "lib/tool_flags.h"
#include "twilight.h"
#include "serve_bench/serve_bench.h"

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
ABSL_FLAG(bool, graph_appends, false,
          "graph methods: capture the whole step, every layer's append (twl_batch_append, after "
          "one eager twl_batch_reserve per step) and decode, in one graph; false: eager appends "
          "and one graph per layer's decode (the default until the whole-step flow has run on "
          "a GPU: built 2026-12-07, not yet run)");
ABSL_FLAG(std::string, sdpa_csv, "", "CSV of bench/sdpa_serving.py (the dense baseline)");
ABSL_FLAG(std::string, out, "out/serve", "output directory (created)");
ABSL_FLAG(uint64_t, seed, 20261201, "workload seed");
ABSL_FLAG(std::string, disk_dir, "/tmp", "twilight-disk: directory of the disk tier's file");
ABSL_FLAG(double, disk_host_pool_gib, 0,
          "twilight-disk: host pool in GiB (0: a quarter of the KV)");
ABSL_FLAG(int32_t, disk_probe_mib, 2048,
          "twilight-disk: MiB of the read-rate probe (0: no probe)");

namespace twl::serve_bench {
namespace {

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
              "churn every %d, cache %.0f%% of KV, k_scheme %d (%s), host vectors %s\n",
              mode.c_str(), absl::GetFlag(FLAGS_layers), absl::GetFlag(FLAGS_context),
              100 * absl::GetFlag(FLAGS_len_spread), absl::GetFlag(FLAGS_steps),
              absl::GetFlag(FLAGS_churn_every), 100 * absl::GetFlag(FLAGS_cache_frac),
              absl::GetFlag(FLAGS_k_scheme),
              absl::GetFlag(FLAGS_k_scheme) == TWL_K_SCHEME_TOKEN ? "INT4 per token"
              : absl::GetFlag(FLAGS_k_scheme) == TWL_K_SCHEME_PAGE_CHANNEL
                  ? "INT4 per page channel"
                  : "library default: INT4 per page channel",
              twl::HostSimdName(twl::ActiveHostSimd()));

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
                      "telemetry decodes", "kept rows/block", "status"});
  table.title = "serving loop: per layer-step with appends (wall time), accuracy vs dense";
  const int32_t n_total = int32_t(shapes.size() * batches.size() * workloads.size() * methods.size());
  // Without an SDPA figure for a configuration (CPU mode), the baseline is the fastest dense
  // decode this machine has in the run: the CPU backend's dense attention (cpu-dense), run
  // first in each configuration so that the methods after it get their ratio.
  std::vector<Method> run_order = methods;
  std::stable_partition(run_order.begin(), run_order.end(),
                        [](const Method& m) { return m.name == "cpu-dense"; });
  int32_t done = 0;
  std::map<std::string, std::vector<std::pair<double, double>>> plot_points;
  for (const Shape& shape : shapes) {
    for (const std::string& w : workloads) {
      for (int32_t B : batches) {
        double same_run_dense_ms = NAN;
        for (const Method& m : run_order) {
          ++done;
          std::fprintf(stderr, "[%d/%d] %s B=%d %s %s ...\n", done, n_total,
                       shape.Name().c_str(), B, w.c_str(), m.name.c_str());
          const auto t0 = Clock::now();
          Result r;
          bool fits = true;
          try {
            Config cfg(shape, B, w, m, gpu);
            r = cfg.Run();
          } catch (const DoesNotFit& e) {
            fits = false;
            r = Result{};
            r.shape = shape.Name();
            r.workload = w;
            r.method = m.name;
            std::fprintf(stderr, "    does not fit this machine (%s); going on\n", e.what.c_str());
          }
          const std::string key =
              absl::StrCat(shape.Name(), "/", B, "/", absl::GetFlag(FLAGS_context));
          auto it = sdpa.find(key);
          if (m.name == "cpu-dense") same_run_dense_ms = r.ms_layer_step;
          const bool sdpa_base = it != sdpa.end();
          const double base_ms = sdpa_base ? it->second.ms : same_run_dense_ms;
          std::string base_name = "none";
          if (sdpa_base) base_name = "sdpa-" + it->second.backend;
          else if (!std::isnan(same_run_dense_ms)) base_name = "cpu-dense";
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
                        int64_t(r.tele_decodes), Cell(r.sample_rows_per_block, 3),
                        std::string(fits ? "ok" : "does not fit")});
          if (!fits) continue;
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
            if (sdpa_base) plot_points["dense " + base_name].push_back({double(B), base_ms});
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
}  // namespace twl::serve_bench

int main(int argc, char** argv) {
  try {
    return twl::serve_bench::Main(argc, argv);
  } catch (const twl::serve_bench::DoesNotFit& e) {  // outside a method's run: nothing to go on with
    twl::serve_bench::Die(e.what);
  }
}

// twl_prefill_bench: prefill into the KV cache through the public C API, the way a serving
// engine does it: prompts of 32k/128k tokens, Llama-3-8B KV shape (8 KV heads, d 128),
// several layers, chunked (8192 tokens) ragged multi-sequence prefill from device memory
// with one twl_append_batch per (chunk, layer) on the engine's stream.
//
// Measured in one run, per backend (gpu-offload with each append path, gpu-hbm):
//   append GB/s      appends alone, back to back on one stream (GPU time, CUDA events),
//                    against the device-to-host bandwidth measured here with a plain
//                    cudaMemcpyAsync from device memory to pinned host memory;
//   host ms          how long the host spent inside twl_append_batch (it must not wait);
//   TTFT             time to first token: a simulated prefill compute (a kernel that holds
//                    every SM for the layer-chunk's FLOPs at --tflops) on a compute stream,
//                    the appends of layer l of a chunk on an append stream behind its
//                    compute (so they overlap the compute of layer l + 1), then one decode
//                    step of every layer; against the same with the HBM backend and
//                    against the compute alone.
// Output: a table on stdout and CSV (--csv). Targets (issue 16, H200): offload append >= 0.8
// of the measured D2H bandwidth; TTFT within 10% of the HBM backend's.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>
#include <system_error>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "gpu/device.h"
#include "gpu/synth.h"
#include "lib/table.h"
#include "lib/tool_flags.h"
#include "twilight.h"

ABSL_FLAG(std::vector<std::string>, prompts, std::vector<std::string>({"32768", "131072"}),
          "prompt lengths in tokens (the i-th of --seqs prompts is prompt * (1 - i / (2 seqs)))");
ABSL_FLAG(int32_t, layers, 4, "layers appended per prompt, [1, 1024]");
ABSL_FLAG(int32_t, chunk, 8192, "tokens per twl_append_batch call and sequence, [1, 2^20]");
ABSL_FLAG(int32_t, seqs, 2, "ragged prompts prefilled together, [1, 256]");
ABSL_FLAG(int32_t, q_heads, 32, "query heads, a multiple of --kv-heads");
ABSL_FLAG(int32_t, kv_heads, 8, "KV heads, [1, 1024]");
ABSL_FLAG(int32_t, head_dim, 128, "head dimension, [8, 256]");
ABSL_FLAG(int32_t, page_size, 16, "tokens per page, [1, 4096]");
ABSL_FLAG(double, tflops, 500.0, "sustained FLOP rate of the simulated prefill compute (> 0)");
ABSL_FLAG(int32_t, compute_smem_kib, 160,
          "shared memory each simulated compute block holds, like a GEMM, [0, 227]");
ABSL_FLAG(bool, compute, true, "run the simulated prefill compute (--no-compute: appends alone)");
ABSL_FLAG(std::vector<std::string>, backends,
          std::vector<std::string>({"offload-copy", "offload-kernel", "hbm"}),
          "offload-copy / offload-kernel (the offload backend's append paths) and hbm");
ABSL_FLAG(int32_t, reps, 3, "timed repetitions, [1, 100]");
ABSL_FLAG(std::string, csv, "out/prefill_bench.csv", "CSV output path");

namespace {

using twl::bench::Cell;
using twl::bench::Table;

struct Options {
  std::vector<int64_t> prompts = {32768, 131072};
  int32_t layers = 4;
  int32_t chunk = 8192;
  int32_t seqs = 2;
  int32_t q_heads = 32, kv_heads = 8, head_dim = 128, page_size = 16;
  double tflops = 500.0;          // sustained prefill FLOP rate of the simulated compute
  int32_t compute_smem_kib = 160;  // shared memory each compute block holds (like a GEMM)
  bool compute = true;
  std::vector<std::string> backends = {"offload-copy", "offload-kernel", "hbm"};
  int32_t reps = 3;
  std::string csv = "out/prefill_bench.csv";
};

// Flags through the shared tool parser (bench/lib/tool_flags.h): bad values exit 2.
Options ParseArgs(int argc, char** argv) {
  twl::tools::ParseToolFlags(
      argc, argv, __FILE__,
      "twl_prefill_bench: prefill of --seqs ragged prompts in chunks of --chunk tokens through\n"
      "twl_append_batch from device memory; reports append GB/s vs the measured device-to-host\n"
      "bandwidth and vs the HBM backend, and the time to first token with a simulated prefill\n"
      "compute (--tflops) overlapping the appends.");
  Options o;
  o.prompts.clear();
  for (int32_t p : twl::tools::IntListFlag(absl::GetFlag(FLAGS_prompts), "prompts", 1, 1 << 24)) {
    o.prompts.push_back(p);
  }
  auto in = [](int32_t v, int64_t lo, int64_t hi) { return v >= lo && v <= hi; };
  o.layers = absl::GetFlag(FLAGS_layers);
  twl::tools::RequireFlag(in(o.layers, 1, 1024), "layers", "must be in [1, 1024]");
  o.chunk = absl::GetFlag(FLAGS_chunk);
  twl::tools::RequireFlag(in(o.chunk, 1, 1 << 20), "chunk", "must be in [1, 2^20]");
  o.seqs = absl::GetFlag(FLAGS_seqs);
  twl::tools::RequireFlag(in(o.seqs, 1, 256), "seqs", "must be in [1, 256]");
  o.q_heads = absl::GetFlag(FLAGS_q_heads);
  o.kv_heads = absl::GetFlag(FLAGS_kv_heads);
  twl::tools::RequireFlag(in(o.kv_heads, 1, 1024), "kv-heads", "must be in [1, 1024]");
  twl::tools::RequireFlag(in(o.q_heads, 1, 1024) && o.q_heads % o.kv_heads == 0, "q-heads",
                     "must be in [1, 1024] and a multiple of --kv-heads");
  o.head_dim = absl::GetFlag(FLAGS_head_dim);
  twl::tools::RequireFlag(in(o.head_dim, 8, 256), "head-dim", "must be in [8, 256]");
  o.page_size = absl::GetFlag(FLAGS_page_size);
  twl::tools::RequireFlag(in(o.page_size, 1, 4096), "page-size", "must be in [1, 4096]");
  o.tflops = absl::GetFlag(FLAGS_tflops);
  twl::tools::RequireFlag(o.tflops > 0 && std::isfinite(o.tflops), "tflops", "must be > 0");
  o.compute_smem_kib = absl::GetFlag(FLAGS_compute_smem_kib);
  twl::tools::RequireFlag(in(o.compute_smem_kib, 0, 227), "compute-smem-kib", "must be in [0, 227]");
  o.compute = absl::GetFlag(FLAGS_compute);
  o.backends = absl::GetFlag(FLAGS_backends);
  for (const std::string& b : o.backends) {
    twl::tools::RequireFlag(b == "offload-copy" || b == "offload-kernel" || b == "hbm", "backends",
                       "each must be offload-copy, offload-kernel or hbm");
  }
  twl::tools::RequireFlag(!o.backends.empty(), "backends", "must name at least one backend");
  o.reps = absl::GetFlag(FLAGS_reps);
  twl::tools::RequireFlag(in(o.reps, 1, 100), "reps", "must be in [1, 100]");
  o.csv = absl::GetFlag(FLAGS_csv);
  twl::tools::RequireFlag(!o.csv.empty(), "csv", "must not be empty");
  return o;
}

// Failures end the run with a message and exit status 1 (never an abort).
[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "twl_prefill_bench: %s\n", what.c_str());
  std::exit(1);
}
void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) Die(absl::StrFormat("%s: %s", what, s.ToString()));
}
void CheckTwl(twl_status s, const twl_runtime* rt, const char* what) {
  if (s != TWL_OK) {
    Die(absl::StrFormat("%s: %s: %s", what, twl_status_string(s), twl_runtime_last_error(rt)));
  }
}
template <typename T>
T Value(absl::StatusOr<T> v, const char* what) {
  Check(v.status(), what);
  return *std::move(v);
}

// Device-owned helpers that free themselves.
struct Stream {
  void* s = nullptr;
  Stream() { s = Value(twl::gpu::StreamCreate(), "stream"); }
  ~Stream() { twl::gpu::StreamDestroy(s); }
};
struct Event {
  void* e = nullptr;
  Event() { e = Value(twl::gpu::EventCreate(), "event"); }
  ~Event() { twl::gpu::EventDestroy(e); }
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// Device-to-host bandwidth of the copy engine into pinned memory (GB/s, median of reps).
double MeasureD2H(size_t bytes, int reps) {
  twl::gpu::DeviceBuffer dev;
  Check(dev.Reserve(bytes), "D2H device buffer");
  Check(twl::gpu::Memset(dev.get(), 1, bytes), "memset");
  void* host = Value(twl::gpu::MallocHost(bytes), "D2H pinned buffer");
  Stream st;
  Event e0, e1;
  std::vector<double> gbps;
  for (int r = 0; r < reps + 1; ++r) {
    Check(twl::gpu::EventRecord(e0.e, st.s), "record");
    Check(twl::gpu::CopyToHost(host, dev.get(), bytes, st.s), "D2H copy");
    Check(twl::gpu::EventRecord(e1.e, st.s), "record");
    const float ms = Value(twl::gpu::EventElapsedMs(e0.e, e1.e), "elapsed");
    if (r > 0) gbps.push_back(double(bytes) / (ms * 1e6));  // first one warms up
  }
  twl::gpu::FreeHost(host);
  return Median(gbps);
}

struct Workload {
  std::vector<int32_t> len;  // per sequence
  int64_t tokens = 0;        // sum of len
  int32_t chunks = 0;        // chunks of the longest
};

Workload MakeWorkload(const Options& o, int64_t prompt) {
  Workload w;
  for (int32_t i = 0; i < o.seqs; ++i) {
    const int64_t n = prompt - prompt * i / (2 * o.seqs);
    w.len.push_back(int32_t(std::max<int64_t>(n, 1)));
    w.tokens += w.len.back();
  }
  w.chunks = int32_t((w.len[0] + o.chunk - 1) / o.chunk);
  return w;
}

// Tokens of sequence i in chunk c.
int32_t ChunkCount(const Options& o, const Workload& w, int32_t i, int32_t c) {
  const int64_t left = int64_t(w.len[size_t(i)]) - int64_t(c) * o.chunk;
  return int32_t(std::clamp<int64_t>(left, 0, o.chunk));
}

// Simulated prefill compute of one layer for chunk c (microseconds at o.tflops):
// Llama-3-8B-like dense layers (about 2 x 218M FLOPs per token per layer, scaled by the
// attention width q_heads * head_dim / 4096) plus causal attention over the chunk's prefix.
double ComputeUs(const Options& o, const Workload& w, int32_t c) {
  const double width = double(o.q_heads) * o.head_dim;
  const double dense_per_token = 2.0 * 218e6 * (width / 4096.0) * (width / 4096.0);
  double flops = 0;
  for (int32_t i = 0; i < o.seqs; ++i) {
    const double n = ChunkCount(o, w, i, c);
    const double before = double(c) * o.chunk;
    flops += n * dense_per_token + 4.0 * width * n * (before + n / 2.0);
  }
  return flops / (o.tflops * 1e12) * 1e6;
}

struct Result {
  double append_gbps = 0, host_ms = 0, ttft_ms = 0, compute_ms = 0;
};

class Bench {
 public:
  explicit Bench(const Options& o) : o_(o) {}

  // Creates a runtime sized for the workload on `backend`.
  twl_runtime* Create(const std::string& backend, const Workload& w) const {
    twl_runtime_config c = twl_runtime_config_default();
    c.num_layers = o_.layers;
    c.num_q_heads = o_.q_heads;
    c.num_kv_heads = o_.kv_heads;
    c.head_dim = o_.head_dim;
    c.page_size = o_.page_size;
    c.collect_telemetry = 0;
    c.backend = backend == "hbm" ? TWL_BACKEND_GPU_HBM : TWL_BACKEND_GPU_OFFLOAD;
    int64_t pages = 0;
    for (int32_t n : w.len) pages += (n + o_.page_size - 1) / o_.page_size;
    const int64_t page_bytes = int64_t(o_.kv_heads) * 2 * o_.page_size * o_.head_dim * 2;
    c.host_pool_bytes = (pages * o_.layers + 64) * page_bytes;
    if (backend == "offload-kernel") {
      setenv("TWL_APPEND_PATH", "kernel", 1);
    } else {
      setenv("TWL_APPEND_PATH", "copy", 1);
    }
    twl_runtime* rt = nullptr;
    const twl_status s = twl_runtime_create(&c, &rt);
    unsetenv("TWL_APPEND_PATH");
    CheckTwl(s, nullptr, "twl_runtime_create");
    return rt;
  }

  std::vector<twl_seq_id> NewSequences(twl_runtime* rt) const {
    std::vector<twl_seq_id> ids(size_t(o_.seqs));
    for (twl_seq_id& id : ids) CheckTwl(twl_sequence_create(rt, &id), rt, "twl_sequence_create");
    return ids;
  }
  void FreeSequences(twl_runtime* rt, const std::vector<twl_seq_id>& ids) const {
    for (twl_seq_id id : ids) CheckTwl(twl_sequence_free(rt, id), rt, "twl_sequence_free");
  }

  // One chunk of one layer: every sequence's tokens of that chunk in one call.
  void AppendChunk(twl_runtime* rt, const std::vector<twl_seq_id>& ids, const Workload& w,
                   int32_t layer, int32_t c, void* stream) const {
    std::vector<int32_t> counts(ids.size());
    for (int32_t i = 0; i < o_.seqs; ++i) counts[size_t(i)] = ChunkCount(o_, w, i, c);
    CheckTwl(twl_append_batch(rt, layer, ids.data(), counts.data(), int32_t(ids.size()), k_.get(),
                              v_.get(), TWL_DTYPE_FP16, TWL_MEMORY_DEVICE, stream),
             rt, "twl_append_batch");
  }

  // Input K/V of one chunk of every sequence (the values do not matter for the timing).
  void MakeInput() {
    const size_t elems = size_t(o_.seqs) * o_.chunk * o_.kv_heads * o_.head_dim;
    Check(k_.Reserve(elems * 2), "input K");
    Check(v_.Reserve(elems * 2), "input V");
    twl::SynthSpec spec;
    spec.num_kv_heads = o_.kv_heads;
    spec.head_dim = o_.head_dim;
    Check(twl::LaunchSynthKv(spec, 0, 0, o_.seqs * o_.chunk, o_.seqs * o_.chunk,
                             k_.as<twl::fp16_t>(), v_.as<twl::fp16_t>(), nullptr),
          "synth K/V");
    const size_t q_elems = size_t(o_.seqs) * o_.q_heads * o_.head_dim;
    Check(q_.Reserve(q_elems * 2), "q");
    Check(out_.Reserve(q_elems * 2), "out");
    Check(twl::LaunchSynthQueries(spec, o_.seqs, o_.q_heads, q_.as<twl::fp16_t>(), nullptr),
          "synth q");
    Check(twl::gpu::DeviceSync(), "synth");
  }

  // Appends alone, back to back on one stream: GPU time and host time of the calls.
  void MeasureAppend(twl_runtime* rt, const Workload& w, Result* r) const {
    Stream st;
    Event e0, e1;
    std::vector<double> ms, host;
    for (int32_t rep = 0; rep < o_.reps + 1; ++rep) {
      const std::vector<twl_seq_id> ids = NewSequences(rt);
      Check(twl::gpu::EventRecord(e0.e, st.s), "record");
      const auto t0 = std::chrono::steady_clock::now();
      for (int32_t c = 0; c < w.chunks; ++c) {
        for (int32_t l = 0; l < o_.layers; ++l) AppendChunk(rt, ids, w, l, c, st.s);
      }
      const auto t1 = std::chrono::steady_clock::now();
      Check(twl::gpu::EventRecord(e1.e, st.s), "record");
      const float gpu_ms = Value(twl::gpu::EventElapsedMs(e0.e, e1.e), "elapsed");
      CheckTwl(twl_runtime_async_error(rt), rt, "append (async)");
      if (rep > 0) {  // the first one allocates staging for the sizes
        ms.push_back(gpu_ms);
        host.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
      }
      FreeSequences(rt, ids);
    }
    const double bytes = double(w.tokens) * o_.layers * o_.kv_heads * o_.head_dim * 2 * 2;
    r->append_gbps = bytes / (Median(ms) * 1e6);
    r->host_ms = Median(host);
  }

  // Simulated prefill compute on one stream, appends behind it on another, then one decode
  // step of every layer: GPU time from the first compute to the last decode.
  void MeasureTtft(twl_runtime* rt, const Workload& w, Result* r) const {
    Stream compute, append;
    Event start, ready, end;
    const int32_t sms = twl::gpu::SmCount();
    std::vector<double> ttft;
    for (int32_t rep = 0; rep < o_.reps; ++rep) {
      const std::vector<twl_seq_id> ids = rt ? NewSequences(rt) : std::vector<twl_seq_id>();
      Check(twl::gpu::EventRecord(start.e, compute.s), "record");
      for (int32_t c = 0; c < w.chunks; ++c) {
        const double us = ComputeUs(o_, w, c);
        for (int32_t l = 0; l < o_.layers; ++l) {
          if (o_.compute) {
            Check(twl::LaunchBusyWait(us, sms, 256, o_.compute_smem_kib * 1024, compute.s),
                  "compute");
          }
          if (!rt) continue;
          // Layer l's K/V of this chunk exist once its compute is done; the append then
          // overlaps the compute of layer l + 1.
          Check(twl::gpu::EventRecord(ready.e, compute.s), "record");
          Check(twl::gpu::StreamWaitEvent(append.s, ready.e), "wait");
          AppendChunk(rt, ids, w, l, c, append.s);
        }
      }
      if (rt) {
        // The first token: one decode step per layer (the runtime orders it after the
        // appends, which ran on the other stream).
        for (int32_t l = 0; l < o_.layers; ++l) {
          CheckTwl(twl_decode(rt, l, ids.data(), int32_t(ids.size()), q_.get(), out_.get(),
                              TWL_MEMORY_DEVICE, nullptr, compute.s),
                   rt, "twl_decode");
        }
      }
      Check(twl::gpu::EventRecord(end.e, compute.s), "record");
      ttft.push_back(Value(twl::gpu::EventElapsedMs(start.e, end.e), "elapsed"));
      Check(twl::gpu::StreamSync(append.s), "sync");
      if (rt) {
        CheckTwl(twl_runtime_async_error(rt), rt, "prefill (async)");
        FreeSequences(rt, ids);
      }
    }
    (rt ? r->ttft_ms : r->compute_ms) = Median(ttft);
  }

 private:
  const Options& o_;
  twl::gpu::DeviceBuffer k_, v_, q_, out_;
};

}  // namespace

int main(int argc, char** argv) {
  const Options o = ParseArgs(argc, argv);
  if (!twl::gpu::GpuAvailable()) {
    std::fprintf(stderr, "twl_prefill_bench: no CUDA device visible; nothing to measure\n");
    return 0;
  }
  const double d2h = MeasureD2H(size_t(512) << 20, o.reps);
  std::printf("device-to-host (cudaMemcpyAsync, pinned, 512 MiB): %.1f GB/s\n", d2h);
  Bench bench(o);
  bench.MakeInput();

  Table t({"backend", "prompt", "seqs", "layers", "chunk", "tokens", "append_GBps", "of_d2h",
           "of_hbm_append", "host_ms", "ttft_ms", "ttft_vs_hbm", "compute_ms"});
  t.title = absl::StrFormat("prefill through twl_append_batch (D2H %.1f GB/s, %.0f TFLOPS)", d2h,
                            o.tflops);
  for (int64_t prompt : o.prompts) {
    const Workload w = MakeWorkload(o, prompt);
    Result compute_only;
    bench.MeasureTtft(nullptr, w, &compute_only);
    std::vector<std::pair<std::string, Result>> results;
    double hbm_gbps = 0, hbm_ttft = 0;
    for (const std::string& b : o.backends) {
      std::fprintf(stderr, "  %s, prompt %lld ...\n", b.c_str(), static_cast<long long>(prompt));
      twl_runtime* rt = bench.Create(b, w);
      Result r;
      bench.MeasureAppend(rt, w, &r);
      bench.MeasureTtft(rt, w, &r);
      twl_runtime_free(rt);
      if (b == "hbm") {
        hbm_gbps = r.append_gbps;
        hbm_ttft = r.ttft_ms;
      }
      results.emplace_back(b, r);
    }
    for (const auto& [b, r] : results) {
      const double nan = std::nan("");
      t.AddRow({b, prompt, o.seqs, o.layers, o.chunk, w.tokens, Cell(r.append_gbps, 3),
                Cell(r.append_gbps / d2h, 3),
                Cell(hbm_gbps > 0 ? r.append_gbps / hbm_gbps : nan, 3), Cell(r.host_ms, 3),
                Cell(r.ttft_ms, 4), Cell(hbm_ttft > 0 ? r.ttft_ms / hbm_ttft : nan, 4),
                Cell(compute_only.compute_ms, 4)});
    }
  }
  t.Print();
  if (!o.csv.empty()) {
    const std::filesystem::path dir = std::filesystem::path(o.csv).parent_path();
    std::error_code ec;
    if (!dir.empty()) std::filesystem::create_directories(dir, ec);  // WriteCsv reports failure
    if (absl::Status s = t.WriteCsv(o.csv); !s.ok()) {
      std::fprintf(stderr, "twl_prefill_bench: %s\n", s.ToString().c_str());
      return 1;
    }
    std::printf("CSV: %s\n", o.csv.c_str());
  }
  return 0;
}

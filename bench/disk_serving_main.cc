// twl_disk_serving: the GPU offload backend's serving loop over the NVMe tier, replayed on the
// CPU (bench/lib/disk_serving_sim.h): prefill, then per step and layer one appended token per
// sequence and the decode's kept blocks made resident, with the backend's residency calls on
// aligned host memory and a real file. Prints per measured step what the appends waited for
// and the decode's disk traffic, then the means. No GPU needed.
//
//   twl_disk_serving [--dir /tmp] [--layers 4] [--seqs 8] [--kv_heads 8] [--context 8192]
//                    [--pool_fraction 0.25] [--kept_fraction 0.05] [--drift 0.01]
//                    [--steps 32] [--warmup 4] [--keep_last_block] [--per_step] [--before]
//                    [--block_cache] [--gpu_cache_rows 0]
#include <cstdio>
#include <string>

#include "absl/flags/flag.h"
#include "lib/disk_serving_sim.h"
#include "lib/tool_flags.h"

ABSL_FLAG(std::string, dir, "/tmp", "directory of the disk tier's file");
ABSL_FLAG(int32_t, layers, 4, "layers");
ABSL_FLAG(int32_t, seqs, 8, "sequences in the batch");
ABSL_FLAG(int32_t, kv_heads, 8, "KV heads (8 KiB blocks at head_dim 128, page 16)");
ABSL_FLAG(int32_t, head_dim, 128, "head dimension");
ABSL_FLAG(int32_t, context, 8192, "prefilled tokens per sequence");
ABSL_FLAG(double, pool_fraction, 0.25, "host slots as a share of the prefilled KV's blocks");
ABSL_FLAG(double, kept_fraction, 0.05, "kept blocks per (layer, sequence, KV head)");
ABSL_FLAG(double, drift, 0.01, "share of each kept set replaced per step");
ABSL_FLAG(bool, keep_last_block, false, "the block being appended is kept by the decode too");
ABSL_FLAG(int32_t, steps, 32, "measured steps");
ABSL_FLAG(int32_t, warmup, 4, "steps before the measured ones");
ABSL_FLAG(int32_t, seed, 1, "kept-set seed");
ABSL_FLAG(bool, per_step, false, "print every measured step");
ABSL_FLAG(bool, block_cache, false,
          "no GPU row cache in front: every group's kept blocks are handed to the residency "
          "(the sequence before the row cache's plan ran first; the block cache's)");
ABSL_FLAG(int64_t, gpu_cache_rows, 0, "GPU row cache capacity in rows (0: every kept row)");
ABSL_FLAG(bool, before, false,
          "the residency calls as before appends stopped waiting (no append reserve, no open "
          "blocks, no writes behind), for comparison");

namespace {

void Print(const char* label, const twl::bench::DiskServingStep& s) {
  std::printf(
      "%-6s append %8.3f ms (quiesces %3lld, loads %5lld, writes %5lld, read waits %3lld, "
      "%6.2f MB read, %8.3f ms waiting) | decode %8.3f ms (loads %5lld, read ahead %5lld, "
      "writes %5lld, %6.2f MB read, %8.3f ms waiting; groups %3lld of %6lld blocks, "
      "reserves %3lld, "
      "kept lists read back %3lld, rows missed %6lld) | written behind %5lld\n",
      label, s.append_ms, static_cast<long long>(s.append_quiesces),
      static_cast<long long>(s.append_loaded), static_cast<long long>(s.append_written),
      static_cast<long long>(s.append_read_waits), double(s.append_bytes_read) / 1e6,
      s.append_wait_ms, s.decode_ms, static_cast<long long>(s.decode_loaded),
      static_cast<long long>(s.decode_read_ahead), static_cast<long long>(s.decode_written),
      double(s.decode_bytes_read) / 1e6, s.decode_wait_ms,
      static_cast<long long>(s.decode_groups), static_cast<long long>(s.decode_blocks),
      static_cast<long long>(s.decode_reserves),
      static_cast<long long>(s.decode_kept_readbacks),
      static_cast<long long>(s.decode_missed_rows), static_cast<long long>(s.written_behind));
}

}  // namespace

int main(int argc, char** argv) {
  twl::tools::ParseToolFlags(argc, argv, __FILE__,
                             "twl_disk_serving: the GPU offload backend's residency calls of a "
                             "serving loop over the NVMe tier, on the CPU");
  twl::bench::DiskServingSimOptions o;
  o.dir = absl::GetFlag(FLAGS_dir);
  o.layers = absl::GetFlag(FLAGS_layers);
  o.seqs = absl::GetFlag(FLAGS_seqs);
  o.kv_heads = absl::GetFlag(FLAGS_kv_heads);
  o.head_dim = absl::GetFlag(FLAGS_head_dim);
  o.context = absl::GetFlag(FLAGS_context);
  o.pool_fraction = absl::GetFlag(FLAGS_pool_fraction);
  o.kept_fraction = absl::GetFlag(FLAGS_kept_fraction);
  o.drift = absl::GetFlag(FLAGS_drift);
  o.keep_last_block = absl::GetFlag(FLAGS_keep_last_block);
  o.steps = absl::GetFlag(FLAGS_steps);
  o.warmup = absl::GetFlag(FLAGS_warmup);
  o.seed = uint32_t(absl::GetFlag(FLAGS_seed));
  o.never_wait = !absl::GetFlag(FLAGS_before);
  o.gpu_row_cache = !absl::GetFlag(FLAGS_block_cache);
  o.gpu_cache_rows = absl::GetFlag(FLAGS_gpu_cache_rows);
  twl::tools::RequireFlag(o.layers >= 1 && o.seqs >= 1 && o.kv_heads >= 1, "layers",
                          "layers, seqs, kv_heads >= 1");
  twl::tools::RequireFlag(o.context >= 16, "context", ">= 16");
  twl::tools::RequireFlag(o.steps >= 1 && o.warmup >= 0, "steps", ">= 1 (warmup >= 0)");
  twl::tools::RequireFlag(o.pool_fraction > 0 && o.pool_fraction <= 1, "pool_fraction",
                          "in (0, 1]");
  auto r = twl::bench::RunDiskServingSim(o);
  if (!r.ok()) {
    std::fprintf(stderr, "twl_disk_serving: %s\n", r.status().ToString().c_str());
    return 1;
  }
  std::printf("blocks %lld (%.2f GiB), host slots %lld, kept blocks per step %lld, prefill %.0f ms\n",
              static_cast<long long>(r->blocks), double(r->blocks) * o.head_dim * 16 * 4 / (1 << 30),
              static_cast<long long>(r->slots), static_cast<long long>(r->kept_blocks),
              r->prefill_ms);
  if (absl::GetFlag(FLAGS_per_step)) {
    for (size_t i = 0; i < r->steps.size(); ++i) {
      Print(std::to_string(i).c_str(), r->steps[i]);
    }
  }
  Print("mean", r->Mean());
  return 0;
}

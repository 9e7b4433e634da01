// Fetch calibration (see fetch_calibration.h): CUDA-free, through the transports and the
// device helpers, so it builds (and answers Unavailable) without CUDA too.
#include "offload/fetch_calibration.h"

#include <algorithm>
#include <numeric>
#include <random>

#include "absl/strings/str_format.h"
#include "cache/host_arena.h"
#include "gpu/device.h"

namespace twl {

std::string FetchCalibration::Summary() const {
  std::string s = absl::StrFormat(
      "fetch calibration (%d blocks of %d B): PCIe peak %.1f GB/s, gather %.1f GB/s (%.0f%%), "
      "copy engine scattered %.1f GB/s",
      blocks, block_bytes, pcie_peak_gbps, gather_gbps, 100.0 * gather_gbps / pcie_peak_gbps,
      ce_scatter_gbps);
  for (size_t i = 0; i < run_lengths.size(); ++i) {
    s += absl::StrFormat(", runs of %d: %.1f GB/s", run_lengths[i], ce_run_gbps[i]);
  }
  s += absl::StrFormat("; copy engine wins from runs of %d blocks (0 = never)",
                       ce_min_run_blocks);
  return s;
}

namespace {

// Median GB/s of `reps` submissions of `list`.
absl::StatusOr<double> Measure(FetchTransport& t, const std::vector<FetchEntry>& list,
                               int64_t block_bytes, int32_t reps, void* stream, void* e0,
                               void* e1) {
  std::vector<double> gbps;
  for (int32_t r = 0; r <= reps; ++r) {  // the first run warms up
    if (absl::Status s = gpu::EventRecord(e0, stream); !s.ok()) return s;
    if (absl::Status s = t.SubmitHost(list.data(), int32_t(list.size()), stream); !s.ok()) {
      return s;
    }
    if (absl::Status s = gpu::EventRecord(e1, stream); !s.ok()) return s;
    absl::StatusOr<float> ms = gpu::EventElapsedMs(e0, e1);
    if (!ms.ok()) return ms.status();
    if (r > 0) gbps.push_back(double(list.size()) * block_bytes / (double(*ms) * 1e6));
  }
  std::sort(gbps.begin(), gbps.end());
  return gbps[gbps.size() / 2];
}

}  // namespace

absl::StatusOr<FetchCalibration> CalibrateFetch(int64_t block_bytes, int32_t blocks,
                                                int32_t repetitions) {
  if (!gpu::GpuAvailable()) return absl::UnavailableError("fetch calibration: no GPU");
  if (blocks < 64) return absl::InvalidArgumentError("fetch calibration: blocks < 64");
  const int64_t pool_blocks = 2ll * blocks;
  absl::StatusOr<std::unique_ptr<HostArena>> pool =
      HostArena::Create(HostMemKind::kPinnedMapped, block_bytes, pool_blocks, 16);
  if (!pool.ok()) return pool.status();
  // Random bytes, not zeros (zeros can move faster than data on some paths).
  std::mt19937_64 rng(12345);
  auto* words = static_cast<uint64_t*>((*pool)->base());
  for (int64_t i = 0; i < (*pool)->bytes() / 8; ++i) words[i] = rng();
  gpu::DeviceBuffer slots;
  if (absl::Status s = slots.Reserve(size_t(blocks) * block_bytes); !s.ok()) return s;
  const FetchSource src{(*pool)->base(), (*pool)->device_base(), block_bytes, pool_blocks};
  const FetchDest dst{slots.get(), blocks};
  auto gather = CreateGatherTransport(src, dst);
  if (!gather.ok()) return gather.status();
  auto ce = CreateCopyEngineTransport(src, dst);
  if (!ce.ok()) return ce.status();
  auto stream = gpu::StreamCreate();
  if (!stream.ok()) return stream.status();
  auto e0 = gpu::EventCreate();
  auto e1 = gpu::EventCreate();
  if (!e0.ok() || !e1.ok()) return absl::InternalError("fetch calibration: no events");

  FetchCalibration cal;
  cal.block_bytes = block_bytes;
  cal.blocks = blocks;
  auto finish = [&](absl::Status s) {
    gpu::EventDestroy(*e0);
    gpu::EventDestroy(*e1);
    gpu::StreamDestroy(*stream);
    return s;
  };
  // Lists: contiguous, scattered (random distinct source blocks, shuffled slots), runs.
  std::vector<FetchEntry> contiguous, scattered;
  for (int32_t i = 0; i < blocks; ++i) contiguous.push_back(FetchEntry{i, i});
  std::vector<int32_t> src_ids(static_cast<size_t>(pool_blocks));
  std::iota(src_ids.begin(), src_ids.end(), 0);
  std::shuffle(src_ids.begin(), src_ids.end(), rng);
  std::vector<int32_t> slot_ids(static_cast<size_t>(blocks));
  std::iota(slot_ids.begin(), slot_ids.end(), 0);
  std::shuffle(slot_ids.begin(), slot_ids.end(), rng);
  for (int32_t i = 0; i < blocks; ++i) scattered.push_back(FetchEntry{src_ids[size_t(i)], slot_ids[size_t(i)]});

  auto m = Measure(**ce, contiguous, block_bytes, repetitions, *stream, *e0, *e1);
  if (!m.ok()) return finish(m.status());
  cal.pcie_peak_gbps = *m;
  m = Measure(**gather, scattered, block_bytes, repetitions, *stream, *e0, *e1);
  if (!m.ok()) return finish(m.status());
  cal.gather_gbps = *m;
  m = Measure(**ce, scattered, block_bytes, repetitions, *stream, *e0, *e1);
  if (!m.ok()) return finish(m.status());
  cal.ce_scatter_gbps = *m;
  cal.scattered_choice = cal.ce_scatter_gbps > cal.gather_gbps ? TransportKind::kCopyEngine
                                                               : TransportKind::kZeroCopyGather;
  for (int32_t run : {4, 16, 64, 256}) {
    if (run > blocks) break;
    // Runs of `run` consecutive blocks at random run-aligned places, into consecutive slots.
    std::vector<FetchEntry> runs;
    const int32_t nruns = blocks / run;
    std::vector<int32_t> starts(static_cast<size_t>(pool_blocks / run));
    std::iota(starts.begin(), starts.end(), 0);
    std::shuffle(starts.begin(), starts.end(), rng);
    for (int32_t r = 0; r < nruns; ++r) {
      for (int32_t k = 0; k < run; ++k) {
        runs.push_back(FetchEntry{starts[size_t(r)] * run + k, r * run + k});
      }
    }
    m = Measure(**ce, runs, block_bytes, repetitions, *stream, *e0, *e1);
    if (!m.ok()) return finish(m.status());
    cal.run_lengths.push_back(run);
    cal.ce_run_gbps.push_back(*m);
    if (cal.ce_min_run_blocks == 0 && *m > cal.gather_gbps) cal.ce_min_run_blocks = run;
  }
  if (absl::Status s = finish(absl::OkStatus()); !s.ok()) return s;
  return cal;
}

}  // namespace twl

// Disk read-rate probe through the disk tier (see disk_probe.h).
#include "lib/disk_probe.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <numeric>
#include <random>
#include <vector>

#include "absl/strings/str_format.h"
#include "offload/disk_tier.h"

namespace twl::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Writes `records` records of `bytes` once, then reads them (file order or shuffled) with up
// to queue_depth reads in flight; returns MiB/s of the reads.
absl::StatusOr<double> ReadRate(const std::string& dir, int64_t bytes, int64_t records,
                                int32_t queue_depth, bool sequential, double max_seconds,
                                DiskRates* info) {
  DiskTierOptions o;
  o.path = dir;
  o.record_bytes = bytes;
  o.capacity_bytes = records * bytes;
  o.queue_depth = queue_depth;
  absl::StatusOr<std::unique_ptr<DiskTier>> tier = DiskTier::Create(o);
  if (!tier.ok()) return tier.status();
  info->engine = (*tier)->engine_name();
  info->direct_io = (*tier)->direct_io();
  // One batch of distinct non-zero buffers, written again and again.
  const int64_t batch = std::max<int64_t>(1, std::min<int64_t>(queue_depth, records));
  char* buf = static_cast<char*>(std::aligned_alloc(4096, size_t(batch * bytes)));
  if (buf == nullptr) return absl::ResourceExhaustedError("probe: no memory");
  std::memset(buf, 0x5a, size_t(batch * bytes));
  std::vector<const void*> src(static_cast<size_t>(batch));
  for (int64_t i = 0; i < batch; ++i) src[size_t(i)] = buf + i * bytes;
  std::vector<int64_t> written;
  written.reserve(size_t(records));
  absl::Status status;
  for (int64_t done = 0; done < records && status.ok(); done += batch) {
    const int64_t n = std::min(batch, records - done);
    status = (*tier)->Write(absl::MakeConstSpan(src.data(), size_t(n)), &written);
  }
  double rate = 0;
  if (status.ok()) {
    std::vector<int64_t> order = written;
    if (sequential) {
      std::sort(order.begin(), order.end());
    } else {
      std::shuffle(order.begin(), order.end(), std::mt19937_64(11));
    }
    // Batches of queue_depth / 4 reads, four in flight: the ring never drains.
    const int64_t per = std::max<int64_t>(1, queue_depth / 4);
    std::deque<DiskTier::Ticket> flight;
    int64_t read = 0;
    size_t pos = 0;
    const auto t0 = Clock::now();
    auto elapsed = [&] { return std::chrono::duration<double>(Clock::now() - t0).count(); };
    while (pos < order.size() && status.ok() && elapsed() < max_seconds) {
      if (flight.size() == 4) {
        status = (*tier)->Wait(flight.front());
        flight.pop_front();
        continue;
      }
      std::vector<DiskReadOp> ops;
      while (pos < order.size() && int64_t(ops.size()) < per) {
        ops.push_back({order[pos++], buf + (int64_t(ops.size()) % batch) * bytes});
      }
      absl::StatusOr<DiskTier::Ticket> t = (*tier)->ReadAsync(ops);
      if (!t.ok()) {
        status = t.status();
        break;
      }
      flight.push_back(*t);
      read += int64_t(ops.size());
    }
    for (DiskTier::Ticket t : flight) status.Update((*tier)->Wait(t));
    rate = double(read) * double(bytes) / (1024.0 * 1024.0) / std::max(elapsed(), 1e-9);
  }
  std::free(buf);
  if (!status.ok()) return status;
  return rate;
}

}  // namespace

absl::StatusOr<DiskRates> ProbeDiskReadRates(const std::string& dir, int64_t mib,
                                             int32_t queue_depth, double max_seconds) {
  if (mib < 1 || queue_depth < 1 || !(max_seconds > 0)) {
    return absl::InvalidArgumentError("probe: mib, queue_depth and max_seconds must be > 0");
  }
  DiskRates r;
  const int64_t total = mib << 20;
  absl::StatusOr<double> seq =
      ReadRate(dir, int64_t(1) << 20, total >> 20, queue_depth, true, max_seconds, &r);
  if (!seq.ok()) return seq.status();
  r.seq_mib_s = *seq;
  absl::StatusOr<double> rnd =
      ReadRate(dir, 8192, total / 8192, queue_depth, false, max_seconds, &r);
  if (!rnd.ok()) return rnd.status();
  r.rand8k_mib_s = *rnd;
  return r;
}

int64_t ProcessDiskReadBytes() {
  std::FILE* f = std::fopen("/proc/self/io", "r");
  if (f == nullptr) return -1;
  char line[256];
  int64_t value = -1;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    long long v = 0;
    if (std::sscanf(line, "read_bytes: %lld", &v) == 1) value = v;
  }
  std::fclose(f);
  return value;
}

}  // namespace twl::bench

// The device's reference disk read rates for the disk tier benchmarks, measured through the
// tier itself (offload/disk_tier.h: io_uring, O_DIRECT where allowed), like a small fio run:
// a file of `mib` MiB written once, then read back in file order with 1 MiB records
// (sequential) and in a random order with 8 KiB records (random), `queue_depth` reads in
// flight, each phase stopped after max_seconds. Plus the bytes this process has read from
// block devices (/proc/self/io read_bytes), to measure a run's real disk reads.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace twl::bench {

struct DiskRates {
  double seq_mib_s = 0;     // 1 MiB records in file order
  double rand8k_mib_s = 0;  // 8 KiB records in a random order
  std::string engine;       // io_uring or threads
  bool direct_io = false;
};

absl::StatusOr<DiskRates> ProbeDiskReadRates(const std::string& dir, int64_t mib,
                                             int32_t queue_depth, double max_seconds);

// read_bytes of /proc/self/io (bytes this process caused to be fetched from storage), or -1
// where the kernel does not report it.
int64_t ProcessDiskReadBytes();

}  // namespace twl::bench

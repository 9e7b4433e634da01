// Measures the two fetch transports on this machine, so that the choice between them (and
// the numbers quoted in bench/RESULTS.md) come from measurement rather than assumption:
//   pcie_peak   one large contiguous pinned -> device copy (copy engine): the link's ceiling
//   gather      zero-copy gather of scattered blocks (device list, one kernel)
//   ce_scatter  copy engine, one descriptor per scattered block (cudaMemcpyBatchAsync)
//   ce_run[R]   copy engine over runs of R consecutive blocks
// Sizes are one decode step's worth or more (tens of MB), medians of several repetitions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "offload/fetch_transport.h"

namespace twl {

struct FetchCalibration {
  int64_t block_bytes = 0;
  int32_t blocks = 0;           // blocks per measured batch
  double pcie_peak_gbps = 0;    // GB/s = 1e9 bytes/s
  double gather_gbps = 0;
  double ce_scatter_gbps = 0;
  std::vector<int32_t> run_lengths;  // R of each ce_run_gbps entry
  std::vector<double> ce_run_gbps;
  // Shortest run length at which the copy engine beats the gather (0: it never does).
  int32_t ce_min_run_blocks = 0;
  TransportKind scattered_choice = TransportKind::kZeroCopyGather;

  std::string Summary() const;
};

// Unavailable without a GPU. Allocates 2 * blocks pinned blocks and `blocks` device slots
// for the duration of the call.
absl::StatusOr<FetchCalibration> CalibrateFetch(int64_t block_bytes, int32_t blocks = 4096,
                                                int32_t repetitions = 5);

}  // namespace twl

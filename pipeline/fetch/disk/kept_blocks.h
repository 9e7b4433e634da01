// The FP16 blocks a group's kept lists need, for a store whose blocks may be on disk
// (pipeline/fetch/disk/resident_fetch.cuh): per (sequence, KV head) its kept tokens map to
// blocks (page of the token, that KV head), the unit of the GPU cache, the fetch and the
// attention, and of the disk residency under the GPU offload backend. Host code, so that the
// mapping is tested without a GPU (tests/cpu/disk_residency_blocks_test.cc).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "core/page_layout.h"
#include "core/stage_views.h"

namespace twl {

// Marks of the blocks listed so far in one step (a generation counter per block).
struct BlockMarks {
  std::vector<uint32_t> mark;  // [num_blocks]
  uint32_t gen = 0;
  // A new step: every block unlisted again.
  void NewStep(size_t num_blocks);
};

// Appends to *blocks the distinct blocks that hold the kept tokens of sequences
// [first_seq, first_seq + num_seqs) of `batch` (host copy of the step's plan) and not yet
// listed in this step (marks), and to *rows how many kept tokens each holds (a block that two
// sequences share, forks, counts the first one's). counts: [num_seqs][num_kv_heads] kept
// tokens; tokens: their lists packed in the same order, each ascending. InternalError for a
// kept token past its sequence's pages (a corrupt list).
absl::Status AppendKeptBlocks(const PageGeometry& g, const BatchView& batch, int32_t first_seq,
                              int32_t num_seqs, const int32_t* counts, const int32_t* tokens,
                              BlockMarks* marks, std::vector<int32_t>* blocks,
                              std::vector<int32_t>* rows);

// Appends to *blocks the reported blocks (a GPU row cache's miss report,
// pipeline/fetch/disk/miss_first_fetch.cuh: `count` block ids with their missed rows) not yet
// listed in this step (marks), and their rows to *rows. InternalError for a block id outside
// the marks (a corrupt report).
absl::Status AppendReportedBlocks(const int32_t* reported, const int32_t* reported_rows,
                                  int32_t count, BlockMarks* marks,
                                  std::vector<int32_t>* blocks, std::vector<int32_t>* rows);

}  // namespace twl

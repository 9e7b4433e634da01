// Kept lists -> distinct blocks (see kept_blocks.h).
#include "pipeline/fetch/disk/kept_blocks.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace twl {

void BlockMarks::NewStep(size_t num_blocks) {
  if (mark.size() != num_blocks) {
    mark.assign(num_blocks, 0);
    gen = 0;
  }
  if (++gen == 0) {  // wrapped: clear once every 2^32 steps
    std::fill(mark.begin(), mark.end(), 0);
    gen = 1;
  }
}

absl::Status AppendKeptBlocks(const PageGeometry& g, const BatchView& batch, int32_t first_seq,
                              int32_t num_seqs, const int32_t* counts, const int32_t* tokens,
                              BlockMarks* marks, std::vector<int32_t>* blocks,
                              std::vector<int32_t>* rows) {
  const int32_t H = g.num_kv_heads;
  int64_t at = 0;
  for (int32_t i = 0; i < num_seqs; ++i) {
    const int32_t s = first_seq + i;
    const int32_t pages_of_seq = batch.NumPages(g, s);
    for (int32_t h = 0; h < H; ++h) {
      const int32_t n = counts[int64_t(i) * H + h];
      int32_t last = -1;
      int64_t run = -1;  // index in *rows of the block being counted (-1: listed before)
      for (int32_t k = 0; k < n; ++k) {
        const int32_t tok = tokens[at + k];
        const int32_t idx = tok / g.page_size;
        if (idx == last) {
          if (run >= 0) ++(*rows)[size_t(run)];
          continue;
        }
        last = idx;
        if (tok < 0 || idx >= pages_of_seq) {
          return absl::InternalError(absl::StrFormat(
              "offload: kept token %d of sequence %d is past its %d pages", tok, s,
              pages_of_seq));
        }
        const int64_t block = g.BlockId(batch.PageId(s, idx), h);
        if (block < 0 || block >= int64_t(marks->mark.size())) {
          return absl::InternalError(absl::StrFormat(
              "offload: block %d of sequence %d out of range", block, s));
        }
        if (marks->mark[size_t(block)] == marks->gen) {
          run = -1;
          continue;
        }
        marks->mark[size_t(block)] = marks->gen;
        blocks->push_back(int32_t(block));
        run = int64_t(rows->size());
        rows->push_back(1);
      }
      at += n;
    }
  }
  return absl::OkStatus();
}

absl::Status AppendReportedBlocks(const int32_t* reported, const int32_t* reported_rows,
                                  int32_t count, BlockMarks* marks,
                                  std::vector<int32_t>* blocks, std::vector<int32_t>* rows) {
  for (int32_t i = 0; i < count; ++i) {
    const int32_t block = reported[i];
    if (block < 0 || size_t(block) >= marks->mark.size()) {
      return absl::InternalError(
          absl::StrFormat("offload: reported missed block %d out of range", block));
    }
    if (marks->mark[size_t(block)] == marks->gen) continue;
    marks->mark[size_t(block)] = marks->gen;
    blocks->push_back(block);
    rows->push_back(std::max(reported_rows[i], 1));
  }
  return absl::OkStatus();
}

}  // namespace twl

// Bound batches (issue 11.3): a fixed set of sequences whose per-layer lengths and page tables
// the runtime keeps current itself, with a row stride fixed at bind time by max_tokens, so that
// a decode step over them needs no host-built plan and can be captured in a CUDA graph.
//
// This file is the host bookkeeping, backend-free: which sequences are bound where, the host
// mirror of every batch's tables, the max_tokens check of an append, and the words an append
// changes (the Runtime applies them to the mirror and hands them to the backend, which writes
// the same words into the batch's device copy on the append's stream).
//
// Layout of one layer's words (host mirror and device copy alike; runtime/backend.h):
//   [0, n)                          lengths, one per sequence of the batch (bind order)
//   [n + i * max_pages, ... + max_pages)  page ids of sequence i; entries past its pages: -1
//   [S + 5 i, S + 5 i + 5), S = n (1 + max_pages): the row the last reservation
//       (Runtime::ReserveBatchRows) took for sequence i, as the AppendSegment the batch's
//       append writes (page, row, row + 1, src_token i, stage -1); rows 0..0 until then
// Layers follow each other: word offset of layer l is l * WordsPerLayer().
//
// Thread-safety: none; the Runtime calls it under its exclusive lock.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/sequence_table.h"
#include "runtime/backend.h"  // BoundTables (the device copy; null on the CPU), TableWrite

namespace twl {


struct BoundBatch {
  std::vector<SeqId> seqs;
  int32_t num_layers = 0;
  int32_t page_size = 0;
  int32_t max_tokens = 0;
  int32_t max_pages = 0;      // ceil(max_tokens / page_size): the page-table row stride
  std::vector<int32_t> words;  // host mirror, [num_layers][WordsPerLayer()]
  std::unique_ptr<BoundTables> device;
  bool reserved = false;       // a reservation has filled the segment words of every layer

  int32_t num_seqs() const { return static_cast<int32_t>(seqs.size()); }
  int64_t WordsPerLayer() const { return BoundWordsPerLayer(num_seqs(), max_pages); }
  int64_t SegmentsOffset() const { return BoundSegmentsOffset(num_seqs(), max_pages); }
  const int32_t* Layer(int32_t layer) const { return words.data() + layer * WordsPerLayer(); }
  int32_t* Layer(int32_t layer) { return words.data() + layer * WordsPerLayer(); }
};

// Largest table of a batch, all layers (4 GiB of host mirror and as much device memory):
// far above a serving batch (80 layers x 256 sequences x 128k tokens at page 16 is 2^27.3),
// and it keeps a layer's word indices in int32.
inline constexpr int64_t kMaxBoundWords = int64_t(1) << 30;

class BoundBatches {
 public:
  // Validates the arguments against `table` and builds the batch with its host mirror filled
  // from the table (not yet registered). InvalidArgument: empty list, duplicate id,
  // max_tokens < 1 or more pages than the pool holds (`pool_pages`), a sequence already
  // longer than max_tokens in some layer, tables of more than kMaxBoundWords words in all;
  // NotFound: an unknown id.
  static absl::StatusOr<std::unique_ptr<BoundBatch>> Build(const SequenceTable& table,
                                                           absl::Span<const SeqId> seqs,
                                                           int32_t max_tokens,
                                                           int64_t pool_pages);
  // Registers a built batch; returns its id (never reused, >= 1).
  int64_t Add(std::unique_ptr<BoundBatch> batch);
  BoundBatch* Find(int64_t id);
  // Unregisters and returns the batch (NotFound for an unknown id).
  absl::StatusOr<std::unique_ptr<BoundBatch>> Remove(int64_t id);
  // Some batch holding `seq`, or 0 when none does.
  int64_t BatchOf(SeqId seq) const;
  int64_t size() const { return int64_t(batches_.size()); }
  // Host bytes of the mirrors (counted in MemoryUsage::host_table_bytes).
  int64_t HostBytes() const {
    int64_t bytes = 0;
    for (const auto& [id, b] : batches_) bytes += int64_t(b->words.size() * sizeof(int32_t));
    return bytes;
  }

  // FailedPrecondition when the planned append would take a bound sequence past a batch's
  // max_tokens (checked before anything is written).
  absl::Status CheckAppend(const AppendPlan& plan) const;
  // The words `plan` changes in every batch that holds its sequence: the length and the page
  // entries from the first one the plan replaces (copy-on-write) or adds. Appended to *out.
  void CollectWrites(const AppendPlan& plan,
                     std::vector<std::pair<BoundBatch*, TableWrite>>* out) const;
  // The words naming row `row` of page `page` as the reserved row of entry `entry` (its
  // segment's page, row_begin and row_end; src_token and stage never change).
  static void ReservedRowWrites(const BoundBatch& batch, int32_t entry, int32_t page,
                                int32_t row, std::vector<TableWrite>* out);
  // Applies writes of `layer` to a batch's host mirror (kAllBoundLayers: indices over every
  // layer's words).
  static void ApplyToMirror(BoundBatch* batch, int32_t layer, absl::Span<const TableWrite> w);

 private:
  std::map<int64_t, std::unique_ptr<BoundBatch>> batches_;
  // Sequence -> (batch id, row) for every batch holding it.
  absl::flat_hash_map<SeqId, std::vector<std::pair<int64_t, int32_t>>> rows_;
  int64_t next_id_ = 1;
};

}  // namespace twl

// Per-sequence page tables: for every (sequence, layer) the number of cached tokens and the
// ids of its pages (page i holds tokens [i*page_size, (i+1)*page_size)).
//
// Appends are two-phase so that the caller can write the data in between and undo on
// failure:  PlanAppend (allocates pages, changes no sequence) -> write K/V where the plan
// says -> CommitAppend (installs pages and length) or AbortAppend (returns the pages).
//
// Sharing: ForkSequence makes the child reference every page of the parent (refcount + 1).
// Pages are never written while shared. Full pages are never written again anyway; the
// partial last page is copied on the first append that touches it while its refcount > 1
// (copy-on-write): the plan then names cow_src/cow_dst/cow_rows, the caller copies the
// first cow_rows rows of cow_src into cow_dst before writing, and the commit swaps the page
// and drops one reference to cow_src.
//
// Thread-safety: every method is thread-safe (one mutex per table). A Plan/Commit pair is
// not atomic against a second append to the same (sequence, layer): CommitAppend detects
// that and returns Aborted, but the data written in between may have raced, so callers must
// serialize appends per sequence (the Runtime serializes all mutations). Lock order:
// table -> page allocator.
#pragma once

#include <cstdint>
#include <mutex>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "cache/page_allocator.h"
#include "core/stage_views.h"

namespace twl {

using SeqId = int64_t;  // also in runtime/runtime.h

struct LayerPages {
  int32_t len = 0;             // tokens cached
  std::vector<int32_t> pages;  // ceil(len / page_size) page ids
};

struct AppendPlan {
  SeqId seq = -1;
  int32_t layer = 0;
  int32_t old_len = 0;
  int32_t num_tokens = 0;
  std::vector<int32_t> page_id;    // [num_tokens] destination page of each token
  std::vector<int32_t> slot;       // [num_tokens] row inside that page
  std::vector<int32_t> new_pages;  // allocated by the plan (including cow_dst), refcount 1
  // Copy-on-write of the shared partial last page (cow_src < 0: none).
  int32_t cow_src = -1;
  int32_t cow_dst = -1;
  int32_t cow_rows = 0;
  // The layer's page list after the commit, from index first_changed on: the copy-on-write
  // page (which replaces the shared last page), then the new pages. Entries before it do not
  // change, so a plan costs what the append adds, not the sequence's length (a decode step's
  // plan of a 128k-token sequence holds one page at most, not 8192).
  int32_t first_changed = 0;
  std::vector<int32_t> changed_pages;

  bool has_cow() const { return cow_src >= 0; }
  // Pages of the layer after the commit.
  int32_t num_pages_after() const { return first_changed + int32_t(changed_pages.size()); }
  AppendView View(const fp16_t* k, const fp16_t* v) const {
    AppendView a;
    a.num_tokens = num_tokens;
    a.k = k;
    a.v = v;
    a.page_id = page_id.data();
    a.slot = slot.data();
    return a;
  }
};

// Host arrays behind a BatchView.
struct BatchArrays {
  std::vector<int32_t> seq_len;     // [num_seqs]
  std::vector<int32_t> page_table;  // [num_seqs][max_pages]
  int32_t max_pages = 0;
  int32_t max_len = 0;

  BatchView View(int32_t num_q_heads) const {
    BatchView b;
    b.num_seqs = static_cast<int32_t>(seq_len.size());
    b.num_q_heads = num_q_heads;
    b.seq_len = seq_len.data();
    b.page_table = page_table.data();
    b.max_pages = max_pages;
    return b;
  }
};

class SequenceTable {
 public:
  // `allocator` must outlive the table.
  SequenceTable(int32_t num_layers, int32_t page_size, PageAllocator* allocator);
  SequenceTable(const SequenceTable&) = delete;
  SequenceTable& operator=(const SequenceTable&) = delete;

  int32_t num_layers() const { return num_layers_; }
  int32_t page_size() const { return page_size_; }

  SeqId Create();
  // NotFound for an unknown parent; ResourceExhausted never (no page is allocated).
  absl::StatusOr<SeqId> Fork(SeqId parent);
  // Drops the sequence and one reference to each of its pages; pages that became free are
  // appended to *freed (nullable).
  absl::Status Free(SeqId seq, std::vector<int32_t>* freed);

  bool Contains(SeqId seq) const;
  int64_t num_sequences() const;
  // Host bytes of the tables themselves (num_layers records per sequence, a page id per page
  // reference): what an empty sequence costs, reported by twl_runtime_memory.
  int64_t TableBytes() const;
  absl::StatusOr<int32_t> Length(SeqId seq, int32_t layer) const;
  absl::StatusOr<LayerPages> Pages(SeqId seq, int32_t layer) const;  // a copy

  // n >= 1 tokens. Allocates the new pages (ResourceExhausted "host pool exhausted: ..."
  // and nothing allocated when the pool is short). NotFound / InvalidArgument otherwise.
  absl::StatusOr<AppendPlan> PlanAppend(SeqId seq, int32_t layer, int32_t n);
  // Installs the plan. Aborted (and nothing changed) if the (sequence, layer) changed since
  // the plan or the sequence was freed; the caller must then AbortAppend. Pages freed by the
  // commit (cow_src, if its other holders went away meanwhile) go to *freed (nullable).
  absl::Status CommitAppend(const AppendPlan& plan, std::vector<int32_t>* freed);
  // Returns the plan's new pages to the allocator (they go to *freed, nullable).
  void AbortAppend(const AppendPlan& plan, std::vector<int32_t>* freed);

  // seq_len and page_table of `layer` for `seqs` (in that order). NotFound for an unknown
  // sequence, FailedPrecondition for one with no token in this layer, InvalidArgument for a
  // bad layer, an empty list or a sequence listed twice.
  absl::Status BuildBatch(int32_t layer, absl::Span<const SeqId> seqs, BatchArrays* out) const;

 private:
  struct Sequence {
    std::vector<LayerPages> layers;  // [num_layers]
  };
  absl::Status CheckLayer(int32_t layer) const;

  const int32_t num_layers_;
  const int32_t page_size_;
  PageAllocator* const allocator_;
  mutable std::mutex mu_;
  // Guarded by mu_:
  absl::flat_hash_map<SeqId, Sequence> seqs_;
  SeqId next_id_ = 1;
  int64_t page_entries_ = 0;  // page ids in all layer tables (for TableBytes)
};

}  // namespace twl

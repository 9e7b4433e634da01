// Host bookkeeping of bound batches (see bound_batch.h).
#include "runtime/bound_batch.h"

#include <algorithm>
#include <cstddef>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"
#include "runtime/backend.h"

namespace twl {

absl::StatusOr<std::unique_ptr<BoundBatch>> BoundBatches::Build(const SequenceTable& table,
                                                                absl::Span<const SeqId> seqs,
                                                                int32_t max_tokens,
                                                                int64_t pool_pages) {
  if (seqs.empty()) return absl::InvalidArgumentError("empty batch");
  if (max_tokens < 1) {
    return absl::InvalidArgumentError(absl::StrFormat("max_tokens is %d, must be >= 1", max_tokens));
  }
  absl::flat_hash_set<SeqId> seen;
  for (size_t i = 0; i < seqs.size(); ++i) {
    if (!seen.insert(seqs[i]).second) {
      return absl::InvalidArgumentError(
          absl::StrFormat("sequence %d listed twice (entry %d)", seqs[i], i));
    }
  }
  auto b = std::make_unique<BoundBatch>();
  b->seqs.assign(seqs.begin(), seqs.end());
  b->num_layers = table.num_layers();
  b->page_size = table.page_size();
  b->max_tokens = max_tokens;
  b->max_pages = static_cast<int32_t>((int64_t(max_tokens) + b->page_size - 1) / b->page_size);
  // A sequence never holds more pages than the pool: larger rows would only cost memory.
  if (b->max_pages > pool_pages) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "max_tokens %d needs %d pages per sequence; the pool holds %d pages (%d tokens)",
        max_tokens, b->max_pages, pool_pages, pool_pages * b->page_size));
  }
  if (b->num_layers * b->WordsPerLayer() > kMaxBoundWords) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%d layers x %d sequences x %d pages (max_tokens %d) is more than 2^30 table entries",
        b->num_layers, seqs.size(), b->max_pages, max_tokens));
  }
  const int32_t n = b->num_seqs();
  b->words.assign(size_t(b->num_layers * b->WordsPerLayer()), -1);
  for (int32_t i = 0; i < n; ++i) {
    for (int32_t l = 0; l < b->num_layers; ++l) {
      absl::StatusOr<LayerPages> lp = table.Pages(seqs[size_t(i)], l);
      if (!lp.ok()) {
        return absl::Status(lp.status().code(),
                            absl::StrFormat("entry %d: %s", i, lp.status().message()));
      }
      if (lp->len > max_tokens) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "sequence %d (entry %d) already has %d tokens in layer %d, more than max_tokens %d",
            seqs[size_t(i)], i, lp->len, l, max_tokens));
      }
      int32_t* w = b->Layer(l);
      w[i] = lp->len;
      std::copy(lp->pages.begin(), lp->pages.end(), w + n + int64_t(i) * b->max_pages);
      // No row reserved yet: an empty segment that would read the sequence's input row.
      int32_t* seg = w + b->SegmentsOffset() + int64_t(i) * kBoundSegmentWords;
      seg[offsetof(AppendSegment, page) / 4] = 0;
      seg[offsetof(AppendSegment, row_begin) / 4] = 0;
      seg[offsetof(AppendSegment, row_end) / 4] = 0;
      seg[offsetof(AppendSegment, src_token) / 4] = i;
      seg[offsetof(AppendSegment, stage) / 4] = -1;
    }
  }
  return b;
}

void BoundBatches::ReservedRowWrites(const BoundBatch& batch, int32_t entry, int32_t page,
                                     int32_t row, std::vector<TableWrite>* out) {
  const int64_t at = batch.SegmentsOffset() + int64_t(entry) * kBoundSegmentWords;
  out->push_back(TableWrite{int32_t(at + offsetof(AppendSegment, page) / 4), page});
  out->push_back(TableWrite{int32_t(at + offsetof(AppendSegment, row_begin) / 4), row});
  out->push_back(TableWrite{int32_t(at + offsetof(AppendSegment, row_end) / 4), row + 1});
}

int64_t BoundBatches::Add(std::unique_ptr<BoundBatch> batch) {
  const int64_t id = next_id_++;
  for (int32_t i = 0; i < batch->num_seqs(); ++i) rows_[batch->seqs[size_t(i)]].push_back({id, i});
  batches_.emplace(id, std::move(batch));
  return id;
}

BoundBatch* BoundBatches::Find(int64_t id) {
  auto it = batches_.find(id);
  return it == batches_.end() ? nullptr : it->second.get();
}

absl::StatusOr<std::unique_ptr<BoundBatch>> BoundBatches::Remove(int64_t id) {
  auto it = batches_.find(id);
  if (it == batches_.end()) return absl::NotFoundError(absl::StrFormat("unknown batch %d", id));
  std::unique_ptr<BoundBatch> b = std::move(it->second);
  batches_.erase(it);
  for (SeqId s : b->seqs) {
    auto r = rows_.find(s);
    if (r == rows_.end()) continue;
    auto& v = r->second;
    v.erase(std::remove_if(v.begin(), v.end(), [&](const auto& e) { return e.first == id; }),
            v.end());
    if (v.empty()) rows_.erase(r);
  }
  return b;
}

int64_t BoundBatches::BatchOf(SeqId seq) const {
  auto r = rows_.find(seq);
  return r == rows_.end() || r->second.empty() ? 0 : r->second.front().first;
}

absl::Status BoundBatches::CheckAppend(const AppendPlan& plan) const {
  auto r = rows_.find(plan.seq);
  if (r == rows_.end()) return absl::OkStatus();
  const int64_t new_len = int64_t(plan.old_len) + plan.num_tokens;
  for (const auto& [id, row] : r->second) {
    const BoundBatch& b = *batches_.at(id);
    if (new_len > b.max_tokens) {
      return absl::FailedPreconditionError(absl::StrFormat(
          "sequence %d is bound to batch %d with max_tokens %d: appending %d tokens to its %d "
          "in layer %d would exceed it (free the batch and bind a larger one)",
          plan.seq, id, b.max_tokens, plan.num_tokens, plan.old_len, plan.layer));
    }
  }
  return absl::OkStatus();
}

void BoundBatches::CollectWrites(const AppendPlan& plan,
                                 std::vector<std::pair<BoundBatch*, TableWrite>>* out) const {
  auto r = rows_.find(plan.seq);
  if (r == rows_.end()) return;
  // The length, and the page entries from the first one the plan replaces (copy-on-write)
  // or adds.
  for (const auto& [id, row] : r->second) {
    BoundBatch* b = batches_.at(id).get();
    const int32_t n = b->num_seqs();
    out->push_back({b, TableWrite{row, plan.old_len + plan.num_tokens}});
    for (size_t j = 0; j < plan.changed_pages.size(); ++j) {
      const int64_t index = n + int64_t(row) * b->max_pages + plan.first_changed + int64_t(j);
      out->push_back({b, TableWrite{static_cast<int32_t>(index), plan.changed_pages[j]}});
    }
  }
}

void BoundBatches::ApplyToMirror(BoundBatch* batch, int32_t layer,
                                 absl::Span<const TableWrite> w) {
  int32_t* words = batch->Layer(layer == kAllBoundLayers ? 0 : layer);
  for (const TableWrite& x : w) words[x.index] = x.value;
}

}  // namespace twl

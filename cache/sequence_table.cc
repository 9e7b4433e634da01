// Per-sequence page tables with two-phase appends and copy-on-write forks
// (see sequence_table.h).
#include "cache/sequence_table.h"

#include <algorithm>
#include <limits>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_format.h"

namespace twl {

SequenceTable::SequenceTable(int32_t num_layers, int32_t page_size, PageAllocator* allocator)
    : num_layers_(num_layers), page_size_(std::max<int32_t>(page_size, 1)),
      allocator_(allocator) {}

absl::Status SequenceTable::CheckLayer(int32_t layer) const {
  if (layer < 0 || layer >= num_layers_) {
    return absl::InvalidArgumentError(
        absl::StrFormat("layer %d out of range [0, %d)", layer, num_layers_));
  }
  return absl::OkStatus();
}

SeqId SequenceTable::Create() {
  std::lock_guard<std::mutex> lock(mu_);
  const SeqId id = next_id_++;
  seqs_[id].layers.resize(num_layers_);
  return id;
}

int64_t SequenceTable::TableBytes() const {
  std::lock_guard<std::mutex> lock(mu_);
  // Per sequence: its hash map slot and num_layers layer records; per page reference: an id.
  const int64_t per_sequence = int64_t(sizeof(SeqId) + sizeof(Sequence)) +
                               int64_t(num_layers_) * int64_t(sizeof(LayerPages));
  return int64_t(seqs_.size()) * per_sequence + page_entries_ * int64_t(sizeof(int32_t));
}

absl::StatusOr<SeqId> SequenceTable::Fork(SeqId parent) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = seqs_.find(parent);
  if (it == seqs_.end()) {
    return absl::NotFoundError(absl::StrFormat("unknown sequence %d", parent));
  }
  std::vector<int32_t> all;
  for (const LayerPages& l : it->second.layers) {
    all.insert(all.end(), l.pages.begin(), l.pages.end());
  }
  absl::Status s = allocator_->AddRef(all);
  if (!s.ok()) return absl::InternalError("fork: " + std::string(s.message()));
  Sequence child = it->second;  // copy before inserting: insertion may move the parent
  page_entries_ += int64_t(all.size());
  const SeqId id = next_id_++;
  seqs_.emplace(id, std::move(child));
  return id;
}

absl::Status SequenceTable::Free(SeqId seq, std::vector<int32_t>* freed) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return absl::NotFoundError(absl::StrFormat("unknown sequence %d", seq));
  std::vector<int32_t> all;
  for (const LayerPages& l : it->second.layers) {
    all.insert(all.end(), l.pages.begin(), l.pages.end());
  }
  absl::Status s = allocator_->Release(all, freed);
  if (!s.ok()) return absl::InternalError("free: " + std::string(s.message()));
  page_entries_ -= int64_t(all.size());
  seqs_.erase(it);
  return absl::OkStatus();
}

bool SequenceTable::Contains(SeqId seq) const {
  std::lock_guard<std::mutex> lock(mu_);
  return seqs_.contains(seq);
}

int64_t SequenceTable::num_sequences() const {
  std::lock_guard<std::mutex> lock(mu_);
  return static_cast<int64_t>(seqs_.size());
}

absl::StatusOr<int32_t> SequenceTable::Length(SeqId seq, int32_t layer) const {
  absl::Status s = CheckLayer(layer);
  if (!s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return absl::NotFoundError(absl::StrFormat("unknown sequence %d", seq));
  return it->second.layers[layer].len;
}

absl::StatusOr<LayerPages> SequenceTable::Pages(SeqId seq, int32_t layer) const {
  absl::Status s = CheckLayer(layer);
  if (!s.ok()) return s;
  std::lock_guard<std::mutex> lock(mu_);
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return absl::NotFoundError(absl::StrFormat("unknown sequence %d", seq));
  return it->second.layers[layer];
}

absl::StatusOr<AppendPlan> SequenceTable::PlanAppend(SeqId seq, int32_t layer, int32_t n) {
  absl::Status s = CheckLayer(layer);
  if (!s.ok()) return s;
  if (n <= 0) return absl::InvalidArgumentError(absl::StrFormat("append of %d tokens", n));
  std::lock_guard<std::mutex> lock(mu_);
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return absl::NotFoundError(absl::StrFormat("unknown sequence %d", seq));
  const LayerPages& lp = it->second.layers[layer];
  if (int64_t(lp.len) + n > std::numeric_limits<int32_t>::max()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "sequence %d layer %d would exceed 2^31-1 tokens (%d + %d)", seq, layer, lp.len, n));
  }

  AppendPlan plan;
  plan.seq = seq;
  plan.layer = layer;
  plan.old_len = lp.len;
  plan.num_tokens = n;
  const int32_t used_rows = lp.len % page_size_;  // rows filled in the last page (0: full)
  const bool partial = used_rows != 0;
  const bool cow = partial && allocator_->RefCount(lp.pages.back()) > 1;
  const int64_t new_len = int64_t(lp.len) + n;
  const int32_t pages_needed =
      static_cast<int32_t>((new_len + page_size_ - 1) / page_size_ - int64_t(lp.pages.size()));
  s = allocator_->Allocate(pages_needed + (cow ? 1 : 0), &plan.new_pages);
  if (!s.ok()) return s;

  const int32_t old_pages = static_cast<int32_t>(lp.pages.size());
  plan.first_changed = cow ? old_pages - 1 : old_pages;
  if (cow) {
    plan.cow_src = lp.pages.back();
    plan.cow_dst = plan.new_pages.front();
    plan.cow_rows = used_rows;
  }
  plan.changed_pages = plan.new_pages;  // the copy-on-write page first, as allocated

  plan.page_id.resize(n);
  plan.slot.resize(n);
  for (int32_t i = 0; i < n; ++i) {
    const int64_t pos = int64_t(lp.len) + i;
    const int64_t q = pos / page_size_;
    plan.page_id[i] = q < plan.first_changed ? lp.pages[size_t(q)]
                                             : plan.changed_pages[size_t(q - plan.first_changed)];
    plan.slot[i] = static_cast<int32_t>(pos % page_size_);
  }
  return plan;
}

absl::Status SequenceTable::CommitAppend(const AppendPlan& plan, std::vector<int32_t>* freed) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = seqs_.find(plan.seq);
  if (it == seqs_.end()) {
    return absl::AbortedError(absl::StrFormat("sequence %d was freed during the append", plan.seq));
  }
  if (plan.layer < 0 || plan.layer >= num_layers_) return absl::InvalidArgumentError("bad plan");
  LayerPages& lp = it->second.layers[plan.layer];
  const size_t old_pages = size_t(plan.first_changed) + (plan.has_cow() ? 1 : 0);
  bool unchanged = lp.len == plan.old_len && lp.pages.size() == old_pages;
  if (unchanged && plan.has_cow()) unchanged = lp.pages.back() == plan.cow_src;
  // Writing in place into the partial last page is only safe if nobody forked it since.
  if (unchanged && !plan.has_cow() && plan.old_len % page_size_ != 0) {
    unchanged = allocator_->RefCount(lp.pages.back()) == 1;
  }
  if (!unchanged) {
    return absl::AbortedError(absl::StrFormat(
        "sequence %d layer %d changed during the append", plan.seq, plan.layer));
  }
  if (plan.has_cow()) {
    const int32_t src = plan.cow_src;
    absl::Status s = allocator_->Release(absl::MakeConstSpan(&src, 1), freed);
    if (!s.ok()) return absl::InternalError("commit: " + std::string(s.message()));
  }
  page_entries_ += int64_t(plan.num_pages_after()) - int64_t(lp.pages.size());
  lp.pages.resize(size_t(plan.first_changed));
  lp.pages.insert(lp.pages.end(), plan.changed_pages.begin(), plan.changed_pages.end());
  lp.len = plan.old_len + plan.num_tokens;
  return absl::OkStatus();
}

void SequenceTable::AbortAppend(const AppendPlan& plan, std::vector<int32_t>* freed) {
  // The new pages are held only by the plan, so this cannot fail.
  allocator_->Release(plan.new_pages, freed).IgnoreError();
}

absl::Status SequenceTable::BuildBatch(int32_t layer, absl::Span<const SeqId> seqs,
                                       BatchArrays* out) const {
  absl::Status s = CheckLayer(layer);
  if (!s.ok()) return s;
  if (seqs.empty()) return absl::InvalidArgumentError("empty batch");
  if (seqs.size() > size_t(std::numeric_limits<int32_t>::max())) {
    return absl::InvalidArgumentError("batch too large");
  }
  absl::flat_hash_set<SeqId> seen;
  seen.reserve(seqs.size());
  for (SeqId id : seqs) {
    if (!seen.insert(id).second) {
      return absl::InvalidArgumentError(
          absl::StrFormat("sequence %d appears twice in the batch", id));
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  std::vector<const LayerPages*> rows(seqs.size());
  int32_t max_pages = 1;
  int32_t max_len = 0;
  for (size_t i = 0; i < seqs.size(); ++i) {
    auto it = seqs_.find(seqs[i]);
    if (it == seqs_.end()) {
      return absl::NotFoundError(absl::StrFormat("unknown sequence %d", seqs[i]));
    }
    const LayerPages& lp = it->second.layers[layer];
    if (lp.len == 0) {
      return absl::FailedPreconditionError(
          absl::StrFormat("sequence %d has no tokens in layer %d", seqs[i], layer));
    }
    rows[i] = &lp;
    max_pages = std::max<int32_t>(max_pages, static_cast<int32_t>(lp.pages.size()));
    max_len = std::max(max_len, lp.len);
  }
  out->seq_len.assign(seqs.size(), 0);
  out->page_table.assign(seqs.size() * size_t(max_pages), -1);
  out->max_pages = max_pages;
  out->max_len = max_len;
  for (size_t i = 0; i < seqs.size(); ++i) {
    out->seq_len[i] = rows[i]->len;
    std::copy(rows[i]->pages.begin(), rows[i]->pages.end(),
              out->page_table.begin() + i * size_t(max_pages));
  }
  return absl::OkStatus();
}

}  // namespace twl

// Inputs and outputs of the four stages of one decode step of one layer (select -> prune ->
// fetch -> attend), as plain views that the CPU implementations (pipeline/<stage>/cpu/) and the
// CUDA kernels (pipeline/<stage>/cuda/) share. Every array has a fixed stride so that the GPU
// path never has to wait for the host to size an output.
#pragma once

#include <cstdint>

#include "core/page_layout.h"

namespace twl {

// The batch of sequences decoded together for one layer.
struct BatchView {
  int32_t num_seqs = 0;
  int32_t num_q_heads = 0;          // group_size * num_kv_heads (GQA)
  const int32_t* seq_len = nullptr;     // [num_seqs] tokens cached for this layer (> 0)
  const int32_t* page_table = nullptr;  // [num_seqs][max_pages] page ids, row-major
  int32_t max_pages = 0;                // page_table row stride (>= ceil(seq_len/page_size))

  TWL_HD int32_t NumPages(const PageGeometry& g, int32_t s) const {
    return (seq_len[s] + g.page_size - 1) / g.page_size;
  }
  TWL_HD int32_t PageId(int32_t s, int32_t page_idx) const {
    return page_table[int64_t(s) * max_pages + page_idx];
  }
  // Sequences [first_seq, first_seq + n) as a batch of their own (a part of a pipelined
  // step). The other views' FromSeq give the same part's rows.
  BatchView Slice(int32_t first_seq, int32_t n) const {
    BatchView b = *this;
    b.num_seqs = n;
    b.seq_len = seq_len + first_seq;
    b.page_table = page_table + int64_t(first_seq) * max_pages;
    return b;
  }
};

enum class SelectorKind : int32_t {
  kFull = 0,   // every page is a candidate (Twilight alone)
  kQuest = 1,  // top-B0 pages by the Quest upper bound of q.k
  kDoubleSparsity = 2,  // top-B0 pages by q.k over a few outlier channels of K
};

struct SelectorParams {
  SelectorKind kind = SelectorKind::kQuest;
  // Fixed Quest (grow = false): B0, the pages kept by the bound ranking (sinks and last page
  // extra). Growing Quest (grow = true): an optional cap on the ranked candidate pages
  // (0: none; see budget_fraction).
  int32_t budget_pages = 0;
  int32_t sink_pages = 1;    // first pages always kept (attention sinks)
  // Growing Quest ("adaptive"): the selector ranks every page by its Quest bound and hands
  // the pruner all of them with their per-query-head bounds; the pruner grows the candidate
  // set in bound order (whole levels of equal bound) until the bound of the softmax mass
  // outside it is small enough that its kept set provably holds >= p of the full-context
  // estimated mass (PrunerParams::remainder_share; see PruneRef). Needs no B0.
  bool grow = false;
  // Growing only: when budget_pages is 0 and budget_fraction is in (0, 1), each sequence's
  // cap is max(1, ceil(budget_fraction * its own pages)); 0 or >= 1: no cap.
  float budget_fraction = 0.0f;
};

// Candidate pages per (sequence, KV head).
// Fixed Quest / FULL: logical page indices of the candidates, ascending.
// Growing Quest: every page of the sequence, ascending (count = its pages), with per query
// head the page's Quest bound of q.k * softmax_scale in `bound` (+inf for the sinks and the
// last page, which are always candidates) and the cap on ranked candidate pages in `limit`
// (INT32_MAX: none). The pruner decides which of them are candidates.
struct SelectionView {
  int32_t* pages = nullptr;  // [num_seqs][num_kv_heads][max_select]
  int32_t* count = nullptr;  // [num_seqs][num_kv_heads]
  int32_t max_select = 0;    // stride: >= SelectStride(params, max_pages)
  // Growing Quest only (null otherwise: the listed pages are the candidates).
  float* bound = nullptr;    // [num_seqs][num_q_heads][max_select]
  int32_t* limit = nullptr;  // [num_seqs][num_kv_heads]

  // The rows of the sequences from first_seq on.
  SelectionView FromSeq(int64_t first_seq, int32_t num_kv_heads, int32_t num_q_heads) const {
    const int64_t u0 = first_seq * num_kv_heads, h0 = first_seq * num_q_heads;
    return SelectionView{pages + u0 * max_select, count + u0, max_select,
                         bound ? bound + h0 * max_select : nullptr,
                         limit ? limit + u0 : nullptr};
  }
};

struct PrunerParams {
  float p = 0.95f;                 // default top-p mass in (0, 1]
  const float* seq_p = nullptr;    // [num_seqs] per-sequence override, nullable
  float softmax_scale = 0.0f;      // 0: 1/sqrt(head_dim)
  bool dense = false;              // keep every selected token (dense layers)
  // The host's threshold search (TopPThresholdRef) may also stop when high - low <=
  // stop_gap * (mean candidate weight), keeping every weight in (low, high]. 0 (default):
  // stop only when no weight lies strictly between low and high, i.e. the smallest level
  // set, as the GPU's histogram rule keeps (to its 1/2048-logit sub-bins). The estimates are
  // FP16 values, so few distinct weights lie near the threshold and exactness costs a few
  // steps; a gap of 1e-4 of the mean kept ~500 tokens too many of a peaked head whose
  // threshold lay in a 140k-token bulk (small scores: FP16 levels ~3e-5 apart, dozens of
  // them in the last window).
  float stop_gap = 0.0f;
  int32_t max_iterations = 64;     // safety bound on the threshold search
  // Growing Quest: candidates grow until, for every query head of the group, the bound R of
  // the mass outside them is <= remainder_share * (1 - p) of the bound of the full-context
  // mass (A + R, A = estimated mass inside). The kept set then takes p * (A + R), which is at
  // most p / (1 - remainder_share * (1 - p)) of A: smaller shares score more pages and keep
  // fewer extra tokens. In (0, 1).
  float remainder_share = 0.2f;
  // GPU work plan of the growth (the result does not depend on it): first score the forced
  // pages and about this many top-bound pages, and every page only for a (sequence, KV head)
  // that needs more. -1: 1/16 of the pages, at least 64, or every page at once when the
  // batch is small (scoring it all costs less than a second stage); 0: every page at once.
  int32_t grow_seed_pages = -1;
  // GPU work plan of the top-p kept and boundary passes (the result does not depend on it):
  // chunks of slots per block (the boundary pass: at most 8). 0: the kept pass one (larger
  // runs measured slower by default; opt in to measure), the boundary pass about one wave of
  // blocks.
  int32_t topp_chunks_per_block = 0;
  // GPU work plan of the top-p kept pass (the result does not depend on it): blocks per
  // chunk, each taking an equal share of the group's query heads. 0: two where the pass's
  // grid is at most two blocks per SM and the group is even and >= 4 (a small batch: twice
  // the parallelism), else one; TWL_PRUNE_HEAD_SPLIT=0 in the environment makes it one;
  // 1: one; 2: two where the group is even.
  int32_t topp_head_splits = 0;
};

// Tokens kept per (sequence, KV head): the union over the group's query heads, ascending
// logical token positions. This is both the fetch set (their blocks) and the attention set.
struct KeptView {
  int32_t* tokens = nullptr;  // [num_seqs][num_kv_heads][max_kept]
  int32_t* count = nullptr;   // [num_seqs][num_kv_heads]
  int32_t max_kept = 0;       // stride: >= max_select * page_size

  // The rows of the sequences from first_seq on.
  KeptView FromSeq(int64_t first_seq, int32_t num_kv_heads) const {
    const int64_t u0 = first_seq * num_kv_heads;
    return KeptView{tokens + u0 * max_kept, count + u0, max_kept};
  }
};

// Per query head telemetry of the pruner; any pointer may be null.
struct HeadStatsView {
  int32_t* selected = nullptr;  // [num_seqs][num_q_heads] candidate tokens
  int32_t* kept = nullptr;      // [num_seqs][num_q_heads] tokens in this head's own top-p set
  float* est_mass = nullptr;    // [num_seqs][num_q_heads] estimated mass of its own set
                                //   within the candidates
  // Lower bound of the estimated full-context mass of its own set: est_mass * A / (A + R)
  // (R: the Quest bound of the mass outside the candidates; R = 0 when every page is a
  // candidate). -1 when unknown (fixed Quest with pages left out).
  float* full_mass = nullptr;   // [num_seqs][num_q_heads]
  int32_t* cap_hit = nullptr;   // [num_seqs][num_q_heads] 1: the growth stopped at the cap

  // The rows of the sequences from first_seq on (null pointers stay null).
  HeadStatsView FromSeq(int64_t first_seq, int32_t num_q_heads) const {
    const int64_t h0 = first_seq * num_q_heads;
    auto at = [h0](auto* p) { return p ? p + h0 : p; };
    return HeadStatsView{at(selected), at(kept), at(est_mass), at(full_mass), at(cap_hit)};
  }
};

// Queries and outputs, FP16, [num_seqs][num_q_heads][head_dim].
struct QueryView {
  const fp16_t* q = nullptr;
};
struct OutputView {
  fp16_t* out = nullptr;
};

// Tokens appended to the cache in one call: token i goes to row slot[i] of page page_id[i]
// (all KV heads). Rows of a page are written in order, so a page's filled rows after the
// call are 0..max(slot) of its tokens.
struct AppendView {
  int32_t num_tokens = 0;
  const fp16_t* k = nullptr;        // [num_tokens][num_kv_heads][head_dim]
  const fp16_t* v = nullptr;        // [num_tokens][num_kv_heads][head_dim]
  const int32_t* page_id = nullptr; // [num_tokens]
  const int32_t* slot = nullptr;    // [num_tokens]
};

// Element type of the K/V rows handed to LaunchAppend (runtime/cuda/append_launch.h;
// AppendView.k/v are reinterpreted).
enum class KvInputType : int32_t { kFp16 = 0, kBf16 = 1, kFp32 = 2 };

// Pages touched by an append and their filled rows afterwards, so that the Quest min/max
// is recomputed over exactly the rows AppendRef uses. Built on the host (which knows the
// page ids and slots) by PlanAppendPages and copied to the device.
struct AppendPagePlan {
  const int32_t* d_page = nullptr;  // [num_pages] distinct page ids
  const int32_t* d_rows = nullptr;  // [num_pages] rows filled after the call (max slot + 1)
  int32_t num_pages = 0;
};

// Bulk append (one launch for a whole batch of sequences). A segment is a run of rows of one
// page written by one append: rows [row_begin, row_end) of every KV head's block of `page`
// come from input tokens src_token, src_token + 1, ... . stage >= 0 sends the segment's FP16
// rows to page `stage` of a device staging buffer laid out like the block store (a page's
// num_kv_heads blocks back to back, so whole pages can then be copied to the store in large
// contiguous transfers) instead of the block store itself.
struct AppendSegment {
  int32_t page = 0;
  int32_t row_begin = 0;
  int32_t row_end = 0;
  int32_t src_token = 0;
  int32_t stage = -1;
};

TWL_HD int32_t SelectStride(const SelectorParams& s, int32_t max_pages) {
  if (s.kind == SelectorKind::kFull || s.grow) return max_pages;
  // In 64 bits: budget and sinks may each be close to max_pages (itself up to 2^31 - 1).
  const int64_t want = int64_t(s.budget_pages) + s.sink_pages + 1;
  return want < max_pages ? int32_t(want) : max_pages;
}

// Growing Quest: the cap on ranked candidate pages of a sequence of num_pages pages.
TWL_HD int32_t GrowCapPages(const SelectorParams& s, int32_t num_pages) {
  if (s.budget_pages > 0) return s.budget_pages;
  if (s.budget_fraction > 0.0f && s.budget_fraction < 1.0f) {
    const float want = s.budget_fraction * float(num_pages);
    int32_t cap = int32_t(want);
    if (float(cap) < want) ++cap;
    return cap < 1 ? 1 : cap;
  }
  return 0x7fffffff;
}

// Growing Quest: c such that the stopping rule R <= share * (1 - p) * (A + R) reads R <= c * A.
// 0 for p >= 1 (every page).
TWL_HD float GrowRemainderRatio(float p, float share) {
  if (!(p < 1.0f)) return 0.0f;
  const float r = share * (1.0f - p);
  return r / (1.0f - r);
}

}  // namespace twl

// Host launchers of the append kernels (runtime/cuda/append.cu), and the host planners of
// their inputs. The contract of every launcher (device pointers, streams, status codes,
// shape limits) is gpu/kernels.h's; the plan structs are in core/stage_views.h.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "core/stage_views.h"
#include "gpu/kernels.h"

namespace twl {

struct DeviceRowCache;  // pipeline/fetch/row_cache/cuda/row_plan.h

// Host helper: distinct pages of h_page_id[0..n) (in first-seen order) and max slot + 1.
void PlanAppendPages(const int32_t* h_page_id, const int32_t* h_slot, int32_t n,
                     std::vector<int32_t>* pages, std::vector<int32_t>* rows);

// Writes FP16 K/V rows (converted from `type`) into kv, quantizes K into qk (k_bits < 16),
// then recomputes kmin/kmax of every (plan page, KV head) block over its filled rows from
// the FP16 K in kv. in.page_id/in.slot are device arrays. kv.slot_of_block may be set (e.g.
// device-mapped pinned host blocks stay identity-addressed; a slot table redirects).
absl::Status LaunchAppend(const PageGeometry& g, const AppendView& in, KvInputType type,
                          const AppendPagePlan& plan, const FpKvView& kv, const QuantKView& qk,
                          void* stream);

// Recomputes kmin/kmax of the plan's blocks from the FP16 K in kv (e.g. after a page copy).
absl::Status LaunchRecomputeMinMax(const PageGeometry& g, const AppendPagePlan& plan,
                                   const FpKvView& kv, const QuantKView& qk, void* stream);

// Host helper: the segments of h_page_id/h_slot[0..n) (maximal runs of tokens with
// consecutive slots on one page), stage -1. Returns false when a page appears in two runs
// (then the segment kernel does not apply: use LaunchAppend).
bool PlanAppendSegments(const int32_t* h_page_id, const int32_t* h_slot, int32_t n,
                        std::vector<AppendSegment>* segments);

// Writes every segment of d_segments[0..num_segments) (device array) in one pass, one thread
// block per (segment, KV head): the FP16 K/V rows (converted from `type`) to kv (identity
// addressed: kv.slot_of_block must be null) or to `stage` (segments with stage >= 0), K
// quantized into qk (k_bits < 16), and the Quest kmin/kmax of the block from the same
// registers: rows [0, row_begin) are taken to be the block's filled rows before the call
// (how the Runtime appends), so the bounds already in qk are merged with the new rows'
// (row_begin == 0 replaces them). Outputs equal AppendRef's for such appends. k and v are
// [tokens][num_kv_heads][head_dim] device (or device-mapped) arrays; 16-byte aligned input
// is read with vector loads. Stores are 16-byte vectors, whole rows per thread group, so
// writes into mapped host memory go out as full 128-byte lines.
absl::Status LaunchAppendSegments(const PageGeometry& g, const AppendSegment* d_segments,
                                  int32_t num_segments, const void* k, const void* v,
                                  KvInputType type, const FpKvView& kv, fp16_t* stage,
                                  const QuantKView& qk, void* stream);
// The same with up to kInlineAppendSegments segments from host memory, passed as a kernel
// parameter: no descriptor upload (a decode step's append: one segment per sequence), so the
// stream runs no copy before the kernel. With `insert` (the offload store's row cache; null:
// none), each new row also takes a free row-cache slot while any is left (TakeFreeSlot,
// pipeline/fetch/row_cache/cuda/row_slots.cuh), and k_scheme 1's re-quantization reads a
// block's earlier rows from their slots where they have one; the block store and qk get the
// same bytes either way. Between decode steps only (no plan running on the cache).
constexpr int32_t kInlineAppendSegments = 64;
absl::Status LaunchAppendSegmentsInline(const PageGeometry& g, const AppendSegment* h_segments,
                                        int32_t num_segments, const void* k, const void* v,
                                        KvInputType type, const FpKvView& kv, fp16_t* stage,
                                        const QuantKView& qk, const DeviceRowCache* insert,
                                        void* stream);

}  // namespace twl

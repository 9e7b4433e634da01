// Growing Quest, step 1 of a stage (prune_grow.cuh): PageMassKernel (each listed page's max
// estimate and mass per query head, where the score pass did not write them) and
// GrowPrepKernel (per page: key, A and the bound term R for the searches).
#pragma once

#include "pipeline/prune/twilight/cuda/grow_common.cuh"

namespace twl::cuda {

// Grid: x = page chunks, y = (sequence, query head). Per listed page and query head: the
// max estimate m of its rows and the sum of exp(est - m) (relative to the page's own max,
// as ScorePage16Kernel writes them in its pass; PageA rescales by the head's max).
__global__ void __launch_bounds__(kMassThreads)
    PageMassKernel(PageGeometry g, BatchView batch, SelectionView sel, PruneShape shape,
                   const fp16_t* __restrict__ scores, GrowWork work) {
  const int32_t sq = blockIdx.y;
  const int32_t s = sq / batch.num_q_heads, qh = sq % batch.num_q_heads;
  const int32_t pair = s * g.num_kv_heads + qh / shape.group;
  if (shape.only && !shape.only[pair]) return;
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= sel.count[pair]) return;
  const fp16_t* row = scores + int64_t(sq) * shape.cand_stride + int64_t(i) * g.page_size;
  float best = -INFINITY;
  for (int32_t r = 0; r < g.page_size; ++r) best = fmaxf(best, H2F(row[r]));
  float mass = 0.0f;
  for (int32_t r = 0; r < g.page_size; ++r) {
    const float x = H2F(row[r]);
    if (x != -INFINITY) mass += expf(x - best);  // -inf: past the sequence end
  }
  work.page_mass[int64_t(sq) * sel.max_select + i] = mass;
  work.page_max[int64_t(sq) * sel.max_select + i] = best;
}

// Grid: x = page chunks of kMassThreads, y = (sequence, KV head); stage 2: flagged pairs
// only. Every page of the pair (the selector lists all): key, and per query head pa / pb
// (see GrowWork), the values both searches computed per pass before.
__global__ void __launch_bounds__(kMassThreads)
    GrowPrepKernel(PageGeometry g, BatchView batch, SelectionView sel, PruneShape shape,
                   const uint32_t* __restrict__ head_max, GrowWork work, int stage) {
  const int32_t pair = blockIdx.y;
  if (stage == 2 && !work.need[pair]) return;
  const int32_t i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= sel.count[pair]) return;
  const int32_t s = pair / g.num_kv_heads, h = pair % g.num_kv_heads;
  const int32_t G = shape.group;
  const int32_t sq0 = s * batch.num_q_heads + h * G;
  bool forced;
  work.key[int64_t(pair) * sel.max_select + i] = GrowKey(sel, sq0, G, i, &forced);
  const int32_t e = work.list_pos[int64_t(pair) * sel.max_select + i];
  const float rows = float(min(g.page_size, batch.seq_len[s] - i * g.page_size));
  for (int j = 0; j < G; ++j) {
    const int64_t sq = sq0 + j;
    const float mx = HeadShift(head_max, int32_t(sq));
    work.pa[sq * sel.max_select + i] =
        e >= 0 ? PageA(work, sq * sel.max_select + e, mx) : 0.0f;
    work.pb[sq * sel.max_select + i] = rows * expf(sel.bound[sq * sel.max_select + i] - mx);
  }
}

}  // namespace twl::cuda

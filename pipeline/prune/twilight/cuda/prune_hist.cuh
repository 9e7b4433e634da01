// Top-p threshold of the Twilight pruner by histogram selection (replaces the per-head
// bisection: many blocks per query head, work proportional to the candidates, no barrier
// loop). Input: FP16 estimated scores per (query head, candidate slot) from the score pass
// (-inf for rows past the sequence end) and the head's max M (FloatKey of the FP16-rounded
// maximum, so every stored score is <= M).
//
// Definition (the rule; the CPU tests state it against TopPThresholdRef): a candidate's
// offset below the max is d = M - s >= 0 and its weight w = exp(-d). Level 1 bins offsets by
// 1/8 logit, bin b1 = floor(8 d) for d < 32 (bin 255 holds every d >= 31.875); level 2
// splits the boundary bin into 256 sub-bins of 1/2048 logit, b2 = floor(2048 (d - b1/8))
// clamped to 255. Masses are fixed-point integers (w * 2^40, rounded to nearest),
// so every sum is exact and order-free: the result does not depend on the block split or
// on the batch the head is in, and repeats bit for bit. With T = ceil(p * total):
//   B  = the first level-1 bin where the cumulative mass (from the max down) reaches T,
//   B2 = the first sub-bin of B where the cumulative mass reaches T - mass(bins < B),
//   kept = { b1 < B } u { b1 = B, b2 <= B2 }, restricted to w > 0 (float).
// This is the smallest level set {s >= t} with mass >= p, except that every candidate in
// the threshold's 1/2048-logit sub-bin is kept (ties at the resolution: their weights are
// within a factor exp(1/2048) = 1.0005 of the threshold weight). p >= 1 keeps every valid
// candidate (estimated weight 0 included); a head whose max is not finite (NaN/inf
// estimates) or that holds a NaN estimate keeps nothing, as TopPThresholdRef does for a
// NaN or zero total. FP16 scores: |s| < 65504 (beyond, the estimate overflows to inf and
// the NaN/inf rule applies); rounding moves a score by <= |s| * 2^-11.
//
// Launches (after the score pass; one memset clears head_max and all accumulators):
//  1. HistKernel: grid (query heads, slot chunks): every thread loads its 32 slots
//     (four 16-byte loads in flight) and adds each slot's mass, without branches, to its
//     warp's own 256-bin sub-histogram in shared memory (32-bit partial sums, no
//     shuffles, no contention between warps); the block merges the warps into 64-bit sums
//     and flushes them with one global atomic per non-empty bin.
//  2. KeptKernel: grid (runs of slot chunks, (sequence, KV head)); each thread 8 slots per
//     step for all heads of the GQA group (one 16-byte load per head); blocks find B per
//     head, write the union bit words of the candidates above the boundary bin with plain
//     stores (four lanes a word: no memset, no atomics) and count them per head; the
//     boundary bin's candidates (a few percent of a peaked head) add their mass to the
//     level-2 histogram and are listed (chunk offset + sub-bin) in a per-(head, chunk)
//     segment.
//  3. BoundaryKernel: grid (runs of slot chunks, (sequence, KV head)); finds B2 per head and ORs in
//     the bits of the listed candidates with sub-bin <= B2 (a segment that overflowed: its
//     chunk's scores are rescanned). The kept mass comes from the histograms (the same
//     integer masses).
// Runs of chunks in pass 2 (PrunerParams::topp_chunks_per_block, default 1): a block pays
// its chain of dependent loads (sequence length, head max, histogram rows) once for its run
// and prefetches its next chunk into L2 while it works on one. One-wave runs by default
// (with the same in pass 1) measured slower on the H200 at B = 8; see docs/PRUNE_PASSES.md.
// So the scores are read twice (level 1, then level 2 + kept bits), not three times, and
// the kept pass computes no exp outside the boundary bin. Both passes skip the work of what
// cannot count (exactly: rounding margins, NaN never skipped): a load of 8 scores all below
// the threshold costs one max and one compare (AllBelow). Level 1's threshold is 28.5
// logits under the max (weights that round to 0 in fixed point), the kept pass's the lower
// edge of the boundary bin. (Skipping the loads of far pages by the score pass's page maxima
// cost a dependent round trip per block and step: both passes are latency-bound at B = 1.)
// CompactKeptKernel (topp_compact.cuh) then lists the tokens and writes the per-head telemetry.
//
// Bytes (INT4, d = 128, group G): the score pass reads 68 B per (token, KV head) and writes
// 2G B; the two passes read 2G B each; with G = 4 that is 92 B moved per 68 B of INT4
// (docs/PRUNE_PASSES.md: every pass of the FULL selector's step, bytes and launches).
// The passes, one file each: topp_common.cuh (what they share), topp_hist_pass.cuh (1),
// topp_kept_pass.cuh (2), topp_boundary_pass.cuh (3), topp_compact.cuh (the token lists).
#pragma once

#include "pipeline/prune/twilight/cuda/topp_boundary_pass.cuh"
#include "pipeline/prune/twilight/cuda/topp_common.cuh"
#include "pipeline/prune/twilight/cuda/topp_compact.cuh"
#include "pipeline/prune/twilight/cuda/topp_hist_pass.cuh"
#include "pipeline/prune/twilight/cuda/topp_kept_pass.cuh"

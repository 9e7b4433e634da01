// Twilight pruner kernels. A decode step runs (+ one memset of the per-head accumulators):
//  1. ScoreInt4Kernel: estimated scores q.k~ of every candidate slot (selected page x row)
//     for all query heads of the GQA group at once: a tensor-core SpGEMV where A = INT4 codes
//     of 16 tokens (two 16-byte loads per thread, nibbles turned into FP16 in registers with
//     the 0x6400 exponent trick, exact for 0..15, see NibbleWordToHalf2x4), B = the group's queries (n = 8 heads),
//     FP32 accumulation; scale/zero applied once per token: s = scale*(q.c) + zero*sum(q).
//     The k-order of the MMA is permuted so that each thread's fragment is exactly the
//     nibbles it loaded (a dot product does not care about the order of its terms).
//     Each block owns a contiguous run of tiles of one (sequence, KV head): it resolves the
//     physical pages of the run once into shared memory, then every warp streams groups of
//     kTilesPerWarp tiles through a per-thread cp.async landing buffer two groups deep.
//     Scores are stored as FP16 (2 B per token and head: a quarter of the INT4 bytes at
//     G = 4 instead of as many), and the per-head maximum of the stored (rounded) scores is
//     folded in with one atomicMax per warp and head (order-preserving integer keys).
//     ScorePage16Kernel does the same for the common geometry (INT4 per token or per page
//     channel, pages of 16, d 64/128, up to 16 heads per KV head) with a page per tile and
//     fixed lane offsets (about half the instructions per byte), and, growing, each page's
//     max estimate per head and its sum of exp below that max. ScoreScalarKernel is the fallback for
//     k_bits 2/8, FP16 K (k_bits 16) and groups past 8 outside ScorePage16Kernel.
//  2. The top-p threshold by histogram selection, many blocks per head (prune_hist.cuh):
//     HistKernel (level 1), KeptKernel (level 2 + union bit words above the boundary bin +
//     per-head kept counters), BoundaryKernel (the boundary bin's bits).
//  3. CompactKeptKernel, blocks of kCompactWords bit words per (sequence, KV head): union
//     bits -> ascending tokens, and the per-query-head telemetry.
// The score passes, one file each: prune_common.cuh (what the pruner's kernels share),
// score_tc_pass.cuh, score_page16_pass.cuh, score_scalar_pass.cuh.
#pragma once

#include "pipeline/prune/twilight/cuda/prune_common.cuh"
#include "pipeline/prune/twilight/cuda/score_page16_pass.cuh"
#include "pipeline/prune/twilight/cuda/score_scalar_pass.cuh"
#include "pipeline/prune/twilight/cuda/score_tc_pass.cuh"

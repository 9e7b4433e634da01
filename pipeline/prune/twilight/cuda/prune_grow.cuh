// Growing Quest on the GPU (see GrowCandidatesRef), in two stages so that the pruner's work
// follows its candidates. Stage 1 scores a seed list per (sequence, KV head): the forced pages
// and the largest whole-level set of at most `seed` top-bound pages (SeedListKernel). If the
// growth rule already holds with every seed page in, the rule's smallest level set lies
// inside the seed (the rule is monotone), so the search below over the seed gives exactly the
// reference's set; otherwise the pair is flagged, its list becomes every page and stage 2
// scores and searches it again (only flagged pairs do work). Each stage, after the score
// kernel has estimated every row of the listed pages:
//  1. per (query head, listed page) the max m of the page's estimates and the sum of
//     exp(est - m) over its rows: written by the page-16 estimator in its own pass
//     (ScorePage16Kernel), else by PageMassKernel; GrowPrepKernel then turns them into
//     A = sum * exp(m - M) (M: the head's max estimate over the listed pages), together with
//     each page's key and bound term R, by page (one word per value for the searches);
//  2. GrowSearchKernel, one block per (sequence, KV head): the smallest whole-level set of
//     pages by key = max over the group of the page bounds that satisfies the growth rule
//     R_j <= c * A_j for every query head j, found by a 4-pass radix search on the 32-bit
//     order-preserving keys: each pass histograms the pages of the current bucket by the next
//     8 bits, with per digit and head the sums of A and of R, and picks the largest digit whose
//     "this digit and above in" set satisfies the rule (the rule is monotone in the set). The
//     same search by page counts gives the largest level set within the cap when the rule's set
//     is too large. Then per head: the share of A the top-p must take (p * (A + R) / A, or p at
//     the cap), A / (A + R) for the full-context mass, the max estimate over the candidates
//     (the softmax shift of the top-p kernel), candidate rows and the cap flag;
//  3. The top-p kernels (prune_hist.cuh) skip rows outside the candidates (in_set by list
//     entry), so they see only candidates.
// With an automatic seed below kOneStageBytes of INT4 (see RunPrune: in practice always),
// ListAllKernel replaces the seed list: one stage over every page.
// GrowSearchKernel sorts each pair of up to 8192 pages (GrowSearchSorted) instead of the
// radix passes (GrowSearchRadix, for longer pairs), both in one launch (one block-wide sort by key, then prefix sums of A and R per head), and
// SeedListSortedKernel SeedListKernel's CountCut passes (the same list).
// Floats are summed in a different order than the reference (double there), so a page whose
// inclusion is decided by a near-tie can differ (tests/gpu compare with a tolerance).
// The kernels, by step: grow_common.cuh (what they share), grow_lists.cuh (the lists),
// grow_mass_pass.cuh (1), grow_search_pass.cuh (2: grow_search_sorted, grow_search_radix,
// grow_sort).
#pragma once

#include "pipeline/prune/twilight/cuda/grow_common.cuh"
#include "pipeline/prune/twilight/cuda/grow_lists.cuh"
#include "pipeline/prune/twilight/cuda/grow_mass_pass.cuh"
#include "pipeline/prune/twilight/cuda/grow_search_pass.cuh"

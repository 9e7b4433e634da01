// Coarse-then-fine page selection for the pruner's score pass (twl_coarse_study): rank a KV
// head's pages by a cheap per-page summary, score only the top-ranked pages with the INT4
// estimate, and run top-p over the refined tokens alone. Everything a rule decides is here, so
// that the tests can pin it; the tool only measures.
//
// Summaries (a ranking score per query head and page, q already scaled):
//   quest  sum_j max(q_j lo_j, q_j hi_j) over the page's coded channel ranges (the Quest upper
//          bound; the ranges are the ones the INT4 pass reads anyway: 2 d + 4 B per page)
//   mean   q . c_page, c_page the FP16 per-channel mean of the page's rows (2 d B per page)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "lib/paged_head_keys.h"

namespace twl::bench {

enum class CoarseSummary { kQuest, kMean };
const char* CoarseSummaryName(CoarseSummary summary);

// Bytes per token the coarse pass reads over every page, and the INT4 pass per refined token
// (codes + the page's channel ranges: 64 + 17 at d = 128, page 16).
double CoarseBytesPerToken(CoarseSummary summary, int32_t head_dim, int32_t page_size);
double FineBytesPerToken(int32_t head_dim, int32_t page_size);

// One query head's coarse score of every page: scores[pages].
void CoarsePageScores(CoarseSummary summary, const PagedHeadKeys& keys, const float* q,
                      std::vector<float>* scores);

// A KV head's pages in refinement order: by descending rank, rank(page) = max over the group's
// query heads of (score - that head's max score), so that every head's best pages come first;
// ties by page index. group_scores: [heads][pages], at least one head.
std::vector<int32_t> RankPages(const std::vector<std::vector<float>>& group_scores);

// refined[page] = 1 for the first `count` pages of `order`.
std::vector<uint8_t> FirstPages(const std::vector<int32_t>& order, int32_t count,
                                int32_t pages);

// Tokens by descending estimate (ties by position): the order TopPOverRefined walks.
std::vector<int32_t> DescendingOrder(const std::vector<float>& est);

// Top-p over the refined pages' tokens only: the smallest set taken by descending estimate
// whose weight exp(est - max) reaches p of the refined tokens' total (TopPSet's rule on the
// refined subset). order = DescendingOrder(est). Returns keep[len].
std::vector<uint8_t> TopPOverRefined(const std::vector<float>& est,
                                     const std::vector<int32_t>& order,
                                     const std::vector<uint8_t>& refined, int32_t page_size,
                                     float p);

// The adaptive stop: refine `order` in chunks of chunk_pages until, for every query head g of
// the group, the coarse-estimated weight outside the refined pages,
//   R_g = sum over unrefined pages of rows * exp(coarse_g - M_g),
// is <= eps * A_g, A_g = sum over refined tokens of exp(est_g - M_g), M_g the head's max
// refined estimate. Returns the number of pages refined (a multiple of chunk_pages, or all).
// coarse: [heads][pages], est: [heads][len].
int32_t AdaptiveRefinedPages(const PagedHeadKeys& keys, const std::vector<int32_t>& order,
                             const std::vector<std::vector<float>>& coarse,
                             const std::vector<std::vector<float>>& est, double eps,
                             int32_t chunk_pages);

}  // namespace twl::bench

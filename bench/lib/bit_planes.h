// The INT4 codes of K split into two bit planes, for a two-tier score pass (twl_plane_study,
// bench/ACCURACY.md "Bit-plane two-tier score pass"): a first pass reads every token's high
// plane (the code's top 2 bits, h = code >> 2: d / 4 bytes per token) and the page's channel
// ranges, and estimates q . k from the centre of each code's 4-code bucket; a second pass
// reads the low plane (d / 4 bytes) of the pages chosen for refinement only and gives their
// tokens the library's INT4 estimate. Top-p then runs over every token with these mixed
// estimates: unrefined tokens still compete and count in the total (unlike the coarse page
// ranking of bench/lib/coarse_ranking.h, which drops them). The same bits as today's store,
// laid out by plane. Everything a rule decides is here, so that the tests can pin it.
#pragma once

#include <cstdint>
#include <vector>

#include "lib/paged_head_keys.h"

namespace twl::bench {

// Estimation bytes per token and KV head: high planes and the page's ranges over every token,
// low planes over the refined share of them. At d = 128, page 16: 32 + 17 + 32 x share (today's
// single pass: 64 + 17 = 81).
double PlaneBytesPerToken(int32_t head_dim, int32_t page_size, double refined_share);

// The centre of the bucket of codes 4 h .. 4 h + 3 on the library's grid, rounded once to FP16
// as the library rounds its k~ (core/quantize.h PageChannelDequantValue):
// FP16(lo + (4 h + 1.5) step), lo and step the page channel's decoded low end and FP16 step.
float HighPlaneCentre(uint32_t high, float lo, float step);

// Every token's high-plane estimate sum_j q_j centre_j (FP32, in channel order, like the INT4
// estimate's sum): est[len]. q already scaled.
void HighPlaneEstimateAll(const PagedHeadKeys& keys, const float* q, std::vector<float>* est);

// The max of est over each page's rows: pages[ceil(len / page_size)]. With RankPages
// (coarse_ranking.h) over a group's heads: the fixed-share rule's page order.
std::vector<float> PageMaxima(const std::vector<float>& est, int32_t page_size);

// coarse where the token's page is not refined, fine where it is: the estimate top-p sees.
std::vector<float> MixedEstimate(const std::vector<float>& coarse, const std::vector<float>& fine,
                                 const std::vector<uint8_t>& refined, int32_t page_size);

// refined[page] = 1 when some row t of the page reaches, for some head g of the group,
// coarse[g][t] >= floor[g]. coarse: [heads][len], at least one head. The adaptive rules below
// differ only in the floor.
std::vector<uint8_t> PagesReaching(const std::vector<std::vector<float>>& coarse,
                                   const std::vector<double>& floor, int32_t page_size);

// The margin rule: floor[g] = threshold[g] - margin, threshold[g] the head's top-p threshold
// over its coarse estimates (TopPSet's log_threshold); margin >= 0 in the estimate's units
// (scaled logits, natural log).
std::vector<uint8_t> MarginPages(const std::vector<std::vector<float>>& coarse,
                                 const std::vector<float>& threshold, double margin,
                                 int32_t page_size);

// The weight rule: refine the pages holding a token whose coarse weight share
// exp(coarse[g][t]) / sum_u exp(coarse[g][u]) is >= eps for some head g, i.e.
// floor[g] = ln(sum_u exp(coarse[g][u])) + ln(eps); eps in (0, 1]. It targets the few tokens
// heavy enough that an error in their estimate moves the head's kept mass (a head's
// heaviest tokens sit at the edges of their page's channel ranges, where the bucket centre
// is furthest off: bench/ACCURACY.md), not the tokens near the threshold, which in a flat
// head are most of the context and individually light.
std::vector<uint8_t> WeightPages(const std::vector<std::vector<float>>& coarse, double eps,
                                 int32_t page_size);

// Share of the pages marked in refined.
double RefinedShare(const std::vector<uint8_t>& refined);

}  // namespace twl::bench

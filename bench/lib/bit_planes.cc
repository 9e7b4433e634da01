#include "lib/bit_planes.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/channel_range.h"
#include "core/half.h"

namespace twl::bench {

namespace {
constexpr uint32_t kBuckets = 4;  // values of a 2-bit high plane
}  // namespace

double PlaneBytesPerToken(int32_t head_dim, int32_t page_size, double refined_share) {
  const double plane = head_dim / 4.0;  // 2 bits per channel
  return plane + double(ChannelRangeBytes(head_dim)) / page_size + plane * refined_share;
}

float HighPlaneCentre(uint32_t high, float lo, float step) {
  // (4 h + 1.5) step + lo is exact in a double (<= 5 + 11 bits, plus 11): one rounding.
  return HalfRoundValue((4.0 * high + 1.5) * double(step) + double(lo));
}

void HighPlaneEstimateAll(const PagedHeadKeys& keys, const float* q, std::vector<float>* est) {
  const int32_t d = keys.head_dim(), ps = keys.page_size();
  est->resize(size_t(keys.len()));
  // Per page, each channel's 4 bucket centres (channel-major), looked up per row.
  std::vector<float> table(size_t(d) * kBuckets);
  for (int32_t page = 0; page < keys.pages(); ++page) {
    const float *lo = keys.RangeLo(page), *step = keys.Step(page);
    for (int32_t j = 0; j < d; ++j) {
      for (uint32_t h = 0; h < kBuckets; ++h) {
        table[size_t(j) * kBuckets + h] = HighPlaneCentre(h, lo[j], step[j]);
      }
    }
    for (int32_t r = 0; r < keys.PageRows(page); ++r) {
      const int32_t t = page * ps + r;
      float dot = 0.0f;
      for (int32_t j = 0; j < d; ++j) {
        dot += q[j] * table[size_t(j) * kBuckets + (keys.Code(t, j) >> 2)];
      }
      (*est)[size_t(t)] = dot;
    }
  }
}

std::vector<float> PageMaxima(const std::vector<float>& est, int32_t page_size) {
  const size_t pages = (est.size() + size_t(page_size) - 1) / size_t(page_size);
  std::vector<float> top(pages, -std::numeric_limits<float>::infinity());
  for (size_t t = 0; t < est.size(); ++t) {
    float& m = top[t / size_t(page_size)];
    m = std::max(m, est[t]);
  }
  return top;
}

std::vector<float> MixedEstimate(const std::vector<float>& coarse, const std::vector<float>& fine,
                                 const std::vector<uint8_t>& refined, int32_t page_size) {
  std::vector<float> mixed(coarse.size());
  for (size_t t = 0; t < coarse.size(); ++t) {
    mixed[t] = refined[t / size_t(page_size)] ? fine[t] : coarse[t];
  }
  return mixed;
}

std::vector<uint8_t> PagesReaching(const std::vector<std::vector<float>>& coarse,
                                   const std::vector<double>& floor, int32_t page_size) {
  const size_t len = coarse[0].size();
  std::vector<uint8_t> refined((len + size_t(page_size) - 1) / size_t(page_size), 0);
  for (size_t g = 0; g < coarse.size(); ++g) {
    for (size_t t = 0; t < len; ++t) {
      if (double(coarse[g][t]) >= floor[g]) refined[t / size_t(page_size)] = 1;
    }
  }
  return refined;
}

std::vector<uint8_t> MarginPages(const std::vector<std::vector<float>>& coarse,
                                 const std::vector<float>& threshold, double margin,
                                 int32_t page_size) {
  std::vector<double> floor(coarse.size());
  for (size_t g = 0; g < coarse.size(); ++g) floor[g] = double(threshold[g]) - margin;
  return PagesReaching(coarse, floor, page_size);
}

std::vector<uint8_t> WeightPages(const std::vector<std::vector<float>>& coarse, double eps,
                                 int32_t page_size) {
  std::vector<double> floor(coarse.size());
  for (size_t g = 0; g < coarse.size(); ++g) {
    const std::vector<float>& c = coarse[g];
    const double top = *std::max_element(c.begin(), c.end());
    double sum = 0;  // relative to the max: no overflow
    for (float x : c) sum += std::exp(double(x) - top);
    floor[g] = top + std::log(sum) + std::log(eps);
  }
  return PagesReaching(coarse, floor, page_size);
}

double RefinedShare(const std::vector<uint8_t>& refined) {
  double n = 0;
  for (uint8_t r : refined) n += r != 0;
  return refined.empty() ? 0.0 : n / double(refined.size());
}

}  // namespace twl::bench

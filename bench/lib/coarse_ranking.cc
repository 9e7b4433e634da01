#include "lib/coarse_ranking.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "core/channel_range.h"

namespace twl::bench {

const char* CoarseSummaryName(CoarseSummary summary) {
  return summary == CoarseSummary::kQuest ? "quest" : "mean";
}

double CoarseBytesPerToken(CoarseSummary summary, int32_t head_dim, int32_t page_size) {
  const double per_page = summary == CoarseSummary::kQuest
                              ? double(ChannelRangeBytes(head_dim))
                              : 2.0 * head_dim;  // FP16 means
  return per_page / page_size;
}

double FineBytesPerToken(int32_t head_dim, int32_t page_size) {
  return head_dim / 2.0 + double(ChannelRangeBytes(head_dim)) / page_size;
}

void CoarsePageScores(CoarseSummary summary, const PagedHeadKeys& keys, const float* q,
                      std::vector<float>* scores) {
  const int32_t d = keys.head_dim();
  scores->resize(size_t(keys.pages()));
  for (int32_t page = 0; page < keys.pages(); ++page) {
    float s = 0.0f;
    if (summary == CoarseSummary::kQuest) {
      const float *lo = keys.RangeLo(page), *hi = keys.RangeHi(page);
      for (int32_t j = 0; j < d; ++j) s += std::max(q[j] * lo[j], q[j] * hi[j]);
    } else {
      const float* c = keys.Mean(page);
      for (int32_t j = 0; j < d; ++j) s += q[j] * c[j];
    }
    (*scores)[size_t(page)] = s;
  }
}

std::vector<int32_t> RankPages(const std::vector<std::vector<float>>& group_scores) {
  const size_t pages = group_scores[0].size();
  std::vector<float> rank(pages, -std::numeric_limits<float>::infinity());
  for (const std::vector<float>& s : group_scores) {
    const float top = *std::max_element(s.begin(), s.end());
    for (size_t i = 0; i < pages; ++i) rank[i] = std::max(rank[i], s[i] - top);
  }
  std::vector<int32_t> order(pages);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return rank[size_t(a)] > rank[size_t(b)]; });
  return order;
}

std::vector<uint8_t> FirstPages(const std::vector<int32_t>& order, int32_t count,
                                int32_t pages) {
  std::vector<uint8_t> refined(static_cast<size_t>(pages), 0);
  for (int32_t i = 0; i < std::min<int32_t>(count, int32_t(order.size())); ++i) {
    refined[size_t(order[size_t(i)])] = 1;
  }
  return refined;
}

std::vector<int32_t> DescendingOrder(const std::vector<float>& est) {
  std::vector<int32_t> order(est.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(),
                   [&](int32_t a, int32_t b) { return est[size_t(a)] > est[size_t(b)]; });
  return order;
}

std::vector<uint8_t> TopPOverRefined(const std::vector<float>& est,
                                     const std::vector<int32_t>& order,
                                     const std::vector<uint8_t>& refined, int32_t page_size,
                                     float p) {
  std::vector<uint8_t> keep(est.size(), 0);
  auto in = [&](int32_t t) { return refined[size_t(t / page_size)] != 0; };
  float top = 0.0f;
  bool any = false;
  for (int32_t t : order) {  // the first refined token in the order holds the max
    if (in(t)) {
      top = est[size_t(t)];
      any = true;
      break;
    }
  }
  if (!any) return keep;
  double total = 0;
  for (size_t t = 0; t < est.size(); ++t) {
    if (in(int32_t(t))) total += std::exp(double(est[t] - top));
  }
  double mass = 0;
  for (int32_t t : order) {
    if (mass >= double(p) * total) break;
    if (!in(t)) continue;
    mass += std::exp(double(est[size_t(t)] - top));
    keep[size_t(t)] = 1;
  }
  return keep;
}

int32_t AdaptiveRefinedPages(const PagedHeadKeys& keys, const std::vector<int32_t>& order,
                             const std::vector<std::vector<float>>& coarse,
                             const std::vector<std::vector<float>>& est, double eps,
                             int32_t chunk_pages) {
  const int32_t pages = keys.pages(), heads = int32_t(coarse.size());
  const int32_t ps = keys.page_size();
  chunk_pages = std::max(1, chunk_pages);
  // Per head, suffix sums in refinement order of rows * exp(coarse - its max): R at any count
  // without re-summing, summed from the small end so the tail stays accurate.
  std::vector<std::vector<double>> tail(static_cast<size_t>(heads), std::vector<double>(size_t(pages) + 1, 0));
  std::vector<float> coarse_top(static_cast<size_t>(heads));
  for (int32_t g = 0; g < heads; ++g) {
    const std::vector<float>& c = coarse[size_t(g)];
    coarse_top[size_t(g)] = *std::max_element(c.begin(), c.end());
    for (int32_t i = pages - 1; i >= 0; --i) {
      const int32_t page = order[size_t(i)];
      tail[size_t(g)][size_t(i)] =
          tail[size_t(g)][size_t(i) + 1] +
          keys.PageRows(page) * std::exp(double(c[size_t(page)] - coarse_top[size_t(g)]));
    }
  }
  // A_g kept as sum exp(est - m_g) with a running max m_g, rescaled when the max grows.
  std::vector<double> refined_mass(static_cast<size_t>(heads), 0.0);
  std::vector<float> top(static_cast<size_t>(heads), -std::numeric_limits<float>::infinity());
  int32_t done = 0;
  while (done < pages) {
    const int32_t next = std::min(pages, done + chunk_pages);
    for (int32_t g = 0; g < heads; ++g) {
      const std::vector<float>& e = est[size_t(g)];
      for (int32_t i = done; i < next; ++i) {
        const int32_t first = order[size_t(i)] * ps, rows = keys.PageRows(order[size_t(i)]);
        for (int32_t t = first; t < first + rows; ++t) {
          const float x = e[size_t(t)];
          if (x > top[size_t(g)]) {
            refined_mass[size_t(g)] *= std::exp(double(top[size_t(g)] - x));
            top[size_t(g)] = x;
          }
          refined_mass[size_t(g)] += std::exp(double(x - top[size_t(g)]));
        }
      }
    }
    done = next;
    bool enough = true;
    for (int32_t g = 0; g < heads && enough; ++g) {
      const double outside =
          tail[size_t(g)][size_t(done)] * std::exp(double(coarse_top[size_t(g)] - top[size_t(g)]));
      enough = outside <= eps * refined_mass[size_t(g)];
    }
    if (enough) break;
  }
  return done;
}

}  // namespace twl::bench

// Aggregation of per-head accuracy measurements over many decode steps / heads / layers:
// distribution summaries (mean, p50, p99, min, max) and the per-method accumulator the
// accuracy harness turns into table rows. Pure host code over ref_pipeline.h results.
#pragma once

#include <cstdint>
#include <vector>

#include "lib/ref_pipeline.h"

namespace twl::bench {

struct Summary {
  double mean = 0, p50 = 0, p99 = 0, min = 0, max = 0;
  int64_t n = 0;
};
// Percentiles by nearest rank on the sorted values; an empty input gives NaNs and n = 0.
Summary Summarize(std::vector<double> v);

// Two-sided 95% confidence interval of a mean by Student's t with n - 1 degrees of freedom
// (mean +- t * sd / sqrt(n)): used over independent seeds and over sampled sequences, where
// each sample is one seed's (or one sequence's) statistic. n < 2 gives lo = hi = NaN.
struct Interval {
  double mean = 0, lo = 0, hi = 0;
  int64_t n = 0;
};
Interval MeanInterval95(const std::vector<double>& v);
// The t quantile t_{0.975, df} (exact table to df 30, then the normal limit with a 1/df term).
double StudentT975(int64_t df);

// Share of values >= threshold (NaN when empty).
double FractionAtLeast(const std::vector<double>& v, double threshold);

// Everything measured for one method over all (layer, step, query head) of a workload.
struct MethodAggregate {
  std::vector<double> kept;           // own set size per query head
  std::vector<double> kept_frac;      // own set size / context
  std::vector<double> attended_frac;  // union size (tokens read) / context, per query head
  std::vector<double> own_mass;       // true mass of the own set
  std::vector<double> union_mass;     // true mass of the union
  std::vector<double> est_mass;       // estimated mass of the own set
  std::vector<double> rel_err;        // ||out - dense|| / ||dense||
  double p = 0;                       // the method's p (0 when not a top-p method)

  // Adds one RunMethod result, with `dense` the dense result on the same inputs.
  void Add(const MethodResult& r, const MethodResult& dense);
  // Fraction of heads whose own set's true mass is below p - tolerance.
  double FractionBelow(double tolerance) const;
};

}  // namespace twl::bench

// Device helpers over the split partial sums written by paired_column_moments_cuda.
#pragma once

#include "losses/covariance_kernels.h"

namespace jem_fast {
namespace covariance {

// s[m] = sum over the row splits of moment m of column d, in double (m < kSumDiffSq + 1);
// returns the column's NonFiniteFlag bits.
template <typename A>
__device__ __forceinline__ int sum_moment_splits(const A* __restrict__ partials,
                                                 int64_t num_splits, int64_t D, int64_t d,
                                                 double (&s)[kNumMoments - 2]) {
#pragma unroll
  for (int m = 0; m < kNumMoments - 2; ++m) s[m] = 0.0;
  for (int64_t k = 0; k < num_splits; ++k) {
    const A* p = partials + k * kNumMoments * D;
#pragma unroll
    for (int m = 0; m < kNumMoments - 2; ++m) s[m] += static_cast<double>(p[m * D + d]);
  }
  int flags = 0;
  if (!isfinite(s[kSumA]) || !isfinite(s[kSumAA])) flags |= kNonFiniteA;
  if (!isfinite(s[kSumB]) || !isfinite(s[kSumBB])) flags |= kNonFiniteB;
  return flags;
}

// Column mean of view a (b when view == 1) from the shift (first row) and the shifted sum.
template <typename A>
__device__ __forceinline__ double column_mean(const A* __restrict__ partials, int64_t D, int64_t d,
                                              int view, double shifted_sum, double n) {
  return static_cast<double>(partials[(view == 0 ? kShiftA : kShiftB) * D + d]) + shifted_sum / n;
}

}  // namespace covariance
}  // namespace jem_fast

// VICReg CPU kernels: the O(D) finalize of the column moments and the fused gradient epilogue.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "common/cpu_multiversion.h"
#include "losses/covariance_kernels.h"

namespace jem_fast {
namespace covariance {

namespace {

// grad = a * y + x * colscale + b * (x - x_other + shift), row by row; grad may alias y.
template <typename T>
JEM_CPU_MULTIVERSION void vicreg_grad_rows(const T* y, const T* x, const T* x_other,
                                           const T* colscale, const T* shift, T a, T b,
                                           int64_t begin, int64_t end, int64_t D, T* grad) {
  for (int64_t r = begin; r < end; ++r) {
    const int64_t off = r * D;
    const T* yr = y + off;
    const T* xr = x + off;
    const T* xo = x_other + off;
    T* gr = grad + off;
    for (int64_t d = 0; d < D; ++d) {
      gr[d] = a * yr[d] + xr[d] * colscale[d] + b * (xr[d] - xo[d] + shift[d]);
    }
  }
}

}  // namespace

template <typename T>
int vicreg_finalize_cpu(const double* moments, int64_t N, int64_t D, double eps, bool gram_route,
                        T* colstats, T* terms) {
  const double n = static_cast<double>(N);
  double invariance = 0.0, hinge_a = 0.0, hinge_b = 0.0, diagsq = 0.0;
  int flags = 0;
  for (int64_t d = 0; d < D; ++d) {
    const double sa = moments[kSumA * D + d], sb = moments[kSumB * D + d];
    const double saa = moments[kSumAA * D + d], sbb = moments[kSumBB * D + d];
    if (!std::isfinite(sa) || !std::isfinite(saa)) flags |= kNonFiniteA;
    if (!std::isfinite(sb) || !std::isfinite(sbb)) flags |= kNonFiniteB;
    const double m2a = std::max(saa - sa * sa / n, 0.0);
    const double m2b = std::max(sbb - sb * sb / n, 0.0);
    const double std_a = std::sqrt(m2a / (n - 1.0) + eps);
    const double std_b = std::sqrt(m2b / (n - 1.0) + eps);
    hinge_a += std::max(1.0 - std_a, 0.0);
    hinge_b += std::max(1.0 - std_b, 0.0);
    diagsq += m2a * m2a + m2b * m2b;
    invariance += moments[kSumDiffSq * D + d];
    colstats[kMeanA * D + d] = static_cast<T>(moments[kShiftA * D + d] + sa / n);
    colstats[kMeanB * D + d] = static_cast<T>(moments[kShiftB * D + d] + sb / n);
    colstats[kStat2A * D + d] = static_cast<T>(m2a);
    colstats[kStat2B * D + d] = static_cast<T>(m2b);
    colstats[kStat3A * D + d] = static_cast<T>(std_a);
    colstats[kStat3B * D + d] = static_cast<T>(std_b);
  }
  if (!std::isfinite(invariance) && flags == 0) flags = kNonFiniteA | kNonFiniteB;
  const double dd = static_cast<double>(D);
  terms[0] = static_cast<T>(invariance / (n * dd));
  terms[1] = static_cast<T>(0.5 * (hinge_a + hinge_b) / dd);
  terms[2] = static_cast<T>(gram_route ? -diagsq / ((n - 1.0) * (n - 1.0) * dd) : 0.0);
  return flags;
}

template <typename T>
void vicreg_backward_view_cpu(const T* grad_terms, const T* y, const T* x, const T* x_other,
                              const T* colstats, int view, int64_t N, int64_t D,
                              bool diagonal_in_y, T* grad) {
  const double n = static_cast<double>(N), dd = static_cast<double>(D);
  const double g_inv = grad_terms[0], g_var = grad_terms[1], g_cov = grad_terms[2];
  const double alpha = g_cov * 4.0 / ((n - 1.0) * (n - 1.0) * dd);
  const double beta = g_inv * 2.0 / (n * dd);
  const T* mean_self = colstats + (view == 0 ? kMeanA : kMeanB) * D;
  const T* mean_other = colstats + (view == 0 ? kMeanB : kMeanA) * D;
  const T* m2 = colstats + (view == 0 ? kStat2A : kStat2B) * D;
  const T* stdev = colstats + (view == 0 ? kStat3A : kStat3B) * D;

  // Per-column factors once, so the elementwise pass is three fused multiply-adds.
  std::vector<T> colscale(D), shift(D);
  for (int64_t d = 0; d < D; ++d) {
    // relu'(0) = 0, as in torch: the hinge only pulls columns whose std is below 1.
    const double s = stdev[d];
    const double hinge = s < 1.0 ? g_var * 0.5 / (dd * (n - 1.0) * s) : 0.0;
    colscale[d] = static_cast<T>((diagonal_in_y ? -alpha * m2[d] : 0.0) - hinge);
    shift[d] = static_cast<T>(static_cast<double>(mean_self[d]) - mean_other[d]);
  }
  const T a = static_cast<T>(alpha), b = static_cast<T>(beta);
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(D, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    vicreg_grad_rows<T>(y, x, x_other, colscale.data(), shift.data(), a, b, begin, end, D, grad);
  });
}

#define JEM_INSTANTIATE(T)                                                                     \
  template int vicreg_finalize_cpu<T>(const double*, int64_t, int64_t, double, bool, T*, T*); \
  template void vicreg_backward_view_cpu<T>(const T*, const T*, const T*, const T*, const T*, \
                                            int, int64_t, int64_t, bool, T*);
JEM_INSTANTIATE(float)
JEM_INSTANTIATE(double)
#undef JEM_INSTANTIATE

}  // namespace covariance
}  // namespace jem_fast

// Barlow Twins CPU kernels: the O(D) finalize (batch-norm statistics, the on-diagonal terms) and
// the fused gradient (cross-correlation gradient + batch-norm backward in two passes).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "common/cpu_multiversion.h"
#include "losses/covariance_kernels.h"

namespace jem_fast {
namespace covariance {

namespace {
constexpr double kBatchNormEps = 1e-5;  // F.batch_norm's default, what lightly uses
constexpr int64_t kColBlock = 32;
constexpr int64_t kRowBlock = 256;
}  // namespace

namespace {

// One block of columns: the reduction pass (sum_n y * self, in T within row blocks folded into
// double), then the elementwise pass. grad may alias y: each element is read before written.
template <typename T>
JEM_CPU_MULTIVERSION void barlow_grad_column_block(const T* y, const T* self_norm,
                                                   const T* other_norm, const T* inv_std,
                                                   const T* c_diag, const T* c_minus_1,
                                                   double alpha, double g0,
                                                   double g1, int64_t N, int64_t D, int64_t c0,
                                                   int64_t width, T* grad) {
  const double n = static_cast<double>(N);
  double sum_ya[kColBlock] = {};
  for (int64_t r0 = 0; r0 < N; r0 += kRowBlock) {
    const int64_t r1 = std::min(N, r0 + kRowBlock);
    T part[kColBlock] = {};
    for (int64_t r = r0; r < r1; ++r) {
      const T* yr = y + r * D + c0;
      const T* ar = self_norm + r * D + c0;
      for (int64_t j = 0; j < width; ++j) part[j] += yr[j] * ar[j];
    }
    for (int64_t j = 0; j < width; ++j) sum_ya[j] += static_cast<double>(part[j]);
  }
  T t_coef[kColBlock], t_mean_daa[kColBlock], t_scale[kColBlock];
  for (int64_t j = 0; j < width; ++j) {
    const double c = c_diag[c0 + j];
    const double coef = 2.0 * (g0 * static_cast<double>(c_minus_1[c0 + j]) - g1 * c) / n;
    t_coef[j] = static_cast<T>(coef);
    t_mean_daa[j] = static_cast<T>(alpha * sum_ya[j] / n + coef * c);
    t_scale[j] = inv_std[c0 + j];
  }
  const T t_alpha = static_cast<T>(alpha);
  for (int64_t r = 0; r < N; ++r) {
    const int64_t off = r * D + c0;
    const T* yr = y + off;
    const T* ar = self_norm + off;
    const T* br = other_norm + off;
    T* gr = grad + off;
    for (int64_t j = 0; j < width; ++j) {
      gr[j] = t_scale[j] * (t_alpha * yr[j] + t_coef[j] * br[j] - ar[j] * t_mean_daa[j]);
    }
  }
}

}  // namespace

template <typename T>
int barlow_twins_finalize_cpu(const double* moments, int64_t N, int64_t D, bool gram_route,
                              T* colstats, T* terms) {
  const double n = static_cast<double>(N);
  double on_diag = 0.0, diagsq = 0.0;
  int flags = 0;
  for (int64_t d = 0; d < D; ++d) {
    const double sa = moments[kSumA * D + d], sb = moments[kSumB * D + d];
    const double saa = moments[kSumAA * D + d], sbb = moments[kSumBB * D + d];
    const double sab = moments[kSumAB * D + d];
    if (!std::isfinite(sa) || !std::isfinite(saa)) flags |= kNonFiniteA;
    if (!std::isfinite(sb) || !std::isfinite(sbb)) flags |= kNonFiniteB;
    const double var_a = std::max(saa - sa * sa / n, 0.0) / n;  // biased, as batch norm
    const double var_b = std::max(sbb - sb * sb / n, 0.0) / n;
    const double inv_std_a = 1.0 / std::sqrt(var_a + kBatchNormEps);
    const double inv_std_b = 1.0 / std::sqrt(var_b + kBatchNormEps);
    const double c = (sab - sa * sb / n) * inv_std_a * inv_std_b / n;
    on_diag += (c - 1.0) * (c - 1.0);
    diagsq += c * c;
    colstats[kMeanA * D + d] = static_cast<T>(moments[kShiftA * D + d] + sa / n);
    colstats[kMeanB * D + d] = static_cast<T>(moments[kShiftB * D + d] + sb / n);
    colstats[kStat2A * D + d] = static_cast<T>(inv_std_a);
    colstats[kStat2B * D + d] = static_cast<T>(inv_std_b);
    colstats[kStat3A * D + d] = static_cast<T>(c);
    colstats[kStat3B * D + d] = static_cast<T>(c - 1.0);
  }
  if (!std::isfinite(on_diag) && flags == 0) flags = kNonFiniteA | kNonFiniteB;
  terms[0] = static_cast<T>(on_diag);
  terms[1] = static_cast<T>(gram_route ? -diagsq : 0.0);
  return flags;
}

template <typename T>
void barlow_twins_backward_view_cpu(const T* grad_terms, const T* y, const T* self_norm,
                                    const T* other_norm, const T* colstats, int view, int64_t N,
                                    int64_t D, T* grad) {
  const double n = static_cast<double>(N);
  const double g0 = grad_terms[0], g1 = grad_terms[1];
  const double alpha = 2.0 * g1 / (n * n);
  const T* inv_std = colstats + (view == 0 ? kStat2A : kStat2B) * D;
  const T* c_diag = colstats + kStat3A * D;
  const T* c_minus_1 = colstats + kStat3B * D;
  const int64_t num_blocks = (D + kColBlock - 1) / kColBlock;
  // Batch-norm backward: grad = inv_std * (dA - mean_n dA - self * mean_n(dA * self)). The
  // normalized columns have zero mean, so mean_n dA = 0 (1^T B = 0 makes 1^T y = 0 too), and
  // mean_n(other * self) = c: only sum_n y * self needs a pass over the data.
  at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * kColBlock;
      barlow_grad_column_block<T>(y, self_norm, other_norm, inv_std, c_diag, c_minus_1, alpha, g0,
                                  g1, N, D, c0, std::min(kColBlock, D - c0), grad);
    }
  });
}

#define JEM_INSTANTIATE(T)                                                                     \
  template int barlow_twins_finalize_cpu<T>(const double*, int64_t, int64_t, bool, T*, T*);   \
  template void barlow_twins_backward_view_cpu<T>(const T*, const T*, const T*, const T*,     \
                                                  const T*, int, int64_t, int64_t, T*);
JEM_INSTANTIATE(float)
JEM_INSTANTIATE(double)
#undef JEM_INSTANTIATE

}  // namespace covariance
}  // namespace jem_fast

// CPU kernels shared by the covariance losses: paired column moments, column centering and the
// Frobenius inner product. Parallel over column blocks (or rows), double accumulation.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "losses/covariance_kernels.h"

namespace jem_fast {
namespace covariance {

namespace {
constexpr int64_t kColBlock = 32;
}

template <typename T>
void paired_column_moments_cpu(const T* za, const T* zb, int64_t N, int64_t D, T* moments) {
  const int64_t num_blocks = (D + kColBlock - 1) / kColBlock;
  at::parallel_for(0, num_blocks, 1, [&](int64_t begin, int64_t end) {
    double acc[6][kColBlock];
    double shift_a[kColBlock], shift_b[kColBlock];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * kColBlock;
      const int64_t width = std::min(kColBlock, D - c0);
      for (int64_t j = 0; j < width; ++j) {
        shift_a[j] = static_cast<double>(za[c0 + j]);
        shift_b[j] = static_cast<double>(zb[c0 + j]);
        for (int m = 0; m < 6; ++m) acc[m][j] = 0.0;
      }
      for (int64_t n = 0; n < N; ++n) {
        const T* ra = za + n * D + c0;
        const T* rb = zb + n * D + c0;
        for (int64_t j = 0; j < width; ++j) {
          const double a = static_cast<double>(ra[j]);
          const double b = static_cast<double>(rb[j]);
          const double da = a - shift_a[j];
          const double db = b - shift_b[j];
          const double diff = a - b;
          acc[kSumA][j] += da;
          acc[kSumB][j] += db;
          acc[kSumAA][j] += da * da;
          acc[kSumBB][j] += db * db;
          acc[kSumAB][j] += da * db;
          acc[kSumDiffSq][j] += diff * diff;
        }
      }
      for (int64_t j = 0; j < width; ++j) {
        for (int m = 0; m < 6; ++m) moments[m * D + c0 + j] = static_cast<T>(acc[m][j]);
        moments[kShiftA * D + c0 + j] = static_cast<T>(shift_a[j]);
        moments[kShiftB * D + c0 + j] = static_cast<T>(shift_b[j]);
      }
    }
  });
}

template <typename T>
void center_scale_columns_cpu(const T* z, const T* mean, const T* scale, int64_t N, int64_t D,
                              T* out) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const T* row = z + n * D;
      T* dst = out + n * D;
      if (scale) {
        for (int64_t d = 0; d < D; ++d) dst[d] = (row[d] - mean[d]) * scale[d];
      } else {
        for (int64_t d = 0; d < D; ++d) dst[d] = row[d] - mean[d];
      }
    }
  });
}

template <typename T>
double frobenius_dot_cpu(const T* u, const T* v, int64_t R, int64_t C, bool skip_diagonal) {
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(C, 1));
  return at::parallel_reduce(
      0, R, grain, 0.0,
      [&](int64_t begin, int64_t end, double partial) {
        for (int64_t i = begin; i < end; ++i) {
          const T* ur = u + i * C;
          const T* vr = v + i * C;
          // Skip the diagonal by splitting the row rather than subtracting it afterwards: the
          // diagonal dominates a covariance matrix and the subtraction would cancel.
          const int64_t split = (skip_diagonal && i < C) ? i : C;
          double row = 0.0;
          for (int64_t j = 0; j < split; ++j) row += static_cast<double>(ur[j]) * vr[j];
          for (int64_t j = split + (split < C ? 1 : 0); j < C; ++j)
            row += static_cast<double>(ur[j]) * vr[j];
          partial += row;
        }
        return partial;
      },
      [](double x, double y) { return x + y; });
}

#define JEM_INSTANTIATE(T)                                                                     \
  template void paired_column_moments_cpu<T>(const T*, const T*, int64_t, int64_t, T*);        \
  template void center_scale_columns_cpu<T>(const T*, const T*, const T*, int64_t, int64_t,    \
                                            T*);                                               \
  template double frobenius_dot_cpu<T>(const T*, const T*, int64_t, int64_t, bool);
JEM_INSTANTIATE(float)
JEM_INSTANTIATE(double)
#undef JEM_INSTANTIATE

}  // namespace covariance
}  // namespace jem_fast

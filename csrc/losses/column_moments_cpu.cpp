// CPU kernels shared by the covariance losses: paired column moments, column centering and the
// Frobenius inner product. Parallel over column blocks (or rows), double accumulation.
#include <ATen/Parallel.h>

#include <algorithm>
#include <vector>

#include "common/cpu_multiversion.h"
#include "losses/covariance_kernels.h"

namespace jem_fast {
namespace covariance {

namespace {

constexpr int64_t kColBlock = 32;
constexpr int64_t kRowBlock = 256;

// Adds the shifted moments of rows [begin, end) into acc (6 x D, double). Every operation is in
// double: the differences and products of float32 values are exact there, so the moments carry
// no float32 rounding (Barlow Twins' gradient is proportional to 1 - C_ii, which a rounded
// cross-moment would swamp when the views are highly correlated).
template <typename T>
JEM_CPU_MULTIVERSION void moments_of_rows(const T* __restrict__ za, const T* __restrict__ zb,
                                          int64_t begin, int64_t end, int64_t D,
                                          double* __restrict__ acc) {
  const T* shift_a = za;  // row 0
  const T* shift_b = zb;
  double* sa = acc + kSumA * D;
  double* sb = acc + kSumB * D;
  double* saa = acc + kSumAA * D;
  double* sbb = acc + kSumBB * D;
  double* sab = acc + kSumAB * D;
  double* sdd = acc + kSumDiffSq * D;
  for (int64_t n = begin; n < end; ++n) {
    const T* ra = za + n * D;
    const T* rb = zb + n * D;
    for (int64_t d = 0; d < D; ++d) {
      const double a = static_cast<double>(ra[d]), b = static_cast<double>(rb[d]);
      const double da = a - static_cast<double>(shift_a[d]);
      const double db = b - static_cast<double>(shift_b[d]);
      const double diff = a - b;
      sa[d] += da;
      sb[d] += db;
      saa[d] += da * da;
      sbb[d] += db * db;
      sab[d] += da * db;
      sdd[d] += diff * diff;
    }
  }
}

template <typename T>
JEM_CPU_MULTIVERSION void center_scale_rows(const T* __restrict__ z, const T* __restrict__ mean,
                                            const T* __restrict__ scale, int64_t begin,
                                            int64_t end, int64_t D, T* __restrict__ out) {
  for (int64_t n = begin; n < end; ++n) {
    const T* row = z + n * D;
    T* dst = out + n * D;
    if (scale) {
      for (int64_t d = 0; d < D; ++d) dst[d] = (row[d] - mean[d]) * scale[d];
    } else {
      for (int64_t d = 0; d < D; ++d) dst[d] = row[d] - mean[d];
    }
  }
}

// sum_j u[j] * v[j] over [begin, end), accumulated in T in chunks folded into double.
template <typename T>
JEM_CPU_MULTIVERSION double dot_range(const T* u, const T* v, int64_t begin, int64_t end) {
  double total = 0.0;
  for (int64_t c0 = begin; c0 < end; c0 += 1024) {
    const int64_t c1 = std::min(end, c0 + 1024);
    T part = 0;
    for (int64_t j = c0; j < c1; ++j) part += u[j] * v[j];
    total += static_cast<double>(part);
  }
  return total;
}

}  // namespace

template <typename T>
void paired_column_moments_cpu(const T* za, const T* zb, int64_t N, int64_t D, double* moments) {
  // Row ranges in parallel, each into its own double accumulators, summed in range order.
  const int64_t max_chunks = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(),
                                                                    (N + kRowBlock - 1) / kRowBlock));
  const int64_t rows_per_chunk = (N + max_chunks - 1) / max_chunks;
  const int64_t chunks = (N + rows_per_chunk - 1) / rows_per_chunk;
  std::vector<double> acc(static_cast<size_t>(chunks * 6 * D), 0.0);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t r0 = c * rows_per_chunk;
      moments_of_rows<T>(za, zb, r0, std::min(N, r0 + rows_per_chunk), D, acc.data() + c * 6 * D);
    }
  });
  for (int64_t i = 0; i < 6 * D; ++i) {
    double total = 0.0;
    for (int64_t c = 0; c < chunks; ++c) total += acc[c * 6 * D + i];
    moments[i] = total;
  }
  for (int64_t d = 0; d < D; ++d) {
    moments[kShiftA * D + d] = static_cast<double>(za[d]);
    moments[kShiftB * D + d] = static_cast<double>(zb[d]);
  }
}

template <typename T>
void center_scale_columns_cpu(const T* z, const T* mean, const T* scale, int64_t N, int64_t D,
                              T* out) {
  const int64_t grain = std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1));
  at::parallel_for(0, N, grain, [&](int64_t begin, int64_t end) {
    center_scale_rows<T>(z, mean, scale, begin, end, D, out);
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
          if (skip_diagonal && i < C) {
            partial += dot_range<T>(ur, vr, 0, i) + dot_range<T>(ur, vr, i + 1, C);
          } else {
            partial += dot_range<T>(ur, vr, 0, C);
          }
        }
        return partial;
      },
      [](double x, double y) { return x + y; });
}

#define JEM_INSTANTIATE(T)                                                                     \
  template void paired_column_moments_cpu<T>(const T*, const T*, int64_t, int64_t, double*);   \
  template void center_scale_columns_cpu<T>(const T*, const T*, const T*, int64_t, int64_t,    \
                                            T*);                                               \
  template double frobenius_dot_cpu<T>(const T*, const T*, int64_t, int64_t, bool);
JEM_INSTANTIATE(float)
JEM_INSTANTIATE(double)
#undef JEM_INSTANTIATE

}  // namespace covariance
}  // namespace jem_fast

// Row-wise cosine similarity, CPU kernels: parallel over rows, the per-row loops multiversioned
// for AVX2 (see common/cpu_multiversion.h).
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>

#include "common/cpu_multiversion.h"
#include "losses/negative_cosine_kernels.h"

namespace jem_fast {
namespace cosine {

namespace {

// Independent partial sums per lane: without -ffast-math the compiler may not reorder a single
// running sum, so the lanes are what lets it vectorize the reduction (fixed order: the result does
// not depend on the thread count).
constexpr int kLanes = 16;
// Partial sums stay in T for at most this many elements before being folded into double.
constexpr int64_t kBlock = 1024;

template <typename T>
JEM_CPU_MULTIVERSION void row_dot_and_squares(const T* __restrict__ a, const T* __restrict__ b,
                                              int64_t D, double* __restrict__ out) {
  double dot = 0.0, aa = 0.0, bb = 0.0;
  for (int64_t j0 = 0; j0 < D; j0 += kBlock) {
    const int64_t j1 = std::min(D, j0 + kBlock);
    T pd[kLanes] = {}, pa[kLanes] = {}, pb[kLanes] = {};
    int64_t j = j0;
    for (; j + kLanes <= j1; j += kLanes) {
      for (int k = 0; k < kLanes; ++k) {
        const T x = a[j + k], y = b[j + k];
        pd[k] += x * y;
        pa[k] += x * x;
        pb[k] += y * y;
      }
    }
    for (int k = 0; j < j1; ++j, ++k) {
      const T x = a[j], y = b[j];
      pd[k] += x * y;
      pa[k] += x * x;
      pb[k] += y * y;
    }
    for (int k = 0; k < kLanes; ++k) {
      dot += static_cast<double>(pd[k]);
      aa += static_cast<double>(pa[k]);
      bb += static_cast<double>(pb[k]);
    }
  }
  out[0] = dot;
  out[1] = aa;
  out[2] = bb;
}

// ga = alpha b - beta_a a,  gb = alpha a - beta_b b  (either output may be null).
template <typename T>
JEM_CPU_MULTIVERSION void row_gradients(const T* __restrict__ a, const T* __restrict__ b,
                                        int64_t D, T alpha, T beta_a, T beta_b,
                                        T* __restrict__ ga, T* __restrict__ gb) {
  if (ga != nullptr) {
    for (int64_t j = 0; j < D; ++j) ga[j] = alpha * b[j] - beta_a * a[j];
  }
  if (gb != nullptr) {
    for (int64_t j = 0; j < D; ++j) gb[j] = alpha * a[j] - beta_b * b[j];
  }
}

int64_t row_grain(int64_t D) { return std::max<int64_t>(1, 32768 / std::max<int64_t>(D, 1)); }

}  // namespace

template <typename T>
void cosine_rows_forward_cpu(const T* x0, const T* x1, int64_t N, int64_t D, double eps, T* cos,
                             T* norms) {
  at::parallel_for(0, N, row_grain(D), [&](int64_t begin, int64_t end) {
    double sums[3];
    for (int64_t i = begin; i < end; ++i) {
      row_dot_and_squares<T>(x0 + i * D, x1 + i * D, D, sums);
      const double n0 = std::sqrt(sums[1]), n1 = std::sqrt(sums[2]);
      // Divided one norm at a time: c0 * c1 underflows for tiny norms with a tiny eps.
      cos[i] = static_cast<T>(sums[0] / std::max(n0, eps) / std::max(n1, eps));
      norms[i] = static_cast<T>(n0);
      norms[N + i] = static_cast<T>(n1);
    }
  });
}

template <typename T>
void cosine_rows_backward_cpu(const T* grad, const T* x0, const T* x1, const T* cos,
                              const T* norms, int64_t N, int64_t D, double eps, T* grad_x0,
                              T* grad_x1) {
  at::parallel_for(0, N, row_grain(D), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const double g = grad[i], c = cos[i];
      const double n0 = norms[i], n1 = norms[N + i];
      const double c0 = std::max(n0, eps), c1 = std::max(n1, eps);
      // cos / n_k first: |cos / n_k| <= 1 / c_k, so no intermediate overflows or underflows.
      const double alpha = g / c0 / c1;
      const double beta0 = n0 > 0.0 ? g * (c / n0) / c0 : 0.0;
      const double beta1 = n1 > 0.0 ? g * (c / n1) / c1 : 0.0;
      row_gradients<T>(x0 + i * D, x1 + i * D, D, static_cast<T>(alpha), static_cast<T>(beta0),
                       static_cast<T>(beta1), grad_x0 ? grad_x0 + i * D : nullptr,
                       grad_x1 ? grad_x1 + i * D : nullptr);
    }
  });
}

#define JEM_INSTANTIATE(T)                                                                     \
  template void cosine_rows_forward_cpu<T>(const T*, const T*, int64_t, int64_t, double, T*,   \
                                           T*);                                                \
  template void cosine_rows_backward_cpu<T>(const T*, const T*, const T*, const T*, const T*,  \
                                            int64_t, int64_t, double, T*, T*);
JEM_INSTANTIATE(float)
JEM_INSTANTIATE(double)
#undef JEM_INSTANTIATE

}  // namespace cosine
}  // namespace jem_fast

// Sinkhorn-Knopp CPU kernels: the column step walks column blocks (one thread owns whole
// columns, so no partial sums need merging), the row step and the plan walk rows. Inner loops
// are plain and multiversioned for AVX2. Exponents are formed in double (the potentials are
// float64, see sinkhorn_knopp_kernels.h) and exponentiated in the score dtype.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "cluster/sinkhorn_knopp_kernels.h"
#include "common/cpu_math.h"
#include "common/cpu_multiversion.h"

namespace jem_fast {
namespace sinkhorn {

namespace {

// A column block is 1 KiB of a float row; a row chunk keeps chunk_rows x block in L2 while it is
// read twice (once for the chunk max, once for the exps).
constexpr int64_t kColumnBlock = 256;
constexpr int64_t kRowChunk = 64;

// exp(d) for an exponent d <= ~0 formed in double, evaluated in the score dtype T.
template <typename T>
inline T exp_of(double d) {
  return exp_vectorizable(static_cast<T>(d));
}

// Online column log-sum-exp over rows [0, B) of one column block, merged chunk by chunk: the
// running sum is rescaled once per chunk (one exp per column), the elements cost one exp each.
template <typename T>
JEM_CPU_MULTIVERSION void column_block_stats(const T* S, int64_t B, int64_t K, int64_t k0,
                                             int64_t width, double scale, const double* f,
                                             double* m, double* s) {
  const double neg_inf = -std::numeric_limits<double>::infinity();
  double chunk_max[kColumnBlock];
  for (int64_t j = 0; j < width; ++j) {
    m[j] = neg_inf;
    s[j] = 0;
  }
  for (int64_t b0 = 0; b0 < B; b0 += kRowChunk) {
    const int64_t b1 = std::min(B, b0 + kRowChunk);
    for (int64_t j = 0; j < width; ++j) chunk_max[j] = neg_inf;
    for (int64_t b = b0; b < b1; ++b) {
      const double fb = f ? f[b] : 0.0;
      const T* row = S + b * K + k0;
      for (int64_t j = 0; j < width; ++j) {
        const double x = scale * static_cast<double>(row[j]) + fb;
        chunk_max[j] = x > chunk_max[j] ? x : chunk_max[j];
      }
    }
    for (int64_t j = 0; j < width; ++j) {
      const double new_m = chunk_max[j] > m[j] ? chunk_max[j] : m[j];
      s[j] = s[j] == 0.0 ? 0.0 : s[j] * std::exp(m[j] - new_m);
      m[j] = new_m;
    }
    for (int64_t b = b0; b < b1; ++b) {
      const double fb = f ? f[b] : 0.0;
      const T* row = S + b * K + k0;
      for (int64_t j = 0; j < width; ++j) {
        s[j] += static_cast<double>(exp_of<T>(scale * static_cast<double>(row[j]) + fb - m[j]));
      }
    }
  }
}

template <typename T>
JEM_CPU_MULTIVERSION double row_max(const T* s, int64_t K, double scale, const double* g) {
  double lanes[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lanes[l] = -std::numeric_limits<double>::infinity();
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const double x = scale * static_cast<double>(s[k + l]) + g[k + l];
      lanes[l] = x > lanes[l] ? x : lanes[l];
    }
  }
  double m = -std::numeric_limits<double>::infinity();
  for (; k < K; ++k) {
    const double x = scale * static_cast<double>(s[k]) + g[k];
    m = x > m ? x : m;
  }
  for (int64_t l = 0; l < kLanes; ++l) m = lanes[l] > m ? lanes[l] : m;
  return m;
}

// sum_k exp(scale s_k + g_k - shift); with kStore each exp is also written to out[k].
template <bool kStore, typename T>
JEM_CPU_MULTIVERSION double row_sum_exp(const T* s, int64_t K, double scale, const double* g,
                                        double shift, T* out) {
  double total = 0.0;
  T lanes[kLanes] = {};
  int64_t k = 0;
  for (int64_t n = 0; k + kLanes <= K; k += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const T e = exp_of<T>(scale * static_cast<double>(s[k + l]) + g[k + l] - shift);
      if (kStore) out[k + l] = e;
      lanes[l] += e;
    }
    if ((n += kLanes) == kFoldBlock) {
      for (int64_t l = 0; l < kLanes; ++l) {
        total += static_cast<double>(lanes[l]);
        lanes[l] = 0;
      }
      n = 0;
    }
  }
  for (; k < K; ++k) {
    const T e = exp_of<T>(scale * static_cast<double>(s[k]) + g[k] - shift);
    if (kStore) out[k] = e;
    total += static_cast<double>(e);
  }
  for (int64_t l = 0; l < kLanes; ++l) total += static_cast<double>(lanes[l]);
  return total;
}

template <typename T>
JEM_CPU_MULTIVERSION void plan_row(const T* s, int64_t K, double scale, double fb,
                                   const double* g, T rows, T* q) {
  for (int64_t k = 0; k < K; ++k) {
    q[k] = rows * exp_of<T>(scale * static_cast<double>(s[k]) + g[k] + fb);
  }
}

template <typename T>
JEM_CPU_MULTIVERSION void scale_row(T* q, int64_t K, T factor) {
  for (int64_t k = 0; k < K; ++k) q[k] *= factor;
}

}  // namespace

template <typename T>
void column_stats_cpu(const T* S, int64_t B, int64_t K, double scale, const double* f,
                      double* colmax, double* colsum) {
  const int64_t blocks = (K + kColumnBlock - 1) / kColumnBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t k0 = blk * kColumnBlock;
      const int64_t width = std::min(kColumnBlock, K - k0);
      column_block_stats(S, B, K, k0, width, scale, f, colmax + k0, colsum + k0);
    }
  });
}

template <typename T>
void row_potential_cpu(const T* S, int64_t B, int64_t K, double scale, const double* g,
                       double log_rows, double* f) {
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const T* s = S + b * K;
      const double m = row_max(s, K, scale, g);
      const double total = row_sum_exp<false>(s, K, scale, g, m, static_cast<T*>(nullptr));
      f[b] = -log_rows - (m + std::log(total));
    }
  });
}

template <typename T>
void plan_cpu(const T* S, int64_t B, int64_t K, double scale, const double* f, const double* g,
              double rows, T* Q) {
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      plan_row(S + b * K, K, scale, f[b], g, static_cast<T>(rows), Q + b * K);
    }
  });
}

template <typename T>
void row_plan_cpu(const T* S, int64_t B, int64_t K, double scale, const double* g,
                  double log_rows, double* f, T* Q) {
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const T* s = S + b * K;
      T* q = Q + b * K;
      const double m = row_max(s, K, scale, g);
      const double total = row_sum_exp<true>(s, K, scale, g, m, q);  // q = exp(z - m)
      f[b] = -log_rows - (m + std::log(total));
      scale_row(q, K, static_cast<T>(1.0 / total));
    }
  });
}

#define JEM_INSTANTIATE(T)                                                                   \
  template void column_stats_cpu<T>(const T*, int64_t, int64_t, double, const double*,       \
                                    double*, double*);                                       \
  template void row_potential_cpu<T>(const T*, int64_t, int64_t, double, const double*,      \
                                     double, double*);                                       \
  template void plan_cpu<T>(const T*, int64_t, int64_t, double, const double*, const double*, \
                            double, T*);                                                     \
  template void row_plan_cpu<T>(const T*, int64_t, int64_t, double, const double*, double,   \
                                double*, T*);
JEM_INSTANTIATE(float)
JEM_INSTANTIATE(double)
#undef JEM_INSTANTIATE

}  // namespace sinkhorn
}  // namespace jem_fast

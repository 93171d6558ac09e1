// Sinkhorn-Knopp CPU kernels: the column step walks column blocks (one thread owns whole
// columns, so no partial sums need merging), the row step and the plan walk rows. Inner loops
// are plain and multiversioned for AVX2.
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

// Online column log-sum-exp over rows [0, B) of one column block, merged chunk by chunk: the
// running sum is rescaled once per chunk (one exp per column), the elements cost one exp each.
template <typename T>
JEM_CPU_MULTIVERSION void column_block_stats(const T* S, int64_t B, int64_t K, int64_t k0,
                                             int64_t width, T scale, const T* f, T* m, T* s) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  T chunk_max[kColumnBlock];
  for (int64_t j = 0; j < width; ++j) {
    m[j] = neg_inf;
    s[j] = 0;
  }
  for (int64_t b0 = 0; b0 < B; b0 += kRowChunk) {
    const int64_t b1 = std::min(B, b0 + kRowChunk);
    for (int64_t j = 0; j < width; ++j) chunk_max[j] = neg_inf;
    for (int64_t b = b0; b < b1; ++b) {
      const T fb = f ? f[b] : T(0);
      const T* row = S + b * K + k0;
      for (int64_t j = 0; j < width; ++j) {
        const T x = scale * row[j] + fb;
        chunk_max[j] = x > chunk_max[j] ? x : chunk_max[j];
      }
    }
    for (int64_t j = 0; j < width; ++j) {
      const T new_m = chunk_max[j] > m[j] ? chunk_max[j] : m[j];
      s[j] = s[j] == T(0) ? T(0) : s[j] * exp_vectorizable(m[j] - new_m);
      m[j] = new_m;
    }
    for (int64_t b = b0; b < b1; ++b) {
      const T fb = f ? f[b] : T(0);
      const T* row = S + b * K + k0;
      for (int64_t j = 0; j < width; ++j) s[j] += exp_vectorizable(scale * row[j] + fb - m[j]);
    }
  }
}

template <typename T>
JEM_CPU_MULTIVERSION T row_max(const T* s, int64_t K, T scale, const T* g) {
  T lanes[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lanes[l] = -std::numeric_limits<T>::infinity();
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const T x = scale * s[k + l] + g[k + l];
      lanes[l] = x > lanes[l] ? x : lanes[l];
    }
  }
  T m = -std::numeric_limits<T>::infinity();
  for (; k < K; ++k) {
    const T x = scale * s[k] + g[k];
    m = x > m ? x : m;
  }
  for (int64_t l = 0; l < kLanes; ++l) m = lanes[l] > m ? lanes[l] : m;
  return m;
}

template <typename T>
JEM_CPU_MULTIVERSION double row_sum_exp(const T* s, int64_t K, T scale, const T* g, T shift) {
  double total = 0.0;
  T lanes[kLanes] = {};
  int64_t k = 0;
  for (int64_t n = 0; k + kLanes <= K; k += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += exp_vectorizable(scale * s[k + l] + g[k + l] - shift);
    if ((n += kLanes) == kFoldBlock) {
      for (int64_t l = 0; l < kLanes; ++l) {
        total += static_cast<double>(lanes[l]);
        lanes[l] = 0;
      }
      n = 0;
    }
  }
  for (; k < K; ++k) total += static_cast<double>(exp_vectorizable(scale * s[k] + g[k] - shift));
  for (int64_t l = 0; l < kLanes; ++l) total += static_cast<double>(lanes[l]);
  return total;
}

template <typename T>
JEM_CPU_MULTIVERSION void plan_row(const T* s, int64_t K, T scale, T fb, const T* g, T rows,
                                   T* q) {
  for (int64_t k = 0; k < K; ++k) q[k] = rows * exp_vectorizable(scale * s[k] + fb + g[k]);
}

}  // namespace

template <typename T>
void column_stats_cpu(const T* S, int64_t B, int64_t K, T scale, const T* f, T* colmax,
                      T* colsum) {
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
void row_potential_cpu(const T* S, int64_t B, int64_t K, T scale, const T* g, T log_rows, T* f) {
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const T* s = S + b * K;
      const T m = row_max(s, K, scale, g);
      f[b] = -log_rows - (m + static_cast<T>(std::log(row_sum_exp(s, K, scale, g, m))));
    }
  });
}

template <typename T>
void plan_cpu(const T* S, int64_t B, int64_t K, T scale, const T* f, const T* g, T rows, T* Q) {
  at::parallel_for(0, B, 16, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) plan_row(S + b * K, K, scale, f[b], g, rows, Q + b * K);
  });
}

#define JEM_INSTANTIATE(T)                                                                   \
  template void column_stats_cpu<T>(const T*, int64_t, int64_t, T, const T*, T*, T*);        \
  template void row_potential_cpu<T>(const T*, int64_t, int64_t, T, const T*, T, T*);        \
  template void plan_cpu<T>(const T*, int64_t, int64_t, T, const T*, const T*, T, T*);
JEM_INSTANTIATE(float)
JEM_INSTANTIATE(double)
#undef JEM_INSTANTIATE

}  // namespace sinkhorn
}  // namespace jem_fast

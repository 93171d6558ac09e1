// InfoNCE CPU kernels over one chunk of logits: masked row log-sum-exp and the in-place logit
// gradient. Parallel over rows; the inner loops are plain and multiversioned for AVX2.
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/cpu_math.h"
#include "common/cpu_multiversion.h"
#include "losses/info_nce_kernels.h"

namespace jem_fast {
namespace info_nce {

namespace {

// Reductions keep kLanes partial results (see cpu_math.h) so they vectorize.
template <typename T>
JEM_CPU_MULTIVERSION T range_max(const T* s, int64_t begin, int64_t end) {
  T lanes[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lanes[l] = -std::numeric_limits<T>::infinity();
  int64_t j = begin;
  for (; j + kLanes <= end; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] = s[j + l] > lanes[l] ? s[j + l] : lanes[l];
  }
  T m = -std::numeric_limits<T>::infinity();
  for (; j < end; ++j) m = s[j] > m ? s[j] : m;
  for (int64_t l = 0; l < kLanes; ++l) m = lanes[l] > m ? lanes[l] : m;
  return m;
}

// sum_j exp(scale (s[j] - m)): the difference is taken before scaling, so it is exact for the
// entries near the maximum m (which contributes exactly 1) whatever |scale s|.
template <typename T>
JEM_CPU_MULTIVERSION double range_sum_exp(const T* s, int64_t begin, int64_t end, T scale, T m) {
  double total = 0.0;
  T lanes[kLanes] = {};
  int64_t j = begin;
  for (int64_t n = 0; j + kLanes <= end; j += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += exp_vectorizable(scale * (s[j + l] - m));
    if ((n += kLanes) == kFoldBlock) {
      for (int64_t l = 0; l < kLanes; ++l) {
        total += static_cast<double>(lanes[l]);
        lanes[l] = 0;
      }
      n = 0;
    }
  }
  for (; j < end; ++j) total += static_cast<double>(exp_vectorizable(scale * (s[j] - m)));
  for (int64_t l = 0; l < kLanes; ++l) total += static_cast<double>(lanes[l]);
  return total;
}

// s[j] <- gi exp(scale s[j] - ri) (+ h[j] exp(scale s[j] - c[j]) when h is given).
template <typename T>
JEM_CPU_MULTIVERSION void logit_grad_row(T* s, int64_t M, T scale, T gi, T ri, const T* h,
                                         const T* c) {
  if (h != nullptr) {
    for (int64_t j = 0; j < M; ++j) {
      const T logit = scale * s[j];
      s[j] = gi * exp_vectorizable(logit - ri) + h[j] * exp_vectorizable(logit - c[j]);
    }
  } else {
    for (int64_t j = 0; j < M; ++j) s[j] = gi * exp_vectorizable(scale * s[j] - ri);
  }
}

int64_t masked_column(const int64_t* mask, int64_t i, int64_t M) {
  return (mask != nullptr && mask[i] >= 0 && mask[i] < M) ? mask[i] : -1;
}

// The unmasked ranges of [0, M) for row i: at most three, [begin, end) pairs in order.
struct UnmaskedRanges {
  int64_t begin[3], end[3];
  int count = 0;
  UnmaskedRanges(const int64_t* mask, const int64_t* mask2, int64_t i, int64_t M) {
    int64_t a = masked_column(mask, i, M), b = masked_column(mask2, i, M);
    if (a > b) std::swap(a, b);  // a <= b; -1 (none) sorts first
    int64_t start = 0;
    for (const int64_t cut : {a, b}) {
      if (cut < start) continue;  // none, or the same column twice
      if (cut > start) add(start, cut);
      start = cut + 1;
    }
    if (start < M) add(start, M);
  }
  void add(int64_t b, int64_t e) {
    begin[count] = b;
    end[count] = e;
    ++count;
  }
};

}  // namespace

template <typename T>
void row_lse_chunk_cpu(const T* S, int64_t rows, int64_t M, T scale, const int64_t* mask,
                       const int64_t* mask2, T* lse) {
  const T neg_inf = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const T* s = S + i * M;
      const UnmaskedRanges ranges(mask, mask2, i, M);
      // scale > 0, so the max of scale * s is scale * max(s).
      T m = neg_inf;
      for (int r = 0; r < ranges.count; ++r) {
        m = std::max(m, range_max(s, ranges.begin[r], ranges.end[r]));
      }
      if (m == neg_inf) {
        lse[i] = neg_inf;
        continue;
      }
      double total = 0.0;
      for (int r = 0; r < ranges.count; ++r) {
        total += range_sum_exp(s, ranges.begin[r], ranges.end[r], scale, m);
      }
      lse[i] = scale * m + static_cast<T>(std::log(total));
    }
  });
}

template <typename T>
void col_lse_chunk_cpu(const T* S, int64_t rows, int64_t M, T scale, const int64_t* mask,
                       const int64_t* mask2, T* lse) {
  constexpr int64_t kCols = 64;
  const T neg_inf = -std::numeric_limits<T>::infinity();
  at::parallel_for(0, (M + kCols - 1) / kCols, 1, [&](int64_t begin, int64_t end) {
    T mx[kCols];
    double sum[kCols];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t c0 = blk * kCols, width = std::min(kCols, M - c0);
      for (int64_t j = 0; j < width; ++j) {
        mx[j] = neg_inf;
        sum[j] = 0.0;
      }
      // The entries a row masks (its self / positive column) are left out of their columns too.
      for (int64_t i = 0; i < rows; ++i) {
        const T* s = S + i * M + c0;
        const UnmaskedRanges ranges(mask, mask2, i, M);
        for (int r = 0; r < ranges.count; ++r) {
          const int64_t b = std::max(ranges.begin[r], c0) - c0;
          const int64_t e = std::min(ranges.end[r], c0 + width) - c0;
          for (int64_t j = b; j < e; ++j) mx[j] = s[j] > mx[j] ? s[j] : mx[j];
        }
      }
      for (int64_t i = 0; i < rows; ++i) {
        const T* s = S + i * M + c0;
        const UnmaskedRanges ranges(mask, mask2, i, M);
        for (int r = 0; r < ranges.count; ++r) {
          const int64_t b = std::max(ranges.begin[r], c0) - c0;
          const int64_t e = std::min(ranges.end[r], c0 + width) - c0;
          for (int64_t j = b; j < e; ++j) sum[j] += exp_vectorizable(scale * (s[j] - mx[j]));
        }
      }
      for (int64_t j = 0; j < width; ++j) {
        lse[c0 + j] = mx[j] == neg_inf ? neg_inf : scale * mx[j] + static_cast<T>(std::log(sum[j]));
      }
    }
  });
}

template <typename T>
void logit_grad_chunk_cpu(T* S, int64_t rows, int64_t M, T scale, const int64_t* mask,
                          const int64_t* mask2, const T* g, const T* r, const T* h, const T* c) {
  at::parallel_for(0, rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      T* s = S + i * M;
      // A row whose every entry is masked has r = -inf and no softmax to differentiate.
      const T gi = std::isinf(r[i]) ? T(0) : g[i];
      const T ri = std::isinf(r[i]) ? T(0) : r[i];
      logit_grad_row(s, M, scale, gi, ri, h, c);
      const int64_t skip = masked_column(mask, i, M), skip2 = masked_column(mask2, i, M);
      if (skip >= 0) s[skip] = T(0);
      if (skip2 >= 0) s[skip2] = T(0);
    }
  });
}

#define JEM_INSTANTIATE(T)                                                                     \
  template void row_lse_chunk_cpu<T>(const T*, int64_t, int64_t, T, const int64_t*,          \
                                     const int64_t*, T*);                                      \
  template void col_lse_chunk_cpu<T>(const T*, int64_t, int64_t, T, const int64_t*,          \
                                     const int64_t*, T*);                                      \
  template void logit_grad_chunk_cpu<T>(T*, int64_t, int64_t, T, const int64_t*,             \
                                        const int64_t*, const T*, const T*, const T*,         \
                                        const T*);
JEM_INSTANTIATE(float)
JEM_INSTANTIATE(double)
#undef JEM_INSTANTIATE

}  // namespace info_nce
}  // namespace jem_fast

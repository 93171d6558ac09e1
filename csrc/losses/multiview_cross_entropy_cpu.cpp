// multiview_cross_entropy CPU kernels: parallel over rows; per row the summed targets are built
// once in a thread-local buffer, then every student view is one max pass and one fused
// exp-sum + dot pass (forward) or one gradient pass (backward) over its row.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "common/cpu_math.h"
#include "common/cpu_multiversion.h"
#include "losses/multiview_cross_entropy_kernels.h"

namespace jem_fast {
namespace multiview_ce {

namespace {

// Every reduction keeps kLanes partial results (see cpu_math.h) so it vectorizes.
template <typename A>
JEM_CPU_MULTIVERSION double sum_row(const A* y, int64_t K) {
  double total = 0.0;
  A lanes[kLanes] = {};
  int64_t k = 0;
  for (int64_t n = 0; k + kLanes <= K; k += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += y[k + l];
    if ((n += kLanes) == kFoldBlock) {
      for (int64_t l = 0; l < kLanes; ++l) {
        total += static_cast<double>(lanes[l]);
        lanes[l] = 0;
      }
      n = 0;
    }
  }
  for (; k < K; ++k) total += static_cast<double>(y[k]);
  for (int64_t l = 0; l < kLanes; ++l) total += static_cast<double>(lanes[l]);
  return total;
}

template <typename A>
JEM_CPU_MULTIVERSION void add_into(A* acc, const A* y, int64_t K) {
  for (int64_t k = 0; k < K; ++k) acc[k] += y[k];
}

template <typename I, typename A>
JEM_CPU_MULTIVERSION A max_row(const I* x, int64_t K) {
  A lanes[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lanes[l] = -std::numeric_limits<A>::infinity();
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const A v = static_cast<A>(x[k + l]);
      lanes[l] = v > lanes[l] ? v : lanes[l];
    }
  }
  A m = -std::numeric_limits<A>::infinity();
  for (; k < K; ++k) {
    const A v = static_cast<A>(x[k]);
    m = v > m ? v : m;
  }
  for (int64_t l = 0; l < kLanes; ++l) m = lanes[l] > m ? lanes[l] : m;
  return m;
}

// sum_k exp(scale (x_k - m)) and sum_k y_k (m - x_k) for the row maximum m: every term is >= 0
// (y >= 0), so nothing cancels. A zero target contributes 0 even on a -inf logit (0 * inf).
template <typename I, typename A>
JEM_CPU_MULTIVERSION void exp_sum_and_gap(const I* x, const A* y, int64_t K, A scale, A m,
                                          double* exp_sum, double* gap) {
  double es = 0.0, d = 0.0;
  A le[kLanes] = {}, ld[kLanes] = {};
  int64_t k = 0;
  for (int64_t n = 0; k + kLanes <= K; k += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const A v = static_cast<A>(x[k + l]);
      const A w = y[k + l];
      le[l] += exp_vectorizable(scale * (v - m));
      ld[l] += w != A(0) ? w * (m - v) : A(0);
    }
    if ((n += kLanes) == kFoldBlock) {
      for (int64_t l = 0; l < kLanes; ++l) {
        es += static_cast<double>(le[l]);
        d += static_cast<double>(ld[l]);
        le[l] = 0;
        ld[l] = 0;
      }
      n = 0;
    }
  }
  for (; k < K; ++k) {
    const A v = static_cast<A>(x[k]);
    es += static_cast<double>(exp_vectorizable(scale * (v - m)));
    if (y[k] != A(0)) d += static_cast<double>(y[k] * (m - v));
  }
  for (int64_t l = 0; l < kLanes; ++l) {
    es += static_cast<double>(le[l]);
    d += static_cast<double>(ld[l]);
  }
  *exp_sum = es;
  *gap = d;
}

// grad_k = coef (w p_k - y_k), p_k = exp(scale x_k - lse) with the exponent formed in double
// (lse is float64): exact to the accumulation type's rounding whatever |scale x|, and exactly
// 1 when x_k is a row's only logit.
template <typename I, typename A>
JEM_CPU_MULTIVERSION void grad_row(const I* x, const A* y, int64_t K, double scale, double lse,
                                   A w, A coef, I* grad) {
  for (int64_t k = 0; k < K; ++k) {
    const double z = scale * static_cast<double>(static_cast<A>(x[k])) - lse;
    const A p = exp_vectorizable(static_cast<A>(z));
    grad[k] = static_cast<I>(coef * (w * p - y[k]));
  }
}

// The summed targets a student view is paired with: Y = sum over t != skip of y_t, added in t
// order (skip = -1: every target). view_mass adds the row masses in the same order, so that
// W = sum_k Y_k holds exactly when K = 1.
template <typename A>
void view_targets(const A* const* targets, int64_t T, int64_t row_offset, int64_t K,
                  int64_t skip, A* out) {
  std::fill(out, out + K, A(0));
  for (int64_t t = 0; t < T; ++t) {
    if (t != skip) add_into(out, targets[t] + row_offset, K);
  }
}

template <typename A>
A view_mass(const A* mass, int64_t T, int64_t B, int64_t b, int64_t skip) {
  A w = 0;
  for (int64_t t = 0; t < T; ++t) {
    if (t != skip) w += mass[t * B + b];
  }
  return w;
}

}  // namespace

// Per row: lse = scale m + log S with m the row maximum and S = sum_k exp(scale (x_k - m)), and
// contribution = sum_k Y_k (lse - scale x_k) = scale sum_k Y_k (m - x_k) + W log S: two sums of
// non-negative terms (no p . x - W lse cancellation), lse and contribution in double.
template <typename I, typename A>
void forward_cpu(const Problem& p, const A* const* targets, const I* const* logits, double* lse,
                 double* contribution, A* mass) {
  const int64_t T = p.targets, V = p.views, B = p.rows, K = p.cols;
  const A scale = static_cast<A>(p.scale);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> y_all(K), y_view(K);
    double row_mass[kMaxTargets];
    for (int64_t b = begin; b < end; ++b) {
      for (int64_t t = 0; t < T; ++t) {
        row_mass[t] = sum_row(targets[t] + b * K, K);
        mass[t * B + b] = static_cast<A>(row_mass[t]);
      }
      view_targets(targets, T, b * K, K, -1, y_all.data());
      for (int64_t v = 0; v < V; ++v) {
        const I* x = logits[v] + b * K;
        const A* y = y_all.data();
        if (v < T) {  // the target of this same crop is not a pair (T = 1: Y = 0, W = 0)
          view_targets(targets, T, b * K, K, v, y_view.data());
          y = y_view.data();
        }
        double w = 0.0;
        for (int64_t t = 0; t < T; ++t) {
          if (t != v) w += row_mass[t];
        }
        const A m = max_row<I, A>(x, K);
        double exp_sum = 0.0, gap = 0.0;
        exp_sum_and_gap(x, y, K, scale, m, &exp_sum, &gap);
        const double log_s = std::log(exp_sum);
        lse[v * B + b] = p.scale * static_cast<double>(m) + log_s;
        contribution[v * B + b] = p.scale * gap + w * log_s;
      }
    }
  });
}

template <typename I, typename A>
void backward_cpu(const Problem& p, const A* const* targets, const I* const* logits,
                  const double* lse, const A* mass, A coef, I* const* grads) {
  const int64_t T = p.targets, V = p.views, B = p.rows, K = p.cols;
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> y_all(K), y_view(K);
    for (int64_t b = begin; b < end; ++b) {
      view_targets(targets, T, b * K, K, -1, y_all.data());
      for (int64_t v = 0; v < V; ++v) {
        const A* y = y_all.data();
        if (v < T) {
          view_targets(targets, T, b * K, K, v, y_view.data());
          y = y_view.data();
        }
        grad_row(logits[v] + b * K, y, K, p.scale, lse[v * B + b],
                 view_mass(mass, T, B, b, v < T ? v : -1), coef, grads[v] + b * K);
      }
    }
  });
}

#define JEM_INSTANTIATE(I, A)                                                                 \
  template void forward_cpu<I, A>(const Problem&, const A* const*, const I* const*, double*,  \
                                  double*, A*);                                               \
  template void backward_cpu<I, A>(const Problem&, const A* const*, const I* const*,          \
                                   const double*, const A*, A, I* const*);
JEM_INSTANTIATE(float, float)
JEM_INSTANTIATE(double, double)
JEM_INSTANTIATE(c10::Half, float)
JEM_INSTANTIATE(c10::BFloat16, float)
#undef JEM_INSTANTIATE

}  // namespace multiview_ce
}  // namespace jem_fast

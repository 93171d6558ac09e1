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

// sum_k exp(scale x_k - shift) and sum_k y_k x_k.
template <typename I, typename A>
JEM_CPU_MULTIVERSION void exp_sum_and_dot(const I* x, const A* y, int64_t K, A scale, A shift,
                                          double* exp_sum, double* dot) {
  double es = 0.0, d = 0.0;
  A le[kLanes] = {}, ld[kLanes] = {};
  int64_t k = 0;
  for (int64_t n = 0; k + kLanes <= K; k += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const A v = static_cast<A>(x[k + l]);
      le[l] += exp_vectorizable(scale * v - shift);
      ld[l] += y[k + l] * v;
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
    es += static_cast<double>(exp_vectorizable(scale * v - shift));
    d += static_cast<double>(y[k] * v);
  }
  for (int64_t l = 0; l < kLanes; ++l) {
    es += static_cast<double>(le[l]);
    d += static_cast<double>(ld[l]);
  }
  *exp_sum = es;
  *dot = d;
}

template <typename I, typename A>
JEM_CPU_MULTIVERSION double dot_row(const I* x, const A* y, int64_t K) {
  double d = 0.0;
  A lanes[kLanes] = {};
  int64_t k = 0;
  for (int64_t n = 0; k + kLanes <= K; k += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) lanes[l] += y[k + l] * static_cast<A>(x[k + l]);
    if ((n += kLanes) == kFoldBlock) {
      for (int64_t l = 0; l < kLanes; ++l) {
        d += static_cast<double>(lanes[l]);
        lanes[l] = 0;
      }
      n = 0;
    }
  }
  for (; k < K; ++k) d += static_cast<double>(y[k] * static_cast<A>(x[k]));
  for (int64_t l = 0; l < kLanes; ++l) d += static_cast<double>(lanes[l]);
  return d;
}

// grad_k = coef (w exp(scale x_k - lse) - (y_all_k - y_self_k)); y_self may be null.
template <typename I, typename A>
JEM_CPU_MULTIVERSION void grad_row(const I* x, const A* y_all, const A* y_self, int64_t K,
                                   A scale, A lse, A w, A coef, I* grad) {
  if (y_self != nullptr) {
    for (int64_t k = 0; k < K; ++k) {
      const A p = exp_vectorizable(scale * static_cast<A>(x[k]) - lse);
      grad[k] = static_cast<I>(coef * (w * p - (y_all[k] - y_self[k])));
    }
  } else {
    for (int64_t k = 0; k < K; ++k) {
      const A p = exp_vectorizable(scale * static_cast<A>(x[k]) - lse);
      grad[k] = static_cast<I>(coef * (w * p - y_all[k]));
    }
  }
}

}  // namespace

template <typename I, typename A>
void forward_cpu(const Problem& p, const A* const* targets, const I* const* logits, A* lse,
                 A* contribution, A* mass) {
  const int64_t T = p.targets, V = p.views, B = p.rows, K = p.cols;
  const A scale = static_cast<A>(p.scale);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> y_all(K);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(y_all.begin(), y_all.end(), A(0));
      double total_mass = 0.0;
      for (int64_t t = 0; t < T; ++t) {
        const A* y = targets[t] + b * K;
        const double m = sum_row(y, K);
        mass[t * B + b] = static_cast<A>(m);
        total_mass += m;
        add_into(y_all.data(), y, K);
      }
      for (int64_t v = 0; v < V; ++v) {
        const I* x = logits[v] + b * K;
        const A shift = scale * max_row<I, A>(x, K);  // scale > 0
        double exp_sum = 0.0, dot = 0.0;
        exp_sum_and_dot(x, y_all.data(), K, scale, shift, &exp_sum, &dot);
        double w = total_mass;
        if (v < T) {  // the target of this same crop is not a pair
          dot -= dot_row(x, targets[v] + b * K, K);
          w -= static_cast<double>(mass[v * B + b]);
        }
        const double l = static_cast<double>(shift) + std::log(exp_sum);
        lse[v * B + b] = static_cast<A>(l);
        contribution[v * B + b] = static_cast<A>(w * l - static_cast<double>(scale) * dot);
      }
    }
  });
}

template <typename I, typename A>
void backward_cpu(const Problem& p, const A* const* targets, const I* const* logits,
                  const A* lse, const A* mass, A coef, I* const* grads) {
  const int64_t T = p.targets, V = p.views, B = p.rows, K = p.cols;
  const A scale = static_cast<A>(p.scale);
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<A> y_all(K);
    for (int64_t b = begin; b < end; ++b) {
      std::fill(y_all.begin(), y_all.end(), A(0));
      A total_mass = 0;
      for (int64_t t = 0; t < T; ++t) {
        add_into(y_all.data(), targets[t] + b * K, K);
        total_mass += mass[t * B + b];
      }
      for (int64_t v = 0; v < V; ++v) {
        const A* y_self = v < T ? targets[v] + b * K : nullptr;
        const A w = v < T ? total_mass - mass[v * B + b] : total_mass;
        grad_row(logits[v] + b * K, y_all.data(), y_self, K, scale, lse[v * B + b], w, coef,
                 grads[v] + b * K);
      }
    }
  });
}

#define JEM_INSTANTIATE(I, A)                                                                 \
  template void forward_cpu<I, A>(const Problem&, const A* const*, const I* const*, A*, A*,   \
                                  A*);                                                        \
  template void backward_cpu<I, A>(const Problem&, const A* const*, const I* const*,          \
                                   const A*, const A*, A, I* const*);
JEM_INSTANTIATE(float, float)
JEM_INSTANTIATE(double, double)
JEM_INSTANTIATE(c10::Half, float)
JEM_INSTANTIATE(c10::BFloat16, float)
#undef JEM_INSTANTIATE

}  // namespace multiview_ce
}  // namespace jem_fast

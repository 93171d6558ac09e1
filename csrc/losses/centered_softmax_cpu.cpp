// centered_softmax CPU kernel: one row per task, three passes over a row that stays in cache
// (max, exp-sum, write). Exponents are scale (v - m) - log S with v = x - c, m = max_k v and
// S = sum_k exp(scale (v_k - m)): the difference v - m is taken before scaling, so the exponent of
// the largest logit is exactly -log S (exactly 0 when K = 1) whatever |scale v|, and an FMA the
// compiler may form cannot leave a rounding residue of scale v in it.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/cpu_math.h"
#include "common/cpu_multiversion.h"
#include "losses/centered_softmax_kernels.h"

namespace jem_fast {
namespace centered_softmax {

namespace {

// Reductions keep kLanes partial results (see cpu_math.h) so they vectorize.
template <typename I, typename A>
JEM_CPU_MULTIVERSION A centered_max(const I* x, const A* c, int64_t K) {
  A lanes[kLanes];
  for (int64_t l = 0; l < kLanes; ++l) lanes[l] = -std::numeric_limits<A>::infinity();
  int64_t k = 0;
  for (; k + kLanes <= K; k += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const A v = static_cast<A>(x[k + l]) - (c ? c[k + l] : A(0));
      lanes[l] = v > lanes[l] ? v : lanes[l];
    }
  }
  A m = -std::numeric_limits<A>::infinity();
  for (; k < K; ++k) {
    const A v = static_cast<A>(x[k]) - (c ? c[k] : A(0));
    m = v > m ? v : m;
  }
  for (int64_t l = 0; l < kLanes; ++l) m = lanes[l] > m ? lanes[l] : m;
  return m;
}

template <typename I, typename A>
JEM_CPU_MULTIVERSION double centered_exp_sum(const I* x, const A* c, int64_t K, A scale, A m) {
  double total = 0.0;
  A lanes[kLanes] = {};
  int64_t k = 0;
  for (int64_t n = 0; k + kLanes <= K; k += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      const A v = static_cast<A>(x[k + l]) - (c ? c[k + l] : A(0));
      lanes[l] += exp_vectorizable(scale * (v - m));
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
    const A v = static_cast<A>(x[k]) - (c ? c[k] : A(0));
    total += static_cast<double>(exp_vectorizable(scale * (v - m)));
  }
  for (int64_t l = 0; l < kLanes; ++l) total += static_cast<double>(lanes[l]);
  return total;
}

template <typename I, typename A>
JEM_CPU_MULTIVERSION void centered_write(const I* x, const A* c, int64_t K, A scale, A m,
                                         A log_s, A* out) {
  for (int64_t k = 0; k < K; ++k) {
    const A v = static_cast<A>(x[k]) - (c ? c[k] : A(0));
    out[k] = exp_vectorizable(scale * (v - m) - log_s);
  }
}

}  // namespace

template <typename I, typename A>
void forward_cpu(const I* x, const A* center, int64_t B, int64_t K, A scale, A* out) {
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const I* row = x + b * K;
      const A m = centered_max(row, center, K);  // scale > 0: the max of scale v too
      const A log_s = static_cast<A>(std::log(centered_exp_sum(row, center, K, scale, m)));
      centered_write(row, center, K, scale, m, log_s, out + b * K);
    }
  });
}

template void forward_cpu<float, float>(const float*, const float*, int64_t, int64_t, float, float*);
template void forward_cpu<double, double>(const double*, const double*, int64_t, int64_t, double,
                                          double*);
template void forward_cpu<c10::Half, float>(const c10::Half*, const float*, int64_t, int64_t,
                                            float, float*);
template void forward_cpu<c10::BFloat16, float>(const c10::BFloat16*, const float*, int64_t,
                                                int64_t, float, float*);

}  // namespace centered_softmax
}  // namespace jem_fast

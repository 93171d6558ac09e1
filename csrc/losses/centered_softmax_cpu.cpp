// centered_softmax CPU kernel: one row per task, three passes over a row that stays in cache
// (max, exp-sum, write).
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
JEM_CPU_MULTIVERSION double centered_exp_sum(const I* x, const A* c, int64_t K, A scale,
                                             A shift) {
  double total = 0.0;
  A lanes[kLanes] = {};
  int64_t k = 0;
  for (int64_t n = 0; k + kLanes <= K; k += kLanes) {
    for (int64_t l = 0; l < kLanes; ++l) {
      lanes[l] += exp_vectorizable(scale * (static_cast<A>(x[k + l]) - (c ? c[k + l] : A(0))) - shift);
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
    total += static_cast<double>(
        exp_vectorizable(scale * (static_cast<A>(x[k]) - (c ? c[k] : A(0))) - shift));
  }
  for (int64_t l = 0; l < kLanes; ++l) total += static_cast<double>(lanes[l]);
  return total;
}

template <typename I, typename A>
JEM_CPU_MULTIVERSION void centered_write(const I* x, const A* c, int64_t K, A scale, A lse,
                                         A* out) {
  for (int64_t k = 0; k < K; ++k) {
    out[k] = exp_vectorizable(scale * (static_cast<A>(x[k]) - (c ? c[k] : A(0))) - lse);
  }
}

}  // namespace

template <typename I, typename A>
void forward_cpu(const I* x, const A* center, int64_t B, int64_t K, A scale, A* out) {
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      const I* row = x + b * K;
      const A shift = scale * centered_max(row, center, K);  // scale > 0
      const A lse =
          shift + static_cast<A>(std::log(centered_exp_sum(row, center, K, scale, shift)));
      centered_write(row, center, K, scale, lse, out + b * K);
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

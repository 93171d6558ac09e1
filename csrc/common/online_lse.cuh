// Online log-sum-exp on the device: a pair (m, s) stands for s * exp(m); adding an element or
// merging two pairs keeps the larger shift, so sums of exp(x) over any range never overflow.
// Shared by the Sinkhorn, multi-view cross-entropy and centered-softmax kernels. CUDA headers
// only.
#pragma once

#include <cuda_runtime.h>

#include <cmath>

namespace jem_fast {
namespace cuda {

// expf/logf, not __expf/__logf: the fast versions' error grows with |x| (~1e-5 relative at
// |x| ~ 80) and the kernels using these are memory bound, so accuracy costs nothing measurable.
__device__ __forceinline__ float acc_exp(float x) { return expf(x); }
__device__ __forceinline__ double acc_exp(double x) { return exp(x); }
__device__ __forceinline__ float acc_log(float x) { return logf(x); }
__device__ __forceinline__ double acc_log(double x) { return log(x); }

// Empty pairs are (-inf, 0) and merge as the identity.
template <typename A>
__device__ __forceinline__ void merge_lse(A& m, A& s, A m2, A s2) {
  if (s2 == A(0)) return;
  if (s == A(0)) {
    m = m2;
    s = s2;
  } else if (m2 > m) {
    s = s * acc_exp(m - m2) + s2;
    m = m2;
  } else {
    s += s2 * acc_exp(m2 - m);
  }
}

// One exp per element unless the maximum moves. A -inf element adds exp(-inf) = 0 and is skipped:
// computing exp(x - m) with m == x == -inf would give NaN and poison the whole pair (the CPU
// kernels skip it too). NaN still propagates.
template <typename A>
__device__ __forceinline__ void add_lse(A& m, A& s, A x) {
  if (x > m) {
    s = s * acc_exp(m - x) + A(1);
    m = x;
  } else if (x != A(-INFINITY)) {
    s += acc_exp(x - m);
  }
}

// Merge of every thread's pair over a 1-D block (blockDim.x a multiple of 32, at most 1024);
// the result is valid in thread 0. shared_m / shared_s hold at least 32 values each. Every
// thread of the block must call it (it has barriers); it ends with one, so the caller may reuse
// the shared arrays right away.
template <typename A>
__device__ void block_merge_lse(A& m, A& s, A* shared_m, A* shared_s) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    merge_lse(m, s, __shfl_down_sync(0xffffffffu, m, offset),
              __shfl_down_sync(0xffffffffu, s, offset));
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    shared_m[warp] = m;
    shared_s[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    const int nwarps = blockDim.x >> 5;
    m = lane < nwarps ? shared_m[lane] : A(-INFINITY);
    s = lane < nwarps ? shared_s[lane] : A(0);
    for (int offset = 16; offset > 0; offset >>= 1) {
      merge_lse(m, s, __shfl_down_sync(0xffffffffu, m, offset),
                __shfl_down_sync(0xffffffffu, s, offset));
    }
  }
  __syncthreads();
}

}  // namespace cuda
}  // namespace jem_fast

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

// Merge of every thread's pair over a 1-D block (blockDim.x a multiple of 32, at most 1024)
// with `merge(m, s, m2, s2)`; the result is valid in thread 0. shared_m / shared_s hold at least
// 32 values each. Every thread of the block must call it (it has barriers); it ends with one, so
// the caller may reuse the shared arrays right away.
template <typename A, typename Merge>
__device__ void block_merge_pairs(A& m, A& s, A* shared_m, A* shared_s, Merge merge) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    merge(m, s, __shfl_down_sync(0xffffffffu, m, offset), __shfl_down_sync(0xffffffffu, s, offset));
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
      merge(m, s, __shfl_down_sync(0xffffffffu, m, offset),
            __shfl_down_sync(0xffffffffu, s, offset));
    }
  }
  __syncthreads();
}

template <typename A>
__device__ void block_merge_lse(A& m, A& s, A* shared_m, A* shared_s) {
  block_merge_pairs(m, s, shared_m, shared_s,
                    [](A& m1, A& s1, A m2, A s2) { merge_lse(m1, s1, m2, s2); });
}

// The same pairs over raw values v with a positive scale: (m, s) stands for s * exp(scale m),
// m is the running maximum of v itself and every exponent is scale (v - m): the difference is
// taken before scaling, so the largest element contributes exactly 1 whatever |scale v|, and an
// FMA the compiler may form cannot leave a rounding residue of scale v in the sum.
template <typename A>
__device__ __forceinline__ void merge_lse_scaled(A& m, A& s, A m2, A s2, A scale) {
  if (s2 == A(0)) return;
  if (s == A(0)) {
    m = m2;
    s = s2;
  } else if (m2 > m) {
    s = s * acc_exp(scale * (m - m2)) + s2;
    m = m2;
  } else {
    s += s2 * acc_exp(scale * (m2 - m));
  }
}

template <typename A>
__device__ __forceinline__ void add_lse_scaled(A& m, A& s, A v, A scale) {
  if (v > m) {
    s = s * acc_exp(scale * (m - v)) + A(1);
    m = v;
  } else if (v != A(-INFINITY)) {
    s += acc_exp(scale * (v - m));
  }
}

// block_merge_lse for scaled pairs (same contract).
template <typename A>
__device__ void block_merge_lse_scaled(A& m, A& s, A scale, A* shared_m, A* shared_s) {
  block_merge_pairs(m, s, shared_m, shared_s,
                    [scale](A& m1, A& s1, A m2, A s2) { merge_lse_scaled(m1, s1, m2, s2, scale); });
}

// Float-float helpers (no FP64 arithmetic per element: FP64 runs at 1/64 of the FP32 rate on
// consumer GPUs). A double d is carried as hi + lo with hi = float(d), lo = float(d - hi): 48
// significant bits, enough for the exponents scale x - lse of the loss kernels and the
// Sinkhorn potentials, whose terms reach ~1e7 while their sum is O(1).
struct FloatPair {
  float hi, lo;
};

__host__ __device__ __forceinline__ FloatPair split_double(double d) {
  const float hi = static_cast<float>(d);
  // Beyond float range (hi = +-inf) or NaN there is no low part: lo = 0, so hi + lo is hi.
  const bool finite = hi - hi == 0.0f;
  return {hi, finite ? static_cast<float>(d - static_cast<double>(hi)) : 0.0f};
}

}  // namespace cuda
}  // namespace jem_fast

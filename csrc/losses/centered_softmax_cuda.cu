// centered_softmax CUDA kernel: one block per row; an online (max, sum-exp) pass merged through
// the block, then the write pass (the row is re-read from L2). CUDA headers only.
#include <cmath>

#include "common/cuda_utils.cuh"
#include "losses/centered_softmax_kernels.h"

namespace jem_fast {
namespace centered_softmax {

namespace {

using cuda::acc_t;
using cuda::load_acc;

constexpr int kThreads = 512;

// expf, not __expf: its error grows with |x| (~1e-5 relative at |x| ~ 80) and these kernels
// are memory bound, so the accurate version costs nothing measurable.
__device__ __forceinline__ float acc_exp(float x) { return expf(x); }
__device__ __forceinline__ double acc_exp(double x) { return exp(x); }

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

template <typename I, typename A>
__global__ void centered_softmax_kernel(const I* __restrict__ x, const A* __restrict__ center,
                                        int64_t K, A scale, A* __restrict__ out) {
  __shared__ A shared_m[32], shared_s[32];
  __shared__ A row_lse;
  const int64_t b = blockIdx.x;
  const I* row = x + b * K;
  A m = -INFINITY, s = 0;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const A z = scale * (load_acc(row + k) - (center ? center[k] : A(0)));
    merge_lse(m, s, z, A(1));
  }
  for (int offset = 16; offset > 0; offset >>= 1) {
    merge_lse(m, s, __shfl_down_sync(0xffffffffu, m, offset), __shfl_down_sync(0xffffffffu, s, offset));
  }
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    shared_m[warp] = m;
    shared_s[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    const int nwarps = blockDim.x >> 5;
    m = lane < nwarps ? shared_m[lane] : -INFINITY;
    s = lane < nwarps ? shared_s[lane] : A(0);
    for (int offset = 16; offset > 0; offset >>= 1) {
      merge_lse(m, s, __shfl_down_sync(0xffffffffu, m, offset), __shfl_down_sync(0xffffffffu, s, offset));
    }
    if (lane == 0) row_lse = m + log(s);
  }
  __syncthreads();
  const A lse = row_lse;
  A* o = out + b * K;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    o[k] = acc_exp(scale * (load_acc(row + k) - (center ? center[k] : A(0))) - lse);
  }
}

}  // namespace

void forward_cuda(DType dtype, const void* x, const void* center, int64_t B, int64_t K,
                  double scale, void* out, cudaStream_t stream) {
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using I = decltype(tag);
    using A = acc_t<I>;
    centered_softmax_kernel<I, A><<<static_cast<unsigned>(B), kThreads, 0, stream>>>(
        static_cast<const I*>(x), static_cast<const A*>(center), K, static_cast<A>(scale),
        static_cast<A*>(out));
    cuda::check_launch("centered_softmax_kernel");
  });
}

}  // namespace centered_softmax
}  // namespace jem_fast

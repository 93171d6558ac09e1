// centered_softmax CUDA kernel: one block per row; an online (max, sum-exp) pass merged through
// the block, then the write pass (the row is re-read from L2). CUDA headers only.
#include <cmath>

#include "common/cuda_utils.cuh"
#include "common/online_lse.cuh"
#include "losses/centered_softmax_kernels.h"

namespace jem_fast {
namespace centered_softmax {

namespace {

using cuda::acc_t;
using cuda::acc_exp;
using cuda::acc_log;
using cuda::add_lse;
using cuda::block_merge_lse;
using cuda::load_acc;

constexpr int kThreads = 512;

template <typename I, typename A>
__global__ void __launch_bounds__(kThreads)
centered_softmax_kernel(const I* __restrict__ x, const A* __restrict__ center,
                                        int64_t K, A scale, A* __restrict__ out) {
  __shared__ A shared_m[32], shared_s[32];
  __shared__ A row_lse;
  const int64_t b = blockIdx.x;
  const I* row = x + b * K;
  A m = -INFINITY, s = 0;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const A z = scale * (load_acc(row + k) - (center ? center[k] : A(0)));
    add_lse(m, s, z);
  }
  block_merge_lse(m, s, shared_m, shared_s);
  if (threadIdx.x == 0) row_lse = m + acc_log(s);
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
    cuda::launch("centered_softmax", centered_softmax_kernel<I, A>, dim3(static_cast<unsigned>(B)),
                 dim3(kThreads), 0, stream, static_cast<const I*>(x), static_cast<const A*>(center),
                 K, static_cast<A>(scale), static_cast<A*>(out));
  });
}

}  // namespace centered_softmax
}  // namespace jem_fast

// centered_softmax CUDA kernel: one block per row; an online (max, sum-exp) pass merged through
// the block, then the write pass (the row is re-read from L2). Exponents are scale (v - m) -
// log S with v = x - c and m = max v (online_lse.cuh's scaled pairs): the largest logit gets
// exactly exp(-log S), 1 when K = 1, whatever |scale v|. CUDA headers only.
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
using cuda::add_lse_scaled;
using cuda::block_merge_lse_scaled;
using cuda::load_acc;

constexpr int kThreads = 512;

template <typename I, typename A>
__global__ void __launch_bounds__(kThreads)
centered_softmax_kernel(const I* __restrict__ x, const A* __restrict__ center,
                                        int64_t K, A scale, A* __restrict__ out) {
  __shared__ A shared_m[32], shared_s[32];
  __shared__ A row_max, row_log_s;
  const int64_t b = blockIdx.x;
  const I* row = x + b * K;
  A m = -INFINITY, s = 0;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    add_lse_scaled(m, s, load_acc(row + k) - (center ? center[k] : A(0)), scale);
  }
  block_merge_lse_scaled(m, s, scale, shared_m, shared_s);
  if (threadIdx.x == 0) {
    row_max = m;
    row_log_s = acc_log(s);
  }
  __syncthreads();
  const A mx = row_max, log_s = row_log_s;
  A* o = out + b * K;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const A v = load_acc(row + k) - (center ? center[k] : A(0));
    o[k] = acc_exp(scale * (v - mx) - log_s);
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

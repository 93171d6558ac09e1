// VICReg CUDA kernels: the O(D) finalize of the column moments (column blocks + a fixed-order
// merge, deterministic) and the fused gradient epilogue (covariance, variance hinge and invariance gradients written once).
#include <cmath>

#include "common/cuda_utils.cuh"
#include "losses/column_moments.cuh"
#include "losses/covariance_kernels.h"

namespace jem_fast {
namespace covariance {

using cuda::acc_t;
using cuda::ceil_div;
using cuda::load_acc;

namespace {

template <typename A>
__global__ void __launch_bounds__(kFinalizeThreads)
vicreg_finalize_columns_kernel(const double* __restrict__ partials, int64_t num_splits, int64_t N,
                               int64_t D, double eps, A* __restrict__ colstats,
                               FinalizeBlockPartials block_partials) {
  __shared__ double shared[32];
  __shared__ int shared_flags;
  const double n = static_cast<double>(N);
  double invariance = 0.0, hinge = 0.0, diagsq = 0.0;
  int local_flags = 0;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d < D) {  // no barrier inside: the reductions below are reached by every thread
    double s[kNumMoments - 2];
    local_flags = sum_moment_splits(partials, num_splits, D, d, s);
    const double m2a = fmax(s[kSumAA] - s[kSumA] * s[kSumA] / n, 0.0);
    const double m2b = fmax(s[kSumBB] - s[kSumB] * s[kSumB] / n, 0.0);
    const double std_a = sqrt(m2a / (n - 1.0) + eps);
    const double std_b = sqrt(m2b / (n - 1.0) + eps);
    hinge = fmax(1.0 - std_a, 0.0) + fmax(1.0 - std_b, 0.0);
    diagsq = m2a * m2a + m2b * m2b;
    invariance = s[kSumDiffSq];
    colstats[kMeanA * D + d] = static_cast<A>(column_mean(partials, D, d, 0, s[kSumA], n));
    colstats[kMeanB * D + d] = static_cast<A>(column_mean(partials, D, d, 1, s[kSumB], n));
    colstats[kStat2A * D + d] = static_cast<A>(m2a);
    colstats[kStat2B * D + d] = static_cast<A>(m2b);
    colstats[kStat3A * D + d] = static_cast<A>(std_a);
    colstats[kStat3B * D + d] = static_cast<A>(std_b);
  }
  double sums[kFinalizeSumsPerBlock] = {invariance, hinge, diagsq};
  store_finalize_block(block_partials, sums, local_flags, shared, &shared_flags);
}

template <typename A>
__global__ void __launch_bounds__(kFinalizeThreads)
vicreg_finalize_terms_kernel(FinalizeBlockPartials block_partials, int num_blocks, int64_t N,
                             int64_t D, bool gram_route, A* __restrict__ terms,
                             int* __restrict__ flags) {
  __shared__ double shared[32];
  __shared__ int shared_flags;
  double sums[kFinalizeSumsPerBlock];
  const int block_flags = merge_finalize_blocks(block_partials, num_blocks, sums, shared,
                                                &shared_flags);
  const double invariance = sums[0], hinge = sums[1], diagsq = sums[2];
  if (threadIdx.x == 0) {
    const double n = static_cast<double>(N), dd = static_cast<double>(D);
    int f = block_flags;
    if (!isfinite(invariance) && f == 0) f = kNonFiniteA | kNonFiniteB;
    *flags = f;
    terms[0] = static_cast<A>(invariance / (n * dd));
    terms[1] = static_cast<A>(0.5 * hinge / dd);
    terms[2] = static_cast<A>(gram_route ? -diagsq / ((n - 1.0) * (n - 1.0) * dd) : 0.0);
  }
}

constexpr int kElementwiseThreads = 256;

// `y` and `grad` may be the same buffer: each element is read before it is written.
template <typename T>
__global__ void __launch_bounds__(kElementwiseThreads)
vicreg_backward_view_kernel(const acc_t<T>* __restrict__ grad_terms,
                                            const acc_t<T>* y,
                                            const T* __restrict__ x,
                                            const T* __restrict__ x_other,
                                            const acc_t<T>* __restrict__ colstats, int view,
                                            int64_t N, int64_t D, bool diagonal_in_y, T* grad) {
  using A = acc_t<T>;
  const A n = static_cast<A>(N), dd = static_cast<A>(D);
  const A g_inv = grad_terms[0], g_var = grad_terms[1], g_cov = grad_terms[2];
  const A alpha = g_cov * A(4) / ((n - A(1)) * (n - A(1)) * dd);
  const A beta = g_inv * A(2) / (n * dd);
  const A* mean_self = colstats + (view == 0 ? kMeanA : kMeanB) * D;
  const A* mean_other = colstats + (view == 0 ? kMeanB : kMeanA) * D;
  const A* m2 = colstats + (view == 0 ? kStat2A : kStat2B) * D;
  const A* stdev = colstats + (view == 0 ? kStat3A : kStat3B) * D;
  // y = x C with the diagonal of C (removed here), or x (C - diag C) already.
  const A diag_coef = diagonal_in_y ? alpha : A(0);
  const int64_t total = N * D;
  for (cuda::GridStrideCursor c(D); c.i < total; c.advance()) {
    const int64_t i = c.i, d = c.col;
    const A s = stdev[d];
    // relu'(0) = 0 as in torch: only columns with std below 1 are pulled.
    const A hinge = s < A(1) ? g_var * A(0.5) / (dd * (n - A(1)) * s) : A(0);
    const A colscale = -diag_coef * m2[d] - hinge;
    const A xv = load_acc(x + i);
    const A diff = xv - load_acc(x_other + i) + (mean_self[d] - mean_other[d]);
    grad[i] = cuda::store_cast<T>(static_cast<double>(alpha * y[i] + xv * colscale + beta * diff));
  }
}

}  // namespace

void vicreg_finalize_cuda(bool is_double, const void* partials, int64_t num_splits, int64_t N,
                          int64_t D, double eps, bool gram_route, void* colstats, void* terms,
                          int* flags, void* workspace, cudaStream_t stream) {
  const int num_blocks = finalize_num_blocks(D);
  const FinalizeBlockPartials block_partials = finalize_block_partials(workspace, num_blocks);
  cuda::dispatch_acc(is_double, [&](auto tag) {
    using A = decltype(tag);
    cuda::launch("vicreg_finalize_columns", vicreg_finalize_columns_kernel<A>,
                 dim3(static_cast<unsigned>(num_blocks)), dim3(kFinalizeThreads), 0, stream,
                 static_cast<const double*>(partials), num_splits, N, D, eps, static_cast<A*>(colstats),
                 block_partials);
    cuda::launch("vicreg_finalize_terms", vicreg_finalize_terms_kernel<A>, dim3(1),
                 dim3(kFinalizeThreads), 0, stream, block_partials, num_blocks, N, D, gram_route,
                 static_cast<A*>(terms), flags);
  });
}

void vicreg_backward_view_cuda(DType dtype, const void* grad_terms, const void* y, const void* x,
                               const void* x_other, const void* colstats, int view, int64_t N,
                               int64_t D, bool diagonal_in_y, void* grad, cudaStream_t stream) {
  const unsigned blocks = cuda::elementwise_blocks(N * D, kElementwiseThreads, 8192);
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    cuda::launch("vicreg_backward_view", vicreg_backward_view_kernel<T>, dim3(blocks),
                 dim3(kElementwiseThreads), 0, stream, static_cast<const A*>(grad_terms),
                 static_cast<const A*>(y), static_cast<const T*>(x),
                 static_cast<const T*>(x_other), static_cast<const A*>(colstats), view, N, D,
                 diagonal_in_y, static_cast<T*>(grad));
  });
}

}  // namespace covariance
}  // namespace jem_fast

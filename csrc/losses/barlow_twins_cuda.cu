// Barlow Twins CUDA kernels: the O(D) finalize (batch-norm statistics and the on-diagonal terms;
// column blocks + a fixed-order merge, deterministic) and the gradient through the batch norm:
// a split-row column reduction followed by one elementwise pass that writes the gradient once.
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

constexpr double kBatchNormEps = 1e-5;  // F.batch_norm's default, what lightly uses
constexpr int kCoefficientThreads = 256;
constexpr int kElementwiseThreads = 256;
constexpr int kTileCols = 32;
constexpr int kTileRows = 8;

template <typename A>
__global__ void __launch_bounds__(kFinalizeThreads)
barlow_twins_finalize_columns_kernel(const double* __restrict__ partials, int64_t num_splits,
                                     int64_t N, int64_t D, A* __restrict__ colstats,
                                     FinalizeBlockPartials block_partials) {
  __shared__ double shared[32];
  __shared__ int shared_flags;
  const double n = static_cast<double>(N);
  double on_diag = 0.0, diagsq = 0.0;
  int local_flags = 0;
  const int64_t d = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (d < D) {  // no barrier inside: the reductions below are reached by every thread
    double s[kNumMoments - 2];
    local_flags = sum_moment_splits(partials, num_splits, D, d, s);
    const double var_a = fmax(s[kSumAA] - s[kSumA] * s[kSumA] / n, 0.0) / n;
    const double var_b = fmax(s[kSumBB] - s[kSumB] * s[kSumB] / n, 0.0) / n;
    const double inv_std_a = 1.0 / sqrt(var_a + kBatchNormEps);
    const double inv_std_b = 1.0 / sqrt(var_b + kBatchNormEps);
    const double c = (s[kSumAB] - s[kSumA] * s[kSumB] / n) * inv_std_a * inv_std_b / n;
    on_diag = (c - 1.0) * (c - 1.0);
    diagsq = c * c;
    colstats[kMeanA * D + d] = static_cast<A>(column_mean(partials, D, d, 0, s[kSumA], n));
    colstats[kMeanB * D + d] = static_cast<A>(column_mean(partials, D, d, 1, s[kSumB], n));
    colstats[kStat2A * D + d] = static_cast<A>(inv_std_a);
    colstats[kStat2B * D + d] = static_cast<A>(inv_std_b);
    colstats[kStat3A * D + d] = static_cast<A>(c);
    colstats[kStat3B * D + d] = static_cast<A>(c - 1.0);  // not 1 - rounded c: see the header
  }
  double sums[kFinalizeSumsPerBlock] = {on_diag, diagsq, 0.0};
  store_finalize_block(block_partials, sums, local_flags, shared, &shared_flags);
}

template <typename A>
__global__ void __launch_bounds__(kFinalizeThreads)
barlow_twins_finalize_terms_kernel(FinalizeBlockPartials block_partials, int num_blocks,
                                   bool gram_route, A* __restrict__ terms,
                                   int* __restrict__ flags) {
  __shared__ double shared[32];
  __shared__ int shared_flags;
  double sums[kFinalizeSumsPerBlock];
  const int block_flags = merge_finalize_blocks(block_partials, num_blocks, sums, shared,
                                                &shared_flags);
  const double on_diag = sums[0], diagsq = sums[1];
  if (threadIdx.x == 0) {
    int f = block_flags;
    if (!isfinite(on_diag) && f == 0) f = kNonFiniteA | kNonFiniteB;
    *flags = f;
    terms[0] = static_cast<A>(on_diag);
    terms[1] = static_cast<A>(gram_route ? -diagsq : 0.0);
  }
}

// Batch-norm backward: grad = inv_std * (dA - mean_n dA - self * mean_n(dA * self)). The
// normalized columns have zero mean, so mean_n dA = 0 (1^T B = 0 makes 1^T y = 0 too), and
// mean_n(other * self) = c: only sum_n y * self needs a reduction, done here per row split.
template <typename T>
__global__ void __launch_bounds__(kTileCols * kTileRows)
barlow_sum_y_self_kernel(const acc_t<T>* __restrict__ y,
                                         const T* __restrict__ self_norm, int64_t N, int64_t D,
                                         int64_t rows_per_split, acc_t<T>* __restrict__ partials) {
  using A = acc_t<T>;
  __shared__ A shared[kTileRows][kTileCols];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTileCols + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t r1 = r0 + rows_per_split < N ? r0 + rows_per_split : N;
  A acc = A(0);
  if (col < D) {
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kTileRows) {
      const int64_t i = r * D + col;
      acc += y[i] * load_acc(self_norm + i);
    }
  }
  shared[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && col < D) {
    A s = A(0);
    for (int yy = 0; yy < kTileRows; ++yy) s += shared[yy][threadIdx.x];
    partials[static_cast<int64_t>(blockIdx.y) * D + col] = s;
  }
}

// Per-column coefficients from the split partial sums: coef (of other) and mean_n(dA * self).
template <typename A>
__global__ void __launch_bounds__(kCoefficientThreads)
barlow_column_coefficients_kernel(const A* __restrict__ grad_terms,
                                                  const A* __restrict__ colstats, int64_t N,
                                                  int64_t D, int64_t num_splits,
                                                  const A* __restrict__ partials,
                                                  A* __restrict__ coefficients) {
  const int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (col >= D) return;
  const A n = static_cast<A>(N);
  const A g0 = grad_terms[0], g1 = grad_terms[1];
  const A alpha = A(2) * g1 / (n * n);
  A sum_ya = A(0);
  for (int64_t k = 0; k < num_splits; ++k) sum_ya += partials[k * D + col];
  const A c = colstats[kStat3A * D + col];
  const A c_minus_1 = colstats[kStat3B * D + col];
  const A coef = A(2) * (g0 * c_minus_1 - g1 * c) / n;
  coefficients[col] = coef;
  coefficients[D + col] = alpha * sum_ya / n + coef * c;
}

// `y` and `grad` may be the same buffer: each element is read before it is written.
template <typename T>
__global__ void __launch_bounds__(kElementwiseThreads)
barlow_backward_apply_kernel(const acc_t<T>* __restrict__ grad_terms,
                                             const acc_t<T>* y,
                                             const T* __restrict__ self_norm,
                                             const T* __restrict__ other_norm,
                                             const acc_t<T>* __restrict__ colstats, int view,
                                             int64_t N, int64_t D,
                                             const acc_t<T>* __restrict__ coefficients,
                                             T* grad) {
  using A = acc_t<T>;
  const A n = static_cast<A>(N);
  const A alpha = A(2) * grad_terms[1] / (n * n);
  const A* inv_std = colstats + (view == 0 ? kStat2A : kStat2B) * D;
  const int64_t total = N * D;
  for (cuda::GridStrideCursor c(D); c.i < total; c.advance()) {
    const int64_t i = c.i, d = c.col;
    const A a = load_acc(self_norm + i);
    const A da = alpha * y[i] + coefficients[d] * load_acc(other_norm + i);
    grad[i] = cuda::store_cast<T>(static_cast<double>(inv_std[d] * (da - a * coefficients[D + d])));
  }
}

}  // namespace

void barlow_twins_finalize_cuda(bool is_double, const void* partials, int64_t num_splits,
                                int64_t N, int64_t D, bool gram_route, void* colstats,
                                void* terms, int* flags, void* workspace, cudaStream_t stream) {
  const int num_blocks = finalize_num_blocks(D);
  const FinalizeBlockPartials block_partials = finalize_block_partials(workspace, num_blocks);
  cuda::dispatch_acc(is_double, [&](auto tag) {
    using A = decltype(tag);
    cuda::launch("barlow_twins_finalize_columns", barlow_twins_finalize_columns_kernel<A>,
                 dim3(static_cast<unsigned>(num_blocks)), dim3(kFinalizeThreads), 0, stream,
                 static_cast<const double*>(partials), num_splits, N, D, static_cast<A*>(colstats),
                 block_partials);
    cuda::launch("barlow_twins_finalize_terms", barlow_twins_finalize_terms_kernel<A>, dim3(1),
                 dim3(kFinalizeThreads), 0, stream, block_partials, num_blocks, gram_route,
                 static_cast<A*>(terms), flags);
  });
}

void barlow_twins_backward_view_cuda(DType dtype, const void* grad_terms, const void* y,
                                     const void* self_norm, const void* other_norm,
                                     const void* colstats, int view, int64_t N, int64_t D,
                                     void* grad, void* workspace, cudaStream_t stream) {
  const int64_t splits = moments_num_row_splits_cuda(N, D);
  const int64_t rows_per_split = ceil_div(N, splits);
  const dim3 grid(static_cast<unsigned>(ceil_div(D, kTileCols)), static_cast<unsigned>(splits));
  const dim3 block(kTileCols, kTileRows);
  const unsigned apply_blocks = cuda::elementwise_blocks(N * D, kElementwiseThreads, 8192);
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    A* partials = static_cast<A*>(workspace);
    A* coefficients = partials + splits * D;
    cuda::launch("barlow_sum_y_self", barlow_sum_y_self_kernel<T>, grid, block, 0, stream,
                 static_cast<const A*>(y), static_cast<const T*>(self_norm), N, D, rows_per_split,
                 partials);
    cuda::launch("barlow_column_coefficients", barlow_column_coefficients_kernel<A>,
                 dim3(static_cast<unsigned>(ceil_div(D, kCoefficientThreads))),
                 dim3(kCoefficientThreads), 0, stream, static_cast<const A*>(grad_terms),
                 static_cast<const A*>(colstats), N, D, splits,
                 static_cast<const A*>(partials), coefficients);
    cuda::launch("barlow_backward_apply", barlow_backward_apply_kernel<T>, dim3(apply_blocks),
                 dim3(kElementwiseThreads), 0, stream, static_cast<const A*>(grad_terms),
                 static_cast<const A*>(y), static_cast<const T*>(self_norm),
                 static_cast<const T*>(other_norm), static_cast<const A*>(colstats), view, N, D,
                 static_cast<const A*>(coefficients), static_cast<T*>(grad));
  });
}

}  // namespace covariance
}  // namespace jem_fast

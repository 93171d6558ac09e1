// Sinkhorn-Knopp CUDA kernels. Column step: threads own columns (coalesced along a row) and a
// slice of rows each, keep an online (max, sum) pair, and a second small kernel merges the row
// slices. Row step: one block per row, online (max, sum) per thread merged through the block.
// Plan: one block per row. Scores are read in their own dtype and promoted to float32 (float64
// for float64 scores); CUDA headers only.
#include <algorithm>
#include <cmath>

#include "cluster/sinkhorn_knopp_kernels.h"
#include "common/cuda_utils.cuh"
#include "common/online_lse.cuh"

namespace jem_fast {
namespace sinkhorn {

namespace {

using cuda::acc_t;
using cuda::ceil_div;
using cuda::acc_exp;
using cuda::acc_log;
using cuda::add_lse;
using cuda::block_merge_lse;
using cuda::load_acc;
using cuda::merge_lse;

constexpr int kColumnThreads = 256;
constexpr int kRowThreads = 256;
// Enough column-step blocks to fill an H100/H200 (132 SMs) a few times over.
constexpr int64_t kTargetBlocks = 132 * 4;
constexpr int64_t kMinRowsPerSlice = 16;

int64_t row_slices(int64_t B, int64_t K) {
  const int64_t column_blocks = ceil_div(K, kColumnThreads);
  int64_t slices = ceil_div(kTargetBlocks, column_blocks);
  slices = std::min<int64_t>(slices, ceil_div(B, kMinRowsPerSlice));
  return std::max<int64_t>(1, std::min<int64_t>(slices, 65535));
}

template <typename T>
__global__ void __launch_bounds__(kColumnThreads)
column_partial_kernel(const T* __restrict__ S, int64_t B, int64_t K,
                                      acc_t<T> scale, const acc_t<T>* __restrict__ f,
                                      int64_t rows_per_slice, acc_t<T>* __restrict__ partial) {
  using A = acc_t<T>;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= K) return;  // no barrier in this kernel
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * rows_per_slice;
  const int64_t b1 = std::min<int64_t>(B, b0 + rows_per_slice);
  A m = -INFINITY, s = 0;
  for (int64_t b = b0; b < b1; ++b) {
    const A x = scale * load_acc(S + b * K + k) + (f ? f[b] : A(0));
    add_lse(m, s, x);
  }
  A* out = partial + static_cast<int64_t>(blockIdx.y) * 2 * K;
  out[k] = m;
  out[K + k] = s;
}

template <typename A>
__global__ void __launch_bounds__(kColumnThreads)
column_merge_kernel(const A* __restrict__ partial, int64_t slices, int64_t K,
                                    A* __restrict__ colmax, A* __restrict__ colsum) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= K) return;
  A m = -INFINITY, s = 0;
  for (int64_t i = 0; i < slices; ++i) merge_lse(m, s, partial[i * 2 * K + k], partial[i * 2 * K + K + k]);
  colmax[k] = m;
  colsum[k] = s;
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
row_potential_kernel(const T* __restrict__ S, int64_t K, acc_t<T> scale,
                                     const acc_t<T>* __restrict__ g, acc_t<T> log_rows,
                                     acc_t<T>* __restrict__ f) {
  using A = acc_t<T>;
  __shared__ A shared_m[32], shared_s[32];
  const int64_t b = blockIdx.x;
  const T* row = S + b * K;
  A m = -INFINITY, s = 0;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) add_lse(m, s, scale * load_acc(row + k) + g[k]);
  block_merge_lse(m, s, shared_m, shared_s);
  if (threadIdx.x == 0) f[b] = -log_rows - (m + acc_log(s));
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
plan_kernel(const T* __restrict__ S, int64_t K, acc_t<T> scale,
                            const acc_t<T>* __restrict__ f, const acc_t<T>* __restrict__ g,
                            acc_t<T> rows, acc_t<T>* __restrict__ Q) {
  using A = acc_t<T>;
  const int64_t b = blockIdx.x;
  const T* row = S + b * K;
  A* out = Q + b * K;
  const A fb = f[b];
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    out[k] = rows * acc_exp(scale * load_acc(row + k) + fb + g[k]);
  }
}

}  // namespace

int64_t column_stats_partials_cuda(int64_t B, int64_t K) { return row_slices(B, K); }

void column_stats_cuda(DType dtype, const void* S, int64_t B, int64_t K, double scale,
                       const void* f, void* partial, void* colmax, void* colsum,
                       cudaStream_t stream) {
  const int64_t slices = row_slices(B, K);
  const int64_t rows_per_slice = ceil_div(B, slices);
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const dim3 grid(static_cast<unsigned>(ceil_div(K, kColumnThreads)), static_cast<unsigned>(slices));
    cuda::launch("sinkhorn column_partial", column_partial_kernel<T>, grid, dim3(kColumnThreads),
                 0, stream, static_cast<const T*>(S), B, K, static_cast<A>(scale),
                 static_cast<const A*>(f), rows_per_slice, static_cast<A*>(partial));
    cuda::launch("sinkhorn column_merge", column_merge_kernel<A>,
                 dim3(static_cast<unsigned>(ceil_div(K, kColumnThreads))), dim3(kColumnThreads), 0,
                 stream, static_cast<const A*>(partial), slices, K, static_cast<A*>(colmax),
                 static_cast<A*>(colsum));
  });
}

void row_potential_cuda(DType dtype, const void* S, int64_t B, int64_t K, double scale,
                        const void* g, double log_rows, void* f, cudaStream_t stream) {
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    cuda::launch("sinkhorn row_potential", row_potential_kernel<T>, dim3(static_cast<unsigned>(B)),
                 dim3(kRowThreads), 0, stream, static_cast<const T*>(S), K, static_cast<A>(scale),
                 static_cast<const A*>(g), static_cast<A>(log_rows), static_cast<A*>(f));
  });
}

void plan_cuda(DType dtype, const void* S, int64_t B, int64_t K, double scale, const void* f,
               const void* g, double rows, void* Q, cudaStream_t stream) {
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    cuda::launch("sinkhorn plan", plan_kernel<T>, dim3(static_cast<unsigned>(B)), dim3(kRowThreads),
                 0, stream, static_cast<const T*>(S), K, static_cast<A>(scale),
                 static_cast<const A*>(f), static_cast<const A*>(g), static_cast<A>(rows),
                 static_cast<A*>(Q));
  });
}

}  // namespace sinkhorn
}  // namespace jem_fast

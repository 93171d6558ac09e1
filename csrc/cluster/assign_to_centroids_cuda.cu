// CUDA kernels of jem_fast::assign_to_centroids: inverse row norms, and the fold of one tile of
// raw dot products (from cuBLAS, see assign_to_centroids.cpp) into each row's running
// (max, argmax). One warp per row in both: a row of the tile is read once, coalesced, and the
// warp's (value, index) pairs meet in a shuffle reduction that prefers the lower index on ties,
// so the result does not depend on which lane saw which column.
#include <cmath>

#include "cluster/assign_to_centroids_kernels.h"
#include "common/cuda_utils.cuh"

namespace jem_fast {
namespace cluster {

using cuda::acc_t;
using cuda::ceil_div;
using cuda::load_acc;

namespace {

constexpr int kWarpsPerBlock = 8;
constexpr int kThreads = 32 * kWarpsPerBlock;

template <typename A>
__device__ __forceinline__ A warp_max(A v) {
  for (int o = 16; o > 0; o >>= 1) v = fmax(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// 1 / ||x_i||, scaled by the row's largest magnitude first so that neither underflowing nor
// overflowing squares give a wrong norm; 0 for a zero row.
template <typename T>
__global__ void __launch_bounds__(kThreads)
inverse_row_norms_kernel(const T* __restrict__ x, int64_t rows, int64_t D,
                                         acc_t<T>* __restrict__ inv_norm) {
  using A = acc_t<T>;
  const int lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (i >= rows) return;  // warp-uniform: a warp owns one row
  const T* row = x + i * D;
  A m = 0;
  for (int64_t d = lane; d < D; d += 32) m = fmax(m, fabs(load_acc(row + d)));
  m = warp_max(m);
  if (!(m > A(0)) || isinf(m)) {
    // zero row -> 0; an infinite entry has no direction -> NaN
    if (lane == 0) inv_norm[i] = m == A(0) ? A(0) : A(NAN);
    return;
  }
  const A inv_m = A(1) / m;
  A s = 0;
  for (int64_t d = lane; d < D; d += 32) {
    const A t = load_acc(row + d) * inv_m;
    s += t * t;
  }
  s = warp_sum(s);
  if (lane == 0) inv_norm[i] = inv_m / sqrt(s);
}

template <typename A>
__global__ void __launch_bounds__(kThreads)
argmax_tile_kernel(const A* __restrict__ S, int64_t rows, int64_t cols,
                                   int64_t col0, const A* __restrict__ inv_x,
                                   const A* __restrict__ inv_c, bool first, bool last,
                                   int64_t* __restrict__ index, A* __restrict__ score) {
  const int lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * kWarpsPerBlock + (threadIdx.x >> 5);
  if (i >= rows) return;  // warp-uniform: a warp owns one row
  const A* s = S + i * cols;
  const A* ic = inv_c + col0;
  A best = A(-INFINITY);
  int64_t arg = col0;
  // Each lane scans increasing columns with a strict comparison: it keeps its lowest index.
  for (int64_t j = lane; j < cols; j += 32) {
    const A v = s[j] * ic[j];
    if (v > best) {
      best = v;
      arg = col0 + j;
    }
  }
  for (int o = 16; o > 0; o >>= 1) {
    const A ob = __shfl_xor_sync(0xffffffffu, best, o);
    const int64_t oa = __shfl_xor_sync(0xffffffffu, arg, o);
    if (ob > best || (ob == best && oa < arg)) {
      best = ob;
      arg = oa;
    }
  }
  if (lane != 0) return;
  // inv_x[i] >= 0 keeps the order, so it is applied once to the winner only.
  best *= inv_x[i];
  if (first || best > score[i]) {
    score[i] = best;
    index[i] = arg;
  }
  if (last && isinf(score[i])) score[i] = A(NAN);  // no comparable cosine: NaN input
}

}  // namespace

void inverse_row_norms_cuda(DType dtype, const void* x, int64_t rows, int64_t D, void* inv_norm,
                            cudaStream_t stream) {
  if (rows == 0) return;
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    cuda::launch("assign_to_centroids inverse_row_norms", inverse_row_norms_kernel<T>,
                 dim3(static_cast<unsigned>(ceil_div(rows, kWarpsPerBlock))), dim3(kThreads), 0,
                 stream, static_cast<const T*>(x), rows, D, static_cast<acc_t<T>*>(inv_norm));
  });
}

void argmax_tile_cuda(bool is_double, const void* S, int64_t rows, int64_t cols, int64_t col0,
                      const void* inv_x, const void* inv_c, bool first, bool last, int64_t* index,
                      void* score, cudaStream_t stream) {
  if (rows == 0 || cols == 0) return;
  cuda::dispatch_acc(is_double, [&](auto tag) {
    using A = decltype(tag);
    cuda::launch("assign_to_centroids argmax_tile", argmax_tile_kernel<A>,
                 dim3(static_cast<unsigned>(ceil_div(rows, kWarpsPerBlock))), dim3(kThreads), 0,
                 stream, static_cast<const A*>(S), rows, cols, col0, static_cast<const A*>(inv_x),
                 static_cast<const A*>(inv_c), first, last, index, static_cast<A*>(score));
  });
}

}  // namespace cluster
}  // namespace jem_fast

// InfoNCE CUDA kernels over one chunk of logits (produced by cuBLAS in the host loop): masked
// row log-sum-exp (one block per row, max then sum), column log-sum-exp (column tiles x row
// slices with an online (max, sum) pair, merged by a second kernel) and the in-place logit
// gradient. Each row masks up to two columns (mask, mask2: self-pair and positive); a masked
// entry is left out of its row and of its column. Exponents are scale * (S - max).
#include <cmath>

#include "common/cuda_utils.cuh"
#include "common/online_lse.cuh"
#include "losses/info_nce_kernels.h"

namespace jem_fast {
namespace info_nce {

using cuda::ceil_div;

namespace {

constexpr int kThreads = 256;
// Column LSE: a block is 32 columns (one warp reads 128 contiguous bytes of a row) x 8 row
// lanes, and the rows are split into slices across grid.y so that a 2048 x 2048 tile runs as
// 64 x 8 = 512 blocks (every SM of an H100/H200 busy a few times over) instead of 8.
constexpr int kColTileCols = 32;
constexpr int kColTileRows = 8;
constexpr int64_t kColMinRowsPerSlice = 64;

int64_t col_lse_slices(int64_t rows, int64_t M) {
  return cuda::row_slices(rows, ceil_div(M, kColTileCols), kColMinRowsPerSlice);
}

template <typename T>
__device__ T block_reduce_max(T v, T* shared) {
  const int tid = threadIdx.x;
  for (int offset = 16; offset > 0; offset >>= 1) v = fmax(v, __shfl_down_sync(0xffffffffu, v, offset));
  __syncthreads();
  if ((tid & 31) == 0) shared[tid >> 5] = v;
  __syncthreads();
  v = tid < (blockDim.x >> 5) ? shared[tid] : T(-INFINITY);
  if (tid < 32) {
    for (int offset = 16; offset > 0; offset >>= 1) v = fmax(v, __shfl_down_sync(0xffffffffu, v, offset));
    if (tid == 0) shared[0] = v;
  }
  __syncthreads();
  return shared[0];
}

__device__ __forceinline__ int64_t masked_column(const int64_t* mask, int64_t i, int64_t M) {
  if (mask == nullptr) return -1;
  const int64_t m = mask[i];
  return (m >= 0 && m < M) ? m : -1;
}

__device__ __forceinline__ bool is_masked(const int64_t* mask, const int64_t* mask2, int64_t i,
                                          int64_t j, int64_t M) {
  return j == masked_column(mask, i, M) || j == masked_column(mask2, i, M);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
row_lse_kernel(const T* __restrict__ S, int64_t M, T scale, const int64_t* __restrict__ mask,
               const int64_t* __restrict__ mask2, T* __restrict__ lse) {
  __shared__ T shared[32];
  __shared__ double shared_sum[32];
  const int64_t i = blockIdx.x;
  const T* s = S + i * M;
  const int64_t skip = masked_column(mask, i, M), skip2 = masked_column(mask2, i, M);
  T m = T(-INFINITY);
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    if (j != skip && j != skip2) m = fmax(m, s[j]);
  }
  m = block_reduce_max(m, shared);
  if (isinf(m) && m < 0) {
    if (threadIdx.x == 0) lse[i] = m;
    return;
  }
  // scale > 0: the max of scale * s is scale * m; the difference is taken before scaling, so
  // the largest entry contributes exactly 1 (no FMA residue of scale * s).
  double total = 0.0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    if (j != skip && j != skip2) total += static_cast<double>(exp(scale * (s[j] - m)));
  }
  total = cuda::block_reduce_sum<double>(total, shared_sum);
  if (threadIdx.x == 0) lse[i] = scale * m + static_cast<T>(log(total));
}

// partial[slice] = (max, sum) of each column over the slice's unmasked rows, as a scaled pair:
// max of S itself, sum of exp(scale (S - max)).
template <typename T>
__global__ void __launch_bounds__(kColTileCols * kColTileRows)
col_lse_partial_kernel(const T* __restrict__ S, int64_t rows, int64_t M, T scale,
                       const int64_t* __restrict__ mask, const int64_t* __restrict__ mask2,
                       int64_t rows_per_slice, T* __restrict__ partial) {
  __shared__ T shared_m[kColTileRows][kColTileCols];
  __shared__ T shared_s[kColTileRows][kColTileCols];
  const int64_t j = static_cast<int64_t>(blockIdx.x) * kColTileCols + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_slice;
  const int64_t r1 = std::min<int64_t>(rows, r0 + rows_per_slice);
  T m = T(-INFINITY), s = T(0);
  if (j < M) {
    for (int64_t i = r0 + threadIdx.y; i < r1; i += kColTileRows) {
      if (!is_masked(mask, mask2, i, j, M)) cuda::add_lse_scaled(m, s, S[i * M + j], scale);
    }
  }
  shared_m[threadIdx.y][threadIdx.x] = m;
  shared_s[threadIdx.y][threadIdx.x] = s;
  __syncthreads();
  if (threadIdx.y == 0 && j < M) {
    for (int y = 1; y < kColTileRows; ++y) {
      cuda::merge_lse_scaled(m, s, shared_m[y][threadIdx.x], shared_s[y][threadIdx.x], scale);
    }
    T* out = partial + static_cast<int64_t>(blockIdx.y) * 2 * M;
    out[j] = m;
    out[M + j] = s;
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
col_lse_merge_kernel(const T* __restrict__ partial, int64_t slices, int64_t M, T scale,
                     T* __restrict__ lse) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= M) return;  // no barrier in this kernel
  T m = T(-INFINITY), s = T(0);
  for (int64_t k = 0; k < slices; ++k) {
    cuda::merge_lse_scaled(m, s, partial[k * 2 * M + j], partial[k * 2 * M + M + j], scale);
  }
  // An all -inf (or all masked) column: s = 0, and log(0) = -inf.
  lse[j] = s == T(0) ? T(-INFINITY) : scale * m + cuda::acc_log(s);
}

template <typename T>
__global__ void __launch_bounds__(kThreads)
logit_grad_kernel(T* __restrict__ S, int64_t rows, int64_t M, T scale,
                                  const int64_t* __restrict__ mask,
                                  const int64_t* __restrict__ mask2, const T* __restrict__ g,
                                  const T* __restrict__ r, const T* __restrict__ h,
                                  const T* __restrict__ c) {
  const int64_t total = rows * M;
  for (cuda::GridStrideCursor cur(M); cur.i < total; cur.advance()) {
    const int64_t idx = cur.i, i = cur.row, j = cur.col;
    if (is_masked(mask, mask2, i, j, M)) {
      S[idx] = T(0);
      continue;
    }
    // A row whose every entry is masked has r = -inf and no softmax to differentiate.
    const bool dead = isinf(r[i]);
    const T logit = scale * S[idx];
    T v = dead ? T(0) : g[i] * exp(logit - r[i]);
    if (h != nullptr) v += h[j] * exp(logit - c[j]);
    S[idx] = v;
  }
}

}  // namespace

int64_t col_lse_workspace_elems(int64_t rows, int64_t M) { return 2 * col_lse_slices(rows, M) * M; }

void row_lse_chunk_cuda(bool is_double, const void* S, int64_t rows, int64_t M, double scale,
                        const int64_t* mask, const int64_t* mask2, void* lse,
                        cudaStream_t stream) {
  cuda::dispatch_acc(is_double, [&](auto tag) {
    using T = decltype(tag);
    cuda::launch("info_nce row_lse", row_lse_kernel<T>, dim3(static_cast<unsigned>(rows)),
                 dim3(kThreads), 0, stream, static_cast<const T*>(S), M, static_cast<T>(scale),
                 mask, mask2, static_cast<T*>(lse));
  });
}

void col_lse_chunk_cuda(bool is_double, const void* S, int64_t rows, int64_t M, double scale,
                        const int64_t* mask, const int64_t* mask2, void* workspace, void* lse,
                        cudaStream_t stream) {
  if (M == 0) return;
  const int64_t slices = col_lse_slices(rows, M);
  const int64_t rows_per_slice = ceil_div(rows, slices);
  cuda::dispatch_acc(is_double, [&](auto tag) {
    using T = decltype(tag);
    T* partial = static_cast<T*>(workspace);
    cuda::launch("info_nce col_lse_partial", col_lse_partial_kernel<T>,
                 dim3(static_cast<unsigned>(ceil_div(M, kColTileCols)), static_cast<unsigned>(slices)),
                 dim3(kColTileCols, kColTileRows), 0, stream, static_cast<const T*>(S), rows, M,
                 static_cast<T>(scale), mask, mask2, rows_per_slice, partial);
    cuda::launch("info_nce col_lse_merge", col_lse_merge_kernel<T>,
                 dim3(static_cast<unsigned>(ceil_div(M, kThreads))), dim3(kThreads), 0, stream,
                 static_cast<const T*>(partial), slices, M, static_cast<T>(scale),
                 static_cast<T*>(lse));
  });
}

void logit_grad_chunk_cuda(bool is_double, void* S, int64_t rows, int64_t M, double scale,
                           const int64_t* mask, const int64_t* mask2, const void* g,
                           const void* r, const void* h, const void* c, cudaStream_t stream) {
  if (rows == 0 || M == 0) return;
  const unsigned blocks = cuda::elementwise_blocks(rows * M, kThreads, 65535);
  cuda::dispatch_acc(is_double, [&](auto tag) {
    using T = decltype(tag);
    cuda::launch("info_nce logit_grad", logit_grad_kernel<T>, dim3(blocks), dim3(kThreads), 0,
                 stream, static_cast<T*>(S), rows, M, static_cast<T>(scale), mask, mask2,
                 static_cast<const T*>(g), static_cast<const T*>(r), static_cast<const T*>(h),
                 static_cast<const T*>(c));
  });
}

}  // namespace info_nce
}  // namespace jem_fast

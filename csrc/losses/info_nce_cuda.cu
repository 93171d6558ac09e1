// InfoNCE CUDA kernels over one chunk of logits (produced by cuBLAS in the host loop): masked
// row log-sum-exp (one block per row, max then sum) and the in-place logit gradient.
#include <cmath>

#include "common/cuda_utils.cuh"
#include "losses/info_nce_kernels.h"

namespace jem_fast {
namespace info_nce {

using cuda::ceil_div;

namespace {

constexpr int kThreads = 256;

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

template <typename T>
__global__ void row_lse_kernel(const T* __restrict__ S, int64_t M, T scale,
                               const int64_t* __restrict__ mask, T* __restrict__ lse) {
  __shared__ T shared[32];
  __shared__ double shared_sum[32];
  const int64_t i = blockIdx.x;
  const T* s = S + i * M;
  const int64_t skip = masked_column(mask, i, M);
  T m = T(-INFINITY);
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    if (j != skip) m = fmax(m, s[j]);
  }
  m = block_reduce_max(m, shared);
  if (isinf(m) && m < 0) {
    if (threadIdx.x == 0) lse[i] = m;
    return;
  }
  const T shift = scale * m;  // scale > 0
  double total = 0.0;
  for (int64_t j = threadIdx.x; j < M; j += blockDim.x) {
    if (j != skip) total += static_cast<double>(exp(scale * s[j] - shift));
  }
  total = cuda::block_reduce_sum<double>(total, shared_sum);
  if (threadIdx.x == 0) lse[i] = shift + static_cast<T>(log(total));
}

// One thread per column; consecutive threads read consecutive columns of a row (coalesced).
template <typename T>
__global__ void col_lse_kernel(const T* __restrict__ S, int64_t rows, int64_t M, T scale,
                               T* __restrict__ lse) {
  const int64_t j = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (j >= M) return;
  T m = T(-INFINITY);
  for (int64_t i = 0; i < rows; ++i) m = fmax(m, S[i * M + j]);
  if (isinf(m) && m < 0) {
    lse[j] = m;
    return;
  }
  double total = 0.0;
  for (int64_t i = 0; i < rows; ++i) total += static_cast<double>(exp(scale * (S[i * M + j] - m)));
  lse[j] = scale * m + static_cast<T>(log(total));
}

template <typename T>
__global__ void logit_grad_kernel(T* __restrict__ S, int64_t rows, int64_t M, T scale,
                                  const int64_t* __restrict__ mask, const T* __restrict__ g,
                                  const T* __restrict__ r, const T* __restrict__ h,
                                  const T* __restrict__ c) {
  const int64_t total = rows * M;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total;
       idx += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t i = idx / M, j = idx - i * M;
    if (j == masked_column(mask, i, M)) {
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

void row_lse_chunk_cuda(bool is_double, const void* S, int64_t rows, int64_t M, double scale,
                        const int64_t* mask, void* lse, cudaStream_t stream) {
  if (rows == 0) return;
  cuda::dispatch_acc(is_double, [&](auto tag) {
    using T = decltype(tag);
    row_lse_kernel<T><<<static_cast<unsigned>(rows), kThreads, 0, stream>>>(
        static_cast<const T*>(S), M, static_cast<T>(scale), mask, static_cast<T*>(lse));
  });
  cuda::check_launch("info_nce row_lse");
}

void col_lse_chunk_cuda(bool is_double, const void* S, int64_t rows, int64_t M, double scale,
                        void* lse, cudaStream_t stream) {
  if (M == 0) return;
  cuda::dispatch_acc(is_double, [&](auto tag) {
    using T = decltype(tag);
    col_lse_kernel<T><<<static_cast<unsigned>(ceil_div(M, kThreads)), kThreads, 0, stream>>>(
        static_cast<const T*>(S), rows, M, static_cast<T>(scale), static_cast<T*>(lse));
  });
  cuda::check_launch("info_nce col_lse");
}

void logit_grad_chunk_cuda(bool is_double, void* S, int64_t rows, int64_t M, double scale,
                           const int64_t* mask, const void* g, const void* r, const void* h,
                           const void* c, cudaStream_t stream) {
  if (rows == 0) return;
  int64_t blocks = ceil_div(rows * M, kThreads);
  if (blocks > 65535) blocks = 65535;
  cuda::dispatch_acc(is_double, [&](auto tag) {
    using T = decltype(tag);
    logit_grad_kernel<T><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(
        static_cast<T*>(S), rows, M, static_cast<T>(scale), mask, static_cast<const T*>(g),
        static_cast<const T*>(r), static_cast<const T*>(h), static_cast<const T*>(c));
  });
  cuda::check_launch("info_nce logit_grad");
}

}  // namespace info_nce
}  // namespace jem_fast

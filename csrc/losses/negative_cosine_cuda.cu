// Row-wise cosine similarity, CUDA kernels. Memory-bound: the forward reads each input element
// once, the backward reads x0, x1 once and writes both gradients once. Loads are 16-byte packs
// when the row length and the pointers allow it (8 bf16/fp16, 4 fp32, 2 fp64 per load).
#include <algorithm>
#include <cstdint>
#include <initializer_list>

#include "common/cuda_utils.cuh"
#include "losses/negative_cosine_kernels.h"

namespace jem_fast {
namespace cosine {

using cuda::acc_t;
using cuda::ceil_div;
using cuda::load_acc;

namespace {

constexpr int kThreads = 256;
// Rows up to this long get one warp each (8 rows per block); longer rows one block each, so a
// few hundred long rows still spread over all SMs.
constexpr int64_t kWarpRowMax = 2048;

template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

template <int VEC, typename T>
bool pack_aligned(const void* p, int64_t D) {
  return D % VEC == 0 && reinterpret_cast<uintptr_t>(p) % (sizeof(T) * VEC) == 0;
}

// Stores an accumulator value without a detour through double for float accumulators.
template <typename T> __device__ __forceinline__ T store_acc(float v) { return cuda::store_cast_f<T>(v); }
template <typename T> __device__ __forceinline__ T store_acc(double v) { return cuda::store_cast<T>(v); }

template <typename A>
__device__ __forceinline__ A warp_sum(A v) {
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Partial dot and sums of squares of one row, over the packs lane, lane + stride, ...
template <typename T, int VEC>
__device__ __forceinline__ void row_partials(const T* __restrict__ a, const T* __restrict__ b,
                                             int64_t D, int lane, int stride, acc_t<T>& dot,
                                             acc_t<T>& aa, acc_t<T>& bb) {
  using P = Pack<T, VEC>;
  const P* pa = reinterpret_cast<const P*>(a);
  const P* pb = reinterpret_cast<const P*>(b);
  const int64_t packs = D / VEC;
  for (int64_t p = lane; p < packs; p += stride) {
    const P va = pa[p], vb = pb[p];
#pragma unroll
    for (int k = 0; k < VEC; ++k) {
      const acc_t<T> x = load_acc(&va.v[k]), y = load_acc(&vb.v[k]);
      dot += x * y;
      aa += x * x;
      bb += y * y;
    }
  }
}

template <typename A>
__device__ __forceinline__ void finish_row(A dot, A aa, A bb, A eps, int64_t i, int64_t N,
                                           A* __restrict__ cos, A* __restrict__ norms) {
  const A n0 = sqrt(aa), n1 = sqrt(bb);
  // One norm at a time: c0 * c1 underflows for tiny norms with a tiny eps.
  cos[i] = dot / fmax(n0, eps) / fmax(n1, eps);
  norms[i] = n0;
  norms[N + i] = n1;
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
forward_warp_per_row(const T* __restrict__ x0, const T* __restrict__ x1,
                                     int64_t N, int64_t D, acc_t<T> eps, acc_t<T>* __restrict__ cos,
                                     acc_t<T>* __restrict__ norms) {
  using A = acc_t<T>;
  const int lane = threadIdx.x & 31;
  const int64_t i = static_cast<int64_t>(blockIdx.x) * (blockDim.x >> 5) + (threadIdx.x >> 5);
  if (i >= N) return;  // whole warps leave together: the shuffles below stay full-warp
  A dot = 0, aa = 0, bb = 0;
  row_partials<T, VEC>(x0 + i * D, x1 + i * D, D, lane, 32, dot, aa, bb);
  dot = warp_sum(dot);
  aa = warp_sum(aa);
  bb = warp_sum(bb);
  if (lane == 0) finish_row(dot, aa, bb, eps, i, N, cos, norms);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
forward_block_per_row(const T* __restrict__ x0, const T* __restrict__ x1,
                                      int64_t N, int64_t D, acc_t<T> eps,
                                      acc_t<T>* __restrict__ cos, acc_t<T>* __restrict__ norms) {
  using A = acc_t<T>;
  __shared__ A shared[3][32];
  const int64_t i = blockIdx.x;
  A dot = 0, aa = 0, bb = 0;
  row_partials<T, VEC>(x0 + i * D, x1 + i * D, D, threadIdx.x, blockDim.x, dot, aa, bb);
  // Three sums through one shared round instead of three block_reduce_sum calls.
  dot = warp_sum(dot);
  aa = warp_sum(aa);
  bb = warp_sum(bb);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    shared[0][warp] = dot;
    shared[1][warp] = aa;
    shared[2][warp] = bb;
  }
  __syncthreads();
  if (warp == 0) {
    const int warps = blockDim.x >> 5;
    dot = lane < warps ? shared[0][lane] : A(0);
    aa = lane < warps ? shared[1][lane] : A(0);
    bb = lane < warps ? shared[2][lane] : A(0);
    dot = warp_sum(dot);
    aa = warp_sum(aa);
    bb = warp_sum(bb);
    if (lane == 0) finish_row(dot, aa, bb, eps, i, N, cos, norms);
  }
}

// One thread per pack of VEC elements of the (N, D) gradients, grid-stride.
template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads)
backward_kernel(const acc_t<T>* __restrict__ grad, const T* __restrict__ x0,
                                const T* __restrict__ x1, const acc_t<T>* __restrict__ cos,
                                const acc_t<T>* __restrict__ norms, int64_t N, int64_t D,
                                acc_t<T> eps, T* __restrict__ g0, T* __restrict__ g1) {
  using A = acc_t<T>;
  using P = Pack<T, VEC>;
  const int64_t packs_per_row = D / VEC;
  const int64_t total = N * packs_per_row;
  for (cuda::GridStrideCursor cur(packs_per_row); cur.i < total; cur.advance()) {
    const int64_t idx = cur.i, i = cur.row;
    const A g = grad[i], c = cos[i], n0 = norms[i], n1 = norms[N + i];
    const A c0 = fmax(n0, eps), c1 = fmax(n1, eps);
    // cos / n_k first: |cos / n_k| <= 1 / c_k, so no intermediate overflows or underflows.
    const A alpha = g / c0 / c1;
    const A beta0 = n0 > A(0) ? g * (c / n0) / c0 : A(0);
    const A beta1 = n1 > A(0) ? g * (c / n1) / c1 : A(0);
    const P va = reinterpret_cast<const P*>(x0)[idx];
    const P vb = reinterpret_cast<const P*>(x1)[idx];
    if (g0 != nullptr) {
      P out;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        out.v[k] = store_acc<T>(alpha * load_acc(&vb.v[k]) - beta0 * load_acc(&va.v[k]));
      }
      reinterpret_cast<P*>(g0)[idx] = out;
    }
    if (g1 != nullptr) {
      P out;
#pragma unroll
      for (int k = 0; k < VEC; ++k) {
        out.v[k] = store_acc<T>(alpha * load_acc(&va.v[k]) - beta1 * load_acc(&vb.v[k]));
      }
      reinterpret_cast<P*>(g1)[idx] = out;
    }
  }
}

template <typename T, int VEC>
void launch_forward(const T* x0, const T* x1, int64_t N, int64_t D, double eps, acc_t<T>* cos,
                    acc_t<T>* norms, cudaStream_t stream) {
  using A = acc_t<T>;
  if (D <= kWarpRowMax) {
    const int64_t rows_per_block = kThreads / 32;
    cuda::launch("cosine_similarity_rows forward (warp per row)", forward_warp_per_row<T, VEC>,
                 dim3(static_cast<unsigned>(ceil_div(N, rows_per_block))), dim3(kThreads), 0,
                 stream, x0, x1, N, D, static_cast<A>(eps), cos, norms);
  } else {
    cuda::launch("cosine_similarity_rows forward (block per row)", forward_block_per_row<T, VEC>,
                 dim3(static_cast<unsigned>(N)), dim3(kThreads), 0, stream, x0, x1, N, D,
                 static_cast<A>(eps), cos, norms);
  }
}

template <typename T, int VEC>
void launch_backward(const acc_t<T>* grad, const T* x0, const T* x1, const acc_t<T>* cos,
                     const acc_t<T>* norms, int64_t N, int64_t D, double eps, T* g0, T* g1,
                     cudaStream_t stream) {
  const int64_t total = N * (D / VEC);
  if (total == 0) return;
  // Grid-stride beyond ~64 waves of blocks: enough to fill any GPU.
  cuda::launch("cosine_similarity_rows backward", backward_kernel<T, VEC>,
               dim3(cuda::elementwise_blocks(total, kThreads, int64_t(1) << 16)), dim3(kThreads), 0,
               stream, grad, x0, x1, cos, norms, N, D, static_cast<acc_t<T>>(eps), g0, g1);
}

// Pointers that every pack-wide access touches must be 16-byte aligned (contiguous tensors from
// the caching allocator are; views with an offset may not be).
template <typename T>
bool all_packable(int64_t D, std::initializer_list<const void*> ptrs) {
  constexpr int VEC = 16 / sizeof(T);
  for (const void* p : ptrs) {
    if (p != nullptr && !pack_aligned<VEC, T>(p, D)) return false;
  }
  return true;
}

}  // namespace

void cosine_rows_forward_cuda(DType dtype, const void* x0, const void* x1, int64_t N, int64_t D,
                              double eps, void* cos, void* norms, cudaStream_t stream) {
  if (N == 0) return;
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    constexpr int VEC = 16 / sizeof(T);
    const T* a = static_cast<const T*>(x0);
    const T* b = static_cast<const T*>(x1);
    if (all_packable<T>(D, {x0, x1})) {
      launch_forward<T, VEC>(a, b, N, D, eps, static_cast<A*>(cos), static_cast<A*>(norms),
                             stream);
    } else {
      launch_forward<T, 1>(a, b, N, D, eps, static_cast<A*>(cos), static_cast<A*>(norms),
                           stream);
    }
  });
}

void cosine_rows_backward_cuda(DType dtype, const void* grad, const void* x0, const void* x1,
                               const void* cos, const void* norms, int64_t N, int64_t D,
                               double eps, void* grad_x0, void* grad_x1, cudaStream_t stream) {
  if (N == 0 || (grad_x0 == nullptr && grad_x1 == nullptr)) return;
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    constexpr int VEC = 16 / sizeof(T);
    const A* g = static_cast<const A*>(grad);
    const A* c = static_cast<const A*>(cos);
    const A* n = static_cast<const A*>(norms);
    const T* a = static_cast<const T*>(x0);
    const T* b = static_cast<const T*>(x1);
    T* ga = static_cast<T*>(grad_x0);
    T* gb = static_cast<T*>(grad_x1);
    if (all_packable<T>(D, {x0, x1, grad_x0, grad_x1})) {
      launch_backward<T, VEC>(g, a, b, c, n, N, D, eps, ga, gb, stream);
    } else {
      launch_backward<T, 1>(g, a, b, c, n, N, D, eps, ga, gb, stream);
    }
  });
}

}  // namespace cosine
}  // namespace jem_fast

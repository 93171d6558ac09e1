// Sinkhorn-Knopp CUDA kernels. Column step: threads own columns (coalesced along a row) and a
// slice of rows each, keep an online (max, sum) pair, and a second small kernel merges the row
// slices. Row step: one block per row, online (max, sum) per thread merged through the block.
// Plan: one block per row; the fused last row step + plan (row_plan) reads its row twice (the
// second time from L2). Scores are read in their own dtype. Exponents are formed in extended
// precision (sinkhorn_knopp_kernels.h): float-float for float32/float16/bfloat16 scores (no
// FP64 arithmetic per element), double for float64 scores; exps in float32 (float64). CUDA
// headers only.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "cluster/sinkhorn_knopp_kernels.h"
#include "common/cuda_utils.cuh"
#include "common/online_lse.cuh"

namespace jem_fast {
namespace sinkhorn {

namespace {

using cuda::acc_t;
using cuda::ceil_div;
using cuda::acc_exp;
using cuda::load_acc;
using cuda::merge_lse;

constexpr int kColumnThreads = 256;
constexpr int kRowThreads = 256;
constexpr int64_t kMinRowsPerSlice = 16;

int64_t row_slices(int64_t B, int64_t K) {
  return cuda::row_slices(B, ceil_div(K, kColumnThreads), kMinRowsPerSlice);
}

// An extended-precision value hi + lo of the accumulation type: for float a float-float pair,
// for double lo stays 0 (double alone is exact enough).
template <typename A>
struct Ext {
  A hi, lo;
};

// Products and sums whose rounding the float-float algebra relies on: nvcc must not contract
// them into an FMA with a neighbouring operation (__fmul_rn / __fadd_rn never are). The emulated
// build compiles for baseline x86-64, which has no FMA instruction to contract into.
__device__ __forceinline__ float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

__device__ __forceinline__ float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// z = scale x + a. float: scale.hi x exactly as ph + pe (FMA), ph + a.hi exactly as zh + se
// (TwoSum), the small terms added to the low part. A non-finite result (a -inf score or
// potential) keeps lo = 0.
__device__ __forceinline__ Ext<float> affine(Ext<float> scale, float x, Ext<float> a) {
  const float ph = mul_rn(scale.hi, x);
  const float pe = fmaf(scale.hi, x, -ph);
  const float zh = add_rn(ph, a.hi);
  const float bb = add_rn(zh, -ph);
  const float se = add_rn(add_rn(ph, -add_rn(zh, -bb)), add_rn(a.hi, -bb));
  const float zl = se + pe + fmaf(scale.lo, x, a.lo);
  return {zh, isfinite(zh) ? zl : 0.0f};
}

__device__ __forceinline__ Ext<double> affine(Ext<double> scale, double x, Ext<double> a) {
  return {fma(scale.hi, x, a.hi), 0.0};
}

// z - m for z near (or below) m: the high parts cancel exactly near the maximum.
template <typename A>
__device__ __forceinline__ A ext_diff(Ext<A> z, Ext<A> m) {
  return (z.hi - m.hi) + (z.lo - m.lo);
}

template <typename A>
__device__ __forceinline__ double ext_to_double(Ext<A> v) {
  return static_cast<double>(v.hi) + static_cast<double>(v.lo);
}

template <typename A>
__device__ __forceinline__ Ext<A> load_ext(const A* hi, const A* lo, int64_t i) {
  return {hi ? hi[i] : A(0), lo ? lo[i] : A(0)};
}

// Online log-sum-exp over extended exponents: (m, s) stands for s exp(m). Empty: (-inf, 0).
template <typename A>
struct ExtLse {
  Ext<A> m;
  A s;
};

template <typename A>
__device__ __forceinline__ void add_ext(ExtLse<A>& a, Ext<A> z) {
  if (z.hi > a.m.hi) {
    a.s = a.s * acc_exp(ext_diff(a.m, z)) + A(1);
    a.m = z;
  } else if (z.hi != A(-INFINITY)) {  // exp(-inf - -inf) would be NaN; NaN still propagates
    a.s += acc_exp(ext_diff(z, a.m));
  }
}

template <typename A>
__device__ __forceinline__ void merge_ext(ExtLse<A>& a, const ExtLse<A>& b) {
  if (b.s == A(0)) return;
  if (a.s == A(0)) {
    a = b;
  } else if (b.m.hi > a.m.hi) {
    a.s = a.s * acc_exp(ext_diff(a.m, b.m)) + b.s;
    a.m = b.m;
  } else {
    a.s += b.s * acc_exp(ext_diff(b.m, a.m));
  }
}

template <typename A>
__device__ __forceinline__ ExtLse<A> shfl_down_ext(const ExtLse<A>& a, int offset) {
  return {{__shfl_down_sync(0xffffffffu, a.m.hi, offset),
           __shfl_down_sync(0xffffffffu, a.m.lo, offset)},
          __shfl_down_sync(0xffffffffu, a.s, offset)};
}

// Merge over a 1-D block (blockDim.x a multiple of 32); valid in thread 0; every thread calls it;
// ends with a barrier. shared holds 3 x 32 values.
template <typename A>
__device__ void block_merge_ext(ExtLse<A>& a, A* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) merge_ext(a, shfl_down_ext(a, offset));
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    shared[warp] = a.m.hi;
    shared[32 + warp] = a.m.lo;
    shared[64 + warp] = a.s;
  }
  __syncthreads();
  if (warp == 0) {
    const int nwarps = blockDim.x >> 5;
    if (lane < nwarps) {
      a = {{shared[lane], shared[32 + lane]}, shared[64 + lane]};
    } else {
      a = {{A(-INFINITY), A(0)}, A(0)};
    }
    for (int offset = 16; offset > 0; offset >>= 1) merge_ext(a, shfl_down_ext(a, offset));
  }
  __syncthreads();
}

// The row LSE of z_k = scale S_bk + g_k over the block's row, valid in every thread. shared
// holds 3 x 32 + 3 values.
template <typename T>
__device__ ExtLse<acc_t<T>> row_lse(const T* row, int64_t K, Ext<acc_t<T>> scale,
                                    const acc_t<T>* g_hi, const acc_t<T>* g_lo,
                                    acc_t<T>* shared) {
  using A = acc_t<T>;
  ExtLse<A> acc{{A(-INFINITY), A(0)}, A(0)};
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    add_ext(acc, affine(scale, load_acc(row + k), load_ext(g_hi, g_lo, k)));
  }
  block_merge_ext(acc, shared);
  A* result = shared + 3 * 32;
  if (threadIdx.x == 0) {
    result[0] = acc.m.hi;
    result[1] = acc.m.lo;
    result[2] = acc.s;
  }
  __syncthreads();
  return {{result[0], result[1]}, result[2]};
}

template <typename A>
__device__ __forceinline__ double row_potential_of(const ExtLse<A>& lse, double log_rows) {
  return -log_rows - (ext_to_double(lse.m) + log(static_cast<double>(lse.s)));
}

template <typename T>
__global__ void __launch_bounds__(kColumnThreads)
column_partial_kernel(const T* __restrict__ S, int64_t B, int64_t K, Ext<acc_t<T>> scale,
                      const acc_t<T>* __restrict__ f_hi, const acc_t<T>* __restrict__ f_lo,
                      int64_t rows_per_slice, double* __restrict__ partial) {
  using A = acc_t<T>;
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= K) return;  // no barrier in this kernel
  const int64_t b0 = static_cast<int64_t>(blockIdx.y) * rows_per_slice;
  const int64_t b1 = std::min<int64_t>(B, b0 + rows_per_slice);
  ExtLse<A> acc{{A(-INFINITY), A(0)}, A(0)};
  for (int64_t b = b0; b < b1; ++b) {
    add_ext(acc, affine(scale, load_acc(S + b * K + k), load_ext(f_hi, f_lo, b)));
  }
  double* out = partial + static_cast<int64_t>(blockIdx.y) * 2 * K;
  out[k] = acc.s == A(0) ? -INFINITY : ext_to_double(acc.m);
  out[K + k] = static_cast<double>(acc.s);
}

__global__ void __launch_bounds__(kColumnThreads)
column_merge_kernel(const double* __restrict__ partial, int64_t slices, int64_t K,
                    double* __restrict__ colmax, double* __restrict__ colsum) {
  const int64_t k = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (k >= K) return;
  double m = -INFINITY, s = 0;
  for (int64_t i = 0; i < slices; ++i) merge_lse(m, s, partial[i * 2 * K + k], partial[i * 2 * K + K + k]);
  colmax[k] = m;
  colsum[k] = s;
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
row_potential_kernel(const T* __restrict__ S, int64_t K, Ext<acc_t<T>> scale,
                     const acc_t<T>* __restrict__ g_hi, const acc_t<T>* __restrict__ g_lo,
                     double log_rows, double* __restrict__ f) {
  __shared__ acc_t<T> shared[3 * 32 + 3];
  const int64_t b = blockIdx.x;
  const auto lse = row_lse(S + b * K, K, scale, g_hi, g_lo, shared);
  if (threadIdx.x == 0) f[b] = row_potential_of(lse, log_rows);
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
plan_kernel(const T* __restrict__ S, int64_t K, Ext<acc_t<T>> scale,
            const double* __restrict__ f, const acc_t<T>* __restrict__ g_hi,
            const acc_t<T>* __restrict__ g_lo, acc_t<T> rows, acc_t<T>* __restrict__ Q) {
  using A = acc_t<T>;
  const int64_t b = blockIdx.x;
  const T* row = S + b * K;
  A* out = Q + b * K;
  Ext<A> fb;
  if constexpr (std::is_same<A, float>::value) {
    const cuda::FloatPair p = cuda::split_double(f[b]);
    fb = {p.hi, p.lo};
  } else {
    fb = {f[b], 0.0};
  }
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const Ext<A> z = affine(scale, load_acc(row + k), load_ext(g_hi, g_lo, k));
    // z + f: the high parts cancel exactly where the plan has mass
    out[k] = rows * acc_exp((z.hi + fb.hi) + (z.lo + fb.lo));
  }
}

template <typename T>
__global__ void __launch_bounds__(kRowThreads)
row_plan_kernel(const T* __restrict__ S, int64_t K, Ext<acc_t<T>> scale,
                const acc_t<T>* __restrict__ g_hi, const acc_t<T>* __restrict__ g_lo,
                double log_rows, double* __restrict__ f, acc_t<T>* __restrict__ Q) {
  using A = acc_t<T>;
  __shared__ A shared[3 * 32 + 3];
  const int64_t b = blockIdx.x;
  const T* row = S + b * K;
  const auto lse = row_lse(row, K, scale, g_hi, g_lo, shared);
  if (threadIdx.x == 0) f[b] = row_potential_of(lse, log_rows);
  const A inv = A(1) / lse.s;
  A* out = Q + b * K;
  for (int64_t k = threadIdx.x; k < K; k += blockDim.x) {
    const Ext<A> z = affine(scale, load_acc(row + k), load_ext(g_hi, g_lo, k));
    out[k] = acc_exp(ext_diff(z, lse.m)) * inv;
  }
}

template <typename A>
Ext<A> scale_ext(double scale) {
  if constexpr (std::is_same<A, float>::value) {
    const cuda::FloatPair p = cuda::split_double(scale);
    return {p.hi, p.lo};
  } else {
    return {scale, 0.0};
  }
}

}  // namespace

int64_t column_stats_partials_cuda(int64_t B, int64_t K) { return row_slices(B, K); }

void column_stats_cuda(DType dtype, const void* S, int64_t B, int64_t K, double scale,
                       const void* f_hi, const void* f_lo, void* partial, void* colmax,
                       void* colsum, cudaStream_t stream) {
  const int64_t slices = row_slices(B, K);
  const int64_t rows_per_slice = ceil_div(B, slices);
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    const dim3 grid(static_cast<unsigned>(ceil_div(K, kColumnThreads)), static_cast<unsigned>(slices));
    cuda::launch("sinkhorn column_partial", column_partial_kernel<T>, grid, dim3(kColumnThreads),
                 0, stream, static_cast<const T*>(S), B, K, scale_ext<A>(scale),
                 static_cast<const A*>(f_hi), static_cast<const A*>(f_lo), rows_per_slice,
                 static_cast<double*>(partial));
  });
  cuda::launch("sinkhorn column_merge", column_merge_kernel,
               dim3(static_cast<unsigned>(ceil_div(K, kColumnThreads))), dim3(kColumnThreads), 0,
               stream, static_cast<const double*>(partial), slices, K,
               static_cast<double*>(colmax), static_cast<double*>(colsum));
}

void row_potential_cuda(DType dtype, const void* S, int64_t B, int64_t K, double scale,
                        const void* g_hi, const void* g_lo, double log_rows, void* f,
                        cudaStream_t stream) {
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    cuda::launch("sinkhorn row_potential", row_potential_kernel<T>, dim3(static_cast<unsigned>(B)),
                 dim3(kRowThreads), 0, stream, static_cast<const T*>(S), K, scale_ext<A>(scale),
                 static_cast<const A*>(g_hi), static_cast<const A*>(g_lo), log_rows,
                 static_cast<double*>(f));
  });
}

void plan_cuda(DType dtype, const void* S, int64_t B, int64_t K, double scale, const void* f,
               const void* g_hi, const void* g_lo, double rows, void* Q, cudaStream_t stream) {
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    cuda::launch("sinkhorn plan", plan_kernel<T>, dim3(static_cast<unsigned>(B)), dim3(kRowThreads),
                 0, stream, static_cast<const T*>(S), K, scale_ext<A>(scale),
                 static_cast<const double*>(f), static_cast<const A*>(g_hi),
                 static_cast<const A*>(g_lo), static_cast<A>(rows), static_cast<A*>(Q));
  });
}

void row_plan_cuda(DType dtype, const void* S, int64_t B, int64_t K, double scale,
                   const void* g_hi, const void* g_lo, double log_rows, void* f, void* Q,
                   cudaStream_t stream) {
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    cuda::launch("sinkhorn row_plan", row_plan_kernel<T>, dim3(static_cast<unsigned>(B)),
                 dim3(kRowThreads), 0, stream, static_cast<const T*>(S), K, scale_ext<A>(scale),
                 static_cast<const A*>(g_hi), static_cast<const A*>(g_lo), log_rows,
                 static_cast<double*>(f), static_cast<A*>(Q));
  });
}

}  // namespace sinkhorn
}  // namespace jem_fast

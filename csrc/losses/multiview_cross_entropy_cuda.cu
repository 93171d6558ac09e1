// multiview_cross_entropy CUDA kernels. A block owns one row b and one column chunk of every
// tensor: it stages the T target chunks (and their sum) in shared memory once, then streams each
// student view's chunk through an online (max, sum-exp, gap, target sum) state (see Gap: the
// cross-entropy is accumulated as sum Y (m - x) with the running maximum m, non-negative terms
// only). A second small kernel merges the column chunks per (view, row) and forms lse and the
// contribution in float64. The backward has the same shape and writes each gradient element once.
// Logits are read in their own dtype, everything accumulates in float32 (float64 for float64);
// no FP64 arithmetic per element. CUDA headers only.
#include <cmath>
#include <type_traits>

#include "common/cuda_utils.cuh"
#include "common/online_lse.cuh"
#include "losses/multiview_cross_entropy_kernels.h"

namespace jem_fast {
namespace multiview_ce {

namespace {

using cuda::acc_t;
using cuda::ceil_div;
using cuda::acc_exp;
using cuda::load_acc;

constexpr int kThreads = 256;
// Columns per chunk: 4 KiB of one target row, fewer when the T chunks + their sum + one view's
// summed targets would not fit the dynamic shared-memory budget (kept under the 48 KiB every GPU
// grants without opt-in, with room for the static reduction arrays): T = kMaxTargets = 8 float64
// targets get 512-column chunks.
constexpr int64_t kChunkBytes = 4096;
constexpr int64_t kMaxDynamicSmemBytes = 40 * 1024;

template <typename P>
struct PtrArray {
  P p[kMaxViews];
};

template <typename A>
__device__ void stage_targets(const PtrArray<const A*>& targets, int T, int64_t row_offset,
                              int64_t n, int64_t chunk, A* ys, A* y_all) {
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    A sum = 0;
    for (int t = 0; t < T; ++t) {
      const A y = targets.p[t][row_offset + j];
      ys[t * chunk + j] = y;
      sum += y;
    }
    y_all[j] = sum;
  }
  __syncthreads();
}

// The summed targets student view v is paired with, Y_vj = sum over t != v of the staged targets
// added in t order (never y_all - y_v, which would cancel): y_all itself for v >= T, else written
// to y_view. Each thread writes exactly the columns j it later reads (the same threadIdx.x
// stride), so no barrier is needed before the caller's loop; the caller's previous loop over
// y_view used the same columns too.
template <typename A>
__device__ __forceinline__ const A* view_targets(const A* ys, const A* y_all, A* y_view, int T,
                                                 int v, int64_t chunk, int64_t n) {
  if (v >= T) return y_all;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
    A sum = 0;
    for (int t = 0; t < T; ++t) {
      if (t != v) sum += ys[t * chunk + j];
    }
    y_view[j] = sum;
  }
  return y_view;
}

// Online state of one (view, row) over a range of columns: m = max x, s = sum exp(scale (x - m)),
// d = sum Y (m - x) (non-negative terms only), w = sum Y. When the maximum moves from m to m',
// d grows by (m' - m) w. The empty state is (-inf, 0, 0, 0) and merges as the identity.
template <typename A>
struct Gap {
  A m, s, d, w;
};

template <typename A>
__device__ __forceinline__ void add_gap(Gap<A>& a, A x, A y, A scale) {
  if (x > a.m) {
    if (a.w != A(0)) a.d += (x - a.m) * a.w;
    a.s = a.s * acc_exp(scale * (a.m - x)) + A(1);
    a.m = x;
  } else if (x != A(-INFINITY)) {
    a.s += acc_exp(scale * (x - a.m));
  }
  if (y != A(0)) a.d += y * (a.m - x);  // a zero target adds 0, even on a -inf logit
  a.w += y;
}

template <typename A>
__device__ __forceinline__ void merge_gap(Gap<A>& a, const Gap<A>& b, A scale) {
  if (b.s == A(0) && b.w == A(0)) return;
  if (a.s == A(0) && a.w == A(0)) {
    a = b;
    return;
  }
  if (b.m > a.m) {
    if (a.w != A(0)) a.d += (b.m - a.m) * a.w;
    a.s = a.s * acc_exp(scale * (a.m - b.m)) + b.s;
    a.m = b.m;
    a.d += b.d;
  } else {
    a.d += b.d;
    if (b.w != A(0)) a.d += (a.m - b.m) * b.w;
    a.s += b.s * acc_exp(scale * (b.m - a.m));
  }
  a.w += b.w;
}

template <typename A>
__device__ __forceinline__ Gap<A> shfl_down_gap(const Gap<A>& a, int offset) {
  return {__shfl_down_sync(0xffffffffu, a.m, offset), __shfl_down_sync(0xffffffffu, a.s, offset),
          __shfl_down_sync(0xffffffffu, a.d, offset), __shfl_down_sync(0xffffffffu, a.w, offset)};
}

// Merge over a 1-D block (blockDim.x a multiple of 32); valid in thread 0; every thread calls it;
// ends with a barrier. shared holds 4 x 32 values.
template <typename A>
__device__ void block_merge_gap(Gap<A>& a, A scale, A* shared) {
  for (int offset = 16; offset > 0; offset >>= 1) merge_gap(a, shfl_down_gap(a, offset), scale);
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  if (lane == 0) {
    shared[warp] = a.m;
    shared[32 + warp] = a.s;
    shared[64 + warp] = a.d;
    shared[96 + warp] = a.w;
  }
  __syncthreads();
  if (warp == 0) {
    const int nwarps = blockDim.x >> 5;
    if (lane < nwarps) {
      a = {shared[lane], shared[32 + lane], shared[64 + lane], shared[96 + lane]};
    } else {
      a = {A(-INFINITY), A(0), A(0), A(0)};
    }
    for (int offset = 16; offset > 0; offset >>= 1) merge_gap(a, shfl_down_gap(a, offset), scale);
  }
  __syncthreads();
}

// The backward's exponent scale x - lse with lse in float64. float: scale and lse as float pairs
// and two FMAs, (sh x - lh) + (sl x - ll): no FP64 per element, exact to float rounding of the
// result whatever |scale x| (and exactly 0 for a row's only logit). double: one FMA.
template <typename A>
struct SoftmaxExponent;

template <>
struct SoftmaxExponent<float> {
  cuda::FloatPair scale, lse;
  __device__ SoftmaxExponent(double s, double l)
      : scale(cuda::split_double(s)), lse(cuda::split_double(l)) {}
  __device__ __forceinline__ float operator()(float x) const {
    const float hi = fmaf(scale.hi, x, -lse.hi);
    return isinf(x) ? hi : hi + fmaf(scale.lo, x, -lse.lo);  // -inf logit: 0 * inf is NaN
  }
};

template <>
struct SoftmaxExponent<double> {
  double scale, lse;
  __device__ SoftmaxExponent(double s, double l) : scale(s), lse(l) {}
  __device__ __forceinline__ double operator()(double x) const { return fma(scale, x, -lse); }
};

template <typename I, typename A>
__device__ __forceinline__ I store_grad(A v) {
  if constexpr (std::is_same<A, float>::value) {
    return cuda::store_cast_f<I>(v);
  } else {
    return cuda::store_cast<I>(v);
  }
}

// partial layout: [V * B * splits * 4] (max, sum-exp, gap, target sum) then [T * B * splits]
// target mass.
// launch-resources: max_dynamic_smem_bytes=kMaxDynamicSmemBytes opt_in=no
template <typename I, typename A>
__global__ void __launch_bounds__(kThreads)
forward_partial_kernel(PtrArray<const A*> targets, PtrArray<const I*> logits, int T,
                                       int V, int64_t B, int64_t K, A scale, int64_t chunk,
                                       A* __restrict__ partial) {
  extern __shared__ unsigned char smem_raw[];
  A* ys = reinterpret_cast<A*>(smem_raw);
  A* y_all = ys + T * chunk;
  A* y_view = y_all + chunk;
  __shared__ A red[4 * 32];
  const int64_t splits = gridDim.y, split = blockIdx.y, b = blockIdx.x;
  const int64_t k0 = split * chunk;
  const int64_t n = std::min<int64_t>(chunk, K - k0);
  const int64_t row_offset = b * K + k0;
  stage_targets(targets, T, row_offset, n, chunk, ys, y_all);
  A* mass_part = partial + static_cast<int64_t>(V) * B * splits * 4;
  for (int t = 0; t < T; ++t) {
    A local = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) local += ys[t * chunk + j];
    local = cuda::block_reduce_sum(local, red);
    if (threadIdx.x == 0) mass_part[(t * B + b) * splits + split] = local;
  }
  for (int v = 0; v < V; ++v) {
    const I* x = logits.p[v] + row_offset;
    const A* y = view_targets(ys, y_all, y_view, T, v, chunk, n);
    Gap<A> acc{A(-INFINITY), A(0), A(0), A(0)};
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      add_gap(acc, load_acc(x + j), y[j], scale);
    }
    block_merge_gap(acc, scale, red);
    if (threadIdx.x == 0) {
      A* out = partial + ((static_cast<int64_t>(v) * B + b) * splits + split) * 4;
      out[0] = acc.m;
      out[1] = acc.s;
      out[2] = acc.d;
      out[3] = acc.w;
    }
  }
}

// Threads [0, V B) finish one (view, row) each: lse = scale m + log S and contribution =
// scale d + W log S in float64 (W = sum over t != v of the row masses, in float64); threads
// [V B, V B + T B) one target row mass.
template <typename A>
__global__ void __launch_bounds__(kThreads)
forward_merge_kernel(const A* __restrict__ partial, int T, int V, int64_t B,
                                     int64_t splits, double scale, double* __restrict__ lse,
                                     double* __restrict__ contribution, A* __restrict__ mass) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const A* mass_part = partial + static_cast<int64_t>(V) * B * splits * 4;
  if (i < static_cast<int64_t>(V) * B) {
    const int64_t v = i / B, b = i % B;
    Gap<A> acc{A(-INFINITY), A(0), A(0), A(0)};
    for (int64_t sp = 0; sp < splits; ++sp) {
      const A* p = partial + (i * splits + sp) * 4;
      merge_gap(acc, Gap<A>{p[0], p[1], p[2], p[3]}, static_cast<A>(scale));
    }
    double w = 0;
    for (int t = 0; t < T; ++t) {
      if (t == v) continue;
      for (int64_t sp = 0; sp < splits; ++sp) w += mass_part[(t * B + b) * splits + sp];
    }
    const double log_s = log(static_cast<double>(acc.s));
    lse[i] = scale * static_cast<double>(acc.m) + log_s;
    contribution[i] = scale * static_cast<double>(acc.d) + w * log_s;
  } else if (i < static_cast<int64_t>(V + T) * B) {
    const int64_t r = i - static_cast<int64_t>(V) * B;  // t * B + b
    A w = 0;
    for (int64_t sp = 0; sp < splits; ++sp) w += mass_part[r * splits + sp];
    mass[r] = w;
  }
}

// launch-resources: max_dynamic_smem_bytes=kMaxDynamicSmemBytes opt_in=no
template <typename I, typename A>
__global__ void __launch_bounds__(kThreads)
backward_kernel(PtrArray<const A*> targets, PtrArray<const I*> logits, int T, int V,
                                int64_t B, int64_t K, double scale, int64_t chunk,
                                const double* __restrict__ lse, const A* __restrict__ mass,
                                const A* __restrict__ coef_ptr, PtrArray<I*> grads) {
  extern __shared__ unsigned char smem_raw[];
  A* ys = reinterpret_cast<A*>(smem_raw);
  A* y_all = ys + T * chunk;
  A* y_view = y_all + chunk;
  const int64_t b = blockIdx.x;
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t n = std::min<int64_t>(chunk, K - k0);
  const int64_t row_offset = b * K + k0;
  stage_targets(targets, T, row_offset, n, chunk, ys, y_all);
  const A coef = *coef_ptr;
  for (int v = 0; v < V; ++v) {
    const I* x = logits.p[v] + row_offset;
    I* g = grads.p[v] + row_offset;
    A w = 0;  // W_vb: the row masses over t != v, in the order view_targets adds the targets
    for (int t = 0; t < T; ++t) {
      if (t != v) w += mass[t * B + b];
    }
    const A* y = view_targets(ys, y_all, y_view, T, v, chunk, n);
    const SoftmaxExponent<A> exponent(scale, lse[static_cast<int64_t>(v) * B + b]);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const A p = acc_exp(exponent(load_acc(x + j)));
      g[j] = store_grad<I>(coef * (w * p - y[j]));
    }
  }
}

// Shared memory: the T target chunks, their sum and one view's summed targets (T + 2 chunks).
template <typename A>
int64_t chunk_of(const Problem& p) {
  const int64_t elem = static_cast<int64_t>(sizeof(A));
  const int64_t fit = kMaxDynamicSmemBytes / ((p.targets + 2) * elem) / 32 * 32;
  return std::max<int64_t>(32, std::min<int64_t>(kChunkBytes / elem, fit));
}

template <typename A>
size_t smem_bytes(const Problem& p) {
  return static_cast<size_t>((p.targets + 2) * chunk_of<A>(p) * sizeof(A));
}

template <typename P, typename Q>
PtrArray<P> to_array(Q const* src, int64_t n) {
  PtrArray<P> out{};
  for (int64_t i = 0; i < n; ++i) out.p[i] = static_cast<P>(src[i]);
  return out;
}

}  // namespace

int64_t forward_partials_cuda(const Problem& p, bool is_double) {
  const int64_t splits = ceil_div(p.cols, is_double ? chunk_of<double>(p) : chunk_of<float>(p));
  return (p.views * 4 + p.targets) * p.rows * splits;
}

void forward_cuda(DType dtype, const Problem& p, const void* const* targets,
                  const void* const* logits, void* partial, void* lse, void* contribution,
                  void* mass, cudaStream_t stream) {
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using I = decltype(tag);
    using A = acc_t<I>;
    const int64_t chunk = chunk_of<A>(p);
    const int64_t splits = ceil_div(p.cols, chunk);
    const dim3 grid(static_cast<unsigned>(p.rows), static_cast<unsigned>(splits));
    cuda::launch("multiview_cross_entropy forward_partial", forward_partial_kernel<I, A>, grid,
                 dim3(kThreads), smem_bytes<A>(p), stream, to_array<const A*>(targets, p.targets),
                 to_array<const I*>(logits, p.views), static_cast<int>(p.targets),
                 static_cast<int>(p.views), p.rows, p.cols, static_cast<A>(p.scale), chunk,
                 static_cast<A*>(partial));
    const int64_t total = (p.views + p.targets) * p.rows;
    cuda::launch("multiview_cross_entropy forward_merge", forward_merge_kernel<A>,
                 dim3(static_cast<unsigned>(ceil_div(total, kThreads))), dim3(kThreads), 0, stream,
                 static_cast<const A*>(partial), static_cast<int>(p.targets),
                 static_cast<int>(p.views), p.rows, splits, p.scale, static_cast<double*>(lse),
                 static_cast<double*>(contribution), static_cast<A*>(mass));
  });
}

void backward_cuda(DType dtype, const Problem& p, const void* const* targets,
                   const void* const* logits, const void* lse, const void* mass,
                   const void* coef, void* const* grads, cudaStream_t stream) {
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using I = decltype(tag);
    using A = acc_t<I>;
    const int64_t chunk = chunk_of<A>(p);
    const dim3 grid(static_cast<unsigned>(p.rows), static_cast<unsigned>(ceil_div(p.cols, chunk)));
    cuda::launch("multiview_cross_entropy backward", backward_kernel<I, A>, grid, dim3(kThreads),
                 smem_bytes<A>(p), stream, to_array<const A*>(targets, p.targets),
                 to_array<const I*>(logits, p.views), static_cast<int>(p.targets),
                 static_cast<int>(p.views), p.rows, p.cols, p.scale, chunk,
                 static_cast<const double*>(lse), static_cast<const A*>(mass),
                 static_cast<const A*>(coef), to_array<I*>(grads, p.views));
  });
}

}  // namespace multiview_ce
}  // namespace jem_fast

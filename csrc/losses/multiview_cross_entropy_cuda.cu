// multiview_cross_entropy CUDA kernels. A block owns one row b and one column chunk of every
// tensor: it stages the T target chunks (and their sum) in shared memory once, then streams each
// student view's chunk through an online (max, sum-exp) pair and a dot with the summed targets.
// A second small kernel merges the column chunks per (view, row). The backward has the same
// shape and writes each gradient element once. Logits are read in their own dtype, everything
// accumulates in float32 (float64 for float64). CUDA headers only.
#include <cmath>

#include "common/cuda_utils.cuh"
#include "common/online_lse.cuh"
#include "losses/multiview_cross_entropy_kernels.h"

namespace jem_fast {
namespace multiview_ce {

namespace {

using cuda::acc_t;
using cuda::ceil_div;
using cuda::acc_exp;
using cuda::acc_log;
using cuda::add_lse;
using cuda::block_merge_lse;
using cuda::load_acc;
using cuda::merge_lse;

constexpr int kThreads = 256;
// Columns per chunk: 4 KiB of one target row, fewer when the T chunks + their sum would not fit
// the dynamic shared-memory budget (kept under the 48 KiB every GPU grants without opt-in, with
// room for the static reduction arrays): T = 64 float64 targets get 64-column chunks.
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

// partial layout: [V * B * splits * 3] (max, sum-exp, dot) then [T * B * splits] target mass.
// launch-resources: max_dynamic_smem_bytes=kMaxDynamicSmemBytes opt_in=no
template <typename I, typename A>
__global__ void __launch_bounds__(kThreads)
forward_partial_kernel(PtrArray<const A*> targets, PtrArray<const I*> logits, int T,
                                       int V, int64_t B, int64_t K, A scale, int64_t chunk,
                                       A* __restrict__ partial) {
  extern __shared__ unsigned char smem_raw[];
  A* ys = reinterpret_cast<A*>(smem_raw);
  A* y_all = ys + T * chunk;
  __shared__ A red_m[32], red_s[32], red[32];
  const int64_t splits = gridDim.y, split = blockIdx.y, b = blockIdx.x;
  const int64_t k0 = split * chunk;
  const int64_t n = std::min<int64_t>(chunk, K - k0);
  const int64_t row_offset = b * K + k0;
  stage_targets(targets, T, row_offset, n, chunk, ys, y_all);
  A* mass_part = partial + static_cast<int64_t>(V) * B * splits * 3;
  for (int t = 0; t < T; ++t) {
    A local = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) local += ys[t * chunk + j];
    local = cuda::block_reduce_sum(local, red);
    if (threadIdx.x == 0) mass_part[(t * B + b) * splits + split] = local;
  }
  for (int v = 0; v < V; ++v) {
    const I* x = logits.p[v] + row_offset;
    const A* y_self = v < T ? ys + v * chunk : nullptr;
    A m = -INFINITY, s = 0, d = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const A xv = load_acc(x + j);
      add_lse(m, s, scale * xv);
      d += (y_self ? y_all[j] - y_self[j] : y_all[j]) * xv;
    }
    block_merge_lse(m, s, red_m, red_s);
    d = cuda::block_reduce_sum(d, red);
    if (threadIdx.x == 0) {
      A* out = partial + ((static_cast<int64_t>(v) * B + b) * splits + split) * 3;
      out[0] = m;
      out[1] = s;
      out[2] = d;
    }
  }
}

// Threads [0, V B) finish one (view, row) each; threads [V B, V B + T B) one target row mass.
template <typename A>
__global__ void __launch_bounds__(kThreads)
forward_merge_kernel(const A* __restrict__ partial, int T, int V, int64_t B,
                                     int64_t splits, A scale, A* __restrict__ lse,
                                     A* __restrict__ contribution, A* __restrict__ mass) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const A* mass_part = partial + static_cast<int64_t>(V) * B * splits * 3;
  if (i < static_cast<int64_t>(V) * B) {
    const int64_t v = i / B, b = i % B;
    A m = -INFINITY, s = 0, d = 0;
    for (int64_t sp = 0; sp < splits; ++sp) {
      const A* p = partial + (i * splits + sp) * 3;
      merge_lse(m, s, p[0], p[1]);
      d += p[2];
    }
    A w = 0;
    for (int t = 0; t < T; ++t) {
      if (t == v) continue;
      for (int64_t sp = 0; sp < splits; ++sp) w += mass_part[(t * B + b) * splits + sp];
    }
    const A l = m + acc_log(s);
    lse[i] = l;
    contribution[i] = w * l - scale * d;
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
                                int64_t B, int64_t K, A scale, int64_t chunk,
                                const A* __restrict__ lse, const A* __restrict__ mass,
                                const A* __restrict__ coef_ptr, PtrArray<I*> grads) {
  extern __shared__ unsigned char smem_raw[];
  A* ys = reinterpret_cast<A*>(smem_raw);
  A* y_all = ys + T * chunk;
  const int64_t b = blockIdx.x;
  const int64_t k0 = static_cast<int64_t>(blockIdx.y) * chunk;
  const int64_t n = std::min<int64_t>(chunk, K - k0);
  const int64_t row_offset = b * K + k0;
  stage_targets(targets, T, row_offset, n, chunk, ys, y_all);
  const A coef = *coef_ptr;
  A total_mass = 0;
  for (int t = 0; t < T; ++t) total_mass += mass[t * B + b];
  for (int v = 0; v < V; ++v) {
    const I* x = logits.p[v] + row_offset;
    I* g = grads.p[v] + row_offset;
    const A* y_self = v < T ? ys + v * chunk : nullptr;
    const A w = v < T ? total_mass - mass[v * B + b] : total_mass;
    const A l = lse[static_cast<int64_t>(v) * B + b];
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
      const A p = acc_exp(scale * load_acc(x + j) - l);
      const A y = y_self ? y_all[j] - y_self[j] : y_all[j];
      g[j] = cuda::store_cast<I>(static_cast<double>(coef * (w * p - y)));
    }
  }
}

template <typename A>
int64_t chunk_of(const Problem& p) {
  const int64_t elem = static_cast<int64_t>(sizeof(A));
  const int64_t fit = kMaxDynamicSmemBytes / ((p.targets + 1) * elem) / 32 * 32;
  return std::max<int64_t>(32, std::min<int64_t>(kChunkBytes / elem, fit));
}

template <typename A>
size_t smem_bytes(const Problem& p) {
  return static_cast<size_t>((p.targets + 1) * chunk_of<A>(p) * sizeof(A));
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
  return (p.views * 3 + p.targets) * p.rows * splits;
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
                 static_cast<int>(p.views), p.rows, splits, static_cast<A>(p.scale),
                 static_cast<A*>(lse), static_cast<A*>(contribution), static_cast<A*>(mass));
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
                 static_cast<int>(p.views), p.rows, p.cols, static_cast<A>(p.scale), chunk,
                 static_cast<const A*>(lse), static_cast<const A*>(mass),
                 static_cast<const A*>(coef), to_array<I*>(grads, p.views));
  });
}

}  // namespace multiview_ce
}  // namespace jem_fast

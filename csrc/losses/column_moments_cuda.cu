// CUDA kernels shared by the covariance losses: paired column moments (split over rows so that
// tall-skinny batches such as N = 32768, D = 256 still fill the GPU), column centering/scaling and
// deterministic Frobenius inner products.
#include "common/cuda_utils.cuh"
#include "losses/column_moments.cuh"
#include "losses/covariance_kernels.h"

namespace jem_fast {
namespace covariance {

using cuda::acc_t;
using cuda::ceil_div;
using cuda::load_acc;

namespace {

constexpr int kTileCols = 32;   // threadIdx.x: one column each, a warp reads one row segment
constexpr int kTileRows = 8;    // threadIdx.y: rows interleaved within a split
constexpr int kTargetBlocks = 1024;
constexpr int kFrobeniusBlocks = 1024;
constexpr int kFrobeniusThreads = 256;
constexpr int kElementwiseThreads = 256;

// The moments are accumulated in double (for float32 inputs the differences and products are
// exact there): Barlow Twins' gradient is proportional to 1 - C_ii, which float32 sums would
// swamp when the views are highly correlated. Six FMAs per element pair, memory bound on every
// GPU, FP64 rate included.
template <typename T>
__global__ void __launch_bounds__(kTileCols * kTileRows)
paired_column_moments_kernel(const T* __restrict__ za, const T* __restrict__ zb,
                                             int64_t N, int64_t D, int64_t rows_per_split,
                                             double* __restrict__ partials) {
  using A = double;
  __shared__ A shared[kNumMoments - 2][kTileRows][kTileCols];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTileCols + threadIdx.x;
  const int64_t r0 = static_cast<int64_t>(blockIdx.y) * rows_per_split;
  const int64_t r1 = r0 + rows_per_split < N ? r0 + rows_per_split : N;
  A acc[kNumMoments - 2] = {A(0), A(0), A(0), A(0), A(0), A(0)};
  A shift_a = A(0), shift_b = A(0);
  if (col < D) {
    shift_a = static_cast<A>(load_acc(za + col));
    shift_b = static_cast<A>(load_acc(zb + col));
    for (int64_t r = r0 + threadIdx.y; r < r1; r += kTileRows) {
      const A a = static_cast<A>(load_acc(za + r * D + col));
      const A b = static_cast<A>(load_acc(zb + r * D + col));
      const A da = a - shift_a, db = b - shift_b, diff = a - b;
      acc[kSumA] += da;
      acc[kSumB] += db;
      acc[kSumAA] += da * da;
      acc[kSumBB] += db * db;
      acc[kSumAB] += da * db;
      acc[kSumDiffSq] += diff * diff;
    }
  }
#pragma unroll
  for (int m = 0; m < kNumMoments - 2; ++m) shared[m][threadIdx.y][threadIdx.x] = acc[m];
  __syncthreads();
  if (threadIdx.y == 0 && col < D) {
    A* out = partials + static_cast<int64_t>(blockIdx.y) * kNumMoments * D;
#pragma unroll
    for (int m = 0; m < kNumMoments - 2; ++m) {
      A s = A(0);
      for (int y = 0; y < kTileRows; ++y) s += shared[m][y][threadIdx.x];
      out[m * D + col] = s;
    }
    out[kShiftA * D + col] = shift_a;
    out[kShiftB * D + col] = shift_b;
  }
}

template <typename T, typename A>
__global__ void __launch_bounds__(kElementwiseThreads)
center_scale_columns_kernel(const T* __restrict__ z, const A* __restrict__ mean,
                                            const A* __restrict__ scale, int64_t N, int64_t D,
                                            T* __restrict__ out) {
  const int64_t total = N * D;
  for (cuda::GridStrideCursor c(D); c.i < total; c.advance()) {
    const int64_t i = c.i, d = c.col;
    A v = load_acc(z + i) - mean[d];
    if (scale != nullptr) v *= scale[d];
    out[i] = cuda::store_cast<T>(static_cast<double>(v));
  }
}

struct FrobeniusPairs {
  const void* u[2];
  const void* v[2];
  int num_pairs;
};

template <typename A>
__global__ void __launch_bounds__(kFrobeniusThreads)
frobenius_partials_kernel(FrobeniusPairs pairs, int64_t R, int64_t C,
                                          bool skip_diagonal, double* __restrict__ partials) {
  __shared__ double shared[32];
  const int64_t total = R * C;
  double block_sum = 0.0;
  for (int p = 0; p < pairs.num_pairs; ++p) {
    const A* u = static_cast<const A*>(pairs.u[p]);
    const A* v = static_cast<const A*>(pairs.v[p]);
    A acc = A(0);
    for (cuda::GridStrideCursor c(C); c.i < total; c.advance()) {
      if (skip_diagonal && c.row == c.col) continue;
      acc += u[c.i] * v[c.i];
    }
    block_sum += static_cast<double>(acc);
  }
  const double s = cuda::block_reduce_sum<double>(block_sum, shared);
  if (threadIdx.x == 0) partials[blockIdx.x] = s;
}

template <typename A>
__global__ void __launch_bounds__(kFrobeniusThreads)
add_scaled_sum_kernel(const double* __restrict__ partials, int n, double scale,
                                      A* __restrict__ terms, int term_index) {
  __shared__ double shared[32];
  double s = 0.0;
  for (int i = threadIdx.x; i < n; i += blockDim.x) s += partials[i];
  s = cuda::block_reduce_sum<double>(s, shared);
  if (threadIdx.x == 0) {
    terms[term_index] = static_cast<A>(static_cast<double>(terms[term_index]) + scale * s);
  }
}

}  // namespace

int64_t moments_num_row_splits_cuda(int64_t N, int64_t D) {
  const int64_t col_tiles = ceil_div(D, kTileCols);
  int64_t splits = ceil_div(kTargetBlocks, col_tiles);
  const int64_t max_splits = ceil_div(N, 4 * kTileRows);  // at least 32 rows per split
  if (splits > max_splits) splits = max_splits;
  if (splits > 65535) splits = 65535;
  return splits < 1 ? 1 : splits;
}

int64_t cuda_workspace_bytes(int64_t N, int64_t D) {
  const int64_t frobenius = kFrobeniusBlocks * static_cast<int64_t>(sizeof(double));
  const int64_t column_sums =
      (moments_num_row_splits_cuda(N, D) + 2) * D * static_cast<int64_t>(sizeof(double));
  return std::max({frobenius, column_sums, finalize_workspace_bytes(D)});
}

void paired_column_moments_cuda(DType dtype, const void* za, const void* zb, int64_t N, int64_t D,
                                void* partials, cudaStream_t stream) {
  const int64_t splits = moments_num_row_splits_cuda(N, D);
  const int64_t rows_per_split = ceil_div(N, splits);
  const dim3 grid(static_cast<unsigned>(ceil_div(D, kTileCols)), static_cast<unsigned>(splits));
  const dim3 block(kTileCols, kTileRows);
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    cuda::launch("paired_column_moments", paired_column_moments_kernel<T>, grid, block, 0, stream,
                 static_cast<const T*>(za), static_cast<const T*>(zb), N, D, rows_per_split,
                 static_cast<double*>(partials));
  });
}

void center_scale_columns_cuda(DType dtype, const void* z, const void* mean, const void* scale,
                               int64_t N, int64_t D, void* out, cudaStream_t stream) {
  const unsigned blocks = cuda::elementwise_blocks(N * D, kElementwiseThreads, 4096);
  cuda::dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    using A = acc_t<T>;
    cuda::launch("center_scale_columns", center_scale_columns_kernel<T, A>, dim3(blocks),
                 dim3(kElementwiseThreads), 0, stream, static_cast<const T*>(z),
                 static_cast<const A*>(mean), static_cast<const A*>(scale), N, D,
                 static_cast<T*>(out));
  });
}

void add_frobenius_dots_cuda(bool is_double, int num_pairs, const void* const* u,
                             const void* const* v, int64_t R, int64_t C, bool skip_diagonal,
                             double scale, void* terms, int term_index, void* workspace,
                             cudaStream_t stream) {
  if (num_pairs < 1 || num_pairs > 2) {
    throw std::invalid_argument("jem_fast: add_frobenius_dots_cuda takes 1 or 2 pairs, got " +
                                std::to_string(num_pairs));
  }
  FrobeniusPairs pairs{};
  pairs.num_pairs = num_pairs;
  for (int p = 0; p < num_pairs; ++p) {
    pairs.u[p] = u[p];
    pairs.v[p] = v[p];
  }
  const unsigned blocks = cuda::elementwise_blocks(R * C, kFrobeniusThreads, kFrobeniusBlocks);
  double* partials = static_cast<double*>(workspace);
  cuda::dispatch_acc(is_double, [&](auto tag) {
    using A = decltype(tag);
    cuda::launch("frobenius_partials", frobenius_partials_kernel<A>, dim3(blocks),
                 dim3(kFrobeniusThreads), 0, stream, pairs, R, C, skip_diagonal, partials);
    cuda::launch("frobenius_add_scaled_sum", add_scaled_sum_kernel<A>, dim3(1),
                 dim3(kFrobeniusThreads), 0, stream, static_cast<const double*>(partials),
                 static_cast<int>(blocks), scale, static_cast<A*>(terms), term_index);
  });
}

}  // namespace covariance
}  // namespace jem_fast

// Device helpers for the raw-pointer kernels: element loads/stores in the accumulation type,
// block reductions and the runtime dtype dispatch. CUDA headers only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "common/kernel_dtype.h"

namespace jem_fast {
namespace cuda {

template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> using acc_t = typename AccOf<T>::type;

__device__ __forceinline__ float load_acc(const float* p) { return *p; }
__device__ __forceinline__ double load_acc(const double* p) { return *p; }
__device__ __forceinline__ float load_acc(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load_acc(const __nv_bfloat16* p) { return __bfloat162float(*p); }

template <typename T> __device__ __forceinline__ T store_cast(double v);
template <> __device__ __forceinline__ float store_cast<float>(double v) { return static_cast<float>(v); }
template <> __device__ __forceinline__ double store_cast<double>(double v) { return v; }
template <> __device__ __forceinline__ __half store_cast<__half>(double v) {
  return __float2half_rn(static_cast<float>(v));
}
template <> __device__ __forceinline__ __nv_bfloat16 store_cast<__nv_bfloat16>(double v) {
  return __float2bfloat16_rn(static_cast<float>(v));
}
template <typename T> __device__ __forceinline__ T store_cast_f(float v) {
  return store_cast<T>(static_cast<double>(v));
}
template <> __device__ __forceinline__ float store_cast_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __half store_cast_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 store_cast_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Sum of `v` over the block; every thread gets the result. blockDim.x * y must be a multiple of
// 32 and at most 1024. `shared` holds at least 32 values.
template <typename T>
__device__ T block_reduce_sum(T v, T* shared) {
  const int tid = threadIdx.x + threadIdx.y * blockDim.x;
  const int nthreads = blockDim.x * blockDim.y;
  for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
  __syncthreads();  // `shared` may still be read by a previous call
  if ((tid & 31) == 0) shared[tid >> 5] = v;
  __syncthreads();
  const int nwarps = nthreads >> 5;
  v = tid < nwarps ? shared[tid] : T(0);
  if (tid < 32) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_down_sync(0xffffffffu, v, offset);
    if (tid == 0) shared[0] = v;
  }
  __syncthreads();
  return shared[0];
}

// Launches `kernel` and throws if that launch fails, with the configuration in the message.
// cudaLaunchKernelEx returns the status of this launch itself; cudaGetLastError after a <<<>>>
// launch could report (and clear) an earlier kernel's error instead. An empty grid launches
// nothing. Under HIP-CPU emulation (tests/cuda_emu) the kernel runs on CPU threads.
template <typename... Params, typename... Args>
void launch(const char* what, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem_bytes,
            cudaStream_t stream, Args&&... args) {
  if (grid.x == 0 || grid.y == 0 || grid.z == 0) return;
#ifdef __HIP_CPU_RT__
  hipLaunchKernelGGL(kernel, grid, block, smem_bytes, stream, static_cast<Params>(args)...);
  const cudaError_t err = cudaGetLastError();
#else
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = block;
  config.dynamicSmemBytes = smem_bytes;
  config.stream = stream;
  const cudaError_t err = cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...);
#endif
  if (err != cudaSuccess) {
    throw std::runtime_error(
        std::string("jem_fast: CUDA launch of ") + what + " failed: " + cudaGetErrorString(err) +
        " (grid " + std::to_string(grid.x) + "x" + std::to_string(grid.y) + "x" +
        std::to_string(grid.z) + ", block " + std::to_string(block.x) + "x" +
        std::to_string(block.y) + ", " + std::to_string(smem_bytes) + " B dynamic shared memory)");
  }
}

// A grid-stride loop over the elements of a row-major (rows, cols) array that keeps the element's
// row and column without a 64-bit division per element (tens of cycles each in a memory-bound
// loop): one division when the thread starts, then additions.
struct GridStrideCursor {
  int64_t i, row, col;
  int64_t cols, step, step_rows, step_cols;
  __device__ __forceinline__ explicit GridStrideCursor(int64_t num_cols) : cols(num_cols) {
    i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
    step = static_cast<int64_t>(gridDim.x) * blockDim.x;
    row = i / cols;
    col = i - row * cols;
    step_rows = step / cols;
    step_cols = step - step_rows * cols;
  }
  __device__ __forceinline__ void advance() {
    i += step;
    row += step_rows;
    col += step_cols;
    if (col >= cols) {
      col -= cols;
      ++row;
    }
  }
};

// Blocks for a grid-stride elementwise kernel over `total` elements: enough to fill any GPU
// (a few waves on 132+ SMs), never more than there are elements.
inline unsigned elementwise_blocks(int64_t total, int threads, int64_t max_blocks) {
  const int64_t blocks = (total + threads - 1) / threads;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(blocks, max_blocks)));
}

// Calls f(T{}) with T the CUDA element type for `dtype`.
template <typename F>
void dispatch_dtype(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32: f(float{}); break;
    case DType::kFloat64: f(double{}); break;
    case DType::kFloat16: f(__half{}); break;
    case DType::kBFloat16: f(__nv_bfloat16{}); break;
  }
}

template <typename F>
void dispatch_acc(bool is_double, F&& f) {
  if (is_double) {
    f(double{});
  } else {
    f(float{});
  }
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Row slices for a column reduction split across grid.y: enough blocks to fill an H100/H200
// (132 SMs) a few times over, at least `min_rows_per_slice` rows per slice, at most 65535.
inline int64_t row_slices(int64_t rows, int64_t column_blocks, int64_t min_rows_per_slice) {
  constexpr int64_t kTargetBlocks = 132 * 4;
  int64_t slices = ceil_div(kTargetBlocks, column_blocks);
  slices = std::min<int64_t>(slices, ceil_div(rows, min_rows_per_slice));
  return std::max<int64_t>(1, std::min<int64_t>(slices, 65535));
}

}  // namespace cuda
}  // namespace jem_fast

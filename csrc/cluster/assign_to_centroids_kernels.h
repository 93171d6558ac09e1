// Raw-pointer kernels of jem_fast::assign_to_centroids (nearest centroid by cosine similarity).
//
// CPU: one fused kernel. Centroids are normalized once into panels of kPanel consecutive
// centroids stored dimension-major ([K / kPanel][D][kPanel]), so the inner loop over a panel is
// a vector FMA and a panel (D * kPanel values) stays in L1 while every row of a row block passes
// over it. Each row keeps a running (max, argmax); no B x K score matrix exists.
// CUDA: the host loop (assign_to_centroids.cpp) forms bounded tiles of raw dot products with
// cuBLAS (tensor cores for half inputs, float32 accumulation); these kernels give the inverse
// row norms and fold each tile into the per-row running (max, argmax).
//
// Ties: the lowest centroid index wins (centroids are scanned in increasing order and only a
// strictly larger cosine replaces the running best). Zero vectors: a zero-norm feature or
// centroid has cosine 0 with everything (its inverse norm is taken as 0, never inf/NaN).
#pragma once

#include <cstdint>

#include "common/kernel_dtype.h"

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace jem_fast {
namespace cluster {

// index[i] = argmax_k cos(x_i, c_k), score[i] = that cosine. x (B, D) and c (K, D) contiguous,
// in dtype `dtype`; score is float64 for float64 input, float32 otherwise.
void assign_to_centroids_cpu(DType dtype, const void* x, const void* c, int64_t B, int64_t K,
                             int64_t D, int64_t* index, void* score);

#ifdef WITH_CUDA
// inv_norm[i] = 1 / ||x_i|| (0 for a zero row) of a contiguous (rows, D) matrix in `dtype`;
// inv_norm is float64 for float64 input, float32 otherwise.
void inverse_row_norms_cuda(DType dtype, const void* x, int64_t rows, int64_t D, void* inv_norm,
                            cudaStream_t stream);

// Folds one tile S (rows x cols, raw dot products, row-major, float32 or float64) whose columns
// are centroids [col0, col0 + cols) into the running best of each row:
//   cos = S[i, j] * inv_x[i] * inv_c[col0 + j]; replace when cos > score[i] (first tile: always).
// On the last tile a row that never saw a comparable cosine (NaN input) gets score NaN.
void argmax_tile_cuda(bool is_double, const void* S, int64_t rows, int64_t cols, int64_t col0,
                      const void* inv_x, const void* inv_c, bool first, bool last, int64_t* index,
                      void* score, cudaStream_t stream);
#endif

}  // namespace cluster
}  // namespace jem_fast

// Raw-pointer kernels of the covariance-regularization losses (VICReg, Barlow Twins).
//
// Nothing here includes ATen: the CPU kernels live in *_cpu.cpp, the CUDA kernels in *_cuda.cu,
// and the host ops (vicreg.cpp, barlow_twins.cpp) check inputs, run the matmuls through ATen and
// call these. All arrays are contiguous and row-major. Accumulation is in `acc` precision: double
// for float64 inputs, float for everything else (the CUDA reductions of partial sums use double),
// except the column moments, which are accumulated and stored in double for every input dtype.
#pragma once

#include <cstdint>

#include "common/kernel_dtype.h"

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace jem_fast {
namespace covariance {

// Per-column sums over the N rows of a pair of (N, D) arrays, in double. Each view is shifted by
// its first row (the "shifted data" algorithm) so that the second moments do not cancel
// catastrophically.
enum Moment : int {
  kSumA = 0, kSumB, kSumAA, kSumBB, kSumAB, kSumDiffSq, kShiftA, kShiftB, kNumMoments
};

// Per-column statistics the forward writes and the backward reads, (kNumColStats, D), acc type.
//   VICReg:       mean_a, mean_b, m2_a, m2_b, std_a, std_b   (m2 = centered sum of squares,
//                 std = sqrt(m2 / (N - 1) + eps))
//   Barlow Twins: mean_a, mean_b, inv_std_a, inv_std_b, c_diag, c_diag - 1 (rounded once from
//                 double: the gradient is proportional to c_diag - 1, which a rounded c_diag would
//                 lose when the views are highly correlated)
enum ColStat : int { kMeanA = 0, kMeanB, kStat2A, kStat2B, kStat3A, kStat3B, kNumColStats };

// Flag bits written by the finalize kernels: which input held NaN/Inf (or overflowed the
// accumulator).
enum NonFiniteFlag : int { kNonFiniteA = 1, kNonFiniteB = 2 };

// Number of per-row splits the CUDA moment reduction uses (a function of N and D only, so the
// host can size the partial-sum buffer: num_row_splits * kNumMoments * D doubles).
int64_t moments_num_row_splits_cuda(int64_t N, int64_t D);

// ---------------------------------------------------------------------------------------------
// CPU (float32 / float64; half inputs are upcast by the host op)
// ---------------------------------------------------------------------------------------------
template <typename T>
void paired_column_moments_cpu(const T* za, const T* zb, int64_t N, int64_t D, double* moments);

// out[n, d] = (z[n, d] - mean[d]) * (scale ? scale[d] : 1)
template <typename T>
void center_scale_columns_cpu(const T* z, const T* mean, const T* scale, int64_t N, int64_t D,
                              T* out);

// sum_{i,j} u[i,j] * v[i,j] over an R x C matrix, the diagonal skipped when skip_diagonal.
template <typename T>
double frobenius_dot_cpu(const T* u, const T* v, int64_t R, int64_t C, bool skip_diagonal);

// VICReg: moments -> colstats, terms[0] = invariance, terms[1] = variance and
// terms[2] = -(sum_d m2_a^2 + sum_d m2_b^2) / ((N-1)^2 D) when the Gram route will add the full
// Frobenius norms, 0 otherwise. Returns NonFiniteFlag bits.
template <typename T>
int vicreg_finalize_cpu(const double* moments, int64_t N, int64_t D, double eps, bool gram_route,
                        T* colstats, T* terms);

// VICReg gradient of one view, written once (grad may alias y):
//   grad = alpha * y + x * colscale[d] + beta * (x - x_other + mean_self[d] - mean_other[d])
// with alpha, beta, colscale derived from grad_terms and colstats (view = 0 for z_a, 1 for z_b).
// diagonal_in_y: y = x C (or G x) with the diagonal of C included, which colscale then removes
// (-alpha m2); false when y = x (C - diag C) already (the exact, cancellation-free form).
template <typename T>
void vicreg_backward_view_cpu(const T* grad_terms, const T* y, const T* x, const T* x_other,
                              const T* colstats, int view, int64_t N, int64_t D,
                              bool diagonal_in_y, T* grad);

// Barlow Twins: moments -> colstats (mean, inv_std, c_diag); terms[0] = on-diagonal term,
// terms[1] = -sum_d c_diag^2 when the Gram route will add ||A^T B||^2 / N^2, 0 otherwise.
template <typename T>
int barlow_twins_finalize_cpu(const double* moments, int64_t N, int64_t D, bool gram_route,
                              T* colstats, T* terms);

// Barlow Twins gradient of one view through its batch norm, written once (grad may alias y):
//   dA   = alpha * y + coef[d] * other,  alpha = 2 g1 / N^2,  coef = 2 (g0 (c - 1) - g1 c) / N
//   (c - 1 read as stored, not recomputed from a rounded c)
//   grad = inv_std[d] * (dA - self * mean_n(dA * self))      (mean_n dA = 0 for centered views)
template <typename T>
void barlow_twins_backward_view_cpu(const T* grad_terms, const T* y, const T* self_norm,
                                    const T* other_norm, const T* colstats, int view, int64_t N,
                                    int64_t D, T* grad);

#ifdef WITH_CUDA
// ---------------------------------------------------------------------------------------------
// CUDA (float32 / float64 / float16 / bfloat16 inputs; colstats, terms, y and grams in float32,
// or float64 for float64 inputs). `workspace` is device memory of at least
// cuda_workspace_bytes(N, D) bytes.
// ---------------------------------------------------------------------------------------------
int64_t cuda_workspace_bytes(int64_t N, int64_t D);

// partials: (num_row_splits, kNumMoments, D) doubles, whatever the input dtype.
void paired_column_moments_cuda(DType dtype, const void* za, const void* zb, int64_t N, int64_t D,
                                void* partials, cudaStream_t stream);

void center_scale_columns_cuda(DType dtype, const void* z, const void* mean, const void* scale,
                               int64_t N, int64_t D, void* out, cudaStream_t stream);

// terms[term_index] += scale * sum over the pairs of frobenius_dot(u_k, v_k); acc is float32 or
// float64 (is_double). Uses workspace for deterministic block partials.
void add_frobenius_dots_cuda(bool is_double, int num_pairs, const void* const* u,
                             const void* const* v, int64_t R, int64_t C, bool skip_diagonal,
                             double scale, void* terms, int term_index, void* workspace,
                             cudaStream_t stream);

// The finalize kernels read the double moment partials, write colstats and terms in float32
// (float64 when is_double) and use `workspace` (cuda_workspace_bytes) for their per-block
// partials.
void vicreg_finalize_cuda(bool is_double, const void* partials, int64_t num_splits, int64_t N,
                          int64_t D, double eps, bool gram_route, void* colstats, void* terms,
                          int* flags, void* workspace, cudaStream_t stream);

void vicreg_backward_view_cuda(DType dtype, const void* grad_terms, const void* y, const void* x,
                               const void* x_other, const void* colstats, int view, int64_t N,
                               int64_t D, bool diagonal_in_y, void* grad, cudaStream_t stream);

void barlow_twins_finalize_cuda(bool is_double, const void* partials, int64_t num_splits,
                                int64_t N, int64_t D, bool gram_route, void* colstats,
                                void* terms, int* flags, void* workspace, cudaStream_t stream);

void barlow_twins_backward_view_cuda(DType dtype, const void* grad_terms, const void* y,
                                     const void* self_norm, const void* other_norm,
                                     const void* colstats, int view, int64_t N, int64_t D,
                                     void* grad, void* workspace, cudaStream_t stream);
#endif

}  // namespace covariance
}  // namespace jem_fast

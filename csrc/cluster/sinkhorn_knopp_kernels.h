// Raw-pointer kernels of the log-domain Sinkhorn-Knopp op (jem_fast::sinkhorn_knopp).
//
// With logits L = scale * S (scale = 1 / epsilon) the transport plan is never stored during the
// iterations; it is P_bk = exp(L_bk + f_b + g_k), carried by two potentials:
//   column step (SwAV's "rows": one per prototype k, summed over the global batch):
//       g_k = -log K - LSE_b(L_bk + f_b)
//   row step (one per sample b, local to a rank):
//       f_b = -log B_global - LSE_k(L_bk + g_k)
//   plan:  Q_bk = B_global * exp(L_bk + f_b + g_k)        (every row of Q sums to 1)
// Every exponent is shifted by its own exact maximum, so no epsilon and no score magnitude can
// overflow, and a prototype far from every sample still gets its 1/K of mass (a global max shift
// would underflow it to 0 and produce 0 * inf = NaN). Each step is one pass over S.
//
// Precision. f_b and g_k grow like |L| (a sample's potential cancels its best logit) while
// L_bk + f_b + g_k is O(1) where the plan has mass: in float32, |L| ~ 2e4 left ~1e-3 of
// rounding in every exponent and |L| ~ 2e7 left O(1) (row sums off by 6). So the potentials and
// the column statistics are float64 for every score dtype, and every exponent is formed in
// extended precision before its exp (float32 exp for float scores):
//   CPU: in double.
//   CUDA (float scores): float-float, no FP64 arithmetic per element (FP64 runs at 1/64 of the
//   FP32 rate on consumer GPUs): scale = sh + sl, a potential = hi + lo (float pairs, split on the
//   host or once per block), scale * S by an exact FMA product, sums by TwoSum; ~48 significant
//   bits, so the exponents keep float32 accuracy up to |L| ~ 1e7 and degrade gracefully beyond.
// The last row step and the plan are fused (row_plan): Q_b = softmax_k(L_bk + g_k) computed from
// the same rounded exponents as its normalizer, so every row of Q sums to 1 to the rounding of
// Q's dtype for any finite input. The float64 potentials also make the float32 result match the
// float64 computation to float32 rounding instead of to ~|L| * 2^-24.
#pragma once

#include <cstdint>

#include "common/kernel_dtype.h"

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace jem_fast {
namespace sinkhorn {

// CPU kernels: T (float or double) is the score and plan dtype (half scores are upcast to
// float32 by the host); potentials and statistics are double.

// Per column k: colmax[k] = max_b (scale S_bk + f_b), colsum[k] = sum_b exp(scale S_bk + f_b -
// colmax[k]). f may be null (all zeros).
template <typename T>
void column_stats_cpu(const T* S, int64_t B, int64_t K, double scale, const double* f,
                      double* colmax, double* colsum);

// f[b] = -log_rows - LSE_k(scale S_bk + g_k).
template <typename T>
void row_potential_cpu(const T* S, int64_t B, int64_t K, double scale, const double* g,
                       double log_rows, double* f);

// Q[b, k] = rows * exp(scale S_bk + f_b + g_k).
template <typename T>
void plan_cpu(const T* S, int64_t B, int64_t K, double scale, const double* f, const double* g,
              double rows, T* Q);

// The last row step and the plan in one: f[b] = -log_rows - LSE_k(z_bk) and Q[b, :] =
// softmax_k(z_bk) with z = scale S + g, i.e. Q = rows * exp(z + f) normalized exactly.
template <typename T>
void row_plan_cpu(const T* S, int64_t B, int64_t K, double scale, const double* g,
                  double log_rows, double* f, T* Q);

#ifdef WITH_CUDA
// S is read in its own dtype; Q is float64 for float64 scores, float32 otherwise. Potentials:
// row_potential / f outputs are float64 (B,). Potential inputs are pairs: for float64 scores
// *_hi is the float64 potential and *_lo is null; otherwise *_hi and *_lo are float32 vectors
// with hi + lo the float64 potential (hi = float(p), lo = float(p - hi)). f_hi / f_lo may be
// null (all zeros) in column_stats_cuda. `partial` holds column_stats_partials_cuda(B, K) * 2 * K
// float64 elements; colmax and colsum are float64.
int64_t column_stats_partials_cuda(int64_t B, int64_t K);
void column_stats_cuda(DType dtype, const void* S, int64_t B, int64_t K, double scale,
                       const void* f_hi, const void* f_lo, void* partial, void* colmax,
                       void* colsum, cudaStream_t stream);
void row_potential_cuda(DType dtype, const void* S, int64_t B, int64_t K, double scale,
                        const void* g_hi, const void* g_lo, double log_rows, void* f,
                        cudaStream_t stream);
// f: float64 (B,).
void plan_cuda(DType dtype, const void* S, int64_t B, int64_t K, double scale, const void* f,
               const void* g_hi, const void* g_lo, double rows, void* Q, cudaStream_t stream);
void row_plan_cuda(DType dtype, const void* S, int64_t B, int64_t K, double scale,
                   const void* g_hi, const void* g_lo, double log_rows, void* f, void* Q,
                   cudaStream_t stream);
#endif

}  // namespace sinkhorn
}  // namespace jem_fast

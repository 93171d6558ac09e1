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
#pragma once

#include <cstdint>

#include "common/kernel_dtype.h"

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace jem_fast {
namespace sinkhorn {

// Per column k: colmax[k] = max_b (scale S_bk + f_b), colsum[k] = sum_b exp(scale S_bk + f_b -
// colmax[k]). f may be null (all zeros).
template <typename T>
void column_stats_cpu(const T* S, int64_t B, int64_t K, T scale, const T* f, T* colmax,
                      T* colsum);

// f[b] = -log_rows - LSE_k(scale S_bk + g_k).
template <typename T>
void row_potential_cpu(const T* S, int64_t B, int64_t K, T scale, const T* g, T log_rows, T* f);

// Q[b, k] = rows * exp(scale S_bk + f_b + g_k).
template <typename T>
void plan_cpu(const T* S, int64_t B, int64_t K, T scale, const T* f, const T* g, T rows, T* Q);

#ifdef WITH_CUDA
// S is read in its own dtype; potentials, stats and Q are float64 for float64 scores, float32
// otherwise. `partial` holds column_stats_partials_cuda(B, K) * 2 * K accumulator elements.
int64_t column_stats_partials_cuda(int64_t B, int64_t K);
void column_stats_cuda(DType dtype, const void* S, int64_t B, int64_t K, double scale,
                       const void* f, void* partial, void* colmax, void* colsum,
                       cudaStream_t stream);
void row_potential_cuda(DType dtype, const void* S, int64_t B, int64_t K, double scale,
                        const void* g, double log_rows, void* f, cudaStream_t stream);
void plan_cuda(DType dtype, const void* S, int64_t B, int64_t K, double scale, const void* f,
               const void* g, double rows, void* Q, cudaStream_t stream);
#endif

}  // namespace sinkhorn
}  // namespace jem_fast

// Raw-pointer kernels of the memory-linear InfoNCE op family (jem_fast::info_nce_lse).
//
// The host op (info_nce.cpp) walks the N query rows in chunks: S = Q_c K^T (rows x M, float32,
// through ATen/cuBLAS) lives only for one chunk, and these kernels turn it into per-row
// log-sum-exps (forward) or, in place, into the logit gradient dS (backward). No N x M tensor is
// ever allocated. Logits are scale * S; a row may mask up to two columns, mask[i] and mask2[i]
// (its self-pair and its positive, so that the loss can be formed as softplus(LSE of the
// negatives - positive), which keeps every digit when the positive dominates): masked entries
// are skipped, never set to a large negative number, so fp16/bf16-sized scales stay exact. A
// masked entry (i, mask[i]) is left out of both its row and its column. Exponents are formed as
// scale * (S - max), so the largest entry contributes exactly 1.
#pragma once

#include <cstdint>

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace jem_fast {
namespace info_nce {

// lse[i] = log sum_{j != mask[i], mask2[i]} exp(scale * S[i, j]); mask/mask2 may be null (no
// masking), an entry outside [0, M) masks nothing. A row with every entry masked gets -inf.
// T is float or double (the op computes in float32 for every dtype but float64).
template <typename T>
void row_lse_chunk_cpu(const T* S, int64_t rows, int64_t M, T scale, const int64_t* mask,
                       const int64_t* mask2, T* lse);

// lse[j] = log sum_{i: mask[i] != j, mask2[i] != j} exp(scale * S[i, j]) over the rows of one
// chunk (the masks are per row, as above; null: none). An all-masked column gets -inf.
template <typename T>
void col_lse_chunk_cpu(const T* S, int64_t rows, int64_t M, T scale, const int64_t* mask,
                       const int64_t* mask2, T* lse);

// In place: S[i, j] <- g[i] exp(scale S[i, j] - r[i]) + h[j] exp(scale S[i, j] - c[j]), 0 where
// masked. h/c may be null (rows only). g, r are per row of the chunk; h, c per column.
template <typename T>
void logit_grad_chunk_cpu(T* S, int64_t rows, int64_t M, T scale, const int64_t* mask,
                          const int64_t* mask2, const T* g, const T* r, const T* h, const T* c);

#ifdef WITH_CUDA
// is_double selects float64 for S and the vectors, float32 otherwise.
// mask, mask2: device pointers or null, as in the CPU kernels.
void row_lse_chunk_cuda(bool is_double, const void* S, int64_t rows, int64_t M, double scale,
                        const int64_t* mask, const int64_t* mask2, void* lse, cudaStream_t stream);
// workspace: col_lse_workspace_elems(rows, M) values of S's type (per-slice partial pairs).
int64_t col_lse_workspace_elems(int64_t rows, int64_t M);
void col_lse_chunk_cuda(bool is_double, const void* S, int64_t rows, int64_t M, double scale,
                        const int64_t* mask, const int64_t* mask2, void* workspace, void* lse,
                        cudaStream_t stream);
void logit_grad_chunk_cuda(bool is_double, void* S, int64_t rows, int64_t M, double scale,
                           const int64_t* mask, const int64_t* mask2, const void* g,
                           const void* r, const void* h, const void* c, cudaStream_t stream);
#endif

}  // namespace info_nce
}  // namespace jem_fast

// Raw-pointer kernels of the memory-linear InfoNCE op family (jem_fast::info_nce_lse).
//
// The host op (info_nce.cpp) walks the N query rows in chunks: S = Q_c K^T (rows x M, float32,
// through ATen/cuBLAS) lives only for one chunk, and these kernels turn it into per-row
// log-sum-exps (forward) or, in place, into the logit gradient dS (backward). No N x M tensor is
// ever allocated. Logits are scale * S; a row may mask one column (its self-pair): masked entries
// are skipped, never set to a large negative number, so fp16/bf16-sized scales stay exact.
#pragma once

#include <cstdint>

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace jem_fast {
namespace info_nce {

// lse[i] = log sum_{j != mask[i]} exp(scale * S[i, j]); mask may be null (no masking), a
// negative mask entry masks nothing. A row with every entry masked gets -inf.
// T is float or double (the op computes in float32 for every dtype but float64).
template <typename T>
void row_lse_chunk_cpu(const T* S, int64_t rows, int64_t M, T scale, const int64_t* mask, T* lse);

// In place: S[i, j] <- g[i] exp(scale S[i, j] - r[i]) + h[j] exp(scale S[i, j] - c[j]), 0 where
// masked. h/c may be null (rows only). g, r are per row of the chunk; h, c per column.
// lse[j] = log sum_i exp(scale * S[i, j]) over the rows of one chunk (no mask).
template <typename T>
void col_lse_chunk_cpu(const T* S, int64_t rows, int64_t M, T scale, T* lse);

template <typename T>
void logit_grad_chunk_cpu(T* S, int64_t rows, int64_t M, T scale, const int64_t* mask, const T* g,
                          const T* r, const T* h, const T* c);

#ifdef WITH_CUDA
// is_double selects float64 for S and the vectors, float32 otherwise.
void row_lse_chunk_cuda(bool is_double, const void* S, int64_t rows, int64_t M, double scale,
                        const int64_t* mask, void* lse, cudaStream_t stream);
// workspace: col_lse_workspace_elems(rows, M) values of S's type (per-slice partial pairs).
int64_t col_lse_workspace_elems(int64_t rows, int64_t M);
void col_lse_chunk_cuda(bool is_double, const void* S, int64_t rows, int64_t M, double scale,
                        void* workspace, void* lse, cudaStream_t stream);
void logit_grad_chunk_cuda(bool is_double, void* S, int64_t rows, int64_t M, double scale,
                           const int64_t* mask, const void* g, const void* r, const void* h,
                           const void* c, cudaStream_t stream);
#endif

}  // namespace info_nce
}  // namespace jem_fast

// extern "C" wrappers (see wrap_common.h) around the CUDA launchers of the loss kernels:
// covariance (column moments, VICReg, Barlow Twins), InfoNCE and the row-wise cosine similarity.
#include <cstdint>

#include "losses/covariance_kernels.h"
#include "losses/info_nce_kernels.h"
#include "losses/negative_cosine_kernels.h"
#include "wrap_common.h"

namespace cov = jem_fast::covariance;
namespace nce = jem_fast::info_nce;
namespace cosine = jem_fast::cosine;

extern "C" {

// ------------------------------------------------------------------------------ covariance
int emu_moments_num_row_splits_cuda(int64_t N, int64_t D, int64_t* out) {
  EMU_CALL(*out = cov::moments_num_row_splits_cuda(N, D));
}

int emu_cuda_workspace_bytes(int64_t N, int64_t D, int64_t* out) {
  EMU_CALL(*out = cov::cuda_workspace_bytes(N, D));
}

int emu_paired_column_moments_cuda(int dtype, const void* za, const void* zb, int64_t N, int64_t D,
                                   void* partials) {
  EMU_CALL(cov::paired_column_moments_cuda(emu_dtype(dtype), za, zb, N, D, partials, EMU_STREAM));
}

int emu_center_scale_columns_cuda(int dtype, const void* z, const void* mean, const void* scale,
                                  int64_t N, int64_t D, void* out) {
  EMU_CALL(cov::center_scale_columns_cuda(emu_dtype(dtype), z, mean, scale, N, D, out, EMU_STREAM));
}

int emu_add_frobenius_dots_cuda(int is_double, int num_pairs, const void* const* u,
                                const void* const* v, int64_t R, int64_t C, int skip_diagonal,
                                double scale, void* terms, int term_index, void* workspace) {
  EMU_CALL(cov::add_frobenius_dots_cuda(is_double != 0, num_pairs, u, v, R, C, skip_diagonal != 0,
                                        scale, terms, term_index, workspace, EMU_STREAM));
}

int emu_vicreg_finalize_cuda(int is_double, const void* partials, int64_t num_splits, int64_t N,
                             int64_t D, double eps, int gram_route, void* colstats, void* terms,
                             int* flags, void* workspace) {
  EMU_CALL(cov::vicreg_finalize_cuda(is_double != 0, partials, num_splits, N, D, eps,
                                     gram_route != 0, colstats, terms, flags, workspace,
                                     EMU_STREAM));
}

int emu_vicreg_backward_view_cuda(int dtype, const void* grad_terms, const void* y, const void* x,
                                  const void* x_other, const void* colstats, int view, int64_t N,
                                  int64_t D, int diagonal_in_y, void* grad) {
  EMU_CALL(cov::vicreg_backward_view_cuda(emu_dtype(dtype), grad_terms, y, x, x_other, colstats,
                                          view, N, D, diagonal_in_y != 0, grad, EMU_STREAM));
}

int emu_barlow_twins_finalize_cuda(int is_double, const void* partials, int64_t num_splits,
                                   int64_t N, int64_t D, int gram_route, void* colstats,
                                   void* terms, int* flags, void* workspace) {
  EMU_CALL(cov::barlow_twins_finalize_cuda(is_double != 0, partials, num_splits, N, D,
                                           gram_route != 0, colstats, terms, flags, workspace,
                                           EMU_STREAM));
}

int emu_barlow_twins_backward_view_cuda(int dtype, const void* grad_terms, const void* y,
                                        const void* self_norm, const void* other_norm,
                                        const void* colstats, int view, int64_t N, int64_t D,
                                        void* grad, void* workspace) {
  EMU_CALL(cov::barlow_twins_backward_view_cuda(emu_dtype(dtype), grad_terms, y, self_norm,
                                                other_norm, colstats, view, N, D, grad, workspace,
                                                EMU_STREAM));
}

// ------------------------------------------------------------------------------ InfoNCE
int emu_row_lse_chunk_cuda(int is_double, const void* S, int64_t rows, int64_t M, double scale,
                           const int64_t* mask, const int64_t* mask2, void* lse) {
  EMU_CALL(nce::row_lse_chunk_cuda(is_double != 0, S, rows, M, scale, mask, mask2, lse,
                                   EMU_STREAM));
}

int emu_col_lse_workspace_elems(int64_t rows, int64_t M, int64_t* out) {
  EMU_CALL(*out = nce::col_lse_workspace_elems(rows, M));
}

int emu_col_lse_chunk_cuda(int is_double, const void* S, int64_t rows, int64_t M, double scale,
                           const int64_t* mask, const int64_t* mask2, void* workspace, void* lse) {
  EMU_CALL(nce::col_lse_chunk_cuda(is_double != 0, S, rows, M, scale, mask, mask2, workspace, lse,
                                   EMU_STREAM));
}

int emu_logit_grad_chunk_cuda(int is_double, void* S, int64_t rows, int64_t M, double scale,
                              const int64_t* mask, const int64_t* mask2, const void* g,
                              const void* r, const void* h, const void* c) {
  EMU_CALL(nce::logit_grad_chunk_cuda(is_double != 0, S, rows, M, scale, mask, mask2, g, r, h, c,
                                      EMU_STREAM));
}

// ------------------------------------------------------------------------------ cosine
int emu_cosine_rows_forward_cuda(int dtype, const void* x0, const void* x1, int64_t N, int64_t D,
                                 double eps, void* cos, void* norms) {
  EMU_CALL(cosine::cosine_rows_forward_cuda(emu_dtype(dtype), x0, x1, N, D, eps, cos, norms,
                                            EMU_STREAM));
}

int emu_cosine_rows_backward_cuda(int dtype, const void* grad, const void* x0, const void* x1,
                                  const void* cos, const void* norms, int64_t N, int64_t D,
                                  double eps, void* grad_x0, void* grad_x1) {
  EMU_CALL(cosine::cosine_rows_backward_cuda(emu_dtype(dtype), grad, x0, x1, cos, norms, N, D, eps,
                                             grad_x0, grad_x1, EMU_STREAM));
}

}  // extern "C"

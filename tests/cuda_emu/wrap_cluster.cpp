// C wrappers (convention: wrap_common.h) around the CUDA launchers of the clustering family:
//   losses/multiview_cross_entropy_kernels.h   multiview_ce::{forward_partials,forward,backward}_cuda
//   losses/centered_softmax_kernels.h          centered_softmax::forward_cuda
//   cluster/sinkhorn_knopp_kernels.h           sinkhorn::{column_stats_partials,column_stats,
//                                              row_potential,plan,row_plan}_cuda
//   cluster/assign_to_centroids_kernels.h      cluster::{inverse_row_norms,argmax_tile}_cuda
// Launcher names repeat across namespaces (forward_cuda), so each wrapper is
// emu_<namespace>_<launcher_name>. Tensor lists (multiview cross-entropy) arrive as arrays of
// data pointers (`void**`, built with ctypes). Used by tests/test_cuda_emulated_*.py.
#include "wrap_common.h"

#include "cluster/assign_to_centroids_kernels.h"
#include "cluster/sinkhorn_knopp_kernels.h"
#include "losses/centered_softmax_kernels.h"
#include "losses/multiview_cross_entropy_kernels.h"

namespace {

jem_fast::multiview_ce::Problem mce_problem(int64_t targets, int64_t views, int64_t rows,
                                            int64_t cols, double scale) {
  jem_fast::multiview_ce::Problem p;
  p.targets = targets;
  p.views = views;
  p.rows = rows;
  p.cols = cols;
  p.scale = scale;
  return p;
}

}  // namespace

extern "C" {

// ---------------------------------------------------------------- multiview cross-entropy

// *out = forward_partials_cuda(p, is_double): accumulator elements of `partial`.
int emu_multiview_ce_forward_partials_cuda(int64_t targets, int64_t views, int64_t rows,
                                           int64_t cols, double scale, int is_double,
                                           int64_t* out) {
  EMU_CALL(*out = jem_fast::multiview_ce::forward_partials_cuda(
               mce_problem(targets, views, rows, cols, scale), is_double != 0));
}

int emu_multiview_ce_forward_cuda(int dtype, int64_t targets, int64_t views, int64_t rows,
                                  int64_t cols, double scale, const void* const* target_ptrs,
                                  const void* const* logit_ptrs, void* partial, void* lse,
                                  void* contribution, void* mass) {
  EMU_CALL(jem_fast::multiview_ce::forward_cuda(
      emu_dtype(dtype), mce_problem(targets, views, rows, cols, scale), target_ptrs, logit_ptrs,
      partial, lse, contribution, mass, EMU_STREAM));
}

int emu_multiview_ce_backward_cuda(int dtype, int64_t targets, int64_t views, int64_t rows,
                                   int64_t cols, double scale, const void* const* target_ptrs,
                                   const void* const* logit_ptrs, const void* lse,
                                   const void* mass, const void* coef, void* const* grad_ptrs) {
  EMU_CALL(jem_fast::multiview_ce::backward_cuda(
      emu_dtype(dtype), mce_problem(targets, views, rows, cols, scale), target_ptrs, logit_ptrs,
      lse, mass, coef, grad_ptrs, EMU_STREAM));
}

// ---------------------------------------------------------------- centered softmax

int emu_centered_softmax_forward_cuda(int dtype, const void* x, const void* center, int64_t B,
                                      int64_t K, double scale, void* out) {
  EMU_CALL(jem_fast::centered_softmax::forward_cuda(emu_dtype(dtype), x, center, B, K, scale, out,
                                                    EMU_STREAM));
}

// ---------------------------------------------------------------- Sinkhorn-Knopp

int emu_sinkhorn_column_stats_partials_cuda(int64_t B, int64_t K, int64_t* out) {
  EMU_CALL(*out = jem_fast::sinkhorn::column_stats_partials_cuda(B, K));
}

// Potentials come as (hi, lo) pairs: for float64 scores hi is the float64 potential and lo is
// null; otherwise hi and lo are float32 vectors with hi + lo the float64 potential. f_hi / f_lo
// may be null in the column step. Statistics, partials, f outputs are float64.
int emu_sinkhorn_column_stats_cuda(int dtype, const void* S, int64_t B, int64_t K, double scale,
                                   const void* f_hi, const void* f_lo, void* partial,
                                   void* colmax, void* colsum) {
  EMU_CALL(jem_fast::sinkhorn::column_stats_cuda(emu_dtype(dtype), S, B, K, scale, f_hi, f_lo,
                                                 partial, colmax, colsum, EMU_STREAM));
}

int emu_sinkhorn_row_potential_cuda(int dtype, const void* S, int64_t B, int64_t K, double scale,
                                    const void* g_hi, const void* g_lo, double log_rows,
                                    void* f) {
  EMU_CALL(jem_fast::sinkhorn::row_potential_cuda(emu_dtype(dtype), S, B, K, scale, g_hi, g_lo,
                                                  log_rows, f, EMU_STREAM));
}

int emu_sinkhorn_plan_cuda(int dtype, const void* S, int64_t B, int64_t K, double scale,
                           const void* f, const void* g_hi, const void* g_lo, double rows,
                           void* Q) {
  EMU_CALL(jem_fast::sinkhorn::plan_cuda(emu_dtype(dtype), S, B, K, scale, f, g_hi, g_lo, rows,
                                         Q, EMU_STREAM));
}

int emu_sinkhorn_row_plan_cuda(int dtype, const void* S, int64_t B, int64_t K, double scale,
                               const void* g_hi, const void* g_lo, double log_rows, void* f,
                               void* Q) {
  EMU_CALL(jem_fast::sinkhorn::row_plan_cuda(emu_dtype(dtype), S, B, K, scale, g_hi, g_lo,
                                             log_rows, f, Q, EMU_STREAM));
}

// ---------------------------------------------------------------- assign to centroids

int emu_cluster_inverse_row_norms_cuda(int dtype, const void* x, int64_t rows, int64_t D,
                                       void* inv_norm) {
  EMU_CALL(jem_fast::cluster::inverse_row_norms_cuda(emu_dtype(dtype), x, rows, D, inv_norm,
                                                     EMU_STREAM));
}

int emu_cluster_argmax_tile_cuda(int is_double, const void* S, int64_t rows, int64_t cols,
                                 int64_t col0, const void* inv_x, const void* inv_c, int first,
                                 int last, void* index, void* score) {
  EMU_CALL(jem_fast::cluster::argmax_tile_cuda(is_double != 0, S, rows, cols, col0, inv_x, inv_c,
                                               first != 0, last != 0,
                                               static_cast<int64_t*>(index), score, EMU_STREAM));
}

}  // extern "C"

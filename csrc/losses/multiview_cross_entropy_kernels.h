// Raw-pointer kernels of jem_fast::multiview_cross_entropy, the cross-entropy of SwAV and DINO
// between T target distributions (codes / teacher probabilities) and V student logit tensors,
// over every pair (t, v) with v != t (target t and student view v of the same crop are skipped):
//
//   loss = 1 / (pairs B) sum_v sum_b sum_k Y_vbk (lse_vb - scale x_vbk)
//   Y_vb = sum_{t != v} y_tb   (a K-vector, added in t order),  W_vb = sum_k Y_vbk
//   d loss / d x_vbk = g scale / (pairs B) (W_vb softmax(scale x_vb)_k - Y_vbk)
//
// One LSE per student view and one pass over its row with the summed targets, instead of a
// (B, K) log-softmax per pair. Precision: with m = max_k x_vbk and S = sum_k exp(scale (x - m)),
//   lse = scale m + log S,   sum_k Y_k (lse - scale x_k) = scale sum_k Y_k (m - x_k) + W log S,
// two sums of non-negative terms (the form y . x - W lse would cancel two large numbers: at
// K = 65536 it lost 8e-6 of the loss in float32). The per-thread / per-chunk partial sums of the
// CUDA kernel are merged with the rule  sum_k Y_k (m' - x_k) = sum_k Y_k (m - x_k) + (m' - m) W
// when the running maximum moves from m to m'. lse is kept in float64 for every logit dtype, so
// the backward's exponent scale x - lse is exact to float32 rounding whatever |scale x| (and
// softmax is exactly 1 on a row's only logit); Y_vb is summed exactly over t != v (never as the
// sum of all targets minus one) and W_vb from the row masses in the same order, so a row with
// K = 1 gets a gradient of exactly 0. Targets are float32 (float64 with float64 logits); logits
// are read in their own dtype.
#pragma once

#include <cstdint>

#include "common/kernel_dtype.h"

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace jem_fast {
namespace multiview_ce {

// The CUDA kernels pass the tensor lists by value as pointer arrays of these sizes, and stage
// the target rows of a column chunk in shared memory.
constexpr int kMaxViews = 64;
constexpr int kMaxTargets = 8;

struct Problem {
  int64_t targets;  // T
  int64_t views;    // V
  int64_t rows;     // B
  int64_t cols;     // K
  double scale;
};

// Per (view, row): lse[v * B + b] and contribution[v * B + b] = sum_k Y_vbk (lse_vb - scale
// x_vbk), both float64; mass[t * B + b] = sum_k y_tbk. A (float or double) is the accumulation
// type, I the logit type.
template <typename I, typename A>
void forward_cpu(const Problem& p, const A* const* targets, const I* const* logits, double* lse,
                 double* contribution, A* mass);

// grads[v] (B, K, logit dtype) = coef (W_vb softmax - Y_vb), coef = g scale / (pairs B).
template <typename I, typename A>
void backward_cpu(const Problem& p, const A* const* targets, const I* const* logits,
                  const double* lse, const A* mass, A coef, I* const* grads);

#ifdef WITH_CUDA
// `partial` holds forward_partials_cuda(p) accumulator elements (float32, float64 for float64
// logits); lse and contribution are float64, mass the accumulation type.
int64_t forward_partials_cuda(const Problem& p, bool is_double);
void forward_cuda(DType dtype, const Problem& p, const void* const* targets,
                  const void* const* logits, void* partial, void* lse, void* contribution,
                  void* mass, cudaStream_t stream);
void backward_cuda(DType dtype, const Problem& p, const void* const* targets,
                   const void* const* logits, const void* lse, const void* mass,
                   const void* coef, void* const* grads, cudaStream_t stream);
#endif

}  // namespace multiview_ce
}  // namespace jem_fast

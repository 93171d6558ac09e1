// Raw-pointer kernels of jem_fast::multiview_cross_entropy, the cross-entropy of SwAV and DINO
// between T target distributions (codes / teacher probabilities) and V student logit tensors,
// over every pair (t, v) with v != t (target t and student view v of the same crop are skipped):
//
//   loss = 1 / (pairs B) sum_v sum_b [ W_vb LSE(scale x_vb) - scale x_vb . Y_vb ]
//   Y_vb = sum_{t != v} y_tb   (a K-vector),  W_vb = sum_k Y_vbk
//   d loss / d x_vbk = g scale / (pairs B) (W_vb softmax(scale x_vb)_k - Y_vbk)
//
// because sum_k y log_softmax(x)_k = y . x - sum(y) LSE(x): one LSE per student view and one dot
// per pair, instead of a (B, K) log-softmax per pair. Targets are float32 (float64 with float64
// logits); logits are read in their own dtype.
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

// Per (view, row): lse[v * B + b] and contribution[v * B + b] = W_vb lse_vb - scale x_vb . Y_vb;
// mass[t * B + b] = sum_k y_tbk. A (float or double) is the accumulation type, I the logit type.
template <typename I, typename A>
void forward_cpu(const Problem& p, const A* const* targets, const I* const* logits, A* lse,
                 A* contribution, A* mass);

// grads[v] (B, K, logit dtype) = coef (W_vb softmax - Y_vb), coef = g scale / (pairs B).
template <typename I, typename A>
void backward_cpu(const Problem& p, const A* const* targets, const I* const* logits,
                  const A* lse, const A* mass, A coef, I* const* grads);

#ifdef WITH_CUDA
// `partial` holds forward_partials_cuda(p) accumulator elements.
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

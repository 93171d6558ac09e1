// Raw-pointer kernels of the row-wise cosine similarity op (jem_fast::cosine_similarity_rows),
// the core of NegativeCosineSimilarity (BYOL, SimSiam).
//
// Forward, one pass over each row pair: dot, |x0|^2, |x1|^2 accumulated in float (double for
// float64), then per row n = sqrt(sum of squares), c = max(n, eps) and cos = dot / (c0 c1).
// The op saves cos and the raw norms n (2, N): that is everything the backward needs, which is
// then one elementwise pass (no reduction) writing both gradients:
//   grad_x0 = alpha x1 - beta0 x0,   grad_x1 = alpha x0 - beta1 x1
//   alpha = g / (c0 c1),   beta_k = g cos / (c_k n_k)  (0 when n_k = 0)
// This is exactly the gradient of torch.nn.functional.cosine_similarity (torch 2.x): it clamps
// each norm to eps under no_grad, so autograd differentiates through the *unclamped* norm even
// for rows whose norm is below eps (hence n_k, not c_k, in beta_k). Checked on torch 2.13 and
// 2.14 in tests/test_negative_cosine.py.
#pragma once

#include <cstdint>

#include "common/kernel_dtype.h"

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace jem_fast {
namespace cosine {

// CPU: T is float or double (the host op upcasts float16/bfloat16 to float32 once).
// cos: (N,), norms: (2, N) = [n0; n1].
template <typename T>
void cosine_rows_forward_cpu(const T* x0, const T* x1, int64_t N, int64_t D, double eps, T* cos,
                             T* norms);

// grad (N,) is the upstream gradient of cos. grad_x0 / grad_x1 may be null (not needed).
template <typename T>
void cosine_rows_backward_cpu(const T* grad, const T* x0, const T* x1, const T* cos,
                              const T* norms, int64_t N, int64_t D, double eps, T* grad_x0,
                              T* grad_x1);

#ifdef WITH_CUDA
// x0, x1, grad_x0, grad_x1 in `dtype`; cos, norms, grad in the accumulation type (double for
// float64, float otherwise).
void cosine_rows_forward_cuda(DType dtype, const void* x0, const void* x1, int64_t N, int64_t D,
                              double eps, void* cos, void* norms, cudaStream_t stream);
void cosine_rows_backward_cuda(DType dtype, const void* grad, const void* x0, const void* x1,
                               const void* cos, const void* norms, int64_t N, int64_t D,
                               double eps, void* grad_x0, void* grad_x1, cudaStream_t stream);
#endif

}  // namespace cosine
}  // namespace jem_fast

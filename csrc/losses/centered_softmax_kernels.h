// Raw-pointer kernels of jem_fast::centered_softmax, DINO's teacher distribution:
//   p_bk = softmax_k(scale (x_bk - c_k))        (scale = 1 / teacher temperature)
// centering and sharpening fused into the softmax, output in float32 (float64 for float64).
#pragma once

#include <cstdint>

#include "common/kernel_dtype.h"

#ifdef WITH_CUDA
#include <cuda_runtime_api.h>
#endif

namespace jem_fast {
namespace centered_softmax {

// center may be null (no centering).
template <typename I, typename A>
void forward_cpu(const I* x, const A* center, int64_t B, int64_t K, A scale, A* out);

#ifdef WITH_CUDA
void forward_cuda(DType dtype, const void* x, const void* center, int64_t B, int64_t K,
                  double scale, void* out, cudaStream_t stream);
#endif

}  // namespace centered_softmax
}  // namespace jem_fast

// Host-side plumbing shared by the covariance ops (VICReg, Barlow Twins).
#pragma once

#include "common/host_utils.h"
#include "losses/covariance_kernels.h"

namespace jem_fast {
namespace covariance {

#ifdef WITH_CUDA
// The first step of both CUDA forwards: per-column moments of (z_a, z_b) as split partial sums,
// plus the scratch the later kernels share. Call under a CUDAGuard for z_a's device.
struct CudaMoments {
  cudaStream_t stream;
  DType dtype;
  bool is_double;
  int64_t splits;
  at::Tensor partials;   // (splits, kNumMoments, D), float64 for every input dtype
  at::Tensor workspace;  // cuda_workspace_bytes(N, D) bytes
  at::Tensor flags;      // one int: NonFiniteFlag bits written by the finalize kernel
};

inline CudaMoments paired_column_moments_cuda(const at::Tensor& z_a, const at::Tensor& z_b) {
  const int64_t N = z_a.size(0), D = z_a.size(1);
  CudaMoments m;
  m.stream = at::cuda::getCurrentCUDAStream().stream();
  m.dtype = to_kernel_dtype(z_a.scalar_type());
  m.is_double = z_a.scalar_type() == at::kDouble;
  m.splits = moments_num_row_splits_cuda(N, D);
  m.partials = at::empty({m.splits, kNumMoments, D}, z_a.options().dtype(at::kDouble));
  m.workspace = at::empty({cuda_workspace_bytes(N, D)}, z_a.options().dtype(at::kByte));
  m.flags = at::zeros({1}, z_a.options().dtype(at::kInt));
  paired_column_moments_cuda(m.dtype, z_a.data_ptr(), z_b.data_ptr(), N, D, m.partials.data_ptr(),
                             m.stream);
  return m;
}
#endif

}  // namespace covariance
}  // namespace jem_fast

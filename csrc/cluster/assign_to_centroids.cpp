// jem_fast::assign_to_centroids(features (B, D), centroids (K, D)) -> (index (B,), score (B,))
//
//   index[i] = argmax_k cos(features_i, centroids_k)   (int64; ties: the lowest k)
//   score[i] = that cosine                              (float32; float64 for float64 input)
//
// The E-step of spherical k-means (DeepCluster-v2) and SwAV-style hard assignment. The B x K
// similarity matrix is never stored:
//   * CPU: one fused kernel (assign_to_centroids_cpu.cpp), running (max, argmax) per row.
//   * CUDA: tiles of at most kTileBytes of raw dot products from cuBLAS (through mm_acc_out:
//     float16/bfloat16 stay in their dtype on tensor cores with float32 accumulation and
//     output), each folded at once into the per-row running (max, argmax) by a small kernel
//     that also applies both inverse norms. Extra memory O(tile + B + K), so a memory of a
//     million rows against 30000 centroids costs one tile, not 120 GB.
// Zero-norm rows (features or centroids) have cosine 0 with everything. Not differentiable:
// no autograd formula is registered (the Python wrapper runs it under no_grad semantics).
#include <torch/library.h>

#include <algorithm>
#include <tuple>

#include "cluster/assign_to_centroids_kernels.h"
#include "common/host_utils.h"

namespace jem_fast {
namespace cluster {
namespace {

constexpr const char* kOp = "assign_to_centroids";
// Bound of one CUDA tile of dot products (float32): 64 MiB, large enough that cuBLAS runs at
// full speed for B = 4096, K = 4096, small next to any training memory (untuned).
constexpr int64_t kTileBytes = int64_t(64) << 20;
// Widest tile: beyond this the per-column work of cuBLAS no longer gets faster, and narrower
// tiles leave room for more rows.
constexpr int64_t kMaxTileCols = 8192;

void check_inputs(const at::Tensor& x, const at::Tensor& c) {
  TORCH_CHECK(x.dim() == 2, kOp, ": features must be 2-D (batch, dim), got shape ", x.sizes());
  TORCH_CHECK(c.dim() == 2, kOp, ": centroids must be 2-D (num_centroids, dim), got shape ",
              c.sizes());
  TORCH_CHECK(x.size(0) >= 1, kOp, ": features is empty (no rows to assign), got shape ",
              x.sizes());
  TORCH_CHECK(c.size(0) >= 1, kOp, ": centroids is empty (need at least one centroid), got shape ",
              c.sizes());
  TORCH_CHECK(x.size(1) >= 1, kOp, ": the feature dimension must be at least 1, got shape ",
              x.sizes());
  TORCH_CHECK(x.size(1) == c.size(1), kOp,
              ": features and centroids must have the same dimension, got ", x.size(1), " and ",
              c.size(1));
  const auto t = x.scalar_type();
  TORCH_CHECK(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16, kOp,
              ": features must be float32, float64, float16 or bfloat16, got ", t);
  TORCH_CHECK(c.scalar_type() == t, kOp, ": features and centroids must have the same dtype, got ",
              t, " and ", c.scalar_type());
  TORCH_CHECK(x.device() == c.device(), kOp,
              ": features and centroids must be on the same device, got ", x.device(), " and ",
              c.device());
}

std::tuple<at::Tensor, at::Tensor> assign_to_centroids(const at::Tensor& x_in,
                                                       const at::Tensor& c_in) {
  check_inputs(x_in, c_in);
  const DeviceScope scope(x_in, kOp);
  const at::Tensor x = x_in.contiguous();
  const at::Tensor c = c_in.contiguous();
  const int64_t B = x.size(0), K = c.size(0), D = x.size(1);
  const auto acc = acc_type_of(x.scalar_type());
  at::Tensor index = at::empty({B}, x.options().dtype(at::kLong));
  at::Tensor score = at::empty({B}, x.options().dtype(acc));
  if (!x.is_cuda()) {
    assign_to_centroids_cpu(to_kernel_dtype(x.scalar_type()), x.data_ptr(), c.data_ptr(), B, K, D,
                            index.data_ptr<int64_t>(), score.data_ptr());
    return {index, score};
  }
#ifdef WITH_CUDA
  cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const DType dt = to_kernel_dtype(x.scalar_type());
  at::Tensor inv_x = at::empty({B}, x.options().dtype(acc));
  at::Tensor inv_c = at::empty({K}, x.options().dtype(acc));
  inverse_row_norms_cuda(dt, x.data_ptr(), B, D, inv_x.data_ptr(), stream);
  inverse_row_norms_cuda(dt, c.data_ptr(), K, D, inv_c.data_ptr(), stream);
  const int64_t elem = at::elementSize(acc);
  const int64_t cols = std::min(K, kMaxTileCols);
  const int64_t rows = std::max<int64_t>(1, std::min(B, kTileBytes / (cols * elem)));
  at::Tensor tile_buf = at::empty({rows * cols}, x.options().dtype(acc));
  const at::Tensor ct = c.t();
  for (int64_t r0 = 0; r0 < B; r0 += rows) {
    const int64_t nr = std::min(rows, B - r0);
    const at::Tensor xr = x.narrow(0, r0, nr);
    for (int64_t k0 = 0; k0 < K; k0 += cols) {
      const int64_t nc = std::min(cols, K - k0);
      at::Tensor S = tile_buf.narrow(0, 0, nr * nc).view({nr, nc});
      mm_acc_out(S, xr, ct.narrow(1, k0, nc));
      argmax_tile_cuda(acc == at::kDouble, S.data_ptr(), nr, nc, k0,
                       static_cast<const char*>(inv_x.data_ptr()) + r0 * elem, inv_c.data_ptr(),
                       /*first=*/k0 == 0, /*last=*/k0 + nc == K, index.data_ptr<int64_t>() + r0,
                       static_cast<char*>(score.data_ptr()) + r0 * elem, stream);
    }
  }
#endif
  return {index, score};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(jem_fast, m) {
  m.def("assign_to_centroids(Tensor features, Tensor centroids) -> (Tensor index, Tensor score)");
}

TORCH_LIBRARY_IMPL(jem_fast, CPU, m) { m.impl("assign_to_centroids", &assign_to_centroids); }

TORCH_LIBRARY_IMPL(jem_fast, CUDA, m) { m.impl("assign_to_centroids", &assign_to_centroids); }

}  // namespace cluster
}  // namespace jem_fast

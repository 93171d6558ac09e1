// VICReg: schema, input checks and the host side of the CPU and CUDA kernels.
//
//   vicreg_forward(z_a, z_b, eps, gram_route, check_finite)
//       -> (terms[3] = invariance, variance, covariance;
//           centered (2, N, D); gram (2, R, R); colstats (kNumColStats, D))
//   vicreg_backward(grad_terms, centered, gram, colstats, gram_route) -> (grad_a, grad_b)
//
// R = N on the Gram route (G = x x^T, used when N < D) and R = D on the covariance route
// (C = x^T x). Both use ||x^T x||_F = ||x x^T||_F; the Gram route never allocates D x D.
#include <torch/library.h>

#include "losses/covariance_host.h"

namespace jem_fast {
namespace covariance {
namespace {

constexpr const char* kLoss = "VICRegLoss";

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> vicreg_forward(
    const at::Tensor& z_a_in, const at::Tensor& z_b_in, double eps, bool gram_route,
    bool check_finite) {
  check_embedding_pair(z_a_in, z_b_in, "z_a", "z_b", 2, kLoss);
  TORCH_CHECK(eps >= 0.0, kLoss, ": eps must be >= 0, got ", eps);
  const bool is_cuda = z_a_in.is_cuda();
  const auto acc = acc_type_of(z_a_in.scalar_type());
  const auto ctype = compute_type_of(z_a_in.scalar_type(), is_cuda);
  const at::Tensor z_a = z_a_in.to(ctype).contiguous();
  const at::Tensor z_b = z_b_in.to(ctype).contiguous();
  const int64_t N = z_a.size(0), D = z_a.size(1);
  const int64_t R = gram_route ? N : D;
  const auto acc_opts = z_a.options().dtype(acc);

  at::Tensor terms = at::empty({3}, acc_opts);
  at::Tensor centered = at::empty({2, N, D}, z_a.options());
  at::Tensor gram = at::empty({2, R, R}, acc_opts);
  at::Tensor colstats = at::empty({kNumColStats, D}, acc_opts);
  const double cov_scale = 1.0 / ((N - 1.0) * (N - 1.0) * D);
  int flags = 0;

  if (!is_cuda) {
    at::Tensor moments = at::empty({kNumMoments, D}, acc_opts);
    AT_DISPATCH_FLOATING_TYPES(ctype, "vicreg_forward_cpu", [&] {
      paired_column_moments_cpu<scalar_t>(z_a.data_ptr<scalar_t>(), z_b.data_ptr<scalar_t>(), N,
                                          D, moments.data_ptr<scalar_t>());
      flags = vicreg_finalize_cpu<scalar_t>(moments.data_ptr<scalar_t>(), N, D, eps, gram_route,
                                            colstats.data_ptr<scalar_t>(),
                                            terms.data_ptr<scalar_t>());
      center_scale_columns_cpu<scalar_t>(z_a.data_ptr<scalar_t>(), colstats[kMeanA].data_ptr<scalar_t>(),
                                         nullptr, N, D, centered[0].data_ptr<scalar_t>());
      center_scale_columns_cpu<scalar_t>(z_b.data_ptr<scalar_t>(), colstats[kMeanB].data_ptr<scalar_t>(),
                                         nullptr, N, D, centered[1].data_ptr<scalar_t>());
    });
    if (check_finite) raise_non_finite(flags, kLoss, "z_a", "z_b");
    for (int v = 0; v < 2; ++v) {
      at::Tensor g = gram[v];
      if (gram_route) {
        at::mm_out(g, centered[v], centered[v].t());
      } else {
        at::mm_out(g, centered[v].t(), centered[v]);
      }
    }
    AT_DISPATCH_FLOATING_TYPES(ctype, "vicreg_frobenius_cpu", [&] {
      double fro = 0.0;
      for (int v = 0; v < 2; ++v) {
        const scalar_t* g = gram[v].data_ptr<scalar_t>();
        fro += frobenius_dot_cpu<scalar_t>(g, g, R, R, /*skip_diagonal=*/!gram_route);
      }
      scalar_t* t = terms.data_ptr<scalar_t>();
      t[2] = static_cast<scalar_t>(static_cast<double>(t[2]) + cov_scale * fro);
    });
    return {terms, centered, gram, colstats};
  }

#ifdef WITH_CUDA
  const c10::cuda::CUDAGuard guard(z_a.device());
  const CudaMoments moments = paired_column_moments_cuda(z_a, z_b);
  cudaStream_t stream = moments.stream;
  vicreg_finalize_cuda(moments.is_double, moments.partials.data_ptr(), moments.splits, N, D, eps, gram_route,
                       colstats.data_ptr(), terms.data_ptr(), moments.flags.data_ptr<int>(),
                       moments.workspace.data_ptr(), stream);
  center_scale_columns_cuda(moments.dtype, z_a.data_ptr(), colstats[kMeanA].data_ptr(), nullptr, N, D,
                            centered[0].data_ptr(), stream);
  center_scale_columns_cuda(moments.dtype, z_b.data_ptr(), colstats[kMeanB].data_ptr(), nullptr, N, D,
                            centered[1].data_ptr(), stream);
  for (int v = 0; v < 2; ++v) {
    at::Tensor g = gram[v];
    if (gram_route) {
      mm_acc_out(g, centered[v], centered[v].t());
    } else {
      mm_acc_out(g, centered[v].t(), centered[v]);
    }
  }
  const void* us[2] = {gram[0].data_ptr(), gram[1].data_ptr()};
  add_frobenius_dots_cuda(moments.is_double, 2, us, us, R, R, !gram_route, cov_scale, terms.data_ptr(), 2,
                          moments.workspace.data_ptr(), stream);
  if (check_finite && !capturing_cuda_graph(z_a)) {
    raise_non_finite(moments.flags.item<int>(), kLoss, "z_a", "z_b");
  }
  return {terms, centered, gram, colstats};
#else
  TORCH_CHECK(false, kLoss, ": got CUDA tensors. ", kRebuildHint);
#endif
}

std::tuple<at::Tensor, at::Tensor> vicreg_backward(const at::Tensor& grad_terms_in,
                                                   const at::Tensor& centered,
                                                   const at::Tensor& gram,
                                                   const at::Tensor& colstats,
                                                   bool gram_route) {
  TORCH_CHECK(centered.dim() == 3 && centered.size(0) == 2, kLoss,
              ": backward expects centered of shape (2, N, D), got ", centered.sizes());
  const int64_t N = centered.size(1), D = centered.size(2);
  const at::Tensor grad_terms = grad_terms_in.to(colstats.scalar_type()).contiguous();
  at::Tensor grad = at::empty_like(centered);
  // d||x^T x||^2 / dx = 4 G x = 4 x C: one matmul per view with the saved matrix, written into
  // the gradient buffer and finished in place by the epilogue.
  auto y_of = [&](int v) {
    return mm_matrix_times_into(gram[v], centered[v], /*m_on_right=*/!gram_route, grad[v]);
  };
  if (!centered.is_cuda()) {
    AT_DISPATCH_FLOATING_TYPES(centered.scalar_type(), "vicreg_backward_cpu", [&] {
      for (int v = 0; v < 2; ++v) {
        const at::Tensor y = y_of(v);
        vicreg_backward_view_cpu<scalar_t>(
            grad_terms.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
            centered[v].data_ptr<scalar_t>(), centered[1 - v].data_ptr<scalar_t>(),
            colstats.data_ptr<scalar_t>(), v, N, D, grad[v].data_ptr<scalar_t>());
      }
    });
    return {grad[0], grad[1]};
  }
#ifdef WITH_CUDA
  const c10::cuda::CUDAGuard guard(centered.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const DType dt = to_kernel_dtype(centered.scalar_type());
  for (int v = 0; v < 2; ++v) {
    const at::Tensor y = y_of(v);
    vicreg_backward_view_cuda(dt, grad_terms.data_ptr(), y.data_ptr(), centered[v].data_ptr(),
                              centered[1 - v].data_ptr(), colstats.data_ptr(), v, N, D,
                              grad[v].data_ptr(), stream);
  }
  return {grad[0], grad[1]};
#else
  TORCH_CHECK(false, kLoss, ": got CUDA tensors. ", kRebuildHint);
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(jem_fast, m) {
  m.def(
      "vicreg_forward(Tensor z_a, Tensor z_b, float eps, bool gram_route, bool check_finite) -> "
      "(Tensor terms, Tensor centered, Tensor gram, Tensor colstats)");
  m.def(
      "vicreg_backward(Tensor grad_terms, Tensor centered, Tensor gram, Tensor colstats, "
      "bool gram_route) -> (Tensor grad_a, Tensor grad_b)");
}

TORCH_LIBRARY_IMPL(jem_fast, CPU, m) {
  m.impl("vicreg_forward", &vicreg_forward);
  m.impl("vicreg_backward", &vicreg_backward);
}

TORCH_LIBRARY_IMPL(jem_fast, CUDA, m) {
  m.impl("vicreg_forward", &vicreg_forward);
  m.impl("vicreg_backward", &vicreg_backward);
}

}  // namespace covariance
}  // namespace jem_fast

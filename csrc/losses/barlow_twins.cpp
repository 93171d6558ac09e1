// Barlow Twins: schema, input checks and the host side of the CPU and CUDA kernels.
//
//   barlow_twins_forward(z_a, z_b, gram_route, check_finite)
//       -> (terms[2] = on-diagonal sum (C_ii - 1)^2, off-diagonal sum C_ij^2;
//           normalized (2, N, D) = per-view batch norm of z_a, z_b;
//           gram: (2, N, N) = A A^T, B B^T on the Gram route, (1, D, D) = A^T B otherwise;
//           colstats (kNumColStats, D))
//   barlow_twins_backward(grad_terms, normalized, gram, colstats, gram_route) -> (grad_a, grad_b)
//
// C = A^T B / N. ||C||_F^2 = <A A^T, B B^T>_F / N^2, so the Gram route (N < D) needs two N x N
// matrices and never a D x D one; the diagonal of C comes from the column moments in O(N D).
#include <torch/library.h>

#include "losses/covariance_host.h"

namespace jem_fast {
namespace covariance {
namespace {

constexpr const char* kLoss = "BarlowTwinsLoss";

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> barlow_twins_forward(
    const at::Tensor& z_a_in, const at::Tensor& z_b_in, bool gram_route, bool check_finite) {
  check_embedding_pair(z_a_in, z_b_in, "z_a", "z_b", 2, kLoss);
  const bool is_cuda = z_a_in.is_cuda();
  const auto acc = acc_type_of(z_a_in.scalar_type());
  const auto ctype = compute_type_of(z_a_in.scalar_type(), is_cuda);
  const at::Tensor z_a = z_a_in.to(ctype).contiguous();
  const at::Tensor z_b = z_b_in.to(ctype).contiguous();
  const int64_t N = z_a.size(0), D = z_a.size(1);
  const auto acc_opts = z_a.options().dtype(acc);

  at::Tensor terms = at::empty({2}, acc_opts);
  at::Tensor normalized = at::empty({2, N, D}, z_a.options());
  at::Tensor gram = gram_route ? at::empty({2, N, N}, acc_opts) : at::empty({1, D, D}, acc_opts);
  at::Tensor colstats = at::empty({kNumColStats, D}, acc_opts);
  const double fro_scale = 1.0 / (static_cast<double>(N) * N);

  auto matmuls = [&](auto&& mm) {
    if (gram_route) {
      at::Tensor g0 = gram[0], g1 = gram[1];
      mm(g0, normalized[0], normalized[0].t());
      mm(g1, normalized[1], normalized[1].t());
    } else {
      at::Tensor c = gram[0];
      mm(c, normalized[0].t(), normalized[1]);
    }
  };

  if (!is_cuda) {
    at::Tensor moments = at::empty({kNumMoments, D}, acc_opts.dtype(at::kDouble));
    int flags = 0;
    AT_DISPATCH_FLOATING_TYPES(ctype, "barlow_twins_forward_cpu", [&] {
      paired_column_moments_cpu<scalar_t>(z_a.data_ptr<scalar_t>(), z_b.data_ptr<scalar_t>(), N,
                                          D, moments.data_ptr<double>());
      flags = barlow_twins_finalize_cpu<scalar_t>(moments.data_ptr<double>(), N, D, gram_route,
                                                  colstats.data_ptr<scalar_t>(),
                                                  terms.data_ptr<scalar_t>());
      for (int v = 0; v < 2; ++v) {
        center_scale_columns_cpu<scalar_t>(
            (v == 0 ? z_a : z_b).data_ptr<scalar_t>(),
            colstats[v == 0 ? kMeanA : kMeanB].data_ptr<scalar_t>(),
            colstats[v == 0 ? kStat2A : kStat2B].data_ptr<scalar_t>(), N, D,
            normalized[v].data_ptr<scalar_t>());
      }
    });
    if (check_finite) raise_non_finite(flags, kLoss, "z_a", "z_b");
    matmuls([](at::Tensor& out, const at::Tensor& a, const at::Tensor& b) { at::mm_out(out, a, b); });
    AT_DISPATCH_FLOATING_TYPES(ctype, "barlow_twins_frobenius_cpu", [&] {
      const int64_t R = gram.size(1);
      const scalar_t* u = gram[0].data_ptr<scalar_t>();
      const scalar_t* w = gram_route ? gram[1].data_ptr<scalar_t>() : u;
      const double fro = frobenius_dot_cpu<scalar_t>(u, w, R, R, /*skip_diagonal=*/!gram_route);
      scalar_t* t = terms.data_ptr<scalar_t>();
      t[1] = static_cast<scalar_t>(static_cast<double>(t[1]) + fro_scale * fro);
    });
    return {terms, normalized, gram, colstats};
  }

#ifdef WITH_CUDA
  const c10::cuda::CUDAGuard guard(z_a.device());
  const CudaMoments moments = paired_column_moments_cuda(z_a, z_b);
  cudaStream_t stream = moments.stream;
  barlow_twins_finalize_cuda(moments.is_double, moments.partials.data_ptr(), moments.splits, N, D, gram_route,
                             colstats.data_ptr(), terms.data_ptr(), moments.flags.data_ptr<int>(),
                             moments.workspace.data_ptr(), stream);
  for (int v = 0; v < 2; ++v) {
    center_scale_columns_cuda(moments.dtype, (v == 0 ? z_a : z_b).data_ptr(),
                              colstats[v == 0 ? kMeanA : kMeanB].data_ptr(),
                              colstats[v == 0 ? kStat2A : kStat2B].data_ptr(), N, D,
                              normalized[v].data_ptr(), stream);
  }
  matmuls([](at::Tensor& out, const at::Tensor& a, const at::Tensor& b) { mm_acc_out(out, a, b); });
  const int64_t R = gram.size(1);
  const void* us[1] = {gram[0].data_ptr()};
  const void* ws[1] = {gram_route ? gram[1].data_ptr() : gram[0].data_ptr()};
  add_frobenius_dots_cuda(moments.is_double, 1, us, ws, R, R, !gram_route, fro_scale, terms.data_ptr(), 1,
                          moments.workspace.data_ptr(), stream);
  if (check_finite && !capturing_cuda_graph(z_a)) {
    raise_non_finite(moments.flags.item<int>(), kLoss, "z_a", "z_b");
  }
  return {terms, normalized, gram, colstats};
#else
  TORCH_CHECK(false, kLoss, ": got CUDA tensors. ", kRebuildHint);
#endif
}

std::tuple<at::Tensor, at::Tensor> barlow_twins_backward(const at::Tensor& grad_terms_in,
                                                         const at::Tensor& normalized,
                                                         const at::Tensor& gram,
                                                         const at::Tensor& colstats,
                                                         bool gram_route) {
  check_same_device("barlow_twins_backward",
                    {{"normalized", normalized}, {"grad_terms", grad_terms_in}, {"gram", gram},
                     {"colstats", colstats}});
  TORCH_CHECK(normalized.dim() == 3 && normalized.size(0) == 2, kLoss,
              ": backward expects normalized of shape (2, N, D), got ", normalized.sizes());
  const int64_t N = normalized.size(1), D = normalized.size(2);
  const at::Tensor grad_terms = grad_terms_in.to(colstats.scalar_type()).contiguous();
  at::Tensor grad = at::empty_like(normalized);
  // d||A^T B||^2 / dA = 2 (B B^T) A = 2 B (A^T B)^T, and symmetrically for B; written into the
  // gradient buffer and finished in place by the batch-norm backward.
  auto y_of = [&](int v) {
    if (gram_route) {
      return mm_matrix_times_into(gram[1 - v], normalized[v], /*m_on_right=*/false, grad[v]);
    }
    return mm_matrix_times_into(v == 0 ? gram[0].t() : gram[0], normalized[1 - v],
                                /*m_on_right=*/true, grad[v]);
  };
  if (!normalized.is_cuda()) {
    AT_DISPATCH_FLOATING_TYPES(normalized.scalar_type(), "barlow_twins_backward_cpu", [&] {
      for (int v = 0; v < 2; ++v) {
        const at::Tensor y = y_of(v);
        barlow_twins_backward_view_cpu<scalar_t>(
            grad_terms.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
            normalized[v].data_ptr<scalar_t>(), normalized[1 - v].data_ptr<scalar_t>(),
            colstats.data_ptr<scalar_t>(), v, N, D, grad[v].data_ptr<scalar_t>());
      }
    });
    return {grad[0], grad[1]};
  }
#ifdef WITH_CUDA
  const c10::cuda::CUDAGuard guard(normalized.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const DType dt = to_kernel_dtype(normalized.scalar_type());
  at::Tensor workspace =
      at::empty({cuda_workspace_bytes(N, D)}, normalized.options().dtype(at::kByte));
  for (int v = 0; v < 2; ++v) {
    const at::Tensor y = y_of(v);
    barlow_twins_backward_view_cuda(dt, grad_terms.data_ptr(), y.data_ptr(),
                                    normalized[v].data_ptr(), normalized[1 - v].data_ptr(),
                                    colstats.data_ptr(), v, N, D, grad[v].data_ptr(),
                                    workspace.data_ptr(), stream);
  }
  return {grad[0], grad[1]};
#else
  TORCH_CHECK(false, kLoss, ": got CUDA tensors. ", kRebuildHint);
#endif
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(jem_fast, m) {
  m.def(
      "barlow_twins_forward(Tensor z_a, Tensor z_b, bool gram_route, bool check_finite) -> "
      "(Tensor terms, Tensor normalized, Tensor gram, Tensor colstats)");
  m.def(
      "barlow_twins_backward(Tensor grad_terms, Tensor normalized, Tensor gram, "
      "Tensor colstats, bool gram_route) -> (Tensor grad_a, Tensor grad_b)");
}

TORCH_LIBRARY_IMPL(jem_fast, CPU, m) {
  m.impl("barlow_twins_forward", &barlow_twins_forward);
  m.impl("barlow_twins_backward", &barlow_twins_backward);
}

TORCH_LIBRARY_IMPL(jem_fast, CUDA, m) {
  m.impl("barlow_twins_forward", &barlow_twins_forward);
  m.impl("barlow_twins_backward", &barlow_twins_backward);
}

}  // namespace covariance
}  // namespace jem_fast

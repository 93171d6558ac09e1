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

#include <algorithm>

#include "losses/covariance_host.h"

namespace jem_fast {
namespace covariance {
namespace {

constexpr const char* kLoss = "VICRegLoss";

// The Gram route forms the off-diagonal part of C = x^T x as "everything minus the diagonal":
// sum_{d != e} C_de^2 = ||x x^T||_F^2 - sum_d C_dd^2 and, for the gradient, x (C - diag C) =
// (x x^T) x - x diag(C). Both cancel when a few columns dominate the others (columns of very
// different scales): float32 G = x x^T then carries an error of order eps * |G|, far above the
// off-diagonal part. The cancellation is estimated from the column sums of squares m2 (for
// independent columns E C_de^2 = m2_d m2_e / N):
//   value:    N sum_d m2_d^2 / ((sum_d m2_d)^2 - sum_d m2_d^2)
//   gradient: N max_d m2_d / (sum_d m2_d - max_d m2_d)
// Ordinary data on the Gram route (N < D, similar scales) has both near N / D < 1.
constexpr double kGramMaxCancellation = 1.0;

bool gram_cancels(const at::Tensor& colstats, int64_t N) {  // CPU tensors only
  const at::Tensor c = colstats.to(at::kDouble).contiguous();
  const double* p = c.data_ptr<double>();
  const int64_t D = c.size(1);
  const double n = static_cast<double>(N);
  for (int v = 0; v < 2; ++v) {
    const double* m2 = p + (v == 0 ? kStat2A : kStat2B) * D;
    double s1 = 0.0, s2 = 0.0, mx = 0.0;
    for (int64_t d = 0; d < D; ++d) {
      s1 += m2[d];
      s2 += m2[d] * m2[d];
      mx = std::max(mx, m2[d]);
    }
    if (!(n * s2 <= kGramMaxCancellation * (s1 * s1 - s2))) return true;  // also NaN, D = 1
    if (!(n * mx <= kGramMaxCancellation * (s1 - mx))) return true;
  }
  return false;
}

// How the Gram route forms G and its off-diagonal part (the covariance route has the D x D matrix
// and sets its diagonal to zero, which is exact):
//  - float64 ("exact"): G = x x^T in float64 from the float32 (or float64) centered copies, and
//    the diagonal sums sum_n x_nd^2 from the same copies in float64, so the subtraction is
//    consistent and harmless. Always on CUDA for float32/float64 inputs (the host cannot see the
//    column statistics without a device sync); on the CPU when gram_cancels().
//  - float32: G in float32, the diagonal from the column moments (the CPU when the cancellation
//    is mild; half inputs on CUDA, whose Gram runs on tensor cores).
// The saved Gram matrices are float64 for float32/float64 inputs either way.
bool gram_is_double_dtype(at::ScalarType ctype) {
  return ctype == at::kFloat || ctype == at::kDouble;
}

bool gram_exact(at::ScalarType ctype, bool is_cuda, const at::Tensor& colstats, int64_t N) {
  if (!gram_is_double_dtype(ctype)) return false;
  if (ctype == at::kDouble || is_cuda) return true;
  return gram_cancels(colstats, N);
}

// Column sums of squares of the centered copy x (N, D), in float64.
at::Tensor diagonal_sums(const at::Tensor& x64) { return x64.square().sum(0); }

// Adds cov_scale * sum_v (||G_v||_F^2 - sum_d (x_v^T x_v)_dd^2) to terms[2], all in float64.
void add_exact_gram_covariance(const at::Tensor& centered, const at::Tensor& gram,
                               double cov_scale, at::Tensor& terms) {
  at::Tensor off = at::zeros({}, gram.options());
  for (int v = 0; v < 2; ++v) {
    const at::Tensor x64 = centered[v].to(at::kDouble);
    at::Tensor g = gram[v];
    at::mm_out(g, x64, x64.t());
    off.add_(g.square().sum()).sub_(diagonal_sums(x64).square().sum());
  }
  terms.narrow(0, 2, 1).add_(off.mul_(cov_scale).to(terms.scalar_type()));
}

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
  const bool gram_double = gram_route && gram_is_double_dtype(ctype);

  at::Tensor terms = at::empty({3}, acc_opts);
  at::Tensor centered = at::empty({2, N, D}, z_a.options());
  at::Tensor gram = at::empty({2, R, R}, gram_double ? acc_opts.dtype(at::kDouble) : acc_opts);
  at::Tensor colstats = at::empty({kNumColStats, D}, acc_opts);
  const double cov_scale = 1.0 / ((N - 1.0) * (N - 1.0) * D);
  int flags = 0;

  if (!is_cuda) {
    at::Tensor moments = at::empty({kNumMoments, D}, acc_opts.dtype(at::kDouble));
    AT_DISPATCH_FLOATING_TYPES(ctype, "vicreg_forward_cpu", [&] {
      paired_column_moments_cpu<scalar_t>(z_a.data_ptr<scalar_t>(), z_b.data_ptr<scalar_t>(), N,
                                          D, moments.data_ptr<double>());
      flags = vicreg_finalize_cpu<scalar_t>(moments.data_ptr<double>(), N, D, eps, gram_route,
                                            colstats.data_ptr<scalar_t>(),
                                            terms.data_ptr<scalar_t>());
      center_scale_columns_cpu<scalar_t>(z_a.data_ptr<scalar_t>(), colstats[kMeanA].data_ptr<scalar_t>(),
                                         nullptr, N, D, centered[0].data_ptr<scalar_t>());
      center_scale_columns_cpu<scalar_t>(z_b.data_ptr<scalar_t>(), colstats[kMeanB].data_ptr<scalar_t>(),
                                         nullptr, N, D, centered[1].data_ptr<scalar_t>());
    });
    if (check_finite) raise_non_finite(flags, kLoss, "z_a", "z_b");
    if (gram_route && gram_exact(ctype, false, colstats, N)) {
      terms[2].zero_();  // the finalize's -sum_d m2_d^2 is replaced by the consistent one
      add_exact_gram_covariance(centered, gram, cov_scale, terms);
      return {terms, centered, gram, colstats};
    }
    double fro = 0.0;
    for (int v = 0; v < 2; ++v) {
      at::Tensor g = gram_route ? at::empty({R, R}, z_a.options()) : gram[v];
      if (gram_route) {
        at::mm_out(g, centered[v], centered[v].t());
      } else {
        at::mm_out(g, centered[v].t(), centered[v]);
      }
      AT_DISPATCH_FLOATING_TYPES(ctype, "vicreg_frobenius_cpu", [&] {
        const scalar_t* p = g.data_ptr<scalar_t>();
        fro += frobenius_dot_cpu<scalar_t>(p, p, R, R, /*skip_diagonal=*/!gram_route);
      });
      if (gram_route) {
        gram[v].copy_(g);
      } else {
        gram[v].diagonal().zero_();  // the backward's y = x (C - diag C), no cancellation
      }
    }
    AT_DISPATCH_FLOATING_TYPES(ctype, "vicreg_terms_cpu", [&] {
      scalar_t* t = terms.data_ptr<scalar_t>();
      t[2] = static_cast<scalar_t>(static_cast<double>(t[2]) + cov_scale * fro);
    });
    return {terms, centered, gram, colstats};
  }

#ifdef WITH_CUDA
  const c10::cuda::CUDAGuard guard(z_a.device());
  const CudaMoments moments = paired_column_moments_cuda(z_a, z_b);
  cudaStream_t stream = moments.stream;
  // The exact Gram route adds its own (consistent) diagonal correction: no -sum m2^2 here.
  vicreg_finalize_cuda(moments.is_double, moments.partials.data_ptr(), moments.splits, N, D, eps,
                       gram_route && !gram_double, colstats.data_ptr(), terms.data_ptr(),
                       moments.flags.data_ptr<int>(), moments.workspace.data_ptr(), stream);
  center_scale_columns_cuda(moments.dtype, z_a.data_ptr(), colstats[kMeanA].data_ptr(), nullptr, N, D,
                            centered[0].data_ptr(), stream);
  center_scale_columns_cuda(moments.dtype, z_b.data_ptr(), colstats[kMeanB].data_ptr(), nullptr, N, D,
                            centered[1].data_ptr(), stream);
  if (gram_double) {
    add_exact_gram_covariance(centered, gram, cov_scale, terms);
  } else {
    for (int v = 0; v < 2; ++v) {
      at::Tensor g = gram[v];
      if (gram_route) {
        mm_acc_out(g, centered[v], centered[v].t());
      } else {
        mm_acc_out(g, centered[v].t(), centered[v]);
      }
    }
    const void* us[2] = {gram[0].data_ptr(), gram[1].data_ptr()};
    add_frobenius_dots_cuda(moments.is_double, 2, us, us, R, R, !gram_route, cov_scale,
                            terms.data_ptr(), 2, moments.workspace.data_ptr(), stream);
    // the backward's y = x (C - diag C), no cancellation
    if (!gram_route) gram.diagonal(0, 1, 2).zero_();
  }
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
  check_same_device("vicreg_backward", {{"centered", centered}, {"grad_terms", grad_terms_in},
                                        {"gram", gram}, {"colstats", colstats}});
  TORCH_CHECK(centered.dim() == 3 && centered.size(0) == 2, kLoss,
              ": backward expects centered of shape (2, N, D), got ", centered.sizes());
  const int64_t N = centered.size(1), D = centered.size(2);
  const at::Tensor grad_terms = grad_terms_in.to(colstats.scalar_type()).contiguous();
  at::Tensor grad = at::empty_like(centered);
  const auto ct = centered.scalar_type();
  // The covariance route saved C with a zero diagonal; the exact Gram route forms
  // (x x^T) x - x diag(x^T x) in float64. Only the float32 Gram route leaves the diagonal in y.
  const bool exact = gram_route && gram_exact(ct, centered.is_cuda(), colstats, N);
  const bool diagonal_in_y = gram_route && !exact;
  // d||x^T x||^2 / dx = 4 G x = 4 x C: one matmul per view with the saved matrix, written into
  // the gradient buffer and finished in place by the epilogue.
  auto y_of = [&](int v) {
    if (exact) {
      const at::Tensor x64 = centered[v].to(at::kDouble);
      at::Tensor y = at::mm(gram[v], x64);
      y.sub_(x64 * diagonal_sums(x64));
      return y.to(colstats.scalar_type());
    }
    const at::Tensor m = gram[v].scalar_type() == colstats.scalar_type()
                             ? gram[v] : gram[v].to(colstats.scalar_type());
    return mm_matrix_times_into(m, centered[v], /*m_on_right=*/!gram_route, grad[v]);
  };
  if (!centered.is_cuda()) {
    AT_DISPATCH_FLOATING_TYPES(ct, "vicreg_backward_cpu", [&] {
      for (int v = 0; v < 2; ++v) {
        const at::Tensor y = y_of(v);
        vicreg_backward_view_cpu<scalar_t>(
            grad_terms.data_ptr<scalar_t>(), y.data_ptr<scalar_t>(),
            centered[v].data_ptr<scalar_t>(), centered[1 - v].data_ptr<scalar_t>(),
            colstats.data_ptr<scalar_t>(), v, N, D, diagonal_in_y, grad[v].data_ptr<scalar_t>());
      }
    });
    return {grad[0], grad[1]};
  }
#ifdef WITH_CUDA
  const c10::cuda::CUDAGuard guard(centered.device());
  cudaStream_t stream = at::cuda::getCurrentCUDAStream().stream();
  const DType dt = to_kernel_dtype(ct);
  for (int v = 0; v < 2; ++v) {
    const at::Tensor y = y_of(v);
    vicreg_backward_view_cuda(dt, grad_terms.data_ptr(), y.data_ptr(), centered[v].data_ptr(),
                              centered[1 - v].data_ptr(), colstats.data_ptr(), v, N, D,
                              diagonal_in_y, grad[v].data_ptr(), stream);
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

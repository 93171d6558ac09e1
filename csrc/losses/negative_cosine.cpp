// Row-wise cosine similarity, the op behind NegativeCosineSimilarity (BYOL, SimSiam): schema,
// checks and dispatch.
//
//   cosine_similarity_rows(x0 (N, D), x1 (N, D), eps) -> (cos (N,), norms (2, N))
//       cos[i] = x0_i . x1_i / (max(|x0_i|, eps) max(|x1_i|, eps))
//       norms  = [|x0_i|; |x1_i|], unclamped (saved for the backward; not differentiable)
//   cosine_similarity_rows_backward(grad_cos, x0, x1, cos, norms, eps, need_grad_x0,
//                                   need_grad_x1) -> (grad_x0 or (0,), grad_x1 or (0,))
//
// The eps semantics are torch.nn.functional.cosine_similarity's (torch 2.x): each norm clamped
// separately, gradients through the unclamped norms (see negative_cosine_kernels.h). cos and
// norms are float32 (float64 for float64 inputs) whatever the input dtype; gradients are in the
// input dtype. CUDA reads float16/bfloat16 directly; CPU upcasts them once (no fast half
// arithmetic there).
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "common/host_utils.h"
#include "losses/negative_cosine_kernels.h"

namespace jem_fast {
namespace cosine {
namespace {

constexpr const char* kOp = "cosine_similarity_rows";

void check_inputs(const at::Tensor& x0, const at::Tensor& x1, double eps) {
  TORCH_CHECK(x0.dim() == 2, kOp, ": x0 must be 2-D (rows, dim), got shape ", x0.sizes());
  TORCH_CHECK(x1.dim() == 2, kOp, ": x1 must be 2-D (rows, dim), got shape ", x1.sizes());
  TORCH_CHECK(x0.sizes() == x1.sizes(), kOp, ": x0 and x1 must have the same shape, got ",
              x0.sizes(), " and ", x1.sizes());
  TORCH_CHECK(x0.size(0) >= 1, kOp, ": x0 and x1 have no rows (empty batch)");
  TORCH_CHECK(x0.size(1) >= 1, kOp, ": the dimension the cosine runs over is empty, got shape ",
              x0.sizes());
  TORCH_CHECK(at::isFloatingType(x0.scalar_type()), kOp,
              ": x0 must be a floating-point tensor (float32, float64, float16 or bfloat16), "
              "got ", x0.scalar_type());
  TORCH_CHECK(x0.scalar_type() == x1.scalar_type(), kOp,
              ": x0 and x1 must have the same dtype, got ", x0.scalar_type(), " and ",
              x1.scalar_type());
  TORCH_CHECK(x0.device() == x1.device(), kOp, ": x0 and x1 must be on the same device, got ",
              x0.device(), " and ", x1.device());
  TORCH_CHECK(std::isfinite(eps) && eps >= 0.0, kOp, ": eps must be finite and >= 0, got ", eps);
}

// The dtype the CPU kernels read: float32 for half inputs, else the input dtype.
at::Tensor cpu_operand(const at::Tensor& x) {
  return x.to(compute_type_of(x.scalar_type(), /*is_cuda=*/false)).contiguous();
}

std::tuple<at::Tensor, at::Tensor> cosine_similarity_rows(const at::Tensor& x0_in,
                                                          const at::Tensor& x1_in, double eps) {
  check_inputs(x0_in, x1_in, eps);
  const DeviceScope scope(x0_in, kOp);
  const int64_t N = x0_in.size(0), D = x0_in.size(1);
  const auto acc = acc_type_of(x0_in.scalar_type());
  at::Tensor cos = at::empty({N}, x0_in.options().dtype(acc));
  at::Tensor norms = at::empty({2, N}, x0_in.options().dtype(acc));
  if (!x0_in.is_cuda()) {
    const at::Tensor x0 = cpu_operand(x0_in), x1 = cpu_operand(x1_in);
    AT_DISPATCH_FLOATING_TYPES(acc, "cosine_similarity_rows_cpu", [&] {
      cosine_rows_forward_cpu<scalar_t>(x0.data_ptr<scalar_t>(), x1.data_ptr<scalar_t>(), N, D,
                                        eps, cos.data_ptr<scalar_t>(),
                                        norms.data_ptr<scalar_t>());
    });
    return {cos, norms};
  }
#ifdef WITH_CUDA
  const at::Tensor x0 = x0_in.contiguous(), x1 = x1_in.contiguous();
  cosine_rows_forward_cuda(to_kernel_dtype(x0.scalar_type()), x0.data_ptr(), x1.data_ptr(), N, D,
                           eps, cos.data_ptr(), norms.data_ptr(),
                           at::cuda::getCurrentCUDAStream().stream());
#endif
  return {cos, norms};
}

std::tuple<at::Tensor, at::Tensor> cosine_similarity_rows_backward(
    const at::Tensor& grad_in, const at::Tensor& x0_in, const at::Tensor& x1_in,
    const at::Tensor& cos_in, const at::Tensor& norms_in, double eps, bool need_grad_x0,
    bool need_grad_x1) {
  check_inputs(x0_in, x1_in, eps);
  check_same_device("cosine_similarity_rows_backward",
                    {{"x0", x0_in}, {"grad_cos", grad_in}, {"cos", cos_in}, {"norms", norms_in}});
  const int64_t N = x0_in.size(0), D = x0_in.size(1);
  TORCH_CHECK(grad_in.numel() == N && cos_in.numel() == N && norms_in.numel() == 2 * N, kOp,
              "_backward: grad and cos must have one entry per row and norms two, got ",
              grad_in.sizes(), ", ", cos_in.sizes(), " and ", norms_in.sizes(), " for ", N,
              " rows");
  const DeviceScope scope(x0_in, kOp);
  const auto acc = acc_type_of(x0_in.scalar_type());
  // The upstream gradient of a mean is an expanded scalar (stride 0): made dense once, O(N).
  const at::Tensor grad = grad_in.to(acc).contiguous();
  const at::Tensor cos = cos_in.to(acc).contiguous();
  const at::Tensor norms = norms_in.to(acc).contiguous();
  const auto none = [&](const at::Tensor& x) { return at::empty({0}, x.options()); };
  if (!x0_in.is_cuda()) {
    const at::Tensor x0 = cpu_operand(x0_in), x1 = cpu_operand(x1_in);
    at::Tensor g0 = need_grad_x0 ? at::empty_like(x0) : at::Tensor();
    at::Tensor g1 = need_grad_x1 ? at::empty_like(x1) : at::Tensor();
    AT_DISPATCH_FLOATING_TYPES(acc, "cosine_similarity_rows_backward_cpu", [&] {
      cosine_rows_backward_cpu<scalar_t>(
          grad.data_ptr<scalar_t>(), x0.data_ptr<scalar_t>(), x1.data_ptr<scalar_t>(),
          cos.data_ptr<scalar_t>(), norms.data_ptr<scalar_t>(), N, D, eps,
          need_grad_x0 ? g0.data_ptr<scalar_t>() : nullptr,
          need_grad_x1 ? g1.data_ptr<scalar_t>() : nullptr);
    });
    return {need_grad_x0 ? g0.to(x0_in.scalar_type()) : none(x0_in),
            need_grad_x1 ? g1.to(x1_in.scalar_type()) : none(x1_in)};
  }
  at::Tensor g0 = need_grad_x0 ? at::empty({N, D}, x0_in.options()) : none(x0_in);
  at::Tensor g1 = need_grad_x1 ? at::empty({N, D}, x1_in.options()) : none(x1_in);
#ifdef WITH_CUDA
  if (need_grad_x0 || need_grad_x1) {
    const at::Tensor x0 = x0_in.contiguous(), x1 = x1_in.contiguous();
    cosine_rows_backward_cuda(to_kernel_dtype(x0.scalar_type()), grad.data_ptr(), x0.data_ptr(),
                              x1.data_ptr(), cos.data_ptr(), norms.data_ptr(), N, D, eps,
                              need_grad_x0 ? g0.data_ptr() : nullptr,
                              need_grad_x1 ? g1.data_ptr() : nullptr,
                              at::cuda::getCurrentCUDAStream().stream());
  }
#endif
  return {g0, g1};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(jem_fast, m) {
  m.def("cosine_similarity_rows(Tensor x0, Tensor x1, float eps) -> (Tensor cos, Tensor norms)");
  m.def(
      "cosine_similarity_rows_backward(Tensor grad_cos, Tensor x0, Tensor x1, Tensor cos, "
      "Tensor norms, float eps, bool need_grad_x0, bool need_grad_x1) "
      "-> (Tensor grad_x0, Tensor grad_x1)");
}

TORCH_LIBRARY_IMPL(jem_fast, CPU, m) {
  m.impl("cosine_similarity_rows", &cosine_similarity_rows);
  m.impl("cosine_similarity_rows_backward", &cosine_similarity_rows_backward);
}

TORCH_LIBRARY_IMPL(jem_fast, CUDA, m) {
  m.impl("cosine_similarity_rows", &cosine_similarity_rows);
  m.impl("cosine_similarity_rows_backward", &cosine_similarity_rows_backward);
}

}  // namespace cosine
}  // namespace jem_fast

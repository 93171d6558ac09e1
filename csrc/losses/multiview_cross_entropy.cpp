// Multi-view soft cross-entropy (SwAV, DINO): schema, checks and dispatch.
//
//   multiview_cross_entropy(targets: T x (B, K), logits: V x (B, K), scale)
//       -> (loss (), lse (V, B) float64, mass (T, B))
//   loss = mean over pairs (t, v), v != t, of mean_b [ -sum_k y_tbk log_softmax(scale x_vb)_k ]
//   multiview_cross_entropy_backward(grad_loss, targets, logits, lse, mass, scale) -> V grads
//
// Targets carry no gradient (SwAV codes and DINO teacher probabilities are constants, as in the
// official code). Tensors are passed as lists so multi-crop outputs are never stacked into a
// (V, B, K) copy. Algebra and kernels: multiview_cross_entropy_kernels.h.
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "common/host_utils.h"
#include "losses/multiview_cross_entropy_kernels.h"

namespace jem_fast {
namespace multiview_ce {
namespace {

constexpr const char* kOp = "multiview_cross_entropy";

int64_t pair_count(int64_t T, int64_t V) { return T * V - std::min(T, V); }

Problem check_inputs(const std::vector<at::Tensor>& targets, const std::vector<at::Tensor>& logits,
                     double scale) {
  TORCH_CHECK(!logits.empty(), kOp, ": logits (the student views) must not be empty");
  TORCH_CHECK(!targets.empty(), kOp, ": targets (the teacher views / codes) must not be empty");
  TORCH_CHECK(static_cast<int64_t>(logits.size()) <= kMaxViews, kOp, ": at most ", kMaxViews,
              " student views are supported, got ", logits.size());
  TORCH_CHECK(static_cast<int64_t>(targets.size()) <= kMaxTargets, kOp, ": at most ", kMaxTargets,
              " target views are supported, got ", targets.size());
  const at::Tensor& x0 = logits[0];
  TORCH_CHECK(x0.dim() == 2, kOp, ": logits[0] must be 2-D (batch, classes), got shape ",
              x0.sizes());
  TORCH_CHECK(x0.size(0) >= 1, kOp, ": the batch is empty (logits[0] has shape ", x0.sizes(), ")");
  TORCH_CHECK(x0.size(1) >= 1, kOp, ": logits[0] has no classes (shape ", x0.sizes(), ")");
  TORCH_CHECK(at::isFloatingType(x0.scalar_type()), kOp,
              ": logits must be floating-point (float32, float64, float16 or bfloat16), got ",
              x0.scalar_type());
  for (size_t v = 0; v < logits.size(); ++v) {
    const at::Tensor& x = logits[v];
    TORCH_CHECK(x.sizes() == x0.sizes(), kOp, ": every student view must have the shape of "
                "logits[0] ", x0.sizes(), ", got logits[", v, "] with shape ", x.sizes());
    TORCH_CHECK(x.scalar_type() == x0.scalar_type(), kOp, ": every student view must have dtype ",
                x0.scalar_type(), ", got logits[", v, "] with ", x.scalar_type());
    TORCH_CHECK(x.device() == x0.device(), kOp, ": every student view must be on ", x0.device(),
                ", got logits[", v, "] on ", x.device());
  }
  const auto acc = acc_type_of(x0.scalar_type());
  for (size_t t = 0; t < targets.size(); ++t) {
    const at::Tensor& y = targets[t];
    TORCH_CHECK(y.sizes() == x0.sizes(), kOp, ": targets[", t, "] must have the logits' shape ",
                x0.sizes(), ", got ", y.sizes());
    TORCH_CHECK(y.scalar_type() == acc, kOp, ": targets[", t, "] must be ", acc, " for ",
                x0.scalar_type(), " logits, got ", y.scalar_type());
    TORCH_CHECK(y.device() == x0.device(), kOp, ": targets[", t, "] must be on ", x0.device(),
                ", got ", y.device());
  }
  TORCH_CHECK(std::isfinite(scale) && scale > 0.0, kOp,
              ": scale (1 / student temperature) must be finite and > 0, got ", scale);
  Problem p{static_cast<int64_t>(targets.size()), static_cast<int64_t>(logits.size()), x0.size(0),
            x0.size(1), scale};
  TORCH_CHECK(pair_count(p.targets, p.views) > 0, kOp,
              ": no (target, student) pairs: the same view index is skipped, so one target and "
              "one student view leave nothing to compare; pass at least two views");
  TORCH_CHECK(p.cols <= int64_t(65535) * 512, kOp, ": at most ", int64_t(65535) * 512,
              " classes are supported, got ", p.cols);
  return p;
}

std::vector<at::Tensor> contiguous_all(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> out;
  out.reserve(ts.size());
  for (const auto& t : ts) out.push_back(t.contiguous());
  return out;
}

template <typename P>
std::vector<P> pointers(const std::vector<at::Tensor>& ts) {
  std::vector<P> out;
  for (const auto& t : ts) out.push_back(static_cast<P>(t.data_ptr()));
  return out;
}

#ifdef WITH_CUDA
cudaStream_t current_stream() { return at::cuda::getCurrentCUDAStream().stream(); }
#endif

// Runs f(I{}, A{}) with I the logit element type (c10 types on CPU) and A the accumulation type.
template <typename F>
void dispatch_cpu(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(float{}, float{}); break;
    case at::kDouble: f(double{}, double{}); break;
    case at::kHalf: f(c10::Half{}, float{}); break;
    case at::kBFloat16: f(c10::BFloat16{}, float{}); break;
    default: TORCH_CHECK(false, kOp, ": unsupported dtype ", t);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> multiview_cross_entropy(
    at::TensorList targets_in, at::TensorList logits_in, double scale, bool check_finite) {
  const std::vector<at::Tensor> targets_v(targets_in.begin(), targets_in.end());
  const std::vector<at::Tensor> logits_v(logits_in.begin(), logits_in.end());
  const Problem p = check_inputs(targets_v, logits_v, scale);
  const DeviceScope scope(logits_v[0], kOp);
  const auto targets = contiguous_all(targets_v);
  const auto logits = contiguous_all(logits_v);
  const auto opts = logits[0].options().dtype(acc_type_of(logits[0].scalar_type()));
  const auto opts64 = logits[0].options().dtype(at::kDouble);
  at::Tensor lse = at::empty({p.views, p.rows}, opts64);
  at::Tensor contribution = at::empty({p.views, p.rows}, opts64);
  at::Tensor mass = at::empty({p.targets, p.rows}, opts);
  if (!logits[0].is_cuda()) {
    dispatch_cpu(logits[0].scalar_type(), [&](auto itag, auto atag) {
      using I = decltype(itag);
      using A = decltype(atag);
      const auto y = pointers<const A*>(targets);
      const auto x = pointers<const I*>(logits);
      forward_cpu<I, A>(p, y.data(), x.data(), lse.data_ptr<double>(),
                        contribution.data_ptr<double>(), mass.data_ptr<A>());
    });
  } else {
#ifdef WITH_CUDA
    const bool is_double = logits[0].scalar_type() == at::kDouble;
    at::Tensor partial = at::empty({forward_partials_cuda(p, is_double)}, opts);
    const auto y = pointers<const void*>(targets);
    const auto x = pointers<const void*>(logits);
    forward_cuda(to_kernel_dtype(logits[0].scalar_type()), p, y.data(), x.data(),
                 partial.data_ptr(), lse.data_ptr(), contribution.data_ptr(), mass.data_ptr(),
                 current_stream());
#endif
  }
  // Summed in float64, then rounded once to the accumulation dtype.
  at::Tensor loss = contribution.sum()
                        .div_(static_cast<double>(pair_count(p.targets, p.views) * p.rows))
                        .to(opts.dtype());
  if (check_finite && !capturing_cuda_graph(loss)) {
    TORCH_CHECK(at::isfinite(loss).item<bool>(), kOp,
                ": the loss is not finite: the student outputs (logits) or the targets contain NaN "
                "or Inf. jem_fast raises instead of returning a NaN loss; pass check_finite=False "
                "to skip this check (and its device synchronization).");
  }
  return {loss, lse, mass};
}

std::vector<at::Tensor> multiview_cross_entropy_backward(const at::Tensor& grad_loss,
                                                         at::TensorList targets_in,
                                                         at::TensorList logits_in,
                                                         const at::Tensor& lse,
                                                         const at::Tensor& mass, double scale) {
  const std::vector<at::Tensor> targets_v(targets_in.begin(), targets_in.end());
  const std::vector<at::Tensor> logits_v(logits_in.begin(), logits_in.end());
  const Problem p = check_inputs(targets_v, logits_v, scale);
  check_same_device("multiview_cross_entropy_backward",
                    {{"logits[0]", logits_v[0]}, {"grad_loss", grad_loss}, {"lse", lse},
                     {"mass", mass}});
  TORCH_CHECK(grad_loss.numel() == 1, kOp, ": grad_loss must hold one element, got shape ",
              grad_loss.sizes());
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({p.views, p.rows}) &&
                  mass.sizes() == at::IntArrayRef({p.targets, p.rows}),
              kOp, ": lse / mass do not match the inputs (pass the forward's outputs)");
  const DeviceScope scope(logits_v[0], kOp);
  const auto targets = contiguous_all(targets_v);
  const auto logits = contiguous_all(logits_v);
  const auto acc = acc_type_of(logits[0].scalar_type());
  const at::Tensor lse_c = lse.to(at::kDouble).contiguous();
  const at::Tensor mass_c = mass.to(acc).contiguous();
  const at::Tensor coef = grad_loss.reshape({1}).to(acc).mul(
      scale / static_cast<double>(pair_count(p.targets, p.views) * p.rows));
  std::vector<at::Tensor> grads;
  for (const auto& x : logits) grads.push_back(at::empty_like(x, at::MemoryFormat::Contiguous));
  if (!logits[0].is_cuda()) {
    dispatch_cpu(logits[0].scalar_type(), [&](auto itag, auto atag) {
      using I = decltype(itag);
      using A = decltype(atag);
      const auto y = pointers<const A*>(targets);
      const auto x = pointers<const I*>(logits);
      const auto g = pointers<I*>(grads);
      backward_cpu<I, A>(p, y.data(), x.data(), lse_c.data_ptr<double>(), mass_c.data_ptr<A>(),
                         coef.item<A>(), g.data());
    });
  } else {
#ifdef WITH_CUDA
    const auto y = pointers<const void*>(targets);
    const auto x = pointers<const void*>(logits);
    const auto g = pointers<void*>(grads);
    backward_cuda(to_kernel_dtype(logits[0].scalar_type()), p, y.data(), x.data(),
                  lse_c.data_ptr(), mass_c.data_ptr(), coef.data_ptr(), g.data(), current_stream());
#endif
  }
  return grads;
}

}  // namespace
}  // namespace multiview_ce
}  // namespace jem_fast

TORCH_LIBRARY_FRAGMENT(jem_fast, m) {
  m.def("multiview_cross_entropy(Tensor[] targets, Tensor[] logits, float scale, bool check_finite) -> (Tensor, Tensor, Tensor)");
  m.def("multiview_cross_entropy_backward(Tensor grad_loss, Tensor[] targets, Tensor[] logits, Tensor lse, Tensor mass, float scale) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(jem_fast, CPU, m) {
  m.impl("multiview_cross_entropy", &jem_fast::multiview_ce::multiview_cross_entropy);
  m.impl("multiview_cross_entropy_backward", &jem_fast::multiview_ce::multiview_cross_entropy_backward);
}

TORCH_LIBRARY_IMPL(jem_fast, CUDA, m) {
  m.impl("multiview_cross_entropy", &jem_fast::multiview_ce::multiview_cross_entropy);
  m.impl("multiview_cross_entropy_backward", &jem_fast::multiview_ce::multiview_cross_entropy_backward);
}

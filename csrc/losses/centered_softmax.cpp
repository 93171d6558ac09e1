// DINO's teacher distribution: schema, checks, dispatch.
//   centered_softmax(x (B, K), center (K,)?, scale) -> softmax(scale (x - center)) (B, K)
// float32 output (float64 for float64 input), whatever the input dtype: the teacher
// temperature 0.04 makes the logits 25x larger, beyond what float16 can hold. No autograd: the
// teacher is a constant of the DINO loss (as in the official code).
#include <torch/library.h>

#include <cmath>
#include <optional>

#include "common/host_utils.h"
#include "losses/centered_softmax_kernels.h"

namespace jem_fast {
namespace centered_softmax {
namespace {

constexpr const char* kOp = "centered_softmax";

at::Tensor centered_softmax(const at::Tensor& x_in, const std::optional<at::Tensor>& center_in,
                            double scale) {
  TORCH_CHECK(x_in.dim() == 2, kOp, ": teacher output must be 2-D (batch, dim), got shape ",
              x_in.sizes());
  TORCH_CHECK(x_in.size(0) >= 1 && x_in.size(1) >= 1, kOp,
              ": teacher output must be non-empty, got shape ", x_in.sizes());
  TORCH_CHECK(at::isFloatingType(x_in.scalar_type()), kOp,
              ": teacher output must be floating-point, got ", x_in.scalar_type());
  TORCH_CHECK(std::isfinite(scale) && scale > 0.0, kOp,
              ": scale (1 / teacher temperature) must be finite and > 0, got ", scale);
  const int64_t B = x_in.size(0), K = x_in.size(1);
  const auto acc = acc_type_of(x_in.scalar_type());
  at::Tensor center;
  if (center_in.has_value()) {
    TORCH_CHECK(center_in->numel() == K, kOp, ": center must hold one value per output dimension (",
                K, "), got shape ", center_in->sizes());
    TORCH_CHECK(center_in->device() == x_in.device(), kOp, ": center must be on ", x_in.device(),
                ", got ", center_in->device());
    center = center_in->reshape({K}).to(acc).contiguous();
  }
  const DeviceScope scope(x_in, kOp);
  const at::Tensor x = x_in.contiguous();
  at::Tensor out = at::empty({B, K}, x.options().dtype(acc));
  if (!x.is_cuda()) {
    switch (x.scalar_type()) {
      case at::kFloat:
        forward_cpu<float, float>(x.data_ptr<float>(), center.defined() ? center.data_ptr<float>() : nullptr,
                                  B, K, static_cast<float>(scale), out.data_ptr<float>());
        break;
      case at::kDouble:
        forward_cpu<double, double>(x.data_ptr<double>(),
                                    center.defined() ? center.data_ptr<double>() : nullptr, B, K,
                                    scale, out.data_ptr<double>());
        break;
      case at::kHalf:
        forward_cpu<c10::Half, float>(x.data_ptr<c10::Half>(),
                                      center.defined() ? center.data_ptr<float>() : nullptr, B, K,
                                      static_cast<float>(scale), out.data_ptr<float>());
        break;
      case at::kBFloat16:
        forward_cpu<c10::BFloat16, float>(x.data_ptr<c10::BFloat16>(),
                                          center.defined() ? center.data_ptr<float>() : nullptr, B,
                                          K, static_cast<float>(scale), out.data_ptr<float>());
        break;
      default: TORCH_CHECK(false, kOp, ": unsupported dtype ", x.scalar_type());
    }
  } else {
#ifdef WITH_CUDA
    forward_cuda(to_kernel_dtype(x.scalar_type()), x.data_ptr(),
                 center.defined() ? center.data_ptr() : nullptr, B, K, scale, out.data_ptr(),
                 at::cuda::getCurrentCUDAStream().stream());
#endif
  }
  return out;
}

}  // namespace
}  // namespace centered_softmax
}  // namespace jem_fast

TORCH_LIBRARY_FRAGMENT(jem_fast, m) {
  m.def("centered_softmax(Tensor x, Tensor? center, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(jem_fast, CPU, m) {
  m.impl("centered_softmax", &jem_fast::centered_softmax::centered_softmax);
}

TORCH_LIBRARY_IMPL(jem_fast, CUDA, m) {
  m.impl("centered_softmax", &jem_fast::centered_softmax::centered_softmax);
}

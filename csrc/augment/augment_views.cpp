// Fused per-sample augmentation: schema, checks and the host side of both kernels.
//
//   augment_views(Tensor[] images, Tensor crop, Tensor flip, Tensor jitter, Tensor brightness,
//                 Tensor contrast, Tensor saturation, Tensor hue, Tensor order, Tensor grayscale,
//                 Tensor blur_sigma, Tensor solarize, int out_h, int out_w,
//                 bool channels_last_input, str interpolation, int blur_kernel_size,
//                 str blur_padding, float solarize_threshold, float[] mean, float[] std,
//                 ScalarType out_dtype, bool channels_last_output) -> Tensor (B, 3, out_h, out_w)
//
// images: either ONE uint8 batch tensor, (B, 3, H, W) or, with channels_last_input, (B, H, W, 3);
// or B uint8 tensors (3, H_i, W_i) (or (H_i, W_i, 3) with channels_last_input) of different
// sizes, e.g. what torchvision.io.decode_jpeg(device="cuda") returns. Strided views are read in
// place. The layout is never guessed: channels_last_input says which axis holds the 3 channels.
// Per-sample parameters (B = number of output views = number of images): crop (B, 4) int64
// top/left/height/width in source pixels, flip/jitter/grayscale/solarize (B,) bool,
// brightness/contrast/saturation/hue/blur_sigma (B,) float32, order (B, 4) int64 a permutation of
// 0 brightness, 1 contrast, 2 saturation, 3 hue. blur_sigma 0 = no blur.
//
// Per view, the result equals torchvision.transforms.v2.functional on float32 in [0, 1]:
//   uint8/255 -> resized_crop(antialias=True; bilinear or bicubic A=-0.5; NO clamp after bicubic,
//   as torchvision does not clamp float images) -> hflip -> jitter ops in `order` (contrast
//   against the grayscale mean of the current image) -> grayscale (3 channels) ->
//   gaussian_blur(blur_kernel_size, sigma; reflect or zeros padding) -> solarize(threshold) ->
//   normalize(mean, std) -> cast to out_dtype (float32/float16/bfloat16), NCHW or channels-last.
// Crop policy: rectangles are clamped into the image (augment_kernels.h, clamp_crop), so no
// parameter value can make a kernel read outside an image. No autograd (uint8 input).
#include <torch/library.h>

#include <cstring>
#include <string>
#include <vector>

#include "augment/augment_kernels.h"
#include "common/host_utils.h"

namespace jem_fast {
namespace augment {
namespace {

constexpr const char* kOp = "augment_views";
constexpr int64_t kMaxSide = 16384;

struct Inputs {
  std::vector<ImageDesc> desc;
  int64_t max_h = 0, max_w = 0;
  at::Device device = at::kCPU;
};

Inputs describe_images(const std::vector<at::Tensor>& images, bool channels_last_input) {
  TORCH_CHECK(!images.empty(), kOp, ": images is an empty list");
  Inputs in;
  in.device = images[0].device();
  const int c_axis = channels_last_input ? 2 : 0;  // within one image's (3-D) view
  auto add = [&](const at::Tensor& img, const std::string& name) {
    TORCH_CHECK(img.scalar_type() == at::kByte, kOp, ": ", name, " must be uint8, got ",
                img.scalar_type());
    TORCH_CHECK(img.dim() == 3, kOp, ": ", name, " must be 3-D, got shape ", img.sizes());
    TORCH_CHECK(img.device() == in.device, kOp, ": all images must be on one device, got ",
                in.device, " and ", img.device(), " (", name, ")");
    TORCH_CHECK(img.size(c_axis) == 3, kOp, ": ", name, " must have 3 channels on axis ", c_axis,
                " (", channels_last_input ? "(H, W, 3)" : "(3, H, W)", "), got shape ",
                img.sizes());
    const int h_axis = channels_last_input ? 0 : 1, w_axis = channels_last_input ? 1 : 2;
    ImageDesc d;
    d.data = img.data_ptr<uint8_t>();
    d.height = img.size(h_axis);
    d.width = img.size(w_axis);
    TORCH_CHECK(d.height >= 1 && d.width >= 1, kOp, ": ", name, " is empty, shape ", img.sizes());
    d.stride_c = img.stride(c_axis);
    d.stride_h = img.stride(h_axis);
    d.stride_w = img.stride(w_axis);
    in.max_h = std::max(in.max_h, d.height);
    in.max_w = std::max(in.max_w, d.width);
    in.desc.push_back(d);
  };
  if (images.size() == 1 && images[0].dim() == 4) {
    const at::Tensor& batch = images[0];
    TORCH_CHECK(batch.size(0) >= 1, kOp, ": the image batch is empty, shape ", batch.sizes());
    for (int64_t b = 0; b < batch.size(0); ++b) add(batch[b], "images[" + std::to_string(b) + "]");
  } else {
    for (size_t b = 0; b < images.size(); ++b) {
      TORCH_CHECK(images[b].dim() == 3, kOp, ": images must be one 4-D batch or a list of 3-D "
                  "images, got images[", b, "] with shape ", images[b].sizes());
      add(images[b], "images[" + std::to_string(b) + "]");
    }
  }
  return in;
}

at::Tensor param(const at::Tensor& t, const char* name, int64_t B, bool pair4, at::ScalarType dt,
                 const at::Device& device) {
  if (pair4) {
    TORCH_CHECK(t.dim() == 2 && t.size(0) == B && t.size(1) == 4, kOp, ": ", name,
                " must have shape (", B, ", 4), got ", t.sizes());
  } else {
    TORCH_CHECK(t.dim() == 1 && t.size(0) == B, kOp, ": ", name, " must have shape (", B,
                ",), got ", t.sizes());
  }
  TORCH_CHECK(t.scalar_type() == dt, kOp, ": ", name, " must be ", dt, ", got ", t.scalar_type());
  TORCH_CHECK(t.device() == device, kOp, ": ", name, " must be on the images' device ", device,
              ", got ", t.device());
  return t.contiguous();
}

at::Tensor augment_views(const std::vector<at::Tensor>& images, const at::Tensor& crop_in,
                         const at::Tensor& flip_in, const at::Tensor& jitter_in,
                         const at::Tensor& brightness_in, const at::Tensor& contrast_in,
                         const at::Tensor& saturation_in, const at::Tensor& hue_in,
                         const at::Tensor& order_in, const at::Tensor& grayscale_in,
                         const at::Tensor& blur_sigma_in, const at::Tensor& solarize_in,
                         int64_t out_h, int64_t out_w, bool channels_last_input,
                         c10::string_view interpolation, int64_t blur_kernel_size,
                         c10::string_view blur_padding, double solarize_threshold,
                         at::ArrayRef<double> mean, at::ArrayRef<double> std,
                         at::ScalarType out_dtype, bool channels_last_output) {
  const Inputs in = describe_images(images, channels_last_input);
  const int64_t B = static_cast<int64_t>(in.desc.size());
  const at::Device dev = in.device;
  const DeviceScope scope(images[0], kOp);

  TORCH_CHECK(out_h >= 1 && out_w >= 1 && out_h <= kMaxSide && out_w <= kMaxSide, kOp,
              ": the output size must be in [1, ", kMaxSide, "] on each side, got (", out_h, ", ",
              out_w, ")");
  const std::string interp(interpolation.data(), interpolation.size());
  TORCH_CHECK(interp == "bilinear" || interp == "bicubic", kOp,
              ": interpolation must be 'bilinear' or 'bicubic', got '", interp, "'");
  const std::string padding(blur_padding.data(), blur_padding.size());
  TORCH_CHECK(padding == "reflect" || padding == "zeros", kOp,
              ": blur_padding must be 'reflect' or 'zeros', got '", padding, "'");
  TORCH_CHECK(blur_kernel_size >= 1 && blur_kernel_size % 2 == 1 &&
                  blur_kernel_size <= kMaxBlurKernel,
              kOp, ": blur_kernel_size must be odd and in [1, ", kMaxBlurKernel, "], got ",
              blur_kernel_size);
  TORCH_CHECK(mean.size() == 3 && std.size() == 3, kOp,
              ": mean and std must have 3 entries each, got ", mean.size(), " and ", std.size());
  for (int c = 0; c < 3; ++c) {
    TORCH_CHECK(std[c] != 0.0 && std::isfinite(std[c]) && std::isfinite(mean[c]), kOp,
                ": std must be non-zero and mean/std finite, got mean ", mean, " std ", std);
  }
  TORCH_CHECK(out_dtype == at::kFloat || out_dtype == at::kHalf || out_dtype == at::kBFloat16,
              kOp, ": out_dtype must be float32, float16 or bfloat16, got ", out_dtype);

  const at::Tensor crop = param(crop_in, "crop", B, true, at::kLong, dev);
  const at::Tensor order = param(order_in, "order", B, true, at::kLong, dev);
  const at::Tensor flip = param(flip_in, "flip", B, false, at::kBool, dev);
  const at::Tensor jitter = param(jitter_in, "jitter", B, false, at::kBool, dev);
  const at::Tensor grayscale = param(grayscale_in, "grayscale", B, false, at::kBool, dev);
  const at::Tensor solarize = param(solarize_in, "solarize", B, false, at::kBool, dev);
  const at::Tensor brightness = param(brightness_in, "brightness", B, false, at::kFloat, dev);
  const at::Tensor contrast = param(contrast_in, "contrast", B, false, at::kFloat, dev);
  const at::Tensor saturation = param(saturation_in, "saturation", B, false, at::kFloat, dev);
  const at::Tensor hue = param(hue_in, "hue", B, false, at::kFloat, dev);
  const at::Tensor sigma = param(blur_sigma_in, "blur_sigma", B, false, at::kFloat, dev);
  // Checked on the host: one small copy from a CUDA device (skipped while a CUDA graph is being
  // captured, where the kernel treats ids outside 0..3 as no-ops; jem_fast.augment.functional
  // validates before calling).
  if (!capturing_cuda_graph(order)) {
    const at::Tensor order_host = order.to(at::kCPU);
    const int64_t* o = order_host.data_ptr<int64_t>();
    for (int64_t b = 0; b < B; ++b) {
      int seen = 0;
      for (int k = 0; k < 4; ++k) {
        TORCH_CHECK(o[4 * b + k] >= 0 && o[4 * b + k] <= 3, kOp, ": order[", b,
                    "] must be a permutation of 0..3, got ", order_host[b]);
        seen |= 1 << o[4 * b + k];
      }
      TORCH_CHECK(seen == 15, kOp, ": order[", b, "] must be a permutation of 0..3, got ",
                  order_host[b]);
    }
  }

  const auto mf = channels_last_output ? at::MemoryFormat::ChannelsLast
                                       : at::MemoryFormat::Contiguous;
  at::Tensor out = at::empty({B, 3, out_h, out_w},
                             at::TensorOptions().dtype(out_dtype).device(dev), mf);

  Params p;
  p.batch = B;
  p.out_h = out_h;
  p.out_w = out_w;
  p.bicubic = interp == "bicubic";
  p.blur_kernel = static_cast<int>(blur_kernel_size);
  p.blur_reflect = padding == "reflect";
  p.solarize_threshold = static_cast<float>(solarize_threshold);
  for (int c = 0; c < 3; ++c) {
    p.mean[c] = static_cast<float>(mean[c]);
    p.inv_std[c] = static_cast<float>(1.0 / std[c]);
  }
  p.out_dtype = to_kernel_dtype(out_dtype);
  p.channels_last_out = channels_last_output;
  p.crop = crop.data_ptr<int64_t>();
  p.flip = flip.data_ptr<bool>();
  p.jitter = jitter.data_ptr<bool>();
  p.brightness = brightness.data_ptr<float>();
  p.contrast = contrast.data_ptr<float>();
  p.saturation = saturation.data_ptr<float>();
  p.hue = hue.data_ptr<float>();
  p.order = order.data_ptr<int64_t>();
  p.grayscale = grayscale.data_ptr<bool>();
  p.blur_sigma = sigma.data_ptr<float>();
  p.solarize = solarize.data_ptr<bool>();
  p.out = out.data_ptr();

  if (!dev.is_cuda()) {
    augment_views_cpu(p, in.desc.data());
    return out;
  }
#ifdef WITH_CUDA
  at::Tensor desc_dev = at::empty({B * static_cast<int64_t>(sizeof(ImageDesc))},
                                  out.options().dtype(at::kByte));
  const int64_t tiles = augment_cuda_tiles(out_h, out_w);
  at::Tensor scratch = at::empty({B, 3, out_h, out_w}, out.options().dtype(at::kFloat),
                                 at::MemoryFormat::Contiguous);
  at::Tensor partials = at::empty({B, tiles}, out.options().dtype(at::kFloat));
  augment_views_cuda(p, in.desc.data(), reinterpret_cast<ImageDesc*>(desc_dev.data_ptr()),
                     in.max_h, in.max_w, scratch.data_ptr<float>(), partials.data_ptr<float>(),
                     at::cuda::getCurrentCUDAStream().stream());
#endif
  return out;
}

}  // namespace
}  // namespace augment
}  // namespace jem_fast

TORCH_LIBRARY_FRAGMENT(jem_fast, m) {
  m.def("augment_views(Tensor[] images, Tensor crop, Tensor flip, Tensor jitter, "
        "Tensor brightness, Tensor contrast, Tensor saturation, Tensor hue, Tensor order, "
        "Tensor grayscale, Tensor blur_sigma, Tensor solarize, int out_h, int out_w, "
        "bool channels_last_input, str interpolation, int blur_kernel_size, str blur_padding, "
        "float solarize_threshold, float[] mean, float[] std, ScalarType out_dtype, "
        "bool channels_last_output) -> Tensor");
}

TORCH_LIBRARY_IMPL(jem_fast, CPU, m) {
  m.impl("augment_views", &jem_fast::augment::augment_views);
}

// Registered in CPU-only builds too, so that CUDA images get the rebuild hint (DeviceScope).
TORCH_LIBRARY_IMPL(jem_fast, CUDA, m) {
  m.impl("augment_views", &jem_fast::augment::augment_views);
}

// C wrappers (convention: wrap_common.h) around the CUDA launchers of the fused augmentation
// (augment/augment_kernels.h): augment::augment_views_cuda and augment::augment_cuda_tiles.
// Used by tests/test_cuda_emulated_augment.py.
//
// The Params block is passed field by field (plain C types): per-sample parameter arrays and the
// output as raw pointers of CPU tensors, mean / inv_std as float32[3] arrays. The images come as
// an array of B data pointers plus an int64 (B, 5) array of (height, width, stride_c, stride_h,
// stride_w) in elements, from which the wrapper builds the ImageDesc array exactly as the host op
// (augment_views.cpp, describe_images) does.
//
// The launcher takes the descriptors on the host and stores them into a "device" buffer of B
// descriptors itself (kernel parameters, graph-safe). That buffer is pre-filled here with
// descriptors of a 1 x 1 decoy image, so a descriptor the launcher forgets to store shows up as a
// wrong (constant) view instead of a crash. An older revision took only the device pointer; both
// signatures are accepted.
#include "wrap_common.h"

#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "augment/augment_kernels.h"

namespace aug = jem_fast::augment;

namespace {

const uint8_t kDecoyPixel[3] = {77, 77, 77};

template <typename F>
void call_launcher(F&& f, const aug::Params& p, const std::vector<aug::ImageDesc>& host,
                   std::vector<aug::ImageDesc>& dev, int64_t max_in_h, int64_t max_in_w,
                   float* scratch, float* partials) {
  void* stream = static_cast<void*>(EMU_STREAM);
  if constexpr (std::is_invocable_v<F, const aug::Params&, const aug::ImageDesc*,
                                    aug::ImageDesc*, int64_t, int64_t, float*, float*, void*>) {
    f(p, host.data(), dev.data(), max_in_h, max_in_w, scratch, partials, stream);
  } else {
    dev = host;  // older signature: the descriptors already in "device" memory
    f(p, static_cast<const aug::ImageDesc*>(dev.data()), max_in_h, max_in_w, scratch, partials,
      stream);
  }
}

}  // namespace

extern "C" {

int emu_augment_cuda_tiles(int64_t out_h, int64_t out_w, int64_t* out) {
  EMU_CALL(*out = aug::augment_cuda_tiles(out_h, out_w));
}

int emu_augment_views_cuda(
    // images
    int64_t batch, const void* const* image_data, const void* image_geometry,
    int64_t max_in_h, int64_t max_in_w,
    // scalar parameters
    int64_t out_h, int64_t out_w, int bicubic, int blur_kernel, int blur_reflect,
    double solarize_threshold, const void* mean3, const void* inv_std3, int out_dtype,
    int channels_last_out,
    // per-sample parameters
    const void* crop, const void* flip, const void* jitter, const void* brightness,
    const void* contrast, const void* saturation, const void* hue, const void* order,
    const void* grayscale, const void* blur_sigma, const void* solarize,
    // output and work buffers
    void* out, void* scratch, void* partials) {
  EMU_CALL({
    const int64_t* geom = static_cast<const int64_t*>(image_geometry);
    std::vector<aug::ImageDesc> host(static_cast<size_t>(batch));
    for (int64_t b = 0; b < batch; ++b) {
      aug::ImageDesc& d = host[static_cast<size_t>(b)];
      d.data = static_cast<const uint8_t*>(image_data[b]);
      d.height = geom[5 * b + 0];
      d.width = geom[5 * b + 1];
      d.stride_c = geom[5 * b + 2];
      d.stride_h = geom[5 * b + 3];
      d.stride_w = geom[5 * b + 4];
    }
    aug::ImageDesc decoy;
    decoy.data = kDecoyPixel;
    decoy.height = 1;
    decoy.width = 1;
    decoy.stride_c = 1;
    decoy.stride_h = 0;
    decoy.stride_w = 0;
    std::vector<aug::ImageDesc> dev(static_cast<size_t>(batch), decoy);

    aug::Params p;
    p.batch = batch;
    p.out_h = out_h;
    p.out_w = out_w;
    p.bicubic = bicubic != 0;
    p.blur_kernel = blur_kernel;
    p.blur_reflect = blur_reflect != 0;
    p.solarize_threshold = static_cast<float>(solarize_threshold);
    for (int c = 0; c < 3; ++c) {
      p.mean[c] = static_cast<const float*>(mean3)[c];
      p.inv_std[c] = static_cast<const float*>(inv_std3)[c];
    }
    p.out_dtype = emu_dtype(out_dtype);
    p.channels_last_out = channels_last_out != 0;
    p.crop = static_cast<const int64_t*>(crop);
    p.flip = static_cast<const bool*>(flip);
    p.jitter = static_cast<const bool*>(jitter);
    p.brightness = static_cast<const float*>(brightness);
    p.contrast = static_cast<const float*>(contrast);
    p.saturation = static_cast<const float*>(saturation);
    p.hue = static_cast<const float*>(hue);
    p.order = static_cast<const int64_t*>(order);
    p.grayscale = static_cast<const bool*>(grayscale);
    p.blur_sigma = static_cast<const float*>(blur_sigma);
    p.solarize = static_cast<const bool*>(solarize);
    p.out = out;

    call_launcher(
        [](auto&&... args) -> decltype(aug::augment_views_cuda(args...)) {
          return aug::augment_views_cuda(args...);
        },
        p, host, dev, max_in_h, max_in_w, static_cast<float*>(scratch),
        static_cast<float*>(partials));
    // The launches may still run: `dev` (read by the kernels) must outlive them.
    const cudaError_t err = cudaDeviceSynchronize();
    if (err != cudaSuccess) {
      throw std::runtime_error(std::string("cudaDeviceSynchronize: ") + cudaGetErrorString(err));
    }
  });
}

}  // extern "C"

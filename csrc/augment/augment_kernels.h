// Fused augmentation (jem_fast::augment_views): the raw-pointer parameter block shared by the
// host op, the CPU kernel and the CUDA kernel, and the per-pixel formulas both kernels call.
//
// One set of inline formulas (JEM_HD: host and device) is the single source of truth, so the CPU
// and CUDA results differ only by the order of floating-point reductions, never by formula.
// Everything is float32: colour math in fp32 on every device and output dtype (the hue of a
// black pixel divides by a guarded 1, never 0/0).
// Kept free of ATen so the .cu file compiles with CUDA headers only.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/kernel_dtype.h"

#ifdef __CUDACC__
#define JEM_HD __host__ __device__ __forceinline__
#else
#define JEM_HD inline
#endif

namespace jem_fast {
namespace augment {

// Largest blur kernel the op accepts. The CUDA finish kernel streams the tile + halo through
// shared memory in 8-row chunks, so its shared memory grows only linearly with the halo: 39 KB at
// 63 taps (a 16 x 32 tile with a 31-pixel halo), under the 48 KB every GPU grants without opt-in.
// It also keeps the CPU padded row small.
constexpr int kMaxBlurKernel = 63;

// One source image: base pointer and element strides of its channel/row/column axes, so CHW,
// HWC and non-contiguous views are read in place (no copy, no layout guess).
struct ImageDesc {
  const uint8_t* data;
  int64_t height, width;
  int64_t stride_c, stride_h, stride_w;
};

// The whole call. Per-sample parameter arrays have B entries (crop and order 4 per sample).
struct Params {
  int64_t batch;
  int64_t out_h, out_w;
  bool bicubic;                  // else bilinear; both antialiased (torch antialias=True)
  int blur_kernel;               // odd, 1..kMaxBlurKernel
  bool blur_reflect;             // else zero padding
  float solarize_threshold;
  float mean[3], inv_std[3];
  DType out_dtype;               // float32, float16 or bfloat16
  bool channels_last_out;        // output memory is (B, S_h, S_w, 3)
  const int64_t* crop;           // (B, 4) top, left, height, width (clamped into the image)
  const bool* flip;
  const bool* jitter;
  const float* brightness;
  const float* contrast;
  const float* saturation;
  const float* hue;
  const int64_t* order;          // (B, 4) permutation of 0..3
  const bool* grayscale;
  const float* blur_sigma;       // 0 = no blur
  const bool* solarize;
  void* out;
};

// ---------------------------------------------------------------------------------------------
// Crop policy. The op clamps each rectangle into the image: top into [0, H-1], height into
// [1, H - top] (the same for left/width). No read can leave the image whatever the parameters;
// jem_fast.augment.functional rejects rectangles that would need clamping, so clamping only
// guards direct callers of the op (torchvision would zero-pad such rectangles instead).
// ---------------------------------------------------------------------------------------------
JEM_HD void clamp_crop(const int64_t* c, int64_t H, int64_t W, int64_t& top, int64_t& left,
                       int64_t& height, int64_t& width) {
  top = c[0] < 0 ? 0 : (c[0] > H - 1 ? H - 1 : c[0]);
  left = c[1] < 0 ? 0 : (c[1] > W - 1 ? W - 1 : c[1]);
  height = c[2] < 1 ? 1 : (c[2] > H - top ? H - top : c[2]);
  width = c[3] < 1 ? 1 : (c[3] > W - left ? W - left : c[3]);
}

// ---------------------------------------------------------------------------------------------
// Antialiased resampling weights of interpolate(antialias=True, align_corners=False):
// scale = in/out, support = interp_size/2 * max(scale, 1), taps [xmin, xmin + xsize) around
// centre = scale (i + 0.5), weight = filter((j - centre + 0.5) / max(scale, 1)), normalized.
// torch evaluates this in float32 for float images, which puts the tap positions off by up to
// in_size * 2^-24 pixels (3e-5 px at 500 px) and the outputs off by up to ~1e-5 on noisy images.
// Here the centre, the tap bounds and every filter argument are exact rationals with the
// denominators 2 out and 2 max(in, out): the bounds are computed in integers and each filter
// argument is one integer numerator divided once in `Real`. The CPU evaluates the filter in double;
// the GPU in float (relative error ~1e-7 per weight, no FP64: FP64 runs at 1/64 rate on L4, RTX 4090
// and RTX 50xx, and the taps are recomputed per tile there).
// ---------------------------------------------------------------------------------------------
template <typename Real>
JEM_HD Real aa_filter(Real x, bool bicubic) {
  x = x < Real(0) ? -x : x;
  if (!bicubic) return x < Real(1) ? Real(1) - x : Real(0);
  // Keys cubic with A = -0.5 (the antialiased path and PIL; plain bicubic uses -0.75).
  const Real a = Real(-0.5);
  if (x < Real(1)) return ((a + Real(2)) * x - (a + Real(3))) * x * x + Real(1);
  if (x < Real(2)) return ((a * x - Real(5) * a) * x + Real(8) * a) * x - Real(4) * a;
  return Real(0);
}

struct AxisScale {
  int64_t in_size, out_size;
  int64_t half;   // filter half-width before scaling: 1 (bilinear) or 2 (bicubic)
  bool down;      // in_size >= out_size, i.e. scale >= 1
  int max_taps;   // 2 ceil(support) + 1
};

JEM_HD AxisScale axis_scale(int64_t in_size, int64_t out_size, bool bicubic) {
  AxisScale s;
  s.in_size = in_size;
  s.out_size = out_size;
  s.half = bicubic ? 2 : 1;
  s.down = in_size >= out_size;
  const int64_t ceil_support = s.down ? (s.half * in_size + out_size - 1) / out_size : s.half;
  s.max_taps = static_cast<int>(ceil_support) * 2 + 1;
  return s;
}

// Taps of output index i: first input index (relative to the crop) and count; when w is given,
// the normalized weights are written to w[0..count). Returns count.
template <typename Real>
JEM_HD int aa_taps(int64_t i, const AxisScale& s, bool bicubic, int64_t& xmin, float* w) {
  const int64_t I = s.in_size, O = s.out_size;
  const int64_t centre2 = I * (2 * i + 1);                        // 2 O centre
  const int64_t support2 = 2 * s.half * (s.down ? I : O);         // 2 O support
  // trunc(centre -+ support + 0.5): integer division truncates toward zero, as the cast does.
  const int64_t lo = (centre2 - support2 + O) / (2 * O);
  xmin = lo > 0 ? lo : 0;
  int64_t hi = (centre2 + support2 + O) / (2 * O);
  hi = hi < I ? hi : I;
  int64_t n = hi - xmin;
  n = n < 0 ? 0 : (n > s.max_taps ? s.max_taps : n);  // torch clips the rare +1 overshoot
  if (w != nullptr) {
    // (j - centre + 0.5) / max(scale, 1) = (2 O j - 2 O centre + O) / (2 max(I, O))
    const Real denom = static_cast<Real>(2 * (s.down ? I : O));
    Real total = Real(0);
    for (int64_t j = 0; j < n; ++j) {
      total += aa_filter<Real>(static_cast<Real>(2 * O * (j + xmin) - centre2 + O) / denom, bicubic);
    }
    for (int64_t j = 0; j < n; ++j) {
      const Real v =
          aa_filter<Real>(static_cast<Real>(2 * O * (j + xmin) - centre2 + O) / denom, bicubic);
      w[j] = static_cast<float>(total != Real(0) ? v / total : v);
    }
  }
  return static_cast<int>(n);
}

// ---------------------------------------------------------------------------------------------
// Colour formulas of torchvision.transforms.v2.functional on float images (all clamp to [0, 1]).
// ---------------------------------------------------------------------------------------------
JEM_HD float clamp01(float x) { return x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x); }

JEM_HD float gray_of(float r, float g, float b) { return 0.2989f * r + 0.587f * g + 0.114f * b; }

// _blend(a, b, f) = clamp(f a + (1 - f) b)
JEM_HD float blend(float a, float b, float f) { return clamp01(f * a + (1.0f - f) * b); }

JEM_HD void op_brightness(float& r, float& g, float& b, float f) {
  r = clamp01(r * f);
  g = clamp01(g * f);
  b = clamp01(b * f);
}

JEM_HD void op_saturation(float& r, float& g, float& b, float f) {
  const float l = gray_of(r, g, b);
  r = blend(r, l, f);
  g = blend(g, l, f);
  b = blend(b, l, f);
}

// `mean` is the grayscale mean of the whole image at this point of the order.
JEM_HD void op_contrast(float& r, float& g, float& b, float f, float mean) {
  r = blend(r, mean, f);
  g = blend(g, mean, f);
  b = blend(b, mean, f);
}

// rgb -> hsv -> (h + f) mod 1 -> rgb, written branch-free (selects) so the CPU loop vectorizes.
// Divisors are guarded as torchvision does (1 where max == min), so black, white and gray
// pixels give h = s = 0 and never 0/0. One more guard than torchvision: bicubic overshoot can
// leave a pixel with max == 0 and min < 0, where torchvision's s = range / 0 = inf turns the
// pixel into NaN; jem_fast takes s = 0 there (the pixel stays black). Everywhere torchvision is
// finite the result is the same.
JEM_HD void op_hue(float& r, float& g, float& b, float f) {
  const float maxc = fmaxf(r, fmaxf(g, b));
  const float minc = fminf(r, fminf(g, b));
  const bool eqc = maxc == minc;
  const float range = maxc - minc;
  const bool no_saturation = eqc || maxc == 0.0f;
  const float s = no_saturation ? 0.0f : range / (no_saturation ? 1.0f : maxc);
  const float div = eqc ? 1.0f : range;
  const float rc = (maxc - r) / div;
  const float gc = (maxc - g) / div;
  const float bc = (maxc - b) / div;
  const bool max_is_r = maxc == r;
  const bool max_is_g = maxc == g;
  // torchvision: hr where max == r, hg where max == g != r, hb otherwise.
  const float hr = bc - gc;
  const float hg = 2.0f + rc - bc;
  const float hb = 4.0f + gc - rc;
  float h = max_is_r ? hr : (max_is_g ? hg : hb);
  h = h * (1.0f / 6.0f) + 1.0f;
  h = h - floorf(h);  // fmod(h, 1) for h >= 0
  h = h + f;
  h = h - floorf(h);  // remainder(h, 1): python-style, result in [0, 1]
  // hsv -> rgb
  const float v = maxc;
  const float h6 = h * 6.0f;
  const float fi = floorf(h6);
  const float fr = h6 - fi;
  int i = static_cast<int>(fi);
  i = i % 6;
  i = i < 0 ? i + 6 : i;
  const float sxf = s * fr;
  const float one_minus_s = 1.0f - s;
  const float q = clamp01((1.0f - sxf) * v);
  const float t = clamp01((sxf + one_minus_s) * v);
  const float p = clamp01(one_minus_s * v);
  // i: 0 (v,t,p) 1 (q,v,p) 2 (p,v,t) 3 (p,q,v) 4 (t,p,v) 5 (v,p,q)
  r = (i == 0 || i == 5) ? v : (i == 1 ? q : (i == 4 ? t : p));
  g = (i == 1 || i == 2) ? v : (i == 0 ? t : (i == 3 ? q : p));
  b = (i == 3 || i == 4) ? v : (i == 2 ? t : (i == 5 ? q : p));
}

JEM_HD void op_grayscale(float& r, float& g, float& b) {
  const float l = gray_of(r, g, b);
  r = l;
  g = l;
  b = l;
}

JEM_HD float op_solarize(float x, float threshold) { return x >= threshold ? 1.0f - x : x; }

// The jitter ops of one sample, as a small plan both kernels follow: the ops before the exact
// contrast run in phase A, contrast (which needs the image mean after phase A) and the rest in
// phase B. A factor of exactly 1 (hue 0) is the identity and is dropped, so samples without
// contrast need no image-wide reduction at all.
struct JitterPlan {
  int ops[4];
  int count;
  int split;            // ops[0..split) before contrast; ops[split] == 1 when has_contrast
  bool has_contrast;
  float factor[4];      // by op id: brightness, contrast, saturation, hue
};

JEM_HD JitterPlan make_plan(const Params& p, int64_t b) {
  JitterPlan plan;
  plan.count = 0;
  plan.split = 0;
  plan.has_contrast = false;
  plan.factor[0] = p.brightness[b];
  plan.factor[1] = p.contrast[b];
  plan.factor[2] = p.saturation[b];
  plan.factor[3] = p.hue[b];
  if (!p.jitter[b]) return plan;
  for (int k = 0; k < 4; ++k) {
    const int64_t op = p.order[b * 4 + k];
    if (op < 0 || op > 3) continue;  // the host rejects these; never index out of range
    const float f = plan.factor[op];
    if (op == 3 ? f == 0.0f : f == 1.0f) continue;
    plan.ops[plan.count++] = static_cast<int>(op);
  }
  plan.split = plan.count;
  for (int k = 0; k < plan.count; ++k) {
    if (plan.ops[k] == 1) {
      plan.split = k;
      plan.has_contrast = true;
      break;
    }
  }
  return plan;
}

// Applies ops[first..last) of the plan to one pixel (contrast uses `mean`).
JEM_HD void apply_ops(const JitterPlan& plan, int first, int last, float mean, float& r, float& g,
                      float& b) {
  for (int k = first; k < last; ++k) {
    const int op = plan.ops[k];
    const float f = plan.factor[op];
    if (op == 0) {
      op_brightness(r, g, b, f);
    } else if (op == 1) {
      op_contrast(r, g, b, f, mean);
    } else if (op == 2) {
      op_saturation(r, g, b, f);
    } else {
      op_hue(r, g, b, f);
    }
  }
}

// torchvision's 1-D Gaussian: softmax(-(linspace(-lim, lim, k) / sigma)^2), lim = (k-1)/(2 sqrt 2),
// i.e. exp(-(i - r)^2 / (2 sigma^2)) normalized. w has k entries.
JEM_HD void gaussian_weights(int k, float sigma, float* w) {
  const int r = k / 2;
  float total = 0.0f;
  for (int i = 0; i < k; ++i) {
    const float x = static_cast<float>(i - r) * 0.70710678118654752f / sigma;
    w[i] = expf(-(x * x));
    total += w[i];
  }
  for (int i = 0; i < k; ++i) w[i] /= total;
}

// Reflect (torch "reflect": no edge repeat) an index into [0, n). Where torch is defined
// (|overhang| < n) this is its single reflection; beyond that it keeps reflecting (period
// 2 (n - 1)) so that no index can leave the view whatever the kernel size (the functional entry
// point rejects such sizes as torchvision does; the op stays safe without that check).
JEM_HD int64_t reflect_index(int64_t i, int64_t n) {
  if (n <= 1) return 0;
  const int64_t period = 2 * (n - 1);
  i = i < 0 ? -i : i;
  i %= period;
  return i >= n ? period - i : i;
}

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------
void augment_views_cpu(const Params& p, const ImageDesc* images);

#ifdef WITH_CUDA
// images_host: the B descriptors in host memory; they are passed to the device by value in
// kernel parameters (safe under CUDA-graph capture and replay) and stored into images_dev, a
// device buffer of B descriptors owned by the call. scratch: B * 3 * out_h * out_w floats (the
// pre-contrast/pre-blur image of the samples that need one). partials: B * tiles floats.
void augment_views_cuda(const Params& p, const ImageDesc* images_host, ImageDesc* images_dev,
                        int64_t max_in_h, int64_t max_in_w, float* scratch, float* partials,
                        void* stream);
int64_t augment_cuda_tiles(int64_t out_h, int64_t out_w);
#endif

}  // namespace augment
}  // namespace jem_fast

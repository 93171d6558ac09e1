// CPU kernel of jem_fast::augment_views: parallel over samples (at::parallel_for), one sample
// at a time through a per-thread float32 scratch:
//   1. separable antialiased resample of the clamped crop: horizontal pass over the source rows
//      the vertical taps need (uint8 -> /255 through a LUT) into a rows x 3 x S_w buffer, then the
//      vertical pass into three S_h x S_w planes (flip is folded into the horizontal taps);
//   2. the jitter ops of phase A (those before contrast), one vectorizable loop per op over
//      L1-sized chunks, with the grayscale sum of the result when contrast follows;
//   3. phase B: contrast with the exact mean, the remaining ops, grayscale;
//   4. separable Gaussian blur (padded rows, then row axpys), fused with solarize, normalize and
//      the cast/layout of the output in its last pass.
// The per-pixel formulas are the inline ones of augment_kernels.h, shared with the CUDA kernel.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <vector>

#include "augment/augment_kernels.h"
#include "common/cpu_multiversion.h"

namespace jem_fast {
namespace augment {
namespace {

// Pixels per chunk of the colour passes: 3 planes x 1024 floats stay in L1.
constexpr int64_t kChunk = 1024;

struct Lut {
  float v[256];
  Lut() {
    // torchvision's to_dtype(float32, scale=True): x.to(float32) / 255 (a division, not * 1/255).
    for (int i = 0; i < 256; ++i) v[i] = static_cast<float>(i) / 255.0f;
  }
};
const Lut kLut;

// Taps of every output index of one axis, padded to a fixed count T (zero weights) so the inner
// loops have a constant trip count; `start` is relative to the crop.
struct AxisTaps {
  int T = 0;
  std::vector<int64_t> start;
  std::vector<float> w;
  int64_t lo = 0, hi = 0;  // union of the tap ranges: [lo, hi)

  void build(int64_t in_size, int64_t out_size, bool bicubic, bool reverse) {
    const AxisScale s = axis_scale(in_size, out_size, bicubic);
    T = s.max_taps;
    start.assign(out_size, 0);
    w.assign(out_size * T, 0.0f);
    lo = in_size;
    hi = 0;
    for (int64_t i = 0; i < out_size; ++i) {
      // flip: output i samples what unflipped output (out_size - 1 - i) samples.
      const int64_t src = reverse ? out_size - 1 - i : i;
      int64_t xmin = 0;
      const int n = aa_taps<double>(src, s, bicubic, xmin, &w[i * T]);
      start[i] = xmin;
      if (n > 0) {
        lo = std::min(lo, xmin);
        hi = std::max(hi, xmin + n);
      }
    }
    if (hi <= lo) lo = hi = 0;
  }
};

// ---- resampling -----------------------------------------------------------------------------

// One source row's needed columns, uint8 -> float, into three channel rows of `n` (+ T zeros).
JEM_CPU_MULTIVERSION void load_row(const uint8_t* row, int64_t n, int64_t stride_c,
                                   int64_t stride_w, float* dst, int64_t dst_stride) {
  for (int c = 0; c < 3; ++c) {
    const uint8_t* src = row + c * stride_c;
    float* d = dst + c * dst_stride;
    for (int64_t x = 0; x < n; ++x) d[x] = kLut.v[src[x * stride_w]];
  }
}

template <int T>
JEM_CPU_MULTIVERSION void hpass_fixed(const float* src, const int64_t* start, const float* w,
                                      int64_t out_w, int64_t offset, float* dst) {
  for (int64_t x = 0; x < out_w; ++x) {
    const float* s = src + (start[x] - offset);
    const float* wx = w + x * T;
    float acc = 0.0f;
    for (int j = 0; j < T; ++j) acc += wx[j] * s[j];
    dst[x] = acc;
  }
}

JEM_CPU_MULTIVERSION void hpass_any(const float* src, const int64_t* start, const float* w,
                                    int T, int64_t out_w, int64_t offset, float* dst) {
  for (int64_t x = 0; x < out_w; ++x) {
    const float* s = src + (start[x] - offset);
    const float* wx = w + x * T;
    float acc = 0.0f;
    for (int j = 0; j < T; ++j) acc += wx[j] * s[j];
    dst[x] = acc;
  }
}

void hpass(const float* src, const AxisTaps& tx, int64_t out_w, float* dst) {
  const int64_t* st = tx.start.data();
  const float* w = tx.w.data();
  switch (tx.T) {  // the common tap counts get a compile-time trip count
    case 3: hpass_fixed<3>(src, st, w, out_w, tx.lo, dst); break;
    case 5: hpass_fixed<5>(src, st, w, out_w, tx.lo, dst); break;
    case 7: hpass_fixed<7>(src, st, w, out_w, tx.lo, dst); break;
    case 9: hpass_fixed<9>(src, st, w, out_w, tx.lo, dst); break;
    case 11: hpass_fixed<11>(src, st, w, out_w, tx.lo, dst); break;
    default: hpass_any(src, st, w, tx.T, out_w, tx.lo, dst);
  }
}

// dst[x] = sum_j w[j] rows[j * row_stride + x]
JEM_CPU_MULTIVERSION void vpass_row(const float* rows, int64_t row_stride, const float* w, int n,
                                    int64_t width, float* dst) {
  for (int64_t x = 0; x < width; ++x) dst[x] = 0.0f;
  for (int j = 0; j < n; ++j) {
    const float wj = w[j];
    const float* r = rows + j * row_stride;
    for (int64_t x = 0; x < width; ++x) dst[x] += wj * r[x];
  }
}

// ---- colour ---------------------------------------------------------------------------------

JEM_CPU_MULTIVERSION void loop_brightness(float* r, float* g, float* b, int64_t n, float f) {
  for (int64_t i = 0; i < n; ++i) op_brightness(r[i], g[i], b[i], f);
}
JEM_CPU_MULTIVERSION void loop_contrast(float* r, float* g, float* b, int64_t n, float f,
                                        float mean) {
  for (int64_t i = 0; i < n; ++i) op_contrast(r[i], g[i], b[i], f, mean);
}
JEM_CPU_MULTIVERSION void loop_saturation(float* r, float* g, float* b, int64_t n, float f) {
  for (int64_t i = 0; i < n; ++i) op_saturation(r[i], g[i], b[i], f);
}
JEM_CPU_MULTIVERSION void loop_hue(float* r, float* g, float* b, int64_t n, float f) {
  for (int64_t i = 0; i < n; ++i) op_hue(r[i], g[i], b[i], f);
}
JEM_CPU_MULTIVERSION void loop_grayscale(float* r, float* g, float* b, int64_t n) {
  for (int64_t i = 0; i < n; ++i) op_grayscale(r[i], g[i], b[i]);
}
JEM_CPU_MULTIVERSION float loop_gray_sum(const float* r, const float* g, const float* b,
                                         int64_t n) {
  float acc = 0.0f;
  for (int64_t i = 0; i < n; ++i) acc += gray_of(r[i], g[i], b[i]);
  return acc;
}

void apply_ops_chunk(const JitterPlan& plan, int first, int last, float mean, float* r, float* g,
                     float* b, int64_t n) {
  for (int k = first; k < last; ++k) {
    const int op = plan.ops[k];
    const float f = plan.factor[op];
    switch (op) {
      case 0: loop_brightness(r, g, b, n, f); break;
      case 1: loop_contrast(r, g, b, n, f, mean); break;
      case 2: loop_saturation(r, g, b, n, f); break;
      default: loop_hue(r, g, b, n, f); break;
    }
  }
}

// ---- blur -----------------------------------------------------------------------------------

// Horizontal blur of one plane in place through a padded row.
JEM_CPU_MULTIVERSION void blur_rows(float* plane, int64_t h, int64_t w, const float* wk, int k,
                                    bool reflect, float* pad) {
  const int r = k / 2;
  for (int64_t y = 0; y < h; ++y) {
    float* row = plane + y * w;
    for (int i = 0; i < r; ++i) {
      pad[i] = reflect ? row[reflect_index(i - r, w)] : 0.0f;
      pad[r + w + i] = reflect ? row[reflect_index(w + i, w)] : 0.0f;
    }
    for (int64_t x = 0; x < w; ++x) pad[r + x] = row[x];
    for (int64_t x = 0; x < w; ++x) row[x] = 0.0f;
    for (int j = 0; j < k; ++j) {
      const float wj = wk[j];
      const float* p = pad + j;
      for (int64_t x = 0; x < w; ++x) row[x] += wj * p[x];
    }
  }
}

// dst += wj * src
JEM_CPU_MULTIVERSION void axpy(float* dst, const float* src, float wj, int64_t n) {
  for (int64_t x = 0; x < n; ++x) dst[x] += wj * src[x];
}

// ---- output ---------------------------------------------------------------------------------

template <typename out_t>
JEM_CPU_MULTIVERSION void write_row(const float* r, const float* g, const float* b, int64_t n,
                                    bool solarize, float threshold, const float* mean,
                                    const float* inv_std, bool channels_last, out_t* dst,
                                    int64_t plane_stride) {
  const float* src[3] = {r, g, b};
  if (channels_last) {
    for (int64_t x = 0; x < n; ++x) {
      for (int c = 0; c < 3; ++c) {
        float v = src[c][x];
        if (solarize) v = op_solarize(v, threshold);
        dst[x * 3 + c] = static_cast<out_t>((v - mean[c]) * inv_std[c]);
      }
    }
    return;
  }
  for (int c = 0; c < 3; ++c) {
    const float* s = src[c];
    out_t* d = dst + c * plane_stride;
    const float m = mean[c], is = inv_std[c];
    if (solarize) {
      for (int64_t x = 0; x < n; ++x) d[x] = static_cast<out_t>((op_solarize(s[x], threshold) - m) * is);
    } else {
      for (int64_t x = 0; x < n; ++x) d[x] = static_cast<out_t>((s[x] - m) * is);
    }
  }
}

struct Scratch {
  std::vector<float> rowbuf, hbuf, img, tmp;
};

template <typename out_t>
void process_sample(const Params& p, const ImageDesc& im, int64_t b, Scratch& s) {
  const int64_t S_h = p.out_h, S_w = p.out_w, plane = S_h * S_w;
  int64_t top, left, ch, cw;
  clamp_crop(p.crop + 4 * b, im.height, im.width, top, left, ch, cw);

  // 1. resample
  AxisTaps tx, ty;
  tx.build(cw, S_w, p.bicubic, p.flip[b]);
  ty.build(ch, S_h, p.bicubic, false);
  const int64_t ncols = tx.hi - tx.lo;
  const int64_t rb_stride = ncols + tx.T;  // T zeros after the row: padded taps read them
  s.rowbuf.assign(3 * rb_stride, 0.0f);
  const int64_t nrows = ty.hi - ty.lo;
  s.hbuf.resize(std::max<int64_t>(nrows, 1) * 3 * S_w);
  for (int64_t r = 0; r < nrows; ++r) {
    const uint8_t* row = im.data + (top + ty.lo + r) * im.stride_h + (left + tx.lo) * im.stride_w;
    load_row(row, ncols, im.stride_c, im.stride_w, s.rowbuf.data(), rb_stride);
    for (int c = 0; c < 3; ++c) {
      hpass(s.rowbuf.data() + c * rb_stride, tx, S_w, s.hbuf.data() + (r * 3 + c) * S_w);
    }
  }
  s.img.resize(3 * plane);
  float* R = s.img.data();
  float* G = R + plane;
  float* B = G + plane;
  for (int64_t y = 0; y < S_h; ++y) {
    const float* wy = &ty.w[y * ty.T];
    // only the taps that exist (the zero padding of the table may point past the last row)
    const int n = static_cast<int>(std::min<int64_t>(ty.T, ty.hi - ty.start[y]));
    const float* base = s.hbuf.data() + (ty.start[y] - ty.lo) * 3 * S_w;
    for (int c = 0; c < 3; ++c) {
      vpass_row(base + c * S_w, 3 * S_w, wy, n, S_w, s.img.data() + c * plane + y * S_w);
    }
  }

  // 2./3. colour
  const JitterPlan plan = make_plan(p, b);
  double gray_total = 0.0;
  if (plan.split > 0 || plan.has_contrast) {
    for (int64_t i0 = 0; i0 < plane; i0 += kChunk) {
      const int64_t n = std::min(kChunk, plane - i0);
      apply_ops_chunk(plan, 0, plan.split, 0.0f, R + i0, G + i0, B + i0, n);
      if (plan.has_contrast) gray_total += loop_gray_sum(R + i0, G + i0, B + i0, n);
    }
  }
  const float mean = static_cast<float>(gray_total / static_cast<double>(plane));
  const bool gray = p.grayscale[b];
  if (plan.split < plan.count || gray) {
    for (int64_t i0 = 0; i0 < plane; i0 += kChunk) {
      const int64_t n = std::min(kChunk, plane - i0);
      apply_ops_chunk(plan, plan.split, plan.count, mean, R + i0, G + i0, B + i0, n);
      if (gray) loop_grayscale(R + i0, G + i0, B + i0, n);
    }
  }

  // 4. blur + solarize + normalize + cast
  out_t* out = static_cast<out_t*>(p.out) + b * 3 * plane;
  const bool sol = p.solarize[b];
  const float sigma = p.blur_sigma[b];
  const bool cl = p.channels_last_out;
  if (sigma > 0.0f && p.blur_kernel > 1) {
    const int k = p.blur_kernel;
    float wk[kMaxBlurKernel];
    gaussian_weights(k, sigma, wk);
    s.tmp.resize(S_w + k + 3 * S_w);
    float* pad = s.tmp.data();
    float* rows3 = pad + S_w + k;
    for (int c = 0; c < 3; ++c) blur_rows(s.img.data() + c * plane, S_h, S_w, wk, k, p.blur_reflect, pad);
    const int r = k / 2;
    for (int64_t y = 0; y < S_h; ++y) {
      for (int c = 0; c < 3; ++c) {
        float* dst = rows3 + c * S_w;
        std::fill(dst, dst + S_w, 0.0f);
        for (int j = 0; j < k; ++j) {
          int64_t yy = y + j - r;
          if (yy < 0 || yy >= S_h) {
            if (!p.blur_reflect) continue;  // zero padding: the tap adds nothing
            yy = reflect_index(yy, S_h);
          }
          axpy(dst, s.img.data() + c * plane + yy * S_w, wk[j], S_w);
        }
      }
      out_t* dst = cl ? out + y * S_w * 3 : out + y * S_w;
      write_row(rows3, rows3 + S_w, rows3 + 2 * S_w, S_w, sol, p.solarize_threshold, p.mean,
                p.inv_std, cl, dst, plane);
    }
  } else {
    for (int64_t y = 0; y < S_h; ++y) {
      out_t* dst = cl ? out + y * S_w * 3 : out + y * S_w;
      write_row(R + y * S_w, G + y * S_w, B + y * S_w, S_w, sol, p.solarize_threshold, p.mean,
                p.inv_std, cl, dst, plane);
    }
  }
}

template <typename out_t>
void run(const Params& p, const ImageDesc* images) {
  at::parallel_for(0, p.batch, 1, [&](int64_t begin, int64_t end) {
    Scratch s;
    for (int64_t b = begin; b < end; ++b) process_sample<out_t>(p, images[b], b, s);
  });
}

}  // namespace

void augment_views_cpu(const Params& p, const ImageDesc* images) {
  switch (p.out_dtype) {
    case DType::kFloat16: run<c10::Half>(p, images); break;
    case DType::kBFloat16: run<c10::BFloat16>(p, images); break;
    default: run<float>(p, images); break;
  }
}

}  // namespace augment
}  // namespace jem_fast

// CPU kernel of jem_fast::augment_views: parallel over samples (at::parallel_for, so it runs on
// torch's intra-op threads: one thread where torch.get_num_threads() is 1, as in DataLoader
// workers), one sample at a time through a per-thread float32 scratch:
//   1. separable antialiased resample of the clamped crop: horizontal pass over the source rows
//      the vertical taps need, 8 rows of a channel at a time through a transposed tile (uint8 ->
//      /255), into a rows x 3 x S_w buffer, then the vertical pass into three S_h x S_w planes
//      (flip is folded into the horizontal taps);
//   2. the jitter ops of phase A (those before contrast), one vectorizable loop per op over
//      L1-sized chunks, with the grayscale sum of the result when contrast follows;
//   3. phase B: contrast with the exact mean, the remaining ops, grayscale;
//   4. separable Gaussian blur, one output row at a time (vertical pass into a padded row,
//      reflected or zero border, horizontal pass), fused with solarize, normalize and the
//      cast/layout of the output.
// The per-pixel formulas are the inline ones of augment_kernels.h, shared with the CUDA kernel
// (loop_hue is op_hue written lane-wise). The row passes sum in registers with GCC vector
// extensions; all sums keep the reference's tap order except the blur, which adds the two taps of
// equal weight first (a float32 rounding difference, ~1e-7).
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

// The horizontal pass works on tiles of kTileRows source rows of one channel, stored transposed
// (tile[col * kTileRows + row]): one output column of all the rows is then a broadcast weight
// times contiguous 8-float loads per tap, with no gather and no horizontal sum; the tap order and
// the weights are those of the row-at-a-time pass, so the sums are the same. Vector code uses
// GCC vector extensions (AVX2 in the x86-64-v3 clone, SSE pairs in the baseline clone).
typedef float Vec8 __attribute__((vector_size(32)));
typedef int32_t ShuffleMask8 __attribute__((vector_size(32)));
constexpr int kTileRows = 8;

// Transposes an 8 x 8 block: rows[k] holds row k, out[c] receives column c.
inline void transpose8(const Vec8* rows, Vec8* out) {
  const ShuffleMask8 lo2 = {0, 8, 1, 9, 4, 12, 5, 13}, hi2 = {2, 10, 3, 11, 6, 14, 7, 15};
  const ShuffleMask8 lo4 = {0, 1, 8, 9, 4, 5, 12, 13}, hi4 = {2, 3, 10, 11, 6, 7, 14, 15};
  const ShuffleMask8 lo8 = {0, 1, 2, 3, 8, 9, 10, 11}, hi8 = {4, 5, 6, 7, 12, 13, 14, 15};
  Vec8 pairs[8], quads[8];
  for (int k = 0; k < 8; k += 2) {
    pairs[k] = __builtin_shuffle(rows[k], rows[k + 1], lo2);      // r0c0 r1c0 r0c1 r1c1 | c4 c5
    pairs[k + 1] = __builtin_shuffle(rows[k], rows[k + 1], hi2);  // c2 c3 | c6 c7
  }
  for (int k = 0; k < 8; k += 4) {
    quads[k] = __builtin_shuffle(pairs[k], pairs[k + 2], lo4);          // rows k..k+3 of c0 | c4
    quads[k + 1] = __builtin_shuffle(pairs[k], pairs[k + 2], hi4);      // c1 | c5
    quads[k + 2] = __builtin_shuffle(pairs[k + 1], pairs[k + 3], lo4);  // c2 | c6
    quads[k + 3] = __builtin_shuffle(pairs[k + 1], pairs[k + 3], hi4);  // c3 | c7
  }
  for (int c = 0; c < 4; ++c) {
    out[c] = __builtin_shuffle(quads[c], quads[c + 4], lo8);
    out[c + 4] = __builtin_shuffle(quads[c], quads[c + 4], hi8);
  }
}

// Columns [0, n) of `count` (<= kTileRows) source rows of one channel, uint8 -> float (x / 255,
// the LUT's value), into a transposed tile; the lanes of missing rows repeat row 0 and are never
// stored. Contiguous rows (stride_w 1, CHW input) convert 64 columns at a time with vector code
// and transpose 8 x 8 blocks; strided rows (HWC input) go through the LUT.
JEM_CPU_MULTIVERSION void load_tile(const uint8_t* const* rows, int count, int64_t n,
                                    int64_t stride_w, float* tile) {
  const uint8_t* src[kTileRows];
  for (int k = 0; k < kTileRows; ++k) src[k] = rows[k < count ? k : 0];
  int64_t x0 = 0;
  if (stride_w == 1) {
    constexpr int64_t kSpan = 64;
    float converted[kTileRows][kSpan];
    for (; x0 + 8 <= n; x0 += 8) {
      const int64_t at = x0 % kSpan;
      if (at == 0) {
        const int64_t span = std::min(kSpan, n - x0);
        for (int k = 0; k < kTileRows; ++k) {
          // torchvision's to_dtype(float32, scale=True) divides by 255 (as the LUT does)
          for (int64_t x = 0; x < span; ++x) {
            converted[k][x] = static_cast<float>(src[k][x0 + x]) / 255.0f;
          }
        }
      }
      Vec8 block[kTileRows], columns[kTileRows];
      for (int k = 0; k < kTileRows; ++k) {
        __builtin_memcpy(&block[k], &converted[k][at], sizeof(Vec8));
      }
      transpose8(block, columns);
      for (int c = 0; c < 8; ++c) {
        __builtin_memcpy(tile + (x0 + c) * kTileRows, &columns[c], sizeof(Vec8));
      }
    }
  }
  for (int k = 0; k < kTileRows; ++k) {
    for (int64_t x = x0; x < n; ++x) tile[x * kTileRows + k] = kLut.v[src[k][x * stride_w]];
  }
}

// dst[k * dst_stride + x] = sum_j w[x T + j] tile row k at column start[x] - offset + j, for the
// first `count` rows of the tile. kFixedTaps > 0 is T as a compile-time trip count (the common
// tap counts); 0 takes T at run time.
template <int kFixedTaps>
JEM_CPU_MULTIVERSION void hpass_tile_taps(const float* tile, const int64_t* start, const float* w,
                                          int runtime_taps, int64_t out_w, int64_t offset,
                                          float* dst, int64_t dst_stride, int count) {
  const int T = kFixedTaps > 0 ? kFixedTaps : runtime_taps;
  for (int64_t x = 0; x < out_w; ++x) {
    const float* s = tile + (start[x] - offset) * kTileRows;
    const float* wx = w + x * T;
    Vec8 acc = {};
    for (int j = 0; j < T; ++j) {
      Vec8 v;
      __builtin_memcpy(&v, s + j * kTileRows, sizeof(Vec8));
      acc += wx[j] * v;
    }
    for (int k = 0; k < count; ++k) dst[k * dst_stride + x] = acc[k];
  }
}

void hpass_tile(const float* tile, const AxisTaps& tx, int64_t out_w, float* dst,
                int64_t dst_stride, int count) {
  const int64_t* st = tx.start.data();
  const float* w = tx.w.data();
  switch (tx.T) {  // the common tap counts get a compile-time trip count
    case 3: hpass_tile_taps<3>(tile, st, w, 3, out_w, tx.lo, dst, dst_stride, count); break;
    case 5: hpass_tile_taps<5>(tile, st, w, 5, out_w, tx.lo, dst, dst_stride, count); break;
    case 7: hpass_tile_taps<7>(tile, st, w, 7, out_w, tx.lo, dst, dst_stride, count); break;
    case 9: hpass_tile_taps<9>(tile, st, w, 9, out_w, tx.lo, dst, dst_stride, count); break;
    case 11: hpass_tile_taps<11>(tile, st, w, 11, out_w, tx.lo, dst, dst_stride, count); break;
    case 13: hpass_tile_taps<13>(tile, st, w, 13, out_w, tx.lo, dst, dst_stride, count); break;
    default: hpass_tile_taps<0>(tile, st, w, tx.T, out_w, tx.lo, dst, dst_stride, count);
  }
}

// Outputs per block of the register-accumulated row passes: 4 independent accumulators of 8.
constexpr int64_t kVecBlock = 32;

// dst[x] = sum_{j < n} w[j] rows[j * row_stride + x], summed in j order, accumulated in registers
// over blocks of kVecBlock outputs (the tail one at a time: dst is a row of a plane and the next
// row must not be overwritten).
JEM_CPU_MULTIVERSION void vpass_row(const float* rows, int64_t row_stride, const float* w, int n,
                                    int64_t width, float* dst) {
  int64_t x = 0;
  for (; x + kVecBlock <= width; x += kVecBlock) {
    Vec8 acc[4] = {};
    for (int j = 0; j < n; ++j) {
      const float* r = rows + j * row_stride + x;
      for (int v = 0; v < 4; ++v) {
        Vec8 a;
        __builtin_memcpy(&a, r + 8 * v, sizeof(Vec8));
        acc[v] += w[j] * a;
      }
    }
    for (int v = 0; v < 4; ++v) __builtin_memcpy(dst + x + 8 * v, &acc[v], sizeof(Vec8));
  }
  for (; x < width; ++x) {
    float acc = 0.0f;
    for (int j = 0; j < n; ++j) acc += w[j] * rows[j * row_stride + x];
    dst[x] = acc;
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
// op_hue (augment_kernels.h) transcribed lane-wise so that GCC vectorizes it: fmaxf/fminf keep
// NaN and signed-zero rules that block vectorization (the inputs are never NaN, and a -0 versus
// +0 maximum changes no output value), and the sector index stays a float (an integer % 6 has
// no vector form). Every arithmetic step is op_hue's, in the same order: without FMA
// contraction the two agree bit for bit; with GCC's default contraction they may round a
// multiply-add differently (1.2e-7 at most over 50k random pixels x 6 shifts). The hue stage of
// a 224 x 224 view went from 0.59 to 0.16 ms (benchmarks/augment_stages.py, AVX2 clone).
JEM_CPU_MULTIVERSION void loop_hue(float* __restrict r, float* __restrict g, float* __restrict b,
                                   int64_t n, float f) {
  for (int64_t i = 0; i < n; ++i) {
    const float red = r[i], green = g[i], blue = b[i];
    const float gb_max = green > blue ? green : blue;
    const float gb_min = green < blue ? green : blue;
    const float maxc = red > gb_max ? red : gb_max;
    const float minc = red < gb_min ? red : gb_min;
    const bool eqc = maxc == minc;
    const float range = maxc - minc;
    const bool no_saturation = eqc || maxc == 0.0f;
    const float s = no_saturation ? 0.0f : range / (no_saturation ? 1.0f : maxc);
    const float div = eqc ? 1.0f : range;
    const float rc = (maxc - red) / div;
    const float gc = (maxc - green) / div;
    const float bc = (maxc - blue) / div;
    const float hr = bc - gc;
    const float hg = 2.0f + rc - bc;
    const float hb = 4.0f + gc - rc;
    float h = maxc == red ? hr : (maxc == green ? hg : hb);
    h = h * (1.0f / 6.0f) + 1.0f;
    h = h - std::floor(h);
    h = h + f;
    h = h - std::floor(h);
    const float v = maxc;
    const float h6 = h * 6.0f;
    const float fi = std::floor(h6);
    const float fr = h6 - fi;
    const float sector = fi >= 6.0f ? fi - 6.0f : fi;  // op_hue's i % 6 (h6 <= 6)
    const float sxf = s * fr;
    const float one_minus_s = 1.0f - s;
    const float q = clamp01((1.0f - sxf) * v);
    const float t = clamp01((sxf + one_minus_s) * v);
    const float p = clamp01(one_minus_s * v);
    r[i] = (sector == 0.0f || sector == 5.0f) ? v
           : (sector == 1.0f ? q : (sector == 4.0f ? t : p));
    g[i] = (sector == 1.0f || sector == 2.0f) ? v
           : (sector == 0.0f ? t : (sector == 3.0f ? q : p));
    b[i] = (sector == 3.0f || sector == 4.0f) ? v
           : (sector == 2.0f ? t : (sector == 5.0f ? q : p));
  }
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

// The blur runs one output row at a time: a vertical pass over the taps' rows of a plane into a
// padded row, the border of that row filled by reflection (or zeros), then the horizontal pass.
// Both passes accumulate kVecBlock outputs in registers (GCC vector extensions: AVX2 in the
// x86-64-v3 clone, SSE pairs in the baseline one) and read each tap as one contiguous load, so
// there is no per-pixel branch and no read-modify-write of a row per tap. The Gaussian is
// symmetric (w[c - d] == w[c + d] exactly, see gaussian_weights), so each pair of taps costs one
// multiply. Rows are processed in whole blocks: buffers carry kVecBlock floats of slack and the
// lanes past the view width are computed on junk and never written out.
#define JEM_LOAD_VEC8(dst, ptr) __builtin_memcpy(&(dst), (ptr), sizeof(Vec8))

// dst[x] = w[0] centre[0][x] + sum_{d=1..radius} w[d] (centre[-d][x] + centre[d][x]) for
// x < width (a multiple of kVecBlock); centre points at the middle one of 2 radius + 1 row
// pointers.
JEM_CPU_MULTIVERSION void blur_columns(const float* const* centre, const float* w, int radius,
                                       int64_t width, float* dst) {
  for (int64_t x = 0; x < width; x += kVecBlock) {
    Vec8 acc[4];
    for (int v = 0; v < 4; ++v) {
      Vec8 c;
      JEM_LOAD_VEC8(c, centre[0] + x + 8 * v);
      acc[v] = w[0] * c;
    }
    for (int d = 1; d <= radius; ++d) {
      const float* above = centre[-d] + x;
      const float* below = centre[d] + x;
      for (int v = 0; v < 4; ++v) {
        Vec8 a, b;
        JEM_LOAD_VEC8(a, above + 8 * v);
        JEM_LOAD_VEC8(b, below + 8 * v);
        acc[v] += w[d] * (a + b);
      }
    }
    for (int v = 0; v < 4; ++v) __builtin_memcpy(dst + x + 8 * v, &acc[v], sizeof(Vec8));
  }
}

// dst[x] = w[0] row[x] + sum_{d=1..radius} w[d] (row[x - d] + row[x + d]) for x < width; row has
// `radius` readable floats before it and width + radius after.
JEM_CPU_MULTIVERSION void blur_row(const float* row, const float* w, int radius, int64_t width,
                                   float* dst) {
  for (int64_t x = 0; x < width; x += kVecBlock) {
    Vec8 acc[4];
    for (int v = 0; v < 4; ++v) {
      Vec8 c;
      JEM_LOAD_VEC8(c, row + x + 8 * v);
      acc[v] = w[0] * c;
    }
    for (int d = 1; d <= radius; ++d) {
      for (int v = 0; v < 4; ++v) {
        Vec8 a, b;
        JEM_LOAD_VEC8(a, row + x + 8 * v - d);
        JEM_LOAD_VEC8(b, row + x + 8 * v + d);
        acc[v] += w[d] * (a + b);
      }
    }
    for (int v = 0; v < 4; ++v) __builtin_memcpy(dst + x + 8 * v, &acc[v], sizeof(Vec8));
  }
}

#undef JEM_LOAD_VEC8

// Outer taps whose normalized weight is below this are dropped: together they could move an
// output by at most 2 * 31 * 1e-12 (inputs are within [0, 1] up to bicubic overshoot), 1e5 times
// under float32 resolution at 1, so the result is the full kernel's. At sigma = 2 no tap of 23 is
// dropped; at sigma = 1 the 23 taps shrink to 15, at sigma = 0.1 to 3.
constexpr float kNegligibleTap = 1e-12f;

int effective_blur_radius(const float* wk, int k) {
  const int centre = k / 2;
  int radius = centre;
  while (radius > 0 && wk[centre - radius] < kNegligibleTap &&
         wk[centre + radius] < kNegligibleTap) {
    --radius;
  }
  return radius;
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
  std::vector<float> zero_row;  // the rows outside the view under zero padding
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
  // T zero columns after the needed ones: the padded taps of the table read them.
  s.rowbuf.assign((ncols + tx.T) * kTileRows, 0.0f);
  const int64_t nrows = ty.hi - ty.lo;
  s.hbuf.resize(std::max<int64_t>(nrows, 1) * 3 * S_w);
  for (int64_t r0 = 0; r0 < nrows; r0 += kTileRows) {
    const int count = static_cast<int>(std::min<int64_t>(kTileRows, nrows - r0));
    for (int c = 0; c < 3; ++c) {
      const uint8_t* rows[kTileRows];
      for (int k = 0; k < count; ++k) {
        rows[k] = im.data + c * im.stride_c + (top + ty.lo + r0 + k) * im.stride_h +
                  (left + tx.lo) * im.stride_w;
      }
      load_tile(rows, count, ncols, im.stride_w, s.rowbuf.data());
      hpass_tile(s.rowbuf.data(), tx, S_w, s.hbuf.data() + (r0 * 3 + c) * S_w, 3 * S_w, count);
    }
  }
  s.img.resize(3 * plane + kVecBlock);  // the blur's whole-block row reads run past the end
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
    const int radius = effective_blur_radius(wk, k);
    const float* w = wk + k / 2;  // centre tap, then one side (symmetric)
    const int64_t padded_w = (S_w + kVecBlock - 1) / kVecBlock * kVecBlock;
    // [radius | S_w | radius | slack] for the horizontal pass, then 3 output rows.
    const int64_t row_len = padded_w + 2 * radius + kVecBlock;
    s.tmp.resize(row_len + 3 * padded_w);
    float* row = s.tmp.data() + radius;
    float* rows3 = s.tmp.data() + row_len;
    s.zero_row.assign(padded_w, 0.0f);
    const float* taps[kMaxBlurKernel];  // 2 radius + 1 <= k row pointers
    for (int64_t y = 0; y < S_h; ++y) {
      for (int c = 0; c < 3; ++c) {
        const float* plane_c = s.img.data() + c * plane;
        for (int d = -radius; d <= radius; ++d) {
          const int64_t yy = y + d;
          taps[radius + d] = yy >= 0 && yy < S_h ? plane_c + yy * S_w
                             : p.blur_reflect ? plane_c + reflect_index(yy, S_h) * S_w
                                              : s.zero_row.data();
        }
        blur_columns(taps + radius, w, radius, padded_w, row);
        for (int i = 1; i <= radius; ++i) {
          row[-i] = p.blur_reflect ? row[reflect_index(-i, S_w)] : 0.0f;
          row[S_w - 1 + i] = p.blur_reflect ? row[reflect_index(S_w - 1 + i, S_w)] : 0.0f;
        }
        blur_row(row, w, radius, padded_w, rows3 + c * padded_w);
      }
      out_t* dst = cl ? out + y * S_w * 3 : out + y * S_w;
      write_row(rows3, rows3 + padded_w, rows3 + 2 * padded_w, S_w, sol, p.solarize_threshold,
                p.mean, p.inv_std, cl, dst, plane);
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

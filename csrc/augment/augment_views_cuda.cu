// CUDA kernels of jem_fast::augment_views. Raw pointers, CUDA headers only.
//
// Two launches per call, both over (B x tiles_x, tiles_y) blocks of 32 x 8 threads, each block
// owning a 32 x 16 output tile (two rows per thread):
//
//  1. resample_color_kernel: per tile, the antialiased separable resample of the clamped crop
//     (the tile's horizontal and vertical taps are computed once into shared memory; the source
//     rows the tile needs are horizontally filtered kRows at a time into shared memory and
//     accumulated vertically in registers, so any downscale ratio works), the flip (folded into
//     the horizontal taps), and the jitter ops that come BEFORE contrast in the sample's order.
//     A sample that needs neither the exact contrast mean nor a blur is finished right here
//     (grayscale, solarize, normalize, cast, store): one pass, no intermediate image.
//     Otherwise the tile is stored to `scratch` in float32, and when contrast follows, the tile's
//     grayscale sum goes to partials[b][tile] (no atomics: deterministic).
//  2. finish_kernel: blocks of finished samples exit at once. Others sum the sample's tile
//     partials in a fixed order (the exact mean of the image at the contrast point). Without
//     blur they finish their pixels straight from scratch. With blur they stream the tile plus a
//     halo of kernel/2 pixels from scratch, 8 rows at a time, through shared memory (reflect or
//     zero padding resolved at load time), apply contrast and the ops after it plus grayscale to
//     every loaded pixel (pointwise, so the halo gets exactly the values its neighbours would
//     have), blur each chunk horizontally into a (tile rows + halo) x 32 buffer, then blur
//     vertically, solarize, normalize, cast, store. Shared memory stays under 48 KB for every
//     blur size the op accepts.
//
// Why two phases: contrast needs the grayscale mean of the whole view at its point of the order,
// a grid-wide reduction in the middle of the pipeline, and the blur needs neighbours that the
// colour ops have already been applied to. Recomputing the resample for a 2 x 11-pixel halo would
// multiply the resample work by ~2-3x; storing the pre-contrast image once is cheaper.
// What is kept in device memory: one float32 (3, S_h, S_w) image per view that has contrast
// and/or blur (written once by kernel 1, read once plus halo overlap by kernel 2; the buffer is
// allocated for the batch, untouched for direct samples) and one float per tile and view.
// All colour math is float32 with the formulas of augment_kernels.h, shared with the CPU kernel.
#include <algorithm>
#include <climits>
#include <stdexcept>
#include <string>

#include "augment/augment_kernels.h"
#include "common/cuda_utils.cuh"

namespace jem_fast {
namespace augment {
namespace {

using cuda::block_reduce_sum;
using cuda::store_cast_f;

constexpr int kTileW = 32;
constexpr int kTileH = 16;
constexpr int kThreadsY = 8;               // 32 x 8 threads, 2 output rows each
constexpr int kRowsPerThread = kTileH / kThreadsY;
constexpr int kRows = 48;                  // source rows filtered per chunk in kernel 1

struct Tiles {
  int x, y;
};

Tiles tiles_of(int64_t out_h, int64_t out_w) {
  return {static_cast<int>((out_w + kTileW - 1) / kTileW),
          static_cast<int>((out_h + kTileH - 1) / kTileH)};
}

// Kernel 1 shared memory: horizontal taps of the tile's 32 columns, vertical taps of its 16 rows,
// their starts/counts, a chunk of horizontally filtered rows, the uint8 -> float LUT.
struct Smem1 {
  int tx_cap, ty_cap;
  size_t hw, vw, hval, lut, ints, bytes;
};

Smem1 smem1_layout(int tx_cap, int ty_cap) {
  Smem1 s;
  s.tx_cap = tx_cap;
  s.ty_cap = ty_cap;
  s.hw = 0;
  s.vw = s.hw + size_t(kTileW) * tx_cap;
  s.hval = s.vw + size_t(kTileH) * ty_cap;
  s.lut = s.hval + size_t(kRows) * kTileW * 3;
  s.ints = s.lut + 256;
  s.bytes = (s.ints + 2 * kTileW + 2 * kTileH + 32) * sizeof(float);
  return s;
}

template <typename out_t>
__device__ __forceinline__ void store_pixel(const Params& p, int64_t b, int64_t oy, int64_t ox,
                                            float r, float g, float bl) {
  out_t* out = static_cast<out_t*>(p.out);
  const float v[3] = {r, g, bl};
  const bool sol = p.solarize[b];
  for (int c = 0; c < 3; ++c) {
    float x = v[c];
    if (sol) x = op_solarize(x, p.solarize_threshold);
    x = (x - p.mean[c]) * p.inv_std[c];
    const int64_t idx = p.channels_last_out ? ((b * p.out_h + oy) * p.out_w + ox) * 3 + c
                                            : ((b * 3 + c) * p.out_h + oy) * p.out_w + ox;
    out[idx] = store_cast_f<out_t>(x);
  }
}

__device__ __forceinline__ bool sample_is_direct(const Params& p, int64_t b,
                                                 const JitterPlan& plan) {
  return !plan.has_contrast && !(p.blur_sigma[b] > 0.0f && p.blur_kernel > 1);
}

// launch-resources: max_dynamic_smem_bytes=device_optin opt_in=yes
template <typename out_t>
__global__ void __launch_bounds__(kTileW * kThreadsY)
resample_color_kernel(Params p, const ImageDesc* __restrict__ images, Smem1 L, int tiles_x,
                      float* __restrict__ scratch, float* __restrict__ partials) {
  extern __shared__ float smem[];
  float* hw = smem + L.hw;
  float* vw = smem + L.vw;
  float* hval = smem + L.hval;
  float* lut = smem + L.lut;
  int* hstart = reinterpret_cast<int*>(smem + L.ints);
  int* hn = hstart + kTileW;
  int* vstart = hn + kTileW;
  int* vn = vstart + kTileH;
  float* red = reinterpret_cast<float*>(vn + kTileH);

  // The batch shares grid.x with the column tiles (grid.z would cap it at 65535 views).
  const int64_t b = blockIdx.x / tiles_x;
  const int tile_x = blockIdx.x % tiles_x;
  const int lx = threadIdx.x, ly = threadIdx.y;
  const int tid = ly * kTileW + lx;
  const int64_t ox0 = int64_t(tile_x) * kTileW, oy0 = int64_t(blockIdx.y) * kTileH;
  const ImageDesc im = images[b];
  int64_t top, left, ch, cw;
  clamp_crop(p.crop + 4 * b, im.height, im.width, top, left, ch, cw);
  const AxisScale ax = axis_scale(cw, p.out_w, p.bicubic);
  const AxisScale ay = axis_scale(ch, p.out_h, p.bicubic);
  const bool flip = p.flip[b];

  lut[tid] = static_cast<float>(tid) / 255.0f;  // 256 threads, 256 entries (same division as CPU)
  if (ly == 0) {
    const int64_t ox = ox0 + lx;
    int64_t xmin = 0;
    int n = 0;
    if (ox < p.out_w) {
      const int64_t src = flip ? p.out_w - 1 - ox : ox;
      n = aa_taps<float>(src, ax, p.bicubic, xmin, hw + lx * L.tx_cap);
    }
    hstart[lx] = static_cast<int>(xmin);
    hn[lx] = n;
  } else if (ly == 1 && lx < kTileH) {
    const int64_t oy = oy0 + lx;
    int64_t ymin = 0;
    int n = 0;
    if (oy < p.out_h) n = aa_taps<float>(oy, ay, p.bicubic, ymin, vw + lx * L.ty_cap);
    vstart[lx] = static_cast<int>(ymin);
    vn[lx] = n;
  }
  __syncthreads();

  int r0 = INT_MAX, r1 = 0;
  for (int i = 0; i < kTileH; ++i) {
    if (vn[i] > 0) {
      r0 = min(r0, vstart[i]);
      r1 = max(r1, vstart[i] + vn[i]);
    }
  }
  float acc[kRowsPerThread][3] = {};
  const uint8_t* base = im.data + top * im.stride_h + left * im.stride_w;
  for (int rr = r0; rr < r1; rr += kRows) {
    const int nrows = min(kRows, r1 - rr);
    for (int e = tid; e < nrows * kTileW; e += kTileW * kThreadsY) {
      const int row = e / kTileW, col = e % kTileW;
      const uint8_t* src = base + int64_t(rr + row) * im.stride_h + int64_t(hstart[col]) * im.stride_w;
      const float* w = hw + col * L.tx_cap;
      float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f;
      for (int j = 0; j < hn[col]; ++j) {
        const uint8_t* px = src + int64_t(j) * im.stride_w;
        s0 += w[j] * lut[px[0]];
        s1 += w[j] * lut[px[im.stride_c]];
        s2 += w[j] * lut[px[2 * im.stride_c]];
      }
      float* h = hval + (row * kTileW + col) * 3;
      h[0] = s0;
      h[1] = s1;
      h[2] = s2;
    }
    __syncthreads();
    for (int k = 0; k < kRowsPerThread; ++k) {
      const int ty = ly + k * kThreadsY;
      const int j0 = max(vstart[ty], rr), j1 = min(vstart[ty] + vn[ty], rr + nrows);
      for (int j = j0; j < j1; ++j) {
        const float w = vw[ty * L.ty_cap + (j - vstart[ty])];
        const float* h = hval + ((j - rr) * kTileW + lx) * 3;
        acc[k][0] += w * h[0];
        acc[k][1] += w * h[1];
        acc[k][2] += w * h[2];
      }
    }
    __syncthreads();
  }

  const JitterPlan plan = make_plan(p, b);
  const bool direct = sample_is_direct(p, b, plan);
  const bool gray = p.grayscale[b];
  const int64_t plane = p.out_h * p.out_w;
  const int64_t ox = ox0 + lx;
  float gsum = 0.0f;
  for (int k = 0; k < kRowsPerThread; ++k) {
    const int64_t oy = oy0 + ly + k * kThreadsY;
    if (ox >= p.out_w || oy >= p.out_h) continue;
    float r = acc[k][0], g = acc[k][1], bl = acc[k][2];
    apply_ops(plan, 0, plan.split, 0.0f, r, g, bl);
    if (direct) {
      if (gray) op_grayscale(r, g, bl);
      store_pixel<out_t>(p, b, oy, ox, r, g, bl);
    } else {
      float* s = scratch + b * 3 * plane + oy * p.out_w + ox;
      s[0] = r;
      s[plane] = g;
      s[2 * plane] = bl;
      if (plan.has_contrast) gsum += gray_of(r, g, bl);
    }
  }
  if (plan.has_contrast) {  // uniform per block: every thread reaches the reduction
    const float total = block_reduce_sum(gsum, red);
    if (tid == 0) partials[(b * gridDim.y + blockIdx.y) * tiles_x + tile_x] = total;
  }
}

// Kernel 2 shared memory: the tile's rows plus halo, blurred horizontally (3 channels), a chunk
// of kBlurChunkRows region rows at a time (tile columns plus halo, colour ops applied), the
// Gaussian weights. The region is never held whole: for the largest kernel (63 taps, a 31-pixel
// halo) this is 78 x 32 x 3 + 8 x 94 x 3 floats = 39 KB, under the 48 KB every GPU grants
// without opt-in (sm_86/89/120 allow at most 99 KB even with it), so any blur size fits every
// supported GPU.
constexpr int kBlurChunkRows = 8;
constexpr size_t kMaxFinishSmemBytes = 48 * 1024;

struct Smem2 {
  int halo_cap;
  size_t hblur, rows, weights, red, bytes;
};

Smem2 smem2_layout(int halo_cap) {
  Smem2 s;
  s.halo_cap = halo_cap;
  const size_t rw = kTileW + 2 * halo_cap, rh = kTileH + 2 * halo_cap;
  s.hblur = 0;
  s.rows = s.hblur + rh * kTileW * 3;
  s.weights = s.rows + size_t(kBlurChunkRows) * rw * 3;
  s.red = s.weights + kMaxBlurKernel + 1;
  s.bytes = (s.red + 32) * sizeof(float);
  return s;
}

// launch-resources: max_dynamic_smem_bytes=kMaxFinishSmemBytes opt_in=no
template <typename out_t>
__global__ void __launch_bounds__(kTileW * kThreadsY)
finish_kernel(Params p, Smem2 L, int tiles_x, const float* __restrict__ scratch,
              const float* __restrict__ partials) {
  extern __shared__ float smem[];
  const int64_t b = blockIdx.x / tiles_x;
  const int tile_x = blockIdx.x % tiles_x;
  const JitterPlan plan = make_plan(p, b);
  if (sample_is_direct(p, b, plan)) return;  // block-uniform: finished by kernel 1

  float* hblur = smem + L.hblur;
  float* rows = smem + L.rows;
  float* wk = smem + L.weights;
  float* red = smem + L.red;
  const int lx = threadIdx.x, ly = threadIdx.y;
  const int tid = ly * kTileW + lx;
  const int nthreads = kTileW * kThreadsY;
  const int64_t ox0 = int64_t(tile_x) * kTileW, oy0 = int64_t(blockIdx.y) * kTileH;
  const int64_t H = p.out_h, W = p.out_w, plane = H * W;

  float mean = 0.0f;
  if (plan.has_contrast) {  // block-uniform
    const int ntiles = tiles_x * gridDim.y;
    float part = 0.0f;
    for (int i = tid; i < ntiles; i += nthreads) part += partials[b * ntiles + i];
    mean = block_reduce_sum(part, red) / static_cast<float>(plane);
  }
  const float sigma = p.blur_sigma[b];
  const bool blur = sigma > 0.0f && p.blur_kernel > 1;  // block-uniform
  const bool gray = p.grayscale[b];
  const float* img = scratch + b * 3 * plane;

  if (!blur) {  // contrast only: pointwise, straight from scratch
    for (int kk = 0; kk < kRowsPerThread; ++kk) {
      const int64_t oy = oy0 + ly + kk * kThreadsY, ox = ox0 + lx;
      if (oy >= H || ox >= W) continue;
      const float* s = img + oy * W + ox;
      float v0 = s[0], v1 = s[plane], v2 = s[2 * plane];
      apply_ops(plan, plan.split, plan.count, mean, v0, v1, v2);
      if (gray) op_grayscale(v0, v1, v2);
      store_pixel<out_t>(p, b, oy, ox, v0, v1, v2);
    }
    return;
  }

  const int k = p.blur_kernel;
  const int r = k / 2;
  if (tid == 0) gaussian_weights(k, sigma, wk);
  const int rw = kTileW + 2 * r, rh = kTileH + 2 * r;
  for (int c0 = 0; c0 < rh; c0 += kBlurChunkRows) {
    const int nrows = min(kBlurChunkRows, rh - c0);
    // Load region rows [c0, c0 + nrows) with the ops after the contrast point applied (they are
    // pointwise, so the halo gets exactly the values its neighbours would have).
    for (int e = tid; e < nrows * rw; e += nthreads) {
      const int ry = c0 + e / rw, rx = e % rw;
      int64_t iy = oy0 - r + ry, ix = ox0 - r + rx;
      float v[3] = {0.0f, 0.0f, 0.0f};
      // Pixels beyond [-r, n - 1 + r] only feed outputs outside the view: left at 0.
      const bool needed = iy >= -r && iy < H + r && ix >= -r && ix < W + r;
      const bool inside = iy >= 0 && iy < H && ix >= 0 && ix < W;
      if (needed && (inside || p.blur_reflect)) {
        iy = reflect_index(iy, H);
        ix = reflect_index(ix, W);
        const float* s = img + iy * W + ix;
        v[0] = s[0];
        v[1] = s[plane];
        v[2] = s[2 * plane];
        apply_ops(plan, plan.split, plan.count, mean, v[0], v[1], v[2]);
        if (gray) op_grayscale(v[0], v[1], v[2]);
      }
      float* d = rows + e * 3;
      d[0] = v[0];
      d[1] = v[1];
      d[2] = v[2];
    }
    __syncthreads();  // rows (and, on the first chunk, wk) are complete
    // Horizontal pass of these rows over the tile's 32 columns (same tap order as the CPU).
    for (int e = tid; e < nrows * kTileW; e += nthreads) {
      const int row = e / kTileW, col = e % kTileW;
      const float* src = rows + (row * rw + col) * 3;
      float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f;
      for (int j = 0; j < k; ++j) {
        s0 += wk[j] * src[j * 3];
        s1 += wk[j] * src[j * 3 + 1];
        s2 += wk[j] * src[j * 3 + 2];
      }
      float* d = hblur + ((c0 + row) * kTileW + col) * 3;
      d[0] = s0;
      d[1] = s1;
      d[2] = s2;
    }
    __syncthreads();  // `rows` is reused by the next chunk; hblur is complete after the last
  }
  for (int kk = 0; kk < kRowsPerThread; ++kk) {
    const int ty = ly + kk * kThreadsY;
    const int64_t oy = oy0 + ty, ox = ox0 + lx;
    if (oy >= H || ox >= W) continue;
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f;
    for (int j = 0; j < k; ++j) {
      // Zero padding: rows outside the view were loaded as 0, so their taps add 0 (the CPU
      // skips them; the sums are equal).
      const float* h = hblur + ((ty + j) * kTileW + lx) * 3;
      s0 += wk[j] * h[0];
      s1 += wk[j] * h[1];
      s2 += wk[j] * h[2];
    }
    store_pixel<out_t>(p, b, oy, ox, s0, s1, s2);
  }
}

// The per-image descriptors reach the device as kernel parameters (copied into the launch,
// so a CUDA-graph replay sees the values of capture time, never a host buffer that has been
// reused since) and are written by these small launches into a device buffer owned by the call.
constexpr int kDescsPerLaunch = 32;

struct DescriptorChunk {
  ImageDesc desc[kDescsPerLaunch];
  int64_t first;
  int count;
};

__global__ void __launch_bounds__(kDescsPerLaunch)
store_descriptors_kernel(DescriptorChunk chunk, ImageDesc* __restrict__ out) {
  if (static_cast<int>(threadIdx.x) < chunk.count) {
    out[chunk.first + threadIdx.x] = chunk.desc[threadIdx.x];
  }
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("jem_fast augment_views: ") + what + ": " +
                             cudaGetErrorString(err));
  }
}

// Opts the resample kernel into more than 48 KB of dynamic shared memory when its tap tables
// need it (strong downscales: the taps per output pixel grow with the input/output ratio).
template <typename K>
void reserve_resample_smem(K kernel, size_t bytes, int64_t max_in_h, int64_t max_in_w,
                           const Params& p) {
  int device = 0, max_optin = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  check(cudaDeviceGetAttribute(&max_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device),
        "cudaDeviceGetAttribute");
  if (bytes > size_t(max_optin)) {
    throw std::runtime_error(
        "jem_fast augment_views: resampling a " + std::to_string(max_in_h) + " x " +
        std::to_string(max_in_w) + " source to " + std::to_string(p.out_h) + " x " +
        std::to_string(p.out_w) + " needs " + std::to_string(bytes) +
        " bytes of shared memory for its filter taps, more than this GPU's " +
        std::to_string(max_optin) + ": downscale the images (e.g. to at most ~" +
        std::to_string(std::max<int64_t>(p.out_h, p.out_w) * 16) + " pixels per side) first");
  }
  if (bytes > 48 * 1024) {
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                               static_cast<int>(bytes)),
          "cudaFuncSetAttribute");
  }
}

template <typename out_t>
void launch_views(const Params& p, const ImageDesc* images_host, ImageDesc* images_dev,
                  int64_t max_in_h, int64_t max_in_w, float* scratch, float* partials,
                  cudaStream_t stream) {
  const Tiles t = tiles_of(p.out_h, p.out_w);
  // Tap capacity: the largest crop is the largest image (crops are clamped into their image).
  const int tx_cap = axis_scale(max_in_w, p.out_w, p.bicubic).max_taps;
  const int ty_cap = axis_scale(max_in_h, p.out_h, p.bicubic).max_taps;
  const Smem1 l1 = smem1_layout(tx_cap, ty_cap);
  const Smem2 l2 = smem2_layout(p.blur_kernel / 2);
  if (p.blur_kernel < 1 || p.blur_kernel > kMaxBlurKernel || l2.bytes > kMaxFinishSmemBytes) {
    throw std::invalid_argument("jem_fast augment_views: blur kernel size must be in [1, " +
                                std::to_string(kMaxBlurKernel) + "], got " +
                                std::to_string(p.blur_kernel));
  }
  reserve_resample_smem(resample_color_kernel<out_t>, l1.bytes, max_in_h, max_in_w, p);
  if (p.batch * t.x > INT_MAX || t.y > 65535) {
    throw std::runtime_error("jem_fast augment_views: too many views x tiles for one launch");
  }
  for (int64_t first = 0; first < p.batch; first += kDescsPerLaunch) {
    DescriptorChunk chunk{};
    chunk.first = first;
    chunk.count = static_cast<int>(std::min<int64_t>(kDescsPerLaunch, p.batch - first));
    for (int i = 0; i < chunk.count; ++i) chunk.desc[i] = images_host[first + i];
    cuda::launch("augment_views store_descriptors", store_descriptors_kernel, dim3(1),
                 dim3(kDescsPerLaunch), 0, stream, chunk, images_dev);
  }
  const dim3 grid(static_cast<unsigned>(p.batch * t.x), t.y);
  const dim3 block(kTileW, kThreadsY);
  cuda::launch("augment_views resample_color", resample_color_kernel<out_t>, grid, block, l1.bytes,
               stream, p, static_cast<const ImageDesc*>(images_dev), l1, t.x, scratch, partials);
  cuda::launch("augment_views finish", finish_kernel<out_t>, grid, block, l2.bytes, stream, p, l2,
               t.x, static_cast<const float*>(scratch), static_cast<const float*>(partials));
}

}  // namespace

int64_t augment_cuda_tiles(int64_t out_h, int64_t out_w) {
  const Tiles t = tiles_of(out_h, out_w);
  return int64_t(t.x) * t.y;
}

void augment_views_cuda(const Params& p, const ImageDesc* images_host, ImageDesc* images_dev,
                        int64_t max_in_h, int64_t max_in_w, float* scratch, float* partials,
                        void* stream) {
  if (p.batch == 0) return;
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  switch (p.out_dtype) {
    case DType::kFloat16:
      launch_views<__half>(p, images_host, images_dev, max_in_h, max_in_w, scratch, partials, s);
      break;
    case DType::kBFloat16:
      launch_views<__nv_bfloat16>(p, images_host, images_dev, max_in_h, max_in_w, scratch,
                                  partials, s);
      break;
    default:
      launch_views<float>(p, images_host, images_dev, max_in_h, max_in_w, scratch, partials, s);
      break;
  }
}

}  // namespace augment
}  // namespace jem_fast

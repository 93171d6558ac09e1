// CPU kernel of jem_fast::assign_to_centroids: fused cosine similarity + running argmax.
//
// Work split: centroids are normalized once and packed into panels of kPanel centroids laid
// out dimension-major, so that the inner loop is `acc[r][0:kPanel] += x[r][d] * panel[d][:]`
// (a vector FMA without reassociation, which the compiler vectorizes at -O3). at::parallel_for
// runs over blocks of kRowBlock rows; each block normalizes its rows into a small local buffer
// (this is also where float16/bfloat16 rows are widened, so no B x D float32 copy exists), then
// walks all panels, reusing each panel (in L1) for every group of kRows rows of the block.
// Extra memory: the packed centroids (K x D in the accumulation dtype) plus per-thread
// kRowBlock x D buffers; never B x K.
#include <ATen/Parallel.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "cluster/assign_to_centroids_kernels.h"
#include "common/cpu_multiversion.h"

namespace jem_fast {
namespace cluster {
namespace {

constexpr int64_t kRows = 4;        // rows per register block
constexpr int64_t kRowBlock = 64;   // rows per parallel task (multiple of kRows)

// Two 32-byte vectors of centroids per row: 4 x 2 accumulators + 2 panel loads + 1 broadcast
// fit in the 16 ymm registers of AVX2.
template <typename T> struct Panel { static constexpr int64_t width = 64 / sizeof(T); };

// ||v|| of a row of length D. The row is scaled by its largest magnitude first, so neither
// tiny values (squares underflowing) nor huge ones (squares overflowing) give a wrong norm.
template <typename In, typename Acc>
Acc row_norm(const In* v, int64_t D) {
  Acc m = 0;
  for (int64_t d = 0; d < D; ++d) m = std::max<Acc>(m, std::abs(static_cast<Acc>(v[d])));
  // zero row: 0; an infinite entry: no direction; D = 1: exactly the magnitude
  if (!(m > 0) || std::isinf(m) || D == 1) return m;
  const Acc inv_m = Acc(1) / m;
  Acc s = 0;
  for (int64_t d = 0; d < D; ++d) {
    const Acc t = static_cast<Acc>(v[d]) * inv_m;
    s += t * t;
  }
  return m * std::sqrt(s);
}

// dst = v / ||v||, a zero row for a zero v (cosine 0 with everything). Division rather than a
// multiplication by 1 / ||v||: collinear vectors then normalize to identical values, so their
// cosines tie exactly and the lowest index wins, as in the float64 reference (D = 1 is all ties).
template <typename In, typename Acc>
void unit_row(const In* v, int64_t D, Acc* dst, int64_t stride) {
  const Acc norm = row_norm<In, Acc>(v, D);
  if (norm == Acc(0)) {
    for (int64_t d = 0; d < D; ++d) dst[d * stride] = Acc(0);
    return;
  }
  const Acc n = std::isinf(norm) ? std::numeric_limits<Acc>::quiet_NaN() : norm;
  for (int64_t d = 0; d < D; ++d) dst[d * stride] = static_cast<Acc>(v[d]) / n;
}

// packed[p][d][j] = c[p * W + j][d] / ||c[p * W + j]||, zero for padding columns.
template <typename In, typename Acc>
void pack_centroids(const In* c, int64_t K, int64_t D, Acc* packed) {
  constexpr int64_t W = Panel<Acc>::width;
  const int64_t panels = (K + W - 1) / W;
  at::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      Acc* panel = packed + p * D * W;
      for (int64_t j = 0; j < W; ++j) {
        const int64_t k = p * W + j;
        if (k >= K) {
          for (int64_t d = 0; d < D; ++d) panel[d * W + j] = Acc(0);
          continue;
        }
        unit_row<In, Acc>(c + k * D, D, panel + j, W);
      }
    }
  });
}

// 32-byte vectors (GCC/Clang vector extensions): one AVX2 register in the x86-64-v3 clone, a
// pair of SSE registers in the baseline one. Written out because GCC keeps a plain
// acc[kRows][W] array in memory instead of registers.
template <typename T> struct Vec { typedef T type __attribute__((vector_size(32))); };
template <typename T> using vec_t = typename Vec<T>::type;

// The hot loop of one row block: xb holds `rows` normalized rows (rows a multiple of kRows,
// padding rows zero), best/arg the running maximum of each row. Separate non-lambda function
// so that JEM_CPU_MULTIVERSION gives it an AVX2/FMA clone.
template <typename T>
JEM_CPU_MULTIVERSION void block_argmax(const T* xb, int64_t rows, const T* packed, int64_t K,
                                       int64_t D, T* best, int64_t* arg) {
  constexpr int64_t W = Panel<T>::width;
  constexpr int64_t L = 32 / sizeof(T);  // lanes per vector; W = 2 L
  static_assert(W == 2 * L, "a panel is two vectors wide");
  const int64_t panels = (K + W - 1) / W;
  for (int64_t p = 0; p < panels; ++p) {
    const T* panel = packed + p * D * W;
    const int64_t k0 = p * W;
    const int64_t valid = std::min(W, K - k0);
    for (int64_t r0 = 0; r0 < rows; r0 += kRows) {
      const T* x0 = xb + r0 * D;
      vec_t<T> a00 = {}, a01 = {}, a10 = {}, a11 = {}, a20 = {}, a21 = {}, a30 = {}, a31 = {};
      for (int64_t d = 0; d < D; ++d) {
        vec_t<T> lo, hi;  // unaligned loads
        __builtin_memcpy(&lo, panel + d * W, sizeof(lo));
        __builtin_memcpy(&hi, panel + d * W + L, sizeof(hi));
        const T v0 = x0[d], v1 = x0[D + d], v2 = x0[2 * D + d], v3 = x0[3 * D + d];
        a00 += v0 * lo; a01 += v0 * hi;
        a10 += v1 * lo; a11 += v1 * hi;
        a20 += v2 * lo; a21 += v2 * hi;
        a30 += v3 * lo; a31 += v3 * hi;
      }
      T acc[kRows][W];
      __builtin_memcpy(&acc[0][0], &a00, sizeof(a00)); __builtin_memcpy(&acc[0][L], &a01, sizeof(a01));
      __builtin_memcpy(&acc[1][0], &a10, sizeof(a10)); __builtin_memcpy(&acc[1][L], &a11, sizeof(a11));
      __builtin_memcpy(&acc[2][0], &a20, sizeof(a20)); __builtin_memcpy(&acc[2][L], &a21, sizeof(a21));
      __builtin_memcpy(&acc[3][0], &a30, sizeof(a30)); __builtin_memcpy(&acc[3][L], &a31, sizeof(a31));
      // Increasing k and a strict comparison: ties keep the lowest index.
      for (int64_t r = 0; r < kRows; ++r) {
        T b = best[r0 + r];
        int64_t a = arg[r0 + r];
        for (int64_t j = 0; j < valid; ++j) {
          if (acc[r][j] > b) {
            b = acc[r][j];
            a = k0 + j;
          }
        }
        best[r0 + r] = b;
        arg[r0 + r] = a;
      }
    }
  }
}

template <typename In, typename Acc>
void assign_impl(const In* x, const In* c, int64_t B, int64_t K, int64_t D, int64_t* index,
                 Acc* score) {
  constexpr int64_t W = Panel<Acc>::width;
  std::vector<Acc> packed(static_cast<size_t>(((K + W - 1) / W) * W * D));
  pack_centroids<In, Acc>(c, K, D, packed.data());
  const int64_t blocks = (B + kRowBlock - 1) / kRowBlock;
  at::parallel_for(0, blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<Acc> xb(static_cast<size_t>(kRowBlock * D));
    Acc best[kRowBlock];
    int64_t arg[kRowBlock];
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t i0 = blk * kRowBlock;
      const int64_t n = std::min(kRowBlock, B - i0);
      const int64_t padded = (n + kRows - 1) / kRows * kRows;
      for (int64_t r = 0; r < padded; ++r) {
        Acc* dst = xb.data() + r * D;
        if (r >= n) {
          std::fill(dst, dst + D, Acc(0));
        } else {
          unit_row<In, Acc>(x + (i0 + r) * D, D, dst, 1);
        }
        // -inf so that the first centroid always becomes the running best (also for a zero
        // row, whose cosines are all 0: index 0).
        best[r] = -std::numeric_limits<Acc>::infinity();
        arg[r] = 0;
      }
      block_argmax<Acc>(xb.data(), padded, packed.data(), K, D, best, arg);
      for (int64_t r = 0; r < n; ++r) {
        index[i0 + r] = arg[r];
        // A NaN row never beats -inf: report NaN rather than -inf.
        score[i0 + r] = std::isinf(best[r]) ? std::numeric_limits<Acc>::quiet_NaN() : best[r];
      }
    }
  });
}

}  // namespace

void assign_to_centroids_cpu(DType dtype, const void* x, const void* c, int64_t B, int64_t K,
                             int64_t D, int64_t* index, void* score) {
  switch (dtype) {
    case DType::kFloat32:
      assign_impl<float, float>(static_cast<const float*>(x), static_cast<const float*>(c), B, K,
                                D, index, static_cast<float*>(score));
      break;
    case DType::kFloat64:
      assign_impl<double, double>(static_cast<const double*>(x), static_cast<const double*>(c),
                                  B, K, D, index, static_cast<double*>(score));
      break;
    case DType::kFloat16:
      assign_impl<c10::Half, float>(static_cast<const c10::Half*>(x),
                                    static_cast<const c10::Half*>(c), B, K, D, index,
                                    static_cast<float*>(score));
      break;
    case DType::kBFloat16:
      assign_impl<c10::BFloat16, float>(static_cast<const c10::BFloat16*>(x),
                                        static_cast<const c10::BFloat16*>(c), B, K, D, index,
                                        static_cast<float*>(score));
      break;
  }
}

}  // namespace cluster
}  // namespace jem_fast

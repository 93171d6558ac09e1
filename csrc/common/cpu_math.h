// Branch-free float exp that compilers vectorize (libm's expf is a call per element, which made
// the exp the bottleneck of the InfoNCE CPU kernels). Cody-Waite range reduction
// x = n ln2 + r, |r| <= ln2 / 2, and a degree-6 polynomial for e^r: relative error ~1e-7
// (float32 rounding level). exp(-inf) and very negative inputs give 0; x > 88.7 gives +inf.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

namespace jem_fast {

inline float exp_vectorizable(float x) {
  const float clamped = x < -87.0f ? -87.0f : (x > 88.5f ? 88.5f : x);
  const float n = std::nearbyint(clamped * 1.44269504088896341f);
  // ln2 split in a high part exact in float and a low correction.
  const float r = (clamped - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  const float y = p * scale;
  return x < -87.0f ? 0.0f : (x > 88.5f ? INFINITY : y);
}

inline double exp_vectorizable(double x) { return std::exp(x); }

// Reductions in the CPU kernels keep kLanes independent partial results (a fixed-size inner
// loop over lanes): GCC vectorizes that without -fassociative-math, so values stay
// deterministic and the compiler flags stay IEEE. Partial sums are folded into double every
// kFoldBlock elements.
constexpr int64_t kLanes = 16;
constexpr int64_t kFoldBlock = 1024;

}  // namespace jem_fast

// The element types the raw-pointer kernels understand. Kept free of ATen so .cu files can use it.
#pragma once

namespace jem_fast {
enum class DType : int { kFloat32 = 0, kFloat64 = 1, kFloat16 = 2, kBFloat16 = 3 };
}  // namespace jem_fast

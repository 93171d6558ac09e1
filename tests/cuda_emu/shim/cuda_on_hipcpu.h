// CUDA names on top of the HIP-CPU runtime (github ROCm/HIP-CPU, header-only, needs TBB; MIT
// licence, Copyright (c) 2023 Advanced Micro Devices, Inc.; the pinned snapshot and its LICENSE
// live in shared/third_party/HIP-CPU). Taken over from the project's prototype shared/cuda-emu.
// Used only by the emulated test build of the project's *_cuda.cu kernels
// (tests/cuda_emu/build.py): the .cu files are compiled unchanged after tests/cuda_emu/cu2cpu.py
// rewrote `<<<...>>>` launches and `extern __shared__` arrays.
//
// Two warp models:
//   default                 : 32-lane warps (CUDA). __shfl_*_sync synchronise only the 32 fibers
//                             of the caller's warp (a warp-local round-robin yield built from
//                             HIP-CPU's own Fiber/Tile primitives), so the usual
//                             `if (warp == 0) { shuffle reduction }` pattern is correct.
//   -DCUDAEMU_NATIVE_SHFL=1 : HIP-CPU's own __shfl_down/__shfl_xor (64-lane "warps" whose
//                             barrier is a block-wide yield): shown to be wrong for divergent
//                             warp reductions, kept to demonstrate the problem.
#pragma once

#include <hip/hip_runtime.h>

// HIP-CPU's function qualifiers, redefined for the code below (HIP-CPU's own headers keep theirs):
//   __device__       : HIP-CPU adds __attribute__((simd)) (unused vector clones: slower builds,
//                      and clones of header functions collide at link time); CUDA code needs none.
//   __forceinline__  : empty in HIP-CPU unless NDEBUG, which makes every non-template
//                      `__device__ __forceinline__` helper of a header a strong symbol defined in
//                      each .cu: the one-library link fails. Inline, as in CUDA.
//   __global__       : CUDAEMU_GLOBAL_ATTR, default none. HIP-CPU uses flatten + simd; measured
//                      on this project (g++ 12, -O1, 2 cores): flatten costs ~25% more compile
//                      time for ~10-15% faster emulated kernels, and the tests spend most of
//                      their time outside the kernels. JEM_CUDA_EMU_CXXFLAGS=
//                      "-DCUDAEMU_GLOBAL_ATTR='__attribute__((flatten))'" restores it.
#undef __device__
#define __device__
#undef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#ifndef CUDAEMU_GLOBAL_ATTR
#define CUDAEMU_GLOBAL_ATTR
#endif
#undef __global__
#define __global__ CUDAEMU_GLOBAL_ATTR

// ---------------------------------------------------------------- threadIdx in CUDA order
// HIP-CPU numbers the fibers of a block z-fastest (threadIdx = (f / (Dy Dz), f / Dz % Dy, f % Dz)),
// CUDA x-fastest (linear id = x + y Dx + z Dx Dy, and a warp is 32 consecutive linear ids). With
// 2-D blocks, HIP-CPU's order puts threads of different CUDA warps into one 32-fiber group, so
// warp shuffles would exchange between the wrong threads. Numbered x-fastest here, fiber id ==
// CUDA linear thread id, and the 32-lane warp layer below (fibers 32w .. 32w + 31) is CUDA's
// warp w.
namespace cudaemu {
inline hip::detail::Dim3 cuda_thread_idx() noexcept {
  using namespace hip::detail;
  const Dim3& d = Tile::this_tile().dimensions();
  const std::uint32_t f = id(Fiber::this_fiber());
  return Dim3{f % d.x, (f / d.x) % d.y, f / (d.x * d.y)};
}
inline constexpr hip::detail::Coordinates<&cuda_thread_idx> thread_idx{};
}  // namespace cudaemu
#undef threadIdx
#define threadIdx (::cudaemu::thread_idx)

#include <math.h>  // libstdc++'s math.h puts std::isinf/isfinite/... overloads in :: as CUDA does

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

// ---------------------------------------------------------------- runtime API names
using cudaStream_t = hipStream_t;
using cudaError_t = hipError_t;
#define cudaSuccess hipSuccess
#define cudaErrorInvalidValue hipErrorInvalidValue
#define cudaGetLastError hipGetLastError
#define cudaPeekAtLastError hipPeekAtLastError
#define cudaGetErrorString hipGetErrorString
#define cudaDeviceSynchronize hipDeviceSynchronize
#define cudaStreamSynchronize hipStreamSynchronize
#define cudaGetDevice hipGetDevice
#define cudaMemset hipMemset
#define cudaMemsetAsync hipMemsetAsync
#define cudaMemcpy hipMemcpy
#define cudaMemcpyAsync hipMemcpyAsync
#define cudaMemcpyDeviceToDevice hipMemcpyDeviceToDevice
#define cudaMemcpyHostToDevice hipMemcpyHostToDevice
#define cudaMemcpyDeviceToHost hipMemcpyDeviceToHost

// Attributes HIP-CPU lacks: shared memory is heap memory here, so any size is fine.
enum cudaDeviceAttr { cudaDevAttrMaxSharedMemoryPerBlockOptin = 97, cudaDevAttrMultiProcessorCount = 16 };
enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };
inline cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr a, int) {
  *v = a == cudaDevAttrMultiProcessorCount ? 132 : 227 * 1024;  // H100-like numbers
  return hipSuccess;
}
template <typename F>
inline cudaError_t cudaFuncSetAttribute(F, cudaFuncAttribute, int) { return hipSuccess; }

// ---------------------------------------------------------------- device math CUDA has, HIP-CPU lacks
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
template <typename A, typename B,
          std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>, int> = 0>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(a) : C(b);
}
template <typename A, typename B,
          std::enable_if_t<std::is_arithmetic_v<A> && std::is_arithmetic_v<B>, int> = 0>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return C(a) < C(b) ? C(b) : C(a);
}

// ---------------------------------------------------------------- bfloat16 (HIP-CPU has none)
struct __nv_bfloat16 {
  std::uint16_t x;
  __nv_bfloat16() = default;
  static std::uint16_t from_float(float f) {  // round to nearest even, NaN stays NaN
    std::uint32_t u;
    std::memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<std::uint16_t>((u >> 16) | 0x40u);
    u += 0x7fffu + ((u >> 16) & 1u);
    return static_cast<std::uint16_t>(u >> 16);
  }
  __nv_bfloat16(float f) : x(from_float(f)) {}
  __nv_bfloat16(double d) : x(from_float(static_cast<float>(d))) {}
  operator float() const {
    const std::uint32_t u = static_cast<std::uint32_t>(x) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
};
inline float __bfloat162float(__nv_bfloat16 h) { return static_cast<float>(h); }
inline __nv_bfloat16 __float2bfloat16_rn(float f) { return __nv_bfloat16(f); }
inline __nv_bfloat16 __float2bfloat16(float f) { return __nv_bfloat16(f); }

// ---------------------------------------------------------------- warp intrinsics
#if CUDAEMU_NATIVE_SHFL
// HIP-CPU's warpSize is 64 (constexpr int); user code then sees 64.
#define __shfl_down_sync(mask, v, ...) __shfl_down(v, __VA_ARGS__)
#define __shfl_up_sync(mask, v, ...) __shfl_up(v, __VA_ARGS__)
#define __shfl_xor_sync(mask, v, ...) __shfl_xor(v, __VA_ARGS__)
#define __shfl_sync(mask, v, ...) __shfl(v, __VA_ARGS__)
#define __syncwarp(...) ((void)0)
#else
namespace cudaemu {
constexpr unsigned kWarp = 32;

// Yield to the next fiber of the caller's 32-lane warp. HIP-CPU's Tile::barrier() yields to the
// next fiber of the whole block (a ring); a warp ring nested in it keeps every __syncthreads and
// the end of the kernel a full-block ring, so both kinds of barrier stay exact as long as all
// lanes of a warp reach the same warp-level calls (true for code with full 0xffffffff masks).
inline void warp_barrier() noexcept {
  using namespace hip::detail;
  const std::uint32_t n = count(Tile::this_tile().dimensions());
  if (n == 1) return;
  this_tile::has_barrier = true;
  const std::uint32_t f0 = id(Fiber::this_fiber());
  const std::uint32_t base = f0 / kWarp * kWarp;
  const std::uint32_t end = std::min(base + kWarp, n);
  if (end - base == 1) return;
  const std::uint32_t f1 = f0 + 1 == end ? base : f0 + 1;
  Fiber::yield(Tile::fibers()[f1]);
}

template <typename T>
inline T* lane_slots() noexcept {  // one slot per fiber of the block; blocks run one per OS thread
  thread_local static T slots[1024];
  return slots;
}

inline std::uint32_t block_size() noexcept {
  using namespace hip::detail;
  return count(Tile::this_tile().dimensions());  // friend of Dim3: found by ADL only
}

inline std::uint32_t fiber_id() noexcept {
  using namespace hip::detail;
  return id(Fiber::this_fiber());
}

// src_of(lane_in_segment) returns the source lane in the segment, or -1 for "keep own value".
template <typename T, typename F>
inline T exchange(T v, int width, F src_of) noexcept {
  const std::uint32_t tid = fiber_id();
  T* slots = lane_slots<T>();
  slots[tid] = v;
  warp_barrier();
  const int lane = static_cast<int>(tid % kWarp);
  const int seg = lane / width * width;
  const int src = src_of(lane - seg);
  const std::uint32_t n = block_size();
  const std::uint32_t from = tid - (lane - seg) + static_cast<std::uint32_t>(src);
  const T r = (src < 0 || from >= n) ? v : slots[from];
  warp_barrier();
  return r;
}
}  // namespace cudaemu

template <typename T>
inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) noexcept {
  return cudaemu::exchange(v, width, [&](int l) { return l + int(delta) < width ? l + int(delta) : -1; });
}
template <typename T>
inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) noexcept {
  return cudaemu::exchange(v, width, [&](int l) { return l - int(delta) >= 0 ? l - int(delta) : -1; });
}
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) noexcept {
  // CUDA: a lane may read earlier groups, but gets its own value when the target is a later one.
  return cudaemu::exchange(v, width, [&](int l) { return (l ^ mask) < width ? (l ^ mask) : -1; });
}
template <typename T>
inline T __shfl_sync(unsigned, T v, int src_lane, int width = 32) noexcept {
  return cudaemu::exchange(v, width, [&](int) { return ((src_lane % width) + width) % width; });
}
inline void __syncwarp(unsigned = 0xffffffffu) noexcept { cudaemu::warp_barrier(); }
// HIP-CPU declares `constexpr int warpSize{64}`; user code below this header sees CUDA's 32
// (HIP-CPU's own headers were already lexed, so its internals keep 64).
#define warpSize 32
#endif

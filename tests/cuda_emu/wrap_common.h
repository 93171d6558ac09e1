// Convention for the C wrappers around the project's CUDA launchers (tests/cuda_emu/wrap_*.cpp).
//
// Each wrapper is
//
//   extern "C" int emu_<launcher_name>(<plain C arguments>) {
//     EMU_CALL(jem_fast::ns::<launcher_name>(..., EMU_STREAM));
//   }
//
// with plain C types only: `void*` / `const void*` for every array (the raw bits of a contiguous
// CPU tensor), `int64_t` for sizes and indices, `double` for scalars, `int` for bool and for enums
// (jem_fast::DType: pass emu_dtype(code)). EMU_CALL runs the launcher with the default stream
// (nullptr), then cudaDeviceSynchronize(), and returns 0 on success; on a C++ exception or a CUDA
// error it returns nonzero and keeps the message for emu_last_error() (Python: emu.call() turns it
// into a RuntimeError). Several wrap_*.cpp files include this header; they are linked into one
// shared library by tests/cuda_emu/build.py.
#pragma once

#include <cuda_runtime_api.h>  // tests/cuda_emu/shim: CUDA names on HIP-CPU

#include <cstdint>
#include <exception>
#include <string>
#include <utility>

#include "common/kernel_dtype.h"

namespace jem_emu {

// One message per process thread, shared by every wrapper TU (C++17 inline variable).
inline thread_local std::string last_error_message;

inline jem_fast::DType dtype_of(int code) { return static_cast<jem_fast::DType>(code); }

// Runs `f` (which launches on EMU_STREAM), waits for the device, maps failures to a return code:
//   0 success, 1 C++ exception (message kept), 2 CUDA error after the launch, 3 unknown exception.
template <typename F>
int guarded(const char* name, F&& f) noexcept {
  last_error_message.clear();
  try {
    std::forward<F>(f)();
    const cudaError_t sync = cudaDeviceSynchronize();
    const cudaError_t last = cudaGetLastError();
    const cudaError_t err = sync != cudaSuccess ? sync : last;
    if (err != cudaSuccess) {
      last_error_message = std::string(name) + ": CUDA error " + cudaGetErrorString(err);
      return 2;
    }
    return 0;
  } catch (const std::exception& e) {
    last_error_message = std::string(name) + ": " + e.what();
    return 1;
  } catch (...) {
    last_error_message = std::string(name) + ": unknown exception";
    return 3;
  }
}

}  // namespace jem_emu

// The stream every wrapper passes: the default stream.
#define EMU_STREAM (static_cast<cudaStream_t>(nullptr))

// Body of a wrapper: `EMU_CALL(launcher(args..., EMU_STREAM));` (statements allowed, e.g.
// `EMU_CALL(*out = jem_fast::covariance::cuda_workspace_bytes(N, D));`).
#define EMU_CALL(...) return ::jem_emu::guarded(__func__, [&]() { __VA_ARGS__; })

// Convenience: the DType enum from the int code (0 float32, 1 float64, 2 float16, 3 bfloat16).
#define emu_dtype(code) (::jem_emu::dtype_of(code))

// Defined once for the whole library: weak, so every wrap_*.cpp may carry the same definition.
extern "C" __attribute__((weak, visibility("default"))) const char* emu_last_error() {
  return jem_emu::last_error_message.c_str();
}

// Host-side helpers shared by the ops: argument checks with messages a user can act on, the
// matmul that always accumulates and returns in float32, and the CUDA stream/guard plumbing.
#pragma once

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/kernel_dtype.h"

#ifdef WITH_CUDA
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#endif

namespace jem_fast {

constexpr const char* kRebuildHint =
    "jem_fast was built without CUDA kernels. Rebuild it with a CUDA build of torch and nvcc "
    "available, e.g. `FORCE_CUDA=1 pip install --no-build-isolation .` "
    "(jem_fast.build_info() shows what was compiled).";

// Holds the device guard of a CUDA input for the op's scope; in a CPU-only build, rejects CUDA
// inputs with a message that says how to rebuild.
class DeviceScope {
 public:
  DeviceScope(const at::Tensor& t, const char* op) {
#ifdef WITH_CUDA
    if (t.is_cuda()) guard_.emplace(t.device());
#else
    TORCH_CHECK(!t.is_cuda(), op, ": got CUDA tensors. ", kRebuildHint);
#endif
  }

 private:
#ifdef WITH_CUDA
  std::optional<c10::cuda::CUDAGuard> guard_;
#endif
};

// True while the current CUDA stream of `t`'s device is being captured into a CUDA graph (also
// under torch.compile(mode="reduce-overhead")). Ops skip their host-synchronizing checks then
// (check_finite, parameter validation): a device -> host copy is illegal during capture.
inline bool capturing_cuda_graph(const at::Tensor& t) {
#ifdef WITH_CUDA
  if (!t.is_cuda()) return false;
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaError_t err =
      cudaStreamIsCapturing(at::cuda::getCurrentCUDAStream(t.device().index()).stream(), &status);
  TORCH_CHECK(err == cudaSuccess, "jem_fast: cudaStreamIsCapturing failed: ",
              cudaGetErrorString(err));
  return status != cudaStreamCaptureStatusNone;
#else
  (void)t;
  return false;
#endif
}

// Every defined tensor of `named` must be on the device of the first defined one. The public
// *_backward ops take saved tensors and incoming gradients separately: a CPU tensor among CUDA
// ones would otherwise reach a CUDA kernel as a host pointer.
inline void check_same_device(const char* op,
                              const std::vector<std::pair<const char*, at::Tensor>>& named) {
  const std::pair<const char*, at::Tensor>* first = nullptr;
  for (const auto& item : named) {
    if (!item.second.defined()) continue;
    if (first == nullptr) {
      first = &item;
      continue;
    }
    TORCH_CHECK(item.second.device() == first->second.device(), op, ": ", item.first,
                " must be on the same device as ", first->first, " (", first->second.device(),
                "), got ", item.second.device());
  }
}

// Checks shared by every loss taking two (N, D) embedding batches.
// `min_rows` is the smallest batch for which the loss is defined (2 when a variance is needed).
inline void check_embedding_pair(const at::Tensor& a, const at::Tensor& b, const char* name_a,
                                 const char* name_b, int64_t min_rows, const char* loss) {
  TORCH_CHECK(a.dim() == 2, loss, ": ", name_a, " must be 2-D (batch, dim), got shape ",
              a.sizes());
  TORCH_CHECK(b.dim() == 2, loss, ": ", name_b, " must be 2-D (batch, dim), got shape ",
              b.sizes());
  TORCH_CHECK(a.sizes() == b.sizes(), loss, ": ", name_a, " and ", name_b,
              " must have the same shape, got ", a.sizes(), " and ", b.sizes());
  TORCH_CHECK(at::isFloatingType(a.scalar_type()), loss, ": ", name_a,
              " must be a floating-point tensor (float32, float64, float16 or bfloat16), got ",
              a.scalar_type());
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), loss, ": ", name_a, " and ", name_b,
              " must have the same dtype, got ", a.scalar_type(), " and ", b.scalar_type());
  TORCH_CHECK(a.device() == b.device(), loss, ": ", name_a, " and ", name_b,
              " must be on the same device, got ", a.device(), " and ", b.device());
  TORCH_CHECK(a.size(0) >= min_rows, loss, ": the batch must hold at least ", min_rows,
              " rows (a variance over the batch is needed), got ", name_a, " with shape ",
              a.sizes());
  TORCH_CHECK(a.size(1) >= 1, loss, ": the embedding dimension must be at least 1, got ",
              name_a, " with shape ", a.sizes());
}

inline DType to_kernel_dtype(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return DType::kFloat32;
    case at::kDouble: return DType::kFloat64;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "jem_fast: unsupported dtype ", t);
  }
}

// float32 accumulation, float64 kept for float64.
inline at::ScalarType acc_type_of(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// The dtype the centered/normalized copies are kept in: the input dtype on CUDA (tensor-core
// matmuls), float32 on CPU for half inputs (no fast half GEMM on CPU; the cast is cheap).
inline at::ScalarType compute_type_of(at::ScalarType t, bool is_cuda) {
  if (is_cuda) return t;
  return (t == at::kHalf || t == at::kBFloat16) ? at::kFloat : t;
}

// out = a @ b with the result in out's dtype (float32 or float64). For float16/bfloat16 operands
// this uses aten::mm.dtype_out (fp32 accumulation and output on tensor cores) when this torch
// has it, else upcasts the operands.
inline void mm_acc_out(at::Tensor& out, const at::Tensor& a, const at::Tensor& b) {
  const auto t = a.scalar_type();
  if (t == out.scalar_type()) {
    at::mm_out(out, a, b);
    return;
  }
  static const auto handle = c10::Dispatcher::singleton().findSchema({"aten::mm", "dtype_out"});
  // ATen's fp16-in / fp32-out GEMM refuses to run while
  // torch.backends.cuda.matmul.allow_fp16_accumulation is set; the upcast below is exact.
  const bool fp16_accumulation =
      t == at::kHalf && at::globalContext().allowFP16AccumulationCuBLAS();
  if (handle.has_value() && a.is_cuda() && !fp16_accumulation) {
    static const auto op =
        handle->typed<at::Tensor&(const at::Tensor&, const at::Tensor&, at::ScalarType,
                                  at::Tensor&)>();
    op.call(a, b, out.scalar_type(), out);
    return;
  }
  at::mm_out(out, a.to(out.scalar_type()), b.to(out.scalar_type()));
}

// y = m @ x (or x @ m when m_on_right) with m a float32 matrix and x in the compute dtype.
// For low-precision x, m is scaled into [-1, 1] (so float16 cannot overflow) and split into a
// high and a low half-precision part, m / scale ~ hi + lo * 2^-p with p the format's mantissa
// bits: two tensor-core GEMMs with float32 accumulation whose sum carries ~2p bits of m, where a
// single cast would round every element of m (e.g. the logit gradient of a 65536-wide softmax,
// mostly ~1e-5 of its maximum) to 11 bits or into float16's subnormals.
inline at::Tensor mm_matrix_times(const at::Tensor& m, const at::Tensor& x, bool m_on_right) {
  const auto acc = m.scalar_type();
  if (x.scalar_type() == acc) return m_on_right ? at::mm(x, m) : at::mm(m, x);
  const auto low = x.scalar_type();
  const double lo_scale = low == at::kHalf ? 2048.0 : 256.0;  // 2^(mantissa bits + 1)
  const at::Tensor scale = m.abs().amax().clamp_min(1e-30);
  const at::Tensor m_unit = m / scale;
  const at::Tensor m_hi = m_unit.to(low);
  const at::Tensor m_lo = (m_unit - m_hi.to(acc)).mul_(lo_scale).to(low);
  const int64_t rows = m_on_right ? x.size(0) : m.size(0);
  const int64_t cols = m_on_right ? m.size(1) : x.size(1);
  at::Tensor y = at::empty({rows, cols}, x.options().dtype(acc));
  at::Tensor y_lo = at::empty({rows, cols}, x.options().dtype(acc));
  if (m_on_right) {
    mm_acc_out(y, x, m_hi);
    mm_acc_out(y_lo, x, m_lo);
  } else {
    mm_acc_out(y, m_hi, x);
    mm_acc_out(y_lo, m_lo, x);
  }
  return y.add_(y_lo, 1.0 / lo_scale).mul_(scale);
}

// mm_matrix_times, written into `out` (the gradient buffer the epilogue then overwrites in place)
// when no dtype conversion is needed, so no extra N x D buffer is held.
inline at::Tensor mm_matrix_times_into(const at::Tensor& m, const at::Tensor& x, bool m_on_right,
                                       at::Tensor out) {
  if (x.scalar_type() != m.scalar_type() || out.scalar_type() != m.scalar_type()) {
    return mm_matrix_times(m, x, m_on_right).contiguous();
  }
  if (m_on_right) {
    at::mm_out(out, x, m);
  } else {
    at::mm_out(out, m, x);
  }
  return out;
}

inline void raise_non_finite(int flags, const char* loss, const char* name_a,
                             const char* name_b) {
  if (flags == 0) return;
  std::string which = (flags & 1) && (flags & 2) ? std::string(name_a) + " and " + name_b
                      : (flags & 1)               ? std::string(name_a)
                                                  : std::string(name_b);
  TORCH_CHECK(false, loss, ": ", which,
              " contain(s) NaN or Inf (or values too large to accumulate in float32). "
              "jem_fast raises instead of returning a NaN loss; pass check_finite=False to skip "
              "this check (and its device synchronization).");
}

}  // namespace jem_fast

// Memory-linear InfoNCE core: schema, checks and the chunked host loop.
//
//   info_nce_lse(q (N, D), k (M, D), scale, self_column (N,)?, with_columns, chunk_rows)
//       -> (row_lse (N,), col_lse (M,) or (0,))
//   row_lse[i] = log sum_{j != self_column[i]} exp(scale q_i . k_j)
//   col_lse[j] = log sum_i exp(scale q_i . k_j)            (with_columns, no self mask)
//
//   info_nce_lse_backward(grad_row, grad_col?, q, k, row_lse, col_lse, scale, self_column?,
//                         with_columns, need_grad_k, chunk_rows) -> (grad_q, grad_k or (0,))
//
// The positive term and the reductions stay outside (jem_fast/ops/info_nce.py). Queries are
// processed in chunks of rows: one chunk of logits (chunk_rows x M, float32 or float64) exists at
// a time, so the extra memory is O(chunk_rows * M + (N + M) * D), never N x M. The backward
// recomputes each chunk once and turns it into dS in place, then dq = scale dS k and
// dk += scale dS^T q. Logits, LSEs and gradients are float32 (float64 for float64 inputs). On
// CUDA, float16/bfloat16 operands stay in their dtype: the matmuls run on tensor cores with
// float32 accumulation and output (dS is scaled into range before its cast). On CPU half inputs
// are upcast once (O((N + M) D)).
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <optional>

#include "common/host_utils.h"
#include "losses/info_nce_kernels.h"

namespace jem_fast {
namespace info_nce {
namespace {

constexpr const char* kOp = "info_nce_lse";
// Default logits budget per chunk, the bound on the op's extra memory besides the O((N + M) D)
// copies and gradients: 64 MiB on CPU; 32 MiB on CUDA, to keep a chunk near L2 size (untuned).
constexpr int64_t kChunkBytesCpu = int64_t(64) << 20;
constexpr int64_t kChunkBytesCuda = int64_t(32) << 20;

void check_inputs(const at::Tensor& q, const at::Tensor& k, double scale,
                  const std::optional<at::Tensor>& self_column, bool with_columns) {
  TORCH_CHECK(q.dim() == 2, kOp, ": query must be 2-D (batch, dim), got shape ", q.sizes());
  TORCH_CHECK(k.dim() == 2, kOp, ": key must be 2-D (num_keys, dim), got shape ", k.sizes());
  TORCH_CHECK(q.size(0) >= 1, kOp, ": the query batch is empty");
  TORCH_CHECK(k.size(0) >= 1, kOp, ": there are no keys");
  TORCH_CHECK(q.size(1) == k.size(1), kOp, ": query and key must have the same dimension, got ",
              q.size(1), " and ", k.size(1));
  TORCH_CHECK(q.size(1) >= 1, kOp, ": the embedding dimension must be at least 1");
  TORCH_CHECK(at::isFloatingType(q.scalar_type()), kOp,
              ": query must be a floating-point tensor, got ", q.scalar_type());
  TORCH_CHECK(q.scalar_type() == k.scalar_type(), kOp,
              ": query and key must have the same dtype, got ", q.scalar_type(), " and ",
              k.scalar_type());
  TORCH_CHECK(q.device() == k.device(), kOp, ": query and key must be on the same device, got ",
              q.device(), " and ", k.device());
  TORCH_CHECK(std::isfinite(scale) && scale > 0.0, kOp,
              ": scale (1 / temperature) must be finite and > 0, got ", scale);
  if (self_column.has_value()) {
    const auto& m = *self_column;
    TORCH_CHECK(m.dim() == 1 && m.size(0) == q.size(0) && m.scalar_type() == at::kLong, kOp,
                ": self_column must be an int64 vector with one entry per query row, got ",
                m.sizes(), " ", m.scalar_type());
    TORCH_CHECK(m.device() == q.device(), kOp, ": self_column must be on the query's device");
    TORCH_CHECK(!with_columns, kOp, ": column log-sum-exps with a self mask are not supported");
  }
}

int64_t rows_per_chunk(int64_t chunk_rows, int64_t M, int64_t itemsize, bool is_cuda) {
  if (chunk_rows > 0) return chunk_rows;
  const int64_t budget = is_cuda ? kChunkBytesCuda : kChunkBytesCpu;
  return std::max<int64_t>(1, budget / std::max<int64_t>(1, M * itemsize));
}

// Logits, LSEs and gradients: float64 for float64 inputs, float32 otherwise.
at::ScalarType logit_type(const at::Tensor& q) {
  return q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

// The matmul operands: the input dtype on CUDA (tensor cores), float32/float64 on CPU.
at::Tensor as_operand(const at::Tensor& x) {
  return (x.is_cuda() ? x : x.to(logit_type(x))).contiguous();
}

// One chunk of logits a_chunk b^T in the logit dtype.
at::Tensor logits_chunk(const at::Tensor& a_chunk, const at::Tensor& bt) {
  at::Tensor S = at::empty({a_chunk.size(0), bt.size(1)}, a_chunk.options().dtype(logit_type(a_chunk)));
  mm_acc_out(S, a_chunk, bt);
  return S;
}

// lse[i] over rows of a against all rows of b, chunked.
at::Tensor chunked_row_lse(const at::Tensor& a, const at::Tensor& b, double scale,
                           const int64_t* mask, int64_t chunk_rows) {
  const int64_t N = a.size(0), M = b.size(0);
  const auto lt = logit_type(a);
  at::Tensor lse = at::empty({N}, a.options().dtype(lt));
  const int64_t step = rows_per_chunk(chunk_rows, M, at::elementSize(lt), a.is_cuda());
  const at::Tensor bt = b.t();
#ifdef WITH_CUDA
  cudaStream_t stream = a.is_cuda() ? at::cuda::getCurrentCUDAStream().stream() : nullptr;
#endif
  for (int64_t r0 = 0; r0 < N; r0 += step) {
    const int64_t rows = std::min(step, N - r0);
    const at::Tensor S = logits_chunk(a.narrow(0, r0, rows), bt);
    const int64_t* chunk_mask = mask ? mask + r0 : nullptr;
    if (!a.is_cuda()) {
      AT_DISPATCH_FLOATING_TYPES(lt, "info_nce_row_lse_cpu", [&] {
        row_lse_chunk_cpu<scalar_t>(S.data_ptr<scalar_t>(), rows, M, static_cast<scalar_t>(scale),
                                    chunk_mask, lse.data_ptr<scalar_t>() + r0);
      });
    } else {
#ifdef WITH_CUDA
      row_lse_chunk_cuda(lt == at::kDouble, S.data_ptr(), rows, M, scale, chunk_mask,
                         static_cast<char*>(lse.data_ptr()) + r0 * at::elementSize(lt), stream);
#endif
    }
  }
  return lse;
}

std::tuple<at::Tensor, at::Tensor> info_nce_lse(const at::Tensor& q_in, const at::Tensor& k_in,
                                                 double scale,
                                                 const std::optional<at::Tensor>& self_column,
                                                 bool with_columns, int64_t chunk_rows) {
  check_inputs(q_in, k_in, scale, self_column, with_columns);
  const DeviceScope scope(q_in, kOp);
  const at::Tensor q = as_operand(q_in);
  const at::Tensor k = as_operand(k_in);
  const at::Tensor mask = self_column.has_value() ? self_column->contiguous() : at::Tensor();
  at::Tensor row_lse = chunked_row_lse(q, k, scale, mask.defined() ? mask.data_ptr<int64_t>() : nullptr,
                                       chunk_rows);
  // Column LSEs are the row LSEs of the transposed problem: one more pass of matmuls.
  at::Tensor col_lse = with_columns ? chunked_row_lse(k, q, scale, nullptr, chunk_rows)
                                    : at::empty({0}, q.options().dtype(logit_type(q)));
  return {row_lse, col_lse};
}

std::tuple<at::Tensor, at::Tensor> info_nce_lse_backward(
    const at::Tensor& grad_row_in, const std::optional<at::Tensor>& grad_col_in,
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& row_lse,
    const at::Tensor& col_lse, double scale, const std::optional<at::Tensor>& self_column,
    bool with_columns, bool need_grad_k, int64_t chunk_rows) {
  const DeviceScope scope(q_in, kOp);
#ifdef WITH_CUDA
  cudaStream_t stream = q_in.is_cuda() ? at::cuda::getCurrentCUDAStream().stream() : nullptr;
#endif
  const auto ct = logit_type(q_in);
  const at::Tensor q = as_operand(q_in);
  const at::Tensor k = as_operand(k_in);
  const at::Tensor g = grad_row_in.to(ct).contiguous();
  const bool use_cols = with_columns && grad_col_in.has_value() && grad_col_in->defined();
  const at::Tensor h = use_cols ? grad_col_in->to(ct).contiguous() : at::Tensor();
  const at::Tensor r = row_lse.to(ct).contiguous();
  const at::Tensor c = use_cols ? col_lse.to(ct).contiguous() : at::Tensor();
  const at::Tensor mask = self_column.has_value() ? self_column->contiguous() : at::Tensor();
  const int64_t N = q.size(0), M = k.size(0), D = q.size(1);
  const auto acc_opts = q.options().dtype(ct);
  at::Tensor grad_q = at::empty({N, D}, acc_opts);
  at::Tensor grad_k = need_grad_k ? at::zeros({M, D}, acc_opts) : at::empty({0}, acc_opts);
  const int64_t step = rows_per_chunk(chunk_rows, M, at::elementSize(ct), q.is_cuda());
  const at::Tensor kt = k.t();
  for (int64_t r0 = 0; r0 < N; r0 += step) {
    const int64_t rows = std::min(step, N - r0);
    const at::Tensor q_chunk = q.narrow(0, r0, rows);
    at::Tensor S = logits_chunk(q_chunk, kt);
    const int64_t* chunk_mask = mask.defined() ? mask.data_ptr<int64_t>() + r0 : nullptr;
    if (!q.is_cuda()) {
      AT_DISPATCH_FLOATING_TYPES(ct, "info_nce_logit_grad_cpu", [&] {
        logit_grad_chunk_cpu<scalar_t>(
            S.data_ptr<scalar_t>(), rows, M, static_cast<scalar_t>(scale), chunk_mask,
            g.data_ptr<scalar_t>() + r0, r.data_ptr<scalar_t>() + r0,
            use_cols ? h.data_ptr<scalar_t>() : nullptr,
            use_cols ? c.data_ptr<scalar_t>() : nullptr);
      });
    } else {
#ifdef WITH_CUDA
      const int64_t off = r0 * at::elementSize(ct);  // g and r are in the logit dtype
      logit_grad_chunk_cuda(ct == at::kDouble, S.data_ptr(), rows, M, scale, chunk_mask,
                            static_cast<const char*>(g.data_ptr()) + off,
                            static_cast<const char*>(r.data_ptr()) + off,
                            use_cols ? h.data_ptr() : nullptr, use_cols ? c.data_ptr() : nullptr,
                            stream);
#endif
    }
    at::Tensor gq = grad_q.narrow(0, r0, rows);
    if (q.scalar_type() == ct) {
      at::mm_out(gq, S, k);
      gq.mul_(scale);
      if (need_grad_k) grad_k.addmm_(S.t(), q_chunk, /*beta=*/1.0, /*alpha=*/scale);
    } else {  // half operands: dS is scaled into range, cast, multiplied with fp32 output
      gq.copy_(mm_matrix_times(S, k, /*m_on_right=*/false)).mul_(scale);
      if (need_grad_k) grad_k.add_(mm_matrix_times(S.t(), q_chunk, /*m_on_right=*/false), scale);
    }
  }
  return {grad_q.to(q_in.scalar_type()),
          need_grad_k ? grad_k.to(k_in.scalar_type()) : grad_k};
}

// ---------------------------------------------------------------------------------------------
// The symmetric case (SimCLR): keys = queries = z, self-pairs masked. S = s z z^T is symmetric,
// so only the tiles on and above the diagonal are formed: each off-diagonal tile gives row
// partial LSEs for its rows and column partial LSEs for its columns (forward), and the gradient
// of both (I, J) and (J, I) (backward), about half the FLOPs and exps of the general op.
// ---------------------------------------------------------------------------------------------

// Side of the square tiles of the symmetric op: small enough that most of the matrix is in
// off-diagonal tiles (the ones the symmetry saves) and a tile stays in cache. 512 measured best on
// the 2-core CPU (B = 2048, D = 128); 2048 on CUDA (16 MiB float32, fewer launches; untuned).
int64_t square_tile(int64_t tile_rows, bool is_cuda) {
  if (tile_rows > 0) return tile_rows;
  return is_cuda ? 2048 : 512;
}

void tile_row_lse(const at::Tensor& S, double scale, const at::Tensor& mask, at::Tensor out) {
  const int64_t rows = S.size(0), M = S.size(1);
  const int64_t* m = mask.defined() ? mask.data_ptr<int64_t>() : nullptr;
  if (!S.is_cuda()) {
    AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "info_nce_tile_row_lse", [&] {
      row_lse_chunk_cpu<scalar_t>(S.data_ptr<scalar_t>(), rows, M, static_cast<scalar_t>(scale), m,
                                  out.data_ptr<scalar_t>());
    });
    return;
  }
#ifdef WITH_CUDA
  row_lse_chunk_cuda(S.scalar_type() == at::kDouble, S.data_ptr(), rows, M, scale, m,
                     out.data_ptr(), at::cuda::getCurrentCUDAStream().stream());
#endif
}

void tile_col_lse(const at::Tensor& S, double scale, at::Tensor out) {
  const int64_t rows = S.size(0), M = S.size(1);
  if (!S.is_cuda()) {
    AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "info_nce_tile_col_lse", [&] {
      col_lse_chunk_cpu<scalar_t>(S.data_ptr<scalar_t>(), rows, M, static_cast<scalar_t>(scale),
                                  out.data_ptr<scalar_t>());
    });
    return;
  }
#ifdef WITH_CUDA
  const at::Tensor workspace = at::empty({col_lse_workspace_elems(rows, M)}, S.options());
  col_lse_chunk_cuda(S.scalar_type() == at::kDouble, S.data_ptr(), rows, M, scale,
                     workspace.data_ptr(), out.data_ptr(), at::cuda::getCurrentCUDAStream().stream());
#endif
}

// In place: S <- g_rows exp(s S - r_rows) + g_cols exp(s S - r_cols), masked diagonal if given.
void tile_logit_grad(at::Tensor& S, double scale, const at::Tensor& mask, const at::Tensor& g_rows,
                     const at::Tensor& r_rows, const at::Tensor& g_cols, const at::Tensor& r_cols) {
  const int64_t rows = S.size(0), M = S.size(1);
  const int64_t* m = mask.defined() ? mask.data_ptr<int64_t>() : nullptr;
  if (!S.is_cuda()) {
    AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "info_nce_tile_logit_grad", [&] {
      logit_grad_chunk_cpu<scalar_t>(S.data_ptr<scalar_t>(), rows, M, static_cast<scalar_t>(scale), m,
                                     g_rows.data_ptr<scalar_t>(), r_rows.data_ptr<scalar_t>(),
                                     g_cols.data_ptr<scalar_t>(), r_cols.data_ptr<scalar_t>());
    });
    return;
  }
#ifdef WITH_CUDA
  logit_grad_chunk_cuda(S.scalar_type() == at::kDouble, S.data_ptr(), rows, M, scale, m,
                        g_rows.data_ptr(), r_rows.data_ptr(), g_cols.data_ptr(), r_cols.data_ptr(),
                        at::cuda::getCurrentCUDAStream().stream());
#endif
}

// out += scale * E @ x, in the logit dtype whatever the operand dtype.
void add_scaled_product(at::Tensor out, const at::Tensor& E, const at::Tensor& x, double scale) {
  if (x.scalar_type() == E.scalar_type()) {
    out.addmm_(E, x, /*beta=*/1.0, /*alpha=*/scale);
  } else {
    out.add_(mm_matrix_times(E, x, /*m_on_right=*/false), scale);
  }
}

void check_self_inputs(const at::Tensor& z, double scale) {
  TORCH_CHECK(z.dim() == 2, "info_nce_self_lse: z must be 2-D (batch, dim), got shape ", z.sizes());
  TORCH_CHECK(z.size(0) >= 1 && z.size(1) >= 1, "info_nce_self_lse: z must be non-empty, got shape ",
              z.sizes());
  TORCH_CHECK(at::isFloatingType(z.scalar_type()),
              "info_nce_self_lse: z must be a floating-point tensor, got ", z.scalar_type());
  TORCH_CHECK(std::isfinite(scale) && scale > 0.0,
              "info_nce_self_lse: scale (1 / temperature) must be finite and > 0, got ", scale);
}

at::Tensor info_nce_self_lse(const at::Tensor& z_in, double scale, int64_t tile_rows) {
  check_self_inputs(z_in, scale);
  const DeviceScope scope(z_in, "info_nce_self_lse");
  const at::Tensor z = as_operand(z_in);
  const auto lt = logit_type(z);
  const int64_t N = z.size(0);
  const int64_t tile = square_tile(tile_rows, z.is_cuda());
  at::Tensor lse = at::full({N}, -std::numeric_limits<double>::infinity(), z.options().dtype(lt));
  const at::Tensor diagonal = at::arange(std::min(tile, N), z.options().dtype(at::kLong));
  for (int64_t i0 = 0; i0 < N; i0 += tile) {
    const int64_t ti = std::min(tile, N - i0);
    const at::Tensor zi = z.narrow(0, i0, ti);
    at::Tensor lse_i = lse.narrow(0, i0, ti);
    for (int64_t j0 = i0; j0 < N; j0 += tile) {
      const int64_t tj = std::min(tile, N - j0);
      const at::Tensor S = logits_chunk(zi, z.narrow(0, j0, tj).t());
      at::Tensor part = at::empty({ti}, lse.options());
      tile_row_lse(S, scale, j0 == i0 ? diagonal.narrow(0, 0, ti) : at::Tensor(), part);
      lse_i.copy_(at::logaddexp(lse_i, part));
      if (j0 != i0) {
        at::Tensor lse_j = lse.narrow(0, j0, tj);
        at::Tensor col_part = at::empty({tj}, lse.options());
        tile_col_lse(S, scale, col_part);
        lse_j.copy_(at::logaddexp(lse_j, col_part));
      }
    }
  }
  return lse;
}

at::Tensor info_nce_self_lse_backward(const at::Tensor& grad_in, const at::Tensor& z_in,
                                      const at::Tensor& lse_in, double scale, int64_t tile_rows) {
  const DeviceScope scope(z_in, "info_nce_self_lse");
  const at::Tensor z = as_operand(z_in);
  const auto lt = logit_type(z);
  const at::Tensor g = grad_in.to(lt).contiguous();
  const at::Tensor r = lse_in.to(lt).contiguous();
  const int64_t N = z.size(0), D = z.size(1);
  const int64_t tile = square_tile(tile_rows, z.is_cuda());
  at::Tensor grad = at::zeros({N, D}, z.options().dtype(lt));
  const at::Tensor diagonal = at::arange(std::min(tile, N), z.options().dtype(at::kLong));
  for (int64_t i0 = 0; i0 < N; i0 += tile) {
    const int64_t ti = std::min(tile, N - i0);
    const at::Tensor zi = z.narrow(0, i0, ti);
    for (int64_t j0 = i0; j0 < N; j0 += tile) {
      const int64_t tj = std::min(tile, N - j0);
      const at::Tensor zj = z.narrow(0, j0, tj);
      at::Tensor E = logits_chunk(zi, zj.t());
      // E = (dS + dS^T) on this tile: both directions from one recomputed tile.
      tile_logit_grad(E, scale, j0 == i0 ? diagonal.narrow(0, 0, ti) : at::Tensor(),
                      g.narrow(0, i0, ti), r.narrow(0, i0, ti), g.narrow(0, j0, tj),
                      r.narrow(0, j0, tj));
      add_scaled_product(grad.narrow(0, i0, ti), E, zj, scale);
      if (j0 != i0) add_scaled_product(grad.narrow(0, j0, tj), E.t(), zi, scale);
    }
  }
  return grad.to(z_in.scalar_type());
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(jem_fast, m) {
  m.def(
      "info_nce_lse(Tensor q, Tensor k, float scale, Tensor? self_column, bool with_columns, "
      "int chunk_rows) -> (Tensor row_lse, Tensor col_lse)");
  m.def(
      "info_nce_lse_backward(Tensor grad_row, Tensor? grad_col, Tensor q, Tensor k, "
      "Tensor row_lse, Tensor col_lse, float scale, Tensor? self_column, bool with_columns, "
      "bool need_grad_k, int chunk_rows) -> (Tensor grad_q, Tensor grad_k)");
  m.def("info_nce_self_lse(Tensor z, float scale, int tile_rows) -> Tensor");
  m.def(
      "info_nce_self_lse_backward(Tensor grad, Tensor z, Tensor lse, float scale, int tile_rows) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(jem_fast, CPU, m) {
  m.impl("info_nce_lse", &info_nce_lse);
  m.impl("info_nce_lse_backward", &info_nce_lse_backward);
  m.impl("info_nce_self_lse", &info_nce_self_lse);
  m.impl("info_nce_self_lse_backward", &info_nce_self_lse_backward);
}

TORCH_LIBRARY_IMPL(jem_fast, CUDA, m) {
  m.impl("info_nce_lse", &info_nce_lse);
  m.impl("info_nce_lse_backward", &info_nce_lse_backward);
  m.impl("info_nce_self_lse", &info_nce_self_lse);
  m.impl("info_nce_self_lse_backward", &info_nce_self_lse_backward);
}

}  // namespace info_nce
}  // namespace jem_fast

// Memory-linear InfoNCE core: schema, checks and the chunked host loop.
//
//   info_nce_lse(q (N, D), k (M, D), scale, self_column (N,)?, with_columns, chunk_rows,
//                positive_column (N,)?) -> (row_lse (N,), col_lse (M,) or (0,))
//   row_lse[i] = log sum_{j != self_column[i], positive_column[i]} exp(scale q_i . k_j)
//   col_lse[j] = log sum_{i: positive_column[i] != j} exp(scale q_i . k_j)
//                                                          (with_columns, no self mask)
//
//   info_nce_lse_backward(grad_row, grad_col?, q, k, row_lse, col_lse, scale, self_column?,
//                         with_columns, need_grad_k, chunk_rows, positive_column?)
//       -> (grad_q, grad_k or (0,))
//
// The positive term and the reductions stay outside (jem_fast/ops/info_nce.py). With
// positive_column the LSEs are over the negatives only and a loss is softplus(lse - positive):
// LSE(all) - positive would lose every digit when the positive dominates (low temperature,
// confident positives). Queries are
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

void check_column_vector(const std::optional<at::Tensor>& column, const char* name,
                         const at::Tensor& q, const at::Tensor& k) {
  if (!column.has_value()) return;
  const auto& m = *column;
  TORCH_CHECK(m.dim() == 1 && m.size(0) == q.size(0) && m.scalar_type() == at::kLong, kOp, ": ",
              name, " must be an int64 vector with one entry per query row, got ", m.sizes(), " ",
              m.scalar_type());
  TORCH_CHECK(m.device() == q.device(), kOp, ": ", name, " must be on the query's device");
  // Range check on the host for CPU tensors only (see self_column below).
  if (m.device().is_cpu() && m.numel() > 0) {
    const auto lo_hi = at::aminmax(m);
    const int64_t lo = std::get<0>(lo_hi).item<int64_t>();
    const int64_t hi = std::get<1>(lo_hi).item<int64_t>();
    TORCH_CHECK(lo >= -1 && hi < k.size(0), kOp, ": ", name, " entries must be -1 (no masked "
                "column) or a key index in [0, ", k.size(0) - 1, "], got values in [", lo, ", ",
                hi, "]");
  }
}

void check_inputs(const at::Tensor& q, const at::Tensor& k, double scale,
                  const std::optional<at::Tensor>& self_column, bool with_columns,
                  const std::optional<at::Tensor>& positive_column) {
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
    // Range check on the host for CPU tensors only: on CUDA it would cost a device sync (and is
    // illegal while a CUDA graph is captured); there an out-of-range entry masks no column.
    if (m.device().is_cpu() && m.numel() > 0) {
      const auto lo_hi = at::aminmax(m);
      const int64_t lo = std::get<0>(lo_hi).item<int64_t>();
      const int64_t hi = std::get<1>(lo_hi).item<int64_t>();
      TORCH_CHECK(lo >= -1 && hi < k.size(0), kOp, ": self_column entries must be -1 (no masked "
                  "column) or a key index in [0, ", k.size(0) - 1, "], got values in [", lo, ", ",
                  hi, "]");
    }
  }
  check_column_vector(positive_column, "positive_column", q, k);
}

const int64_t* column_ptr(const at::Tensor& column, int64_t offset) {
  return column.defined() ? column.data_ptr<int64_t>() + offset : nullptr;
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

// lse[i] over rows of a against all rows of b, chunked; with col_lse defined, also the column
// LSEs of the same chunks (masked like the rows), merged over the chunks.
at::Tensor chunked_row_lse(const at::Tensor& a, const at::Tensor& b, double scale,
                           const int64_t* mask, const int64_t* mask2, int64_t chunk_rows,
                           at::Tensor col_lse = at::Tensor()) {
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
    const int64_t* chunk_mask2 = mask2 ? mask2 + r0 : nullptr;
    at::Tensor col_part = col_lse.defined() ? at::empty({M}, col_lse.options()) : at::Tensor();
    if (!a.is_cuda()) {
      AT_DISPATCH_FLOATING_TYPES(lt, "info_nce_row_lse_cpu", [&] {
        row_lse_chunk_cpu<scalar_t>(S.data_ptr<scalar_t>(), rows, M, static_cast<scalar_t>(scale),
                                    chunk_mask, chunk_mask2, lse.data_ptr<scalar_t>() + r0);
        if (col_lse.defined()) {
          col_lse_chunk_cpu<scalar_t>(S.data_ptr<scalar_t>(), rows, M,
                                      static_cast<scalar_t>(scale), chunk_mask, chunk_mask2,
                                      col_part.data_ptr<scalar_t>());
        }
      });
    } else {
#ifdef WITH_CUDA
      row_lse_chunk_cuda(lt == at::kDouble, S.data_ptr(), rows, M, scale, chunk_mask, chunk_mask2,
                         static_cast<char*>(lse.data_ptr()) + r0 * at::elementSize(lt), stream);
      if (col_lse.defined()) {
        const at::Tensor workspace = at::empty({col_lse_workspace_elems(rows, M)}, S.options());
        col_lse_chunk_cuda(lt == at::kDouble, S.data_ptr(), rows, M, scale, chunk_mask,
                           chunk_mask2, workspace.data_ptr(), col_part.data_ptr(), stream);
      }
#endif
    }
    if (col_lse.defined()) col_lse.copy_(at::logaddexp(col_lse, col_part));
  }
  return lse;
}

std::tuple<at::Tensor, at::Tensor> info_nce_lse(const at::Tensor& q_in, const at::Tensor& k_in,
                                                 double scale,
                                                 const std::optional<at::Tensor>& self_column,
                                                 bool with_columns, int64_t chunk_rows,
                                                 const std::optional<at::Tensor>& positive_column) {
  check_inputs(q_in, k_in, scale, self_column, with_columns, positive_column);
  TORCH_CHECK(chunk_rows >= 0, kOp, ": chunk_rows must be >= 0 (0: automatic), got ", chunk_rows);
  const DeviceScope scope(q_in, kOp);
  const at::Tensor q = as_operand(q_in);
  const at::Tensor k = as_operand(k_in);
  const at::Tensor mask = self_column.has_value() ? self_column->contiguous() : at::Tensor();
  const at::Tensor pos = positive_column.has_value() ? positive_column->contiguous() : at::Tensor();
  if (with_columns && pos.defined()) {
    // Columns masked like the rows: their LSEs from the same chunks, merged over the chunks.
    at::Tensor col_lse = at::full({k.size(0)}, -std::numeric_limits<double>::infinity(),
                                  q.options().dtype(logit_type(q)));
    at::Tensor row_lse = chunked_row_lse(q, k, scale, column_ptr(mask, 0), column_ptr(pos, 0),
                                         chunk_rows, col_lse);
    return {row_lse, col_lse};
  }
  at::Tensor row_lse = chunked_row_lse(q, k, scale, column_ptr(mask, 0), column_ptr(pos, 0),
                                       chunk_rows);
  // Column LSEs are the row LSEs of the transposed problem: one more pass of matmuls.
  at::Tensor col_lse = with_columns ? chunked_row_lse(k, q, scale, nullptr, nullptr, chunk_rows)
                                    : at::empty({0}, q.options().dtype(logit_type(q)));
  return {row_lse, col_lse};
}

std::tuple<at::Tensor, at::Tensor> info_nce_lse_backward(
    const at::Tensor& grad_row_in, const std::optional<at::Tensor>& grad_col_in,
    const at::Tensor& q_in, const at::Tensor& k_in, const at::Tensor& row_lse,
    const at::Tensor& col_lse, double scale, const std::optional<at::Tensor>& self_column,
    bool with_columns, bool need_grad_k, int64_t chunk_rows,
    const std::optional<at::Tensor>& positive_column) {
  check_same_device("info_nce_lse_backward",
                    {{"q", q_in}, {"k", k_in}, {"grad_row", grad_row_in},
                     {"grad_col", grad_col_in.value_or(at::Tensor())}, {"row_lse", row_lse},
                     {"col_lse", col_lse}, {"self_column", self_column.value_or(at::Tensor())},
                     {"positive_column", positive_column.value_or(at::Tensor())}});
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
  const at::Tensor pos = positive_column.has_value() ? positive_column->contiguous() : at::Tensor();
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
    const int64_t* chunk_mask = column_ptr(mask, r0);
    const int64_t* chunk_mask2 = column_ptr(pos, r0);
    if (!q.is_cuda()) {
      AT_DISPATCH_FLOATING_TYPES(ct, "info_nce_logit_grad_cpu", [&] {
        logit_grad_chunk_cpu<scalar_t>(
            S.data_ptr<scalar_t>(), rows, M, static_cast<scalar_t>(scale), chunk_mask, chunk_mask2,
            g.data_ptr<scalar_t>() + r0, r.data_ptr<scalar_t>() + r0,
            use_cols ? h.data_ptr<scalar_t>() : nullptr,
            use_cols ? c.data_ptr<scalar_t>() : nullptr);
      });
    } else {
#ifdef WITH_CUDA
      const int64_t off = r0 * at::elementSize(ct);  // g and r are in the logit dtype
      logit_grad_chunk_cuda(ct == at::kDouble, S.data_ptr(), rows, M, scale, chunk_mask,
                            chunk_mask2, static_cast<const char*>(g.data_ptr()) + off,
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

// The masks of the tile (I, J) (rows i0.., columns j0..): the diagonal on diagonal tiles and, with
// a pair offset, each row's positive column (i + offset) mod N, as tile-local column indices
// (out of range: nothing masked in this tile). Both are symmetric relations, so a masked entry
// is masked for its row and for its column alike.
struct TileMasks {
  at::Tensor mask, mask2;
  const int64_t* first() const { return mask.defined() ? mask.data_ptr<int64_t>() : nullptr; }
  const int64_t* second() const { return mask2.defined() ? mask2.data_ptr<int64_t>() : nullptr; }
};

TileMasks tile_masks(const at::Tensor& diagonal, const at::Tensor& positive, int64_t i0,
                     int64_t ti, int64_t j0) {
  TileMasks t;
  if (j0 == i0) t.mask = diagonal.narrow(0, 0, ti);
  if (positive.defined()) t.mask2 = positive.narrow(0, i0, ti) - j0;
  return t;
}

void tile_row_lse(const at::Tensor& S, double scale, const TileMasks& masks, at::Tensor out) {
  const int64_t rows = S.size(0), M = S.size(1);
  if (!S.is_cuda()) {
    AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "info_nce_tile_row_lse", [&] {
      row_lse_chunk_cpu<scalar_t>(S.data_ptr<scalar_t>(), rows, M, static_cast<scalar_t>(scale),
                                  masks.first(), masks.second(), out.data_ptr<scalar_t>());
    });
    return;
  }
#ifdef WITH_CUDA
  row_lse_chunk_cuda(S.scalar_type() == at::kDouble, S.data_ptr(), rows, M, scale, masks.first(),
                     masks.second(), out.data_ptr(), at::cuda::getCurrentCUDAStream().stream());
#endif
}

void tile_col_lse(const at::Tensor& S, double scale, const TileMasks& masks, at::Tensor out) {
  const int64_t rows = S.size(0), M = S.size(1);
  if (!S.is_cuda()) {
    AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "info_nce_tile_col_lse", [&] {
      col_lse_chunk_cpu<scalar_t>(S.data_ptr<scalar_t>(), rows, M, static_cast<scalar_t>(scale),
                                  masks.first(), masks.second(), out.data_ptr<scalar_t>());
    });
    return;
  }
#ifdef WITH_CUDA
  const at::Tensor workspace = at::empty({col_lse_workspace_elems(rows, M)}, S.options());
  col_lse_chunk_cuda(S.scalar_type() == at::kDouble, S.data_ptr(), rows, M, scale, masks.first(),
                     masks.second(), workspace.data_ptr(), out.data_ptr(),
                     at::cuda::getCurrentCUDAStream().stream());
#endif
}

// In place: S <- g_rows exp(s S - r_rows) + g_cols exp(s S - r_cols), 0 at the masked entries.
void tile_logit_grad(at::Tensor& S, double scale, const TileMasks& masks, const at::Tensor& g_rows,
                     const at::Tensor& r_rows, const at::Tensor& g_cols, const at::Tensor& r_cols) {
  const int64_t rows = S.size(0), M = S.size(1);
  if (!S.is_cuda()) {
    AT_DISPATCH_FLOATING_TYPES(S.scalar_type(), "info_nce_tile_logit_grad", [&] {
      logit_grad_chunk_cpu<scalar_t>(S.data_ptr<scalar_t>(), rows, M, static_cast<scalar_t>(scale),
                                     masks.first(), masks.second(), g_rows.data_ptr<scalar_t>(),
                                     r_rows.data_ptr<scalar_t>(), g_cols.data_ptr<scalar_t>(),
                                     r_cols.data_ptr<scalar_t>());
    });
    return;
  }
#ifdef WITH_CUDA
  logit_grad_chunk_cuda(S.scalar_type() == at::kDouble, S.data_ptr(), rows, M, scale,
                        masks.first(), masks.second(), g_rows.data_ptr(), r_rows.data_ptr(),
                        g_cols.data_ptr(), r_cols.data_ptr(),
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

void check_self_inputs(const at::Tensor& z, double scale, int64_t pair_offset) {
  TORCH_CHECK(z.dim() == 2, "info_nce_self_lse: z must be 2-D (batch, dim), got shape ", z.sizes());
  TORCH_CHECK(z.size(0) >= 1 && z.size(1) >= 1, "info_nce_self_lse: z must be non-empty, got shape ",
              z.sizes());
  TORCH_CHECK(at::isFloatingType(z.scalar_type()),
              "info_nce_self_lse: z must be a floating-point tensor, got ", z.scalar_type());
  TORCH_CHECK(std::isfinite(scale) && scale > 0.0,
              "info_nce_self_lse: scale (1 / temperature) must be finite and > 0, got ", scale);
  // The tiles rely on a symmetric mask (an entry masked for its row is masked for its column):
  // rows i and i + N/2 are each other's positives, no other offset is symmetric.
  TORCH_CHECK(pair_offset == 0 || 2 * pair_offset == z.size(0),
              "info_nce_self_lse: pair_offset must be 0 (no positive left out) or N / 2 = ",
              z.size(0) / 2, " with N = ", z.size(0), " even (rows i and i + N/2 are each other's "
              "positives), got ", pair_offset);
}

// Row i's positive column (i + pair_offset) mod N, or an undefined tensor for pair_offset 0.
at::Tensor positive_columns(const at::Tensor& z, int64_t pair_offset) {
  if (pair_offset == 0) return at::Tensor();
  const int64_t N = z.size(0);
  return at::arange(N, z.options().dtype(at::kLong)).add_(pair_offset).remainder_(N);
}

at::Tensor info_nce_self_lse(const at::Tensor& z_in, double scale, int64_t tile_rows,
                             int64_t pair_offset) {
  check_self_inputs(z_in, scale, pair_offset);
  TORCH_CHECK(tile_rows >= 0, "info_nce_self_lse: tile_rows must be >= 0 (0: automatic), got ",
              tile_rows);
  const DeviceScope scope(z_in, "info_nce_self_lse");
  const at::Tensor z = as_operand(z_in);
  const auto lt = logit_type(z);
  const int64_t N = z.size(0);
  const int64_t tile = square_tile(tile_rows, z.is_cuda());
  at::Tensor lse = at::full({N}, -std::numeric_limits<double>::infinity(), z.options().dtype(lt));
  const at::Tensor diagonal = at::arange(std::min(tile, N), z.options().dtype(at::kLong));
  const at::Tensor positive = positive_columns(z, pair_offset);
  for (int64_t i0 = 0; i0 < N; i0 += tile) {
    const int64_t ti = std::min(tile, N - i0);
    const at::Tensor zi = z.narrow(0, i0, ti);
    at::Tensor lse_i = lse.narrow(0, i0, ti);
    for (int64_t j0 = i0; j0 < N; j0 += tile) {
      const int64_t tj = std::min(tile, N - j0);
      const at::Tensor S = logits_chunk(zi, z.narrow(0, j0, tj).t());
      const TileMasks masks = tile_masks(diagonal, positive, i0, ti, j0);
      at::Tensor part = at::empty({ti}, lse.options());
      tile_row_lse(S, scale, masks, part);
      lse_i.copy_(at::logaddexp(lse_i, part));
      if (j0 != i0) {
        at::Tensor lse_j = lse.narrow(0, j0, tj);
        at::Tensor col_part = at::empty({tj}, lse.options());
        tile_col_lse(S, scale, masks, col_part);
        lse_j.copy_(at::logaddexp(lse_j, col_part));
      }
    }
  }
  return lse;
}

at::Tensor info_nce_self_lse_backward(const at::Tensor& grad_in, const at::Tensor& z_in,
                                      const at::Tensor& lse_in, double scale, int64_t tile_rows,
                                      int64_t pair_offset) {
  check_self_inputs(z_in, scale, pair_offset);
  check_same_device("info_nce_self_lse_backward", {{"z", z_in}, {"grad", grad_in}, {"lse", lse_in}});
  const DeviceScope scope(z_in, "info_nce_self_lse");
  const at::Tensor z = as_operand(z_in);
  const auto lt = logit_type(z);
  const at::Tensor g = grad_in.to(lt).contiguous();
  const at::Tensor r = lse_in.to(lt).contiguous();
  const int64_t N = z.size(0), D = z.size(1);
  const int64_t tile = square_tile(tile_rows, z.is_cuda());
  at::Tensor grad = at::zeros({N, D}, z.options().dtype(lt));
  const at::Tensor diagonal = at::arange(std::min(tile, N), z.options().dtype(at::kLong));
  const at::Tensor positive = positive_columns(z, pair_offset);
  for (int64_t i0 = 0; i0 < N; i0 += tile) {
    const int64_t ti = std::min(tile, N - i0);
    const at::Tensor zi = z.narrow(0, i0, ti);
    for (int64_t j0 = i0; j0 < N; j0 += tile) {
      const int64_t tj = std::min(tile, N - j0);
      const at::Tensor zj = z.narrow(0, j0, tj);
      at::Tensor E = logits_chunk(zi, zj.t());
      // E = (dS + dS^T) on this tile: both directions from one recomputed tile.
      tile_logit_grad(E, scale, tile_masks(diagonal, positive, i0, ti, j0), g.narrow(0, i0, ti),
                      r.narrow(0, i0, ti), g.narrow(0, j0, tj), r.narrow(0, j0, tj));
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
      "int chunk_rows, Tensor? positive_column=None) -> (Tensor row_lse, Tensor col_lse)");
  m.def(
      "info_nce_lse_backward(Tensor grad_row, Tensor? grad_col, Tensor q, Tensor k, "
      "Tensor row_lse, Tensor col_lse, float scale, Tensor? self_column, bool with_columns, "
      "bool need_grad_k, int chunk_rows, Tensor? positive_column=None) "
      "-> (Tensor grad_q, Tensor grad_k)");
  m.def("info_nce_self_lse(Tensor z, float scale, int tile_rows, int pair_offset=0) -> Tensor");
  m.def(
      "info_nce_self_lse_backward(Tensor grad, Tensor z, Tensor lse, float scale, int tile_rows, "
      "int pair_offset=0) -> Tensor");
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
